//! The speech recogniser's settings: its flags (`--asr-*`), its `[asr]` table in the file, and
//! the validated [`AsrConfig`] that builds a [`WhisperConfig`] or a [`RemoteAsrConfig`].

use std::path::PathBuf;

use clap::Args;
use serde::Deserialize;

use super::{AudioCtx, RemoteAsrConfig, WhisperConfig};
use crate::setting::{in_range, non_empty, ConfigError};

/// Speech-recognition settings.
#[derive(Debug, Clone, Default, Args)]
pub struct AsrArgs {
    /// Whisper model: a manifest name (whisper-tiny.en) or a path to a whisper.cpp ggml file.
    #[arg(long, env = "VOXD_ASR_MODEL")]
    pub asr_model: Option<String>,
    /// Concurrent transcriptions [default: number of cores].
    #[arg(long, env = "VOXD_ASR_POOL")]
    pub asr_pool: Option<usize>,
    /// CPU threads per transcription [default: 1].
    #[arg(long, env = "VOXD_ASR_THREADS")]
    pub asr_threads: Option<usize>,
    /// Default language code [default: en].
    #[arg(long, env = "VOXD_LANGUAGE")]
    pub language: Option<String>,
    /// Initial prompt that conditions the decoder (names, spelling).
    #[arg(long, env = "VOXD_ASR_PROMPT")]
    pub asr_prompt: Option<String>,
    /// Beam width for decoding; 1 = greedy [default: 1].
    #[arg(long, env = "VOXD_ASR_BEAM")]
    pub asr_beam: Option<usize>,
    /// Encoder window: auto (trim to the audio), full, or 1..1500 positions [default: auto].
    #[arg(long, env = "VOXD_AUDIO_CTX")]
    pub audio_ctx: Option<String>,
    /// Transcribe on an OpenAI-compatible engine (base URL with /v1: another voxd, speaches,
    /// vLLM) instead of the embedded whisper.cpp; voice detection, partials and turns stay local.
    #[arg(long, env = "VOXD_ASR_URL")]
    pub asr_url: Option<String>,
    /// API key for --asr-url.
    #[arg(long, env = "VOXD_ASR_API_KEY", hide_env_values = true)]
    pub asr_api_key: Option<String>,
    /// Model name sent to --asr-url [default: whisper-1].
    #[arg(long, env = "VOXD_ASR_REMOTE_MODEL")]
    pub asr_remote_model: Option<String>,
    /// Longest wait for --asr-url per transcription, in seconds [default: 30].
    #[arg(long, env = "VOXD_ASR_TIMEOUT")]
    pub asr_timeout: Option<u64>,
    /// Also send partial (interim) transcriptions to --asr-url [default: finals only].
    #[arg(long, env = "VOXD_ASR_REMOTE_PARTIALS")]
    pub asr_remote_partials: bool,
    /// Do not listen for the knowledge base's names and rare words (by default the embedded
    /// recogniser biases its decoding towards them in realtime sessions).
    #[arg(long, env = "VOXD_ASR_NO_KB_HINTS")]
    pub asr_no_kb_hints: bool,
}

/// The file's `[asr]` table.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileAsr {
    model: Option<String>,
    url: Option<String>,
    api_key: Option<String>,
    remote_model: Option<String>,
    timeout: Option<u64>,
    remote_partials: Option<bool>,
    pool: Option<usize>,
    threads: Option<usize>,
    language: Option<String>,
    prompt: Option<String>,
    audio_ctx: Option<String>,
    beam: Option<usize>,
    kb_hints: Option<bool>,
}

/// Speech-recognition configuration.
#[derive(Debug, Clone)]
pub struct AsrConfig {
    /// `None`: the manifest's default ASR model.
    pub model: Option<String>,
    pub pool: usize,
    pub threads: usize,
    pub language: String,
    pub prompt: Option<String>,
    pub audio_ctx: AudioCtx,
    pub beam: usize,
    /// Bias live sessions' transcription towards the knowledge base's vocabulary.
    pub kb_hints: bool,
    /// Transcribe on this OpenAI-compatible engine instead of in-process.
    pub remote: Option<RemoteAsrConfig>,
}

