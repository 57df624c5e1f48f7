//! Retrieval-augmented generation: the knowledge base that grounds spoken answers.
//!
//! - [`embed`]: the [`embed::Embedder`] trait: all-MiniLM-L6-v2 in-process (candle) or a remote
//!   OpenAI-compatible `/v1/embeddings` endpoint.
//! - [`store`]: the [`store::Store`] trait and its SQLite implementation (documents, chunks,
//!   vectors, FTS5 keyword index, migrations).
//! - [`extract`]: files (txt, md, html) to text, with front matter.
//! - [`chunk`]: heading- and paragraph-aware chunking with character spans.
//! - [`index`]: the in-memory exact vector index and document eligibility (expiry, versions,
//!   filters).
//! - [`search`]: hybrid retrieval (cosine + BM25, reciprocal rank fusion, relevance floor).
//! - [`vocabulary`]: the documents' names and rare words, which live sessions listen for.
//! - [`open`]: opening the store and embedder a configuration names.
//! - [`kb`]: [`KnowledgeBase`], which ties them together for the CLI, the REST API and the
//!   realtime session.

pub mod chunk;
pub mod config;
pub mod embed;
pub mod extract;
pub mod index;
pub mod kb;
pub mod open;
pub mod search;
pub mod store;
pub mod vocabulary;

pub use config::{KbArgs, KbConfig};
pub use kb::{AddOutcome, DocumentInput, KbSettings, KnowledgeBase};
pub use search::{Citation, Filter, Passage, SearchRequest, SearchResults};

use embed::EmbedError;
use store::StoreError;

/// Errors of the knowledge base. [`KbError::code`] gives the stable code clients see.
#[derive(Debug, thiserror::Error)]
pub enum KbError {
    /// The request is wrong (HTTP 400).
    #[error("{message}")]
    Invalid { code: &'static str, message: String },
    #[error("no document with id {0}")]
    NotFound(String),
    #[error("the document is {size} bytes; the limit is {limit}")]
    TooLarge { size: usize, limit: usize },
    #[error("the knowledge base was indexed with {stored} but the configured embedding model is {configured}; run `voxd kb reindex`")]
    ReindexRequired { stored: String, configured: String },
    #[error(transparent)]
    Embed(#[from] EmbedError),
    #[error(transparent)]
    Store(StoreError),
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("a knowledge-base task failed: {0}")]
    Internal(String),
}

impl From<StoreError> for KbError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::ModelMismatch { stored, configured } => {
                KbError::ReindexRequired { stored, configured }
            }
            other => KbError::Store(other),
        }
    }
}

impl KbError {
    /// What a client is told: the error without upstream URLs, upstream bodies, paths or
    /// database detail (those go to the server log).
    pub fn public_message(&self) -> String {
        match self {
            KbError::Invalid { .. }
            | KbError::NotFound(_)
            | KbError::TooLarge { .. }
            | KbError::ReindexRequired { .. } => self.to_string(),
            KbError::Embed(EmbedError::Pool(crate::workers::PoolError::Busy { .. })) => {
                "the embedding model is busy; try again shortly".into()
            }
            KbError::Embed(EmbedError::Remote { .. }) => {
                "the embedding service failed or is unreachable".into()
            }
            KbError::Embed(_) => "the embedding model failed on this request".into(),
            KbError::Store(StoreError::Full { .. }) => {
                "the knowledge base is full: delete documents or raise --kb-max-mb".into()
            }
            KbError::Store(StoreError::Unavailable { .. }) => {
                "the knowledge base's database is unreachable; try again shortly".into()
            }
            KbError::Store(_) | KbError::Io { .. } | KbError::Internal(_) => {
                "the knowledge base failed on this request (the server logged the detail)".into()
            }
        }
    }

    pub(crate) fn invalid(code: &'static str, message: impl Into<String>) -> Self {
        KbError::Invalid {
            code,
            message: message.into(),
        }
    }

    /// The machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            KbError::Invalid { code, .. } => code,
            KbError::NotFound(_) => "document_not_found",
            KbError::TooLarge { .. } => "document_too_large",
            KbError::ReindexRequired { .. } => "reindex_required",
            KbError::Embed(EmbedError::Pool(_)) => "server_busy",
            KbError::Embed(_) => "embedding_failed",
            KbError::Store(StoreError::Full { .. }) => "kb_full",
            KbError::Store(_) | KbError::Io { .. } | KbError::Internal(_) => "kb_unavailable",
        }
    }
}
