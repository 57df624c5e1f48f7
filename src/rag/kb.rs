//! [`KnowledgeBase`]: add, list, remove, search and re-index documents. Embedding runs on the
//! embedder's workers, SQLite work on blocking threads; nothing here blocks the async executor.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::Serialize;
use sha2::{Digest, Sha256};

use super::chunk::{chunk, ChunkParams};
use super::embed::Embedder;
use super::extract::{self, Format};
use super::index::Eligibility;
use super::search::{self, Citation, Passage, SearchRequest, SearchResults};
use super::store::{
    DocumentInfo, EmbeddingModel, NewChunk, NewDocument, Probe, Store, StoreError, WriteOutcome,
};
use super::KbError;

/// Knowledge-base settings.
#[derive(Debug, Clone)]
pub struct KbSettings {
    /// Passages whose cosine similarity to the question is below this are not used; when none
    /// passes, the search is "not grounded".
    pub min_score: f32,
    /// Passages returned when a search does not say.
    pub default_top_k: usize,
    /// Largest document accepted, in bytes of text.
    pub max_document_bytes: usize,
}

impl Default for KbSettings {
    fn default() -> Self {
        KbSettings {
            min_score: 0.30,
            default_top_k: 3,
            max_document_bytes: 5 << 20,
        }
    }
}

/// A document to add: its text (already extracted) and what is known about it.
#[derive(Debug, Clone)]
pub struct DocumentInput {
    pub text: String,
    pub format: Format,
    pub title: Option<String>,
    pub uri: Option<String>,
    /// Logical source (versions of one source supersede each other); default: the key.
    pub source: Option<String>,
    /// Identity for re-adding; default: the URI, else the title.
    pub key: Option<String>,
    /// When this version took effect (Unix seconds); default: now.
    pub version_at: Option<i64>,
    pub expires_at: Option<i64>,
    pub metadata: serde_json::Map<String, serde_json::Value>,
}

impl DocumentInput {
    /// A plain-text document with a title.
    pub fn text(title: impl Into<String>, text: impl Into<String>) -> Self {
        DocumentInput {
            text: text.into(),
            format: Format::Text,
            title: Some(title.into()),
            uri: None,
            source: None,
            key: None,
            version_at: None,
            expires_at: None,
            metadata: Default::default(),
        }
    }
}

/// What adding a document did.
#[derive(Debug, Clone, Serialize)]
pub struct AddOutcome {
    pub status: WriteOutcome,
    pub document: DocumentInfo,
}

/// The knowledge base: a store and an embedder.
pub struct KnowledgeBase {
    store: Arc<dyn Store>,
    embedder: Arc<dyn Embedder>,
    settings: KbSettings,
    /// Why the store last failed to answer (`None`: it answered), for `/readyz`.
    health: Arc<Mutex<Option<String>>>,
    /// The vocabulary of the documents, with the store revision it was read at and when that
    /// revision was last checked.
    vocabulary: Arc<tokio::sync::Mutex<Option<CachedVocabulary>>>,
}

struct CachedVocabulary {
    revision: i64,
    checked: Instant,
    terms: Arc<[String]>,
}

/// How long the vocabulary is used before the store's revision is checked again.
const VOCABULARY_CHECK: std::time::Duration = std::time::Duration::from_secs(2);

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// The text embedded for a chunk: its document title and heading path, then the chunk.
pub fn embedding_text(title: &str, heading: &str, text: &str) -> String {
    if heading.is_empty() || heading == title {
        format!("{title}\n{text}")
    } else {
        format!("{title} › {heading}\n{text}")
    }
}

fn input_is_markdown(format: Format) -> bool {
    format != Format::Text
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, KbError> + Send + 'static,
) -> Result<T, KbError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| KbError::Internal(e.to_string()))?
}

impl KnowledgeBase {
    pub fn new(store: Arc<dyn Store>, embedder: Arc<dyn Embedder>, settings: KbSettings) -> Self {
        KnowledgeBase {
            store,
            embedder,
            settings,
            health: Arc::new(Mutex::new(None)),
            vocabulary: Arc::new(tokio::sync::Mutex::new(None)),
        }
    }

    /// Where the documents are stored (a file, or a database without its password).
    pub fn describe_store(&self) -> String {
        self.store.describe()
    }

