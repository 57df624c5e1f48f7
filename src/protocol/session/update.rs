//! `session.update`: a body applied to a copy of the configuration, one group of fields after
//! another (the GA shape, with the beta names read first so GA fields win), and swapped in only
//! when every field is valid.

use serde_json::{Map, Value};

use super::fields::*;
use super::{
    check_model_text, Ignored, SessionConfig, SessionKind, TurnKind, MAX_INSTRUCTIONS_BYTES,
};
use crate::protocol::ProtocolError;
use crate::vad::VadEngine;

/// The top-level `session` fields voxd reads (GA and beta names).
const KNOWN_FIELDS: &[&str] = &[
    "type",
    "id",
    "object",
    "model",
    "instructions",
    "output_modalities",
    "modalities",
    "max_output_tokens",
    "max_response_output_tokens",
    "input_audio_format",
    "turn_detection",
    "input_audio_transcription",
    "audio",
    "voxd",
    "temperature",
    "tools",
    "tool_choice",
    "expires_at",
    "client_secret",
];

/// Fields voxd knows but does not do: (field, when it counts as asked for, reason).
fn unsupported(obj: &Map<String, Value>, ignored: &mut Vec<Ignored>) {
    let mut note = |param: &str, reason: &str| {
        ignored.push(Ignored {
            param: param.to_string(),
            reason: reason.to_string(),
        })
    };
    let set = |v: Option<&Value>| {
        v.is_some_and(|v| match v {
            Value::Null => false,
            Value::Array(a) => !a.is_empty(),
            Value::String(s) => !s.is_empty(),
            Value::Object(o) => !o.is_empty(),
            _ => true,
        })
    };
    if set(obj.get("include")) {
        note(
            "session.include",
            "voxd does not produce transcription logprobs",
        );
    }
    if obj.get("tracing").is_some_and(|v| set(Some(v))) {
        note(
            "session.tracing",
            "voxd does not send traces to OpenAI; it exports them over OTLP (--otlp-endpoint)",
        );
    }
    if obj
        .get("truncation")
        .is_some_and(|v| set(Some(v)) && v != "auto")
    {
        note(
            "session.truncation",
            "voxd keeps the newest turns that fit its history budget (truncation \"auto\")",
        );
    }
    for (key, reason) in [
        ("prompt", "prompt templates are not supported"),
        ("reasoning", "the model does not reason"),
        (
            "parallel_tool_calls",
            "not a Realtime session setting: every call the model makes at once is made (server and MCP tools run together)",
        ),
        ("input_audio_noise_reduction", "voxd does not reduce noise"),
    ] {
        if set(obj.get(key)) {
            note(&format!("session.{key}"), reason);
        }
    }
    let audio = obj.get("audio");
    if set(audio
        .and_then(|a| a.get("input"))
        .and_then(|i| i.get("noise_reduction")))
    {
        note(
            "session.audio.input.noise_reduction",
            "voxd does not reduce noise",
        );
    }
    for key in obj.keys() {
        if !KNOWN_FIELDS.contains(&key.as_str())
            && ![
                "include",
                "tools",
                "tool_choice",
                "tracing",
                "truncation",
                "prompt",
                "reasoning",
                "parallel_tool_calls",
                "voice",
                "output_audio_format",
                "input_audio_noise_reduction",
            ]
            .contains(&key.as_str())
        {
            note(&format!("session.{key}"), "unknown parameter");
        }
    }
}

/// What a client secret fixes: a session opened with one cannot change these, in
/// `session.update` or in a response's own settings.
pub const LOCKED: &[&str] = &["type", "instructions", "tools", "tool_choice"];

impl SessionConfig {
    /// Applies a `session.update` body; on error nothing changes.
    pub fn apply_update(&mut self, session: &Value) -> Result<(), ProtocolError> {
        let obj = session.as_object().ok_or_else(|| {
            ProtocolError::new("invalid_session_config", "`session` must be an object")
                .param("session")
        })?;
        let mut next = self.clone();
        next.ignored.clear();
        let stripped;
        let obj = if self.bound {
            stripped = next.without_locked(obj);
            &stripped
        } else {
            obj
        };
        unsupported(obj, &mut next.ignored);
        next.update_basics(obj)?;
        next.update_output(obj)?;
        next.update_tools(obj)?;
        next.update_input(obj)?;
        if let Some(v) = obj.get("voxd") {
            next.update_voxd(v)?;
        }
        next.note_missing_turn_model();
        *self = next;
        Ok(())
    }

    /// Binds the session to `session` (a client secret's configuration): it is applied, and
    /// from then on updates leave the [`LOCKED`] settings as they are.
    pub fn bind(&mut self, session: &Value) -> Result<(), ProtocolError> {
        self.apply_update(session)?;
        self.bound = true;
        Ok(())
    }

