//! One realtime session: a WebSocket speaking the OpenAI Realtime API, wired to the pipeline.
//!
//! ```text
//! socket ─▶ reader ──AudioInput──▶ audio stage thread ──AudioSignal──▶ hub ──ServerEvent──▶ writer ─▶ socket
//!   (parse, decode base64/G.711)     (resample, VAD, turn buffer)      (ASR jobs, partials,
//!          │                                                            speculation, ordering,
//!          └────────────Command (response.*, conversation.*)──────────▶ conversation, responses)
//! ```
//!
//! Where each part lives:
//!
//! - [`session`](self::session): the reader loop, from upgrade to close.
//! - `input`: decoding appended audio; `out`: the bounded outgoing queue and the writer.
//! - [`audio_stage`]: resampling, VAD and the turn's audio buffer, on a thread of its own.
//! - `hub`: the session's task that routes everything below, in order.
//! - `turns`: the turn being spoken and those waiting for their transcript (ASR jobs, partials
//!   through [`partials`], speculative finals).
//! - `conversation`: the items and history, bounded.
//! - `responses`: starting, cancelling and finishing responses, and the early retrieval and
//!   prefill while the person pauses; [`answer`]: one response's task (retrieve, prompt, stream
//!   the LLM), cancellable at any point. A person who starts talking during a response
//!   interrupts it (barge-in).
//!
//! All queues are bounded. The reader waits when the audio stage is behind (backpressure to the
//! client's socket). Partial snapshots are dropped when the hub is behind. Outgoing events go
//! through a queue of [`Limits::out_queue`]; if it fills because the client reads too slowly,
//! the session ends with close code 1013 ("try again later") rather than buffering without bound.
//! When the socket closes, every task of the session ends and the live-session gauge drops.

pub mod answer;
pub mod audio_stage;
mod command;
mod conversation;
mod hub;
mod input;
mod mcp;
mod options;
mod out;
pub mod partials;
mod responses;
mod session;
pub mod speaker;
mod turns;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

pub use answer::{AnswerSettings, Answering};
pub use conversation::{MAX_CONVERSATION_BYTES, MAX_ITEMS, MAX_ITEM_BYTES};
pub use input::decode_audio;
pub use session::{run, run_on};
pub use turns::MAX_PENDING_TURNS;

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

/// Where a session finds the LLM and knowledge base once they have loaded.
pub type AnsweringSource = std::sync::Arc<dyn Fn() -> Option<Answering> + Send + Sync>;

/// What one session gets from the server.
pub struct Shared {
    pub asr: Arc<dyn Asr>,
    /// The LLM and knowledge base, when loaded (responses need them).
    pub answering: Option<Answering>,
    /// Asked for them again while `answering` is `None` (the LLM may still be loading).
    pub answering_later: Option<AnsweringSource>,
    pub limits: Limits,
    /// The turn-taking models (Silero VAD, the end-of-turn model), when loaded.
    pub turn_models: crate::vad::TurnModels,
    /// The voice detector sessions start with.
    pub default_vad: crate::vad::VadEngine,
    /// The configuration a client secret bound the session to (applied at the start; its
    /// locked settings cannot change).
    pub bound: Option<serde_json::Value>,
    /// The session counted against its API key's quota (audio minutes, sessions).
    pub key_session: Option<crate::server::quotas::KeySession>,
    /// The session's place under the server's cap, held until the session ends.
    _slot: SessionSlot,
    shutdown: tokio::sync::watch::Receiver<bool>,
}

impl Shared {
    /// `slot` counts the session as live; `shutdown` turning true asks it to finish and close.
    pub fn new(
        asr: Arc<dyn Asr>,
        limits: Limits,
        slot: SessionSlot,
        shutdown: tokio::sync::watch::Receiver<bool>,
    ) -> Self {
        Shared {
            asr,
            answering: None,
            answering_later: None,
            limits,
            turn_models: Default::default(),
            default_vad: Default::default(),
            bound: None,
            key_session: None,
            _slot: slot,
            shutdown,
        }
    }
}

/// A live session's place under the server's session cap; released when dropped (whether the
/// session ran or its upgrade never completed).
pub struct SessionSlot(Arc<AtomicUsize>);

impl SessionSlot {
    /// Takes a place if fewer than `max` are taken: one atomic step, so a burst of connections
    /// cannot get past the cap.
    pub fn reserve(live: &Arc<AtomicUsize>, max: usize) -> Option<Self> {
        live.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
            (n < max).then_some(n + 1)
        })
        .ok()
        .map(|_| SessionSlot(live.clone()))
    }
}

impl Drop for SessionSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}
