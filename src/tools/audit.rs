//! The audit trail: every tool call, appended to the `tool_audit` table of the knowledge-base
//! database (the SQLite file, or the PostgreSQL database replicas share). A row holds when, who (session, API key id), which response, the tool, its
//! arguments with sensitive parts redacted, whether they were valid, how the call ended and how
//! long it took. Read it with `GET /v1/audit` (admin key) or `voxd audit`.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rusqlite::{params, Connection};
use serde::{Deserialize, Serialize};

use crate::rag::store::pool::{PgPool, PoolOptions};

/// Errors of the audit log.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("audit log {path}: {message}")]
    Sqlite { path: PathBuf, message: String },
    #[error("audit log {db}: {message}")]
    Postgres { db: String, message: String },
    #[error("invalid audit query: {0}")]
    Invalid(String),
}

/// One tool call.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AuditRow {
    /// Assigned when written (ascending).
    #[serde(default)]
    pub id: i64,
    /// RFC 3339, UTC (set when written if empty).
    #[serde(default)]
    pub at: String,
    pub session: String,
    pub key_id: String,
    pub response: String,
    pub tool: String,
    /// `client` (the client runs it) or `server`.
    pub kind: String,
    pub call_id: String,
    /// The arguments, sensitive parts redacted.
    pub arguments: String,
    /// `valid`, `invalid_retried` (invalid, the model retried) or `invalid` (the call failed).
    pub validation: String,
    /// `sent` (to the client), `ok`, `error`, `timeout`, `refused`, `rejected` (invalid).
    pub status: String,
    pub latency_ms: f64,
    /// What went wrong (never argument values).
    #[serde(default)]
    pub error: Option<String>,
}

/// Which rows to read.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct AuditQuery {
    pub session: Option<String>,
    pub key_id: Option<String>,
    pub tool: Option<String>,
    pub status: Option<String>,
    /// Rows after this id (paging: pass the last id of the previous page).
    pub after: Option<i64>,
    /// Most rows (1–1000, default 100).
    pub limit: Option<usize>,
}

/// The audit log: writes off the async threads.
#[derive(Clone)]
pub struct AuditLog {
    backend: Arc<Backend>,
}

enum Backend {
    /// One connection to the SQLite file.
    Sqlite {
        path: PathBuf,
        conn: Mutex<Connection>,
    },
    /// A small pool on the shared database (whose migrations create the table).
    Postgres(Box<PgPool>),
}

const PG_COLUMNS: &str = "id, at, session, key_id, response, tool, kind, call_id, arguments, \
    validation, status, latency_ms, error";

const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS tool_audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at TEXT NOT NULL,
    session TEXT NOT NULL,
    key_id TEXT NOT NULL,
    response TEXT NOT NULL,
    tool TEXT NOT NULL,
    kind TEXT NOT NULL,
    call_id TEXT NOT NULL,
    arguments TEXT NOT NULL,
    validation TEXT NOT NULL,
    status TEXT NOT NULL,
    latency_ms REAL NOT NULL,
    error TEXT
);
CREATE INDEX IF NOT EXISTS tool_audit_session ON tool_audit(session);
CREATE INDEX IF NOT EXISTS tool_audit_key ON tool_audit(key_id);";

impl AuditLog {
    /// Opens (and creates the table in) the database at `path`.
    pub fn open(path: &Path) -> Result<Self, AuditError> {
        let fail = |e: rusqlite::Error| AuditError::Sqlite {
            path: path.to_path_buf(),
            message: e.to_string(),
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            let _ = std::fs::create_dir_all(dir);
        }
        let conn = Connection::open(path).map_err(fail)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(fail)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(fail)?;
        conn.execute_batch(SCHEMA).map_err(fail)?;
        Ok(AuditLog {
            backend: Arc::new(Backend::Sqlite {
                path: path.to_path_buf(),
                conn: Mutex::new(conn),
            }),
        })
    }

    /// The audit trail in the knowledge base's database: PostgreSQL when `url` is set (the
    /// `tool_audit` table comes with the knowledge base's migrations; nothing connects until the
    /// first row), else the SQLite file at `path`.
    pub fn for_kb(path: &Path, url: Option<&str>) -> Result<Self, AuditError> {
        let Some(url) = url else {
            return Self::open(path);
        };
        let pool = PgPool::lazy(
            url,
            PoolOptions {
                max_connections: 2,
                ..Default::default()
            },
        )
        .map_err(|e| AuditError::Postgres {
            db: "postgres".into(),
            message: e.to_string(),
        })?;
        Ok(AuditLog {
            backend: Arc::new(Backend::Postgres(Box::new(pool))),
        })
    }

    fn err(&self, e: impl std::fmt::Display) -> AuditError {
        match &*self.backend {
            Backend::Sqlite { path, .. } => AuditError::Sqlite {
                path: path.clone(),
                message: e.to_string(),
            },
            Backend::Postgres(pool) => AuditError::Postgres {
                db: pool.name().to_string(),
                message: e.to_string(),
            },
        }
    }

