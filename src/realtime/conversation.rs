//! The conversation a realtime session keeps: its items in order, bounded in count and size,
//! and the places where running responses' answers will go.

use std::collections::HashMap;

use tracing::debug;

use crate::prompt::{ChatMessage, Role};
use crate::protocol::Item;
use crate::tools::ToolCall;

/// Most conversation items a session keeps (older ones are forgotten).
pub const MAX_ITEMS: usize = 512;
/// Most text a session's conversation keeps, in bytes (older items are forgotten).
pub const MAX_CONVERSATION_BYTES: usize = 1 << 20;
/// Longest text of one conversation item, in bytes.
pub const MAX_ITEM_BYTES: usize = 100_000;

/// A user or assistant message of the conversation, as the hub keeps it.
#[derive(Debug, Clone)]
pub struct ConvItem {
    pub id: String,
    pub role: Role,
    /// The words: typed, transcribed (a spoken turn) or answered.
    pub text: String,
    /// A spoken user turn (content `input_audio`, `text` is its transcript).
    pub spoken: bool,
    /// Its transcription is still running.
    pub pending: bool,
    /// `completed`, or `incomplete` for an answer cut short.
    pub status: &'static str,
    /// A spoken answer's pieces and where they lie in its audio (for truncation).
    pub audio: Option<Vec<super::speaker::Spoken>>,
    /// A function call item (role assistant; `text` is its arguments).
    pub call: Option<ToolCall>,
    /// A function call output item (role tool; `text` is the output): the call it answers.
    pub call_id: Option<String>,
    /// An MCP item (a server's tool list, a call, an approval request or response), as sent.
    pub mcp: Option<Item>,
}

impl ConvItem {
    /// A typed message.
    pub fn text(id: String, role: Role, text: String) -> Self {
        ConvItem {
            id,
            role,
            text,
            spoken: false,
            pending: false,
            status: "completed",
            audio: None,
            call: None,
            call_id: None,
            mcp: None,
        }
    }

    /// An item from a chat message (a client's `conversation.item.create`): a message, a
    /// function call or a function's output.
    pub fn from_message(id: String, m: ChatMessage) -> Self {
        let mut item = ConvItem::text(id, m.role, m.content);
        if let Some(call) = m.tool_calls.into_iter().next() {
            item.text = call.arguments.clone();
            item.call = Some(call);
        }
        item.call_id = m.tool_call_id;
        item
    }

    /// A function call the model made.
    pub fn function_call(id: String, call: ToolCall) -> Self {
        ConvItem::from_message(id, ChatMessage::calls("", vec![call]))
    }

    /// An MCP item.
    pub fn mcp(item: Item) -> Self {
        let mut c = ConvItem::text(item.id.clone(), Role::Assistant, String::new());
        c.mcp = Some(item);
        c
    }

    /// Whether this is a function call, a function's output, or an MCP item.
    pub fn is_tool_item(&self) -> bool {
        self.call.is_some() || self.call_id.is_some() || self.mcp.is_some()
    }

    /// A spoken user turn whose transcript is on its way.
    pub fn spoken(id: String) -> Self {
        ConvItem {
            id,
            role: Role::User,
            text: String::new(),
            spoken: true,
            pending: true,
            status: "completed",
            audio: None,
            call: None,
            call_id: None,
            mcp: None,
        }
    }

    /// The item on the wire.
    pub fn to_item(&self) -> Item {
        if let Some(m) = &self.mcp {
            m.clone()
        } else if let Some(c) = &self.call {
            Item::function_call(&self.id, &c.id, &c.name, &c.arguments, "completed")
        } else if let Some(call_id) = &self.call_id {
            Item::function_call_output(&self.id, call_id, &self.text)
        } else if self.spoken {
            Item::user_audio(&self.id, (!self.pending).then(|| self.text.clone()))
        } else if self.audio.is_some() {
            Item::assistant_audio(&self.id, &self.text, self.status)
        } else {
            Item::text(&self.id, self.role.as_str(), &self.text, self.status)
        }
    }
}

