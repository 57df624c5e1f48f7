//! The responses of one session: reading a `response.create` (what it answers, its context and
//! parameters), waiting until what it answers has been transcribed, running one at a time in
//! the order asked, cancelling, putting each answer into the conversation when it ends, and
//! the early retrieval and prefill while the person pauses. Each response itself runs as a task
//! ([`answer::run`](super::answer::run)).
//!
//! A `response.create` answers the newest user item at the moment it arrives (or the `input`
//! it names). If that item is a spoken turn still being transcribed, the response waits for
//! the transcript: "commit, then create" answers the question just asked, never the one before.
//! While a response runs, another one for the same item is refused
//! (`conversation_already_has_active_response`); one for newer input waits its turn (at most
//! [`MAX_WAITING`]).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use serde_json::{Map, Value};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, Instrument};

use super::answer::{self, Answering, Finished, Prepared, ResponseJob, ResponseParams};
use super::conversation::{self, parse_item, ConvItem, Conversation};
use super::options::SessionOptions;
use super::out::Out;
use super::speaker::SpeechParams;
use crate::prompt::{ChatMessage, Role};
use crate::protocol::session::{check_model_text, tool_error, MAX_INSTRUCTIONS_BYTES};
use crate::protocol::{new_id, ProtocolError, ServerEvent};
use crate::tools::{ToolChoice, ToolSet};

/// Responses that may wait behind the running one.
pub const MAX_WAITING: usize = 4;
/// `metadata`: at most 16 pairs, keys up to 64 characters, values up to 512 (as OpenAI).
const MAX_METADATA_PAIRS: usize = 16;

/// What the user is asked when they have said nothing for the session's `idle_timeout_ms`.
const IDLE_NUDGE: &str = "The user has not said anything for a while. In one short sentence, \
ask whether they are still there or whether there is anything else you can help with.";

/// A `response.create`, read and checked.
#[derive(Debug, Clone, Default)]
pub(super) struct ResponseRequest {
    pub event_id: Option<String>,
    /// `conversation: "none"`: the answer stays out of the conversation.
    pub out_of_band: bool,
    /// `input`: the context to answer instead of the conversation.
    pub input: Option<Vec<InputItem>>,
    pub metadata: Option<Map<String, Value>>,
    pub instructions: Option<String>,
    pub max_tokens: Option<usize>,
    /// Ask whether the person is still there (the idle timeout), rather than answer.
    pub nudge: bool,
    /// `output_modalities`: `Some(true)` to speak, `Some(false)` for text.
    pub speak: Option<bool>,
    /// `audio.output.voice`.
    pub voice: Option<String>,
    /// `audio.output.format`.
    pub output_format: Option<crate::protocol::InputFormat>,
    /// `tools`: this response's own (instead of the session's).
    pub tools: Option<ToolSet>,
    /// `tool_choice`: this response's own.
    pub tool_choice: Option<ToolChoice>,
}

/// How a response is spoken: the session's settings with the response's own over them; `None`
/// for text (asked for, or the server has no voice).
fn speech_of(opts: &SessionOptions, r: &ResponseRequest) -> Option<SpeechParams> {
    let speak = r.speak.unwrap_or(opts.speech.is_some()) && !opts.voices.is_empty();
    if !speak {
        return None;
    }
    let mut params = opts.speech.clone().unwrap_or(SpeechParams {
        format: crate::protocol::InputFormat::Pcm16 { rate: 24_000 },
        voice: opts.voices[0].clone(),
        speed: 1.0,
        binary: false,
    });
    if let Some(v) = &r.voice {
        params.voice = v.clone();
    }
    if let Some(f) = r.output_format {
        params.format = f;
    }
    Some(params)
}

/// One item of a response's `input`.
#[derive(Debug, Clone)]
pub(super) enum InputItem {
    Message(ChatMessage),
    /// An item of the conversation, by id.
    Reference(String),
}

