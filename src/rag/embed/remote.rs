//! Embeddings from any OpenAI-compatible `/v1/embeddings` endpoint (OpenAI, vLLM, Ollama, another
//! voxd), through async-openai.

use std::time::Duration;

use async_openai::config::OpenAIConfig;
use async_openai::types::embeddings::{CreateEmbeddingRequest, EmbeddingInput};
use async_openai::Client;
use futures::future::BoxFuture;

use super::{EmbedError, Embedder};

/// Inputs per request; larger batches are split.
const BATCH: usize = 64;

/// Where and how to reach the endpoint.
#[derive(Debug, Clone)]
pub struct RemoteEmbedderConfig {
    /// Base URL including the version prefix, e.g. `http://127.0.0.1:11434/v1`.
    pub base_url: String,
    pub api_key: Option<String>,
    /// Model name sent with each request (and stored beside every vector).
    pub model: String,
    /// Requested vector length (`text-embedding-3-*` accept it); `None` = the model's own,
    /// found with one probe request at start.
    pub dimensions: Option<usize>,
    /// Longest input the model reads, in tokens, for chunking.
    pub max_tokens: usize,
    /// Limit for one request, connection included.
    pub timeout: Duration,
}

/// An [`Embedder`] backed by an HTTP endpoint.
pub struct RemoteEmbedder {
    client: Client<OpenAIConfig>,
    config: RemoteEmbedderConfig,
    dim: usize,
}

impl RemoteEmbedder {
    /// Builds the client and, unless `dimensions` is set, asks the endpoint once for a vector to
    /// learn its length (which also proves the endpoint answers).
    pub async fn connect(config: RemoteEmbedderConfig) -> Result<Self, EmbedError> {
        let client = crate::openai_http::client(
            &config.base_url,
            config.api_key.as_deref(),
            config.timeout.min(Duration::from_secs(10)),
            Some(config.timeout),
        )
        .map_err(|e| EmbedError::Remote {
            url: config.base_url.clone(),
            reason: e.to_string(),
        })?;
        let mut me = RemoteEmbedder {
            client,
            dim: config.dimensions.unwrap_or(0),
            config,
        };
        if me.dim == 0 {
            let probe = me.request(vec!["dimension probe".into()]).await?;
            me.dim = probe.first().map(|v| v.len()).unwrap_or(0);
            if me.dim == 0 {
                return Err(EmbedError::Remote {
                    url: me.config.base_url.clone(),
                    reason: "returned an empty vector".into(),
                });
            }
        }
        tracing::info!(url = %me.config.base_url, model = %me.config.model, dims = me.dim, "remote embedder ready");
        Ok(me)
    }

    async fn request(&self, texts: Vec<String>) -> Result<Vec<Vec<f32>>, EmbedError> {
        let want = texts.len();
        let request = CreateEmbeddingRequest {
            model: self.config.model.clone(),
            input: EmbeddingInput::StringArray(texts),
            encoding_format: None,
            user: None,
            dimensions: self.config.dimensions.map(|d| d as u32),
        };
        let response = self
            .client
            .embeddings()
            .create(request)
            .await
            .map_err(|e| EmbedError::Remote {
                url: self.config.base_url.clone(),
                reason: e.to_string(),
            })?;
        let mut data = response.data;
        data.sort_by_key(|e| e.index);
        let expected = if self.dim == 0 {
            data.first().map(|e| e.embedding.len()).unwrap_or(0)
        } else {
            self.dim
        };
        let bad_dim = data.iter().find(|e| e.embedding.len() != expected);
        if data.len() != want || bad_dim.is_some() || expected == 0 {
            return Err(EmbedError::Shape {
                want,
                got: data.len(),
                dim: bad_dim.map(|e| e.embedding.len()).unwrap_or(expected),
                expected,
            });
        }
        Ok(data
            .into_iter()
            .map(|e| {
                let mut v = e.embedding;
                super::normalize(&mut v);
                v
            })
            .collect())
    }
}

impl Embedder for RemoteEmbedder {
    fn embed(&self, texts: Vec<String>) -> BoxFuture<'_, Result<Vec<Vec<f32>>, EmbedError>> {
        Box::pin(async move {
            let mut out = Vec::with_capacity(texts.len());
            for batch in texts.chunks(BATCH) {
                out.extend(self.request(batch.to_vec()).await?);
            }
            Ok(out)
        })
    }

    fn model_name(&self) -> &str {
        &self.config.model
    }

    fn dimensions(&self) -> usize {
        self.dim
    }

    fn max_tokens(&self) -> usize {
        self.config.max_tokens
    }
}