/// The prompt history from conversation items.
///
/// A function call without its output (or an output without its call) is left out: chat APIs
/// refuse a call that is not answered.
pub fn history(items: &[ConvItem]) -> Vec<ChatMessage> {
    let answered = |id: &str| items.iter().any(|i| i.call_id.as_deref() == Some(id));
    let called = |id: &str| {
        items
            .iter()
            .any(|i| i.call.as_ref().is_some_and(|c| c.id == id))
    };
    let mut out = Vec::new();
    for i in items {
        match (&i.mcp, &i.call, &i.call_id) {
            (Some(m), _, _) => out.extend(mcp_call_messages(m)),
            (None, Some(c), _) if answered(&c.id) => {
                out.push(ChatMessage::calls("", vec![c.clone()]))
            }
            (None, None, Some(id)) if called(id) => {
                out.push(ChatMessage::tool_result(id.clone(), i.text.clone()))
            }
            (None, None, None) if !i.text.trim().is_empty() => {
                out.push(ChatMessage::new(i.role, i.text.clone()))
            }
            _ => {}
        }
    }
    out
}

/// An MCP call that ran, as the call and its result (other MCP items are not part of the
/// prompt).
fn mcp_call_messages(m: &Item) -> Vec<ChatMessage> {
    if m.kind != "mcp_call" {
        return Vec::new();
    }
    let label = m.server_label.as_deref().unwrap_or_default();
    let call = ToolCall {
        id: m.id.clone(),
        name: super::answer::mcp::function_name(label, m.name.as_deref().unwrap_or_default()),
        arguments: m.arguments.clone().unwrap_or_else(|| "{}".into()),
    };
    let result = match (&m.output, &m.error) {
        (Some(o), _) => o.clone(),
        (None, Some(e)) => format!(
            "The tool failed: {}",
            e.get("message").and_then(|v| v.as_str()).unwrap_or("error")
        ),
        (None, None) => return Vec::new(),
    };
    vec![
        ChatMessage::calls("", vec![call]),
        ChatMessage::tool_result(m.id.clone(), result),
    ]
}

/// A session's conversation.
#[derive(Default)]
pub(super) struct Conversation {
    pub(super) items: Vec<ConvItem>,
    /// Where each running response's answer goes: right after what it answers, even if the
    /// person has spoken again since.
    answer_slots: HashMap<String, usize>,
}

impl Conversation {
    /// Appends an item, forgetting the oldest ones beyond the limits; returns the id of the
    /// item it follows (its `previous_item_id`).
    pub(super) fn push(&mut self, item: ConvItem) -> Option<String> {
        let previous = self.items.last().map(|i| i.id.clone());
        self.items.push(item);
        self.trim();
        previous
    }

    /// Inserts an item right after `previous` (`"root"`: first), as `conversation.item.create`
    /// with a `previous_item_id` asks; `None` when there is no such item.
    pub(super) fn insert_after(
        &mut self,
        previous: &str,
        item: ConvItem,
    ) -> Option<Option<String>> {
        let at = if previous == "root" {
            0
        } else {
            self.items.iter().position(|i| i.id == previous)? + 1
        };
        self.items.insert(at, item);
        for slot in self.answer_slots.values_mut().filter(|s| **s >= at) {
            *slot += 1;
        }
        self.trim();
        Some((at > 0).then(|| previous.to_string()))
    }

    /// The item with this id.
    pub(super) fn get(&self, id: &str) -> Option<&ConvItem> {
        self.items.iter().find(|i| i.id == id)
    }

    /// The item with this id, to change it.
    pub(super) fn get_mut(&mut self, id: &str) -> Option<&mut ConvItem> {
        self.items.iter_mut().find(|i| i.id == id)
    }

    /// The id of the item before this one.
    pub(super) fn previous_of(&self, id: &str) -> Option<String> {
        let pos = self.items.iter().position(|i| i.id == id)?;
        pos.checked_sub(1).map(|p| self.items[p].id.clone())
    }

    /// Removes an item; false if there is none with this id.
    pub(super) fn delete(&mut self, id: &str) -> bool {
        let Some(pos) = self.items.iter().position(|i| i.id == id) else {
            return false;
        };
        self.items.remove(pos);
        for slot in self.answer_slots.values_mut().filter(|s| **s > pos) {
            *slot -= 1;
        }
        true
    }

    /// Reserves the place right after item `pos` for `response_id`'s answer.
    pub(super) fn reserve_answer(&mut self, response_id: &str, pos: usize) {
        self.answer_slots.insert(response_id.to_string(), pos + 1);
    }