    /// `obj` without the locked settings, each noted as ignored.
    fn without_locked(&mut self, obj: &Map<String, Value>) -> Map<String, Value> {
        let mut kept = obj.clone();
        for key in LOCKED {
            if kept.remove(*key).is_some() {
                self.ignored.push(Ignored {
                    param: format!("session.{key}"),
                    reason: "fixed by the client secret this session was opened with".into(),
                });
            }
        }
        kept
    }

    /// The session type, instructions and model name.
    fn update_basics(&mut self, obj: &Map<String, Value>) -> Result<(), ProtocolError> {
        if let Some(t) = obj.get("type") {
            self.kind = match t.as_str() {
                Some("realtime") => SessionKind::Realtime,
                Some("transcription") => SessionKind::Transcription,
                _ => {
                    return Err(invalid(
                        "session.type",
                        "must be \"realtime\" or \"transcription\"",
                    ))
                }
            };
        }
        if let Some(v) = obj.get("instructions") {
            let text = v
                .as_str()
                .ok_or_else(|| invalid("session.instructions", "must be a string"))?;
            check_model_text(text, MAX_INSTRUCTIONS_BYTES, "session.instructions")?;
            self.instructions = text.to_string();
        }
        if let Some(v) = obj.get("model").and_then(Value::as_str) {
            self.model = v.to_string();
        }
        Ok(())
    }

    /// How answers come out: modalities, the output format, the voice and its speed.
    fn update_output(&mut self, obj: &Map<String, Value>) -> Result<(), ProtocolError> {
        if let Some(v) = obj
            .get("output_modalities")
            .or_else(|| obj.get("modalities"))
        {
            let list = v
                .as_array()
                .ok_or_else(|| invalid("session.output_modalities", "must be an array"))?;
            let mut audio = false;
            for m in list {
                match m.as_str() {
                    Some("text") => {}
                    Some("audio") => audio = true,
                    _ => {
                        return Err(invalid(
                            "session.output_modalities",
                            "may contain only \"text\" and \"audio\"",
                        ))
                    }
                }
            }
            if audio && self.voices.is_empty() {
                self.ignored.push(Ignored {
                    param: "session.output_modalities".into(),
                    reason: "this server has no voice (started with --no-tts, or the voice \
                             failed to load): answers are text"
                        .into(),
                });
                audio = false;
            }
            self.output_modalities = vec![if audio { "audio" } else { "text" }.into()];
        }
        // Beta names first, so that GA fields win when a client sends both.
        if let Some(v) = obj.get("output_audio_format") {
            self.output_format = beta_format(v, "session.output_audio_format")?;
        }
        if let Some(v) = obj.get("voice") {
            self.voice = check_voice(v, &self.voices, "session.voice")?;
        }
        if let Some(output) = obj.get("audio").and_then(|a| a.get("output")) {
            let output = output
                .as_object()
                .ok_or_else(|| invalid("session.audio.output", "must be an object"))?;
            if let Some(v) = output.get("format") {
                self.output_format = parse_format(v, "session.audio.output.format")?;
            }
            if let Some(v) = output.get("voice") {
                self.voice = check_voice(v, &self.voices, "session.audio.output.voice")?;
            }
            if let Some(v) = output.get("speed") {
                self.speed = v
                    .as_f64()
                    .filter(|s| (0.25..=1.5).contains(s))
                    .ok_or_else(|| {
                        invalid(
                            "session.audio.output.speed",
                            "must be a number from 0.25 to 1.5",
                        )
                    })? as f32;
            }
        }
        Ok(())
    }

    /// The tools, the tool choice and the output token limit.
    fn update_tools(&mut self, obj: &Map<String, Value>) -> Result<(), ProtocolError> {
        if let Some(v) = obj.get("tools").filter(|v| !v.is_null()) {
            (self.tools, self.mcp) =
                crate::tools::ToolSet::parse_with_mcp(v, "session.tools").map_err(tool_error)?;
        }
        if let Some(v) = obj.get("tool_choice").filter(|v| !v.is_null()) {
            self.tool_choice =
                crate::tools::ToolChoice::parse(v, "session.tool_choice").map_err(tool_error)?;
        }
        // With MCP servers attached, "required" can be met by their tools (listed later).
        // (as can a choice of one of their tools).
        let mcp_required = match &self.tool_choice {
            crate::tools::ToolChoice::Required => !self.mcp.is_empty(),
            crate::tools::ToolChoice::Function(name) => self
                .mcp
                .iter()
                .any(|m| name.starts_with(&format!("{}__", m.server_label))),
            _ => false,
        };
        if !mcp_required
            && (!self.tools.is_empty() || self.tool_choice != crate::tools::ToolChoice::Auto)
        {
            self.tool_choice
                .check(&self.tools, "session.tool_choice")
                .map_err(tool_error)?;
        }
        if let Some(v) = obj
            .get("max_output_tokens")
            .or_else(|| obj.get("max_response_output_tokens"))
        {
            self.max_output_tokens = match v {
                Value::String(s) if s == "inf" => None,
                v => Some(ranged(v, "session.max_output_tokens", 1, 4096)? as u32),
            };
        }
        Ok(())
    }

