//! The embedded store: one SQLite file (rusqlite, SQLite compiled in), WAL mode so searches run
//! while a document is being written, FTS5 for keywords, versioned migrations.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use rusqlite::{params, Connection, OptionalExtension, Transaction};

use super::{
    Candidates, ChunkForEmbedding, ChunkRecord, DocMeta, DocumentInfo, EmbeddingModel, NewChunk,
    NewDocument, Probe, Snapshot, Store, StoreError, WriteOutcome,
};
use crate::rag::index::VectorIndex;
use crate::rag::search::fts5_query;

/// Schema migrations, applied in order; `PRAGMA user_version` records how many ran.
const MIGRATIONS: &[&str] = &[
    // 1: documents, chunks, embeddings, keyword index, metadata.
    r#"
    CREATE TABLE documents (
        id           TEXT PRIMARY KEY,
        key          TEXT NOT NULL UNIQUE,
        source       TEXT NOT NULL,
        title        TEXT NOT NULL,
        uri          TEXT,
        content      TEXT NOT NULL,
        content_hash TEXT NOT NULL,
        version_at   INTEGER NOT NULL,
        created_at   INTEGER NOT NULL,
        updated_at   INTEGER NOT NULL,
        expires_at   INTEGER,
        metadata     TEXT NOT NULL DEFAULT '{}'
    );
    CREATE INDEX documents_source ON documents(source);
    CREATE TABLE chunks (
        id          INTEGER PRIMARY KEY,
        document_id TEXT NOT NULL REFERENCES documents(id) ON DELETE CASCADE,
        position    INTEGER NOT NULL,
        heading     TEXT NOT NULL,
        text        TEXT NOT NULL,
        char_start  INTEGER NOT NULL,
        char_end    INTEGER NOT NULL,
        UNIQUE (document_id, position)
    );
    CREATE TABLE embeddings (
        chunk_id INTEGER PRIMARY KEY REFERENCES chunks(id) ON DELETE CASCADE,
        model    TEXT NOT NULL,
        dim      INTEGER NOT NULL,
        vector   BLOB NOT NULL
    );
    CREATE VIRTUAL TABLE chunks_fts USING fts5(
        title, heading, text,
        tokenize = 'porter unicode61 remove_diacritics 2'
    );
    CREATE TABLE kb_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    INSERT INTO kb_meta (key, value) VALUES ('revision', '0');
    "#,
];

/// Column weights for BM25: title, heading, text.
const BM25: &str = "bm25(chunks_fts, 2.0, 1.5, 1.0)";

