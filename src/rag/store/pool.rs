//! A small blocking pool of PostgreSQL connections (the `postgres` crate), shared by the
//! knowledge base and the audit trail: a bounded number of connections, a wait limit for a free
//! one, a connect timeout, a statement timeout on every connection, and retries of the errors
//! that a fresh connection or a second try can cure (a dropped connection, a restarted server, a
//! serialization failure or deadlock).
//!
//! Its methods block: call them from a blocking thread.

use std::str::FromStr;
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use postgres::error::SqlState;
use postgres::{Client, Config};

use super::pg_tls::{self, RustlsConnect};
use super::StoreError;

/// Limits of the pool.
#[derive(Debug, Clone)]
pub struct PoolOptions {
    /// Most connections open at once.
    pub max_connections: usize,
    /// Longest wait for a free connection.
    pub acquire_timeout: Duration,
    /// Longest wait for a new connection (unless the URL sets `connect_timeout`).
    pub connect_timeout: Duration,
    /// Longest a statement may run.
    pub statement_timeout: Duration,
    /// Tries of an operation that failed with a transient error (1: no retry).
    pub attempts: u32,
}

impl Default for PoolOptions {
    fn default() -> Self {
        PoolOptions {
            max_connections: 8,
            acquire_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(5),
            statement_timeout: Duration::from_secs(60),
            attempts: 3,
        }
    }
}

/// The pool.
pub struct PgPool {
    config: Config,
    /// TLS as the URL's `sslmode` asks (none for `disable`).
    tls: RustlsConnect,
    /// `user@host:port/db`, never the password.
    name: String,
    options: PoolOptions,
    idle: Mutex<Slots>,
    freed: Condvar,
}

struct Slots {
    idle: Vec<Client>,
    /// Connections handed out or being opened.
    busy: usize,
}

/// Is this error worth a second try on a fresh connection?
pub fn is_transient(e: &postgres::Error) -> bool {
    if e.is_closed() {
        return true;
    }
    match e.code() {
        Some(code) => {
            code == &SqlState::T_R_SERIALIZATION_FAILURE
                || code == &SqlState::T_R_DEADLOCK_DETECTED
                || code == &SqlState::ADMIN_SHUTDOWN
                || code == &SqlState::CRASH_SHUTDOWN
                || code == &SqlState::CANNOT_CONNECT_NOW
                || code.code().starts_with("08")
        }
        // No SQLSTATE: transient only when the connection's I/O failed (not a conversion error).
        None => std::error::Error::source(e).is_some_and(|s| s.is::<std::io::Error>()),
    }
}

/// The part of a connection URL that is safe to log: `user@host:port/db`.
fn display_name(config: &Config) -> String {
    let host = config
        .get_hosts()
        .first()
        .map(|h| match h {
            postgres::config::Host::Tcp(h) => h.clone(),
            postgres::config::Host::Unix(p) => p.display().to_string(),
        })
        .unwrap_or_else(|| "localhost".into());
    let port = config.get_ports().first().copied().unwrap_or(5432);
    format!(
        "postgres://{}@{host}:{port}/{}",
        config.get_user().unwrap_or(""),
        config.get_dbname().unwrap_or("")
    )
}

impl PgPool {
    /// Parses `url` (`postgres://user[:password]@host[:port]/db[?options]`) and opens one
    /// connection to check that the database can be reached.
    pub fn connect(url: &str, options: PoolOptions) -> Result<Self, StoreError> {
        let pool = Self::lazy(url, options)?;
        let client = pool.open()?;
        pool.give_back(client, false);
        Ok(pool)
    }

