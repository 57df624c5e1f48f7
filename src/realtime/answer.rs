//! One response: an answer to the conversation so far, grounded in the knowledge base and
//! streamed as OpenAI Realtime `response.*` events.
//!
//! A response runs as its own task: retrieve (or reuse what was retrieved while the person was
//! still talking), build the prompt, stream the LLM's deltas, then close with `response.done`.
//! A cancel (`response.cancel`, or the person starting to talk again) stops it at once: the LLM
//! stream is dropped, which stops the generation loop, and no delta follows the cancel.

use std::sync::Arc;
use std::time::Instant;

use futures::StreamExt;
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot};
use tracing::Instrument;

use super::out::Out;
use super::speaker::{Speaker, SpeechParams, Spoken, Target};
use crate::grounding::{self, AnswerMode, Check, Focus, Verdict};
use crate::llm::{FinishReason, GenerateRequest, Llm, LlmError, LlmEvent, Usage};
use crate::prompt::{self, ChatMessage, Grounding, PromptInput};
use crate::protocol::{ErrorBody, Item, ServerEvent};
use crate::rag::{KnowledgeBase, SearchRequest, SearchResults};
use crate::tools::{ToolCall, ToolChoice, ToolSet};

/// Server-wide answering settings.
#[derive(Debug, Clone)]
pub struct AnswerSettings {
    /// Used when the session sets no `instructions`.
    pub instructions: String,
    pub max_tokens: usize,
    pub temperature: f32,
    /// Token budget for earlier turns in the prompt.
    pub history_tokens: usize,
    /// Repetition penalty (1 = off). Off by default: it pushes a small model away from the
    /// very figures it should repeat from the passages.
    pub repeat_penalty: f32,
    /// End a spoken answer at its first blank line.
    pub stop_at_paragraph: bool,
    /// Say "I don't know" to a factual question no passage supports, without asking the model
    /// (which would guess). Off: the model is told nothing was found and answers itself.
    pub refuse_unfound: bool,
    /// How a question the knowledge base covers is answered.
    pub mode: AnswerMode,
    /// In the checked mode: the share of a sentence's content words the passages must hold.
    pub min_support: f64,
}

impl Default for AnswerSettings {
    fn default() -> Self {
        AnswerSettings {
            instructions: DEFAULT_INSTRUCTIONS.into(),
            max_tokens: 160,
            temperature: 0.0,
            history_tokens: 600,
            repeat_penalty: 1.0,
            stop_at_paragraph: true,
            refuse_unfound: true,
            mode: AnswerMode::default(),
            min_support: crate::grounding::MIN_SUPPORT,
        }
    }
}

impl AnswerSettings {
    /// The server's answer settings from the language model's configuration (instructions,
    /// token limit, temperature, the not-found rule, the answer mode); the rest at defaults.
    pub fn from_config(cfg: &crate::llm::LlmConfig) -> Self {
        AnswerSettings {
            instructions: cfg
                .instructions
                .clone()
                .unwrap_or_else(|| DEFAULT_INSTRUCTIONS.into()),
            max_tokens: cfg.max_tokens,
            temperature: cfg.temperature,
            refuse_unfound: !cfg.answer_unfound,
            mode: cfg.answer_mode,
            ..Default::default()
        }
    }
}

/// The default system instructions.
pub const DEFAULT_INSTRUCTIONS: &str = "You are a helpful voice assistant. Your answers are \
spoken aloud, so answer in one to three short sentences of plain text, without lists or markdown.";

/// What sessions need to answer: the model, the knowledge base, the voice, the settings.
#[derive(Clone)]
pub struct Answering {
    pub llm: Arc<dyn Llm>,
    pub kb: Option<Arc<KnowledgeBase>>,
    /// The voice of spoken answers, when the server has one.
    pub tts: Option<Arc<dyn crate::tts::Tts>>,
    pub settings: AnswerSettings,
    /// Tools the server runs itself.
    pub server_tools: Option<Arc<crate::tools::ServerTools>>,
    /// Where tool calls are recorded.
    pub audit: Option<crate::tools::AuditLog>,
    /// Who the session answers (its API key's id and role).
    pub caller: crate::tools::Caller,
}

/// A response's parameters, fixed when it starts.
#[derive(Debug, Clone)]
pub struct ResponseParams {
    pub instructions: String,
    pub max_tokens: usize,
    pub use_kb: bool,
    pub citations_event: bool,
    /// The client's `metadata`, returned on the response.
    pub metadata: Option<serde_json::Map<String, Value>>,
    /// `Some(previous_item_id)` when the answer joins the conversation (it follows that item);
    /// `None` for an out-of-band response (`conversation: "none"`).
    pub conversation: Option<Option<String>>,
    /// Speak the answer (output modality audio); `None`: text.
    pub speech: Option<SpeechParams>,
    /// Functions the model may call: the client's and the server's it may use.
    pub tools: ToolSet,
    /// The client's own (a call to one of these goes to the client).
    pub client_tools: ToolSet,
    pub tool_choice: ToolChoice,
    /// The session's id (for the audit trail).
    pub session_id: String,
}

