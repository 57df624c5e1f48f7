//! Client events: parsing a text frame into a [`ClientMessage`], or a [`ProtocolError`] that says
//! exactly what was wrong (`invalid_json`, `missing_event_type`, `unknown_event_type`,
//! `invalid_event`).

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::ProtocolError;

/// What a client asked for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum ClientEvent {
    /// Change the session's configuration (fields present are updated).
    #[serde(rename = "session.update")]
    SessionUpdate { session: Value },
    /// Base64 audio in the session's input format.
    #[serde(rename = "input_audio_buffer.append")]
    AppendAudio { audio: String },
    /// End the current turn by hand.
    #[serde(rename = "input_audio_buffer.commit")]
    Commit,
    /// Drop the audio buffered so far.
    #[serde(rename = "input_audio_buffer.clear")]
    Clear,
    /// Ask for a model response.
    #[serde(rename = "response.create")]
    ResponseCreate {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        response: Option<Value>,
    },
    /// Stop the response in progress.
    #[serde(rename = "response.cancel")]
    ResponseCancel {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        response_id: Option<String>,
    },
    /// Add an item (such as a text message) to the conversation.
    #[serde(rename = "conversation.item.create")]
    ItemCreate {
        item: Value,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        previous_item_id: Option<String>,
    },
    /// Cut an assistant message short (what the person actually heard).
    #[serde(rename = "conversation.item.truncate")]
    ItemTruncate {
        item_id: String,
        #[serde(default)]
        content_index: u32,
        audio_end_ms: u64,
    },
    /// Ask for the server's copy of an item (`conversation.item.retrieved`).
    #[serde(rename = "conversation.item.retrieve")]
    ItemRetrieve { item_id: String },
    /// Remove an item from the conversation (`conversation.item.deleted`).
    #[serde(rename = "conversation.item.delete")]
    ItemDelete { item_id: String },
}

/// A parsed client event with its optional `event_id`.
#[derive(Debug, Clone, PartialEq)]
pub struct ClientMessage {
    pub event_id: Option<String>,
    pub event: ClientEvent,
}

const KNOWN: &[&str] = &[
    "session.update",
    "input_audio_buffer.append",
    "input_audio_buffer.commit",
    "input_audio_buffer.clear",
    "response.create",
    "response.cancel",
    "conversation.item.create",
    "conversation.item.truncate",
    "conversation.item.retrieve",
    "conversation.item.delete",
];

/// Parses one text frame.
pub fn parse_client_event(text: &str) -> Result<ClientMessage, ProtocolError> {
    let value: Value = serde_json::from_str(text).map_err(|e| {
        ProtocolError::new(
            "invalid_json",
            format!("the message is not valid JSON: {e}"),
        )
    })?;
    let obj = value
        .as_object()
        .ok_or_else(|| ProtocolError::new("invalid_event", "an event must be a JSON object"))?;
    let event_id = obj
        .get("event_id")
        .and_then(Value::as_str)
        .map(str::to_owned);
    let kind = match obj.get("type") {
        Some(Value::String(t)) => t.clone(),
        Some(_) => {
            return Err(
                ProtocolError::new("invalid_event", "`type` must be a string")
                    .param("type")
                    .event(event_id),
            )
        }
        None => {
            return Err(
                ProtocolError::new("missing_event_type", "the event has no `type` field")
                    .param("type")
                    .event(event_id),
            )
        }
    };
    if !KNOWN.contains(&kind.as_str()) {
        return Err(ProtocolError::new(
            "unknown_event_type",
            format!("unknown event type `{kind}`"),
        )
        .param("type")
        .event(event_id));
    }
    let event: ClientEvent = serde_json::from_value(value).map_err(|e| {
        ProtocolError::new("invalid_event", format!("invalid `{kind}` event: {e}"))
            .event(event_id.clone())
    })?;
    Ok(ClientMessage { event_id, event })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_known_events_with_their_ids() {
        let m = parse_client_event(
            r#"{"type":"input_audio_buffer.append","audio":"AAA=","event_id":"e1"}"#,
        )
        .unwrap();
        assert_eq!(m.event_id.as_deref(), Some("e1"));
        assert_eq!(
            m.event,
            ClientEvent::AppendAudio {
                audio: "AAA=".into()
            }
        );
        let m = parse_client_event(r#"{"type":"input_audio_buffer.commit"}"#).unwrap();
        assert_eq!(m.event, ClientEvent::Commit);
        let m = parse_client_event(r#"{"type":"response.create"}"#).unwrap();
        assert_eq!(m.event, ClientEvent::ResponseCreate { response: None });
    }

    #[test]
    fn each_kind_of_bad_message_has_its_code() {
        let code = |t: &str| parse_client_event(t).unwrap_err().code;
        assert_eq!(code("{not json"), "invalid_json");
        assert_eq!(code("[1,2]"), "invalid_event");
        assert_eq!(code(r#"{"audio":"AAA="}"#), "missing_event_type");
        assert_eq!(
            code(r#"{"type":"input_audio_buffer.explode"}"#),
            "unknown_event_type"
        );
        assert_eq!(
            code(r#"{"type":"input_audio_buffer.append"}"#),
            "invalid_event"
        );
        assert_eq!(code(r#"{"type":7}"#), "invalid_event");
        let e = parse_client_event(r#"{"type":"nope","event_id":"ev9"}"#).unwrap_err();
        assert_eq!(e.event_id.as_deref(), Some("ev9"));
    }
}
