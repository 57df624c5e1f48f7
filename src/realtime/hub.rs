//! The hub of a session: one task that owns the session's state and routes to it, in order,
//! what happens: signals of the audio stage and ASR results go to [`Turns`], the client's
//! conversation and response requests to [`Conversation`] and [`Responses`], and what one part
//! hears that another must act on (a committed turn, a transcript, speech that interrupts an
//! answer) is passed between them here.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::{mpsc, watch};

use super::answer::Answering;
use super::audio_stage::AudioSignal;
use super::conversation::{parse_item, truncate_spoken, ConvItem, Conversation};
use super::out::Out;
use super::responses::Responses;
use super::turns::{Heard, Turns};
use crate::asr::Asr;
use crate::prompt::Role;
use crate::protocol::{new_id, Item, ProtocolError, ServerEvent, SessionConfig, SessionKind};

/// What the hub reads from the current session configuration.
#[derive(Debug, Clone, Default)]
pub(super) struct SessionOptions {
    pub language: Option<String>,
    pub prompt: Option<String>,
    pub realtime: bool,
    pub instructions: String,
    pub create_response: bool,
    pub interrupt_response: bool,
    pub max_output_tokens: Option<u32>,
    pub citations_event: bool,
    pub knowledge_base: bool,
    pub modalities: Vec<String>,
}

impl SessionOptions {
    pub(super) fn of(c: &SessionConfig) -> Self {
        SessionOptions {
            language: c.language.clone(),
            prompt: c.prompt.clone(),
            realtime: c.kind == SessionKind::Realtime,
            instructions: c.instructions.clone(),
            // Without server VAD there is no turn to respond to automatically.
            create_response: c.turn_detection.is_some_and(|t| t.create_response),
            interrupt_response: c.turn_detection.is_some_and(|t| t.interrupt_response),
            max_output_tokens: c.max_output_tokens,
            citations_event: c.citations_event,
            knowledge_base: c.knowledge_base,
            modalities: c.output_modalities.clone(),
        }
    }
}

/// Conversation and response requests from the client.
pub(super) enum Command {
    CreateResponse {
        event_id: Option<String>,
        response: Option<serde_json::Value>,
    },
    Cancel {
        event_id: Option<String>,
    },
    CreateItem {
        event_id: Option<String>,
        item: serde_json::Value,
    },
    Truncate {
        event_id: Option<String>,
        item_id: String,
        audio_end_ms: u64,
    },
}

pub(super) struct Hub {
    out: Out,
    opts: watch::Receiver<SessionOptions>,
    turns: Turns,
    conversation: Conversation,
    responses: Responses,
    /// The `previous_item_id` of user audio items still being transcribed.
    previous_of: HashMap<String, Option<String>>,
}

impl Hub {
    pub(super) fn new(
        asr: Arc<dyn Asr>,
        answering: Option<Answering>,
        out: Out,
        opts: watch::Receiver<SessionOptions>,
    ) -> Self {
        Hub {
            turns: Turns::new(asr, out.clone(), opts.clone()),
            responses: Responses::new(answering, out.clone(), opts.clone()),
            conversation: Conversation::default(),
            previous_of: HashMap::new(),
            out,
            opts,
        }
    }

    /// Runs until the audio stage has gone and nothing is in flight, or the client is gone.
    pub(super) async fn run(
        mut self,
        mut signals: mpsc::Receiver<AudioSignal>,
        mut commands: mpsc::Receiver<Command>,
    ) {
        let mut signals_open = true;
        let mut commands_open = true;
        loop {
            let ok = tokio::select! {
                s = signals.recv(), if signals_open => match s {
                    Some(s) => {
                        let heard = self.turns.signal(s);
                        self.heard(heard)
                    }
                    None => { signals_open = false; true }
                },
                c = commands.recv(), if commands_open => match c {
                    Some(c) => self.command(c),
                    None => { commands_open = false; true }
                },
                Some(r) = self.turns.results.recv() => {
                    let heard = self.turns.result(r);
                    self.heard(heard)
                }
                Some(f) = self.responses.finished.recv() => {
                    self.responses.finished(f, &mut self.conversation);
                    true
                }
                Some(p) = self.responses.prepared_rx.recv() => {
                    self.responses.set_prepared(p);
                    true
                }
            };
            if !ok {
                return;
            }
            if !signals_open && !self.turns.pending() && !self.responses.is_active() {
                return;
            }
        }
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
            Heard::Committed { item_id } => {
                let previous_item_id = self.conversation.last_item.replace(item_id.clone());
                self.previous_of
                    .insert(item_id.clone(), previous_item_id.clone());
                self.out.send(ServerEvent::Committed {
                    previous_item_id: previous_item_id.clone(),
                    item_id: item_id.clone(),
                }) && self.out.send(ServerEvent::ItemAdded {
                    previous_item_id,
                    item: Item::user_audio(&item_id, None),
                })
            }
            Heard::Transcribed {
                item_id,
                text,
                stopped_at,
            } => {
                let previous_item_id = self.previous_of.remove(&item_id).flatten();
                let ok = self.out.send(ServerEvent::ItemDone {
                    previous_item_id,
                    item: Item::user_audio(&item_id, Some(text.clone())),
                });
                let text = text.trim().to_string();
                if text.is_empty() {
                    return ok;
                }
                self.conversation.push(ConvItem {
                    id: item_id,
                    role: Role::User,
                    text,
                });
                let opts = self.opts.borrow().clone();
                if ok && opts.realtime && opts.create_response && stopped_at.is_some() {
                    // A new turn supersedes an answer still running.
                    self.responses.supersede();
                    return self
                        .responses
                        .start(&mut self.conversation, None, None, stopped_at);
                }
                ok
            }
            Heard::Failed { item_id } => {
                self.previous_of.remove(&item_id);
                true
            }
            Heard::Cleared => true,
            Heard::IdleTimeout {
                audio_start_ms,
                audio_end_ms,
            } => self.out.send(ServerEvent::TimeoutTriggered {
                audio_start_ms,
                audio_end_ms,
                item_id: new_id("item"),
            }),
        }
    }

    fn command(&mut self, c: Command) -> bool {
        match c {
            Command::CreateResponse { event_id, response } => {
                self.responses
                    .start(&mut self.conversation, event_id, response.as_ref(), None)
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
            Command::CreateItem { event_id, item } => match parse_item(&item) {
                Ok((role, text, id)) => {
                    let id = id.unwrap_or_else(|| new_id("item"));
                    let previous_item_id = self.conversation.last_item.replace(id.clone());
                    self.conversation.push(ConvItem {
                        id: id.clone(),
                        role,
                        text: text.clone(),
                    });
                    let item = Item::text(&id, role.as_str(), &text, "completed");
                    self.out.send(ServerEvent::ItemAdded {
                        previous_item_id: previous_item_id.clone(),
                        item: item.clone(),
                    }) && self.out.send(ServerEvent::ItemDone {
                        previous_item_id,
                        item,
                    })
                }
                Err(message) => self.out.error(
                    &ProtocolError::new("invalid_item", message)
                        .param("item")
                        .event(event_id),
                ),
            },
            Command::Truncate {
                event_id,
                item_id,
                audio_end_ms,
            } => {
                let Some(item) = self
                    .conversation
                    .items
                    .iter_mut()
                    .find(|i| i.id == item_id && i.role == Role::Assistant)
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
                item.text = truncate_spoken(&item.text, audio_end_ms);
                self.out.send(ServerEvent::ItemTruncated {
                    item_id,
                    content_index: 0,
                    audio_end_ms,
                })
            }
        }
    }
}