/// The SQLite store. One writer connection; readers come from a small pool. Vectors are searched
/// exactly in memory: the index is read once and read again whenever the store's revision moves
/// (a write by this process or another).
pub struct SqliteStore {
    path: PathBuf,
    writer: Mutex<Connection>,
    readers: Mutex<Vec<Connection>>,
    index: RwLock<Option<Arc<VectorIndex>>>,
    reload: Mutex<()>,
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn to_blob(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn from_blob(b: &[u8], out: &mut Vec<f32>) {
    out.extend(
        b.chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
    );
}

const DOC_COLUMNS: &str = "d.id, d.key, d.source, d.title, d.uri, d.content_hash, d.version_at, \
    d.created_at, d.updated_at, d.expires_at, d.metadata, \
    (SELECT COUNT(*) FROM chunks c WHERE c.document_id = d.id), length(d.content)";

fn doc_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<DocumentInfo> {
    let metadata: String = row.get(10)?;
    Ok(DocumentInfo {
        id: row.get(0)?,
        key: row.get(1)?,
        source: row.get(2)?,
        title: row.get(3)?,
        uri: row.get(4)?,
        content_hash: row.get(5)?,
        version_at: row.get(6)?,
        created_at: row.get(7)?,
        updated_at: row.get(8)?,
        expires_at: row.get(9)?,
        metadata: serde_json::from_str(&metadata).unwrap_or(serde_json::Value::Null),
        chunks: row.get::<_, i64>(11)? as usize,
        chars: row.get::<_, i64>(12)? as usize,
    })
}

impl SqliteStore {
    /// Opens (creating if needed) the knowledge base at `path` and brings its schema up to date.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Self::open_limited(path, None)
    }

    /// [`SqliteStore::open`], with the database file limited to `max_bytes`: a write that would
    /// grow it beyond fails with [`StoreError::Full`] and changes nothing (each write is one
    /// transaction). A database already larger keeps its size but cannot grow.
    pub fn open_limited(path: &Path, max_bytes: Option<u64>) -> Result<Self, StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| StoreError::Io {
                path: dir.display().to_string(),
                source,
            })?;
        }
        let store = SqliteStore {
            path: path.to_path_buf(),
            writer: Mutex::new(Connection::open_in_memory().map_err(|e| Self::err(path, e))?),
            readers: Mutex::new(Vec::new()),
            index: RwLock::new(None),
            reload: Mutex::new(()),
        };
        let mut conn = store.connect()?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(|e| store.sqlite(e))?;
        store.migrate(&mut conn)?;
        if let Some(max) = max_bytes {
            let page: u64 = conn
                .query_row("PRAGMA page_size", [], |r| r.get::<_, i64>(0))
                .map_err(|e| store.sqlite(e))? as u64;
            let pages = (max / page.max(1)).max(1);
            // The limit holds for this connection, the only one that writes.
            conn.query_row(&format!("PRAGMA max_page_count = {pages}"), [], |_| Ok(()))
                .map_err(|e| store.sqlite(e))?;
        }
        *store.writer.lock().unwrap_or_else(|p| p.into_inner()) = conn;
        Ok(store)
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn err(path: &Path, source: rusqlite::Error) -> StoreError {
        if source.sqlite_error_code() == Some(rusqlite::ErrorCode::DiskFull) {
            return StoreError::Full {
                path: path.display().to_string(),
            };
        }
        StoreError::Sqlite {
            path: path.display().to_string(),
            source,
        }
    }

    fn sqlite(&self, source: rusqlite::Error) -> StoreError {
        Self::err(&self.path, source)
    }

    fn connect(&self) -> Result<Connection, StoreError> {
        let conn = Connection::open(&self.path).map_err(|e| self.sqlite(e))?;
        conn.busy_timeout(std::time::Duration::from_secs(10))
            .map_err(|e| self.sqlite(e))?;
        conn.pragma_update(None, "foreign_keys", "ON")
            .map_err(|e| self.sqlite(e))?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(|e| self.sqlite(e))?;
        Ok(conn)
    }

    fn migrate(&self, conn: &mut Connection) -> Result<(), StoreError> {
        let version: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(|e| self.sqlite(e))?;
        let known = MIGRATIONS.len() as i64;
        if version > known {
            return Err(StoreError::TooNew {
                path: self.path.display().to_string(),
                found: version,
                known,
            });
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
            let tx = conn.transaction().map_err(|e| self.sqlite(e))?;
            tx.execute_batch(sql).map_err(|e| self.sqlite(e))?;
            tx.pragma_update(None, "user_version", (i + 1) as i64)
                .map_err(|e| self.sqlite(e))?;
            tx.commit().map_err(|e| self.sqlite(e))?;
            tracing::info!(path = %self.path.display(), version = i + 1, "knowledge base schema migrated");
        }
        Ok(())
    }

    /// Runs `f` with a reader connection from the pool.
    fn read<T>(
        &self,
        f: impl FnOnce(&mut Connection) -> rusqlite::Result<T>,
    ) -> Result<T, StoreError> {
        let pooled = self.readers.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let mut conn = match pooled {
            Some(c) => c,
            None => self.connect()?,
        };
        let result = f(&mut conn).map_err(|e| self.sqlite(e));
        let mut readers = self.readers.lock().unwrap_or_else(|p| p.into_inner());
        if readers.len() < 8 {
            readers.push(conn);
        }
        result
    }

    /// Runs `f` in a write transaction and bumps the revision.
    fn write<T>(
        &self,
        f: impl FnOnce(&Transaction<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut conn = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(|e| self.sqlite(e))?;
        let out = f(&tx)?;
        tx.execute(
            "UPDATE kb_meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'revision'",
            [],
        )
        .map_err(|e| self.sqlite(e))?;
        tx.commit().map_err(|e| self.sqlite(e))?;
        Ok(out)
    }

    /// Everything the vector index needs, read consistently.
    pub fn snapshot(&self) -> Result<Snapshot, StoreError> {
        self.read(|c| {
            let tx = c.transaction()?;
            let mut snap = Snapshot {
                revision: tx.query_row(
                    "SELECT CAST(value AS INTEGER) FROM kb_meta WHERE key = 'revision'",
                    [],
                    |r| r.get(0),
                )?,
                model: Self::model_in(&tx)?,
                ..Default::default()
            };
            let mut doc_index = std::collections::HashMap::new();
            {
                let mut stmt = tx.prepare(
                    "SELECT id, source, title, uri, version_at, expires_at FROM documents ORDER BY id",
                )?;
                let mut rows = stmt.query([])?;
                while let Some(r) = rows.next()? {
                    let meta = DocMeta {
                        id: r.get(0)?,
                        source: r.get(1)?,
                        title: r.get(2)?,
                        uri: r.get(3)?,
                        version_at: r.get(4)?,
                        expires_at: r.get(5)?,
                    };
                    doc_index.insert(meta.id.clone(), snap.docs.len() as u32);
                    snap.docs.push(meta);
                }
                let mut stmt = tx.prepare(
                    "SELECT c.id, c.document_id, e.vector FROM chunks c
                     JOIN embeddings e ON e.chunk_id = c.id ORDER BY c.id",
                )?;
                let mut rows = stmt.query([])?;
                while let Some(r) = rows.next()? {
                    let doc: String = r.get(1)?;
                    let Some(&d) = doc_index.get(&doc) else { continue };
                    snap.chunk_ids.push(r.get(0)?);
                    snap.chunk_doc.push(d);
                    from_blob(r.get_ref(2)?.as_blob()?, &mut snap.vectors);
                }
            }
            tx.commit()?;
            Ok(snap)
        })
    }

    /// Full-text search: `(chunk id, score)`, best first (higher is better).
    pub fn keyword_search(&self, query: &str, limit: usize) -> Result<Vec<(i64, f64)>, StoreError> {
        if query.trim().is_empty() {
            return Ok(Vec::new());
        }
        self.read(|c| {
            let mut stmt = c.prepare_cached(&format!(
                "SELECT rowid, {BM25} FROM chunks_fts WHERE chunks_fts MATCH ?1 ORDER BY {BM25} LIMIT ?2"
            ))?;
            let rows = stmt.query_map(params![query, limit as i64], |r| {
                Ok((r.get::<_, i64>(0)?, -r.get::<_, f64>(1)?))
            })?;
            rows.collect()
        })
    }

    /// The vector index, read again if anything was written since it was read.
    fn index(&self) -> Result<Arc<VectorIndex>, StoreError> {
        let revision = self.revision()?;
        if let Some(ix) = self
            .index
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
        {
            if ix.revision() == revision {
                return Ok(ix.clone());
            }
        }
        // One reload at a time; a search that waited finds the fresh index.
        let _guard = self.reload.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(ix) = self
            .index
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
        {
            if ix.revision() >= revision {
                return Ok(ix.clone());
            }
        }
        let ix = Arc::new(VectorIndex::new(self.snapshot()?));
        *self.index.write().unwrap_or_else(|p| p.into_inner()) = Some(ix.clone());
        tracing::debug!(
            chunks = ix.len(),
            revision = ix.revision(),
            "vector index loaded"
        );
        Ok(ix)
    }

    fn model_in(conn: &Connection) -> rusqlite::Result<Option<EmbeddingModel>> {
        let name: Option<String> = conn
            .query_row(
                "SELECT value FROM kb_meta WHERE key = 'embedding_model'",
                [],
                |r| r.get(0),
            )
            .optional()?;
        let dim: Option<String> = conn
            .query_row(
                "SELECT value FROM kb_meta WHERE key = 'embedding_dim'",
                [],
                |r| r.get(0),
            )
            .optional()?;
        Ok(match (name, dim.and_then(|d| d.parse().ok())) {
            (Some(name), Some(dimensions)) => Some(EmbeddingModel { name, dimensions }),
            _ => None,
        })
    }

    fn set_model(tx: &Transaction<'_>, model: &EmbeddingModel) -> rusqlite::Result<()> {
        tx.execute(
            "INSERT INTO kb_meta (key, value) VALUES ('embedding_model', ?1), ('embedding_dim', ?2)
             ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            params![model.name, model.dimensions.to_string()],
        )?;
        Ok(())
    }

    fn doc_by(
        conn: &Connection,
        column: &str,
        value: &str,
    ) -> rusqlite::Result<Option<DocumentInfo>> {
        conn.query_row(
            &format!("SELECT {DOC_COLUMNS} FROM documents d WHERE d.{column} = ?1"),
            [value],
            doc_row,
        )
        .optional()
    }

    fn delete_chunks(tx: &Transaction<'_>, doc_id: &str) -> rusqlite::Result<()> {
        tx.execute(
            "DELETE FROM chunks_fts WHERE rowid IN (SELECT id FROM chunks WHERE document_id = ?1)",
            [doc_id],
        )?;
        tx.execute("DELETE FROM chunks WHERE document_id = ?1", [doc_id])?;
        Ok(())
    }
}

