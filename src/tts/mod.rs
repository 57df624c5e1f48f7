//! Speech synthesis: the [`Tts`] trait every backend implements, the embedded Piper voice
//! ([`piper::PiperTts`], ONNX Runtime + espeak-ng phonemes) and any OpenAI-compatible
//! `/v1/audio/speech` endpoint ([`remote::RemoteTts`]).
//!
//! A backend turns one piece of text (a sentence or clause; [`text::Splitter`] cuts an answer's
//! token stream into such pieces) into mono samples at the backend's rate. Callers resample to
//! what the client asked for. Requests marked `urgent` (the next piece of an answer already
//! playing) are computed before new work, so playback does not starve under load.

pub mod config;
pub mod espeak;
pub mod lexicon;
pub mod open;
pub mod piper;
pub mod pronounce;
pub mod remote;
pub mod text;

use std::time::Duration;

use futures::future::BoxFuture;

pub use config::{TtsArgs, TtsConfig};
pub use piper::{PiperTts, VoiceConfig};
pub use remote::RemoteTts;

pub use crate::protocol::session::OPENAI_VOICES;

/// Longest text one speech request may carry, in characters (OpenAI's limit).
pub const MAX_INPUT_CHARS: usize = 4096;

/// Slowest and fastest speaking rate accepted (OpenAI's speech API range).
pub const SPEED_RANGE: (f32, f32) = (0.25, 4.0);

/// One piece of text to speak.
#[derive(Debug, Clone)]
pub struct SpeakRequest {
    pub text: String,
    /// A voice name from [`Tts::voices`] (see [`resolve_voice`]).
    pub voice: String,
    /// Speaking rate: 1.0 is the voice's own.
    pub speed: f32,
    /// Goes before non-urgent work: the continuation of an answer already playing.
    pub urgent: bool,
}

/// Synthesised speech: mono samples in -1..1.
#[derive(Debug, Clone)]
pub struct Speech {
    pub samples: Vec<f32>,
    pub sample_rate: u32,
    /// Time spent computing (queueing excluded).
    pub compute: Duration,
}

impl Speech {
    /// The audio's length.
    pub fn duration(&self) -> Duration {
        Duration::from_secs_f64(self.samples.len() as f64 / self.sample_rate.max(1) as f64)
    }
}

/// Errors of the TTS stage.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TtsError {
    #[error("unknown voice `{voice}`; this server speaks with: {known}")]
    UnknownVoice { voice: String, known: String },
    #[error("speed {0} is outside {min}..={max}", min = SPEED_RANGE.0, max = SPEED_RANGE.1)]
    InvalidSpeed(f32),
    #[error("the text is {len} characters long; at most {max} are accepted")]
    TooLong { len: usize, max: usize },
    #[error("there is no text to speak")]
    Empty,
    #[error("the voice could not be loaded: {0}")]
    Load(String),
    #[error("phonemes: {0}")]
    Phonemes(String),
    #[error("the speech synthesiser is busy ({queued} requests queued); try again shortly")]
    Busy { queued: usize },
    #[error("the speech synthesiser is shutting down")]
    ShuttingDown,
    #[error("synthesis failed: {0}")]
    Engine(String),
    #[error("the speech endpoint failed: {0}")]
    Remote(String),
}

impl From<crate::workers::PoolError> for TtsError {
    fn from(e: crate::workers::PoolError) -> Self {
        match e {
            crate::workers::PoolError::Busy { queued, .. } => TtsError::Busy { queued },
            crate::workers::PoolError::ShutDown { .. } => TtsError::ShuttingDown,
            crate::workers::PoolError::Panicked { message, .. } => TtsError::Engine(message),
        }
    }
}

/// A speech synthesiser: local voice or remote endpoint.
pub trait Tts: Send + Sync {
    /// Speaks one piece of text.
    fn speak(&self, request: SpeakRequest) -> BoxFuture<'_, Result<Speech, TtsError>>;
    /// The voices this backend has, the default first.
    fn voices(&self) -> Vec<String>;
    /// A short description of the backend and voice, for logs and `/v1/models`.
    fn describe(&self) -> String;
    /// Requests waiting for compute, for `/metrics`; `None` for a backend without a local queue.
    fn queue_depth(&self) -> Option<usize> {
        None
    }
}

/// The voice to use for `requested`: the backend's own voice of that name, its default for an
/// OpenAI voice name or none, else [`TtsError::UnknownVoice`].
pub fn resolve_voice(tts: &dyn Tts, requested: Option<&str>) -> Result<String, TtsError> {
    let voices = tts.voices();
    let default = voices.first().cloned().unwrap_or_default();
    let Some(name) = requested.map(str::trim).filter(|v| !v.is_empty()) else {
        return Ok(default);
    };
    if let Some(v) = voices.iter().find(|v| v.eq_ignore_ascii_case(name)) {
        return Ok(v.clone());
    }
    if OPENAI_VOICES.iter().any(|v| v.eq_ignore_ascii_case(name)) {
        return Ok(default);
    }
    Err(TtsError::UnknownVoice {
        voice: name.chars().take(64).collect(),
        known: voices
            .iter()
            .map(String::as_str)
            .chain(OPENAI_VOICES)
            .collect::<Vec<_>>()
            .join(", "),
    })
}

/// Checks a speaking rate.
pub fn check_speed(speed: f32) -> Result<f32, TtsError> {
    if speed.is_finite() && (SPEED_RANGE.0..=SPEED_RANGE.1).contains(&speed) {
        Ok(speed)
    } else {
        Err(TtsError::InvalidSpeed(speed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Named(Vec<String>);
    impl Tts for Named {
        fn speak(&self, _: SpeakRequest) -> BoxFuture<'_, Result<Speech, TtsError>> {
            Box::pin(async { Err(TtsError::Empty) })
        }
        fn voices(&self) -> Vec<String> {
            self.0.clone()
        }
        fn describe(&self) -> String {
            "names only".into()
        }
    }

    #[test]
    fn voices_resolve_to_own_names_openai_aliases_or_a_typed_error() {
        let tts = Named(vec!["joe".into(), "amy".into()]);
        assert_eq!(resolve_voice(&tts, None).unwrap(), "joe");
        assert_eq!(resolve_voice(&tts, Some("AMY")).unwrap(), "amy");
        assert_eq!(resolve_voice(&tts, Some("alloy")).unwrap(), "joe");
        let err = resolve_voice(&tts, Some("darth")).unwrap_err();
        assert!(matches!(err, TtsError::UnknownVoice { .. }));
        assert!(err.to_string().contains("joe, amy, alloy"), "{err}");
    }

    #[test]
    fn speed_is_range_checked() {
        assert_eq!(check_speed(1.5).unwrap(), 1.5);
        for bad in [0.0, 0.2, 4.5, f32::NAN, f32::INFINITY] {
            assert!(check_speed(bad).is_err(), "{bad}");
        }
    }
}
