//! The response's output items on the wire: the assistant's message (opened once, its deltas
//! spoken or written, closed with its final text), each function call as its own item, and MCP
//! calls and approval requests. Each item takes the next output index as it is added.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::{json, Value};

use super::super::out::Out;
use super::super::speaker::Speaker;
use crate::protocol::mcp_items::McpCallView;
use crate::protocol::{Item, ServerEvent};
use crate::tools::ToolCall;

/// Sends one response's output items and deltas.
pub(crate) struct Writer {
    out: Out,
    response_id: String,
    item_id: String,
    /// `Some(previous_item_id)` when the answer joins the conversation.
    conversation: Option<Option<String>>,
    /// Speaks the answer (its transcript goes out with its audio); `None`: text deltas.
    pub speaker: Option<Speaker>,
    spoken: bool,
    /// Whether the assistant's message item was opened.
    opened: AtomicBool,
    /// The output index the next item takes, and the message's.
    next_index: AtomicU32,
    message_index: Arc<AtomicU32>,
    /// The id of the last item this response added to the conversation.
    last_item: Mutex<Option<String>>,
    /// MCP calls started and not yet finished (a cancel fails them).
    open_mcp: Mutex<Vec<(String, u32, McpCallView)>>,
}

impl Writer {
    pub fn new(
        out: Out,
        response_id: &str,
        item_id: &str,
        conversation: Option<Option<String>>,
        speaker: Option<Speaker>,
        message_index: Arc<AtomicU32>,
    ) -> Self {
        Writer {
            out,
            response_id: response_id.to_string(),
            item_id: item_id.to_string(),
            spoken: speaker.is_some(),
            last_item: Mutex::new(conversation.clone().flatten()),
            conversation,
            speaker,
            opened: AtomicBool::new(false),
            next_index: AtomicU32::new(0),
            open_mcp: Mutex::new(Vec::new()),
            message_index,
        }
    }

    /// The output index of a new item.
    fn take_index(&self) -> u32 {
        self.next_index.fetch_add(1, Ordering::Relaxed)
    }

    /// The message's output index.
    pub fn message_index(&self) -> u32 {
        self.message_index.load(Ordering::Relaxed)
    }

    /// Records `id` as the conversation's newest item of this response; returns the one before.
    fn follow(&self, id: &str) -> Option<String> {
        let mut last = self.last_item.lock().unwrap_or_else(|e| e.into_inner());
        last.replace(id.to_string())
    }

    /// Whether the assistant's message item was opened.
    pub fn opened(&self) -> bool {
        self.opened.load(Ordering::Relaxed)
    }

    fn item(&self, text: &str, status: &str) -> Item {
        if self.spoken {
            Item::assistant_audio(&self.item_id, text, status)
        } else {
            Item::text(&self.item_id, "assistant", text, status)
        }
    }

    fn part(&self, text: &str) -> Value {
        if self.spoken {
            json!({ "type": "audio", "transcript": text })
        } else {
            json!({ "type": "text", "text": text })
        }
    }

    /// Opens the assistant's message item: at once, or, when the model may call a function
    /// instead of answering, before its first words (a response that only calls has none).
    pub fn open_message(&self) {
        if self.opened.swap(true, Ordering::Relaxed) {
            return;
        }
        let output_index = self.take_index();
        self.message_index.store(output_index, Ordering::Relaxed);
        self.out.send(ServerEvent::OutputItemAdded {
            response_id: self.response_id.clone(),
            output_index,
            item: self.item("", "in_progress"),
        });
        self.out.send(ServerEvent::ContentPartAdded {
            response_id: self.response_id.clone(),
            item_id: self.item_id.clone(),
            output_index,
            content_index: 0,
            part: self.part(""),
        });
        // The assistant's item joins the conversation (not for an out-of-band response).
        if self.conversation.is_some() {
            self.out.send(ServerEvent::ItemAdded {
                previous_item_id: self.follow(&self.item_id),
                item: self.item("", "in_progress"),
            });
        }
    }

    /// A piece of the answer: spoken (the speaker sends its transcript with its audio) or text.
    pub fn emit(&self, delta: String) {
        self.open_message();
        match &self.speaker {
            Some(s) => s.push(&delta),
            None => {
                self.out.send(ServerEvent::OutputTextDelta {
                    response_id: self.response_id.clone(),
                    item_id: self.item_id.clone(),
                    output_index: self.message_index(),
                    content_index: 0,
                    delta,
                });
            }
        }
    }

