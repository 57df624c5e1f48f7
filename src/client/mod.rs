//! A Rust client for voxd's realtime API (and any OpenAI-Realtime-compatible server): connect,
//! configure, stream audio, read typed events. It uses the same [`crate::protocol`] types as the
//! server, so the two cannot drift. `voxd client` is built on it.
//!
//! Depend on it without the server: `voxd = { default-features = false, features = ["client"] }`.
//! See `examples/stream_file.rs`: connect, configure, stream a WAV file, print the transcript and
//! the answer.

/// WAV reading and writing (also `voxd::wav`).
pub use crate::wav;

use std::time::Duration;

use base64::Engine;
use futures::stream::{SplitSink, SplitStream};
use futures::{SinkExt, Stream, StreamExt};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::protocol::{ClientEvent, ServerEvent};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Client errors.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to {url}: {source}")]
    Connect {
        url: String,
        #[source]
        source: Box<tokio_tungstenite::tungstenite::Error>,
    },
    #[error("the server refused the connection with HTTP {status}: {body}")]
    Refused { status: u16, body: String },
    #[error("websocket: {0}")]
    Socket(#[from] Box<tokio_tungstenite::tungstenite::Error>),
    #[error("the server sent an event voxd does not understand: {0}")]
    Decode(String),
}

/// A message from the server. (Events are by far the most common message, so they are not
/// boxed.)
#[derive(Debug, Clone)]
#[allow(clippy::large_enum_variant)]
pub enum Incoming {
    /// A known event.
    Event(ServerEvent),
    /// An event of a type this client does not know (kept as JSON).
    Other(Value),
    /// A binary frame: a spoken answer's raw audio (`session.voxd.binary_audio_out`).
    Audio(Vec<u8>),
    /// The server closed the socket.
    Closed { code: u16, reason: String },
}

/// The sending half.
pub struct Sender {
    ws: SplitSink<Ws, Message>,
}

/// The receiving half.
pub struct Receiver {
    ws: SplitStream<Ws>,
}

/// Connects to a realtime endpoint such as `ws://127.0.0.1:8080/v1/realtime`. With `api_key`,
/// sends `Authorization: Bearer`.
pub async fn connect(url: &str, api_key: Option<&str>) -> Result<(Sender, Receiver), ClientError> {
    let mut request = url
        .into_client_request()
        .map_err(|e| ClientError::Connect {
            url: url.to_string(),
            source: Box::new(e),
        })?;
    if let Some(key) = api_key {
        let value =
            HeaderValue::from_str(&format!("Bearer {key}")).map_err(|e| ClientError::Connect {
                url: url.to_string(),
                source: Box::new(tokio_tungstenite::tungstenite::Error::HttpFormat(e.into())),
            })?;
        request.headers_mut().insert("authorization", value);
    }
    let (ws, _) = tokio_tungstenite::connect_async(request)
        .await
        .map_err(|e| match e {
            tokio_tungstenite::tungstenite::Error::Http(resp) => ClientError::Refused {
                status: resp.status().as_u16(),
                body: resp
                    .body()
                    .as_ref()
                    .map(|b| String::from_utf8_lossy(b).into_owned())
                    .unwrap_or_default(),
            },
            other => ClientError::Connect {
                url: url.to_string(),
                source: Box::new(other),
            },
        })?;
    let (tx, rx) = ws.split();
    Ok((Sender { ws: tx }, Receiver { ws: rx }))
}

/// How [`connect_with_retry`] retries.
#[derive(Debug, Clone)]
pub struct Retry {
    /// Attempts in all (at least 1).
    pub attempts: u32,
    /// Wait before the second attempt; doubles after each failure.
    pub initial_backoff: Duration,
    /// Longest wait between attempts.
    pub max_backoff: Duration,
}

impl Default for Retry {
    fn default() -> Self {
        Retry {
            attempts: 5,
            initial_backoff: Duration::from_millis(250),
            max_backoff: Duration::from_secs(5),
        }
    }
}

impl ClientError {
    /// Whether trying again later may succeed: the server could not be reached, was still loading
    /// its models or was full (503), or rate-limited (429). A refused key (401), origin (403) or
    /// anything else the client must change is not retried.
    pub fn is_transient(&self) -> bool {
        match self {
            ClientError::Connect { .. } | ClientError::Socket(_) => true,
            ClientError::Refused { status, .. } => matches!(status, 429 | 502 | 503 | 504),
            ClientError::Decode(_) => false,
        }
    }
}

/// [`connect`], retried with exponential backoff while the error is transient (a server that is
/// restarting or still loading its models). Use it to reconnect after a dropped session; the new
/// session starts fresh, so send `session.update` again.
pub async fn connect_with_retry(
    url: &str,
    api_key: Option<&str>,
    retry: &Retry,
) -> Result<(Sender, Receiver), ClientError> {
    let mut wait = retry.initial_backoff;
    let mut attempt = 1;
    loop {
        match connect(url, api_key).await {
            Ok(pair) => return Ok(pair),
            Err(e) if e.is_transient() && attempt < retry.attempts.max(1) => {
                tracing::debug!(attempt, error = %e, "connect failed; retrying");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(retry.max_backoff);
                attempt += 1;
            }
            Err(e) => return Err(e),
        }
    }
}

fn pcm16_bytes(samples: &[f32]) -> Vec<u8> {
    samples
        .iter()
        .flat_map(|s| ((s.clamp(-1.0, 1.0) * 32767.0).round() as i16).to_le_bytes())
        .collect()
}

