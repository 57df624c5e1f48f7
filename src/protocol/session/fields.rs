//! The parsers of `session` fields shared by `session.update` and `response.create`: formats,
//! voices, turn detection, transcription, numbers in range; each error names its field.

use serde_json::Value;

use super::*;
use crate::protocol::ProtocolError;

/// A tool definition or choice error as the client sees it.
pub fn tool_error(e: crate::tools::ToolError) -> ProtocolError {
    let param = e.param().unwrap_or("tools").to_string();
    ProtocolError::new(e.code(), e.to_string()).param(param)
}

pub(super) fn invalid(param: &str, message: &str) -> ProtocolError {
    ProtocolError::new("invalid_session_config", format!("{param} {message}")).param(param)
}

pub(super) fn uint(v: &Value, param: &str) -> Result<u64, ProtocolError> {
    v.as_u64()
        .ok_or_else(|| invalid(param, "must be a non-negative integer"))
}

pub(super) fn ranged(v: &Value, param: &str, min: u64, max: u64) -> Result<u64, ProtocolError> {
    let n = uint(v, param)?;
    if !(min..=max).contains(&n) {
        return Err(invalid(param, &format!("must be between {min} and {max}")));
    }
    Ok(n)
}

pub(super) fn pcm_rate(v: Option<&Value>, param: &str) -> Result<u32, ProtocolError> {
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

pub(super) fn beta_format(v: &Value, param: &str) -> Result<InputFormat, ProtocolError> {
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

pub(super) fn turn_detection(
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

pub(super) fn transcription(
    v: &Value,
    next: &mut SessionConfig,
    param: &str,
) -> Result<(), ProtocolError> {
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
