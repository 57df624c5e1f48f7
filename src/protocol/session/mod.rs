//! The realtime session's configuration and `session.update`.
//!
//! An update is applied to a copy and validated as a whole before it replaces the current
//! configuration, so a bad update changes nothing. Both the GA shape
//! (`session.audio.input.format`, `.turn_detection`, `.transcription`) and the beta shape
//! (`input_audio_format: "pcm16"`, top-level `turn_detection`, `input_audio_transcription`) are
//! read. voxd's own settings live under `session.voxd`.

use serde_json::{json, Map, Value};

use super::{new_id, ProtocolError};

mod fields;
mod update;
pub use update::LOCKED;

use fields::invalid;
pub use fields::{check_voice, parse_format, tool_error, OPENAI_VOICES};

/// Longest transcription prompt, in bytes. Whisper reads at most 224 prompt tokens (the last
/// ones), so a longer prompt would only cost tokenizing time on every partial.
pub const MAX_PROMPT_BYTES: usize = 4096;
/// Longest `instructions`, in bytes (re-tokenized for every answer).
pub const MAX_INSTRUCTIONS_BYTES: usize = 32 * 1024;

/// A string that will reach a model: no NUL characters (C APIs end strings there), at most
/// `max` bytes.
pub fn check_model_text(value: &str, max: usize, param: &str) -> Result<(), ProtocolError> {
    if value.contains('\0') {
        return Err(invalid(param, "must not contain NUL characters"));
    }
    if value.len() > max {
        return Err(ProtocolError::new(
            "string_too_long",
            format!("{param} is {} bytes long; the limit is {max}", value.len()),
        )
        .param(param));
    }
    Ok(())
}
use crate::vad::{TurnModelsAvailable, VadEngine, VadParams};

/// `session.type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionKind {
    Realtime,
    Transcription,
}

/// Audio the client sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputFormat {
    /// 16-bit little-endian mono PCM at `rate` Hz (8000–48000).
    Pcm16 { rate: u32 },
    /// G.711 μ-law at 8 kHz.
    Pcmu,
    /// G.711 A-law at 8 kHz.
    Pcma,
}

impl InputFormat {
    /// The GA `format` object.
    pub fn to_view(self) -> Value {
        match self {
            InputFormat::Pcm16 { rate } => json!({ "type": "audio/pcm", "rate": rate }),
            InputFormat::Pcmu => json!({ "type": "audio/pcmu" }),
            InputFormat::Pcma => json!({ "type": "audio/pcma" }),
        }
    }

    /// Samples per second.
    pub fn rate(self) -> u32 {
        match self {
            InputFormat::Pcm16 { rate } => rate,
            InputFormat::Pcmu | InputFormat::Pcma => 8_000,
        }
    }

    /// Bytes per sample.
    pub fn sample_bytes(self) -> usize {
        match self {
            InputFormat::Pcm16 { .. } => 2,
            _ => 1,
        }
    }
}

/// How eager `semantic_vad` is to end a turn (OpenAI's names; `auto` is `medium`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Eagerness {
    Low,
    Medium,
    High,
    Auto,
}

impl Eagerness {
    pub fn as_str(self) -> &'static str {
        match self {
            Eagerness::Low => "low",
            Eagerness::Medium => "medium",
            Eagerness::High => "high",
            Eagerness::Auto => "auto",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "low" => Eagerness::Low,
            "medium" => Eagerness::Medium,
            "high" => Eagerness::High,
            "auto" => Eagerness::Auto,
            _ => return None,
        })
    }
}

/// How a turn's end is found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TurnKind {
    /// `server_vad`: a fixed window of silence.
    #[default]
    Server,
    /// `semantic_vad`: a model judges at pauses whether the turn sounds finished.
    Semantic(Eagerness),
}

/// Turn detection settings (`server_vad` or `semantic_vad`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TurnDetection {
    pub kind: TurnKind,
    pub threshold: f32,
    pub prefix_padding_ms: u64,
    pub silence_duration_ms: u64,
    pub create_response: bool,
    pub interrupt_response: bool,
    pub idle_timeout_ms: Option<u64>,
}

impl Default for TurnDetection {
    fn default() -> Self {
        TurnDetection {
            kind: TurnKind::Server,
            threshold: 0.5,
            prefix_padding_ms: 300,
            silence_duration_ms: 500,
            create_response: true,
            interrupt_response: true,
            idle_timeout_ms: None,
        }
    }
}

