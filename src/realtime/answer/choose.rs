//! Step two of an answer: choose the way to answer. "I don't know" without the model, the
//! passage's own sentence (extractive), or the model (checked or generative, perhaps calling
//! tools), with the messages and the request the model gets.

use std::time::Instant;

use super::ground::{asks_for_facts, grounding_of, NOT_FOUND};
use super::{Answer, Answering, ResponseParams, Writer};
use crate::grounding::{AnswerMode, Focus};
use crate::llm::GenerateRequest;
use crate::prompt::{self, ChatMessage, Grounding, PromptInput};
use crate::rag::SearchResults;

/// Answers without the model when the way to answer needs none: "I don't know" for a factual
/// question nothing supports, or the best sentence of the passages in the extractive mode.
/// True when the answer is complete.
pub(super) fn say_without_model(
    answering: &Answering,
    params: &ResponseParams,
    user: &str,
    answer: &mut Answer,
    writer: &Writer,
) -> bool {
    let (results, focus) = (&answer.results, &answer.focus);
    let (text, made) = if answers_without_model(answering, params, results, focus, user) {
        // Nothing in the knowledge base answers it: say so rather than let the model guess.
        crate::metrics::global().refusals.inc();
        (NOT_FOUND.to_string(), "refused")
    } else if answer_mode(answering, params, results, focus, user) == AnswerMode::Extractive {
        match focus.spoken_best() {
            Some(best) => (best, "extractive"),
            None => return false,
        }
    } else {
        return false;
    };
    answer.first_delta = Some(Instant::now());
    writer.emit(text.clone());
    answer.text = text;
    answer.made = Some(made);
    true
}

/// The messages for a response (shared by the response and the early prefill).
///
/// A factual question that focused sentences answer is asked without the conversation: the
/// follow-up was already resolved (it was searched and ranked with the question before it), and
/// a small model given earlier answers copies them. Small talk and responses that may call
/// functions keep the conversation.
pub fn messages(
    answering: &Answering,
    params: &ResponseParams,
    results: &Option<SearchResults>,
    focus: &Focus,
    history: &[ChatMessage],
    user: &str,
) -> Vec<ChatMessage> {
    let llm = answering.llm.clone();
    // The passages cut down to the sentences that bear on the question: a short prompt the
    // small model answers from, instead of copying whatever came first.
    let focused: Vec<crate::rag::Passage> = match results {
        Some(r) if r.grounded && !focus.sentences.is_empty() => r
            .passages
            .iter()
            .enumerate()
            .filter_map(|(i, p)| {
                focus
                    .excerpt(i)
                    .map(|text| crate::rag::Passage { text, ..p.clone() })
            })
            .collect(),
        _ => Vec::new(),
    };
    let standalone = !focused.is_empty() && !params.offers_tools() && asks_for_facts(user);
    prompt::build(
        &PromptInput {
            instructions: &params.instructions,
            grounding: match grounding_of(results) {
                _ if !focused.is_empty() => Grounding::Passages(&focused),
                // The turn's function results are what the answer rests on: "nothing was found
                // in the knowledge base" would only talk the model out of using them.
                Grounding::NothingFound if params.follows_results => Grounding::None,
                g => g,
            },
            history: if standalone { &[] } else { history },
            user,
            history_budget: answering.settings.history_tokens,
        },
        &move |s| llm.count_tokens(s),
    )
}

/// Whether the response says [`NOT_FOUND`] without asking the model: a factual question nothing
/// in the knowledge base supports (with `refuse_unfound`, no tools to call instead, and no
/// function results in the turn to answer from).
pub fn answers_without_model(
    answering: &Answering,
    params: &ResponseParams,
    results: &Option<SearchResults>,
    focus: &Focus,
    user: &str,
) -> bool {
    answering.settings.refuse_unfound
        && !params.offers_tools()
        && !params.follows_results
        && results
            .as_ref()
            .is_some_and(|r| !r.grounded || focus.answers_nothing())
        && asks_for_facts(user)
}

/// How this response answers: the configured mode for a factual question that grounded
/// passages answer; the model's own words otherwise (small talk, no knowledge base, a response
/// that may call functions, or one that answers from the results of the turn's calls).
pub fn answer_mode(
    answering: &Answering,
    params: &ResponseParams,
    results: &Option<SearchResults>,
    focus: &Focus,
    user: &str,
) -> AnswerMode {
    let grounded = results.as_ref().is_some_and(|r| r.grounded);
    if !grounded
        || focus.sentences.is_empty()
        || params.offers_tools()
        || params.follows_results
        || !asks_for_facts(user)
    {
        AnswerMode::Generative
    } else {
        answering.settings.mode
    }
}

/// The LLM request for a response's messages: shared by the response and the speculation in the
/// pause, so that a draft made while the person pauses matches its response's request exactly.
pub fn request(
    answering: &Answering,
    params: &ResponseParams,
    messages: Vec<ChatMessage>,
) -> GenerateRequest {
    let mut req = GenerateRequest::new(messages);
    req.tools = params.tools.clone();
    req.tool_choice = params.tool_choice.clone();
    req.cache_points = vec![1, req.messages.len().saturating_sub(1)];
    req.max_tokens = params.max_tokens;
    req.temperature = answering.settings.temperature;
    req.repeat_penalty = answering.settings.repeat_penalty;
    if answering.settings.stop_at_paragraph {
        // Spoken answers are a few sentences; after a blank line a small model drifts.
        req.stop = vec!["\n\n".into()];
    }
    req
}