impl Store for SqliteStore {
    fn describe(&self) -> String {
        format!("sqlite {}", self.path.display())
    }

    fn ping(&self) -> Result<(), StoreError> {
        self.revision().map(|_| ())
    }

    fn chunk_count(&self) -> Result<usize, StoreError> {
        Ok(self.index()?.len())
    }

    fn candidates(&self, probe: &Probe<'_>) -> Result<Candidates, StoreError> {
        let index = self.index()?;
        if index.is_empty() {
            return Ok(Candidates::default());
        }
        if let Some(stored) = index.model() {
            if stored != probe.model {
                return Err(StoreError::ModelMismatch {
                    stored: stored.to_string(),
                    configured: probe.model.to_string(),
                });
            }
        }
        let eligible = index.eligible(probe.eligibility);
        let by_vector = index
            .top_k(probe.vector, probe.depth, &eligible)
            .into_iter()
            .map(|(row, s)| (index.chunk_id(row), s))
            .collect();
        // Ineligible chunks are dropped after the keyword search, so it looks deeper.
        let by_keyword = self
            .keyword_search(&fts5_query(probe.words), probe.depth * 3)?
            .into_iter()
            .filter_map(|(id, _)| {
                let row = index.row(id)?;
                index
                    .row_eligible(row, &eligible)
                    .then(|| (id, index.similarity(row, probe.vector)))
            })
            .take(probe.depth)
            .collect();
        Ok(Candidates {
            by_vector,
            by_keyword,
        })
    }

