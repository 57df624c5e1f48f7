//! Opening the knowledge base the configuration describes: the store file and the embedder
//! (local model from the model cache or a user's folder, or a remote endpoint).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::embed::{EmbedError, Embedder, LocalEmbedder, RemoteEmbedder, RemoteEmbedderConfig};
use super::store::{PgStore, SqliteStore, Store};
use super::KbConfig;
use super::{KbError, KbSettings, KnowledgeBase};
use crate::models::{ModelStore, Role};

/// The embedder the configuration names.
pub async fn embedder(cfg: &KbConfig, models: &ModelStore) -> Result<Arc<dyn Embedder>, KbError> {
    if let Some(url) = &cfg.embed_url {
        let remote = RemoteEmbedder::connect(RemoteEmbedderConfig {
            base_url: url.clone(),
            api_key: cfg.embed_api_key.clone(),
            model: cfg.embed_model.clone().unwrap_or_default(),
            dimensions: cfg.embed_dimensions,
            max_tokens: 512,
            timeout: Duration::from_secs(30),
        })
        .await?;
        return Ok(Arc::new(remote));
    }
    let value = cfg.embed_model.as_deref();
    let path = models
        .resolve(Role::Embeddings, value)
        .map_err(|e| EmbedError::Load {
            path: PathBuf::from(value.unwrap_or("<default embedding model>")),
            reason: e.to_string(),
        })?;
    let dir = if path.is_dir() {
        path
    } else {
        path.parent().map(|p| p.to_path_buf()).unwrap_or_default()
    };
    let name = models.display_name(Role::Embeddings, value, &dir);
    let workers = cfg.embed_workers;
    let local = tokio::task::spawn_blocking(move || LocalEmbedder::load(&dir, &name, workers))
        .await
        .map_err(|e| KbError::Internal(e.to_string()))??;
    Ok(Arc::new(local))
}

/// Opens the store the configuration names: the PostgreSQL database at `url` (migrated), else
/// the SQLite file at `path`.
pub async fn store(cfg: &KbConfig) -> Result<Arc<dyn Store>, KbError> {
    let (path, max_bytes, url) = (cfg.path.clone(), cfg.max_bytes, cfg.url.clone());
    tokio::task::spawn_blocking(move || -> Result<Arc<dyn Store>, KbError> {
        Ok(match url {
            Some(url) => {
                if max_bytes.is_some() {
                    tracing::warn!("--kb-max-mb applies to the SQLite file only; PostgreSQL's size is the database's to limit");
                }
                Arc::new(PgStore::open(&url)?)
            }
            None => Arc::new(SqliteStore::open_limited(&path, max_bytes)?),
        })
    })
    .await
    .map_err(|e| KbError::Internal(e.to_string()))?
}

/// Opens the store and the embedder.
pub async fn open(cfg: &KbConfig, models: &ModelStore) -> Result<KnowledgeBase, KbError> {
    let embedder = embedder(cfg, models).await?;
    let store = store(cfg).await?;
    tracing::info!(store = %store.describe(), model = embedder.model_name(), "knowledge base open");
    Ok(KnowledgeBase::new(
        store,
        embedder,
        KbSettings {
            min_score: cfg.min_score,
            default_top_k: cfg.top_k,
            max_document_bytes: cfg.max_document_bytes,
        },
    ))
}
