//! How a simulated user reaches the server: a realtime WebSocket (PCM16 frames in, events and
//! audio deltas out) or a WebRTC call (Opus on the track both ways, events on `oai-events`).
//! Both halves are separate so a user can listen while it speaks.

use serde_json::{json, Value};

use super::BenchError;
use crate::client::{self, Incoming};
use crate::rtc::dial::{self, CallReceiver, CallSender};

/// The transport a bench level runs over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    WebSocket,
    WebRtc,
}

impl Transport {
    pub fn name(self) -> &'static str {
        match self {
            Transport::WebSocket => "websocket",
            Transport::WebRtc => "webrtc",
        }
    }
}

impl std::str::FromStr for Transport {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "websocket" | "ws" => Ok(Transport::WebSocket),
            "webrtc" | "rtc" => Ok(Transport::WebRtc),
            other => Err(format!("unknown transport {other:?} (websocket or webrtc)")),
        }
    }
}

/// The sending half.
pub enum LinkSender {
    Ws(client::Sender),
    Rtc(CallSender),
}

/// The receiving half.
pub enum LinkReceiver {
    Ws(client::Receiver),
    Rtc(CallReceiver),
}

/// Opens a session over `transport` to the server at `url` (`ws://HOST/v1/realtime`), with the
/// microphone's audio at `input_rate`.
pub async fn open(
    transport: Transport,
    url: &str,
    http_base: &str,
    api_key: Option<&str>,
    input_rate: u32,
) -> Result<(LinkSender, LinkReceiver), BenchError> {
    match transport {
        Transport::WebSocket => {
            let (tx, rx) =
                client::connect_with_retry(url, api_key, &client::Retry::default()).await?;
            Ok((LinkSender::Ws(tx), LinkReceiver::Ws(rx)))
        }
        Transport::WebRtc => {
            let (tx, rx) = dial::dial(http_base, api_key, input_rate)
                .await
                .map_err(|e| BenchError::Config(format!("WebRTC call: {e}")))?;
            Ok((LinkSender::Rtc(tx), LinkReceiver::Rtc(rx)))
        }
    }
}

fn rtc_error(e: crate::rtc::CallError) -> BenchError {
    BenchError::Config(format!("WebRTC call: {e}"))
}

impl LinkSender {
    /// Sends `session.update` with `session`.
    pub async fn update_session(&mut self, session: Value) -> Result<(), BenchError> {
        match self {
            LinkSender::Ws(tx) => Ok(tx.update_session(session).await?),
            LinkSender::Rtc(tx) => tx
                .send_event(json!({"type": "session.update", "session": session}))
                .await
                .map_err(rtc_error),
        }
    }

    /// Sends one frame of microphone audio.
    pub async fn send_audio(&mut self, samples: &[f32]) -> Result<(), BenchError> {
        match self {
            LinkSender::Ws(tx) => Ok(tx.append_binary(samples).await?),
            LinkSender::Rtc(tx) => tx.send_audio(samples).await.map_err(rtc_error),
        }
    }

    /// Ends the session (closes the socket, or hangs up the call).
    pub async fn close(&mut self) {
        match self {
            LinkSender::Ws(tx) => {
                let _ = tx.close().await;
            }
            LinkSender::Rtc(tx) => tx.hang_up().await,
        }
    }
}

impl LinkReceiver {
    /// The next event or answer audio (a delta's bytes, or one packet on the call's track).
    pub async fn next(&mut self) -> Option<Result<Incoming, BenchError>> {
        match self {
            LinkReceiver::Ws(rx) => rx.next().await.map(|r| r.map_err(BenchError::from)),
            LinkReceiver::Rtc(rx) => rx.next().await.map(Ok),
        }
    }
}
