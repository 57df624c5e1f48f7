//! One response: an answer to the conversation so far, grounded in the knowledge base and
//! streamed as OpenAI Realtime `response.*` events.
//!
//! A response runs as its own task, as a sequence of steps, each in its own file:
//!
//! 1. [`ground`]: retrieve (or reuse what was retrieved while the person was still talking) and
//!    rank the passages' sentences against the question;
//! 2. [`choose`]: the way to answer: "I don't know", the passage's own sentence, or the model
//!    (with the messages and request it gets);
//! 3. [`generate`]: the model writes the answer, checked sentence by sentence in the checked
//!    mode, with rounds of tool calls ([`audit`] records them);
//! 4. speak: the [`items`] writer sends the message and call items, and the speaker its audio;
//! 5. [`report`]: status, metrics, timing and `response.done`.
//!
//! A cancel (`response.cancel`, or the person starting to talk again) stops it at once: the LLM
//! stream is dropped, which stops the generation loop, and no delta follows the cancel.

mod audit;
mod choose;
mod generate;
mod ground;
mod items;
pub mod mcp;
mod report;

use std::sync::Arc;
use std::time::Instant;

use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot};

use super::out::Out;
use super::speaker::{Speaker, SpeechParams, Spoken, Target};
use crate::grounding::{AnswerMode, Focus};
use crate::llm::{FinishReason, Llm, LlmError, Usage};
use crate::prompt::ChatMessage;
use crate::protocol::{Item, ServerEvent};
use crate::rag::{KnowledgeBase, SearchResults};
use crate::tools::{ToolCall, ToolChoice, ToolSet};
use items::Writer;

pub use choose::{answer_mode, answers_without_model, messages, request};
pub use ground::{asks_for_facts, focus, retrieve, RetrievalFailed, CANNOT_LOOK_UP, NOT_FOUND};

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
    /// The tools of the MCP servers the client attached (also in `tools`).
    pub mcp: mcp::McpOffers,
    /// Approval requests the client has answered since the user's words: approved calls run
    /// first, declined ones are reported to the model.
    pub approvals: Vec<mcp::Approved>,
    pub tool_choice: ToolChoice,
    /// The session's id (for the audit trail).
    pub session_id: String,
    /// Results of the turn's function calls follow the user's words: they ground the answer
    /// (the knowledge base not covering the question is no reason to say "I don't know").
    pub follows_results: bool,
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
    /// Its MCP calls and approval requests, in order.
    pub mcp_items: Vec<Item>,
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

/// Most rounds of server tools in one response before the model must answer.
pub const MAX_SERVER_ROUNDS: usize = 3;