/// The whole session configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionConfig {
    pub id: String,
    pub kind: SessionKind,
    pub model: String,
    pub instructions: String,
    pub input_format: InputFormat,
    /// `None`: the client commits turns by hand.
    pub turn_detection: Option<TurnDetection>,
    pub transcription_model: String,
    pub language: Option<String>,
    pub prompt: Option<String>,
    /// voxd: re-transcribe the growing turn this often (ms of audio) for partials; 0 = off.
    pub partial_interval_ms: u64,
    /// voxd: voiced audio needed before a turn starts.
    pub min_speech_ms: u64,
    /// voxd: voiced audio needed before speech interrupts an answer (a turn that starts while a
    /// response runs), so a cough or an "mm-hm" does not cancel it.
    pub interrupt_min_speech_ms: u64,
    /// voxd: start the final transcription when silence begins (after this many ms of it);
    /// `None` = wait for the end of the silence window.
    pub speculative_after_ms: Option<u64>,
    /// What responses are in: `["audio"]` (speech with its transcript; the default when the
    /// server has a voice) or `["text"]`.
    pub output_modalities: Vec<String>,
    /// The format of spoken answers.
    pub output_format: InputFormat,
    /// The voice asked for (one of `voices`, or an OpenAI voice name, which means the default).
    pub voice: String,
    /// Speaking rate, 0.25–1.5.
    pub speed: f32,
    /// The server's own voices, its default first; empty when it has none.
    pub voices: Vec<String>,
    /// Most tokens in one response; `None` = the server's default.
    pub max_output_tokens: Option<u32>,
    /// voxd: send `voxd.response.citations` before a response's first delta.
    pub citations_event: bool,
    /// voxd: send spoken answers' audio as binary WebSocket frames (raw bytes in the output
    /// format) instead of base64 `response.output_audio.delta` events.
    pub binary_audio_out: bool,
    /// voxd: ground responses in the knowledge base (default on).
    pub knowledge_base: bool,
    /// Functions the model may call (checked when set).
    pub tools: crate::tools::ToolSet,
    /// MCP servers the client attached (`{"type": "mcp"}` entries of `tools`).
    pub mcp: Vec<crate::tools::mcp::client::McpSpec>,
    pub tool_choice: crate::tools::ToolChoice,
    /// voxd: the voice detector under turn detection.
    pub vad: VadEngine,
    /// What this server can run: Silero VAD, and an end-of-turn model for `semantic_vad`.
    pub available: TurnModelsAvailable,
    /// What the last `session.update` asked for that voxd does not do, each with the reason
    /// (shown in `session.updated` as `voxd.ignored`, never silently accepted).
    pub ignored: Vec<Ignored>,
    /// Opened with a client secret: its [`LOCKED`] settings cannot change.
    pub bound: bool,
}

/// A setting voxd received but does not apply.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Ignored {
    /// Where it was, such as `session.audio.input.noise_reduction`.
    pub param: String,
    pub reason: String,
}

impl SessionConfig {
    /// The configuration a new connection starts with.
    pub fn new(kind: SessionKind, model: &str) -> Self {
        SessionConfig {
            id: new_id("sess"),
            kind,
            model: model.to_string(),
            instructions: String::new(),
            input_format: InputFormat::Pcm16 { rate: 24_000 },
            turn_detection: Some(TurnDetection::default()),
            transcription_model: "whisper-1".into(),
            language: None,
            prompt: None,
            partial_interval_ms: 500,
            min_speech_ms: 200,
            interrupt_min_speech_ms: 600,
            speculative_after_ms: Some(0),
            output_modalities: vec!["text".into()],
            output_format: InputFormat::Pcm16 { rate: 24_000 },
            voice: "alloy".into(),
            speed: 1.0,
            voices: Vec::new(),
            max_output_tokens: None,
            citations_event: false,
            binary_audio_out: false,
            knowledge_base: true,
            tools: Default::default(),
            mcp: Vec::new(),
            tool_choice: Default::default(),
            vad: VadEngine::WebRtc,
            available: TurnModelsAvailable::default(),
            ignored: Vec::new(),
            bound: false,
        }
    }