    /// `Err(reason)` when the store could not be reached on its last use or check.
    pub fn health(&self) -> Result<(), String> {
        match &*self.health.lock().unwrap_or_else(|p| p.into_inner()) {
            None => Ok(()),
            Some(reason) => Err(reason.clone()),
        }
    }

    /// Checks that the store answers now, and records the outcome for [`KnowledgeBase::health`].
    pub async fn check_health(&self) -> Result<(), KbError> {
        let store = self.store.clone();
        self.store_call(move || store.ping()).await
    }

    /// Runs a store method on a blocking thread, recording whether the store could be reached.
    async fn store_call<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, KbError> {
        let health = self.health.clone();
        blocking(move || {
            let out = f();
            let down = match &out {
                Err(e @ StoreError::Unavailable { .. }) => {
                    Some(format!("the knowledge base is unavailable: {e}"))
                }
                _ => None,
            };
            *health.lock().unwrap_or_else(|p| p.into_inner()) = down;
            Ok(out?)
        })
        .await
    }

    pub fn settings(&self) -> &KbSettings {
        &self.settings
    }

    pub fn embedder(&self) -> &Arc<dyn Embedder> {
        &self.embedder
    }

    /// The configured embedding model.
    pub fn model(&self) -> EmbeddingModel {
        EmbeddingModel {
            name: self.embedder.model_name().to_string(),
            dimensions: self.embedder.dimensions(),
        }
    }

    /// Fails with `reindex_required` when the stored vectors were made by another model.
    pub async fn check_model(&self) -> Result<(), KbError> {
        let store = self.store.clone();
        let stored = self.store_call(move || store.embedding_model()).await?;
        match stored {
            Some(s) if s != self.model() => Err(KbError::ReindexRequired {
                stored: s.to_string(),
                configured: self.model().to_string(),
            }),
            _ => Ok(()),
        }
    }

    /// Adds (or replaces, or leaves alone if unchanged) a document.
    pub async fn add(&self, input: DocumentInput) -> Result<AddOutcome, KbError> {
        let t0 = Instant::now();
        if input.text.len() > self.settings.max_document_bytes {
            return Err(KbError::TooLarge {
                size: input.text.len(),
                limit: self.settings.max_document_bytes,
            });
        }
        // A NUL character becomes a space (neither store keeps it well: SQLite's length() stops
        // at it, PostgreSQL's text refuses it), which keeps every character offset.
        let text = input.text.trim_end().replace('\0', " ");
        if text.trim().is_empty() {
            return Err(KbError::invalid(
                "empty_document",
                "the document has no text",
            ));
        }
        let title = title_of(input.title.as_deref(), &text)?;
        let key = input
            .key
            .clone()
            .or_else(|| input.uri.clone())
            .unwrap_or_else(|| format!("title:{title}"));
        let source = input.source.clone().unwrap_or_else(|| key.clone());
        let version_at = input.version_at.unwrap_or_else(now);
        let metadata = serde_json::Value::Object(input.metadata.clone());
        let content_hash = content_hash(&[
            title.as_str(),
            &source,
            input.uri.as_deref().unwrap_or(""),
            &input.version_at.map(|v| v.to_string()).unwrap_or_default(),
            &input.expires_at.map(|v| v.to_string()).unwrap_or_default(),
            &metadata.to_string(),
            &text,
        ]);
        let input_format = input.format;
        self.check_model().await?;

        // Unchanged: nothing to embed.
        let store = self.store.clone();
        let key2 = key.clone();
        if let Some(existing) = self.store_call(move || store.find_by_key(&key2)).await? {
            if existing.content_hash == content_hash {
                return Ok(AddOutcome {
                    status: WriteOutcome::Unchanged,
                    document: existing,
                });
            }
        }

        // Chunking counts tokens over the whole document: CPU work, off the async executor.
        let embedder = self.embedder.clone();
        let chunk_title = title.clone();
        let (text, chunks) = blocking(move || {
            let reserve = 2 + embedder.count_tokens(&chunk_title) + 24;
            let params = ChunkParams::for_model(embedder.max_tokens(), reserve);
            let markdown = input_is_markdown(input_format);
            let count = |s: &str| embedder.count_tokens(s);
            let spans = chunk(&text, markdown, params, &count);
            let chunks = new_chunks(&text, &spans);
            Ok((text, chunks))
        })
        .await?;
        let embed_texts = chunks
            .iter()
            .map(|c| embedding_text(&title, &c.heading, &c.text))
            .collect();
        let vectors = self.embedder.embed(embed_texts).await?;
        let doc = NewDocument {
            key,
            source,
            title,
            uri: input.uri,
            content: text,
            content_hash,
            version_at,
            expires_at: input.expires_at,
            metadata,
        };
        let model = self.model();
        let store = self.store.clone();
        let (status, document) = self
            .store_call(move || store.upsert(&doc, &chunks, &vectors, &model))
            .await?;
        tracing::info!(
            id = %document.id, title = %document.title, chunks = document.chunks, ?status,
            ms = t0.elapsed().as_millis() as u64, "knowledge-base document written"
        );
        Ok(AddOutcome { status, document })
    }

