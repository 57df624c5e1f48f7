//! Server events, with the OpenAI Realtime API's GA names and fields. Every event sent carries a
//! unique `event_id` (added by [`ServerEvent::to_json`]). voxd's additions (such as turn timings
//! on `.completed`) are extra fields that other clients ignore.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{new_id, ProtocolError};

/// The body of an `error` event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    #[serde(rename = "type")]
    pub kind: String,
    pub code: Option<String>,
    pub message: String,
    pub param: Option<String>,
    pub event_id: Option<String>,
}

impl From<&ProtocolError> for ErrorBody {
    fn from(e: &ProtocolError) -> Self {
        ErrorBody {
            kind: "invalid_request_error".into(),
            code: Some(e.code.into()),
            message: e.message.clone(),
            param: e.param.clone(),
            event_id: e.event_id.clone(),
        }
    }
}

/// One content part of a user item.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Content {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub transcript: Option<String>,
    #[serde(default)]
    pub text: Option<String>,
}

/// An audio part always carries `transcript` (`null` until it is known), as OpenAI sends it:
/// clients that validate items (the OpenAI Agents SDK) reject an audio part without one.
impl Serialize for Content {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let audio = self.kind.ends_with("audio");
        let mut map = s.serialize_map(None)?;
        map.serialize_entry("type", &self.kind)?;
        if audio || self.transcript.is_some() {
            map.serialize_entry("transcript", &self.transcript)?;
        }
        if let Some(text) = &self.text {
            map.serialize_entry("text", text)?;
        }
        map.end()
    }
}

/// A conversation item (voxd creates user audio messages).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Item {
    pub id: String,
    #[serde(default = "item_object")]
    pub object: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub status: String,
    /// A message's role (empty for function calls and their outputs).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub role: String,
    /// A message's content (messages always have at least one part).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub content: Vec<Content>,
    /// A function call's or output's call id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub call_id: Option<String>,
    /// A function call's function.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// A function call's arguments (a JSON text).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arguments: Option<String>,
    /// A function call output's result (or an MCP call's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
    /// MCP items: the server the list, call or approval is about.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_label: Option<String>,
    /// An `mcp_list_tools` item's tools.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tools: Option<Value>,
    /// The approval request an MCP call or approval response belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval_request_id: Option<String>,
    /// Why an MCP call failed (`{"type": "tool_execution_error" | "protocol_error" |
    /// "http_error", "message", …}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<Value>,
    /// An `mcp_approval_response`'s decision, and its reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approve: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

fn item_object() -> String {
    "realtime.item".into()
}

impl Item {
    pub(super) fn bare(id: &str, kind: &str, status: &str) -> Self {
        Item {
            id: id.to_string(),
            object: item_object(),
            kind: kind.into(),
            status: status.into(),
            role: String::new(),
            content: Vec::new(),
            call_id: None,
            name: None,
            arguments: None,
            output: None,
            server_label: None,
            tools: None,
            approval_request_id: None,
            error: None,
            approve: None,
            reason: None,
        }
    }

    /// A function call the model made.
    pub fn function_call(
        id: &str,
        call_id: &str,
        name: &str,
        arguments: &str,
        status: &str,
    ) -> Self {
        Item {
            call_id: Some(call_id.into()),
            name: Some(name.into()),
            arguments: Some(arguments.into()),
            ..Item::bare(id, "function_call", status)
        }
    }

    /// A function's result, as the client sent it.
    pub fn function_call_output(id: &str, call_id: &str, output: &str) -> Self {
        Item {
            call_id: Some(call_id.into()),
            output: Some(output.into()),
            ..Item::bare(id, "function_call_output", "completed")
        }
    }

    /// A user audio message, with its transcript once known.
    pub fn user_audio(id: &str, transcript: Option<String>) -> Self {
        Item {
            role: "user".into(),
            content: vec![Content {
                kind: "input_audio".into(),
                transcript,
                text: None,
            }],
            ..Item::bare(id, "message", "completed")
        }
    }

    /// An assistant's spoken message: its transcript (what was said, or after a truncate, what
    /// was heard).
    pub fn assistant_audio(id: &str, transcript: &str, status: &str) -> Self {
        Item {
            role: "assistant".into(),
            content: vec![Content {
                kind: "output_audio".into(),
                transcript: Some(transcript.to_string()),
                text: None,
            }],
            ..Item::bare(id, "message", status)
        }
    }

    /// A text message (`input_text` for the user and system, `output_text` for the assistant).
    pub fn text(id: &str, role: &str, text: &str, status: &str) -> Self {
        Item {
            role: role.into(),
            content: vec![Content {
                kind: if role == "assistant" {
                    "output_text".into()
                } else {
                    "input_text".into()
                },
                transcript: None,
                text: Some(text.to_string()),
            }],
            ..Item::bare(id, "message", status)
        }
    }
}

