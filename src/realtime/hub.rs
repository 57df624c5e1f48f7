//! The hub of a session: one task that owns the session's state and routes to it, in order,
//! what happens: signals of the audio stage and ASR results go to [`Turns`], the client's
//! conversation and response requests to [`Conversation`] and [`Responses`], and what one part
//! hears that another must act on (a committed turn, a transcript, speech that interrupts an
//! answer) is passed between them here.

use std::sync::Arc;

use tokio::sync::{mpsc, watch};

use super::answer::Answering;
use super::audio_stage::{AudioInput, AudioSignal};
use super::command::Command;
use super::conversation::{parse_item, truncate_spoken, ConvItem, Conversation};
use super::mcp::{approval_response, AttachedMcp};
use super::options::SessionOptions;
use super::out::Out;
use super::responses::Responses;
use super::turns::{Heard, Turns};
use crate::asr::Asr;
use crate::prompt::Role;
use crate::protocol::server::TranscriptionUsage;
use crate::protocol::{new_id, Item, ProtocolError, ServerEvent};

pub(super) struct Hub {
    out: Out,
    opts: watch::Receiver<SessionOptions>,
    turns: Turns,
    conversation: Conversation,
    responses: Responses,
    /// To restart the audio stage's idle timer when a response ends (weak: the reader's drop of
    /// its sender still ends the stage).
    audio: mpsc::WeakSender<AudioInput>,
    /// What the audio stage was last told about a running response.
    told_responding: bool,
    /// A `conversation.item.truncate` of the answer still being generated: applied when it
    /// ends and joins the conversation (a client stops playback, then truncates, then cancels).
    deferred_truncate: Option<Command>,
    /// Client commands held until the running response ends: an output for one of its function
    /// calls (sent on `response.output_item.done`, before `response.done`), and every command
    /// after it, in order (a cancel excepted).
    deferred: std::collections::VecDeque<Command>,
    /// The MCP servers the client attached.
    mcp: AttachedMcp,
}

/// Where the session's turns find the knowledge base: the one it started with, else the one the
/// server has loaded since.
fn kb_source(
    answering: Option<&Answering>,
    later: Option<super::AnsweringSource>,
) -> super::turns::KbSource {
    let now = answering.and_then(|a| a.kb.clone());
    Box::new(move || {
        now.clone()
            .or_else(|| later.as_ref().and_then(|f| f()).and_then(|a| a.kb))
    })
}

/// Longest wait for an ending response's items before a client command goes ahead anyway
/// (they follow `response.done` at once; this only bounds a response task that died between).
const ENDING_WAIT: std::time::Duration = std::time::Duration::from_secs(2);
/// Client commands held at most while a response ends (beyond, they run at once).
const MAX_DEFERRED: usize = 64;

impl Hub {
    pub(super) fn new(
        asr: Arc<dyn Asr>,
        answering: Option<Answering>,
        answering_later: Option<super::AnsweringSource>,
        out: Out,
        opts: watch::Receiver<SessionOptions>,
        audio: mpsc::WeakSender<AudioInput>,
    ) -> Self {
        Hub {
            turns: Turns::new(
                asr,
                kb_source(answering.as_ref(), answering_later.clone()),
                out.clone(),
                opts.clone(),
            ),
            responses: Responses::new(answering, answering_later, out.clone(), opts.clone()),
            conversation: Conversation::default(),
            out,
            opts,
            audio,
            told_responding: false,
            deferred_truncate: None,
            deferred: std::collections::VecDeque::new(),
            mcp: AttachedMcp::new(),
        }
    }

    /// Runs until the audio stage has gone and nothing is in flight, or the client is gone.
    pub(super) async fn run(mut self, mut signals: mpsc::Receiver<AudioSignal>) {
        let mut signals_open = true;
        loop {
            let ok = tokio::select! {
                s = signals.recv(), if signals_open => match s {
                    Some(AudioSignal::Client(c)) => {
                        // The client may have seen `response.done` before the session has the
                        // answer's items: take them first (they follow at once).
                        if self.responses.ending() {
                            let next = self.responses.finished.recv();
                            if let Ok(Some(f)) = tokio::time::timeout(ENDING_WAIT, next).await {
                                if !self.on_finished(f) {
                                    return;
                                }
                            }
                        }
                        self.client_command(c)
                    }
                    Some(s) => {
                        let heard = self.turns.signal(s);
                        self.heard(heard)
                    }
                    None => { signals_open = false; true }
                },
                Some(r) = self.turns.results.recv() => {
                    let heard = self.turns.result(r);
                    self.heard(heard)
                }
                Some(f) = self.responses.finished.recv() => self.on_finished(f),
                Some(p) = self.responses.prepared_rx.recv() => {
                    self.responses.set_prepared(p);
                    true
                }
                Some(l) = self.mcp.listed.recv() => {
                    let session_id = self.opts.borrow().session_id.clone();
                    let answering = self.responses.answering().cloned();
                    self.mcp.listed(l, &mut self.conversation, &self.out, answering.as_ref(), &session_id);
                    self.responses.set_mcp(self.mcp.offers());
                    true
                }
            };
            if !ok {
                return;
            }
            // Start the next response once nothing runs and what it answers is transcribed.
            self.responses.pump(&mut self.conversation);
            // While a response runs, speech must last longer to interrupt it (barge-in).
            let busy = self.responses.busy();
            if busy != self.told_responding {
                if let Some(audio) = self.audio.upgrade() {
                    if audio.try_send(AudioInput::Responding(busy)).is_ok() {
                        self.told_responding = busy;
                    }
                }
            }
            if !signals_open && !self.turns.pending() && !self.responses.busy() {
                return;
            }
        }
    }

