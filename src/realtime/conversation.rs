//! The conversation a realtime session keeps: its items in order, bounded in count and size,
//! and the places where running responses' answers will go.

use std::collections::HashMap;

use tracing::debug;

use crate::prompt::{ChatMessage, Role};
use crate::protocol::Item;

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
        }
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
        }
    }

    /// The item on the wire.
    pub fn to_item(&self) -> Item {
        if self.spoken {
            Item::user_audio(&self.id, (!self.pending).then(|| self.text.clone()))
        } else if self.audio.is_some() {
            Item::assistant_audio(&self.id, &self.text, self.status)
        } else {
            Item::text(&self.id, self.role.as_str(), &self.text, self.status)
        }
    }
}

/// The prompt history from conversation items.
pub fn history(items: &[ConvItem]) -> Vec<ChatMessage> {
    items
        .iter()
        .filter(|i| !i.text.trim().is_empty())
        .map(|i| ChatMessage::new(i.role, i.text.clone()))
        .collect()
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

    /// Puts a finished response's answer in its place (at the end if none was reserved;
    /// nothing if it said nothing).
    pub(super) fn insert_answer(&mut self, response_id: &str, item: ConvItem) {
        let slot = self
            .answer_slots
            .remove(response_id)
            .unwrap_or(self.items.len())
            .min(self.items.len());
        if item.text.trim().is_empty() {
            return;
        }
        // Later answers' places move down by the one inserted before them.
        for s in self.answer_slots.values_mut().filter(|s| **s >= slot) {
            *s += 1;
        }
        self.items.insert(slot, item);
        self.trim();
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

/// Reads a `conversation.item.create` message item: (role, text, id).
pub(super) fn parse_item(
    item: &serde_json::Value,
) -> Result<(Role, String, Option<String>), String> {
    if item.get("type").and_then(|t| t.as_str()) != Some("message") {
        return Err("only items of type `message` can be created".into());
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
    let id = item.get("id").and_then(|i| i.as_str()).map(str::to_string);
    Ok((role, text, id))
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
        let (role, text, id) = parse_item(&json!({"type": "message", "role": "user", "id": "i1",
            "content": [{"type": "input_text", "text": "Hi "}, {"type": "input_text", "text": "there"}]}))
        .unwrap();
        assert_eq!(
            (role, text.as_str(), id.as_deref()),
            (Role::User, "Hi there", Some("i1"))
        );
        for bad in [
            json!({"type": "function_call"}),
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
            ConvItem::text("ans".into(), Role::Assistant, "ans".into()),
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