fn bad(param: &str, message: impl Into<String>, event_id: &Option<String>) -> ProtocolError {
    ProtocolError::new("invalid_response_config", message)
        .param(param)
        .event(event_id.clone())
}

impl ResponseRequest {
    /// Reads the `response` object of a `response.create` (absent: all defaults).
    pub(super) fn parse(
        response: Option<&Value>,
        event_id: Option<String>,
        voices: &[String],
    ) -> Result<Self, ProtocolError> {
        let mut r = ResponseRequest {
            event_id: event_id.clone(),
            ..Default::default()
        };
        let Some(v) = response else { return Ok(r) };
        let obj = v
            .as_object()
            .ok_or_else(|| bad("response", "`response` must be an object", &event_id))?;
        match obj.get("conversation") {
            None | Some(Value::Null) => {}
            Some(Value::String(c)) if c == "auto" => {}
            Some(Value::String(c)) if c == "none" => r.out_of_band = true,
            Some(_) => {
                return Err(bad(
                    "response.conversation",
                    "must be \"auto\" or \"none\"",
                    &event_id,
                ))
            }
        }
        if let Some(text) = obj.get("instructions").filter(|v| !v.is_null()) {
            let text = text
                .as_str()
                .ok_or_else(|| bad("response.instructions", "must be a string", &event_id))?;
            check_model_text(text, MAX_INSTRUCTIONS_BYTES, "response.instructions")
                .map_err(|e| e.event(event_id.clone()))?;
            if !text.trim().is_empty() {
                r.instructions = Some(text.to_string());
            }
        }
        match obj
            .get("max_output_tokens")
            .or(obj.get("max_response_output_tokens"))
        {
            None | Some(Value::Null) => {}
            Some(Value::String(s)) if s == "inf" => {}
            Some(v) => match v.as_u64() {
                Some(n @ 1..=4096) => r.max_tokens = Some(n as usize),
                _ => {
                    return Err(bad(
                        "response.max_output_tokens",
                        "must be an integer from 1 to 4096, or \"inf\"",
                        &event_id,
                    ))
                }
            },
        }
        if let Some(m) = obj.get("metadata").filter(|v| !v.is_null()) {
            let map = m.as_object().ok_or_else(|| {
                bad(
                    "response.metadata",
                    "must be an object of strings",
                    &event_id,
                )
            })?;
            if map.len() > MAX_METADATA_PAIRS {
                return Err(bad(
                    "response.metadata",
                    format!("may hold at most {MAX_METADATA_PAIRS} pairs"),
                    &event_id,
                ));
            }
            for (k, v) in map {
                let ok =
                    k.chars().count() <= 64 && v.as_str().is_some_and(|s| s.chars().count() <= 512);
                if !ok {
                    return Err(bad(
                        "response.metadata",
                        "keys must be at most 64 characters and values strings of at most 512",
                        &event_id,
                    ));
                }
            }
            r.metadata = Some(map.clone());
        }
        if let Some(list) = obj.get("input").filter(|v| !v.is_null()) {
            let list = list
                .as_array()
                .ok_or_else(|| bad("response.input", "must be an array of items", &event_id))?;
            if list.len() > conversation::MAX_ITEMS {
                return Err(bad(
                    "response.input",
                    format!("may hold at most {} items", conversation::MAX_ITEMS),
                    &event_id,
                ));
            }
            let mut items = Vec::with_capacity(list.len());
            for (i, item) in list.iter().enumerate() {
                let param = format!("response.input[{i}]");
                if item.get("type").and_then(Value::as_str) == Some("item_reference") {
                    let id = item
                        .get("id")
                        .and_then(Value::as_str)
                        .ok_or_else(|| bad(&param, "an item_reference needs `id`", &event_id))?;
                    items.push(InputItem::Reference(id.to_string()));
                } else {
                    let (message, _) = parse_item(item).map_err(|m| bad(&param, m, &event_id))?;
                    items.push(InputItem::Message(message));
                }
            }
            r.input = Some(items);
        }
        if let Some(m) = obj.get("output_modalities").filter(|v| !v.is_null()) {
            let list = m
                .as_array()
                .ok_or_else(|| bad("response.output_modalities", "must be an array", &event_id))?;
            let mut speak = false;
            for m in list {
                match m.as_str() {
                    Some("audio") => speak = true,
                    Some("text") => {}
                    _ => {
                        return Err(bad(
                            "response.output_modalities",
                            "may contain only \"text\" and \"audio\"",
                            &event_id,
                        ))
                    }
                }
            }
            r.speak = Some(speak);
        }
        if let Some(output) = obj
            .get("audio")
            .and_then(|a| a.get("output"))
            .filter(|v| !v.is_null())
        {
            if let Some(v) = output.get("voice") {
                r.voice = Some(
                    crate::protocol::session::check_voice(v, voices, "response.audio.output.voice")
                        .map_err(|e| e.event(event_id.clone()))?,
                );
            }
            if let Some(v) = output.get("format") {
                r.output_format = Some(
                    crate::protocol::session::parse_format(v, "response.audio.output.format")
                        .map_err(|e| e.event(event_id.clone()))?,
                );
            }
        }
        if let Some(t) = obj.get("tools").filter(|v| !v.is_null()) {
            r.tools = Some(
                ToolSet::parse(t, "response.tools")
                    .map_err(|e| tool_error(e).event(event_id.clone()))?,
            );
        }
        if let Some(c) = obj.get("tool_choice").filter(|v| !v.is_null()) {
            r.tool_choice = Some(
                ToolChoice::parse(c, "response.tool_choice")
                    .map_err(|e| tool_error(e).event(event_id.clone()))?,
            );
        }
        Ok(r)
    }
}

