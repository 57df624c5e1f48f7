//! The knowledge base's settings: its flags (`--kb`, `--kb-url`, `--kb-*`, `--embed-*`), its
//! `[kb]` table, and the validated [`KbConfig`] that [`super::open`] opens.

use std::path::{Path, PathBuf};

use clap::Args;
use serde::Deserialize;

use crate::setting::{in_range, non_empty, ConfigError};

/// Knowledge-base and embedding settings. Global to their subcommand tree: `voxd kb add --kb-url
/// URL dir/` and `voxd kb --kb-url URL add dir/` mean the same.
#[derive(Debug, Clone, Default, Args)]
pub struct KbArgs {
    /// Knowledge-base database file [default: <home>/kb.sqlite].
    #[arg(long = "kb", env = "VOXD_KB", global = true)]
    pub kb_path: Option<PathBuf>,
    /// Keep the knowledge base (and the tool audit trail) in PostgreSQL with pgvector instead of
    /// the SQLite file, shared by every replica given the same URL:
    /// postgres://USER[:PASSWORD]@HOST:PORT/DB.
    #[arg(long, env = "VOXD_KB_URL", hide_env_values = true, global = true)]
    pub kb_url: Option<String>,
    /// Embedding model: a manifest name (all-minilm-l6-v2) or a folder with model.safetensors,
    /// config.json and tokenizer.json; with --embed-url, the remote model's name.
    #[arg(long, env = "VOXD_EMBED_MODEL", global = true)]
    pub embed_model: Option<String>,
    /// Use an OpenAI-compatible embeddings endpoint (base URL with /v1) instead of the local model.
    #[arg(long, env = "VOXD_EMBED_URL", global = true)]
    pub embed_url: Option<String>,
    /// API key for --embed-url.
    #[arg(
        long,
        env = "VOXD_EMBED_API_KEY",
        hide_env_values = true,
        global = true
    )]
    pub embed_api_key: Option<String>,
    /// Vector length to request from --embed-url [default: the model's].
    #[arg(long, env = "VOXD_EMBED_DIMENSIONS", global = true)]
    pub embed_dimensions: Option<usize>,
    /// Threads running the local embedding model [default: 1].
    #[arg(long, env = "VOXD_EMBED_WORKERS", global = true)]
    pub embed_workers: Option<usize>,
    /// Relevance floor: passages less similar (cosine) to the question are not used [default: 0.3].
    #[arg(long, env = "VOXD_KB_MIN_SCORE", global = true)]
    pub kb_min_score: Option<f32>,
    /// Passages retrieved per question [default: 3].
    #[arg(long, env = "VOXD_KB_TOP_K", global = true)]
    pub kb_top_k: Option<usize>,
    /// Largest document accepted, in MiB [default: 5].
    #[arg(long, env = "VOXD_KB_MAX_DOCUMENT_MB", global = true)]
    pub kb_max_document_mb: Option<u64>,
    /// Largest knowledge-base database, in MiB; a document that would grow it beyond is refused
    /// (507 `kb_full`) [default: no limit].
    #[arg(long, env = "VOXD_KB_MAX_MB", global = true)]
    pub kb_max_mb: Option<u64>,
}

/// The file's `[kb]` table.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileKb {
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

impl KbConfig {
    /// Flags over the file over the defaults, validated; the file lives under `home` unless
    /// named.
    pub fn resolve(args: &KbArgs, file: FileKb, home: &Path) -> Result<Self, ConfigError> {
        let embed_workers = in_range(
            "embed_workers",
            args.embed_workers.or(file.embed_workers).unwrap_or(1),
            1..=64,
        )?;
        let min_score = args.kb_min_score.or(file.min_score).unwrap_or(0.3);
        if !(-1.0..=1.0).contains(&min_score) {
            return Err(ConfigError::invalid(
                "kb_min_score",
                format!("{min_score} is outside -1..=1 (cosine similarity)"),
            ));
        }
        let top_k = in_range(
            "kb_top_k",
            args.kb_top_k.or(file.top_k).unwrap_or(3),
            1..=super::search::MAX_TOP_K,
        )?;
        let max_doc_mb = in_range(
            "kb_max_document_mb",
            args.kb_max_document_mb
                .or(file.max_document_mb)
                .unwrap_or(5),
            1..=1024,
        )?;
        let max_kb_mb = args
            .kb_max_mb
            .or(file.max_mb)
            .map(|m| in_range("kb_max_mb", m, 1..=1_048_576))
            .transpose()?;
        let embed_url = non_empty(args.embed_url.clone().or(file.embed_url));
        let embed_model = args.embed_model.clone().or(file.embed_model);
        if embed_url.is_some() && embed_model.is_none() {
            return Err(ConfigError::invalid(
                "embed_model",
                "--embed-url needs --embed-model, the remote model's name",
            ));
        }
        let url = non_empty(args.kb_url.clone().or(file.url));
        if let Some(u) = &url {
            if !(u.starts_with("postgres://") || u.starts_with("postgresql://")) {
                return Err(ConfigError::invalid(
                    "kb_url",
                    "expected postgres://USER@HOST:PORT/DB",
                ));
            }
        }
        Ok(KbConfig {
            url,
            path: args
                .kb_path
                .clone()
                .or(file.path)
                .unwrap_or_else(|| home.join("kb.sqlite")),
            embed_model,
            embed_url,
            embed_api_key: non_empty(args.embed_api_key.clone().or(file.embed_api_key)),
            embed_dimensions: args.embed_dimensions.or(file.embed_dimensions),
            embed_workers,
            min_score,
            top_k,
            max_document_bytes: (max_doc_mb as usize) << 20,
            max_bytes: max_kb_mb.map(|m| m << 20),
        })
    }
}
