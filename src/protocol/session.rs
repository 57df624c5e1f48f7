//! The realtime session's configuration and `session.update`.
//!
//! An update is applied to a copy and validated as a whole before it replaces the current
//! configuration, so a bad update changes nothing. Both the GA shape
//! (`session.audio.input.format`, `.turn_detection`, `.transcription`) and the beta shape
//! (`input_audio_format: "pcm16"`, top-level `turn_detection`, `input_audio_transcription`) are
//! read. voxd's own settings live under `session.voxd`.

use serde_json::{json, Map, Value};

use super::{new_id, ProtocolError};

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
    pub tool_choice: crate::tools::ToolChoice,
    /// voxd: the voice detector under turn detection.
    pub vad: VadEngine,
    /// What this server can run: Silero VAD, and an end-of-turn model for `semantic_vad`.
    pub available: TurnModelsAvailable,
    /// What the last `session.update` asked for that voxd does not do, each with the reason
    /// (shown in `session.updated` as `voxd.ignored`, never silently accepted).
    pub ignored: Vec<Ignored>,
}

/// A setting voxd received but does not apply.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Ignored {
    /// Where it was, such as `session.audio.input.noise_reduction`.
    pub param: String,
    pub reason: String,
}

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
            "a response makes at most one function call",
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
            tool_choice: Default::default(),
            vad: VadEngine::WebRtc,
            available: TurnModelsAvailable::default(),
            ignored: Vec::new(),
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

    /// Applies a `session.update` body; on error nothing changes.
    pub fn apply_update(&mut self, session: &Value) -> Result<(), ProtocolError> {
        let obj = session.as_object().ok_or_else(|| {
            ProtocolError::new("invalid_session_config", "`session` must be an object")
                .param("session")
        })?;
        let mut next = self.clone();
        next.ignored.clear();
        unsupported(obj, &mut next.ignored);
        if let Some(t) = obj.get("type") {
            next.kind = match t.as_str() {
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
            next.instructions = text.to_string();
        }
        if let Some(v) = obj.get("model").and_then(Value::as_str) {
            next.model = v.to_string();
        }
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
            if audio && next.voices.is_empty() {
                next.ignored.push(Ignored {
                    param: "session.output_modalities".into(),
                    reason: "this server has no voice (started with --no-tts, or the voice \
                             failed to load): answers are text"
                        .into(),
                });
                audio = false;
            }
            next.output_modalities = vec![if audio { "audio" } else { "text" }.into()];
        }
        // Beta names first, so that GA fields win when a client sends both.
        if let Some(v) = obj.get("output_audio_format") {
            next.output_format = beta_format(v, "session.output_audio_format")?;
        }
        if let Some(v) = obj.get("voice") {
            next.voice = check_voice(v, &next.voices, "session.voice")?;
        }
        if let Some(output) = obj.get("audio").and_then(|a| a.get("output")) {
            let output = output
                .as_object()
                .ok_or_else(|| invalid("session.audio.output", "must be an object"))?;
            if let Some(v) = output.get("format") {
                next.output_format = parse_format(v, "session.audio.output.format")?;
            }
            if let Some(v) = output.get("voice") {
                next.voice = check_voice(v, &next.voices, "session.audio.output.voice")?;
            }
            if let Some(v) = output.get("speed") {
                next.speed = v
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
        if let Some(v) = obj.get("tools").filter(|v| !v.is_null()) {
            next.tools = crate::tools::ToolSet::parse(v, "session.tools").map_err(tool_error)?;
        }
        if let Some(v) = obj.get("tool_choice").filter(|v| !v.is_null()) {
            next.tool_choice =
                crate::tools::ToolChoice::parse(v, "session.tool_choice").map_err(tool_error)?;
        }
        if !next.tools.is_empty() || next.tool_choice != crate::tools::ToolChoice::Auto {
            next.tool_choice
                .check(&next.tools, "session.tool_choice")
                .map_err(tool_error)?;
        }
        if let Some(v) = obj
            .get("max_output_tokens")
            .or_else(|| obj.get("max_response_output_tokens"))
        {
            next.max_output_tokens = match v {
                Value::String(s) if s == "inf" => None,
                v => Some(ranged(v, "session.max_output_tokens", 1, 4096)? as u32),
            };
        }

        // Beta shape first, so that GA fields win when a client sends both.
        if let Some(v) = obj.get("input_audio_format") {
            next.input_format = beta_format(v, "session.input_audio_format")?;
        }
        if let Some(v) = obj.get("turn_detection") {
            next.turn_detection = turn_detection(v, next.turn_detection, "session.turn_detection")?;
        }
        if let Some(v) = obj.get("input_audio_transcription") {
            transcription(v, &mut next, "session.input_audio_transcription")?;
        }

        if let Some(input) = obj.get("audio").and_then(|a| a.get("input")) {
            let input = input
                .as_object()
                .ok_or_else(|| invalid("session.audio.input", "must be an object"))?;
            if let Some(v) = input.get("format") {
                next.input_format = parse_format(v, "session.audio.input.format")?;
            }
            if let Some(v) = input.get("turn_detection") {
                next.turn_detection =
                    turn_detection(v, next.turn_detection, "session.audio.input.turn_detection")?;
            }
            if let Some(v) = input.get("transcription") {
                transcription(v, &mut next, "session.audio.input.transcription")?;
            }
        }

        if let Some(v) = obj.get("voxd") {
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
                next.partial_interval_ms = ms;
            }
            if let Some(x) = v.get("vad") {
                let engine = x.as_str().and_then(VadEngine::parse).ok_or_else(|| {
                    invalid("session.voxd.vad", "must be \"webrtc\" or \"silero\"")
                })?;
                if engine == VadEngine::Silero && !next.available.silero {
                    return Err(invalid(
                        "session.voxd.vad",
                        "Silero VAD is not loaded on this server (start it with --vad silero, or run `voxd models pull`)",
                    ));
                }
                next.vad = engine;
            }
            if let Some(x) = v.get("min_speech_ms") {
                next.min_speech_ms = ranged(x, "session.voxd.min_speech_ms", 20, 2_000)?;
            }
            if let Some(x) = v.get("interrupt_min_speech_ms") {
                next.interrupt_min_speech_ms =
                    ranged(x, "session.voxd.interrupt_min_speech_ms", 20, 2_000)?;
            }
            for (key, slot) in [
                ("citations_event", &mut next.citations_event),
                ("binary_audio_out", &mut next.binary_audio_out),
                ("knowledge_base", &mut next.knowledge_base),
            ] {
                if let Some(x) = v.get(key) {
                    *slot = x.as_bool().ok_or_else(|| {
                        invalid(&format!("session.voxd.{key}"), "must be a boolean")
                    })?;
                }
            }
            if let Some(x) = v.get("speculative_after_ms") {
                next.speculative_after_ms = match x {
                    Value::Null => None,
                    x => Some(ranged(x, "session.voxd.speculative_after_ms", 0, 5_000)?),
                };
            }
        }
        if matches!(
            next.turn_detection.map(|t| t.kind),
            Some(TurnKind::Semantic(_))
        ) && !next.available.end_of_turn
        {
            next.ignored.push(Ignored {
                param: "session.audio.input.turn_detection.type".into(),
                reason: "this server has no end-of-turn model loaded: semantic_vad ends turns \
                         after 500 ms of silence, as server_vad does"
                    .into(),
            });
        }
        *self = next;
        Ok(())
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
                "tools": self.tools.to_view(),
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

/// A tool definition or choice error as the client sees it.
pub fn tool_error(e: crate::tools::ToolError) -> ProtocolError {
    let param = e.param().unwrap_or("tools").to_string();
    ProtocolError::new(e.code(), e.to_string()).param(param)
}

fn invalid(param: &str, message: &str) -> ProtocolError {
    ProtocolError::new("invalid_session_config", format!("{param} {message}")).param(param)
}

fn uint(v: &Value, param: &str) -> Result<u64, ProtocolError> {
    v.as_u64()
        .ok_or_else(|| invalid(param, "must be a non-negative integer"))
}

fn ranged(v: &Value, param: &str, min: u64, max: u64) -> Result<u64, ProtocolError> {
    let n = uint(v, param)?;
    if !(min..=max).contains(&n) {
        return Err(invalid(param, &format!("must be between {min} and {max}")));
    }
    Ok(n)
}

fn pcm_rate(v: Option<&Value>, param: &str) -> Result<u32, ProtocolError> {
    match v {
        None | Some(Value::Null) => Ok(24_000),
        Some(x) => {
            let rate = x.as_u64().ok_or_else(|| {
                ProtocolError::new(
                    "unsupported_sample_rate",
                    format!("{param} must be an integer"),
                )
                .param(param)
            })?;
            if !(8_000..=48_000).contains(&rate) {
                return Err(ProtocolError::new(
                    "unsupported_sample_rate",
                    format!("sample rate {rate} Hz is not supported; use 8000 to 48000"),
                )
                .param(param));
            }
            Ok(rate as u32)
        }
    }
}

/// The voice names of OpenAI's speech and realtime APIs. A client that sends one of these gets
/// the server's default voice, so SDK code written for OpenAI works unchanged.
pub const OPENAI_VOICES: [&str; 13] = [
    "alloy", "ash", "ballad", "cedar", "coral", "echo", "fable", "marin", "nova", "onyx", "sage",
    "shimmer", "verse",
];

/// A voice setting: one of the server's `voices` or an OpenAI voice name; with no voices at all
/// any name is kept (and nothing is spoken).
pub fn check_voice(v: &Value, voices: &[String], param: &str) -> Result<String, ProtocolError> {
    let name = v
        .as_str()
        .or_else(|| v.get("id").and_then(Value::as_str))
        .map(str::trim)
        .filter(|s| !s.is_empty() && s.len() <= 64)
        .ok_or_else(|| invalid(param, "must be a voice name"))?;
    let known = voices.is_empty()
        || voices.iter().any(|v| v.eq_ignore_ascii_case(name))
        || OPENAI_VOICES.iter().any(|v| v.eq_ignore_ascii_case(name));
    if !known {
        let all: Vec<&str> = voices
            .iter()
            .map(String::as_str)
            .chain(OPENAI_VOICES)
            .collect();
        return Err(ProtocolError::new(
            "invalid_voice",
            format!(
                "unknown voice `{name}`; this server speaks with: {}",
                all.join(", ")
            ),
        )
        .param(param));
    }
    Ok(name.to_string())
}

/// An audio `format` object (`{"type": "audio/pcm", "rate": 24000}`, `audio/pcmu`, `audio/pcma`).
pub fn parse_format(v: &Value, param: &str) -> Result<InputFormat, ProtocolError> {
    let obj = v.as_object().ok_or_else(|| {
        ProtocolError::new(
            "unsupported_audio_format",
            "format must be an object such as {\"type\":\"audio/pcm\",\"rate\":24000}",
        )
        .param(param)
    })?;
    match obj.get("type").and_then(Value::as_str) {
        Some("audio/pcm") => Ok(InputFormat::Pcm16 {
            rate: pcm_rate(obj.get("rate"), &format!("{param}.rate"))?,
        }),
        Some("audio/pcmu") => Ok(InputFormat::Pcmu),
        Some("audio/pcma") => Ok(InputFormat::Pcma),
        other => Err(ProtocolError::new(
            "unsupported_audio_format",
            format!(
                "audio format {other:?} is not supported; use audio/pcm, audio/pcmu or audio/pcma"
            ),
        )
        .param(param)),
    }
}

fn beta_format(v: &Value, param: &str) -> Result<InputFormat, ProtocolError> {
    match v.as_str() {
        Some("pcm16") => Ok(InputFormat::Pcm16 { rate: 24_000 }),
        Some("g711_ulaw") => Ok(InputFormat::Pcmu),
        Some("g711_alaw") => Ok(InputFormat::Pcma),
        other => Err(ProtocolError::new(
            "unsupported_audio_format",
            format!("{param} {other:?} is not supported; use pcm16, g711_ulaw or g711_alaw"),
        )
        .param(param)),
    }
}

fn turn_detection(
    v: &Value,
    current: Option<TurnDetection>,
    param: &str,
) -> Result<Option<TurnDetection>, ProtocolError> {
    let obj: &Map<String, Value> = match v {
        Value::Null => return Ok(None),
        Value::Object(o) => o,
        _ => return Err(invalid(param, "must be an object or null")),
    };
    let mut t = current.unwrap_or_default();
    match obj.get("type") {
        None => {}
        Some(Value::String(k)) if k == "server_vad" => t.kind = TurnKind::Server,
        Some(Value::String(k)) if k == "semantic_vad" && t.kind == TurnKind::Server => {
            t.kind = TurnKind::Semantic(Eagerness::Auto)
        }
        Some(Value::String(k)) if k == "semantic_vad" => {}
        Some(other) => {
            return Err(invalid(
                &format!("{param}.type"),
                &format!("{other} is not supported; use server_vad or semantic_vad"),
            ))
        }
    }
    if let Some(x) = obj.get("eagerness") {
        let e = x.as_str().and_then(Eagerness::parse).ok_or_else(|| {
            invalid(
                &format!("{param}.eagerness"),
                "must be one of low, medium, high, auto",
            )
        })?;
        match t.kind {
            TurnKind::Semantic(_) => t.kind = TurnKind::Semantic(e),
            TurnKind::Server => {
                return Err(invalid(
                    &format!("{param}.eagerness"),
                    "applies to semantic_vad only",
                ))
            }
        }
    }
    if let Some(x) = obj.get("threshold") {
        let th = x
            .as_f64()
            .filter(|v| (0.0..=1.0).contains(v))
            .ok_or_else(|| {
                invalid(
                    &format!("{param}.threshold"),
                    "must be a number from 0 to 1",
                )
            })?;
        t.threshold = th as f32;
    }
    if let Some(x) = obj.get("prefix_padding_ms") {
        t.prefix_padding_ms = ranged(x, &format!("{param}.prefix_padding_ms"), 0, 5_000)?;
    }
    if let Some(x) = obj.get("silence_duration_ms") {
        t.silence_duration_ms = ranged(x, &format!("{param}.silence_duration_ms"), 60, 10_000)?;
    }
    if let Some(x) = obj.get("create_response") {
        t.create_response = x
            .as_bool()
            .ok_or_else(|| invalid(&format!("{param}.create_response"), "must be a boolean"))?;
    }
    if let Some(x) = obj.get("interrupt_response") {
        t.interrupt_response = x
            .as_bool()
            .ok_or_else(|| invalid(&format!("{param}.interrupt_response"), "must be a boolean"))?;
    }
    if let Some(x) = obj.get("idle_timeout_ms") {
        t.idle_timeout_ms = match x {
            Value::Null => None,
            x => Some(ranged(
                x,
                &format!("{param}.idle_timeout_ms"),
                1_000,
                3_600_000,
            )?),
        };
    }
    Ok(Some(t))
}

fn transcription(v: &Value, next: &mut SessionConfig, param: &str) -> Result<(), ProtocolError> {
    let obj = match v {
        Value::Null => return Ok(()),
        Value::Object(o) => o,
        _ => return Err(invalid(param, "must be an object")),
    };
    if let Some(m) = obj.get("model").and_then(Value::as_str) {
        next.transcription_model = m.to_string();
    }
    if let Some(l) = obj.get("language") {
        next.language = match l {
            Value::Null => None,
            Value::String(s) if s.is_empty() => None,
            Value::String(s)
                if (2..=8).contains(&s.len()) && s.chars().all(|c| c.is_ascii_alphabetic()) =>
            {
                Some(s.clone())
            }
            _ => {
                return Err(invalid(
                    &format!("{param}.language"),
                    "must be a language code such as \"en\"",
                ))
            }
        };
    }
    if let Some(p) = obj.get("prompt") {
        next.prompt = match p {
            Value::Null => None,
            Value::String(s) if s.is_empty() => None,
            Value::String(s) => {
                check_model_text(s, MAX_PROMPT_BYTES, &format!("{param}.prompt"))?;
                Some(s.clone())
            }
            _ => return Err(invalid(&format!("{param}.prompt"), "must be a string")),
        };
    }
    Ok(())
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
