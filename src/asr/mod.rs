//! Speech recognition: the [`Asr`] trait every backend implements, the embedded whisper.cpp
//! backend ([`whisper::WhisperPool`]) and an OpenAI-compatible remote engine
//! ([`remote::RemoteAsr`], `--asr-url`).
//!
//! Requests carry a [`Priority`]: a turn's final transcript goes before partial re-transcriptions,
//! and when the pool is saturated partials are dropped before finals are delayed.

pub mod config;
pub mod remote;
pub mod whisper;

use std::time::Duration;

use futures::future::BoxFuture;
use serde::Serialize;

use crate::models::ModelError;

pub use config::{AsrArgs, AsrConfig};
pub use remote::{RemoteAsr, RemoteAsrConfig};
pub use whisper::{
    check_language, check_prompt, AudioCtx, WhisperConfig, WhisperPool, MAX_PROMPT_BYTES,
};

/// How urgent a transcription is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Priority {
    /// The final transcript of a turn or a file: never dropped.
    Final,
    /// A partial (interim) transcript: may be dropped when the pool is busy.
    Partial,
}

/// One transcription to run: mono 16 kHz samples and options.
#[derive(Debug, Clone)]
pub struct Request {
    pub samples: Vec<f32>,
    /// Language code (`en`), or `None` for the configured default.
    pub language: Option<String>,
    /// Text that conditions the decoder (names, spelling, style).
    pub prompt: Option<String>,
    /// Words and names to listen for (the knowledge base's vocabulary): the embedded backend
    /// biases its decoding towards them; a remote engine ignores them.
    pub hints: Option<std::sync::Arc<[String]>>,
    pub priority: Priority,
}

impl Request {
    /// A final-priority request with default options.
    pub fn new(samples: Vec<f32>) -> Self {
        Request {
            samples,
            language: None,
            prompt: None,
            hints: None,
            priority: Priority::Final,
        }
    }
}

/// A timed piece of the transcript.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Segment {
    pub start_s: f64,
    pub end_s: f64,
    pub text: String,
    pub no_speech_prob: f32,
}

/// The result of a transcription.
#[derive(Debug, Clone)]
pub struct Transcript {
    pub text: String,
    pub segments: Vec<Segment>,
    pub language: String,
    /// Length of the audio.
    pub audio: Duration,
    /// Time spent waiting for a free worker.
    pub queue_wait: Duration,
    /// Time spent computing.
    pub compute: Duration,
}

/// Errors of the ASR stage.
#[derive(Debug, thiserror::Error)]
pub enum AsrError {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error("whisper could not load {path}: {reason}")]
    Load {
        path: std::path::PathBuf,
        reason: String,
    },
    #[error("the speech recogniser is busy ({queued} requests queued); try again shortly")]
    Busy { queued: usize },
    #[error("a newer partial transcription replaced this one")]
    Superseded,
    #[error("the speech recogniser is shutting down")]
    ShuttingDown,
    #[error("no audio to transcribe")]
    NoAudio,
    #[error("transcription failed: {0}")]
    Engine(String),
    #[error("the remote speech recogniser failed: {0}")]
    Remote(String),
    #[error("invalid prompt: {0}")]
    InvalidPrompt(String),
    #[error("invalid language: {0}")]
    InvalidLanguage(String),
    #[error(
        "the speech recogniser failed on this request (an internal error; the server logged it)"
    )]
    Internal,
}

/// A speech recogniser: local model or remote endpoint.
pub trait Asr: Send + Sync {
    /// Transcribes one request.
    fn transcribe(&self, request: Request) -> BoxFuture<'_, Result<Transcript, AsrError>>;
    /// A short description of the backend and model, for logs and `/v1/models`.
    fn describe(&self) -> String;
    /// Requests waiting for compute (finals, partials), for `/metrics`; `None` for a backend
    /// without a local queue.
    fn queue_depth(&self) -> Option<(usize, usize)> {
        None
    }
    /// Whether the backend can serve now; `Err` says why not (for `/readyz`).
    fn check_ready(&self) -> Result<(), String> {
        Ok(())
    }
    /// Stops the backend: queued and running requests end with [`AsrError::ShuttingDown`].
    fn stop(&self) {}
}