/// voxd's timing extension on a completed transcription, in ms.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TurnTiming {
    /// Audio time of the end of speech (the last voiced frame).
    pub speech_end_ms: Option<u64>,
    /// Length of the transcribed audio.
    pub audio_ms: u64,
    /// Waiting for a free ASR worker.
    pub asr_queue_ms: u64,
    /// ASR compute.
    pub asr_ms: u64,
    /// Whether the result came from speculative finalisation (started at the pause).
    pub speculative: bool,
    /// From `speech_stopped` (the end of speech plus the silence window) to this transcript.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub speech_stopped_to_completed_ms: Option<u64>,
    /// How `semantic_vad` ended the turn.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_of_turn: Option<EndOfTurnTiming>,
}

/// How `semantic_vad` ended a turn (in `voxd.timing.end_of_turn`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EndOfTurnTiming {
    /// The end-of-turn model's last probability that the turn was complete (none when the
    /// pause ended before the first check could run).
    pub probability: Option<f32>,
    /// Checks made during the final pause.
    pub checks: u32,
    /// `model` (judged complete) or `max_wait` (the eagerness's longest wait ran out).
    pub ended_by: String,
    /// Silence from the start of the final pause to the end of the turn.
    pub pause_ms: u64,
    /// End-of-turn model compute during the final pause.
    pub model_ms: u64,
}

/// Usage of one transcription: the seconds of audio it covered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TranscriptionUsage {
    /// Always `duration`.
    #[serde(rename = "type")]
    pub kind: String,
    pub seconds: f64,
}

impl TranscriptionUsage {
    pub fn seconds(seconds: f64) -> Self {
        TranscriptionUsage {
            kind: "duration".into(),
            seconds,
        }
    }
}

impl Default for TranscriptionUsage {
    fn default() -> Self {
        TranscriptionUsage::seconds(0.0)
    }
}