/// A response asked for and not started yet.
struct Waiting {
    request: ResponseRequest,
    /// The conversation item it answers (none when it has its own `input`).
    answers: Option<String>,
    /// When the person stopped talking (automatic responses to a VAD turn).
    stopped_at: Option<Instant>,
}

/// The response being generated.
struct ActiveResponse {
    id: String,
    /// Its message item (in the conversation once the response ends).
    item_id: String,
    answers: Option<String>,
    cancel: Option<oneshot::Sender<&'static str>>,
    /// Set at a cancel, before anything else: the answer's voice sends nothing more.
    silence: Arc<AtomicBool>,
    /// Set when its `response.done` is about to go out (see [`Responses::ending`]).
    ending: Arc<AtomicBool>,
}

/// A session's responses.
pub(super) struct Responses {
    answering: Option<Answering>,
    /// Where to look for `answering` while it is `None` (the LLM may still be loading).
    answering_later: Option<super::AnsweringSource>,
    out: Out,
    opts: watch::Receiver<SessionOptions>,
    active: Option<ActiveResponse>,
    waiting: VecDeque<Waiting>,
    finished_tx: mpsc::Sender<Finished>,
    /// Responses that ended, for [`Responses::finished`].
    pub(super) finished: mpsc::Receiver<Finished>,
    prepared_tx: mpsc::Sender<Prepared>,
    /// Early retrievals that completed, for [`Responses::set_prepared`].
    pub(super) prepared_rx: mpsc::Receiver<Prepared>,
    prepared: Option<Prepared>,
    /// The early retrieval and prefill under way; aborted when the session ends. (Not when the
    /// person goes on talking: the passages usually stay the same, so the prefix it caches still
    /// serves the final question.)
    preparing: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for Responses {
    fn drop(&mut self) {
        self.stop_preparing();
    }
}

impl Responses {
    pub(super) fn new(
        answering: Option<Answering>,
        answering_later: Option<super::AnsweringSource>,
        out: Out,
        opts: watch::Receiver<SessionOptions>,
    ) -> Self {
        let (finished_tx, finished) = mpsc::channel(4);
        let (prepared_tx, prepared_rx) = mpsc::channel(4);
        Responses {
            answering,
            answering_later,
            out,
            opts,
            active: None,
            waiting: VecDeque::new(),
            finished_tx,
            finished,
            prepared_tx,
            prepared_rx,
            prepared: None,
            preparing: None,
        }
    }