    /// The session of a server with these turn-taking models, whose sessions detect voice with
    /// `vad` unless they ask otherwise.
    pub fn with_turn_models(mut self, available: TurnModelsAvailable, vad: VadEngine) -> Self {
        self.available = available;
        self.vad = if vad == VadEngine::Silero && !available.silero {
            VadEngine::WebRtc
        } else {
            vad
        };
        self
    }

    /// Whether turns end by the end-of-turn model (`semantic_vad` on a server that has one).
    pub fn semantic(&self) -> Option<Eagerness> {
        match self.turn_detection?.kind {
            TurnKind::Semantic(e) if self.available.end_of_turn => Some(e),
            _ => None,
        }
    }

    /// The session of a server that speaks with `voices` (its default first): a realtime
    /// session then answers in audio by default, as OpenAI's do.
    pub fn with_voices(mut self, voices: Vec<String>) -> Self {
        if let Some(first) = voices.first() {
            self.voice = first.clone();
            if self.kind == SessionKind::Realtime {
                self.output_modalities = vec!["audio".into()];
            }
        }
        self.voices = voices;
        self
    }

    /// The `tools` list as shown: the functions, then the MCP servers (without their secrets).
    fn tools_view(&self) -> Value {
        let mut list = match self.tools.to_view() {
            Value::Array(l) => l,
            _ => Vec::new(),
        };
        list.extend(self.mcp.iter().map(|m| m.to_view()));
        Value::Array(list)
    }

    /// Whether responses are spoken.
    pub fn speaks(&self) -> bool {
        self.output_modalities.iter().any(|m| m == "audio")
    }

    /// The VAD parameters, when turn detection is on.
    pub fn vad_params(&self) -> Option<VadParams> {
        self.turn_detection.map(|t| VadParams {
            threshold: t.threshold,
            prefix_padding_ms: t.prefix_padding_ms,
            silence_duration_ms: t.silence_duration_ms,
            min_speech_ms: self.min_speech_ms,
        })
    }