impl Sender {
    /// Sends a client event.
    pub async fn send(&mut self, event: &ClientEvent) -> Result<(), ClientError> {
        let text = serde_json::to_string(event).expect("client events serialise");
        self.send_text(text).await
    }

    /// Sends any text frame (for tests of malformed input).
    pub async fn send_text(&mut self, text: String) -> Result<(), ClientError> {
        self.ws
            .send(Message::Text(text.into()))
            .await
            .map_err(|e| ClientError::Socket(Box::new(e)))
    }

    /// Sends a binary frame (voxd's raw-audio extension).
    pub async fn send_binary(&mut self, bytes: Vec<u8>) -> Result<(), ClientError> {
        self.ws
            .send(Message::Binary(bytes.into()))
            .await
            .map_err(|e| ClientError::Socket(Box::new(e)))
    }

    /// `session.update` with a JSON session object.
    pub async fn update_session(&mut self, session: Value) -> Result<(), ClientError> {
        self.send(&ClientEvent::SessionUpdate { session }).await
    }

    /// Appends samples as PCM16, base64 in an `input_audio_buffer.append` event.
    pub async fn append(&mut self, samples: &[f32]) -> Result<(), ClientError> {
        let audio = base64::engine::general_purpose::STANDARD.encode(pcm16_bytes(samples));
        self.send(&ClientEvent::AppendAudio { audio }).await
    }

    /// Appends samples as PCM16 in a binary frame.
    pub async fn append_binary(&mut self, samples: &[f32]) -> Result<(), ClientError> {
        self.send_binary(pcm16_bytes(samples)).await
    }

    /// Appends as a binary frame or as an `append` event.
    pub async fn append_as(&mut self, samples: &[f32], binary: bool) -> Result<(), ClientError> {
        if binary {
            self.append_binary(samples).await
        } else {
            self.append(samples).await
        }
    }

    pub async fn commit(&mut self) -> Result<(), ClientError> {
        self.send(&ClientEvent::Commit).await
    }

    /// `response.create`: ask for an answer to the conversation so far (needed when turn
    /// detection is off or `create_response` is false).
    pub async fn create_response(&mut self) -> Result<(), ClientError> {
        self.send(&ClientEvent::ResponseCreate { response: None })
            .await
    }

    /// `response.cancel`: stop the answer in progress.
    pub async fn cancel_response(&mut self) -> Result<(), ClientError> {
        self.send(&ClientEvent::ResponseCancel { response_id: None })
            .await
    }

    /// Streams chunks of samples at the session's rate as they arrive (a microphone, a decoder,
    /// a file read in pieces); each chunk is one binary frame, or one `append` event without
    /// `binary`. Returns the number of samples sent once the stream ends.
    pub async fn stream_from<S>(&mut self, mut chunks: S, binary: bool) -> Result<u64, ClientError>
    where
        S: Stream<Item = Vec<f32>> + Unpin,
    {
        let mut sent = 0u64;
        while let Some(chunk) = chunks.next().await {
            if chunk.is_empty() {
                continue;
            }
            self.append_as(&chunk, binary).await?;
            sent += chunk.len() as u64;
        }
        Ok(sent)
    }

    /// Streams `samples` (at the session's rate) in `frame_ms` frames; with `paced`, at real-time
    /// speed, as a microphone would.
    pub async fn stream(
        &mut self,
        samples: &[f32],
        rate: u32,
        frame_ms: u32,
        paced: bool,
        binary: bool,
    ) -> Result<(), ClientError> {
        let frame = (rate * frame_ms / 1000).max(1) as usize;
        let start = tokio::time::Instant::now();
        for (i, chunk) in samples.chunks(frame).enumerate() {
            if paced {
                tokio::time::sleep_until(start + Duration::from_millis(i as u64 * frame_ms as u64))
                    .await;
            }
            self.append_as(chunk, binary).await?;
        }
        Ok(())
    }

    /// Closes the socket.
    pub async fn close(&mut self) -> Result<(), ClientError> {
        self.ws
            .close()
            .await
            .map_err(|e| ClientError::Socket(Box::new(e)))
    }
}

impl Receiver {
    /// The next message; `None` once the socket has ended.
    pub async fn next(&mut self) -> Option<Result<Incoming, ClientError>> {
        loop {
            let msg = match self.ws.next().await? {
                Ok(m) => m,
                Err(e) => return Some(Err(ClientError::Socket(Box::new(e)))),
            };
            return Some(match msg {
                Message::Text(t) => {
                    let v: Value = match serde_json::from_str(t.as_str()) {
                        Ok(v) => v,
                        Err(e) => return Some(Err(ClientError::Decode(e.to_string()))),
                    };
                    match serde_json::from_value::<ServerEvent>(v.clone()) {
                        Ok(e) => Ok(Incoming::Event(e)),
                        Err(_) => Ok(Incoming::Other(v)),
                    }
                }
                Message::Binary(bytes) => Ok(Incoming::Audio(bytes.to_vec())),
                Message::Close(frame) => Ok(Incoming::Closed {
                    code: frame.as_ref().map(|f| u16::from(f.code)).unwrap_or(1005),
                    reason: frame.map(|f| f.reason.to_string()).unwrap_or_default(),
                }),
                _ => continue,
            });
        }
    }
}