    /// Forgets a reserved place (the response is not added to the conversation).
    pub(super) fn release_answer(&mut self, response_id: &str) {
        self.answer_slots.remove(response_id);
    }

    /// Puts a finished response's items (its message, then its calls) in its place (at the end
    /// if none was reserved; an empty message is left out).
    pub(super) fn insert_answer(&mut self, response_id: &str, items: Vec<ConvItem>) {
        let mut slot = self
            .answer_slots
            .remove(response_id)
            .unwrap_or(self.items.len())
            .min(self.items.len());
        for item in items {
            if item.text.trim().is_empty() && !item.is_tool_item() {
                continue;
            }
            // Later answers' places move down by the one inserted before them.
            for s in self.answer_slots.values_mut().filter(|s| **s >= slot) {
                *s += 1;
            }
            self.items.insert(slot, item);
            slot += 1;
        }
        self.trim();
    }

    /// Whether a function call with this call id is in the conversation.
    pub(super) fn has_call(&self, call_id: &str) -> bool {
        self.items
            .iter()
            .any(|i| i.call.as_ref().is_some_and(|c| c.id == call_id))
    }

    /// Keeps the conversation within [`MAX_ITEMS`] and [`MAX_CONVERSATION_BYTES`] by forgetting
    /// the oldest items (the prompt only ever uses the newest ones), so a long or hostile session
    /// cannot grow without bound.
    fn trim(&mut self) {
        let mut bytes: usize = self.items.iter().map(|i| i.text.len()).sum();
        let mut drop = 0;
        while self.items.len() - drop > 1
            && (self.items.len() - drop > MAX_ITEMS || bytes > MAX_CONVERSATION_BYTES)
        {
            bytes -= self.items[drop].text.len();
            drop += 1;
        }
        if drop == 0 {
            return;
        }
        self.items.drain(..drop);
        for slot in self.answer_slots.values_mut() {
            *slot = slot.saturating_sub(drop);
        }
        debug!(
            forgotten = drop,
            kept = self.items.len(),
            "conversation at its limit: oldest items forgotten"
        );
    }
}

/// Reads a `conversation.item.create` item: a message, a function call or a function call's
/// output, as a chat message, and its id if the client chose one.
pub(super) fn parse_item(
    item: &serde_json::Value,
) -> Result<(ChatMessage, Option<String>), String> {
    let id = item.get("id").and_then(|i| i.as_str()).map(str::to_string);
    let string = |key: &str| item.get(key).and_then(|v| v.as_str());
    match item.get("type").and_then(|t| t.as_str()) {
        Some("message") => {}
        Some("function_call_output") => {
            let call_id = string("call_id").ok_or("a function_call_output needs `call_id`")?;
            let output =
                string("output").ok_or("a function_call_output needs `output` (a string)")?;
            if output.len() > MAX_ITEM_BYTES {
                return Err(format!("the output is longer than {MAX_ITEM_BYTES} bytes"));
            }
            check_call_id(call_id)?;
            return Ok((ChatMessage::tool_result(call_id, output), id));
        }
        Some("function_call") => {
            let name = string("name").ok_or("a function_call needs `name`")?;
            let arguments = string("arguments").unwrap_or("{}");
            if arguments.len() > MAX_ITEM_BYTES {
                return Err(format!(
                    "the arguments are longer than {MAX_ITEM_BYTES} bytes"
                ));
            }
            let call_id = match string("call_id") {
                Some(c) => {
                    check_call_id(c)?;
                    c.to_string()
                }
                None => crate::tools::new_call_id(),
            };
            let call = ToolCall {
                id: call_id,
                name: name.to_string(),
                arguments: arguments.to_string(),
            };
            return Ok((ChatMessage::calls("", vec![call]), id));
        }
        _ => {
            return Err(
                "items must be of type `message`, `function_call` or `function_call_output`".into(),
            )
        }
    }
    let role = match item.get("role").and_then(|r| r.as_str()) {
        Some("user") => Role::User,
        Some("assistant") => Role::Assistant,
        Some("system") => Role::System,
        _ => return Err("`role` must be user, assistant or system".into()),
    };
    let parts = item
        .get("content")
        .and_then(|c| c.as_array())
        .ok_or("`content` must be an array of parts")?;
    let mut text = String::new();
    for p in parts {
        match p.get("type").and_then(|t| t.as_str()) {
            Some("input_text" | "text" | "output_text") => text.push_str(
                p.get("text")
                    .and_then(|t| t.as_str())
                    .ok_or("a text part needs `text`")?,
            ),
            Some("input_audio") => {
                if let Some(t) = p.get("transcript").and_then(|t| t.as_str()) {
                    text.push_str(t)
                }
            }
            _ => return Err("content parts must be input_text, text or output_text".into()),
        }
    }
    if text.trim().is_empty() {
        return Err("the message has no text".into());
    }
    if text.len() > MAX_ITEM_BYTES {
        return Err(format!("the message is longer than {MAX_ITEM_BYTES} bytes"));
    }
    Ok((ChatMessage::new(role, text), id))
}