/// Everything voxd sends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum ServerEvent {
    #[serde(rename = "session.created")]
    SessionCreated { session: Value },
    #[serde(rename = "session.updated")]
    SessionUpdated { session: Value },
    #[serde(rename = "input_audio_buffer.speech_started")]
    SpeechStarted {
        audio_start_ms: u64,
        item_id: String,
    },
    #[serde(rename = "input_audio_buffer.speech_stopped")]
    SpeechStopped { audio_end_ms: u64, item_id: String },
    #[serde(rename = "input_audio_buffer.committed")]
    Committed {
        previous_item_id: Option<String>,
        item_id: String,
    },
    #[serde(rename = "input_audio_buffer.cleared")]
    Cleared,
    #[serde(rename = "input_audio_buffer.timeout_triggered")]
    TimeoutTriggered {
        audio_start_ms: u64,
        audio_end_ms: u64,
        item_id: String,
    },
    #[serde(rename = "conversation.item.added")]
    ItemAdded {
        previous_item_id: Option<String>,
        item: Item,
    },
    #[serde(rename = "conversation.item.done")]
    ItemDone {
        previous_item_id: Option<String>,
        item: Item,
    },
    #[serde(rename = "conversation.item.input_audio_transcription.delta")]
    TranscriptionDelta {
        item_id: String,
        content_index: u32,
        delta: String,
    },
    #[serde(rename = "conversation.item.input_audio_transcription.completed")]
    TranscriptionCompleted {
        item_id: String,
        content_index: u32,
        transcript: String,
        /// How much audio was transcribed: `{"type": "duration", "seconds": …}`.
        #[serde(default)]
        usage: TranscriptionUsage,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        voxd_timing: Option<TurnTiming>,
    },
    #[serde(rename = "conversation.item.input_audio_transcription.failed")]
    TranscriptionFailed {
        item_id: String,
        content_index: u32,
        error: ErrorBody,
    },
    #[serde(rename = "conversation.item.retrieved")]
    ItemRetrieved { item: Item },
    #[serde(rename = "conversation.item.deleted")]
    ItemDeleted { item_id: String },
    #[serde(rename = "conversation.item.truncated")]
    ItemTruncated {
        item_id: String,
        content_index: u32,
        audio_end_ms: u64,
    },
    #[serde(rename = "response.created")]
    ResponseCreated { response: Value },
    #[serde(rename = "response.output_item.added")]
    OutputItemAdded {
        response_id: String,
        output_index: u32,
        item: Item,
    },
    #[serde(rename = "response.content_part.added")]
    ContentPartAdded {
        response_id: String,
        item_id: String,
        output_index: u32,
        content_index: u32,
        part: Value,
    },
    #[serde(rename = "response.output_text.delta")]
    OutputTextDelta {
        response_id: String,
        item_id: String,
        output_index: u32,
        content_index: u32,
        delta: String,
    },
    #[serde(rename = "response.output_audio.delta")]
    OutputAudioDelta {
        response_id: String,
        item_id: String,
        output_index: u32,
        content_index: u32,
        /// Base64 audio in the session's output format.
        delta: String,
    },
    #[serde(rename = "response.output_audio.done")]
    OutputAudioDone {
        response_id: String,
        item_id: String,
        output_index: u32,
        content_index: u32,
    },
    #[serde(rename = "response.output_audio_transcript.delta")]
    OutputAudioTranscriptDelta {
        response_id: String,
        item_id: String,
        output_index: u32,
        content_index: u32,
        delta: String,
    },
    #[serde(rename = "response.output_audio_transcript.done")]
    OutputAudioTranscriptDone {
        response_id: String,
        item_id: String,
        output_index: u32,
        content_index: u32,
        transcript: String,
    },
    #[serde(rename = "response.output_text.done")]
    OutputTextDone {
        response_id: String,
        item_id: String,
        output_index: u32,
        content_index: u32,
        text: String,
    },
    #[serde(rename = "response.content_part.done")]
    ContentPartDone {
        response_id: String,
        item_id: String,
        output_index: u32,
        content_index: u32,
        part: Value,
    },
    #[serde(rename = "response.function_call_arguments.delta")]
    FunctionCallArgumentsDelta {
        response_id: String,
        item_id: String,
        output_index: u32,
        call_id: String,
        delta: String,
    },
    #[serde(rename = "response.function_call_arguments.done")]
    FunctionCallArgumentsDone {
        response_id: String,
        item_id: String,
        output_index: u32,
        call_id: String,
        name: String,
        arguments: String,
    },
    #[serde(rename = "mcp_list_tools.in_progress")]
    McpListToolsInProgress { item_id: String },
    #[serde(rename = "mcp_list_tools.completed")]
    McpListToolsCompleted { item_id: String },
    #[serde(rename = "mcp_list_tools.failed")]
    McpListToolsFailed { item_id: String },
    #[serde(rename = "response.mcp_call_arguments.delta")]
    McpCallArgumentsDelta {
        response_id: String,
        item_id: String,
        output_index: u32,
        delta: String,
    },
    #[serde(rename = "response.mcp_call_arguments.done")]
    McpCallArgumentsDone {
        response_id: String,
        item_id: String,
        output_index: u32,
        arguments: String,
    },
    #[serde(rename = "response.mcp_call.in_progress")]
    McpCallInProgress { item_id: String, output_index: u32 },
    #[serde(rename = "response.mcp_call.completed")]
    McpCallCompleted { item_id: String, output_index: u32 },
    #[serde(rename = "response.mcp_call.failed")]
    McpCallFailed { item_id: String, output_index: u32 },
    #[serde(rename = "response.output_item.done")]
    OutputItemDone {
        response_id: String,
        output_index: u32,
        item: Item,
    },
    #[serde(rename = "response.done")]
    ResponseDone { response: Value },
    /// voxd extension (opt in with `session.voxd.citations_event`): the passages a response is
    /// grounded in, before its first delta.
    #[serde(rename = "voxd.response.citations")]
    Citations {
        response_id: String,
        grounded: bool,
        citations: Value,
    },
    /// The session's API key limits: `requests` in `rate_limits` (OpenAI's names), and
    /// voxd's own (`sessions`, `audio_minutes`) under `voxd`.
    #[serde(rename = "rate_limits.updated")]
    RateLimitsUpdated {
        rate_limits: Value,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        voxd: Option<Value>,
    },
    #[serde(rename = "error")]
    Error { error: ErrorBody },
}

impl ServerEvent {
    /// An `error` event for a client mistake.
    pub fn error(e: &ProtocolError) -> Self {
        ServerEvent::Error { error: e.into() }
    }

    /// An `error` event for a server-side failure (an LLM endpoint down, say).
    pub fn server_error(code: &str, message: impl Into<String>) -> Self {
        ServerEvent::Error {
            error: ErrorBody {
                kind: "server_error".into(),
                code: Some(code.into()),
                message: message.into(),
                param: None,
                event_id: None,
            },
        }
    }

    /// The event as a JSON text frame with a fresh `event_id`.
    pub fn to_json(&self) -> String {
        let mut v = serde_json::to_value(self).expect("server events serialise");
        if let Value::Object(map) = &mut v {
            map.insert("event_id".into(), Value::String(new_id("event")));
        }
        v.to_string()
    }