    /// Whether the LLM is there to answer: taken from the server the first time it has loaded.
    fn ready(&mut self) -> bool {
        if self.answering.is_none() {
            self.answering = self.answering_later.as_ref().and_then(|later| later());
        }
        self.answering.is_some()
    }

    /// The message item of the response being generated.
    pub(super) fn active_item(&self) -> Option<&str> {
        self.active.as_ref().map(|a| a.item_id.as_str())
    }

    /// True once the running response has sent (or is sending) `response.done`, until the
    /// session has its [`Finished`]: a client command that follows `response.done` must wait
    /// for it, since it may name the answer's items (a function call's output).
    pub(super) fn ending(&self) -> bool {
        self.active
            .as_ref()
            .is_some_and(|a| a.ending.load(Ordering::SeqCst))
    }

    /// True while a response runs or waits.
    pub(super) fn busy(&self) -> bool {
        self.active.is_some() || !self.waiting.is_empty()
    }

    /// Asks the running response to stop; false if there is none.
    pub(super) fn cancel_active(&mut self, reason: &'static str) -> bool {
        if let Some(a) = &self.active {
            a.silence.store(true, Ordering::SeqCst);
        }
        match self.active.as_mut().and_then(|a| a.cancel.take()) {
            Some(tx) => {
                debug!(reason, "cancelling the response");
                let _ = tx.send(reason);
                true
            }
            None => false,
        }
    }

    /// Forgets what was retrieved ahead (the person spoke again).
    pub(super) fn forget_prepared(&mut self) {
        self.prepared = None;
    }

    /// Keeps an early retrieval for the response that follows.
    pub(super) fn set_prepared(&mut self, p: Prepared) {
        self.prepared = Some(p);
    }

    /// A response ended: its answer goes into the conversation (unless it was out of band).
    pub(super) fn finished(&mut self, f: Finished, conversation: &mut Conversation) {
        if self.active.as_ref().is_some_and(|a| a.id == f.response_id) {
            self.active = None;
        }
        debug!(response = %f.response_id, status = f.status, "response ended");
        if f.in_conversation {
            let mut item = ConvItem::text(f.item_id, Role::Assistant, f.text);
            item.audio = f.audio;
            item.status = if f.status == "completed" {
                "completed"
            } else {
                "incomplete"
            };
            let mut items = vec![item];
            items.extend(
                f.calls
                    .into_iter()
                    .map(|(id, call)| ConvItem::function_call(id, call)),
            );
            conversation.insert_answer(&f.response_id, items);
        } else {
            conversation.release_answer(&f.response_id);
        }
    }

