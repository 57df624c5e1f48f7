//! The voice's settings: its flags (`--tts-*`, `--no-tts`, `--onnxruntime`), its `[tts]` table,
//! and the validated [`TtsConfig`] that [`super::open`] opens.

use std::path::PathBuf;

use clap::Args;
use serde::Deserialize;

use crate::setting::{in_range, non_empty, ConfigError};

/// Speech-synthesis settings (the voice of spoken answers and `/v1/audio/speech`).
#[derive(Debug, Clone, Default, Args)]
pub struct TtsArgs {
    /// Voice: a manifest name (piper-joe-medium) or a path to any Piper voice (`.onnx`, with its
    /// `.onnx.json` beside it); with --tts-url, the remote model's name.
    #[arg(long, env = "VOXD_TTS_MODEL")]
    pub tts_model: Option<String>,
    /// Serve no voice: answers are text only and `/v1/audio/speech` answers 503.
    #[arg(long, env = "VOXD_NO_TTS")]
    pub no_tts: bool,
    /// Use an OpenAI-compatible `/v1/audio/speech` endpoint (base URL with /v1) instead of the
    /// embedded voice.
    #[arg(long, env = "VOXD_TTS_URL")]
    pub tts_url: Option<String>,
    /// API key for --tts-url.
    #[arg(long, env = "VOXD_TTS_API_KEY", hide_env_values = true)]
    pub tts_api_key: Option<String>,
    /// For --tts-url: the remote voice used when a client names none [default: alloy].
    #[arg(long, env = "VOXD_TTS_VOICE")]
    pub tts_voice: Option<String>,
    /// Voice workers (each holds a copy of the voice, about 100 MB) [default: 1].
    #[arg(long, env = "VOXD_TTS_WORKERS")]
    pub tts_workers: Option<usize>,
    /// Threads each voice worker computes on [default: 1].
    #[arg(long, env = "VOXD_TTS_THREADS")]
    pub tts_threads: Option<usize>,
    /// The ONNX Runtime library (libonnxruntime.so, 1.17 or newer) [default: the one `voxd
    /// models pull` installed].
    #[arg(long, env = "VOXD_ONNXRUNTIME")]
    pub onnxruntime: Option<PathBuf>,
    /// A pronunciation lexicon: a file of `word = respelling` lines; the voice says each listed
    /// word as respelled (the knowledge base's names and rare words).
    #[arg(long, env = "VOXD_TTS_LEXICON")]
    pub tts_lexicon: Option<PathBuf>,
}

/// The file's `[tts]` table.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileTts {
    enabled: Option<bool>,
    model: Option<String>,
    url: Option<String>,
    api_key: Option<String>,
    voice: Option<String>,
    workers: Option<usize>,
    threads: Option<usize>,
    onnxruntime: Option<PathBuf>,
    lexicon: Option<PathBuf>,
}

/// Speech-synthesis configuration.
#[derive(Debug, Clone)]
pub struct TtsConfig {
    pub enabled: bool,
    /// `None`: the manifest's default voice.
    pub model: Option<String>,
    pub url: Option<String>,
    pub api_key: Option<String>,
    /// The remote voice used when a client names none.
    pub voice: String,
    pub workers: usize,
    pub threads: usize,
    /// `None`: the manifest's ONNX Runtime.
    pub onnxruntime: Option<PathBuf>,
    /// The pronunciation lexicon's file.
    pub lexicon: Option<PathBuf>,
}

impl TtsConfig {
    /// Flags over the file over the defaults, validated.
    pub fn resolve(args: &TtsArgs, file: FileTts) -> Result<Self, ConfigError> {
        let workers = in_range(
            "tts_workers",
            args.tts_workers.or(file.workers).unwrap_or(1),
            1..=64,
        )?;
        let threads = in_range(
            "tts_threads",
            args.tts_threads.or(file.threads).unwrap_or(1),
            1..=64,
        )?;
        let url = non_empty(args.tts_url.clone().or(file.url));
        let model = args.tts_model.clone().or(file.model);
        if url.is_some() && model.is_none() {
            return Err(ConfigError::invalid(
                "tts_model",
                "--tts-url needs --tts-model, the remote model's name",
            ));
        }
        Ok(TtsConfig {
            enabled: !args.no_tts && file.enabled.unwrap_or(true),
            model,
            url,
            api_key: non_empty(args.tts_api_key.clone().or(file.api_key)),
            voice: args
                .tts_voice
                .clone()
                .or(file.voice)
                .unwrap_or_else(|| "alloy".into()),
            workers,
            threads,
            onnxruntime: args.onnxruntime.clone().or(file.onnxruntime),
            lexicon: args.tts_lexicon.clone().or(file.lexicon),
        })
    }
}
