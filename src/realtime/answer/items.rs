//! The response's output items on the wire: the assistant's message (opened once, its deltas
//! spoken or written, closed with its final text) and each function call as its own item.

use std::sync::atomic::{AtomicBool, Ordering};

use serde_json::{json, Value};

use super::super::out::Out;
use super::super::speaker::Speaker;
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
}

impl Writer {
    pub fn new(
        out: Out,
        response_id: &str,
        item_id: &str,
        conversation: Option<Option<String>>,
        speaker: Option<Speaker>,
    ) -> Self {
        Writer {
            out,
            response_id: response_id.to_string(),
            item_id: item_id.to_string(),
            conversation,
            spoken: speaker.is_some(),
            speaker,
            opened: AtomicBool::new(false),
        }
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
        self.out.send(ServerEvent::OutputItemAdded {
            response_id: self.response_id.clone(),
            output_index: 0,
            item: self.item("", "in_progress"),
        });
        self.out.send(ServerEvent::ContentPartAdded {
            response_id: self.response_id.clone(),
            item_id: self.item_id.clone(),
            output_index: 0,
            content_index: 0,
            part: self.part(""),
        });
        // The assistant's item joins the conversation (not for an out-of-band response).
        if let Some(previous_item_id) = &self.conversation {
            self.out.send(ServerEvent::ItemAdded {
                previous_item_id: previous_item_id.clone(),
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
                    output_index: 0,
                    content_index: 0,
                    delta,
                });
            }
        }
    }

    /// Sends a function call for the client as its own output item (the `index`-th call,
    /// after the message if one was opened) and returns its item id and finished item.
    pub fn send_call(
        &self,
        call: &ToolCall,
        index: usize,
        previous: Option<String>,
    ) -> (String, Item) {
        let call_item_id = crate::ids::new_id("item");
        let output_index = (index + usize::from(self.opened())) as u32;
        let adding = Item::function_call(&call_item_id, &call.id, &call.name, "", "in_progress");
        self.out.send(ServerEvent::OutputItemAdded {
            response_id: self.response_id.clone(),
            output_index,
            item: adding.clone(),
        });
        if self.conversation.is_some() {
            self.out.send(ServerEvent::ItemAdded {
                previous_item_id: previous.clone(),
                item: adding,
            });
        }
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
        self.out.send(ServerEvent::OutputItemDone {
            response_id: self.response_id.clone(),
            output_index,
            item: done.clone(),
        });
        if self.conversation.is_some() {
            self.out.send(ServerEvent::ItemDone {
                previous_item_id: previous,
                item: done.clone(),
            });
        }
        (call_item_id, done)
    }

    /// Closes the message with its final `text` (if it was opened) and returns its item.
    pub fn close_message(&self, text: &str, item_status: &str) -> Option<Item> {
        if !self.opened() {
            return None;
        }
        let (response_id, item_id) = (self.response_id.clone(), self.item_id.clone());
        if self.spoken {
            self.out.send(ServerEvent::OutputAudioDone {
                response_id: response_id.clone(),
                item_id: item_id.clone(),
                output_index: 0,
                content_index: 0,
            });
            self.out.send(ServerEvent::OutputAudioTranscriptDone {
                response_id: response_id.clone(),
                item_id: item_id.clone(),
                output_index: 0,
                content_index: 0,
                transcript: text.to_string(),
            });
        } else {
            self.out.send(ServerEvent::OutputTextDone {
                response_id: response_id.clone(),
                item_id: item_id.clone(),
                output_index: 0,
                content_index: 0,
                text: text.to_string(),
            });
        }
        self.out.send(ServerEvent::ContentPartDone {
            response_id: response_id.clone(),
            item_id,
            output_index: 0,
            content_index: 0,
            part: self.part(text),
        });
        let item = self.item(text, item_status);
        self.out.send(ServerEvent::OutputItemDone {
            response_id,
            output_index: 0,
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
