//! Configuration: command-line flags, `VOXD_*` environment variables and an optional TOML file,
//! in that order of precedence, merged into one validated [`Config`].
//!
//! Two phases: clap collects raw values (flags, then environment) as `Option`s; [`Config::resolve`]
//! fills what is still unset from the file, then from defaults, and checks the result. Every
//! setting has the same name in all three places (`--asr-threads`, `VOXD_ASR_THREADS`,
//! `[asr] threads`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use clap::Args;
use serde::Deserialize;

use crate::asr::AudioCtx;

/// Errors in configuration; each names the setting.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("invalid {setting}: {message}")]
    Invalid {
        setting: &'static str,
        message: String,
    },
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Settings shared by every subcommand.
#[derive(Debug, Clone, Default, Args)]
pub struct CommonArgs {
    /// TOML configuration file.
    #[arg(long, global = true, env = "VOXD_CONFIG")]
    pub config: Option<PathBuf>,
    /// Data folder: models are cached in `<home>/models` [default: $XDG_DATA_HOME/voxd].
    #[arg(long, global = true, env = "VOXD_HOME")]
    pub home: Option<PathBuf>,
    /// Log format.
    #[arg(long, global = true, env = "VOXD_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
}

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
}

/// HTTP server settings.
#[derive(Debug, Clone, Default, Args)]
pub struct ServerArgs {
    /// Address to listen on [default: 127.0.0.1:8080].
    #[arg(long, env = "VOXD_ADDR")]
    pub addr: Option<String>,
    /// Largest accepted upload in MiB [default: 25].
    #[arg(long, env = "VOXD_MAX_UPLOAD_MB")]
    pub max_upload_mb: Option<u64>,
    /// Require this API key on every API route (Bearer header, or the browser subprotocol).
    #[arg(long, env = "VOXD_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Browser origins (scheme://host[:port]) allowed to call the API, comma-separated; `*` for
    /// any [default: the server's own origin and loopback origins].
    #[arg(long, env = "VOXD_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub allowed_origins: Option<Vec<String>>,
    /// Host names (Host header, without the port) the server answers to, comma-separated; `*`
    /// for any [default: the bind address, localhost and loopback addresses].
    #[arg(long, env = "VOXD_ALLOWED_HOSTS", value_delimiter = ',')]
    pub allowed_hosts: Option<Vec<String>>,
    /// Allow listening on a non-loopback address without an API key (anyone who can reach the
    /// port can use every API).
    #[arg(long, env = "VOXD_INSECURE_NO_AUTH")]
    pub insecure_no_auth: bool,
    /// Longest audio accepted by the transcription endpoint, in minutes [default: 30].
    #[arg(long, env = "VOXD_MAX_AUDIO_MINUTES")]
    pub max_audio_minutes: Option<u64>,
    /// Uploads decoded or transcribed at once; more get 503 [default: 4].
    #[arg(long, env = "VOXD_MAX_TRANSCRIPTIONS")]
    pub max_transcriptions: Option<usize>,
    /// Concurrent realtime sessions; more get 503 [default: 64].
    #[arg(long, env = "VOXD_MAX_SESSIONS")]
    pub max_sessions: Option<usize>,
    /// Longest realtime session in minutes [default: 60].
    #[arg(long, env = "VOXD_MAX_SESSION_MINUTES")]
    pub max_session_minutes: Option<u64>,
    /// Export traces to this OpenTelemetry collector (OTLP/HTTP base URL, e.g.
    /// http://localhost:4318); OTEL_EXPORTER_OTLP_ENDPOINT works too [default: off].
    #[arg(long, env = "VOXD_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
    /// Voice detector under turn detection: `webrtc` (no model) or `silero` (Silero VAD);
    /// sessions may choose with `session.voxd.vad` [default: webrtc].
    #[arg(long, env = "VOXD_VAD")]
    pub vad: Option<String>,
    /// End-of-turn model for `semantic_vad`: a manifest name (smart-turn-v3.2) or a path to a
    /// Smart Turn v3 ONNX file.
    #[arg(long, env = "VOXD_TURN_MODEL")]
    pub turn_model: Option<String>,
    /// Load neither the end-of-turn model nor Silero VAD (`semantic_vad` then ends turns after
    /// 500 ms of silence).
    #[arg(long, env = "VOXD_NO_TURN_MODELS")]
    pub no_turn_models: bool,
}