    /// Appends a row (blocking; see [`AuditLog::record`]).
    pub fn append(&self, mut row: AuditRow) -> Result<i64, AuditError> {
        if row.at.is_empty() {
            row.at = humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string();
        }
        let conn = match &*self.backend {
            Backend::Sqlite { conn, .. } => conn,
            Backend::Postgres(pool) => {
                return pool
                    .run(|c| {
                        Ok(c.query_one(
                            "INSERT INTO tool_audit (at, session, key_id, response, tool, kind,
                             call_id, arguments, validation, status, latency_ms, error)
                             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) RETURNING id",
                            &[
                                &row.at,
                                &row.session,
                                &row.key_id,
                                &row.response,
                                &row.tool,
                                &row.kind,
                                &row.call_id,
                                &row.arguments,
                                &row.validation,
                                &row.status,
                                &row.latency_ms,
                                &row.error,
                            ],
                        )?
                        .get(0))
                    })
                    .map_err(|e| self.err(e));
            }
        };
        let conn = conn.lock().unwrap_or_else(|e| e.into_inner());
        conn.execute(
            "INSERT INTO tool_audit (at, session, key_id, response, tool, kind, call_id, arguments,
             validation, status, latency_ms, error) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
            params![
                row.at,
                row.session,
                row.key_id,
                row.response,
                row.tool,
                row.kind,
                row.call_id,
                row.arguments,
                row.validation,
                row.status,
                row.latency_ms,
                row.error
            ],
        )
        .map_err(|e| self.err(e))?;
        Ok(conn.last_insert_rowid())
    }

    /// Appends a row from async code; a failure is logged (the call itself goes on).
    pub async fn record(&self, row: AuditRow) {
        let log = self.clone();
        let result = tokio::task::spawn_blocking(move || log.append(row)).await;
        match result {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "could not write the audit trail"),
            Err(e) => tracing::error!(error = %e, "could not write the audit trail"),
        }
    }

    /// Reads rows, oldest first.
    pub fn query(&self, q: &AuditQuery) -> Result<Vec<AuditRow>, AuditError> {
        let limit = q.limit.unwrap_or(100);
        if !(1..=1000).contains(&limit) {
            return Err(AuditError::Invalid("limit must be 1..=1000".into()));
        }
        let conn = match &*self.backend {
            Backend::Sqlite { conn, .. } => conn,
            Backend::Postgres(pool) => {
                let sql = format!(
                    "SELECT {PG_COLUMNS} FROM tool_audit
                     WHERE id > $1 AND ($2::text IS NULL OR session = $2)
                       AND ($3::text IS NULL OR key_id = $3) AND ($4::text IS NULL OR tool = $4)
                       AND ($5::text IS NULL OR status = $5)
                     ORDER BY id LIMIT $6"
                );
                return pool
                    .run(|c| {
                        // A database no voxd has migrated yet has no calls to show.
                        let rows = match c.query(
                            &sql,
                            &[
                                &q.after.unwrap_or(0),
                                &q.session,
                                &q.key_id,
                                &q.tool,
                                &q.status,
                                &(limit as i64),
                            ],
                        ) {
                            Err(e)
                                if e.code()
                                    == Some(&postgres::error::SqlState::UNDEFINED_TABLE) =>
                            {
                                return Ok(Vec::new())
                            }
                            other => other?,
                        };
                        Ok(rows
                            .iter()
                            .map(|r| AuditRow {
                                id: r.get(0),
                                at: r.get(1),
                                session: r.get(2),
                                key_id: r.get(3),
                                response: r.get(4),
                                tool: r.get(5),
                                kind: r.get(6),
                                call_id: r.get(7),
                                arguments: r.get(8),
                                validation: r.get(9),
                                status: r.get(10),
                                latency_ms: r.get(11),
                                error: r.get(12),
                            })
                            .collect())
                    })
                    .map_err(|e| self.err(e));
            }
        };
        let conn = conn.lock().unwrap_or_else(|e| e.into_inner());
        let mut stmt = conn
            .prepare(
                "SELECT id, at, session, key_id, response, tool, kind, call_id, arguments,
                        validation, status, latency_ms, error
                 FROM tool_audit
                 WHERE id > ?1 AND (?2 IS NULL OR session = ?2) AND (?3 IS NULL OR key_id = ?3)
                   AND (?4 IS NULL OR tool = ?4) AND (?5 IS NULL OR status = ?5)
                 ORDER BY id LIMIT ?6",
            )
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map(
                params![
                    q.after.unwrap_or(0),
                    q.session,
                    q.key_id,
                    q.tool,
                    q.status,
                    limit as i64
                ],
                |r| {
                    Ok(AuditRow {
                        id: r.get(0)?,
                        at: r.get(1)?,
                        session: r.get(2)?,
                        key_id: r.get(3)?,
                        response: r.get(4)?,
                        tool: r.get(5)?,
                        kind: r.get(6)?,
                        call_id: r.get(7)?,
                        arguments: r.get(8)?,
                        validation: r.get(9)?,
                        status: r.get(10)?,
                        latency_ms: r.get(11)?,
                        error: r.get(12)?,
                    })
                },
            )
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<Vec<_>, _>>().map_err(|e| self.err(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_are_appended_and_read_back_with_filters_and_paging() {
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog::open(&dir.path().join("kb.sqlite")).unwrap();
        for i in 0..5 {
            log.append(AuditRow {
                session: format!("sess_{}", i % 2),
                key_id: "k".into(),
                tool: if i < 3 { "book_table" } else { "current_time" }.into(),
                status: "ok".into(),
                ..Default::default()
            })
            .unwrap();
        }
        let all = log.query(&AuditQuery::default()).unwrap();
        assert_eq!(all.len(), 5);
        assert!(all.windows(2).all(|w| w[0].id < w[1].id));
        assert!(all[0].at.ends_with('Z'));
        let q = AuditQuery {
            tool: Some("book_table".into()),
            session: Some("sess_0".into()),
            ..Default::default()
        };
        assert_eq!(log.query(&q).unwrap().len(), 2);
        let page = AuditQuery {
            after: Some(all[2].id),
            limit: Some(1),
            ..Default::default()
        };
        assert_eq!(log.query(&page).unwrap()[0].id, all[3].id);
        assert!(log
            .query(&AuditQuery {
                limit: Some(0),
                ..Default::default()
            })
            .is_err());
    }
}