    /// A client's `response.create`.
    pub(super) fn request(
        &mut self,
        conversation: &Conversation,
        event_id: Option<String>,
        response: Option<&Value>,
    ) {
        if !self.ready() {
            self.out.send(ServerEvent::server_error(
                "llm_unavailable",
                "the language model is not loaded (still loading, or it failed to load)",
            ));
            return;
        }
        let voices = self.opts.borrow().voices.clone();
        let request = match ResponseRequest::parse(response, event_id, &voices) {
            Ok(r) => r,
            Err(e) => {
                self.out.error(&e);
                return;
            }
        };
        let (tools, choice) = {
            let opts = self.opts.borrow();
            (
                request.tools.clone().unwrap_or_else(|| opts.tools.clone()),
                request
                    .tool_choice
                    .clone()
                    .unwrap_or_else(|| opts.tool_choice.clone()),
            )
        };
        if let Err(e) = choice.check(&tools, "response.tool_choice") {
            self.out
                .error(&tool_error(e).event(request.event_id.clone()));
            return;
        }
        let answers = match &request.input {
            Some(_) => None,
            None => match conversation
                .items
                .iter()
                .rev()
                .find(|i| i.role == Role::User)
            {
                Some(i) => Some(i.id.clone()),
                None => {
                    self.out.error(
                        &ProtocolError::new(
                            "response_needs_input",
                            "there is no user message to respond to: speak, or add one with conversation.item.create",
                        )
                        .event(request.event_id),
                    );
                    return;
                }
            },
        };
        let same = |a: &Option<String>| answers.is_some() && *a == answers;
        if self.active.as_ref().is_some_and(|a| same(&a.answers))
            || self.waiting.iter().any(|w| same(&w.answers))
        {
            self.out.error(
                &ProtocolError::new(
                    "conversation_already_has_active_response",
                    "a response to this input is in progress; wait for it, or cancel it first (response.cancel)",
                )
                .event(request.event_id),
            );
            return;
        }
        if self.waiting.len() >= MAX_WAITING {
            self.out.error(
                &ProtocolError::new(
                    "conversation_already_has_active_response",
                    format!(
                        "{MAX_WAITING} responses are already waiting; wait for them, or cancel"
                    ),
                )
                .event(request.event_id),
            );
            return;
        }
        self.waiting.push_back(Waiting {
            request,
            answers,
            stopped_at: None,
        });
    }

    /// The automatic response to a turn the VAD ended: it supersedes the answer still running
    /// and goes first.
    pub(super) fn respond_to_turn(&mut self, item_id: String, stopped_at: Option<Instant>) {
        if !self.ready() {
            return;
        }
        self.cancel_active("turn_detected");
        self.active = None;
        self.waiting.push_front(Waiting {
            request: ResponseRequest::default(),
            answers: Some(item_id),
            stopped_at,
        });
    }

    /// The response to the idle timeout: asks whether the person is still there.
    pub(super) fn nudge(&mut self, item_id: String) {
        if !self.ready() || self.busy() {
            return;
        }
        self.waiting.push_back(Waiting {
            request: ResponseRequest {
                nudge: true,
                ..Default::default()
            },
            answers: Some(item_id),
            stopped_at: None,
        });
    }

    /// Starts the next waiting response when none runs and what it answers is ready.
    pub(super) fn pump(&mut self, conversation: &mut Conversation) {
        while self.active.is_none() {
            let Some(w) = self.waiting.front() else {
                return;
            };
            let problem = match &w.answers {
                None => None,
                Some(id) => match conversation.get(id) {
                    None => Some(format!("the item `{id}` it answers was deleted")),
                    Some(i) if i.pending => return, // wait for the transcript
                    Some(i) if i.text.trim().is_empty() && !w.request.nudge => {
                        Some(format!("no words were heard in `{id}`"))
                    }
                    Some(_) => None,
                },
            };
            let w = self.waiting.pop_front().expect("checked");
            match problem {
                Some(message) => {
                    self.out.error(
                        &ProtocolError::new("response_needs_input", message)
                            .event(w.request.event_id),
                    );
                }
                None => self.start(conversation, w),
            }
        }
    }

