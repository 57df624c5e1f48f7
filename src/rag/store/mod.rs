//! Where the knowledge base lives: the [`Store`] trait and its two implementations, the embedded
//! SQLite file ([`sqlite::SqliteStore`], an exact in-memory vector scan and FTS5) and a shared
//! PostgreSQL database ([`postgres::PgStore`], a pgvector HNSW index and Postgres full text), which
//! several voxd replicas can use at once.
//!
//! The store keeps documents (with their full text, so passages can be cited and re-embedded),
//! their chunks, one vector per chunk tagged with the embedding model, and a keyword index over
//! chunk text. Every write is one transaction: readers see the previous version of a document
//! or the new one, never a mix. Both stores apply the same eligibility (newest version of a
//! source, expiry, filters); the fusion of the two rankings and the relevance floor are the
//! knowledge base's, so both stores answer alike.

pub mod pg_tls;
pub mod pool;
pub mod postgres;
pub mod sqlite;

use serde::Serialize;

pub use postgres::PgStore;
pub use sqlite::SqliteStore;

pub use super::index::Eligibility;

/// Errors of the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("knowledge base {path}: {message}")]
    Postgres {
        /// The database, without its password.
        path: String,
        /// The database's own message (the error's Display alone says only "db error").
        message: String,
        #[source]
        source: ::postgres::Error,
    },
    #[error("the knowledge-base database {path} is unreachable: {reason}")]
    Unavailable { path: String, reason: String },
    #[error("invalid knowledge-base URL: {0}")]
    InvalidUrl(String),
    #[error("knowledge base {path}: {source}")]
    Sqlite {
        path: String,
        #[source]
        source: rusqlite::Error,
    },
    #[error("the knowledge base {path} is full (its size limit, or the disk)")]
    Full { path: String },
    #[error("could not create {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the knowledge base was indexed with embedding model {stored}, not {configured}; run `voxd kb reindex` to re-embed it with the configured model")]
    ModelMismatch { stored: String, configured: String },
    #[error("the knowledge base {path} was written by a newer voxd (schema {found}, this one knows {known})")]
    TooNew {
        path: String,
        found: i64,
        known: i64,
    },
}

/// The embedding model a vector was made with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EmbeddingModel {
    pub name: String,
    pub dimensions: usize,
}

impl std::fmt::Display for EmbeddingModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({} dimensions)", self.name, self.dimensions)
    }
}

/// A document to write.
#[derive(Debug, Clone)]
pub struct NewDocument {
    /// What identifies this document when it is added again (its path or URI, else its title).
    pub key: String,
    /// The logical source it is a version of; of several documents with one source only the
    /// newest (`version_at`) is searched.
    pub source: String,
    pub title: String,
    pub uri: Option<String>,
    pub content: String,
    /// SHA-256 of `content` and the metadata that affect search.
    pub content_hash: String,
    /// When this version took effect (Unix seconds).
    pub version_at: i64,
    pub expires_at: Option<i64>,
    pub metadata: serde_json::Value,
}

/// A chunk to write: a span of its document's content.
#[derive(Debug, Clone)]
pub struct NewChunk {
    pub heading: String,
    pub text: String,
    /// Span in the document's content, in characters (Unicode scalar values).
    pub char_start: usize,
    pub char_end: usize,
}

/// A stored document.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct DocumentInfo {
    pub id: String,
    pub key: String,
    pub source: String,
    pub title: String,
    pub uri: Option<String>,
    pub content_hash: String,
    pub version_at: i64,
    pub created_at: i64,
    pub updated_at: i64,
    pub expires_at: Option<i64>,
    pub metadata: serde_json::Value,
    pub chunks: usize,
    pub chars: usize,
}

/// What a write did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum WriteOutcome {
    Created,
    Updated,
    Unchanged,
}

/// A stored chunk, with what a citation needs of its document.
#[derive(Debug, Clone, Serialize)]
pub struct ChunkRecord {
    pub chunk_id: i64,
    pub document_id: String,
    pub position: usize,
    pub heading: String,
    pub text: String,
    pub char_start: usize,
    pub char_end: usize,
    pub title: String,
    pub uri: Option<String>,
    pub source: String,
}