    /// A response ended: its items join the conversation; false when the client is gone.
    fn on_finished(&mut self, f: super::answer::Finished) -> bool {
        self.responses.finished(f, &mut self.conversation);
        if let Some(c) = self.deferred_truncate.take() {
            if !self.command(c) {
                return false;
            }
        }
        if let Some(audio) = self.audio.upgrade() {
            // The idle timeout counts from the end of the answer.
            let _ = audio.try_send(AudioInput::ResetIdle);
        }
        for c in std::mem::take(&mut self.deferred) {
            if !self.client_command(c) {
                return false;
            }
        }
        true
    }

    /// A client's command, held while an earlier one waits for the running response to end.
    fn client_command(&mut self, c: Command) -> bool {
        let cancel = matches!(c, Command::Cancel { .. });
        if self.deferred.len() < MAX_DEFERRED
            && !cancel
            && (!self.deferred.is_empty() || self.output_of_a_running_call(&c))
        {
            self.deferred.push_back(c);
            return true;
        }
        self.command(c)
    }

    /// Whether `c` adds the output of a call that is not in the conversation while a response
    /// runs: that response's own call, which joins the conversation when it ends.
    fn output_of_a_running_call(&self, c: &Command) -> bool {
        // An item of the running response (an MCP call under way, say) is retrieved once the
        // response ends and its items have joined the conversation.
        if let Command::Retrieve { item_id, .. } = c {
            return self.responses.active_item().is_some()
                && self.conversation.get(item_id).is_none();
        }
        let Command::CreateItem { item, .. } = c else {
            return false;
        };
        self.responses.active_item().is_some()
            && parse_item(item).is_ok_and(|(m, _)| {
                m.tool_call_id
                    .as_ref()
                    .is_some_and(|id| !self.conversation.has_call(id))
            })
    }

    /// Acts on what the turns heard, then on every turn whose transcript is ready; false when
    /// the client is gone.
    fn heard(&mut self, heard: Option<Heard>) -> bool {
        let mut ok = match heard {
            Some(h) => self.act(h),
            None => true,
        };
        while ok {
            match self.turns.next_finished() {
                Some(h) => ok = self.act(h),
                None => break,
            }
        }
        ok
    }

    fn act(&mut self, heard: Heard) -> bool {
        match heard {
            Heard::SpeechStarted => {
                if self.opts.borrow().interrupt_response {
                    self.responses.cancel_active("turn_detected");
                }
                self.responses.forget_prepared();
                true
            }
            Heard::Speculated(text) => {
                self.responses.prepare(&self.conversation, text);
                true
            }
            Heard::Committed { item_id } => self.commit(ConvItem::spoken(item_id)),
            Heard::Transcribed {
                item_id,
                text,
                stopped_at,
            } => {
                let Some(item) = self.conversation.get_mut(&item_id) else {
                    return true; // deleted meanwhile
                };
                item.text = text.trim().to_string();
                item.pending = false;
                let (wire, heard_words) = (item.to_item(), !item.text.is_empty());
                let ok = self.out.send(ServerEvent::ItemDone {
                    previous_item_id: self.conversation.previous_of(&item_id),
                    item: wire,
                });
                let opts = self.opts.borrow().clone();
                if ok
                    && heard_words
                    && opts.realtime
                    && opts.create_response
                    && stopped_at.is_some()
                {
                    // A new turn supersedes an answer still running.
                    self.responses.respond_to_turn(item_id, stopped_at);
                }
                ok
            }
            Heard::Failed { item_id } => {
                if let Some(item) = self.conversation.get_mut(&item_id) {
                    item.pending = false;
                }
                true
            }
            Heard::Cleared => true,
            Heard::IdleTimeout {
                audio_start_ms,
                audio_end_ms,
            } => {
                // Nobody is silent while a turn or an answer is under way.
                if self.turns.pending() || self.responses.busy() {
                    return true;
                }
                // As OpenAI: what was heard (silence) is committed as a turn, and a response
                // asks whether the person is still there.
                let item_id = new_id("item");
                let mut item = ConvItem::spoken(item_id.clone());
                item.pending = false;
                let seconds = audio_end_ms.saturating_sub(audio_start_ms) as f64 / 1000.0;
                let ok = self.out.send(ServerEvent::TimeoutTriggered {
                    audio_start_ms,
                    audio_end_ms,
                    item_id: item_id.clone(),
                }) && self.commit(item.clone())
                    && self.out.send(ServerEvent::TranscriptionCompleted {
                        item_id: item_id.clone(),
                        content_index: 0,
                        transcript: String::new(),
                        usage: TranscriptionUsage::seconds(seconds),
                        voxd_timing: None,
                    })
                    && self.out.send(ServerEvent::ItemDone {
                        previous_item_id: self.conversation.previous_of(&item_id),
                        item: item.to_item(),
                    });
                let opts = self.opts.borrow().clone();
                if ok && opts.realtime && opts.create_response {
                    self.responses.nudge(item_id);
                }
                ok
            }
        }
    }

