//! What the parts of a session read from its current configuration (turns, responses, the
//! hub), published on a watch channel whenever a `session.update` applies.

use crate::protocol::{SessionConfig, SessionKind};

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
    /// How answers are spoken; `None`: text.
    pub speech: Option<super::speaker::SpeechParams>,
    /// The server's voices (to check a response's own voice).
    pub voices: Vec<String>,
    pub tools: crate::tools::ToolSet,
    pub tool_choice: crate::tools::ToolChoice,
    /// The session's id (for the audit trail).
    pub session_id: String,
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
            speech: c.speaks().then(|| super::speaker::SpeechParams {
                format: c.output_format,
                voice: c.voice.clone(),
                speed: c.speed,
                binary: c.binary_audio_out,
            }),
            voices: c.voices.clone(),
            tools: c.tools.clone(),
            tool_choice: c.tool_choice.clone(),
            session_id: c.id.clone(),
        }
    }
}