impl AsrConfig {
    /// Flags over the file over the defaults, validated; `cores` sizes the default pool.
    pub fn resolve(args: &AsrArgs, file: FileAsr, cores: usize) -> Result<Self, ConfigError> {
        let remote = match non_empty(args.asr_url.clone().or(file.url.clone())) {
            None => None,
            Some(url) => Some(remote(args, &file, url)?),
        };
        let pool = in_range(
            "asr_pool",
            args.asr_pool.or(file.pool).unwrap_or(cores),
            1..=256,
        )?;
        let threads = in_range(
            "asr_threads",
            args.asr_threads.or(file.threads).unwrap_or(1),
            1..=256,
        )?;
        let beam = in_range(
            "asr_beam",
            args.asr_beam.or(file.beam).unwrap_or(1),
            1..=256,
        )?;
        let audio_ctx = args
            .audio_ctx
            .clone()
            .or(file.audio_ctx)
            .unwrap_or_else(|| "auto".into())
            .parse()
            .map_err(|message: String| ConfigError::invalid("audio_ctx", message))?;
        let prompt = args.asr_prompt.clone().or(file.prompt);
        if let Some(p) = &prompt {
            crate::protocol::session::check_model_text(
                p,
                crate::protocol::session::MAX_PROMPT_BYTES,
                "asr_prompt",
            )
            .map_err(|e| ConfigError::invalid("asr_prompt", e.message))?;
        }
        let language = args
            .language
            .clone()
            .or(file.language)
            .unwrap_or_else(|| "en".into());
        if language.is_empty()
            || language.len() > 8
            || !language.chars().all(|c| c.is_ascii_alphabetic())
        {
            return Err(ConfigError::invalid(
                "language",
                format!("`{language}` is not a language code such as en"),
            ));
        }
        Ok(AsrConfig {
            model: args.asr_model.clone().or(file.model),
            pool,
            threads,
            language,
            prompt,
            audio_ctx,
            beam,
            kb_hints: !args.asr_no_kb_hints && file.kb_hints.unwrap_or(true),
            remote,
        })
    }

    /// The embedded recogniser's settings, for the ggml model at `model_path`.
    pub fn whisper(&self, model_path: PathBuf) -> WhisperConfig {
        WhisperConfig {
            pool_size: self.pool,
            threads: self.threads,
            language: self.language.clone(),
            prompt: self.prompt.clone(),
            audio_ctx: self.audio_ctx,
            beam_size: self.beam,
            hints: self.kb_hints,
            ..WhisperConfig::new(model_path)
        }
    }
}

/// The remote engine at `url` (`--asr-url`), with its key, model name, timeout and partials.
fn remote(args: &AsrArgs, file: &FileAsr, url: String) -> Result<RemoteAsrConfig, ConfigError> {
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(ConfigError::invalid(
            "asr_url",
            "expected an http:// or https:// base URL (with /v1)",
        ));
    }
    let timeout = args.asr_timeout.or(file.timeout).unwrap_or(30);
    if !(1..=600).contains(&timeout) {
        return Err(ConfigError::invalid(
            "asr_timeout",
            format!("{timeout} is outside 1..=600 seconds"),
        ));
    }
    Ok(RemoteAsrConfig {
        base_url: url,
        api_key: non_empty(args.asr_api_key.clone().or(file.api_key.clone())),
        model: args
            .asr_remote_model
            .clone()
            .or(file.remote_model.clone())
            .unwrap_or_else(|| "whisper-1".into()),
        timeout: std::time::Duration::from_secs(timeout),
        partials: args.asr_remote_partials || file.remote_partials.unwrap_or(false),
    })
}
