//! The outgoing side of a session: a bounded queue of server events and the task that writes
//! them to the socket. A client that reads too slowly fills the queue, and the session ends
//! (close code 1013) instead of buffering without bound.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message};
use futures::Sink;
use futures::SinkExt;
use tokio::sync::{mpsc, oneshot, Notify};
use tracing::{debug, warn};

use crate::protocol::{ProtocolError, ServerEvent};

/// Close codes.
pub(super) const NORMAL: u16 = 1000;
pub(super) const GOING_AWAY: u16 = 1001;
pub(super) const TOO_BIG: u16 = 1009;
pub(super) const TRY_AGAIN_LATER: u16 = 1013;

pub(super) enum Outgoing {
    Event(Box<ServerEvent>),
    /// Raw audio of a spoken answer (the `voxd.binary_audio_out` extension).
    Audio(Vec<u8>),
    Close(u16, &'static str),
}

/// The sending side of the outgoing queue; a full queue ends the session.
#[derive(Clone)]
pub(crate) struct Out {
    tx: mpsc::Sender<Outgoing>,
    overflowed: Arc<AtomicBool>,
    pub(super) overflow: Arc<Notify>,
}

impl Out {
    /// A queue of `capacity` events, and its receiving end for [`writer`].
    pub(super) fn new(capacity: usize) -> (Self, mpsc::Receiver<Outgoing>) {
        let (tx, rx) = mpsc::channel(capacity);
        let out = Out {
            tx,
            overflowed: Arc::new(AtomicBool::new(false)),
            overflow: Arc::new(Notify::new()),
        };
        (out, rx)
    }

    /// Queues an event; false when the queue is full (the session is ending) or closed.
    pub(crate) fn send(&self, e: ServerEvent) -> bool {
        if let ServerEvent::Error { error } = &e {
            crate::metrics::global()
                .errors
                .inc(error.code.as_deref().unwrap_or(&error.kind));
        }
        self.queue(Outgoing::Event(Box::new(e)))
    }

    /// Queues raw audio, sent as a binary frame.
    pub(crate) fn send_audio(&self, bytes: Vec<u8>) -> bool {
        self.queue(Outgoing::Audio(bytes))
    }

    fn queue(&self, o: Outgoing) -> bool {
        match self.tx.try_send(o) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                if !self.overflowed.swap(true, Ordering::SeqCst) {
                    warn!("client reads too slowly: outgoing queue full, closing the session");
                    self.overflow.notify_one();
                }
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }

    /// Sends an `error` event for a client mistake.
    pub(super) fn error(&self, e: &ProtocolError) -> bool {
        debug!(code = e.code, message = %e.message, "client error");
        self.send(ServerEvent::error(e))
    }
}

/// Writes queued events to the socket until the queue closes or `close` asks for a close frame
/// (sent after what is already queued).
pub(super) async fn writer<W>(
    mut tx: W,
    mut rx: mpsc::Receiver<Outgoing>,
    mut close: oneshot::Receiver<(u16, &'static str)>,
) where
    W: Sink<Message> + Unpin,
{
    // A client that reads nothing for this long is gone.
    const SEND_TIMEOUT: Duration = Duration::from_secs(30);
    loop {
        let next = tokio::select! {
            biased;
            c = &mut close => match c { Ok((code, reason)) => Outgoing::Close(code, reason), Err(_) => break },
            o = rx.recv() => match o { Some(o) => o, None => break },
        };
        let (msg, last) = match next {
            Outgoing::Event(e) => (Message::Text(e.to_json().into()), false),
            Outgoing::Audio(bytes) => (Message::Binary(bytes.into()), false),
            Outgoing::Close(code, reason) => {
                // Flush what is already queued (such as a final `error`), then close.
                while let Ok(Outgoing::Event(e)) = rx.try_recv() {
                    if tokio::time::timeout(
                        SEND_TIMEOUT,
                        tx.send(Message::Text(e.to_json().into())),
                    )
                    .await
                    .is_err()
                    {
                        return;
                    }
                }
                (
                    Message::Close(Some(CloseFrame {
                        code,
                        reason: reason.into(),
                    })),
                    true,
                )
            }
        };
        match tokio::time::timeout(SEND_TIMEOUT, tx.send(msg)).await {
            Ok(Ok(())) if !last => {}
            _ => break,
        }
    }
    let _ = tx.close().await;
}