    /// A turn's audio joins the conversation: `input_audio_buffer.committed` and
    /// `conversation.item.added`.
    fn commit(&mut self, item: ConvItem) -> bool {
        let wire = item.to_item();
        let item_id = item.id.clone();
        let previous_item_id = self.conversation.push(item);
        self.out.send(ServerEvent::Committed {
            previous_item_id: previous_item_id.clone(),
            item_id,
        }) && self.out.send(ServerEvent::ItemAdded {
            previous_item_id,
            item: wire,
        })
    }

    fn unknown_item(&self, code: &'static str, item_id: &str, event_id: Option<String>) -> bool {
        self.out.error(
            &ProtocolError::new(
                code,
                format!("there is no item `{item_id}` in the conversation"),
            )
            .param("item_id")
            .event(event_id),
        )
    }

    fn command(&mut self, c: Command) -> bool {
        match c {
            Command::CreateResponse { event_id, response } => {
                self.responses
                    .request(&self.conversation, event_id, response.as_ref());
                true
            }
            Command::Cancel { event_id } => {
                if self.responses.cancel_active("client_cancelled") {
                    true
                } else {
                    self.out.error(
                        &ProtocolError::new(
                            "response_cancel_not_active",
                            "there is no response in progress to cancel",
                        )
                        .event(event_id),
                    )
                }
            }
            Command::CreateItem {
                event_id,
                item,
                previous_item_id,
            } => self.create_item(event_id, &item, previous_item_id),
            Command::Truncate {
                event_id,
                item_id,
                audio_end_ms,
            } => self.truncate(event_id, item_id, audio_end_ms),
            Command::Retrieve { event_id, item_id } => match self.conversation.get(&item_id) {
                Some(item) => self.out.send(ServerEvent::ItemRetrieved {
                    item: item.to_item(),
                }),
                None => self.unknown_item("item_retrieve_invalid_item_id", &item_id, event_id),
            },
            Command::Delete { event_id, item_id } => {
                if self.conversation.delete(&item_id) {
                    self.out.send(ServerEvent::ItemDeleted { item_id })
                } else {
                    self.unknown_item("item_delete_invalid_item_id", &item_id, event_id)
                }
            }
            Command::AttachMcp { servers } => {
                let answering = self.responses.answering().cloned();
                self.mcp.attach(
                    servers,
                    &mut self.conversation,
                    &self.out,
                    answering.as_ref(),
                );
                self.responses.set_mcp(self.mcp.offers());
                true
            }
        }
    }

    /// A client's `mcp_approval_response`: it must answer an approval request of the
    /// conversation that is not answered yet; then a response runs (or reports) the call.
    fn approval_response(&mut self, event_id: Option<String>, item: Item) -> bool {
        let request_id = item.approval_request_id.clone().unwrap_or_default();
        let asked = self.conversation.get(&request_id).is_some_and(|i| {
            i.mcp
                .as_ref()
                .is_some_and(|m| m.kind == "mcp_approval_request")
        });
        let answered = self.conversation.items.iter().any(|i| {
            i.mcp.as_ref().is_some_and(|m| {
                m.kind == "mcp_approval_response"
                    && m.approval_request_id.as_deref() == Some(request_id.as_str())
            })
        });
        let problem = if !asked {
            Some(format!(
                "there is no MCP approval request `{request_id}` in the conversation"
            ))
        } else if answered {
            Some(format!(
                "the approval request `{request_id}` was already answered"
            ))
        } else if self.conversation.get(&item.id).is_some() {
            Some(format!(
                "the conversation already has an item `{}`",
                item.id
            ))
        } else {
            None
        };
        if let Some(message) = problem {
            return self.out.error(
                &ProtocolError::new("invalid_item", message)
                    .param("item.approval_request_id")
                    .event(event_id),
            );
        }
        let previous_item_id = self.conversation.push(ConvItem::mcp(item.clone()));
        let ok = self.out.send(ServerEvent::ItemAdded {
            previous_item_id: previous_item_id.clone(),
            item: item.clone(),
        }) && self.out.send(ServerEvent::ItemDone {
            previous_item_id,
            item,
        });
        self.responses.request(&self.conversation, None, None);
        ok
    }

