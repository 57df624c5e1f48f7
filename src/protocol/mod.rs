//! The OpenAI Realtime API wire format, shared by the server and the Rust client so the two
//! cannot drift.
//!
//! - [`client`]: events a client sends, parsed with a typed [`ProtocolError`] for every way a
//!   message can be wrong.
//! - [`server`]: events voxd sends (GA names and fields; voxd's additions are extra fields).
//! - [`session`]: the session configuration and `session.update`, in the GA shape
//!   (`session.audio.input.*`) and the beta shape (`input_audio_format`, top-level
//!   `turn_detection`) that older clients still send.

pub mod client;
pub mod server;
#[cfg(feature = "server")]
pub mod session;

use std::sync::atomic::{AtomicU64, Ordering};

pub use client::{parse_client_event, ClientEvent, ClientMessage};
pub use server::{ErrorBody, Item, ServerEvent};
#[cfg(feature = "server")]
pub use session::{InputFormat, SessionConfig, SessionKind, TurnDetection};

/// A client mistake, answered with an `error` event; the session keeps running.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ProtocolError {
    /// Stable machine-readable code (see README's catalogue).
    pub code: &'static str,
    pub message: String,
    /// The offending field, if any.
    pub param: Option<String>,
    /// The `event_id` of the client event at fault, if it had one.
    pub event_id: Option<String>,
}

impl ProtocolError {
    pub fn new(code: &'static str, message: impl Into<String>) -> Self {
        ProtocolError {
            code,
            message: message.into(),
            param: None,
            event_id: None,
        }
    }

    pub fn param(mut self, param: impl Into<String>) -> Self {
        self.param = Some(param.into());
        self
    }

    pub fn event(mut self, event_id: Option<String>) -> Self {
        self.event_id = event_id;
        self
    }
}

/// A new unique id such as `event_0001a3f2…` (process-unique, ordered, unguessable enough for
/// correlation; not a secret).
pub fn new_id(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    static START: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    let start = *START.get_or_init(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0)
    });
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}_{:012x}{n:08x}", start & 0xffff_ffff_ffff)
}

#[cfg(test)]
mod tests {
    #[test]
    fn ids_are_unique_and_prefixed() {
        let a = super::new_id("event");
        let b = super::new_id("event");
        assert!(a.starts_with("event_") && a != b);
    }
}
