//! The embedded embedder: [`MiniLm`] on a small pool of worker threads.

use std::path::Path;
use std::sync::Arc;

use futures::future::BoxFuture;

use super::{EmbedError, Embedder, MiniLm};
use crate::workers::WorkerPool;

/// Jobs that may wait for a worker before new ones are refused as busy.
const QUEUE: usize = 256;

/// all-MiniLM-L6-v2 (or any BERT sentence-embedding model in the same layout) served from
/// dedicated threads.
pub struct LocalEmbedder {
    model: Arc<MiniLm>,
    pool: WorkerPool<Arc<MiniLm>>,
    name: String,
}

impl LocalEmbedder {
    /// Loads the model from `dir` and starts `workers` threads that share it.
    pub fn load(dir: &Path, name: &str, workers: usize) -> Result<Self, EmbedError> {
        let model = Arc::new(MiniLm::load(dir)?);
        let pool = WorkerPool::start(
            "embed",
            (0..workers.max(1)).map(|_| model.clone()).collect(),
            QUEUE,
        );
        crate::metrics::model_memory("embeddings", model.weight_bytes() as u64);
        tracing::info!(model = name, dir = %dir.display(), dims = model.dimensions(), "embedding model loaded");
        Ok(LocalEmbedder {
            model,
            pool,
            name: name.to_string(),
        })
    }

    /// Embeds on the calling thread (for tools and benchmarks that are not async).
    pub fn embed_here(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, EmbedError> {
        self.model.embed(texts)
    }
}

impl Embedder for LocalEmbedder {
    fn embed(&self, texts: Vec<String>) -> BoxFuture<'_, Result<Vec<Vec<f32>>, EmbedError>> {
        Box::pin(async move {
            if texts.is_empty() {
                return Ok(Vec::new());
            }
            self.pool.run(move |model| model.embed(&texts)).await?
        })
    }

    fn model_name(&self) -> &str {
        &self.name
    }

    fn dimensions(&self) -> usize {
        self.model.dimensions()
    }

    fn count_tokens(&self, text: &str) -> usize {
        self.model.count_tokens(text)
    }

    fn max_tokens(&self) -> usize {
        super::minilm::MAX_TOKENS
    }
}
