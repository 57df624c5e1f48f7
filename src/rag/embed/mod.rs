//! Text embeddings: the [`Embedder`] trait and its two implementations, the embedded
//! all-MiniLM-L6-v2 run with candle ([`local::LocalEmbedder`]) and any OpenAI-compatible
//! `/v1/embeddings` endpoint ([`remote::RemoteEmbedder`]).
//!
//! Vectors are L2-normalised, so cosine similarity is a dot product.

pub mod bert8;
pub mod local;
pub mod minilm;
pub mod remote;

use futures::future::BoxFuture;

use crate::workers::PoolError;

pub use local::LocalEmbedder;
pub use minilm::MiniLm;
pub use remote::{RemoteEmbedder, RemoteEmbedderConfig};

/// Errors of the embedding stage.
#[derive(Debug, thiserror::Error)]
pub enum EmbedError {
    #[error("could not load the embedding model from {path}: {reason}")]
    Load {
        path: std::path::PathBuf,
        reason: String,
    },
    #[error(transparent)]
    Pool(#[from] PoolError),
    #[error("embedding failed: {0}")]
    Compute(String),
    #[error("the embeddings endpoint {url} failed: {reason}")]
    Remote { url: String, reason: String },
    #[error("the embeddings endpoint returned {got} vectors of dimension {dim} for {want} inputs (expected dimension {expected})")]
    Shape {
        want: usize,
        got: usize,
        dim: usize,
        expected: usize,
    },
}

/// Turns texts into unit-length vectors.
pub trait Embedder: Send + Sync {
    /// Embeds each text; the result has one vector of [`Embedder::dimensions`] per input, in order.
    fn embed(&self, texts: Vec<String>) -> BoxFuture<'_, Result<Vec<Vec<f32>>, EmbedError>>;
    /// The model's name, stored beside every vector so a change of model is detected.
    fn model_name(&self) -> &str;
    /// Length of every vector.
    fn dimensions(&self) -> usize;
    /// How many tokens the model reads from `text` (an estimate for remote models). Chunking
    /// uses it to keep passages within [`Embedder::max_tokens`].
    fn count_tokens(&self, text: &str) -> usize {
        estimate_tokens(text)
    }
    /// The longest input the model reads; the rest of a longer text is ignored.
    fn max_tokens(&self) -> usize;
}

/// A rough token count for English text when the model's tokenizer is not at hand:
/// about 1.3 tokens per word, plus punctuation.
pub fn estimate_tokens(text: &str) -> usize {
    let words = text.split_whitespace().count();
    let punct = text.chars().filter(|c| c.is_ascii_punctuation()).count();
    (words * 13).div_ceil(10) + punct / 2
}

/// Scales `v` to unit length (leaves an all-zero vector alone).
pub fn normalize(v: &mut [f32]) {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        v.iter_mut().for_each(|x| *x /= norm);
    }
}

/// The dot product of two equally long vectors (cosine similarity for unit vectors).
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    // Eight independent accumulators let the compiler vectorise the loop.
    let mut acc = [0f32; 8];
    let chunks_a = a.chunks_exact(8);
    let chunks_b = b.chunks_exact(8);
    let tail: f32 = chunks_a
        .remainder()
        .iter()
        .zip(chunks_b.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (ca, cb) in chunks_a.zip(chunks_b) {
        for i in 0..8 {
            acc[i] += ca[i] * cb[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_matches_the_naive_sum_for_any_length() {
        for n in [0, 1, 7, 8, 9, 384, 385] {
            let a: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin()).collect();
            let b: Vec<f32> = (0..n).map(|i| (i as f32 * 0.11).cos()).collect();
            let naive: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
            assert!((dot(&a, &b) - naive).abs() < 1e-4, "n={n}");
        }
    }

    #[test]
    fn normalize_gives_unit_length() {
        let mut v = vec![3.0, 4.0];
        normalize(&mut v);
        assert!((dot(&v, &v) - 1.0).abs() < 1e-6);
        let mut z = vec![0.0; 3];
        normalize(&mut z);
        assert_eq!(z, vec![0.0; 3]);
    }
}