impl ResponseParams {
    /// Whether the model may call functions in this response.
    pub fn offers_tools(&self) -> bool {
        !self.tools.is_empty() && self.tool_choice != ToolChoice::None
    }
}

/// How a response ended, reported to the hub.
pub struct Finished {
    pub response_id: String,
    pub item_id: String,
    /// The assistant's text as sent (possibly cut short).
    pub text: String,
    pub status: &'static str,
    /// Whether the answer joins the conversation.
    pub in_conversation: bool,
    /// For a spoken answer: the pieces sent and where they lie in its audio.
    pub audio: Option<Vec<Spoken>>,
    /// The function calls it made (item id, call).
    pub calls: Vec<(String, ToolCall)>,
}

/// Retrieval done ahead of time for a question.
#[derive(Clone)]
pub struct Prepared {
    pub question: String,
    /// What retrieval found (only successful retrievals are prepared).
    pub results: Option<SearchResults>,
    /// The sentences of those passages that bear on the question.
    pub focus: Focus,
}

/// Everything a response task needs.
pub struct ResponseJob {
    pub response_id: String,
    pub item_id: String,
    pub params: ResponseParams,
    /// Earlier turns.
    pub history: Vec<ChatMessage>,
    /// The user's words being answered.
    pub user: String,
    /// What followed them: function calls made for them and their results.
    pub after: Vec<ChatMessage>,
    /// What to search the knowledge base for: the user's words, with the question before them
    /// when they only make sense as a follow-up ("how much does it cost?").
    pub query: String,
    pub prepared: Option<Prepared>,
    /// When the person stopped talking (for the timing extension).
    pub speech_stopped_at: Option<Instant>,
    /// Set when the response is cancelled: its voice stops before the next delta.
    pub silence: Arc<std::sync::atomic::AtomicBool>,
    /// Set just before `response.done` goes out: the session then applies the answer to the
    /// conversation before the client's next command (which may refer to its function calls).
    pub ending: Arc<std::sync::atomic::AtomicBool>,
}

fn grounding_of(results: &Option<SearchResults>) -> Grounding<'_> {
    match results {
        None => Grounding::None,
        Some(r) if r.grounded => Grounding::Passages(&r.passages),
        Some(_) => Grounding::NothingFound,
    }
}

/// The knowledge base could not be searched (its detail is in the server log).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetrievalFailed;

/// What a response says to a factual question the knowledge base has nothing on.
pub const NOT_FOUND: &str = "I'm sorry, I don't know that: it isn't in what I can look up.";

/// Whether `text` asks for facts (a question word or auxiliary first, or a question mark),
/// rather than being small talk such as a greeting or thanks.
pub fn asks_for_facts(text: &str) -> bool {
    const OPENERS: &[&str] = &[
        "what", "what's", "whats", "when", "where", "where's", "who", "who's", "whom", "whose",
        "which", "why", "how", "how's", "is", "are", "was", "were", "do", "does", "did", "can",
        "could", "will", "would", "should", "shall", "may", "might", "have", "has", "had", "tell",
        "list", "explain", "describe", "give",
    ];
    let t = text.trim().to_lowercase();
    let first = t
        .split(|c: char| !(c.is_alphanumeric() || c == '\''))
        .find(|w| {
            !w.is_empty()
                && ![
                    "and", "so", "but", "um", "uh", "hey", "ok", "okay", "please",
                ]
                .contains(w)
        })
        .unwrap_or("");
    // "And your email address." (heard without its question mark): a follow-up asking for more.
    let words: Vec<&str> = t
        .split(|c: char| !(c.is_alphanumeric() || c == '\''))
        .filter(|w| !w.is_empty())
        .collect();
    let follow_up = matches!(words.first(), Some(&"and"))
        || t.starts_with("what about")
        || t.starts_with("how about");
    let courtesy = words.iter().any(|w| {
        [
            "thank", "thanks", "bye", "goodbye", "cheers", "great", "ok", "okay", "cool", "nice",
            "good", "perfect", "sorry",
        ]
        .contains(w)
    });
    t.ends_with('?')
        || OPENERS.contains(&first)
        || (follow_up && !courtesy && (2..=8).contains(&words.len()))
}

/// What a response says when the knowledge base cannot be searched: it never answers ungrounded.
pub const CANNOT_LOOK_UP: &str =
    "Sorry, I can't look that up right now. Please try again in a moment.";

/// Searches the knowledge base for `question`: `Ok(None)` when there is none or it is empty,
/// `Err` when it could not be searched.
pub async fn retrieve(
    kb: Option<&Arc<KnowledgeBase>>,
    question: &str,
) -> Result<Option<SearchResults>, RetrievalFailed> {
    let Some(kb) = kb else {
        return Ok(None);
    };
    match kb.chunk_count().await {
        Ok(0) => return Ok(None),
        Ok(_) => {}
        Err(e) => {
            tracing::error!(error = %e, "knowledge base unavailable; the answer says so");
            return Err(RetrievalFailed);
        }
    }
    // Words meant for the assistant ("ignore your instructions…") are not what to look up.
    let question = grounding::asking_part(question);
    match kb.search(SearchRequest::new(question)).await {
        Ok(r) => Ok(Some(r)),
        Err(e) => {
            tracing::error!(error = %e, "retrieval failed; the answer says so");
            Err(RetrievalFailed)
        }
    }
}