    /// The configuration as sent in `session.created` / `session.updated` (GA shape).
    pub fn to_view(&self) -> Value {
        let format = self.input_format.to_view();
        let out_format = self.output_format.to_view();
        let turn_detection = match self.turn_detection {
            None => Value::Null,
            Some(
                t @ TurnDetection {
                    kind: TurnKind::Semantic(e),
                    ..
                },
            ) => json!({
                "type": "semantic_vad",
                "eagerness": e.as_str(),
                "create_response": t.create_response,
                "interrupt_response": t.interrupt_response,
            }),
            Some(t) => json!({
                "type": "server_vad",
                "threshold": t.threshold,
                "prefix_padding_ms": t.prefix_padding_ms,
                "silence_duration_ms": t.silence_duration_ms,
                "create_response": t.create_response,
                "interrupt_response": t.interrupt_response,
                "idle_timeout_ms": t.idle_timeout_ms,
            }),
        };
        let mut voxd = json!({
            "partial_interval_ms": self.partial_interval_ms,
            "min_speech_ms": self.min_speech_ms,
            "interrupt_min_speech_ms": self.interrupt_min_speech_ms,
            "speculative_after_ms": self.speculative_after_ms,
            "vad": self.vad.as_str(),
            "citations_event": self.citations_event,
            "binary_audio_out": self.binary_audio_out,
            "knowledge_base": self.knowledge_base,
            "ignored": self.ignored,
            "voices": self.voices,
        });
        // The official types know PCM only at 24 kHz: another rate (a voxd extension) is shown
        // in `voxd.input_format` alone, so the view still validates as the API's session.
        let standard = !matches!(self.input_format, InputFormat::Pcm16 { rate } if rate != 24_000);
        let mut input = json!({
            "transcription": {
                "model": self.transcription_model,
                "language": self.language,
                "prompt": self.prompt,
            },
            "turn_detection": turn_detection,
            "noise_reduction": null,
        });
        if standard {
            input["format"] = format.clone();
        }
        voxd["input_format"] = format;
        let mut output = json!({ "voice": self.voice, "speed": self.speed });
        if !matches!(self.output_format, InputFormat::Pcm16 { rate } if rate != 24_000) {
            output["format"] = out_format.clone();
        }
        voxd["output_format"] = out_format;
        match self.kind {
            SessionKind::Transcription => json!({
                "id": self.id,
                "object": "realtime.transcription_session",
                "type": "transcription",
                "audio": { "input": input },
                "include": null,
                "voxd": voxd,
            }),
            SessionKind::Realtime => json!({
                "id": self.id,
                "object": "realtime.session",
                "type": "realtime",
                "model": self.model,
                "instructions": self.instructions,
                "output_modalities": self.output_modalities,
                "max_output_tokens": match self.max_output_tokens { Some(n) => json!(n), None => json!("inf") },
                "audio": { "input": input, "output": output },
                "tools": self.tools_view(),
                "tool_choice": self.tool_choice.to_view(),
                "tracing": null,
                "truncation": "auto",
                "prompt": null,
                "include": null,
                "voxd": voxd,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> SessionConfig {
        SessionConfig::new(SessionKind::Realtime, "voxd")
    }

    #[test]
    fn ga_update_sets_format_vad_and_transcription() {
        let mut c = cfg();
        c.apply_update(&json!({
            "type": "transcription",
            "audio": {"input": {
                "format": {"type": "audio/pcm", "rate": 16000},
                "turn_detection": {"type": "server_vad", "silence_duration_ms": 700, "prefix_padding_ms": 200},
                "transcription": {"model": "whisper-1", "language": "en", "prompt": "Kennedy"}
            }}
        }))
        .unwrap();
        assert_eq!(c.kind, SessionKind::Transcription);
        assert_eq!(c.input_format, InputFormat::Pcm16 { rate: 16_000 });
        let t = c.turn_detection.unwrap();
        assert_eq!((t.silence_duration_ms, t.prefix_padding_ms), (700, 200));
        assert_eq!(
            (c.language.as_deref(), c.prompt.as_deref()),
            (Some("en"), Some("Kennedy"))
        );
        let view = c.to_view();
        assert_eq!(view["voxd"]["input_format"]["rate"], 16000);
        assert!(view["audio"]["input"].get("format").is_none(), "{view}");
        assert_eq!(
            view["audio"]["input"]["turn_detection"]["silence_duration_ms"],
            700
        );
    }

    #[test]
    fn beta_shape_and_null_turn_detection() {
        let mut c = cfg();
        c.apply_update(&json!({"input_audio_format": "g711_ulaw", "turn_detection": null}))
            .unwrap();
        assert_eq!(c.input_format, InputFormat::Pcmu);
        assert_eq!(c.turn_detection, None);
        assert_eq!(c.to_view()["audio"]["input"]["turn_detection"], Value::Null);
        c.apply_update(&json!({"turn_detection": {"type": "server_vad"}}))
            .unwrap();
        assert_eq!(c.turn_detection, Some(TurnDetection::default()));
    }

    #[test]
    fn bad_updates_are_refused_whole() {
        let before = cfg();
        let cases = [
            (
                json!({"audio": {"input": {"format": {"type": "audio/pcm", "rate": 0}}}}),
                "unsupported_sample_rate",
            ),
            (
                json!({"audio": {"input": {"format": {"type": "audio/pcm", "rate": 96000}}}}),
                "unsupported_sample_rate",
            ),
            (
                json!({"audio": {"input": {"format": {"type": "audio/opus"}}}}),
                "unsupported_audio_format",
            ),
            (
                json!({"input_audio_format": "mp3"}),
                "unsupported_audio_format",
            ),
            (
                json!({"turn_detection": {"silence_duration_ms": -5}}),
                "invalid_session_config",
            ),
            (
                json!({"turn_detection": {"threshold": 3}}),
                "invalid_session_config",
            ),
            (json!({"type": "chat"}), "invalid_session_config"),
            (
                json!({"voxd": {"partial_interval_ms": 5}}),
                "invalid_session_config",
            ),
            (json!("nope"), "invalid_session_config"),
        ];
        for (update, code) in cases {
            let mut c = before.clone();
            // A valid part first, to prove nothing of it is kept.
            let mut u = update.clone();
            if let Value::Object(o) = &mut u {
                o.insert("instructions".into(), json!("changed"));
            }
            let err = c.apply_update(&u).unwrap_err();
            assert_eq!(err.code, code, "{update}");
            assert_eq!(c, before, "{update} changed the config");
        }
    }
}