    /// The event's `type` string.
    pub fn kind(&self) -> &'static str {
        match self {
            ServerEvent::SessionCreated { .. } => "session.created",
            ServerEvent::SessionUpdated { .. } => "session.updated",
            ServerEvent::SpeechStarted { .. } => "input_audio_buffer.speech_started",
            ServerEvent::SpeechStopped { .. } => "input_audio_buffer.speech_stopped",
            ServerEvent::Committed { .. } => "input_audio_buffer.committed",
            ServerEvent::Cleared => "input_audio_buffer.cleared",
            ServerEvent::TimeoutTriggered { .. } => "input_audio_buffer.timeout_triggered",
            ServerEvent::ItemAdded { .. } => "conversation.item.added",
            ServerEvent::ItemDone { .. } => "conversation.item.done",
            ServerEvent::TranscriptionDelta { .. } => {
                "conversation.item.input_audio_transcription.delta"
            }
            ServerEvent::TranscriptionCompleted { .. } => {
                "conversation.item.input_audio_transcription.completed"
            }
            ServerEvent::TranscriptionFailed { .. } => {
                "conversation.item.input_audio_transcription.failed"
            }
            ServerEvent::ItemRetrieved { .. } => "conversation.item.retrieved",
            ServerEvent::ItemDeleted { .. } => "conversation.item.deleted",
            ServerEvent::ItemTruncated { .. } => "conversation.item.truncated",
            ServerEvent::ResponseCreated { .. } => "response.created",
            ServerEvent::OutputItemAdded { .. } => "response.output_item.added",
            ServerEvent::ContentPartAdded { .. } => "response.content_part.added",
            ServerEvent::OutputTextDelta { .. } => "response.output_text.delta",
            ServerEvent::OutputTextDone { .. } => "response.output_text.done",
            ServerEvent::OutputAudioDelta { .. } => "response.output_audio.delta",
            ServerEvent::OutputAudioDone { .. } => "response.output_audio.done",
            ServerEvent::OutputAudioTranscriptDelta { .. } => {
                "response.output_audio_transcript.delta"
            }
            ServerEvent::OutputAudioTranscriptDone { .. } => {
                "response.output_audio_transcript.done"
            }
            ServerEvent::ContentPartDone { .. } => "response.content_part.done",
            ServerEvent::FunctionCallArgumentsDelta { .. } => {
                "response.function_call_arguments.delta"
            }
            ServerEvent::FunctionCallArgumentsDone { .. } => {
                "response.function_call_arguments.done"
            }
            ServerEvent::McpListToolsInProgress { .. } => "mcp_list_tools.in_progress",
            ServerEvent::McpListToolsCompleted { .. } => "mcp_list_tools.completed",
            ServerEvent::McpListToolsFailed { .. } => "mcp_list_tools.failed",
            ServerEvent::McpCallArgumentsDelta { .. } => "response.mcp_call_arguments.delta",
            ServerEvent::McpCallArgumentsDone { .. } => "response.mcp_call_arguments.done",
            ServerEvent::McpCallInProgress { .. } => "response.mcp_call.in_progress",
            ServerEvent::McpCallCompleted { .. } => "response.mcp_call.completed",
            ServerEvent::McpCallFailed { .. } => "response.mcp_call.failed",
            ServerEvent::OutputItemDone { .. } => "response.output_item.done",
            ServerEvent::ResponseDone { .. } => "response.done",
            ServerEvent::Citations { .. } => "voxd.response.citations",
            ServerEvent::RateLimitsUpdated { .. } => "rate_limits.updated",
            ServerEvent::Error { .. } => "error",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_audio_part_says_its_transcript_is_not_known_yet() {
        let pending = serde_json::to_value(Item::user_audio("item_1", None)).unwrap();
        assert_eq!(
            pending["content"][0],
            serde_json::json!({"type": "input_audio", "transcript": null})
        );
        let text = serde_json::to_value(Item::text("item_2", "user", "hi", "completed")).unwrap();
        assert_eq!(
            text["content"][0],
            serde_json::json!({"type": "input_text", "text": "hi"})
        );
    }

    #[test]
    fn events_have_ga_names_fields_and_an_event_id() {
        let e = ServerEvent::SpeechStarted {
            audio_start_ms: 120,
            item_id: "item_1".into(),
        };
        let v: Value = serde_json::from_str(&e.to_json()).unwrap();
        assert_eq!(v["type"], "input_audio_buffer.speech_started");
        assert_eq!(v["audio_start_ms"], 120);
        assert!(v["event_id"].as_str().unwrap().starts_with("event_"));
        assert_eq!(e.kind(), "input_audio_buffer.speech_started");
        // Round trip, as the Rust client reads them.
        let back: ServerEvent = serde_json::from_value(v).unwrap();
        assert_eq!(back, e);

        let err =
            ServerEvent::error(&ProtocolError::new("invalid_json", "bad").event(Some("c1".into())));
        let v: Value = serde_json::from_str(&err.to_json()).unwrap();
        assert_eq!(v["error"]["code"], "invalid_json");
        assert_eq!(v["error"]["event_id"], "c1");
        assert_eq!(v["error"]["type"], "invalid_request_error");
    }
}