/// The sentences of the grounded passages that bear on `question` (empty when nothing was
/// found, or when the sentences could not be embedded: the prompt then carries the passages
/// whole).
pub async fn focus(
    kb: Option<&Arc<KnowledgeBase>>,
    question: &str,
    query: &str,
    results: &Option<SearchResults>,
) -> Focus {
    let (Some(kb), Some(r)) = (kb, results) else {
        return Focus::default();
    };
    if !r.grounded || r.passages.is_empty() {
        return Focus::default();
    }
    match grounding::focus(
        kb.embedder().as_ref(),
        question,
        Some(query),
        &r.passages,
        grounding::KEEP_SENTENCES,
    )
    .await
    {
        Ok(f) => f,
        Err(e) => {
            tracing::warn!(error = %e, "the passages' sentences could not be ranked; the prompt carries them whole");
            Focus::default()
        }
    }
}

/// Most rounds of server tools in one response before the model must answer.
pub const MAX_SERVER_ROUNDS: usize = 3;

/// Writes a response's tool calls to the audit trail.
#[derive(Clone)]
struct Auditor {
    log: Option<crate::tools::AuditLog>,
    session: String,
    key_id: String,
    response: String,
    /// The tools offered (their schemas say what is sensitive).
    tools: ToolSet,
    server: Option<Arc<crate::tools::ServerTools>>,
}

impl Auditor {
    /// A call's arguments with their sensitive parts redacted.
    fn redact(&self, call: &ToolCall) -> String {
        match &self.server {
            Some(s) if self.tools.get(&call.name).is_none() => {
                s.definitions().redact(&call.name, &call.arguments)
            }
            _ => self.tools.redact(&call.name, &call.arguments),
        }
    }

    fn record(
        &self,
        call: &ToolCall,
        kind: &str,
        validation: &str,
        status: &str,
        latency_ms: f64,
        error: Option<String>,
    ) {
        let Some(log) = self.log.clone() else {
            return;
        };
        let row = crate::tools::AuditRow {
            session: self.session.clone(),
            key_id: self.key_id.clone(),
            response: self.response.clone(),
            tool: call.name.clone(),
            kind: kind.into(),
            call_id: call.id.clone(),
            arguments: self.redact(call),
            validation: validation.into(),
            status: status.into(),
            latency_ms,
            error,
            ..Default::default()
        };
        tokio::spawn(async move { log.record(row).await });
    }
}

/// Why a response stopped before its model finished.
enum Stop {
    Cancelled(&'static str),
    Failed(LlmError),
    /// The knowledge base could not be searched.
    Ungrounded,
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
            grounding: if focused.is_empty() {
                grounding_of(results)
            } else {
                Grounding::Passages(&focused)
            },
            history: if standalone { &[] } else { history },
            user,
            history_budget: answering.settings.history_tokens,
        },
        &move |s| llm.count_tokens(s),
    )
}

/// Whether the response says [`NOT_FOUND`] without asking the model: a factual question nothing
/// in the knowledge base supports (with `refuse_unfound`, and no tools to call instead).
pub fn answers_without_model(
    answering: &Answering,
    params: &ResponseParams,
    results: &Option<SearchResults>,
    focus: &Focus,
    user: &str,
) -> bool {
    answering.settings.refuse_unfound
        && !params.offers_tools()
        && results
            .as_ref()
            .is_some_and(|r| !r.grounded || focus.answers_nothing())
        && asks_for_facts(user)
}

/// How this response answers: the configured mode for a factual question that grounded
/// passages answer; the model's own words otherwise (small talk, no knowledge base, or a
/// response that may call functions).
pub fn answer_mode(
    answering: &Answering,
    params: &ResponseParams,
    results: &Option<SearchResults>,
    focus: &Focus,
    user: &str,
) -> AnswerMode {
    let grounded = results.as_ref().is_some_and(|r| r.grounded);
    if !grounded || focus.sentences.is_empty() || params.offers_tools() || !asks_for_facts(user) {
        AnswerMode::Generative
    } else {
        answering.settings.mode
    }
}

