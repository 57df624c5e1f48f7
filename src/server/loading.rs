//! A part of the server that loads in the background (the knowledge base, the language model):
//! not configured, loading, ready, or failed with a reason.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};

use axum::http::StatusCode;
use serde_json::{json, Value};

use super::error::ApiError;

/// A value that appears once it has loaded, or a reason it never will.
pub struct Loading<T> {
    value: OnceLock<T>,
    error: Mutex<Option<String>>,
    pending: AtomicBool,
    /// What it is, for messages ("the knowledge base").
    what: &'static str,
    /// The code of the 503 while it is missing.
    code: &'static str,
}

impl<T: Clone> Loading<T> {
    pub fn new(what: &'static str, code: &'static str) -> Self {
        Loading {
            value: OnceLock::new(),
            error: Mutex::new(None),
            pending: AtomicBool::new(false),
            what,
            code,
        }
    }

    /// It is being loaded: readiness waits for it.
    pub fn expect(&self) {
        self.pending.store(true, Ordering::SeqCst);
    }

    pub fn set(&self, value: T) {
        let _ = self.value.set(value);
        *self.error.lock().unwrap_or_else(|p| p.into_inner()) = None;
        self.pending.store(false, Ordering::SeqCst);
    }

    /// The last try failed and another will follow: readiness waits, with this reason.
    pub fn retrying(&self, message: String) {
        *self.error.lock().unwrap_or_else(|p| p.into_inner()) = Some(message);
        self.pending.store(true, Ordering::SeqCst);
    }

    pub fn fail(&self, message: String) {
        *self.error.lock().unwrap_or_else(|p| p.into_inner()) = Some(message);
        self.pending.store(false, Ordering::SeqCst);
    }

    pub fn get(&self) -> Option<T> {
        self.value.get().cloned()
    }

    /// The value, or a 503 that says why it is missing.
    pub fn require(&self) -> Result<T, ApiError> {
        if let Some(v) = self.value.get() {
            return Ok(v.clone());
        }
        let message = match self
            .error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
        {
            Some(e) => format!("{} is unavailable: {e}", self.what),
            None if self.pending.load(Ordering::SeqCst) => {
                format!("{} is still loading; retry shortly", self.what)
            }
            None => format!("{} is not configured on this server", self.what),
        };
        Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            self.code,
            message,
        ))
    }

    /// For `/readyz`: `Err` while loading, else the status (`ready` with `detail`, `unavailable`
    /// with the reason, or `not_configured`).
    pub fn status(&self, detail: impl FnOnce(&T) -> Value) -> Result<Value, String> {
        if let Some(v) = self.value.get() {
            let mut s = detail(v);
            s["status"] = json!("ready");
            return Ok(s);
        }
        let error = self.error.lock().unwrap_or_else(|p| p.into_inner()).clone();
        match (error, self.pending.load(Ordering::SeqCst)) {
            (Some(e), true) => return Err(format!("{} is unavailable ({e}); retrying", self.what)),
            (Some(e), false) => return Ok(json!({ "status": "unavailable", "reason": e })),
            (None, true) => return Err(format!("{} is still loading", self.what)),
            (None, false) => {}
        }
        Ok(json!({ "status": "not_configured" }))
    }
}
