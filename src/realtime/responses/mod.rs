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

use serde_json::Value;
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, Instrument};

use super::answer::mcp::McpOffers;
use super::answer::{self, Answering, Finished, Prepared, ResponseJob};
use super::conversation::{self, ConvItem, Conversation};
use super::options::SessionOptions;
use super::out::Out;
use crate::prompt::{ChatMessage, Role};
use crate::protocol::session::tool_error;
use crate::protocol::{new_id, ProtocolError, ServerEvent};

mod context;
mod request;

pub use context::is_follow_up;
use context::{context_in_conversation, response_params, Context};
use request::{InputItem, ResponseRequest};

/// Responses that may wait behind the running one.
pub const MAX_WAITING: usize = 4;

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
    /// The tools of the MCP servers the client attached.
    mcp: McpOffers,
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
            mcp: McpOffers::default(),
        }
    }

    /// Whether the LLM is there to answer: taken from the server the first time it has loaded.
    fn ready(&mut self) -> bool {
        if self.answering.is_none() {
            self.answering = self.answering_later.as_ref().and_then(|later| later());
        }
        self.answering.is_some()
    }

    /// The server's answering parts, once loaded.
    pub(super) fn answering(&mut self) -> Option<&Answering> {
        self.ready();
        self.answering.as_ref()
    }

    /// The tools of the client's MCP servers, for the responses that start from now on.
    pub(super) fn set_mcp(&mut self, mcp: McpOffers) {
        self.mcp = mcp;
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
            let mut items: Vec<ConvItem> = f.mcp_items.into_iter().map(ConvItem::mcp).collect();
            items.push(item);
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
        // A response's own MCP entries name servers attached (and listed) in the session.
        if let Some(label) = request
            .mcp_labels
            .iter()
            .flatten()
            .find(|l| !self.mcp.0.iter().any(|o| &o.label == *l))
        {
            self.out.error(
                &ProtocolError::new(
                    "mcp_not_attached",
                    format!("the MCP server `{label}` is not attached to the session (or has no tools): attach it with session.update first"),
                )
                .param("response.tools")
                .event(request.event_id.clone()),
            );
            return;
        }
        let tools = tools.merged(&context::mcp_tools(
            &self.mcp.only(request.mcp_labels.as_deref()),
        ));
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
        let context = match (&r.input, &w.answers) {
            (Some(input), _) => self.context_of_input(input, conversation, r),
            (None, Some(id)) => Some(context_in_conversation(id, conversation, r.nudge)),
            (None, None) => None,
        };
        let Some(Context {
            history,
            user,
            after,
            after_items,
            previous_item_id,
        }) = context
        else {
            return;
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
        // Approval requests answered since the user's words: the response runs them first.
        let approvals = match (&r.input, &w.answers) {
            (None, Some(id)) => conversation
                .items
                .iter()
                .position(|i| &i.id == id)
                .map(|pos| super::mcp::answered_approvals(&conversation.items[pos + 1..]))
                .unwrap_or_default(),
            _ => Vec::new(),
        };
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
                (&self.mcp, approvals),
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

    /// The context of a response with its own `input`: its messages up to the last user
    /// message, and what followed it. `None` (the error sent) when a reference is unknown or no
    /// user message is there.
    fn context_of_input(
        &self,
        input: &[InputItem],
        conversation: &Conversation,
        r: &ResponseRequest,
    ) -> Option<Context> {
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
                        return None;
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
            return None;
        };
        let user = msgs.remove(pos).content;
        let after = msgs.split_off(pos);
        Some(Context {
            history: msgs,
            user,
            after,
            after_items: 0,
            previous_item_id: conversation.items.last().map(|i| i.id.clone()),
        })
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
            (&self.mcp, Vec::new()),
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

/// Tokens of an answer drafted while the person pauses: enough for the first phrase to speak. A
/// response that comes for the model meanwhile cuts the draft short and takes what there is.
const DRAFT_TOKENS: usize = 8;

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