/// A call id: 1-64 characters, no control characters.
fn check_call_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > 64 || id.chars().any(char::is_control) {
        return Err("`call_id` must be 1-64 characters without control characters".into());
    }
    Ok(())
}

/// The part of an answer spoken in `audio_end_ms` of speech (at ~15 characters a second, cut at
/// a word boundary): what the person heard before they interrupted.
pub(super) fn truncate_spoken(text: &str, audio_end_ms: u64) -> String {
    let chars = (audio_end_ms as usize).saturating_mul(15) / 1000;
    if text.chars().count() <= chars {
        return text.to_string();
    }
    let cut: String = text.chars().take(chars).collect();
    match cut.rfind(char::is_whitespace) {
        Some(i) => cut[..i].trim_end().to_string(),
        None => cut,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn message_items_are_read_and_bad_ones_named() {
        let (m, id) = parse_item(&json!({"type": "message", "role": "user", "id": "i1",
            "content": [{"type": "input_text", "text": "Hi "}, {"type": "input_text", "text": "there"}]}))
        .unwrap();
        assert_eq!(
            (m.role, m.content.as_str(), id.as_deref()),
            (Role::User, "Hi there", Some("i1"))
        );
        let (out, _) = parse_item(&json!({"type": "function_call_output", "call_id": "call_1", "output": "{\"ok\": true}"})).unwrap();
        assert_eq!(
            (out.role, out.tool_call_id.as_deref()),
            (Role::Tool, Some("call_1"))
        );
        let (call, _) = parse_item(
            &json!({"type": "function_call", "call_id": "call_1", "name": "f", "arguments": "{}"}),
        )
        .unwrap();
        assert_eq!(call.tool_calls[0].name, "f");
        for bad in [
            json!({"type": "function_call"}),
            json!({"type": "function_call_output", "output": "x"}),
            json!({"type": "function_call_output", "call_id": "c"}),
            json!({"type": "image"}),
            json!({"type": "message", "role": "user"}),
            json!({"type": "message", "role": "user", "content": [{"type": "input_image"}]}),
            json!({"type": "message", "role": "user", "content": [{"type": "input_text"}]}),
        ] {
            assert!(parse_item(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn items_go_where_asked_and_answers_keep_their_place() {
        let mut c = Conversation::default();
        let text = |id: &str| ConvItem::text(id.into(), Role::User, id.into());
        assert_eq!(c.push(text("a")), None);
        assert_eq!(c.push(text("b")), Some("a".into()));
        c.reserve_answer("r1", 0); // the answer to "a" goes between "a" and "b"
        assert_eq!(c.insert_after("root", text("first")), Some(None));
        assert_eq!(c.insert_after("a", text("a2")), Some(Some("a".into())));
        assert_eq!(c.insert_after("nope", text("x")), None);
        c.insert_answer(
            "r1",
            vec![ConvItem::text("ans".into(), Role::Assistant, "ans".into())],
        );
        let ids: Vec<&str> = c.items.iter().map(|i| i.id.as_str()).collect();
        // An item put right after "a" while its answer runs goes before the answer.
        assert_eq!(ids, ["first", "a", "a2", "ans", "b"]);
        assert!(c.delete("a2") && !c.delete("a2"));
        assert_eq!(c.previous_of("ans").as_deref(), Some("a"));
    }

    #[test]
    fn truncation_keeps_what_was_heard_at_a_word_boundary() {
        let text = "The shop opens at eight on weekdays and at ten on Sundays.";
        assert_eq!(truncate_spoken(text, 60_000), text);
        assert_eq!(truncate_spoken(text, 1_000), "The shop opens");
        assert_eq!(truncate_spoken(text, 0), "");
    }
}