    /// Reads, extracts and adds a file. Its key is its absolute path; front matter may set the
    /// title, source, version date, expiry and URI.
    pub async fn add_file(&self, path: &Path) -> Result<AddOutcome, KbError> {
        let format = Format::for_path(path)?;
        let io = |source| KbError::Io {
            path: path.display().to_string(),
            source,
        };
        let size = tokio::fs::metadata(path).await.map_err(io)?.len() as usize;
        if size > self.settings.max_document_bytes {
            return Err(KbError::TooLarge {
                size,
                limit: self.settings.max_document_bytes,
            });
        }
        let bytes = tokio::fs::read(path).await.map_err(io)?;
        let ex = blocking(move || extract::extract(&bytes, format)).await?;
        let abs = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
        let stem = path
            .file_stem()
            .map(|s| s.to_string_lossy().replace(['-', '_'], " "))
            .unwrap_or_default();
        let mut metadata = serde_json::Map::new();
        for (k, v) in ex.metadata {
            metadata.insert(k, serde_json::Value::String(v));
        }
        self.add(DocumentInput {
            text: ex.text,
            format,
            title: ex.title.or(Some(stem)),
            uri: Some(
                ex.uri
                    .unwrap_or_else(|| format!("file://{}", abs.display())),
            ),
            source: ex.source,
            key: Some(abs.display().to_string()),
            version_at: ex.updated_at,
            expires_at: ex.expires_at,
            metadata,
        })
        .await
    }

    pub async fn list(&self) -> Result<Vec<DocumentInfo>, KbError> {
        let store = self.store.clone();
        self.store_call(move || store.list()).await
    }

    pub async fn get(&self, id: &str) -> Result<DocumentInfo, KbError> {
        let store = self.store.clone();
        let id = id.to_string();
        let id2 = id.clone();
        self.store_call(move || store.get(&id2))
            .await?
            .ok_or(KbError::NotFound(id))
    }

    /// Removes a document and its chunks.
    pub async fn remove(&self, id: &str) -> Result<(), KbError> {
        let store = self.store.clone();
        let id = id.to_string();
        let id2 = id.clone();
        if self.store_call(move || store.remove(&id2)).await? {
            tracing::info!(%id, "knowledge-base document removed");
            Ok(())
        } else {
            Err(KbError::NotFound(id))
        }
    }

    /// Re-embeds every chunk with the configured model (after changing it). `progress` is called
    /// with (done, total) after each batch.
    pub async fn reindex(
        &self,
        progress: &(dyn Fn(usize, usize) + Sync),
    ) -> Result<usize, KbError> {
        let store = self.store.clone();
        let rows = self
            .store_call(move || store.chunks_for_embedding())
            .await?;
        let total = rows.len();
        let mut vectors = Vec::with_capacity(total);
        for batch in rows.chunks(64) {
            let texts = batch
                .iter()
                .map(|c| embedding_text(&c.title, &c.heading, &c.text))
                .collect();
            let vs = self.embedder.embed(texts).await?;
            vectors.extend(batch.iter().map(|c| c.chunk_id).zip(vs));
            progress(vectors.len(), total);
        }
        let model = self.model();
        let store = self.store.clone();
        self.store_call(move || store.replace_embeddings(&model, &vectors))
            .await?;
        tracing::info!(chunks = total, model = %self.model(), "knowledge base re-indexed");
        Ok(total)
    }