    /// Starts a response now.
    fn start(&mut self, conversation: &mut Conversation, w: Waiting) {
        let Some(answering) = self.answering.clone() else {
            return;
        };
        let opts = self.opts.borrow().clone();
        let r = &w.request;
        // What it answers: (earlier turns, the user's words, the item answered), and what
        // followed the user's words (function calls and their results).
        let mut after: Vec<ChatMessage> = Vec::new();
        let mut after_items = 0;
        let (history, user, previous_item_id) = match (&r.input, &w.answers) {
            (Some(input), _) => {
                let mut msgs: Vec<ChatMessage> = Vec::new();
                for item in input {
                    match item {
                        InputItem::Message(m) => msgs.push(m.clone()),
                        InputItem::Reference(id) => match conversation.get(id) {
                            Some(i) if !i.text.trim().is_empty() || i.is_tool_item() => {
                                msgs.extend(conversation::history(std::slice::from_ref(i)))
                            }
                            Some(_) => {}
                            None => {
                                self.out.error(
                                    &ProtocolError::new(
                                        "invalid_item_reference",
                                        format!("there is no item `{id}` in the conversation"),
                                    )
                                    .param("response.input")
                                    .event(r.event_id.clone()),
                                );
                                return;
                            }
                        },
                    }
                }
                let Some(pos) = msgs.iter().rposition(|m| m.role == Role::User) else {
                    self.out.error(
                        &ProtocolError::new(
                            "response_needs_input",
                            "the response's input has no user message to respond to",
                        )
                        .param("response.input")
                        .event(r.event_id.clone()),
                    );
                    return;
                };
                let user = msgs.remove(pos).content;
                after = msgs.split_off(pos);
                (msgs, user, conversation.items.last().map(|i| i.id.clone()))
            }
            (None, Some(id)) => {
                let pos = conversation
                    .items
                    .iter()
                    .position(|i| &i.id == id)
                    .expect("checked by pump");
                // Function calls made for this question and their results follow it.
                let rest = &conversation.items[pos + 1..];
                let mut previous = id.clone();
                if rest.iter().any(ConvItem::is_tool_item) {
                    after = conversation::history(rest);
                    after_items = rest.len();
                    previous = rest.last().map_or(previous, |i| i.id.clone());
                }
                let history = conversation::history(&conversation.items[..pos]);
                let user = if r.nudge {
                    format!("[{IDLE_NUDGE}]")
                } else {
                    conversation.items[pos].text.clone()
                };
                (history, user, Some(previous))
            }
            (None, None) => return,
        };
        // A follow-up ("how much does it cost?") is searched with the question before it.
        let query = match history.iter().rev().find(|m| m.role == Role::User) {
            Some(before) if is_follow_up(&user) => format!("{} {user}", before.content),
            _ => user.clone(),
        };
        let prepared = self.prepared.take().filter(|p| p.question == query);
        let (cancel_tx, cancel_rx) = oneshot::channel();
        let silence = Arc::new(AtomicBool::new(false));
        let ending = Arc::new(AtomicBool::new(false));
        let response_id = new_id("resp");
        let in_conversation = !r.out_of_band;
        if in_conversation {
            if let (None, Some(id)) = (&r.input, &w.answers) {
                if let Some(pos) = conversation.items.iter().position(|i| &i.id == id) {
                    conversation.reserve_answer(&response_id, pos + after_items);
                }
            }
        }
        let item_id = new_id("item");
        self.active = Some(ActiveResponse {
            id: response_id.clone(),
            item_id: item_id.clone(),
            answers: w.answers.clone(),
            cancel: Some(cancel_tx),
            silence: silence.clone(),
            ending: ending.clone(),
        });
        // Follow one turn's answer through the logs: session id (outer span), response id and
        // the user item it answers.
        let span = tracing::info_span!(
            "response",
            id = %response_id,
            answers = %w.answers.as_deref().unwrap_or("input"),
            status = tracing::field::Empty,
            first_token_ms = tracing::field::Empty,
            prompt_tokens = tracing::field::Empty,
            cached_tokens = tracing::field::Empty,
            output_tokens = tracing::field::Empty,
        );
        let job = ResponseJob {
            response_id,
            item_id,
            params: response_params(
                &opts,
                r,
                &answering,
                &after,
                in_conversation.then_some(previous_item_id),
            ),
            after,
            history,
            user,
            query,
            prepared,
            speech_stopped_at: w.stopped_at,
            silence,
            ending,
        };
        tokio::spawn(
            answer::run(
                job,
                answering,
                self.out.clone(),
                cancel_rx,
                self.finished_tx.clone(),
            )
            .instrument(span),
        );
    }

