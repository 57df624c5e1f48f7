//! Opening the language model a configuration names: the embedded GGUF model (from the model
//! cache or a user's path) or a remote OpenAI-compatible endpoint.

use std::sync::Arc;
use std::time::Duration;

use super::LlmConfig;
use super::{Llm, LlmError, LocalLlm, LocalLlmConfig, RemoteLlm, RemoteLlmConfig};
use crate::models::{ModelStore, Role};

/// Loads (or connects to) the configured model.
pub async fn open(cfg: &LlmConfig, models: &ModelStore) -> Result<Arc<dyn Llm>, LlmError> {
    if let Some(url) = &cfg.url {
        let first = Duration::from_millis(cfg.first_token_timeout_ms);
        let remote = RemoteLlm::new(RemoteLlmConfig {
            api_key: cfg.api_key.clone(),
            connect_timeout: first.min(Duration::from_secs(5)),
            first_token_timeout: first,
            total_timeout: first * 6,
            retries: cfg.retries,
            ..RemoteLlmConfig::new(url.clone(), cfg.model.clone().unwrap_or_default())
        })?;
        tracing::info!(url = %url, model = remote.model_name(), "remote language model configured");
        return Ok(Arc::new(remote));
    }
    let value = cfg.model.as_deref();
    let path = models
        .resolve(Role::Llm, value)
        .map_err(|e| LlmError::Load {
            path: value.unwrap_or("<default language model>").to_string(),
            reason: e.to_string(),
        })?;
    let name = models.display_name(Role::Llm, value, &path);
    let local = tokio::task::spawn_blocking(move || {
        LocalLlm::load(LocalLlmConfig {
            path,
            name,
            cache_entries: 16,
        })
    })
    .await
    .map_err(|e| LlmError::Compute(e.to_string()))??;
    Ok(Arc::new(local))
}