    /// Parses `url` without connecting.
    pub fn lazy(url: &str, options: PoolOptions) -> Result<Self, StoreError> {
        let (url, tls) = pg_tls::split_url(url);
        let tls = RustlsConnect::new(&tls).map_err(|e| StoreError::InvalidUrl(e.to_string()))?;
        let mut config = Config::from_str(&url).map_err(|e| {
            // The parser's message never repeats the password.
            StoreError::InvalidUrl(format!("{e} (expected postgres://USER@HOST:PORT/DB)"))
        })?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(options.connect_timeout);
        }
        if config.get_application_name().is_none() {
            config.application_name("voxd");
        }
        config.keepalives(true);
        let name = display_name(&config);
        Ok(PgPool {
            config,
            tls,
            name,
            options: PoolOptions {
                max_connections: options.max_connections.max(1),
                attempts: options.attempts.max(1),
                ..options
            },
            idle: Mutex::new(Slots {
                idle: Vec::new(),
                busy: 0,
            }),
            freed: Condvar::new(),
        })
    }

    /// `postgres://user@host:port/db`, without the password.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The error for a failed statement.
    pub fn error(&self, source: postgres::Error) -> StoreError {
        if source.code() == Some(&SqlState::DISK_FULL) {
            return StoreError::Full {
                path: self.name.clone(),
            };
        }
        if is_transient(&source) {
            return StoreError::Unavailable {
                path: self.name.clone(),
                reason: source.to_string(),
            };
        }
        let message = match source.as_db_error() {
            Some(db) => format!("{} ({})", db.message(), db.code().code()),
            None => source.to_string(),
        };
        StoreError::Postgres {
            path: self.name.clone(),
            message,
            source,
        }
    }

    fn open(&self) -> Result<Client, StoreError> {
        let mut client =
            self.config
                .connect(self.tls.clone())
                .map_err(|e| StoreError::Unavailable {
                    path: self.name.clone(),
                    reason: e.to_string(),
                })?;
        let ms = self.options.statement_timeout.as_millis();
        // Notices (a query of stop words only, an object that already exists) are not errors.
        client
            .batch_execute(&format!(
                "SET statement_timeout = {ms}; SET client_min_messages = warning"
            ))
            .map_err(|e| self.error(e))?;
        Ok(client)
    }

    /// A connection: an idle one, a new one while under the limit, or the next one freed.
    fn take(&self) -> Result<Client, StoreError> {
        let deadline = Instant::now() + self.options.acquire_timeout;
        let mut slots = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(c) = slots.idle.pop() {
                slots.busy += 1;
                return Ok(c);
            }
            if slots.busy < self.options.max_connections {
                slots.busy += 1;
                drop(slots);
                return self.open().inspect_err(|_| self.release());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(StoreError::Unavailable {
                    path: self.name.clone(),
                    reason: format!(
                        "no free connection within {:?} ({} in use)",
                        self.options.acquire_timeout, self.options.max_connections
                    ),
                });
            }
            slots = self
                .freed
                .wait_timeout(slots, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    fn release(&self) {
        let mut slots = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        slots.busy = slots.busy.saturating_sub(1);
        self.freed.notify_one();
    }

    fn give_back(&self, client: Client, broken: bool) {
        let mut slots = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        slots.busy = slots.busy.saturating_sub(1);
        if !broken && !client.is_closed() {
            slots.idle.push(client);
        }
        self.freed.notify_one();
    }

    /// Runs `f` on a connection. A transient failure (see [`is_transient`]) is tried again on a
    /// fresh connection, up to the pool's attempts, with a short growing pause; `f` must
    /// therefore be safe to repeat (run writes in one transaction).
    pub fn run<T>(
        &self,
        mut f: impl FnMut(&mut Client) -> Result<T, postgres::Error>,
    ) -> Result<T, StoreError> {
        let mut attempt = 1;
        loop {
            let mut client = match self.take() {
                Ok(c) => c,
                Err(e) if attempt < self.options.attempts => {
                    tracing::warn!(db = %self.name, error = %e, attempt, "database unreachable; trying again");
                    std::thread::sleep(Duration::from_millis(200 * attempt as u64));
                    attempt += 1;
                    continue;
                }
                Err(e) => return Err(e),
            };
            match f(&mut client) {
                Ok(v) => {
                    self.give_back(client, false);
                    return Ok(v);
                }
                Err(e) => {
                    let transient = is_transient(&e);
                    self.give_back(client, transient);
                    if transient && attempt < self.options.attempts {
                        tracing::warn!(db = %self.name, error = %e, attempt, "database error; trying again");
                        std::thread::sleep(Duration::from_millis(100 * attempt as u64));
                        attempt += 1;
                        continue;
                    }
                    return Err(self.error(e));
                }
            }
        }
    }
}

impl Drop for PgPool {
    fn drop(&mut self) {
        // Closing a blocking client runs a small runtime, which panics on an async thread (where
        // the last handle to a knowledge base may well be dropped): close them on a thread of
        // their own.
        let idle = std::mem::take(&mut self.idle.get_mut().unwrap_or_else(|p| p.into_inner()).idle);
        if !idle.is_empty() {
            let _ = std::thread::Builder::new()
                .name("pg-close".into())
                .spawn(move || drop(idle));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_checked_and_passwords_never_shown() {
        let pool = PgPool::lazy(
            "postgres://voxd:s3cret@db.internal:6543/kb",
            PoolOptions::default(),
        )
        .unwrap();
        assert_eq!(pool.name(), "postgres://voxd@db.internal:6543/kb");
        let err = PgPool::lazy(
            "postgres://voxd:s3cret@db:notaport/kb",
            PoolOptions::default(),
        )
        .err()
        .unwrap();
        assert!(matches!(err, StoreError::InvalidUrl(_)));
        assert!(!err.to_string().contains("s3cret"), "{err}");
    }

    #[test]
    fn an_unreachable_database_is_a_typed_error_after_the_connect_timeout() {
        // A port nothing listens on: refused at once, tried `attempts` times.
        let pool = PgPool::lazy(
            "postgres://voxd@127.0.0.1:9/kb",
            PoolOptions {
                attempts: 2,
                ..Default::default()
            },
        )
        .unwrap();
        let err = pool.run(|c| c.simple_query("SELECT 1")).err().unwrap();
        assert!(matches!(err, StoreError::Unavailable { .. }), "{err:?}");
    }
}
