//! One realtime session: a WebSocket speaking the OpenAI Realtime API, wired to the pipeline.
//!
//! ```text
//! socket ─▶ reader ──AudioInput──▶ audio stage thread ──AudioSignal──▶ hub ──ServerEvent──▶ writer ─▶ socket
//!   (parse, decode base64/G.711)     (resample, VAD, turn buffer)      (ASR jobs, partials,
//!          │                                                            speculation, ordering,
//!          └────────────Command (response.*, conversation.*)──────────▶ conversation, responses)
//! ```
//!
//! The hub keeps the conversation and starts [`responses`]: each runs as its own task (retrieve,
//! prompt, stream the LLM) and can be cancelled at any point; a person who starts talking during
//! a response interrupts it (barge-in). While the person pauses, the speculative transcript is
//! used to retrieve and to prefill the LLM's prompt ahead of the end of the turn.
//!
//! All queues are bounded. The reader waits when the audio stage is behind (backpressure to the
//! client's socket). Partial snapshots are dropped when the hub is behind. Outgoing events go
//! through a queue of [`Limits::out_queue`]; if it fills because the client reads too slowly,
//! the session ends with close code 1013 ("try again later") rather than buffering without bound.
//! When the socket closes, every task of the session ends and the live-session gauge drops.

pub mod audio_stage;
pub mod partials;
pub mod responses;
mod session;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

pub use responses::{AnswerSettings, Answering};
pub use session::run;
use session::Out;

use crate::asr::Asr;

/// Per-session limits.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest decoded audio in one `append` (the API's 15 MiB).
    pub max_append_bytes: usize,
    /// Longest session; the client gets an `error` and the socket closes.
    pub max_session: Duration,
    /// Close a session that sends nothing for this long.
    pub idle: Duration,
    /// Outgoing events buffered for a slow client before the session is closed.
    pub out_queue: usize,
    /// How long in-flight turns may take to finish at shutdown.
    pub shutdown_grace: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_append_bytes: 15 * 1024 * 1024,
            max_session: Duration::from_secs(60 * 60),
            idle: Duration::from_secs(15 * 60),
            out_queue: 256,
            shutdown_grace: Duration::from_secs(5),
        }
    }
}

/// What every session of a server shares.
#[derive(Clone)]
pub struct Shared {
    pub asr: Arc<dyn Asr>,
    /// The LLM and knowledge base, when loaded (responses need them).
    pub answering: Option<Answering>,
    pub limits: Limits,
    live: Arc<AtomicUsize>,
    shutdown: tokio::sync::watch::Receiver<bool>,
}

impl Shared {
    /// `live` counts open sessions; `shutdown` turning true asks sessions to finish and close.
    pub fn new(
        asr: Arc<dyn Asr>,
        limits: Limits,
        live: Arc<AtomicUsize>,
        shutdown: tokio::sync::watch::Receiver<bool>,
    ) -> Self {
        Shared {
            asr,
            answering: None,
            limits,
            live,
            shutdown,
        }
    }
}

/// Counts a session as live while it exists.
struct LiveGuard(Arc<AtomicUsize>);

impl LiveGuard {
    fn new(counter: &Arc<AtomicUsize>) -> Self {
        counter.fetch_add(1, Ordering::SeqCst);
        LiveGuard(counter.clone())
    }
}

impl Drop for LiveGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}