/// Acts on a checked sentence: sends it, says the extractive answer instead, or ends the
/// answer. Returns how the answer was made when it must stop here.
fn apply_verdict(
    verdict: Verdict,
    focus: &Focus,
    text: &mut String,
    first: &mut Option<Instant>,
    emit: impl Fn(String),
) -> Option<&'static str> {
    let mut say = |t: String| {
        if t.is_empty() {
            return;
        }
        first.get_or_insert_with(Instant::now);
        text.push_str(&t);
        emit(t);
    };
    match verdict {
        Verdict::Send(t) => {
            say(t);
            None
        }
        Verdict::Replace { unsupported } => {
            tracing::debug!(%unsupported, "the model's answer is not supported by the passages; saying the passage's own sentence");
            say(focus.best().map(|b| b.text.clone()).unwrap_or_default());
            Some("replaced")
        }
        Verdict::End { reason } => {
            tracing::debug!(
                reason,
                "the answer ends before a sentence the passages do not support"
            );
            Some(if reason == "repeat" {
                "cut_repeat"
            } else {
                "cut_unsupported"
            })
        }
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

fn citations_json(results: &Option<SearchResults>) -> Value {
    match results {
        Some(r) => Value::Array(
            r.passages
                .iter()
                .enumerate()
                .map(|(i, p)| {
                    let mut c = serde_json::to_value(&p.citation).unwrap_or(Value::Null);
                    c["index"] = json!(i + 1);
                    c["similarity"] = json!(p.similarity);
                    c["quote"] = json!(p.text);
                    c
                })
                .collect(),
        ),
        None => json!([]),
    }
}

fn response_object(
    id: &str,
    status: &str,
    details: Value,
    output: Vec<Item>,
    params: &ResponseParams,
    extra: Option<(&Usage, &Option<SearchResults>, Value)>,
) -> Value {
    let mut r = json!({
        "object": "realtime.response",
        "id": id,
        "status": status,
        "status_details": details,
        "output": output,
        "conversation_id": params.conversation.as_ref().map(|_| "conv_default"),
        "output_modalities": [if params.speech.is_some() { "audio" } else { "text" }],
        "max_output_tokens": params.max_tokens,
        "metadata": params.metadata,
        "usage": null,
    });
    if let Some((usage, results, timing)) = extra {
        // voxd's addition: the passages the answer is grounded in.
        r["voxd"] = json!({
            "citations": citations_json(results),
            "grounded": results.as_ref().map(|r| r.grounded),
        });
        r["usage"] = json!({
            "total_tokens": usage.prompt_tokens + usage.completion_tokens,
            "input_tokens": usage.prompt_tokens,
            "output_tokens": usage.completion_tokens,
            "input_token_details": {
                "text_tokens": usage.prompt_tokens,
                "audio_tokens": 0,
                "cached_tokens": usage.cached_tokens,
            },
            "output_token_details": { "text_tokens": usage.completion_tokens, "audio_tokens": 0 },
        });
        r["voxd_timing"] = timing;
    }
    r
}

fn error_body(e: &LlmError) -> ErrorBody {
    ErrorBody {
        kind: "server_error".into(),
        code: Some(e.code().into()),
        message: e.public_message(),
        param: None,
        event_id: None,
    }
}

/// Runs one response to the end (or cancel) and reports how it ended.
pub(crate) async fn run(
    job: ResponseJob,
    answering: Answering,
    out: Out,
    mut cancel: oneshot::Receiver<&'static str>,
    done: mpsc::Sender<Finished>,
) {
    let started = Instant::now();
    let ResponseJob {
        response_id,
        item_id,
        params,
        history,
        user,
        after,
        query,
        prepared,
        speech_stopped_at,
        silence,
        ending,
    } = job;
    let rid = response_id.as_str();
    let mut speaker = match (&params.speech, &answering.tts) {
        (Some(speech), Some(tts)) => Some(Speaker::start(
            tts.clone(),
            speech.clone(),
            out.clone(),
            Target {
                response_id: response_id.clone(),
                item_id: item_id.clone(),
                silence,
            },
        )),
        _ => None,
    };
    let spoken = speaker.is_some();
    let item_of = |text: &str, status: &str| {
        if spoken {
            Item::assistant_audio(&item_id, text, status)
        } else {
            Item::text(&item_id, "assistant", text, status)
        }
    };
    let part_of = |text: &str| {
        if spoken {
            json!({ "type": "audio", "transcript": text })
        } else {
            json!({ "type": "text", "text": text })
        }
    };
    // The assistant's message item: opened at once, or, when the model may call a function
    // instead of answering, before its first words (a response that only calls has none).
    let opened = std::sync::atomic::AtomicBool::new(false);
    let open_message = || {
        if opened.swap(true, std::sync::atomic::Ordering::Relaxed) {
            return;
        }
        out.send(ServerEvent::OutputItemAdded {
            response_id: response_id.clone(),
            output_index: 0,
            item: item_of("", "in_progress"),
        });
        out.send(ServerEvent::ContentPartAdded {
            response_id: response_id.clone(),
            item_id: item_id.clone(),
            output_index: 0,
            content_index: 0,
            part: part_of(""),
        });
        // The assistant's item joins the conversation (not for an out-of-band response).
        if let Some(previous_item_id) = &params.conversation {
            out.send(ServerEvent::ItemAdded {
                previous_item_id: previous_item_id.clone(),
                item: item_of("", "in_progress"),
            });
        }
    };
    // A piece of the answer: spoken (the speaker sends its transcript with its audio) or text.
    let emit = |speaker: &Option<Speaker>, delta: String| {
        open_message();
        match speaker {
            Some(s) => s.push(&delta),
            None => {
                out.send(ServerEvent::OutputTextDelta {
                    response_id: response_id.clone(),
                    item_id: item_id.clone(),
                    output_index: 0,
                    content_index: 0,
                    delta,
                });
            }
        }
    };
    out.send(ServerEvent::ResponseCreated {
        response: response_object(rid, "in_progress", Value::Null, vec![], &params, None),
    });
    let may_call = params.offers_tools();
    if !may_call {
        open_message();
    }
    // Function calls, each its own output item after the message (if any).
    let mut calls: Vec<(String, ToolCall)> = Vec::new();
    let mut call_items: Vec<Item> = Vec::new();
    let send_call = |call: &ToolCall, index: usize, previous: Option<String>| -> (String, Item) {
        let call_item_id = crate::protocol::new_id("item");
        let output_index =
            (index + usize::from(opened.load(std::sync::atomic::Ordering::Relaxed))) as u32;
        out.send(ServerEvent::OutputItemAdded {
            response_id: response_id.clone(),
            output_index,
            item: Item::function_call(&call_item_id, &call.id, &call.name, "", "in_progress"),
        });
        if params.conversation.is_some() {
            out.send(ServerEvent::ItemAdded {
                previous_item_id: previous.clone(),
                item: Item::function_call(&call_item_id, &call.id, &call.name, "", "in_progress"),
            });
        }
        out.send(ServerEvent::FunctionCallArgumentsDelta {
            response_id: response_id.clone(),
            item_id: call_item_id.clone(),
            output_index,
            call_id: call.id.clone(),
            delta: call.arguments.clone(),
        });
        out.send(ServerEvent::FunctionCallArgumentsDone {
            response_id: response_id.clone(),
            item_id: call_item_id.clone(),
            output_index,
            call_id: call.id.clone(),
            name: call.name.clone(),
            arguments: call.arguments.clone(),
        });
        let done = Item::function_call(
            &call_item_id,
            &call.id,
            &call.name,
            &call.arguments,
            "completed",
        );
        out.send(ServerEvent::OutputItemDone {
            response_id: response_id.clone(),
            output_index,
            item: done.clone(),
        });
        if params.conversation.is_some() {
            out.send(ServerEvent::ItemDone {
                previous_item_id: previous,
                item: done.clone(),
            });
        }
        (call_item_id, done)
    };

    let mut text = String::new();
    // The server tools it ran (reported in `response.done` as `voxd.tool_calls`).
    let mut server_log: Vec<Value> = Vec::new();
    let mut usage = Usage::default();
    let mut finish = FinishReason::Stop;
    let mut results = None;
    let mut retrieval_ms = 0.0;
    let mut first_delta: Option<Instant> = None;
    let mut focus = Focus::default();
    // How the answer was made (for `voxd_answers_total` and the response's `voxd.answer`).
    let mut made: Option<&'static str> = None;
    // The work that cancel can interrupt at any point.
    let outcome: Result<(), Stop> = async {
        let t = Instant::now();
        (results, focus) = match (params.use_kb, prepared) {
            (false, _) => (None, Focus::default()),
            (true, Some(p)) if p.question == query => (p.results, p.focus),
            (true, _) => tokio::select! {
                biased;
                reason = &mut cancel => return Err(Stop::Cancelled(reason.unwrap_or("client_cancelled"))),
                r = async {
                    let r = retrieve(answering.kb.as_ref(), &query).await?;
                    let f = self::focus(answering.kb.as_ref(), &user, &query, &r).await;
                    Ok::<_, RetrievalFailed>((r, f))
                }.instrument(tracing::info_span!("retrieval")) => r.map_err(|_| Stop::Ungrounded)?,
            },
        };
        retrieval_ms = t.elapsed().as_secs_f64() * 1e3;
        if params.citations_event {
            out.send(ServerEvent::Citations {
                response_id: response_id.clone(),
                grounded: results.as_ref().is_some_and(|r| r.grounded),
                citations: citations_json(&results),
            });
        }
        if answers_without_model(&answering, &params, &results, &focus, &user) {
            // Nothing in the knowledge base answers it: say so rather than let the model guess.
            text = NOT_FOUND.to_string();
            first_delta = Some(Instant::now());
            emit(&speaker, text.clone());
            crate::metrics::global().refusals.inc();
            made = Some("refused");
            return Ok(());
        }
        let mode = answer_mode(&answering, &params, &results, &focus, &user);
        if mode == AnswerMode::Extractive {
            if let Some(best) = focus.best() {
                text = best.text.clone();
                first_delta = Some(Instant::now());
                emit(&speaker, text.clone());
                made = Some("extractive");
                return Ok(());
            }
        }
        // In the checked mode each sentence is sent once the passages are found to support it.
        let mut check = (mode == AnswerMode::Checked).then(|| {
            let sources: Vec<String> = focus.texts().into_iter().map(String::from).collect();
            let titles = results
                .as_ref()
                .map(|r| r.passages.iter().map(|p| p.citation.title.clone()).collect())
                .unwrap_or_default();
            Check::new(sources, titles, answering.settings.min_support)
        });
        let mut model_started = false;
        let mut msgs = messages(&answering, &params, &results, &focus, &history, &user);
        msgs.extend(after.iter().cloned());
        let mut req = request(&answering, &params, msgs);
        // Open from the request to the last token (queue wait, prefill and decoding).
        let llm_span = tracing::info_span!("llm", first_token_ms = tracing::field::Empty);
        let generating = Instant::now();
        let server = answering.server_tools.clone();
        let is_server_call =
            |name: &str| params.client_tools.get(name).is_none() && server.as_ref().is_some_and(|s| s.contains(name));
        let audit = Auditor {
            log: answering.audit.clone(),
            session: params.session_id.clone(),
            key_id: answering.caller.key_id.clone(),
            response: response_id.clone(),
            tools: params.tools.clone(),
            server: server.clone(),
        };
        let checks = crate::tools::checked::Checks {
            // Server tools this caller may not use: their calls are refused below, not retried.
            refused: server
                .as_ref()
                .map(|s| {
                    s.definitions()
                        .iter()
                        .filter(|t| params.tools.get(&t.name).is_none())
                        .map(|t| t.name.clone())
                        .collect()
                })
                .unwrap_or_default(),
            on_invalid: Some(Arc::new({
                let audit = audit.clone();
                move |call: &ToolCall, e: &crate::tools::ToolError, retried: bool| {
                    let (validation, status) = if retried { ("invalid_retried", "rejected") } else { ("invalid", "rejected") };
                    audit.record(call, "client", validation, status, 0.0, Some(e.to_string()));
                }
            })),
        };
        let mut rounds = 0;
        loop {
            let mut stream = tokio::select! {
                biased;
                reason = &mut cancel => return Err(Stop::Cancelled(reason.unwrap_or("client_cancelled"))),
                s = crate::tools::checked::generate_with(answering.llm.clone(), req.clone(), checks.clone()).instrument(llm_span.clone()) => s.map_err(Stop::Failed)?,
            };
            let mut server_calls = Vec::new();
            loop {
                tokio::select! {
                    biased;
                    reason = &mut cancel => return Err(Stop::Cancelled(reason.unwrap_or("client_cancelled"))),
                    ev = stream.next() => match ev {
                        Some(Ok(LlmEvent::Delta(d))) => {
                            if !model_started {
                                model_started = true;
                                llm_span.record("first_token_ms", generating.elapsed().as_secs_f64() * 1e3);
                            }
                            let verdicts = match check.as_mut() {
                                None => vec![Verdict::Send(d)],
                                Some(c) => c.push(&d),
                            };
                            for v in verdicts {
                                if let Some(m) = apply_verdict(v, &focus, &mut text, &mut first_delta, |t| emit(&speaker, t)) {
                                    made = Some(m);
                                    return Ok(());
                                }
                            }
                        }
                        Some(Ok(LlmEvent::ToolCall(call))) if is_server_call(&call.name) => server_calls.push(call),
                        Some(Ok(LlmEvent::ToolCall(call))) => {
                            if first_delta.is_none() {
                                first_delta = Some(Instant::now());
                                llm_span.record("first_token_ms", generating.elapsed().as_secs_f64() * 1e3);
                            }
                            let previous = match calls.last() {
                                Some((id, _)) => Some(id.clone()),
                                None if opened.load(std::sync::atomic::Ordering::Relaxed) => Some(item_id.clone()),
                                None => params.conversation.clone().flatten(),
                            };
                            tracing::info!(tool = %call.name, call_id = %call.id, arguments = %audit.redact(&call), "function call for the client");
                            crate::metrics::global().tool_calls.inc_pair(&call.name, "sent");
                            audit.record(&call, "client", "valid", "sent", 0.0, None);
                            let (id, item) = send_call(&call, calls.len(), previous);
                            call_items.push(item);
                            calls.push((id, call));
                        }
                        Some(Ok(LlmEvent::Done { usage: u, finish: f })) => {
                            usage.prompt_tokens += u.prompt_tokens;
                            usage.completion_tokens += u.completion_tokens;
                            usage.cached_tokens += u.cached_tokens;
                            if rounds == 0 {
                                usage.queue_ms = u.queue_ms;
                                usage.prefill_ms = u.prefill_ms;
                                usage.first_token_ms = u.first_token_ms;
                                usage.tokens_per_second = u.tokens_per_second;
                                usage.drafted_tokens = u.drafted_tokens;
                            }
                            finish = f;
                            if let Some(v) = check.as_mut().and_then(Check::finish) {
                                if let Some(m) = apply_verdict(v, &focus, &mut text, &mut first_delta, |t| emit(&speaker, t)) {
                                    made = Some(m);
                                    return Ok(());
                                }
                            }
                            if calls.is_empty() && made.is_none() && !text.is_empty() {
                                made = Some(if check.is_some() { "checked" } else { "model" });
                            }
                            break;
                        }
                        Some(Err(e)) => return Err(Stop::Failed(e)),
                        None => return Err(Stop::Failed(LlmError::Compute("the generation ended without finishing".into()))),
                    },
                }
            }
            let Some(server) = server.as_ref().filter(|_| !server_calls.is_empty()) else {
                return Ok(());
            };
            // The server runs its own tools and gives the model their results.
            for call in server_calls {
                let outcome = tokio::select! {
                    biased;
                    reason = &mut cancel => return Err(Stop::Cancelled(reason.unwrap_or("client_cancelled"))),
                    o = server.call(&call, &answering.caller, answering.kb.as_ref()) => o,
                };
                tracing::info!(tool = %call.name, call_id = %call.id, arguments = %audit.redact(&call), status = outcome.status, latency_ms = outcome.latency_ms, "server tool call");
                tracing::debug!(tool = %call.name, output = %if outcome.sensitive { crate::tools::schema::REDACTED } else { outcome.output.as_str() }, "server tool result");
                let m = crate::metrics::global();
                m.tool_calls.inc_pair(&call.name, outcome.status);
                if outcome.status != "refused" {
                    m.tool_seconds.observe_ms(outcome.latency_ms);
                }
                let error = (outcome.status != "ok").then(|| outcome.output.clone());
                let validation = if outcome.status == "refused" { "not_checked" } else { "valid" };
                audit.record(&call, "server", validation, outcome.status, outcome.latency_ms, error);
                if outcome.status == "refused" {
                    out.send(ServerEvent::Error {
                        error: ErrorBody {
                            kind: "invalid_request_error".into(),
                            code: Some("tool_not_allowed".into()),
                            message: format!("this API key may not use the tool `{}`; the model was told so", call.name),
                            param: None,
                            event_id: None,
                        },
                    });
                }
                server_log.push(json!({"call_id": call.id, "name": call.name, "status": outcome.status, "latency_ms": outcome.latency_ms}));
                req.messages.push(ChatMessage::calls("", vec![call.clone()]));
                req.messages.push(ChatMessage::tool_result(call.id.clone(), outcome.output));
            }
            rounds += 1;
            // After a few rounds of server tools, the model must answer.
            req.tool_choice = if rounds >= MAX_SERVER_ROUNDS { ToolChoice::None } else { ToolChoice::Auto };
        }
    }
    .await;

    // An answer no model wrote (the passage's sentence, "I don't know") still has an output
    // length, in the model's tokens.
    if matches!(made, Some("extractive" | "refused")) {
        usage.completion_tokens = answering.llm.count_tokens(&text);
    }
    let (status, details) = match &outcome {
        // Cut by max_output_tokens.
        Ok(()) if finish == FinishReason::Length => (
            "incomplete",
            json!({ "type": "incomplete", "reason": "max_output_tokens" }),
        ),
        Ok(()) => ("completed", Value::Null),
        Err(Stop::Cancelled(reason)) => (
            "cancelled",
            json!({ "type": "cancelled", "reason": reason }),
        ),
        Err(Stop::Ungrounded) => {
            // Fail closed: say so rather than answer from the model's own memory.
            text = CANNOT_LOOK_UP.to_string();
            emit(&speaker, text.clone());
            (
                "failed",
                json!({ "type": "failed", "error": { "type": "server_error", "code": "retrieval_failed", "message": "the knowledge base could not be searched, so no answer was generated" } }),
            )
        }
        Err(Stop::Failed(e)) => {
            tracing::warn!(error = %e, code = e.code(), "response failed");
            out.send(ServerEvent::Error {
                error: error_body(e),
            });
            (
                "failed",
                json!({ "type": "failed", "error": { "type": "server_error", "code": e.code(), "message": e.public_message() } }),
            )
        }
    };
    // A spoken answer ends when its last piece is sent, or at once on a cancel.
    let (mut status, mut details) = (status, details);
    let mut audio = None;
    let mut first_audio = None;
    if let Some(sp) = speaker.as_mut() {
        let finishing = matches!(&outcome, Ok(()) | Err(Stop::Ungrounded));
        if finishing {
            tokio::select! {
                biased;
                reason = &mut cancel => {
                    sp.stop();
                    let reason = reason.unwrap_or("client_cancelled");
                    status = "cancelled";
                    details = json!({ "type": "cancelled", "reason": reason });
                }
                () = sp.finish() => {}
            }
        } else {
            sp.stop();
        }
        let (pieces, first, _) = sp.snapshot();
        text = pieces
            .iter()
            .map(|p| p.text.as_str())
            .collect::<Vec<_>>()
            .join(" ");
        first_audio = first;
        audio = Some(pieces);
    }
    let item_status = if status == "completed" {
        "completed"
    } else {
        "incomplete"
    };
    // A failure or cancel before anything was said still closes with a (empty) message.
    if calls.is_empty() {
        open_message();
    }
    let mut output = Vec::new();
    if opened.load(std::sync::atomic::Ordering::Relaxed) {
        if spoken {
            out.send(ServerEvent::OutputAudioDone {
                response_id: response_id.clone(),
                item_id: item_id.clone(),
                output_index: 0,
                content_index: 0,
            });
            out.send(ServerEvent::OutputAudioTranscriptDone {
                response_id: response_id.clone(),
                item_id: item_id.clone(),
                output_index: 0,
                content_index: 0,
                transcript: text.clone(),
            });
        } else {
            out.send(ServerEvent::OutputTextDone {
                response_id: response_id.clone(),
                item_id: item_id.clone(),
                output_index: 0,
                content_index: 0,
                text: text.clone(),
            });
        }
        out.send(ServerEvent::ContentPartDone {
            response_id: response_id.clone(),
            item_id: item_id.clone(),
            output_index: 0,
            content_index: 0,
            part: part_of(&text),
        });
        let item = item_of(&text, item_status);
        out.send(ServerEvent::OutputItemDone {
            response_id: response_id.clone(),
            output_index: 0,
            item: item.clone(),
        });
        if let Some(previous_item_id) = &params.conversation {
            out.send(ServerEvent::ItemDone {
                previous_item_id: previous_item_id.clone(),
                item: item.clone(),
            });
        }
        output.push(item);
    }
    output.extend(call_items);
    let ms = |a: Instant, b: Instant| (b - a).as_secs_f64() * 1e3;
    // The outcome on the `response` span (logs and OTLP traces).
    let span = tracing::Span::current();
    span.record("status", status);
    if let Some(f) = first_delta {
        span.record("first_token_ms", ms(started, f));
    }
    // Signed: OTLP has no unsigned integers (a u64 would be exported as a string).
    span.record("prompt_tokens", usage.prompt_tokens as i64);
    span.record("cached_tokens", usage.cached_tokens as i64);
    span.record("output_tokens", usage.completion_tokens as i64);
    let m = crate::metrics::global();
    m.responses.inc(status);
    if let Some(made) = made {
        m.answers.inc(made);
    }
    if results.as_ref().is_some_and(|r| !r.grounded) {
        m.uncited.inc();
    }
    // How much of the answer its passages hold (the same measure `voxd eval` reports).
    let groundedness = results
        .as_ref()
        .filter(|r| r.grounded && !text.trim().is_empty() && made != Some("refused"))
        .map(|r| {
            let passages: Vec<&str> = r.passages.iter().map(|p| p.text.as_str()).collect();
            grounding::support::groundedness(&text, &passages)
        });
    if let Some(g) = groundedness {
        m.groundedness.observe(g);
    }
    if results.is_some() {
        m.retrieval.observe_ms(retrieval_ms);
    }
    // The LLM's own figures, when it was asked.
    let by_model = !matches!(made, Some("extractive" | "refused"));
    if let (Some(f), true) = (first_delta, by_model) {
        m.llm_queue_wait.observe_ms(usage.queue_ms);
        m.llm_first_token.observe_ms(ms(started, f));
        m.llm_tokens_per_second.observe(usage.tokens_per_second);
    }
    if let (Some(f), Some(s)) = (first_delta, speech_stopped_at) {
        m.stopped_to_first_token.observe_ms(ms(s, f));
    }
    if let (Some(s), Some(a)) = (speech_stopped_at, first_audio) {
        m.stopped_to_first_audio.observe_ms(ms(s, a));
    }
    if let (Some(s), "completed") = (speech_stopped_at, status) {
        m.stopped_to_done.observe_duration(s.elapsed());
    }
    let timing = json!({
        "retrieval_ms": retrieval_ms,
        "grounded": results.as_ref().map(|r| r.grounded),
        "first_token_ms": first_delta.map(|f| ms(started, f)),
        "speech_stopped_to_first_token_ms": match (speech_stopped_at, first_delta) {
            (Some(s), Some(f)) => Some(ms(s, f)),
            _ => None,
        },
        "first_audio_ms": first_audio.map(|a| ms(started, a)),
        "speech_stopped_to_first_audio_ms": match (speech_stopped_at, first_audio) {
            (Some(s), Some(a)) => Some(ms(s, a)),
            _ => None,
        },
        "audio_ms": audio.as_ref().and_then(|p: &Vec<Spoken>| p.last()).map(|p| p.end_ms),
        "total_ms": started.elapsed().as_secs_f64() * 1e3,
        "llm_queue_ms": usage.queue_ms,
        "llm_prefill_ms": usage.prefill_ms,
        "prompt_tokens": usage.prompt_tokens,
        "cached_tokens": usage.cached_tokens,
        "drafted_tokens": usage.drafted_tokens,
        "tokens_per_second": usage.tokens_per_second,
    });
    let mut response = response_object(
        rid,
        status,
        details,
        output,
        &params,
        Some((&usage, &results, timing)),
    );
    // voxd's addition: how the answer was made and how much of it its passages hold.
    response["voxd"]["answer"] = json!(made);
    response["voxd"]["groundedness"] = json!(groundedness);
    // voxd's addition: the server tools it ran for this answer.
    response["voxd"]["tool_calls"] = Value::Array(server_log);
    ending.store(true, std::sync::atomic::Ordering::SeqCst);
    out.send(ServerEvent::ResponseDone { response });
    tracing::info!(response = %response_id, status, chars = text.len(), "response finished");
    let _ = done
        .send(Finished {
            response_id,
            item_id,
            text,
            status,
            in_conversation: params.conversation.is_some(),
            audio,
            calls,
        })
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn factual_questions_are_told_from_small_talk() {
        for q in [
            "What's the capital of France?",
            "how much is a full service",
            "Um, where can I park?",
            "Tell me about the Ridgeline",
            "The wifi password?",
            "and your email address.",
            "What about the Ridgeline",
        ] {
            assert!(asks_for_facts(q), "{q}");
        }
        for t in [
            "Hello there",
            "Thanks, that's great.",
            "ok bye",
            "",
            "and thanks a lot",
            "And that's perfect.",
        ] {
            assert!(!asks_for_facts(t), "{t}");
        }
    }
}