/// Knowledge-base and embedding settings.
#[derive(Debug, Clone, Default, Args)]
pub struct KbArgs {
    /// Knowledge-base database file [default: <home>/kb.sqlite].
    #[arg(long = "kb", env = "VOXD_KB")]
    pub kb_path: Option<PathBuf>,
    /// Keep the knowledge base (and the tool audit trail) in PostgreSQL with pgvector instead of
    /// the SQLite file, shared by every replica given the same URL:
    /// postgres://USER[:PASSWORD]@HOST:PORT/DB.
    #[arg(long, env = "VOXD_KB_URL", hide_env_values = true)]
    pub kb_url: Option<String>,
    /// Embedding model: a manifest name (all-minilm-l6-v2) or a folder with model.safetensors,
    /// config.json and tokenizer.json; with --embed-url, the remote model's name.
    #[arg(long, env = "VOXD_EMBED_MODEL")]
    pub embed_model: Option<String>,
    /// Use an OpenAI-compatible embeddings endpoint (base URL with /v1) instead of the local model.
    #[arg(long, env = "VOXD_EMBED_URL")]
    pub embed_url: Option<String>,
    /// API key for --embed-url.
    #[arg(long, env = "VOXD_EMBED_API_KEY", hide_env_values = true)]
    pub embed_api_key: Option<String>,
    /// Vector length to request from --embed-url [default: the model's].
    #[arg(long, env = "VOXD_EMBED_DIMENSIONS")]
    pub embed_dimensions: Option<usize>,
    /// Threads running the local embedding model [default: 1].
    #[arg(long, env = "VOXD_EMBED_WORKERS")]
    pub embed_workers: Option<usize>,
    /// Relevance floor: passages less similar (cosine) to the question are not used [default: 0.3].
    #[arg(long, env = "VOXD_KB_MIN_SCORE")]
    pub kb_min_score: Option<f32>,
    /// Passages retrieved per question [default: 3].
    #[arg(long, env = "VOXD_KB_TOP_K")]
    pub kb_top_k: Option<usize>,
    /// Largest document accepted, in MiB [default: 5].
    #[arg(long, env = "VOXD_KB_MAX_DOCUMENT_MB")]
    pub kb_max_document_mb: Option<u64>,
    /// Largest knowledge-base database, in MiB; a document that would grow it beyond is refused
    /// (507 `kb_full`) [default: no limit].
    #[arg(long, env = "VOXD_KB_MAX_MB")]
    pub kb_max_mb: Option<u64>,
}