/// What a search asks of the store.
#[derive(Debug, Clone)]
pub struct Probe<'a> {
    /// The question's vector, made by `model`.
    pub vector: &'a [f32],
    pub model: &'a EmbeddingModel,
    /// The question's distinctive words (lowercase letters and digits), any of which may match.
    pub words: &'a [String],
    /// How deep each ranking goes.
    pub depth: usize,
    pub eligibility: &'a Eligibility,
}

/// The two rankings of a search, each `(chunk id, cosine similarity to the question)`, best
/// first, over eligible documents only.
#[derive(Debug, Clone, Default)]
pub struct Candidates {
    pub by_vector: Vec<(i64, f32)>,
    pub by_keyword: Vec<(i64, f32)>,
}

/// What the vector index needs about a document.
#[derive(Debug, Clone)]
pub struct DocMeta {
    pub id: String,
    pub source: String,
    pub title: String,
    pub uri: Option<String>,
    pub version_at: i64,
    pub expires_at: Option<i64>,
}

/// Every vector, contiguous, with the chunk and document each belongs to.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// The store's revision when this was read.
    pub revision: i64,
    pub model: Option<EmbeddingModel>,
    pub docs: Vec<DocMeta>,
    pub chunk_ids: Vec<i64>,
    /// Index into `docs` for each chunk.
    pub chunk_doc: Vec<u32>,
    /// `chunk_ids.len() × dimensions` floats.
    pub vectors: Vec<f32>,
}

/// A chunk's text for re-embedding.
#[derive(Debug, Clone)]
pub struct ChunkForEmbedding {
    pub chunk_id: i64,
    pub title: String,
    pub heading: String,
    pub text: String,
}

/// Storage for documents, chunks, vectors and the keyword index. Methods block: call them from
/// a blocking thread.
pub trait Store: Send + Sync {
    /// Where it is (a file, or a database without its password), for logs and errors.
    fn describe(&self) -> String;
    /// Checks that the store can be reached now (for `/readyz`).
    fn ping(&self) -> Result<(), StoreError>;
    /// The model the stored vectors were made with (`None` while empty).
    fn embedding_model(&self) -> Result<Option<EmbeddingModel>, StoreError>;
    /// A number that changes whenever anything is written (by any process).
    fn revision(&self) -> Result<i64, StoreError>;
    /// Writes a document with its chunks and their vectors in one transaction, replacing the
    /// document with the same key. A document whose key and hash are unchanged is left alone.
    fn upsert(
        &self,
        doc: &NewDocument,
        chunks: &[NewChunk],
        vectors: &[Vec<f32>],
        model: &EmbeddingModel,
    ) -> Result<(WriteOutcome, DocumentInfo), StoreError>;
    /// The document stored under `key`.
    fn find_by_key(&self, key: &str) -> Result<Option<DocumentInfo>, StoreError>;
    fn get(&self, id: &str) -> Result<Option<DocumentInfo>, StoreError>;
    fn list(&self) -> Result<Vec<DocumentInfo>, StoreError>;
    /// Removes a document and everything derived from it; false if there was none.
    fn remove(&self, id: &str) -> Result<bool, StoreError>;
    /// Number of chunks with vectors (0: nothing to ground answers in).
    fn chunk_count(&self) -> Result<usize, StoreError>;
    /// The vector and keyword rankings for a question. Fails with
    /// [`StoreError::ModelMismatch`] when the stored vectors were made by another model.
    fn candidates(&self, probe: &Probe<'_>) -> Result<Candidates, StoreError>;
    /// The chunks with these ids (any order; ids no longer stored are left out).
    fn chunks(&self, ids: &[i64]) -> Result<Vec<ChunkRecord>, StoreError>;
    /// Every chunk, for re-embedding.
    fn chunks_for_embedding(&self) -> Result<Vec<ChunkForEmbedding>, StoreError>;
    /// Replaces every vector (one transaction) and records the new model.
    fn replace_embeddings(
        &self,
        model: &EmbeddingModel,
        vectors: &[(i64, Vec<f32>)],
    ) -> Result<(), StoreError>;
}