    /// The documents' vocabulary ([`super::vocabulary`]): names and words to listen for. Read
    /// again when the store has changed (checked at most every two seconds); empty when the
    /// store cannot be read.
    pub async fn vocabulary(&self) -> Arc<[String]> {
        let mut cached = self.vocabulary.lock().await;
        if let Some(c) = cached
            .as_ref()
            .filter(|c| c.checked.elapsed() < VOCABULARY_CHECK)
        {
            return c.terms.clone();
        }
        let store = self.store.clone();
        let revision = match self.store_call(move || store.revision()).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "the knowledge base's vocabulary could not be read");
                return cached
                    .as_ref()
                    .map_or_else(|| Arc::from([]), |c| c.terms.clone());
            }
        };
        if let Some(c) = cached.as_mut().filter(|c| c.revision == revision) {
            c.checked = Instant::now();
            return c.terms.clone();
        }
        let store = self.store.clone();
        let read = self
            .store_call(move || {
                let chunks = store.chunks_for_embedding()?;
                let texts: Vec<super::vocabulary::Text<'_>> = chunks
                    .iter()
                    .map(|c| super::vocabulary::Text {
                        title: &c.title,
                        heading: &c.heading,
                        text: &c.text,
                    })
                    .collect();
                Ok(super::vocabulary::terms(&texts))
            })
            .await;
        let terms: Arc<[String]> = match read {
            Ok(t) => t.into(),
            Err(e) => {
                tracing::warn!(error = %e, "the knowledge base's vocabulary could not be read");
                return Arc::from([]);
            }
        };
        tracing::debug!(
            terms = terms.len(),
            revision,
            "knowledge-base vocabulary read"
        );
        *cached = Some(CachedVocabulary {
            revision,
            checked: Instant::now(),
            terms: terms.clone(),
        });
        terms
    }

    /// Number of searchable chunks (0: nothing to ground answers in).
    pub async fn chunk_count(&self) -> Result<usize, KbError> {
        let store = self.store.clone();
        self.store_call(move || store.chunk_count()).await
    }

    /// Finds the passages that best answer `request.query`.
    pub async fn search(&self, request: SearchRequest) -> Result<SearchResults, KbError> {
        let top_k = search::check_top_k(request.top_k, self.settings.default_top_k)?;
        let query = request.query.trim().to_string();
        if query.is_empty() {
            return Err(KbError::invalid("invalid_query", "the query is empty"));
        }
        if query.chars().count() > search::MAX_QUERY_CHARS {
            return Err(KbError::invalid(
                "invalid_query",
                format!(
                    "the query is longer than {} characters",
                    search::MAX_QUERY_CHARS
                ),
            ));
        }
        let filter = request.filter.clone().unwrap_or_default();
        let updated_after = filter
            .updated_after
            .as_deref()
            .map(|t| extract::parse_time("filter.updated_after", t))
            .transpose()
            .map_err(|e| KbError::invalid("invalid_filter", e.to_string()))?;
        let floor = request.min_score.unwrap_or(self.settings.min_score);
        if !(-1.0..=1.0).contains(&floor) {
            return Err(KbError::invalid(
                "invalid_min_score",
                "min_score must be between -1 and 1",
            ));
        }
        let eligibility = Eligibility {
            sources: filter.sources,
            document_ids: filter.document_ids,
            updated_after,
            include_superseded: filter.include_superseded,
            now: now(),
        };

        let t0 = Instant::now();
        if self.chunk_count().await? == 0 {
            return Ok(SearchResults {
                grounded: false,
                passages: Vec::new(),
                embed_ms: 0.0,
                search_ms: t0.elapsed().as_secs_f64() * 1e3,
            });
        }
        let t_embed = Instant::now();
        let qv = self
            .embedder
            .embed(vec![query.clone()])
            .await?
            .pop()
            .unwrap_or_default();
        let embed_ms = t_embed.elapsed().as_secs_f64() * 1e3;

        let t_search = Instant::now();
        let store = self.store.clone();
        let model = self.model();
        let passages = self
            .store_call(move || {
                let words = search::keywords(&query);
                let probe = Probe {
                    vector: &qv,
                    model: &model,
                    words: &words,
                    depth: (top_k * 4).max(20),
                    eligibility: &eligibility,
                };
                ranked(store.as_ref(), &probe, top_k, floor)
            })
            .await?;
        Ok(SearchResults {
            grounded: !passages.is_empty(),
            passages,
            embed_ms,
            search_ms: t_search.elapsed().as_secs_f64() * 1e3,
        })
    }
}

