//! The responses of one session: starting one (with what it answers and its parameters),
//! cancelling it, putting its answer into the conversation when it ends, and the early
//! retrieval and prefill while the person pauses. Each response itself runs as a task
//! ([`answer::run`](super::answer::run)).

use std::time::Instant;

use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, Instrument};

use super::answer::{self, Answering, Finished, Prepared, ResponseJob, ResponseParams};
use super::conversation::{self, ConvItem, Conversation};
use super::hub::SessionOptions;
use super::out::Out;
use crate::prompt::Role;
use crate::protocol::{new_id, ProtocolError, ServerEvent};

/// The response being generated.
struct ActiveResponse {
    id: String,
    cancel: Option<oneshot::Sender<&'static str>>,
}

/// A session's responses.
pub(super) struct Responses {
    answering: Option<Answering>,
    out: Out,
    opts: watch::Receiver<SessionOptions>,
    active: Option<ActiveResponse>,
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
        out: Out,
        opts: watch::Receiver<SessionOptions>,
    ) -> Self {
        let (finished_tx, finished) = mpsc::channel(4);
        let (prepared_tx, prepared_rx) = mpsc::channel(4);
        Responses {
            answering,
            out,
            opts,
            active: None,
            finished_tx,
            finished,
            prepared_tx,
            prepared_rx,
            prepared: None,
            preparing: None,
        }
    }

    /// True while a response runs.
    pub(super) fn is_active(&self) -> bool {
        self.active.is_some()
    }

    /// Asks the running response to stop; false if there is none.
    pub(super) fn cancel_active(&mut self, reason: &'static str) -> bool {
        match self.active.as_mut().and_then(|a| a.cancel.take()) {
            Some(tx) => {
                debug!(reason, "cancelling the response");
                let _ = tx.send(reason);
                true
            }
            None => false,
        }
    }

    /// Cancels the running response and lets a new one start at once (a new turn supersedes
    /// the answer still running).
    pub(super) fn supersede(&mut self) {
        self.cancel_active("turn_detected");
        self.active = None;
    }

    /// Forgets what was retrieved ahead (the person spoke again).
    pub(super) fn forget_prepared(&mut self) {
        self.prepared = None;
    }

    /// Keeps an early retrieval for the response that follows.
    pub(super) fn set_prepared(&mut self, p: Prepared) {
        self.prepared = Some(p);
    }

    /// A response ended: its answer goes into the conversation.
    pub(super) fn finished(&mut self, f: Finished, conversation: &mut Conversation) {
        if self.active.as_ref().is_some_and(|a| a.id == f.response_id) {
            self.active = None;
        }
        debug!(response = %f.response_id, status = f.status, "response ended");
        conversation.insert_answer(
            &f.response_id,
            ConvItem {
                id: f.item_id,
                role: Role::Assistant,
                text: f.text,
            },
        );
    }

    /// Starts a response to the latest user message.
    pub(super) fn start(
        &mut self,
        conversation: &mut Conversation,
        event_id: Option<String>,
        overrides: Option<&serde_json::Value>,
        stopped_at: Option<Instant>,
    ) -> bool {
        let Some(answering) = self.answering.clone() else {
            return self.out.send(ServerEvent::server_error(
                "llm_unavailable",
                "the language model is not loaded (still loading, or it failed to load)",
            ));
        };
        if self.active.is_some() {
            return self.out.error(
                &ProtocolError::new(
                    "conversation_already_has_active_response",
                    "a response is in progress; cancel it first (response.cancel)",
                )
                .event(event_id),
            );
        }
        let Some(pos) = conversation
            .items
            .iter()
            .rposition(|i| i.role == Role::User)
        else {
            return self.out.error(
                &ProtocolError::new(
                    "response_needs_input",
                    "there is no user message to respond to: speak, or add one with conversation.item.create",
                )
                .event(event_id),
            );
        };
        let opts = self.opts.borrow().clone();
        let get = |k: &str| overrides.and_then(|o| o.get(k));
        if let Some(text) = get("instructions").and_then(|v| v.as_str()) {
            if let Err(e) = crate::protocol::session::check_model_text(
                text,
                crate::protocol::session::MAX_INSTRUCTIONS_BYTES,
                "response.instructions",
            ) {
                return self.out.error(&e.event(event_id));
            }
        }
        let instructions = get("instructions")
            .and_then(|v| v.as_str())
            .map(str::to_string)
            .filter(|s| !s.trim().is_empty())
            .or_else(|| Some(opts.instructions.clone()).filter(|s| !s.trim().is_empty()))
            .unwrap_or_else(|| answering.settings.instructions.clone());
        let max_tokens = get("max_output_tokens")
            .and_then(|v| v.as_u64())
            .map(|n| n.clamp(1, 4096) as usize)
            .or(opts.max_output_tokens.map(|n| n as usize))
            .unwrap_or(answering.settings.max_tokens);
        let user = conversation.items[pos].text.clone();
        let history = conversation::history(&conversation.items[..pos]);
        let prepared = self.prepared.take().filter(|p| p.question == user);
        let (cancel_tx, cancel_rx) = oneshot::channel();
        let response_id = new_id("resp");
        conversation.reserve_answer(&response_id, pos);
        self.active = Some(ActiveResponse {
            id: response_id.clone(),
            cancel: Some(cancel_tx),
        });
        // Follow one turn's answer through the logs: session id (outer span), response id and
        // the user item it answers.
        let span = tracing::info_span!(
            "response",
            id = %response_id,
            answers = %conversation.items[pos].id,
            status = tracing::field::Empty,
            first_token_ms = tracing::field::Empty,
            prompt_tokens = tracing::field::Empty,
            cached_tokens = tracing::field::Empty,
            output_tokens = tracing::field::Empty,
        );
        let job = ResponseJob {
            response_id,
            item_id: new_id("item"),
            params: ResponseParams {
                instructions,
                max_tokens,
                use_kb: opts.knowledge_base,
                citations_event: opts.citations_event,
                modalities: opts.modalities.clone(),
            },
            history,
            user,
            prepared,
            speech_stopped_at: stopped_at,
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
        true
    }

    /// Retrieves and prefills for what the person seems to have asked, while they pause.
    pub(super) fn prepare(&mut self, conversation: &Conversation, question: String) {
        let opts = self.opts.borrow().clone();
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
        let tx = self.prepared_tx.clone();
        let instructions = if opts.instructions.trim().is_empty() {
            answering.settings.instructions.clone()
        } else {
            opts.instructions.clone()
        };
        self.preparing = Some(tokio::spawn(
            async move {
                let results = if opts.knowledge_base {
                    match answer::retrieve(answering.kb.as_ref(), &question).await {
                        Ok(r) => r,
                        // The response retries, and says it cannot look it up if that fails too.
                        Err(_) => return,
                    }
                } else {
                    None
                };
                let mut msgs =
                    answer::messages(&answering, &instructions, &results, &history, &question);
                let _ = tx.send(Prepared { question, results }).await;
                msgs.pop(); // everything but the question
                if let Err(e) = answering.llm.prefill(msgs).await {
                    debug!(error = %e, "early prefill failed");
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
