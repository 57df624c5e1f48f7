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
pub mod mcp_items;
pub mod server;
#[cfg(feature = "server")]
pub mod session;

pub use client::{parse_client_event, ClientEvent, ClientMessage};
pub use server::{ErrorBody, Item, ServerEvent};
#[cfg(feature = "server")]
pub use session::{InputFormat, SessionConfig, SessionKind, TurnDetection};

/// A client mistake, answered with an `error` event; the session keeps running.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ProtocolError {
    /// Stable machine-readable code (see docs/realtime-api.md).
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

pub use crate::ids::new_id;