/// Language-model settings.
#[derive(Debug, Clone, Default, Args)]
pub struct LlmArgs {
    /// Language model: a manifest name (smollm2-135m-instruct), a path to a GGUF file (llama
    /// architecture), or `none`; with --llm-url, the remote model's name.
    #[arg(long, env = "VOXD_LLM_MODEL")]
    pub llm_model: Option<String>,
    /// Use an OpenAI-compatible chat endpoint (base URL with /v1) instead of the embedded model.
    #[arg(long, env = "VOXD_LLM_URL")]
    pub llm_url: Option<String>,
    /// API key for --llm-url.
    #[arg(long, env = "VOXD_LLM_API_KEY", hide_env_values = true)]
    pub llm_api_key: Option<String>,
    /// Most tokens in one spoken answer [default: 160].
    #[arg(long, env = "VOXD_LLM_MAX_TOKENS")]
    pub llm_max_tokens: Option<usize>,
    /// Sampling temperature; 0 = greedy [default: 0].
    #[arg(long, env = "VOXD_LLM_TEMPERATURE")]
    pub llm_temperature: Option<f32>,
    /// For --llm-url: time allowed until the first token, in ms (connecting, retries included
    /// per attempt) [default: 20000].
    #[arg(long, env = "VOXD_LLM_FIRST_TOKEN_TIMEOUT_MS")]
    pub llm_first_token_timeout_ms: Option<u64>,
    /// For --llm-url: retries before the first token [default: 2].
    #[arg(long, env = "VOXD_LLM_RETRIES")]
    pub llm_retries: Option<u32>,
    /// Default system instructions for spoken answers (a session's `instructions` replace them).
    #[arg(long, env = "VOXD_INSTRUCTIONS")]
    pub instructions: Option<String>,
    /// Let the model answer a factual question that no passage of the knowledge base supports
    /// (default: voxd says it does not know, without asking the model, which would guess).
    #[arg(long, env = "VOXD_LLM_ANSWER_UNFOUND")]
    pub llm_answer_unfound: bool,
    /// How a question the knowledge base covers is answered: `checked` (the model's sentences,
    /// each sent once the passages support it, else the passage's own sentence), `generative`
    /// (the model's words unchecked) or `extractive` (the passage's best sentence, no model)
    /// [default: extractive with the embedded model, checked with --llm-url].
    #[arg(long, env = "VOXD_LLM_ANSWER_MODE", value_parser = ["checked", "generative", "extractive"])]
    pub llm_answer_mode: Option<String>,
}

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
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileTts {
    enabled: Option<bool>,
    model: Option<String>,
    url: Option<String>,
    api_key: Option<String>,
    voice: Option<String>,
    workers: Option<usize>,
    threads: Option<usize>,
    onnxruntime: Option<PathBuf>,
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
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileLlm {
    model: Option<String>,
    url: Option<String>,
    api_key: Option<String>,
    max_tokens: Option<usize>,
    temperature: Option<f32>,
    first_token_timeout_ms: Option<u64>,
    retries: Option<u32>,
    instructions: Option<String>,
    answer_unfound: Option<bool>,
    answer_mode: Option<String>,
}

/// Language-model configuration.
#[derive(Debug, Clone)]
pub struct LlmConfig {
    /// `None`: the manifest's default. `Some("none")`: no language model.
    pub model: Option<String>,
    pub url: Option<String>,
    pub api_key: Option<String>,
    pub max_tokens: usize,
    pub temperature: f32,
    pub first_token_timeout_ms: u64,
    pub retries: u32,
    pub instructions: Option<String>,
    /// Let the model answer factual questions no passage supports.
    pub answer_unfound: bool,
    /// How questions the knowledge base covers are answered.
    pub answer_mode: crate::grounding::AnswerMode,
}

impl LlmConfig {
    /// Whether a language model is configured at all.
    pub fn enabled(&self) -> bool {
        self.model.as_deref() != Some("none")
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileKb {
    path: Option<PathBuf>,
    url: Option<String>,
    embed_model: Option<String>,
    embed_url: Option<String>,
    embed_api_key: Option<String>,
    embed_dimensions: Option<usize>,
    embed_workers: Option<usize>,
    min_score: Option<f32>,
    top_k: Option<usize>,
    max_document_mb: Option<u64>,
    max_mb: Option<u64>,
}

/// Knowledge-base configuration.
#[derive(Debug, Clone)]
pub struct KbConfig {
    pub path: PathBuf,
    /// A PostgreSQL database (`postgres://…`) that replaces the file at `path`.
    pub url: Option<String>,
    /// `None`: the manifest's default embedding model (or, with `embed_url`, an error).
    pub embed_model: Option<String>,
    pub embed_url: Option<String>,
    pub embed_api_key: Option<String>,
    pub embed_dimensions: Option<usize>,
    pub embed_workers: usize,
    pub min_score: f32,
    pub top_k: usize,
    pub max_document_bytes: usize,
    /// Largest database file; `None`: no limit.
    pub max_bytes: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    home: Option<PathBuf>,
    log_format: Option<LogFormat>,
    #[serde(default)]
    server: FileServer,
    #[serde(default)]
    asr: FileAsr,
    #[serde(default)]
    kb: FileKb,
    #[serde(default)]
    llm: FileLlm,
    #[serde(default)]
    tts: FileTts,
    #[serde(default)]
    turns: FileTurns,
    #[serde(default)]
    tools: crate::tools::ToolsConfig,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileTurns {
    enabled: Option<bool>,
    vad: Option<String>,
    model: Option<String>,
    silero_model: Option<String>,
    workers: Option<usize>,
}

/// Turn-taking configuration: the voice detector and the end-of-turn model.
#[derive(Debug, Clone)]
pub struct TurnsConfig {
    /// Load the turn-taking models (Silero VAD, the end-of-turn model).
    pub enabled: bool,
    /// The voice detector sessions start with.
    pub vad: crate::protocol::session::VadEngine,
    /// `None`: the manifest's end-of-turn model.
    pub model: Option<String>,
    /// `None`: the manifest's Silero VAD.
    pub silero_model: Option<String>,
    /// End-of-turn workers (one thread each).
    pub workers: usize,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileServer {
    addr: Option<String>,
    max_upload_mb: Option<u64>,
    api_key: Option<String>,
    allowed_origins: Option<Vec<String>>,
    allowed_hosts: Option<Vec<String>>,
    insecure_no_auth: Option<bool>,
    max_audio_minutes: Option<u64>,
    max_transcriptions: Option<usize>,
    max_sessions: Option<usize>,
    max_session_minutes: Option<u64>,
    otlp_endpoint: Option<String>,
    #[serde(default)]
    keys: Vec<FileKey>,
}

/// An API key in the configuration file: the key itself, or the environment variable that
/// holds it.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileKey {
    id: String,
    key: Option<String>,
    key_env: Option<String>,
    role: Option<String>,
    #[serde(default)]
    admin: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileAsr {
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
    /// Transcribe on this OpenAI-compatible engine instead of in-process.
    pub remote: Option<crate::asr::RemoteAsrConfig>,
}

/// Server configuration.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub addr: SocketAddr,
    pub max_upload_bytes: usize,
    pub api_key: Option<String>,
    /// Browser origins allowed besides the server's own and loopback ones (`*`: any).
    pub allowed_origins: Vec<String>,
    /// Host names accepted besides the bind address and loopback names (`*`: any).
    pub allowed_hosts: Vec<String>,
    /// Listen on a non-loopback address without an API key.
    pub insecure_no_auth: bool,
    /// Longest audio the transcription endpoint accepts, in seconds.
    pub max_audio_seconds: f64,
    /// Uploads decoded or transcribed at once.
    pub max_transcriptions: usize,
    pub max_sessions: usize,
    pub max_session_minutes: u64,
    /// OTLP/HTTP collector base URL; `None`: no export unless the OTEL_* variables ask for it.
    pub otlp_endpoint: Option<String>,
    /// API keys with ids and roles (the file's `[[server.keys]]`), besides `api_key`.
    pub keys: Vec<crate::server::guard::ApiKey>,
}

impl ServerConfig {
    /// Refuses to serve every API to the network unprotected: a non-loopback address needs an
    /// API key, or `--insecure-no-auth` (which logs a warning).
    pub fn check_exposure(&self) -> Result<(), ConfigError> {
        if self.addr.ip().is_loopback() || self.api_key.is_some() || !self.keys.is_empty() {
            return Ok(());
        }
        if self.insecure_no_auth {
            tracing::warn!(addr = %self.addr, "serving every API without an API key on a non-loopback address (--insecure-no-auth)");
            return Ok(());
        }
        Err(ConfigError::Invalid {
            setting: "addr",
            message: format!(
                "{} is reachable from other machines and no API key is set: pass --api-key (or VOXD_API_KEY), listen on 127.0.0.1, or accept the risk with --insecure-no-auth",
                self.addr
            ),
        })
    }
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub home: PathBuf,
    pub log_format: LogFormat,
    pub asr: AsrConfig,
    pub server: ServerConfig,
    pub kb: KbConfig,
    pub llm: LlmConfig,
    pub tts: TtsConfig,
    /// Turn-taking models (the file's `[turns]` table).
    pub turns: TurnsConfig,
    /// Server tools and who may call them (the file's `[tools]` table).
    pub tools: crate::tools::ToolsConfig,
}

/// The default data folder: `$XDG_DATA_HOME/voxd` (`~/.local/share/voxd`).
pub fn default_home() -> PathBuf {
    dirs::data_dir()
        .unwrap_or_else(|| PathBuf::from("."))
        .join("voxd")
}

impl Config {
    /// Merges flags/environment (`common`, `asr`, `server`) over the file named by
    /// `common.config` over the defaults, and validates the result.
    pub fn resolve(
        common: &CommonArgs,
        asr: &AsrArgs,
        server: &ServerArgs,
    ) -> Result<Self, ConfigError> {
        Self::resolve_with(common, asr, server, &KbArgs::default())
    }

    /// [`Config::resolve`] with knowledge-base flags too.
    pub fn resolve_with(
        common: &CommonArgs,
        asr: &AsrArgs,
        server: &ServerArgs,
        kb: &KbArgs,
    ) -> Result<Self, ConfigError> {
        Self::resolve_all(
            common,
            asr,
            server,
            kb,
            &LlmArgs::default(),
            &TtsArgs::default(),
        )
    }

    /// [`Config::resolve`] with every group of flags.
    pub fn resolve_all(
        common: &CommonArgs,
        asr: &AsrArgs,
        server: &ServerArgs,
        kb: &KbArgs,
        llm: &LlmArgs,
        tts: &TtsArgs,
    ) -> Result<Self, ConfigError> {
        let file = match &common.config {
            Some(path) => read_file(path)?,
            None => FileConfig::default(),
        };
        let cores = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2);

        let addr_text = server
            .addr
            .clone()
            .or(file.server.addr)
            .unwrap_or_else(|| "127.0.0.1:8080".into());
        let addr = addr_text.parse().map_err(|e| ConfigError::Invalid {
            setting: "addr",
            message: format!("`{addr_text}`: {e}"),
        })?;
        let max_upload_mb = server
            .max_upload_mb
            .or(file.server.max_upload_mb)
            .unwrap_or(25);
        if max_upload_mb == 0 || max_upload_mb > 4096 {
            return Err(ConfigError::Invalid {
                setting: "max_upload_mb",
                message: format!("{max_upload_mb} is outside 1..=4096"),
            });
        }

        let max_sessions = server
            .max_sessions
            .or(file.server.max_sessions)
            .unwrap_or(64);
        let max_session_minutes = server
            .max_session_minutes
            .or(file.server.max_session_minutes)
            .unwrap_or(60);
        let max_audio_minutes = server
            .max_audio_minutes
            .or(file.server.max_audio_minutes)
            .unwrap_or(30);
        let max_transcriptions = server
            .max_transcriptions
            .or(file.server.max_transcriptions)
            .unwrap_or(4);
        if !(1..=1440).contains(&max_audio_minutes) {
            return Err(ConfigError::Invalid {
                setting: "max_audio_minutes",
                message: format!("{max_audio_minutes} is outside 1..=1440"),
            });
        }
        for (setting, v) in [
            ("max_sessions", max_sessions as u64),
            ("max_session_minutes", max_session_minutes),
            ("max_transcriptions", max_transcriptions as u64),
        ] {
            if !(1..=100_000).contains(&v) {
                return Err(ConfigError::Invalid {
                    setting,
                    message: format!("{v} is outside 1..=100000"),
                });
            }
        }
        let otlp_endpoint = server
            .otlp_endpoint
            .clone()
            .or(file.server.otlp_endpoint)
            .filter(|u| !u.trim().is_empty());
        if let Some(url) = &otlp_endpoint {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(ConfigError::Invalid {
                    setting: "otlp_endpoint",
                    message: format!("`{url}` is not an http:// or https:// URL"),
                });
            }
        }

        let pool = asr.asr_pool.or(file.asr.pool).unwrap_or(cores);
        let threads = asr.asr_threads.or(file.asr.threads).unwrap_or(1);
        let beam = asr.asr_beam.or(file.asr.beam).unwrap_or(1);
        for (setting, v) in [
            ("asr_pool", pool),
            ("asr_threads", threads),
            ("asr_beam", beam),
        ] {
            if !(1..=256).contains(&v) {
                return Err(ConfigError::Invalid {
                    setting,
                    message: format!("{v} is outside 1..=256"),
                });
            }
        }
        let audio_ctx_text = asr
            .audio_ctx
            .clone()
            .or(file.asr.audio_ctx)
            .unwrap_or_else(|| "auto".into());
        let audio_ctx = audio_ctx_text
            .parse()
            .map_err(|message| ConfigError::Invalid {
                setting: "audio_ctx",
                message,
            })?;
        let prompt = asr.asr_prompt.clone().or(file.asr.prompt);
        if let Some(p) = &prompt {
            crate::protocol::session::check_model_text(
                p,
                crate::protocol::session::MAX_PROMPT_BYTES,
                "asr_prompt",
            )
            .map_err(|e| ConfigError::Invalid {
                setting: "asr_prompt",
                message: e.message,
            })?;
        }
        let language = asr
            .language
            .clone()
            .or(file.asr.language)
            .unwrap_or_else(|| "en".into());
        if language.is_empty()
            || language.len() > 8
            || !language.chars().all(|c| c.is_ascii_alphabetic())
        {
            return Err(ConfigError::Invalid {
                setting: "language",
                message: format!("`{language}` is not a language code such as en"),
            });
        }

        let home = common
            .home
            .clone()
            .or(file.home)
            .unwrap_or_else(default_home);
        let fk = file.kb;
        let embed_workers = kb.embed_workers.or(fk.embed_workers).unwrap_or(1);
        if !(1..=64).contains(&embed_workers) {
            return Err(ConfigError::Invalid {
                setting: "embed_workers",
                message: format!("{embed_workers} is outside 1..=64"),
            });
        }
        let min_score = kb.kb_min_score.or(fk.min_score).unwrap_or(0.3);
        if !(-1.0..=1.0).contains(&min_score) {
            return Err(ConfigError::Invalid {
                setting: "kb_min_score",
                message: format!("{min_score} is outside -1..=1 (cosine similarity)"),
            });
        }
        let top_k = kb.kb_top_k.or(fk.top_k).unwrap_or(3);
        if !(1..=crate::rag::search::MAX_TOP_K).contains(&top_k) {
            return Err(ConfigError::Invalid {
                setting: "kb_top_k",
                message: format!("{top_k} is outside 1..={}", crate::rag::search::MAX_TOP_K),
            });
        }
        let max_doc_mb = kb.kb_max_document_mb.or(fk.max_document_mb).unwrap_or(5);
        if !(1..=1024).contains(&max_doc_mb) {
            return Err(ConfigError::Invalid {
                setting: "kb_max_document_mb",
                message: format!("{max_doc_mb} is outside 1..=1024"),
            });
        }
        let max_kb_mb = kb.kb_max_mb.or(fk.max_mb);
        if max_kb_mb.is_some_and(|m| !(1..=1_048_576).contains(&m)) {
            return Err(ConfigError::Invalid {
                setting: "kb_max_mb",
                message: format!("{} is outside 1..=1048576", max_kb_mb.unwrap_or(0)),
            });
        }
        let embed_url = kb
            .embed_url
            .clone()
            .or(fk.embed_url)
            .filter(|u| !u.is_empty());
        let embed_model = kb.embed_model.clone().or(fk.embed_model);
        if embed_url.is_some() && embed_model.is_none() {
            return Err(ConfigError::Invalid {
                setting: "embed_model",
                message: "--embed-url needs --embed-model, the remote model's name".into(),
            });
        }
        let kb_url = kb.kb_url.clone().or(fk.url).filter(|u| !u.is_empty());
        if let Some(u) = &kb_url {
            if !(u.starts_with("postgres://") || u.starts_with("postgresql://")) {
                return Err(ConfigError::Invalid {
                    setting: "kb_url",
                    message: "expected postgres://USER@HOST:PORT/DB".into(),
                });
            }
        }
        let kb_config = KbConfig {
            url: kb_url,
            path: kb
                .kb_path
                .clone()
                .or(fk.path)
                .unwrap_or_else(|| home.join("kb.sqlite")),
            embed_model,
            embed_url,
            embed_api_key: kb
                .embed_api_key
                .clone()
                .or(fk.embed_api_key)
                .filter(|k| !k.is_empty()),
            embed_dimensions: kb.embed_dimensions.or(fk.embed_dimensions),
            embed_workers,
            min_score,
            top_k,
            max_document_bytes: (max_doc_mb as usize) << 20,
            max_bytes: max_kb_mb.map(|m| m << 20),
        };

        let fl = file.llm;
        let llm_max_tokens = llm.llm_max_tokens.or(fl.max_tokens).unwrap_or(160);
        if !(1..=4096).contains(&llm_max_tokens) {
            return Err(ConfigError::Invalid {
                setting: "llm_max_tokens",
                message: format!("{llm_max_tokens} is outside 1..=4096"),
            });
        }
        let llm_temperature = llm.llm_temperature.or(fl.temperature).unwrap_or(0.0);
        if !(0.0..=2.0).contains(&llm_temperature) {
            return Err(ConfigError::Invalid {
                setting: "llm_temperature",
                message: format!("{llm_temperature} is outside 0..=2"),
            });
        }
        let llm_url = llm.llm_url.clone().or(fl.url).filter(|u| !u.is_empty());
        let llm_model = llm.llm_model.clone().or(fl.model);
        if llm_url.is_some() && llm_model.is_none() {
            return Err(ConfigError::Invalid {
                setting: "llm_model",
                message: "--llm-url needs --llm-model, the remote model's name".into(),
            });
        }
        let remote_llm = llm_url.is_some();
        let llm_config = LlmConfig {
            model: llm_model,
            url: llm_url,
            api_key: llm
                .llm_api_key
                .clone()
                .or(fl.api_key)
                .filter(|k| !k.is_empty()),
            max_tokens: llm_max_tokens,
            temperature: llm_temperature,
            first_token_timeout_ms: llm
                .llm_first_token_timeout_ms
                .or(fl.first_token_timeout_ms)
                .unwrap_or(20_000)
                .max(1),
            retries: llm.llm_retries.or(fl.retries).unwrap_or(2).min(10),
            instructions: llm
                .instructions
                .clone()
                .or(fl.instructions)
                .filter(|s| !s.trim().is_empty()),
            answer_unfound: llm.llm_answer_unfound || fl.answer_unfound.unwrap_or(false),
            answer_mode: match llm.llm_answer_mode.clone().or(fl.answer_mode) {
                // The embedded 135M model states the fact less often than the passage's own
                // sentence does (see README, Answer quality); a remote model's words are checked.
                None if remote_llm => crate::grounding::AnswerMode::Checked,
                None => crate::grounding::AnswerMode::Extractive,
                Some(m) => {
                    crate::grounding::AnswerMode::parse(&m).ok_or_else(|| ConfigError::Invalid {
                        setting: "llm.answer_mode",
                        message: format!("{m:?} is not checked, generative or extractive"),
                    })?
                }
            },
        };

        let ft = file.tts;
        let tts_workers = tts.tts_workers.or(ft.workers).unwrap_or(1);
        let tts_threads = tts.tts_threads.or(ft.threads).unwrap_or(1);
        for (setting, n) in [("tts_workers", tts_workers), ("tts_threads", tts_threads)] {
            if !(1..=64).contains(&n) {
                return Err(ConfigError::Invalid {
                    setting,
                    message: format!("{n} is outside 1..=64"),
                });
            }
        }
        let tts_url = tts.tts_url.clone().or(ft.url).filter(|u| !u.is_empty());
        let tts_model = tts.tts_model.clone().or(ft.model);
        if tts_url.is_some() && tts_model.is_none() {
            return Err(ConfigError::Invalid {
                setting: "tts_model",
                message: "--tts-url needs --tts-model, the remote model's name".into(),
            });
        }
        let tts_config = TtsConfig {
            enabled: !tts.no_tts && ft.enabled.unwrap_or(true),
            model: tts_model,
            url: tts_url,
            api_key: tts
                .tts_api_key
                .clone()
                .or(ft.api_key)
                .filter(|k| !k.is_empty()),
            voice: tts
                .tts_voice
                .clone()
                .or(ft.voice)
                .unwrap_or_else(|| "alloy".into()),
            workers: tts_workers,
            threads: tts_threads,
            onnxruntime: tts.onnxruntime.clone().or(ft.onnxruntime),
        };

        let ft = file.turns;
        let vad_name = server
            .vad
            .clone()
            .or(ft.vad)
            .unwrap_or_else(|| "webrtc".into());
        let vad = crate::protocol::session::VadEngine::parse(&vad_name).ok_or_else(|| {
            ConfigError::Invalid {
                setting: "vad",
                message: format!("`{vad_name}` is not a voice detector: use webrtc or silero"),
            }
        })?;
        let turn_workers = ft.workers.unwrap_or(1);
        if !(1..=16).contains(&turn_workers) {
            return Err(ConfigError::Invalid {
                setting: "turns.workers",
                message: format!("{turn_workers} is outside 1..=16"),
            });
        }
        let turns = TurnsConfig {
            enabled: !server.no_turn_models && ft.enabled.unwrap_or(true),
            vad,
            model: server.turn_model.clone().or(ft.model),
            silero_model: ft.silero_model,
            workers: turn_workers,
        };
        if !turns.enabled && vad == crate::protocol::session::VadEngine::Silero {
            return Err(ConfigError::Invalid {
                setting: "vad",
                message: "--vad silero needs the turn-taking models (drop --no-turn-models)".into(),
            });
        }

        let mut keys = Vec::new();
        for (i, k) in file.server.keys.iter().enumerate() {
            let key = match (&k.key, &k.key_env) {
                (Some(key), None) => key.clone(),
                (None, Some(var)) => std::env::var(var).map_err(|_| ConfigError::Invalid {
                    setting: "server.keys",
                    message: format!("key `{}`: the environment variable {var} is not set", k.id),
                })?,
                _ => {
                    return Err(ConfigError::Invalid {
                        setting: "server.keys",
                        message: format!(
                            "key #{i} (`{}`) needs exactly one of `key` and `key_env`",
                            k.id
                        ),
                    })
                }
            };
            if key.len() < 16
                || k.id.is_empty()
                || keys
                    .iter()
                    .any(|o: &crate::server::guard::ApiKey| o.id == k.id)
            {
                return Err(ConfigError::Invalid {
                    setting: "server.keys",
                    message: format!(
                        "key #{i} (`{}`): ids must be unique and non-empty, keys at least 16 characters",
                        k.id
                    ),
                });
            }
            keys.push(crate::server::guard::ApiKey {
                id: k.id.clone(),
                key,
                role: k.role.clone().unwrap_or_else(|| "default".into()),
                admin: k.admin,
            });
        }
        crate::tools::ServerTools::new(&file.tools).map_err(|e| ConfigError::Invalid {
            setting: "tools",
            message: e.to_string(),
        })?;

        let remote = match asr
            .asr_url
            .clone()
            .or(file.asr.url)
            .filter(|u| !u.is_empty())
        {
            None => None,
            Some(url) => {
                if !(url.starts_with("http://") || url.starts_with("https://")) {
                    return Err(ConfigError::Invalid {
                        setting: "asr_url",
                        message: "expected an http:// or https:// base URL (with /v1)".into(),
                    });
                }
                let timeout = asr.asr_timeout.or(file.asr.timeout).unwrap_or(30);
                if !(1..=600).contains(&timeout) {
                    return Err(ConfigError::Invalid {
                        setting: "asr_timeout",
                        message: format!("{timeout} is outside 1..=600 seconds"),
                    });
                }
                Some(crate::asr::RemoteAsrConfig {
                    base_url: url,
                    api_key: asr
                        .asr_api_key
                        .clone()
                        .or(file.asr.api_key)
                        .filter(|k| !k.is_empty()),
                    model: asr
                        .asr_remote_model
                        .clone()
                        .or(file.asr.remote_model)
                        .unwrap_or_else(|| "whisper-1".into()),
                    timeout: std::time::Duration::from_secs(timeout),
                    partials: asr.asr_remote_partials || file.asr.remote_partials.unwrap_or(false),
                })
            }
        };
        Ok(Config {
            tools: file.tools.clone(),
            home,
            llm: llm_config,
            tts: tts_config,
            turns,
            kb: kb_config,
            log_format: common.log_format.or(file.log_format).unwrap_or_default(),
            asr: AsrConfig {
                model: asr.asr_model.clone().or(file.asr.model),
                pool,
                threads,
                language,
                prompt,
                audio_ctx,
                beam,
                remote,
            },
            server: ServerConfig {
                addr,
                max_upload_bytes: (max_upload_mb * 1024 * 1024) as usize,
                api_key: server
                    .api_key
                    .clone()
                    .or(file.server.api_key)
                    .filter(|k| !k.is_empty()),
                allowed_origins: server
                    .allowed_origins
                    .clone()
                    .or(file.server.allowed_origins)
                    .unwrap_or_default(),
                allowed_hosts: server
                    .allowed_hosts
                    .clone()
                    .or(file.server.allowed_hosts)
                    .unwrap_or_default(),
                insecure_no_auth: server.insecure_no_auth
                    || file.server.insecure_no_auth.unwrap_or(false),
                max_audio_seconds: max_audio_minutes as f64 * 60.0,
                max_transcriptions,
                max_sessions,
                max_session_minutes,
                otlp_endpoint,
                keys,
            },
        })
    }
}

fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError::File {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    toml::from_str(&text).map_err(|e| ConfigError::File {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_network_needs_a_key_or_an_explicit_opt_out() {
        let resolve = |server: ServerArgs| {
            Config::resolve(&CommonArgs::default(), &AsrArgs::default(), &server).unwrap()
        };
        let local = resolve(ServerArgs::default());
        assert!(
            local.server.check_exposure().is_ok(),
            "127.0.0.1 by default"
        );
        assert_eq!(local.server.max_audio_seconds, 1800.0);
        assert_eq!(local.server.max_transcriptions, 4);
        let open = resolve(ServerArgs {
            addr: Some("0.0.0.0:8080".into()),
            ..Default::default()
        });
        let err = open.server.check_exposure().unwrap_err().to_string();
        assert!(
            err.contains("--api-key") && err.contains("--insecure-no-auth"),
            "{err}"
        );
        for server in [
            ServerArgs {
                addr: Some("0.0.0.0:8080".into()),
                api_key: Some("k".into()),
                ..Default::default()
            },
            ServerArgs {
                addr: Some("[::]:8080".into()),
                insecure_no_auth: true,
                ..Default::default()
            },
        ] {
            assert!(resolve(server).server.check_exposure().is_ok());
        }
        let bad_prompt = Config::resolve(
            &CommonArgs::default(),
            &AsrArgs {
                asr_prompt: Some("a\0b".into()),
                ..Default::default()
            },
            &ServerArgs::default(),
        );
        assert!(bad_prompt.is_err());
    }

    #[test]
    fn flags_beat_file_and_file_beats_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("voxd.toml");
        std::fs::write(
            &file,
            "home = \"/data/voxd\"\n[server]\naddr = \"0.0.0.0:9000\"\nmax_upload_mb = 5\n[asr]\nthreads = 3\nlanguage = \"de\"\n",
        )
        .unwrap();
        let common = CommonArgs {
            config: Some(file),
            ..Default::default()
        };
        let asr = AsrArgs {
            asr_threads: Some(2),
            ..Default::default()
        };
        let cfg = Config::resolve(&common, &asr, &ServerArgs::default()).unwrap();
        assert_eq!(cfg.asr.threads, 2, "flag wins over file");
        assert_eq!(cfg.asr.language, "de", "file wins over default");
        assert_eq!(cfg.server.addr.to_string(), "0.0.0.0:9000");
        assert_eq!(cfg.server.max_upload_bytes, 5 * 1024 * 1024);
        assert_eq!(cfg.home, PathBuf::from("/data/voxd"));
        assert_eq!(cfg.asr.audio_ctx, AudioCtx::Auto, "default");
    }

    #[test]
    fn bad_values_and_unknown_keys_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("voxd.toml");
        std::fs::write(&file, "[asr]\nthreds = 3\n").unwrap();
        let common = CommonArgs {
            config: Some(file.clone()),
            ..Default::default()
        };
        let err =
            Config::resolve(&common, &AsrArgs::default(), &ServerArgs::default()).unwrap_err();
        assert!(err.to_string().contains("threds"), "{err}");

        let server = ServerArgs {
            addr: Some("localhost:http".into()),
            ..Default::default()
        };
        let err =
            Config::resolve(&CommonArgs::default(), &AsrArgs::default(), &server).unwrap_err();
        assert!(err.to_string().contains("addr"), "{err}");
        let asr = AsrArgs {
            asr_pool: Some(0),
            ..Default::default()
        };
        let err =
            Config::resolve(&CommonArgs::default(), &asr, &ServerArgs::default()).unwrap_err();
        assert!(err.to_string().contains("asr_pool"), "{err}");
    }
}