/// The passages for a probe: the vector and keyword rankings fused, those under the relevance
/// floor dropped (a little less similarity is needed for one the keyword search also found), at
/// most `top_k`, with their citations.
fn ranked(
    store: &dyn Store,
    probe: &Probe<'_>,
    top_k: usize,
    floor: f32,
) -> Result<Vec<Passage>, StoreError> {
    let candidates = store.candidates(probe)?;
    let ids = |list: &[(i64, f32)]| list.iter().map(|c| c.0).collect::<Vec<_>>();
    let fused = search::fuse([&ids(&candidates.by_vector), &ids(&candidates.by_keyword)]);
    let similarity = |id: i64| {
        candidates
            .by_vector
            .iter()
            .chain(&candidates.by_keyword)
            .find(|c| c.0 == id)
            .map_or(f32::MIN, |c| c.1)
    };
    let mut picked = Vec::new();
    for (id, score, [vr, kr]) in fused {
        let similarity = similarity(id);
        // A passage the keyword search also found needs a little less similarity.
        let needed = if kr.is_some() {
            floor - search::KEYWORD_FLOOR_RELIEF
        } else {
            floor
        };
        if similarity < needed {
            continue;
        }
        picked.push((id, score, similarity, vr, kr));
        if picked.len() == top_k {
            break;
        }
    }
    let records = store.chunks(&picked.iter().map(|p| p.0).collect::<Vec<_>>())?;
    let mut out = Vec::with_capacity(picked.len());
    for (id, score, similarity, vector_rank, keyword_rank) in picked {
        // A chunk removed since the rankings were read is left out.
        let Some(rec) = records.iter().find(|r| r.chunk_id == id) else {
            continue;
        };
        out.push(Passage {
            text: rec.text.clone(),
            score,
            similarity,
            vector_rank,
            keyword_rank,
            citation: Citation {
                document_id: rec.document_id.clone(),
                title: rec.title.clone(),
                uri: rec.uri.clone(),
                source: rec.source.clone(),
                chunk_id: id,
                heading: rec.heading.clone(),
                char_start: rec.char_start,
                char_end: rec.char_end,
            },
        });
    }
    Ok(out)
}

/// A document's title: the one given, else its first line (without markdown's `#`, at most 80
/// characters), else "Untitled"; NUL characters become spaces.
fn title_of(given: Option<&str>, text: &str) -> Result<String, KbError> {
    let given = given.map(|t| t.replace('\0', " "));
    let title = given
        .as_deref()
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(str::to_string)
        .or_else(|| {
            text.lines()
                .map(str::trim)
                .find(|l| !l.is_empty())
                .map(|l| l.trim_start_matches('#').trim().chars().take(80).collect())
        })
        .unwrap_or_else(|| "Untitled".into());
    if title.chars().count() > 500 {
        return Err(KbError::invalid(
            "invalid_title",
            "the title is longer than 500 characters",
        ));
    }
    Ok(title)
}

/// The SHA-256 of a document's parts (each followed by a NUL), hex: unchanged documents are not
/// written again.
fn content_hash(parts: &[&str]) -> String {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update(part.as_bytes());
        hasher.update([0]);
    }
    hex::encode(hasher.finalize())
}

/// The chunks of `text` cut at `spans`, with their character offsets (counted incrementally:
/// spans are in order but may overlap).
fn new_chunks(text: &str, spans: &[crate::rag::chunk::Chunk]) -> Vec<NewChunk> {
    let mut chunks = Vec::with_capacity(spans.len());
    let mut chars_before = 0;
    let mut byte_before = 0;
    for span in spans {
        if span.start < byte_before {
            chars_before = text[..span.start].chars().count();
        } else {
            chars_before += text[byte_before..span.start].chars().count();
        }
        byte_before = span.start;
        let body = &text[span.start..span.end];
        chunks.push(NewChunk {
            heading: span.heading.clone(),
            text: body.to_string(),
            char_start: chars_before,
            char_end: chars_before + body.chars().count(),
        });
    }
    chunks
}