    /// `conversation.item.create`: a message or a function call's output, appended or inserted
    /// after `previous_item_id`.
    fn create_item(
        &mut self,
        event_id: Option<String>,
        item: &serde_json::Value,
        previous_item_id: Option<String>,
    ) -> bool {
        match approval_response(item) {
            Ok(Some(approval)) => return self.approval_response(event_id, approval),
            Ok(None) => {}
            Err(message) => {
                return self.out.error(
                    &ProtocolError::new("invalid_item", message)
                        .param("item")
                        .event(event_id),
                )
            }
        }
        match parse_item(item) {
            Ok((message, id)) => {
                let id = id.unwrap_or_else(|| new_id("item"));
                if let Some(call_id) = &message.tool_call_id {
                    if !self.conversation.has_call(call_id) {
                        let message = format!(
                            "there is no function call `{call_id}` in the conversation for this output"
                        );
                        return self.out.error(
                            &ProtocolError::new("invalid_item", message)
                                .param("item.call_id")
                                .event(event_id),
                        );
                    }
                }
                if self.conversation.get(&id).is_some() {
                    return self.out.error(
                        &ProtocolError::new(
                            "item_id_in_use",
                            format!("the conversation already has an item `{id}`"),
                        )
                        .param("item.id")
                        .event(event_id),
                    );
                }
                let item = ConvItem::from_message(id, message);
                let wire = item.to_item();
                let previous_item_id = match previous_item_id {
                    None => self.conversation.push(item),
                    Some(after) => match self.conversation.insert_after(&after, item) {
                        Some(previous) => previous,
                        None => {
                            return self.out.error(
                                &ProtocolError::new(
                                    "item_create_invalid_previous_item_id",
                                    format!("there is no item `{after}` to insert after"),
                                )
                                .param("previous_item_id")
                                .event(event_id),
                            )
                        }
                    },
                };
                self.out.send(ServerEvent::ItemAdded {
                    previous_item_id: previous_item_id.clone(),
                    item: wire.clone(),
                }) && self.out.send(ServerEvent::ItemDone {
                    previous_item_id,
                    item: wire,
                })
            }
            Err(message) => self.out.error(
                &ProtocolError::new("invalid_item", message)
                    .param("item")
                    .event(event_id),
            ),
        }
    }

    /// `conversation.item.truncate`: an assistant message cut at what was heard (a spoken
    /// answer at the word that was playing); the answer still being generated is truncated
    /// once it ends.
    fn truncate(&mut self, event_id: Option<String>, item_id: String, audio_end_ms: u64) -> bool {
        if self.conversation.get(&item_id).is_none()
            && self.responses.active_item() == Some(item_id.as_str())
        {
            // Its answer is still being generated: truncate it once it ends. A later
            // truncate of it replaces this one.
            self.deferred_truncate = Some(Command::Truncate {
                event_id,
                item_id,
                audio_end_ms,
            });
            return true;
        }
        let Some(item) = self
            .conversation
            .get_mut(&item_id)
            .filter(|i| i.role == Role::Assistant && i.call.is_none())
        else {
            return self.out.error(
                &ProtocolError::new(
                    "item_truncate_invalid_item_id",
                    format!("no assistant message `{item_id}` to truncate"),
                )
                .param("item_id")
                .event(event_id),
            );
        };
        item.text = match &item.audio {
            // A spoken answer: cut at the word that was playing.
            Some(pieces) => {
                let length = pieces.last().map_or(0, |p| p.end_ms);
                if audio_end_ms > length {
                    return self.out.error(
                        &ProtocolError::new(
                            "invalid_audio_end_ms",
                            format!(
                                "audio_end_ms {audio_end_ms} is beyond the item's audio ({length} ms)"
                            ),
                        )
                        .param("audio_end_ms")
                        .event(event_id),
                    );
                }
                super::speaker::heard(pieces, audio_end_ms)
            }
            // A text answer (no audio was sent): an estimate of what was read aloud.
            None => truncate_spoken(&item.text, audio_end_ms),
        };
        self.out.send(ServerEvent::ItemTruncated {
            item_id,
            content_index: 0,
            audio_end_ms,
        })
    }
}