/// Why a response stopped before its model finished.
enum Stop {
    Cancelled(&'static str),
    Failed(LlmError),
    /// The knowledge base could not be searched.
    Ungrounded,
}

/// The response's cancel: `response.cancel`, or the person talking again.
struct Cancel(oneshot::Receiver<&'static str>);

impl Cancel {
    /// `work`'s output, or [`Stop::Cancelled`] as soon as the cancel comes (it wins a tie).
    async fn or<F: std::future::Future>(&mut self, work: F) -> Result<F::Output, Stop> {
        tokio::select! {
            biased;
            reason = &mut self.0 => Err(Stop::Cancelled(reason.unwrap_or("client_cancelled"))),
            v = work => Ok(v),
        }
    }
}

/// What a response has produced so far; each step adds to it.
struct Answer {
    /// What retrieval found, and the sentences of it that bear on the question.
    results: Option<SearchResults>,
    focus: Focus,
    retrieval_ms: f64,
    /// The assistant's text as sent.
    text: String,
    /// How the answer was made (for `voxd_answers_total` and the response's `voxd.answer`).
    made: Option<&'static str>,
    first_delta: Option<Instant>,
    usage: Usage,
    finish: FinishReason,
    /// Function calls for the client (item id, call) and their finished items.
    calls: Vec<(String, ToolCall)>,
    /// Output items other than the message (function calls, MCP calls and approval requests),
    /// with their output indexes.
    call_items: Vec<(u32, Item)>,
    /// A call waits for the client's approval: the response ends without answering.
    awaiting_approval: bool,
    /// The server tools it ran (reported in `response.done` as `voxd.tool_calls`).
    server_log: Vec<Value>,
    /// For a spoken answer: the pieces sent, and when its first audio went out.
    audio: Option<Vec<Spoken>>,
    first_audio: Option<Instant>,
}

impl Default for Answer {
    fn default() -> Self {
        Answer {
            results: None,
            focus: Focus::default(),
            retrieval_ms: 0.0,
            text: String::new(),
            made: None,
            first_delta: None,
            usage: Usage::default(),
            finish: FinishReason::Stop,
            calls: Vec::new(),
            call_items: Vec::new(),
            awaiting_approval: false,
            server_log: Vec::new(),
            audio: None,
            first_audio: None,
        }
    }
}

/// What the steps of one response read.
struct Ctx<'a> {
    answering: &'a Answering,
    params: &'a ResponseParams,
    writer: &'a Writer,
    out: &'a Out,
    response_id: &'a str,
    /// Earlier turns, the user's words, and the calls and results that followed them.
    history: &'a [ChatMessage],
    user: &'a str,
    after: &'a [ChatMessage],
}

/// The steps a cancel can interrupt at any point: ground, choose, generate.
async fn answer(
    ctx: &Ctx<'_>,
    prepared: Option<Prepared>,
    query: &str,
    answer: &mut Answer,
    cancel: &mut Cancel,
) -> Result<(), Stop> {
    let (answering, params) = (ctx.answering, ctx.params);
    ground::ground(
        answering.kb.as_ref(),
        params.use_kb,
        prepared,
        ctx.user,
        query,
        answer,
        cancel,
    )
    .await?;
    if params.citations_event {
        ctx.out.send(ServerEvent::Citations {
            response_id: ctx.response_id.to_string(),
            grounded: answer.results.as_ref().is_some_and(|r| r.grounded),
            citations: report::citations_json(&answer.results),
        });
    }
    if choose::say_without_model(answering, params, ctx.user, answer, ctx.writer) {
        return Ok(());
    }
    generate::generate(ctx, answer, cancel).await
}

/// Lets a spoken answer end: when its last piece is sent, or at once on a cancel (whose
/// reason is returned). The answer's text becomes what was spoken.
async fn finish_speech(
    writer: &mut Writer,
    finishing: bool,
    cancel: &mut Cancel,
    answer: &mut Answer,
) -> Option<&'static str> {
    let sp = writer.speaker.as_mut()?;
    let mut cancelled = None;
    if finishing {
        if let Err(Stop::Cancelled(reason)) = cancel.or(sp.finish()).await {
            sp.stop();
            cancelled = Some(reason);
        }
    } else {
        sp.stop();
    }
    let (pieces, first, _) = sp.snapshot();
    answer.text = pieces
        .iter()
        .map(|p| p.text.as_str())
        .collect::<Vec<_>>()
        .join(" ");
    answer.first_audio = first;
    answer.audio = Some(pieces);
    cancelled
}