    /// While the person pauses: retrieves for what they seem to have asked and drafts the first
    /// tokens of the answer (prefilling the prompt on the way), so that when the turn ends the
    /// response finds the passages found and the draft ready. If the person goes on, the final
    /// question differs and the draft is never used (the prompt's prefix stays cached).
    pub(super) fn prepare(&mut self, conversation: &Conversation, question: String) {
        let opts = self.opts.borrow().clone();
        if !self.ready() {
            return;
        }
        let Some(answering) = self
            .answering
            .clone()
            .filter(|_| opts.realtime && opts.create_response)
        else {
            return;
        };
        if question.trim().is_empty() {
            return;
        }
        let history = conversation::history(&conversation.items);
        let query = match history.iter().rev().find(|m| m.role == Role::User) {
            Some(before) if is_follow_up(&question) => format!("{} {question}", before.content),
            _ => question.clone(),
        };
        let tx = self.prepared_tx.clone();
        // The parameters the response to this turn will have.
        let params = response_params(
            &opts,
            &ResponseRequest::default(),
            &answering,
            &[],
            Some(None),
        );
        self.preparing = Some(tokio::spawn(
            async move {
                let results = if params.use_kb {
                    match answer::retrieve(answering.kb.as_ref(), &query).await {
                        Ok(r) => r,
                        // The response retries, and says it cannot look it up if that fails too.
                        Err(_) => return,
                    }
                } else {
                    None
                };
                let focus = answer::focus(answering.kb.as_ref(), &question, &query, &results).await;
                let _ = tx
                    .send(Prepared {
                        question: query,
                        results: results.clone(),
                        focus: focus.clone(),
                    })
                    .await;
                if answer::answers_without_model(&answering, &params, &results, &focus, &question)
                    || answer::answer_mode(&answering, &params, &results, &focus, &question)
                        == crate::grounding::AnswerMode::Extractive
                {
                    return;
                }
                let msgs =
                    answer::messages(&answering, &params, &results, &focus, &history, &question);
                let req = answer::request(&answering, &params, msgs);
                if let Err(e) = answering.llm.speculate(req, DRAFT_TOKENS).await {
                    debug!(error = %e, "drafting the answer failed");
                }
            }
            .instrument(tracing::info_span!("prepare")),
        ));
    }