    fn embedding_model(&self) -> Result<Option<EmbeddingModel>, StoreError> {
        self.read(|c| Self::model_in(c))
    }

    fn revision(&self) -> Result<i64, StoreError> {
        self.read(|c| {
            c.query_row(
                "SELECT CAST(value AS INTEGER) FROM kb_meta WHERE key = 'revision'",
                [],
                |r| r.get(0),
            )
        })
    }

    fn upsert(
        &self,
        doc: &NewDocument,
        chunks: &[NewChunk],
        vectors: &[Vec<f32>],
        model: &EmbeddingModel,
    ) -> Result<(WriteOutcome, DocumentInfo), StoreError> {
        assert_eq!(chunks.len(), vectors.len(), "one vector per chunk");
        self.write(|tx| {
            let sql = |e| self.sqlite(e);
            match Self::model_in(tx).map_err(sql)? {
                Some(stored) if stored != *model => {
                    return Err(StoreError::ModelMismatch {
                        stored: stored.to_string(),
                        configured: model.to_string(),
                    })
                }
                Some(_) => {}
                None => Self::set_model(tx, model).map_err(sql)?,
            }
            let existing = Self::doc_by(tx, "key", &doc.key).map_err(sql)?;
            let t = now();
            let outcome = match &existing {
                Some(old) if old.content_hash == doc.content_hash => {
                    return Ok((WriteOutcome::Unchanged, old.clone()));
                }
                Some(old) => {
                    Self::delete_chunks(tx, &old.id).map_err(sql)?;
                    WriteOutcome::Updated
                }
                None => WriteOutcome::Created,
            };
            // One statement for both: a new row, or (the key exists) the same row, keeping its id and
            // created_at, with the new content. The fresh id is used only when the row is new.
            tx.execute(
                "INSERT INTO documents (id, key, source, title, uri, content, content_hash,
                 version_at, created_at, updated_at, expires_at, metadata)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?9, ?10, ?11)
                 ON CONFLICT(key) DO UPDATE SET source = excluded.source, title = excluded.title,
                 uri = excluded.uri, content = excluded.content, content_hash = excluded.content_hash,
                 version_at = excluded.version_at, updated_at = excluded.updated_at,
                 expires_at = excluded.expires_at, metadata = excluded.metadata",
                params![
                    crate::ids::new_id("doc"),
                    doc.key,
                    doc.source,
                    doc.title,
                    doc.uri,
                    doc.content,
                    doc.content_hash,
                    doc.version_at,
                    t,
                    doc.expires_at,
                    doc.metadata.to_string()
                ],
            )
            .map_err(sql)?;
            let id: String = tx
                .query_row("SELECT id FROM documents WHERE key = ?1", [&doc.key], |r| r.get(0))
                .map_err(sql)?;
            {
                let mut chunk_stmt = tx
                    .prepare_cached(
                        "INSERT INTO chunks (document_id, position, heading, text, char_start, char_end)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                    )
                    .map_err(sql)?;
                let mut vec_stmt = tx
                    .prepare_cached(
                        "INSERT INTO embeddings (chunk_id, model, dim, vector) VALUES (?1, ?2, ?3, ?4)",
                    )
                    .map_err(sql)?;
                let mut fts_stmt = tx
                    .prepare_cached(
                        "INSERT INTO chunks_fts (rowid, title, heading, text) VALUES (?1, ?2, ?3, ?4)",
                    )
                    .map_err(sql)?;
                for (i, (chunk, vector)) in chunks.iter().zip(vectors).enumerate() {
                    chunk_stmt
                        .execute(params![
                            id,
                            i as i64,
                            chunk.heading,
                            chunk.text,
                            chunk.char_start as i64,
                            chunk.char_end as i64
                        ])
                        .map_err(sql)?;
                    let chunk_id = tx.last_insert_rowid();
                    vec_stmt
                        .execute(params![chunk_id, model.name, model.dimensions as i64, to_blob(vector)])
                        .map_err(sql)?;
                    fts_stmt
                        .execute(params![chunk_id, doc.title, chunk.heading, chunk.text])
                        .map_err(sql)?;
                }
            }
            let info = Self::doc_by(tx, "id", &id)
                .map_err(sql)?
                .expect("the document was just written");
            Ok((outcome, info))
        })
    }

    fn find_by_key(&self, key: &str) -> Result<Option<DocumentInfo>, StoreError> {
        self.read(|c| Self::doc_by(c, "key", key))
    }

    fn get(&self, id: &str) -> Result<Option<DocumentInfo>, StoreError> {
        self.read(|c| Self::doc_by(c, "id", id))
    }

    fn list(&self) -> Result<Vec<DocumentInfo>, StoreError> {
        self.read(|c| {
            let mut stmt = c.prepare(&format!(
                "SELECT {DOC_COLUMNS} FROM documents d ORDER BY d.created_at, d.id"
            ))?;
            let rows = stmt.query_map([], doc_row)?;
            rows.collect()
        })
    }

    fn remove(&self, id: &str) -> Result<bool, StoreError> {
        self.write(|tx| {
            Self::delete_chunks(tx, id).map_err(|e| self.sqlite(e))?;
            let n = tx
                .execute("DELETE FROM documents WHERE id = ?1", [id])
                .map_err(|e| self.sqlite(e))?;
            Ok(n > 0)
        })
    }

    fn chunks(&self, ids: &[i64]) -> Result<Vec<ChunkRecord>, StoreError> {
        self.read(|c| {
            let mut stmt = c.prepare_cached(
                "SELECT c.id, c.document_id, c.position, c.heading, c.text, c.char_start,
                        c.char_end, d.title, d.uri, d.source
                 FROM chunks c JOIN documents d ON d.id = c.document_id WHERE c.id = ?1",
            )?;
            let mut out = Vec::with_capacity(ids.len());
            for id in ids {
                let row = stmt
                    .query_row([id], |r| {
                        Ok(ChunkRecord {
                            chunk_id: r.get(0)?,
                            document_id: r.get(1)?,
                            position: r.get::<_, i64>(2)? as usize,
                            heading: r.get(3)?,
                            text: r.get(4)?,
                            char_start: r.get::<_, i64>(5)? as usize,
                            char_end: r.get::<_, i64>(6)? as usize,
                            title: r.get(7)?,
                            uri: r.get(8)?,
                            source: r.get(9)?,
                        })
                    })
                    .optional()?;
                out.extend(row);
            }
            Ok(out)
        })
    }

    fn chunks_for_embedding(&self) -> Result<Vec<ChunkForEmbedding>, StoreError> {
        self.read(|c| {
            let mut stmt = c.prepare(
                "SELECT c.id, d.title, c.heading, c.text FROM chunks c
                 JOIN documents d ON d.id = c.document_id ORDER BY c.id",
            )?;
            let rows = stmt.query_map([], |r| {
                Ok(ChunkForEmbedding {
                    chunk_id: r.get(0)?,
                    title: r.get(1)?,
                    heading: r.get(2)?,
                    text: r.get(3)?,
                })
            })?;
            rows.collect()
        })
    }

    fn replace_embeddings(
        &self,
        model: &EmbeddingModel,
        vectors: &[(i64, Vec<f32>)],
    ) -> Result<(), StoreError> {
        self.write(|tx| {
            let sql = |e| self.sqlite(e);
            tx.execute("DELETE FROM embeddings", []).map_err(sql)?;
            let mut stmt = tx
                .prepare_cached(
                    "INSERT INTO embeddings (chunk_id, model, dim, vector) VALUES (?1, ?2, ?3, ?4)",
                )
                .map_err(sql)?;
            for (id, v) in vectors {
                stmt.execute(params![id, model.name, model.dimensions as i64, to_blob(v)])
                    .map_err(sql)?;
            }
            Self::set_model(tx, model).map_err(sql)?;
            Ok(())
        })
    }
}