/// Runs one response to the end (or cancel) and reports how it ended.
pub(crate) async fn run(
    job: ResponseJob,
    answering: Answering,
    out: Out,
    cancel: oneshot::Receiver<&'static str>,
    done: mpsc::Sender<Finished>,
) {
    let clock = report::Clock {
        started: Instant::now(),
        speech_stopped_at: job.speech_stopped_at,
    };
    let ResponseJob {
        response_id,
        item_id,
        params,
        history,
        user,
        after,
        query,
        prepared,
        silence,
        ending,
        ..
    } = job;
    let message_index = Arc::new(std::sync::atomic::AtomicU32::new(0));
    // A spoken answer's voice: it sends the answer's transcript with its audio.
    let speaker = params
        .speech
        .clone()
        .zip(answering.tts.clone())
        .map(|(speech, tts)| {
            let target = Target {
                response_id: response_id.clone(),
                item_id: item_id.clone(),
                silence,
                output_index: message_index.clone(),
            };
            Speaker::start(tts, speech, out.clone(), target)
        });
    let mut writer = Writer::new(
        out.clone(),
        &response_id,
        &item_id,
        params.conversation.clone(),
        speaker,
        message_index,
    );
    out.send(ServerEvent::ResponseCreated {
        response: report::response_object(
            &response_id,
            "in_progress",
            Value::Null,
            vec![],
            &params,
            None,
        ),
    });
    if !params.offers_tools() {
        writer.open_message();
    }
    let mut cancel = Cancel(cancel);
    let mut answer = Answer::default();
    let ctx = Ctx {
        answering: &answering,
        params: &params,
        writer: &writer,
        out: &out,
        response_id: &response_id,
        history: &history,
        user: &user,
        after: &after,
    };
    let outcome = self::answer(&ctx, prepared, &query, &mut answer, &mut cancel).await;
    let (status, details) = settle(
        &outcome,
        &answering,
        &out,
        &mut writer,
        &mut cancel,
        &mut answer,
    )
    .await;
    // MCP calls cut off by a cancel or failure end as failed items.
    answer.call_items.extend(writer.fail_open_mcp_calls());
    // A failure or cancel before anything was said still closes with a (empty) message.
    if answer.calls.is_empty() && !answer.awaiting_approval {
        writer.open_message();
    }
    let item_status = if status == "completed" {
        "completed"
    } else {
        "incomplete"
    };
    let mut indexed: Vec<(u32, Item)> = writer
        .close_message(&answer.text, item_status)
        .map(|m| (writer.message_index(), m))
        .into_iter()
        .collect();
    let mcp_items: Vec<Item> = answer
        .call_items
        .iter()
        .filter(|(_, i)| i.kind.starts_with("mcp_"))
        .map(|(_, i)| i.clone())
        .collect();
    indexed.append(&mut answer.call_items);
    indexed.sort_by_key(|(i, _)| *i);
    let output: Vec<Item> = indexed.into_iter().map(|(_, i)| i).collect();
    let response = report::finished(
        &response_id,
        (status, details),
        output,
        &params,
        &mut answer,
        &clock,
    );
    ending.store(true, std::sync::atomic::Ordering::SeqCst);
    out.send(ServerEvent::ResponseDone { response });
    tracing::info!(response = %response_id, status, chars = answer.text.len(), "response finished");
    let _ = done
        .send(Finished {
            response_id,
            item_id,
            text: answer.text,
            status,
            in_conversation: params.conversation.is_some(),
            audio: answer.audio,
            calls: answer.calls,
            mcp_items,
        })
        .await;
}

/// How the response ends after its steps: its status, what a failure says (the knowledge base
/// could not be searched) or reports (a model error), and the end of its speech.
async fn settle(
    outcome: &Result<(), Stop>,
    answering: &Answering,
    out: &Out,
    writer: &mut Writer,
    cancel: &mut Cancel,
    answer: &mut Answer,
) -> (&'static str, Value) {
    // An answer no model wrote (the passage's sentence, "I don't know") still has an output
    // length, in the model's tokens.
    if matches!(answer.made, Some("extractive" | "refused")) {
        answer.usage.completion_tokens = answering.llm.count_tokens(&answer.text);
    }
    let (mut status, mut details) = report::status(outcome, answer.finish);
    match outcome {
        Err(Stop::Ungrounded) => {
            answer.text = CANNOT_LOOK_UP.to_string();
            writer.emit(answer.text.clone());
        }
        Err(Stop::Failed(e)) => {
            tracing::warn!(error = %e, code = e.code(), "response failed");
            out.send(ServerEvent::Error {
                error: report::error_body(e),
            });
        }
        _ => {}
    }
    let finishing = matches!(outcome, Ok(()) | Err(Stop::Ungrounded));
    if let Some(reason) = finish_speech(writer, finishing, cancel, answer).await {
        status = "cancelled";
        details = json!({ "type": "cancelled", "reason": reason });
    }
    (status, details)
}