    /// Aborts the early prefill under way, if any.
    fn stop_preparing(&mut self) {
        if let Some(task) = self.preparing.take() {
            task.abort();
        }
    }
}

/// A response's parameters: the request's own settings over the session's over the server's.
/// `after`: what followed the user's words (function calls and their results); `conversation`:
/// the item the answer follows, `None` for an out-of-band response. The response and the
/// speculation in the pause both build theirs here, so a draft matches its response exactly.
fn response_params(
    opts: &SessionOptions,
    r: &ResponseRequest,
    answering: &Answering,
    after: &[ChatMessage],
    conversation: Option<Option<String>>,
) -> ResponseParams {
    let mut instructions = r
        .instructions
        .clone()
        .or_else(|| Some(opts.instructions.clone()).filter(|s| !s.trim().is_empty()))
        .unwrap_or_else(|| answering.settings.instructions.clone());
    if r.nudge {
        instructions = format!("{instructions}\n\n{IDLE_NUDGE}");
    }
    let max_tokens = r
        .max_tokens
        .or(opts.max_output_tokens.map(|n| n as usize))
        .unwrap_or(answering.settings.max_tokens);
    ResponseParams {
        instructions,
        max_tokens,
        use_kb: opts.knowledge_base && !r.nudge,
        citations_event: opts.citations_event,
        metadata: r.metadata.clone(),
        conversation,
        speech: speech_of(opts, r),
        client_tools: r.tools.clone().unwrap_or_else(|| opts.tools.clone()),
        tools: r
            .tools
            .clone()
            .unwrap_or_else(|| opts.tools.clone())
            .merged(
                &answering
                    .server_tools
                    .as_ref()
                    .map(|s| s.offered_to(&answering.caller))
                    .unwrap_or_default(),
            ),
        session_id: opts.session_id.clone(),
        tool_choice: match r
            .tool_choice
            .clone()
            .unwrap_or_else(|| opts.tool_choice.clone())
        {
            // The call this turn had to make was made and answered: now the model
            // answers from the result rather than call again forever (as the Agents SDK
            // resets a forced choice after a call). A `response.create` that sets its
            // own `tool_choice` gets exactly that.
            ToolChoice::Required | ToolChoice::Function(_)
                if r.tool_choice.is_none() && after.iter().any(|m| m.tool_call_id.is_some()) =>
            {
                ToolChoice::None
            }
            c => c,
        },
    }
}

/// Tokens of an answer drafted while the person pauses: enough for the first phrase to speak. A
/// response that comes for the model meanwhile cuts the draft short and takes what there is.
const DRAFT_TOKENS: usize = 8;

/// Whether a short question leans on the one before it: it names its subject with a pronoun
/// ("how much does it cost?", "how long are they valid?"), is "and" with at most three words
/// ("and your email?"), or starts with "what about".
pub fn is_follow_up(text: &str) -> bool {
    const LEANING: &[&str] = &[
        "it", "its", "it's", "they", "them", "their", "that", "those", "this", "these", "he",
        "she", "him", "her", "his",
    ];
    let words: Vec<String> = text
        .to_lowercase()
        .split(|c: char| !(c.is_alphanumeric() || c == '\''))
        .filter(|w| !w.is_empty())
        .map(str::to_string)
        .collect();
    if words.is_empty() || words.len() > 10 {
        return false;
    }
    // "And your email?" leans on the question before; "and where is the shop?" does not.
    (words[0] == "and" && words.len() <= 4)
        || text.to_lowercase().trim_start().starts_with("what about")
        || text.to_lowercase().trim_start().starts_with("how about")
        || words.iter().any(|w| LEANING.contains(&w.as_str()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn follow_ups_are_the_questions_that_lean_on_the_one_before() {
        for yes in [
            "How much does it cost?",
            "And your email address?",
            "How long are they valid for?",
            "How long is that ride?",
            "What about Sundays?",
        ] {
            assert!(is_follow_up(yes), "{yes}");
        }
        for no in [
            "Where is the shop?",
            "How long does a bike fit take?",
            "Can I bring my dog into the shop?",
            "Is there a winter sale on?",
            "And where is the shop?",
            "",
        ] {
            assert!(!is_follow_up(no), "{no}");
        }
    }

    #[test]
    fn response_create_is_read_and_bad_fields_named() {
        let r = ResponseRequest::parse(
            Some(&json!({"conversation": "none", "metadata": {"topic": "hours"},
                "max_output_tokens": 20, "instructions": "Be brief.",
                "input": [{"type": "item_reference", "id": "item_1"},
                          {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Hi"}]}]})),
            Some("e1".into()),
            &[],
        )
        .unwrap();
        assert!(r.out_of_band);
        assert_eq!(r.max_tokens, Some(20));
        assert_eq!(r.metadata.unwrap()["topic"], "hours");
        assert_eq!(r.input.unwrap().len(), 2);
        let param = |v: Value| {
            let e = ResponseRequest::parse(Some(&v), None, &["joe".into()]).unwrap_err();
            (e.code, e.param.unwrap())
        };
        assert_eq!(
            param(json!({"conversation": "other"})).1,
            "response.conversation"
        );
        assert_eq!(param(json!({"metadata": {"k": 1}})).1, "response.metadata");
        assert_eq!(
            param(json!({"max_output_tokens": 0})).1,
            "response.max_output_tokens"
        );
        assert_eq!(
            param(json!({"input": [{"type": "item_reference"}]})).1,
            "response.input[0]"
        );
        assert_eq!(
            param(json!({"tools": [{"type": "function", "name": "has space"}]})),
            ("invalid_tool", "response.tools[0].name".to_string())
        );
        assert_eq!(
            param(json!({"tool_choice": "sometimes"})).0,
            "invalid_tool_choice"
        );
        assert_eq!(
            param(json!({"instructions": "a\u{0}b"})).0,
            "invalid_session_config"
        );
    }
}