    /// Sends a function call for the client as its own output item and returns its item id,
    /// output index and finished item.
    pub fn send_call(&self, call: &ToolCall) -> (String, u32, Item) {
        let call_item_id = crate::ids::new_id("item");
        let output_index = self.take_index();
        let previous = self.follow(&call_item_id);
        let adding = Item::function_call(&call_item_id, &call.id, &call.name, "", "in_progress");
        self.added(output_index, previous.clone(), &adding);
        self.out.send(ServerEvent::FunctionCallArgumentsDelta {
            response_id: self.response_id.clone(),
            item_id: call_item_id.clone(),
            output_index,
            call_id: call.id.clone(),
            delta: call.arguments.clone(),
        });
        self.out.send(ServerEvent::FunctionCallArgumentsDone {
            response_id: self.response_id.clone(),
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
        self.finished(output_index, previous, &done);
        (call_item_id, output_index, done)
    }

    /// An item added to the response (and to the conversation, unless out of band).
    fn added(&self, output_index: u32, previous: Option<String>, item: &Item) {
        self.out.send(ServerEvent::OutputItemAdded {
            response_id: self.response_id.clone(),
            output_index,
            item: item.clone(),
        });
        if self.conversation.is_some() {
            self.out.send(ServerEvent::ItemAdded {
                previous_item_id: previous,
                item: item.clone(),
            });
        }
    }

    /// An item of the response finished (in the conversation too, unless out of band).
    fn finished(&self, output_index: u32, previous: Option<String>, item: &Item) {
        self.out.send(ServerEvent::OutputItemDone {
            response_id: self.response_id.clone(),
            output_index,
            item: item.clone(),
        });
        if self.conversation.is_some() {
            self.out.send(ServerEvent::ItemDone {
                previous_item_id: previous,
                item: item.clone(),
            });
        }
    }

    /// Sends an item that is complete as it is added (an MCP approval request); returns its
    /// output index.
    pub fn send_whole_item(&self, item: &Item) -> u32 {
        let output_index = self.take_index();
        let previous = self.follow(&item.id);
        self.added(output_index, previous.clone(), item);
        self.finished(output_index, previous, item);
        output_index
    }

    /// Opens an `mcp_call` item (its arguments, then `response.mcp_call.in_progress`); returns
    /// its output index.
    pub fn start_mcp_call(&self, id: &str, view: &McpCallView) -> u32 {
        let output_index = self.take_index();
        let previous = self.follow(id);
        let response_id = self.response_id.clone();
        let adding = Item::mcp_call(
            id,
            &McpCallView {
                arguments: String::new(),
                ..view.clone()
            },
            "in_progress",
        );
        self.added(output_index, previous.clone(), &adding);
        self.out.send(ServerEvent::McpCallArgumentsDelta {
            response_id: response_id.clone(),
            item_id: id.to_string(),
            output_index,
            delta: view.arguments.clone(),
        });
        self.out.send(ServerEvent::McpCallArgumentsDone {
            response_id,
            item_id: id.to_string(),
            output_index,
            arguments: view.arguments.clone(),
        });
        self.out.send(ServerEvent::McpCallInProgress {
            item_id: id.to_string(),
            output_index,
        });
        self.open_mcp
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((id.to_string(), output_index, view.clone()));
        output_index
    }

    /// Fails the MCP calls still running (the response was cancelled or failed meanwhile);
    /// returns their finished items with their output indexes.
    pub fn fail_open_mcp_calls(&self) -> Vec<(u32, Item)> {
        let open = std::mem::take(&mut *self.open_mcp.lock().unwrap_or_else(|e| e.into_inner()));
        open.into_iter()
            .map(|(id, index, mut view)| {
                view.error = Some(crate::protocol::mcp_items::mcp_error(
                    "protocol_error",
                    "the response ended before the call did",
                ));
                (index, self.finish_mcp_call(&id, index, &view, false))
            })
            .collect()
    }

    /// Closes an `mcp_call` item with its output or error; returns the finished item.
    pub fn finish_mcp_call(
        &self,
        id: &str,
        output_index: u32,
        view: &McpCallView,
        ok: bool,
    ) -> Item {
        self.open_mcp
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|(open, _, _)| open != id);
        let item_id = id.to_string();
        self.out.send(if ok {
            ServerEvent::McpCallCompleted {
                item_id,
                output_index,
            }
        } else {
            ServerEvent::McpCallFailed {
                item_id,
                output_index,
            }
        });
        let status = if ok { "completed" } else { "failed" };
        let done = Item::mcp_call(id, view, status);
        self.finished(output_index, None, &done);
        done
    }

    /// Closes the message with its final `text` (if it was opened) and returns its item.
    pub fn close_message(&self, text: &str, item_status: &str) -> Option<Item> {
        if !self.opened() {
            return None;
        }
        let (response_id, item_id) = (self.response_id.clone(), self.item_id.clone());
        let output_index = self.message_index();
        if self.spoken {
            self.out.send(ServerEvent::OutputAudioDone {
                response_id: response_id.clone(),
                item_id: item_id.clone(),
                output_index,
                content_index: 0,
            });
            self.out.send(ServerEvent::OutputAudioTranscriptDone {
                response_id: response_id.clone(),
                item_id: item_id.clone(),
                output_index,
                content_index: 0,
                transcript: text.to_string(),
            });
        } else {
            self.out.send(ServerEvent::OutputTextDone {
                response_id: response_id.clone(),
                item_id: item_id.clone(),
                output_index,
                content_index: 0,
                text: text.to_string(),
            });
        }
        self.out.send(ServerEvent::ContentPartDone {
            response_id: response_id.clone(),
            item_id,
            output_index,
            content_index: 0,
            part: self.part(text),
        });
        let item = self.item(text, item_status);
        self.out.send(ServerEvent::OutputItemDone {
            response_id,
            output_index,
            item: item.clone(),
        });
        if let Some(previous_item_id) = &self.conversation {
            self.out.send(ServerEvent::ItemDone {
                previous_item_id: previous_item_id.clone(),
                item: item.clone(),
            });
        }
        Some(item)
    }
}