    /// The input: its format, turn detection and transcription (beta names first, so GA fields win when a client sends both).
    fn update_input(&mut self, obj: &Map<String, Value>) -> Result<(), ProtocolError> {
        // Beta shape first, so that GA fields win when a client sends both.
        if let Some(v) = obj.get("input_audio_format") {
            self.input_format = beta_format(v, "session.input_audio_format")?;
        }
        if let Some(v) = obj.get("turn_detection") {
            self.turn_detection = turn_detection(v, self.turn_detection, "session.turn_detection")?;
        }
        if let Some(v) = obj.get("input_audio_transcription") {
            transcription(v, self, "session.input_audio_transcription")?;
        }

        if let Some(input) = obj.get("audio").and_then(|a| a.get("input")) {
            let input = input
                .as_object()
                .ok_or_else(|| invalid("session.audio.input", "must be an object"))?;
            if let Some(v) = input.get("format") {
                self.input_format = parse_format(v, "session.audio.input.format")?;
            }
            if let Some(v) = input.get("turn_detection") {
                self.turn_detection =
                    turn_detection(v, self.turn_detection, "session.audio.input.turn_detection")?;
            }
            if let Some(v) = input.get("transcription") {
                transcription(v, self, "session.audio.input.transcription")?;
            }
        }
        Ok(())
    }

    /// voxd's own settings (`session.voxd`).
    fn update_voxd(&mut self, v: &Value) -> Result<(), ProtocolError> {
        let v = v
            .as_object()
            .ok_or_else(|| invalid("session.voxd", "must be an object"))?;
        if let Some(x) = v.get("partial_interval_ms") {
            let ms = uint(x, "session.voxd.partial_interval_ms")?;
            if ms != 0 && !(100..=10_000).contains(&ms) {
                return Err(invalid(
                    "session.voxd.partial_interval_ms",
                    "must be 0 (off) or 100..=10000",
                ));
            }
            self.partial_interval_ms = ms;
        }
        if let Some(x) = v.get("vad") {
            let engine = x
                .as_str()
                .and_then(VadEngine::parse)
                .ok_or_else(|| invalid("session.voxd.vad", "must be \"webrtc\" or \"silero\""))?;
            if engine == VadEngine::Silero && !self.available.silero {
                return Err(invalid(
                    "session.voxd.vad",
                    "Silero VAD is not loaded on this server (start it with --vad silero, or run `voxd models pull`)",
                ));
            }
            self.vad = engine;
        }
        if let Some(x) = v.get("min_speech_ms") {
            self.min_speech_ms = ranged(x, "session.voxd.min_speech_ms", 20, 2_000)?;
        }
        if let Some(x) = v.get("interrupt_min_speech_ms") {
            self.interrupt_min_speech_ms =
                ranged(x, "session.voxd.interrupt_min_speech_ms", 20, 2_000)?;
        }
        for (key, slot) in [
            ("citations_event", &mut self.citations_event),
            ("binary_audio_out", &mut self.binary_audio_out),
            ("knowledge_base", &mut self.knowledge_base),
        ] {
            if let Some(x) = v.get(key) {
                *slot = x
                    .as_bool()
                    .ok_or_else(|| invalid(&format!("session.voxd.{key}"), "must be a boolean"))?;
            }
        }
        if let Some(x) = v.get("speculative_after_ms") {
            self.speculative_after_ms = match x {
                Value::Null => None,
                x => Some(ranged(x, "session.voxd.speculative_after_ms", 0, 5_000)?),
            };
        }
        Ok(())
    }

    /// `semantic_vad` without an end-of-turn model works as `server_vad`: say so.
    fn note_missing_turn_model(&mut self) {
        if matches!(
            self.turn_detection.map(|t| t.kind),
            Some(TurnKind::Semantic(_))
        ) && !self.available.end_of_turn
        {
            self.ignored.push(Ignored {
                param: "session.audio.input.turn_detection.type".into(),
                reason: "this server has no end-of-turn model loaded: semantic_vad ends turns \
                         after 500 ms of silence, as server_vad does"
                    .into(),
            });
        }
    }
}
