//! The socket side of a session: reads the client's frames and hands them on in order (audio to
//! the audio stage, conversation and response requests to the hub), then closes the session
//! cleanly: at the idle or length limit, when the client is too slow, or at shutdown.

use std::time::Duration;

use axum::extract::ws::{Message, WebSocket};
use base64::Engine;
use futures::stream::StreamExt;
use futures::Sink;
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn, Instrument};

use super::audio_stage::{self, AudioInput, StageConfig};
use super::command::Command;
use super::hub::Hub;
use super::input::{decode_audio, send_audio, too_large};
use super::options::SessionOptions;
use super::out::{writer, Out, GOING_AWAY, NORMAL, TOO_BIG, TRY_AGAIN_LATER};
use super::Shared;
use crate::protocol::session::Eagerness;
use crate::protocol::{
    parse_client_event, ClientEvent, ProtocolError, ServerEvent, SessionConfig, SessionKind,
};
use crate::vad::{SemanticParams, VadParams};

fn stage_config(c: &SessionConfig) -> StageConfig {
    let semantic = c.semantic().map(|e| match e {
        Eagerness::Low => SemanticParams::low(),
        Eagerness::High => SemanticParams::high(),
        Eagerness::Medium | Eagerness::Auto => SemanticParams::medium(),
    });
    StageConfig {
        input_rate: c.input_format.rate(),
        // semantic_vad's silence window is its longest wait; the model ends turns sooner.
        vad: c.vad_params().map(|p| VadParams {
            silence_duration_ms: semantic.map_or(p.silence_duration_ms, |s| s.max_wait_ms),
            ..p
        }),
        engine: c.vad,
        semantic,
        interrupt_min_speech_ms: c.interrupt_min_speech_ms,
        partial_interval_ms: c.partial_interval_ms,
        speculative_after_ms: c.speculative_after_ms,
        idle_timeout_ms: c.turn_detection.and_then(|t| t.idle_timeout_ms),
    }
}

/// Runs a session on an upgraded socket until it closes.
pub async fn run(socket: WebSocket, shared: Shared, kind: SessionKind) {
    let (tx, rx) = socket.split();
    run_on(tx, rx, shared, kind).await
}

/// Runs a session on any transport that carries WebSocket messages: `rx` brings the client's
/// (text events, binary audio, close), `tx` takes the server's. A WebSocket is one; a WebRTC data
/// channel, adapted, is another.
pub async fn run_on<W, R, E>(tx: W, rx: R, shared: Shared, kind: SessionKind)
where
    W: Sink<Message> + Unpin + Send + 'static,
    R: futures::Stream<Item = Result<Message, E>> + Unpin,
    E: std::fmt::Display,
{
    let voices = shared
        .answering
        .as_ref()
        .and_then(|a| a.tts.as_ref())
        .map(|t| t.voices())
        .unwrap_or_default();
    let mut config = SessionConfig::new(kind, "voxd")
        .with_voices(voices)
        .with_turn_models(shared.turn_models.available(), shared.default_vad);
    if let Some(bound) = &shared.bound {
        // Checked when the secret was minted; a server whose voices or models changed since
        // may refuse it now, and then the session keeps the defaults, still locked.
        if let Err(e) = config.bind(bound) {
            warn!(error = %e.message, "the client secret's session configuration no longer applies");
            config.bound = true;
        }
    }
    let span = tracing::info_span!("session", id = %config.id);
    // Fused: the close handshake reads on after the client's stream has ended.
    session(tx, rx.fuse(), shared, config)
        .instrument(span)
        .await
}

async fn session<W, R, E>(ws_tx: W, mut ws_rx: R, shared: Shared, mut config: SessionConfig)
where
    W: Sink<Message> + Unpin + Send + 'static,
    R: futures::Stream<Item = Result<Message, E>> + Unpin,
    E: std::fmt::Display,
{
    let (out, out_rx) = Out::new(shared.limits.out_queue);
    let (close_tx, close_rx) = tokio::sync::oneshot::channel();
    let writer = tokio::spawn(writer(ws_tx, out_rx, close_rx).in_current_span());

    info!("session opened");

    let (audio_tx, audio_rx) = mpsc::channel(64);
    let (sig_tx, sig_rx) = mpsc::channel(64);
    if let Err(e) = audio_stage::spawn(
        stage_config(&config),
        shared.turn_models.clone(),
        audio_rx,
        sig_tx,
    ) {
        warn!(error = %e, "cannot start the audio stage");
        let _ = close_tx.send((TRY_AGAIN_LATER, "server cannot start a session"));
        let _ = writer.await;
        return;
    }
    let (opts_tx, opts_rx) = watch::channel(SessionOptions::of(&config));
    out.send(ServerEvent::SessionCreated {
        session: config.to_view(),
    });
    let hub = tokio::spawn(
        Hub::new(
            shared.asr.clone(),
            shared.answering.clone(),
            shared.answering_later.clone(),
            out.clone(),
            opts_rx,
            audio_tx.downgrade(),
        )
        .run(sig_rx)
        .in_current_span(),
    );

    let limits = shared.limits.clone();
    if let Some(view) = shared.key_session.as_ref().and_then(|k| k.view()) {
        out.send(rate_limits(view));
    }
    let mut client = Client {
        config: &mut config,
        audio_tx: &audio_tx,
        opts_tx: &opts_tx,
        out: &out,
        limits: &limits,
        key: shared.key_session.as_ref(),
        over_quota: false,
    };
    let (close, graceful) = client.read(&mut ws_rx, shared.shutdown.clone()).await;

    // Stop the audio stage; at shutdown let in-flight turns finish first.
    drop(audio_tx);
    if graceful {
        match tokio::time::timeout(limits.shutdown_grace, hub).await {
            Ok(_) => {}
            Err(_) => warn!("in-flight turns did not finish before the shutdown deadline"),
        }
    } else {
        hub.abort();
    }
    let _ = close_tx.send(close);
    drain(writer, &mut ws_rx).await;
    info!(code = close.0, "session closed");
}

/// The client's side of a session: what its frames act on.
struct Client<'a> {
    config: &'a mut SessionConfig,
    audio_tx: &'a mpsc::Sender<AudioInput>,
    opts_tx: &'a watch::Sender<SessionOptions>,
    out: &'a Out,
    limits: &'a super::Limits,
    /// The session's place under its API key's quota.
    key: Option<&'a crate::server::quotas::KeySession>,
    /// The key's audio minutes ran out (said once; later audio is dropped).
    over_quota: bool,
}

/// A `rate_limits.updated` event from a key's quota view.
fn rate_limits(view: serde_json::Value) -> ServerEvent {
    ServerEvent::RateLimitsUpdated {
        rate_limits: view["rate_limits"].clone(),
        voxd: Some(view["voxd"].clone()),
    }
}

impl Client<'_> {
    /// The client's side of the session: reads its frames until the session must close; returns
    /// the close code and reason, and whether the close is the server's shutdown (in-flight turns
    /// may then finish).
    async fn read<R, E>(
        &mut self,
        ws_rx: &mut R,
        mut shutdown: watch::Receiver<bool>,
    ) -> ((u16, &'static str), bool)
    where
        R: futures::Stream<Item = Result<Message, E>> + Unpin,
        E: std::fmt::Display,
    {
        let expires = tokio::time::sleep(self.limits.max_session);
        tokio::pin!(expires);
        let close: (u16, &'static str);
        let mut graceful = false;
        loop {
            tokio::select! {
                msg = tokio::time::timeout(self.limits.idle, ws_rx.next()) => {
                    let msg = match msg {
                        Err(_) => {
                            self.out.error(&ProtocolError::new("session_idle_timeout", "no message from the client for too long; closing"));
                            close = (NORMAL, "idle timeout");
                            break;
                        }
                        Ok(None) => { close = (NORMAL, ""); break; }
                        Ok(Some(Err(e))) => {
                            let text = e.to_string();
                            if text.contains("Space limit exceeded") || text.contains("too long") || text.contains("Message too big") {
                                close = (TOO_BIG, "message too large");
                            } else {
                                debug!(error = %text, "socket error");
                                close = (NORMAL, "");
                            }
                            break;
                        }
                        Ok(Some(Ok(m))) => m,
                    };
                    if !self.on_message(msg).await {
                        close = (NORMAL, "");
                        break;
                    }
                }
                _ = &mut expires => {
                    self.out.error(&ProtocolError::new("session_expired", format!("the session reached its maximum length of {} s", self.limits.max_session.as_secs())));
                    close = (NORMAL, "maximum session length reached");
                    break;
                }
                _ = self.out.overflow.notified() => {
                    close = (TRY_AGAIN_LATER, "client too slow: outgoing queue full");
                    break;
                }
                _ = async { let _ = shutdown.wait_for(|s| *s).await; } => {
                    close = (GOING_AWAY, "server shutting down");
                    graceful = true;
                    break;
                }
            }
        }
        (close, graceful)
    }

    /// Handles one frame; false when the session must end.
    async fn on_message(&mut self, msg: Message) -> bool {
        match msg {
            Message::Text(text) => self.handle_text(text.as_str()).await,
            Message::Binary(bytes) => {
                if bytes.len() > self.limits.max_append_bytes {
                    self.out
                        .error(&too_large(self.limits.max_append_bytes, None));
                    return true;
                }
                match decode_audio(&bytes, self.config.input_format) {
                    Ok(samples) if !self.admit(&samples, None) => true,
                    Ok(samples) => send_audio(self.audio_tx, samples).await,
                    Err(e) => {
                        self.out.error(&e);
                        true
                    }
                }
            }
            Message::Close(_) => false,
            Message::Ping(_) | Message::Pong(_) => true,
        }
    }

    /// Counts audio against the key's daily minutes; false (the audio is dropped) once they
    /// are used, which is said once with an error and `rate_limits.updated`.
    fn admit(&mut self, samples: &[f32], event_id: Option<String>) -> bool {
        let Some(key) = self.key else {
            return true;
        };
        if self.over_quota {
            return false;
        }
        let seconds = samples.len() as f64 / self.config.input_format.rate() as f64;
        match key.add_audio(seconds) {
            Ok(()) => true,
            Err(e) => {
                if !self.over_quota {
                    self.over_quota = true;
                    crate::metrics::global()
                        .quota_rejections
                        .inc_pair(&key.account(), e.limit());
                    self.out.error(
                        &ProtocolError::new(
                            e.code(),
                            format!("{e}: audio is no longer heard in this session"),
                        )
                        .param("audio")
                        .event(event_id),
                    );
                    if let Some(view) = key.view() {
                        self.out.send(rate_limits(view));
                    }
                }
                false
            }
        }
    }

    /// In a session bound by a client secret, a response may not bring its own instructions or
    /// tools: the error to answer with, if it tries.
    fn locked_in(&self, response: Option<&serde_json::Value>) -> Option<ProtocolError> {
        if !self.config.bound {
            return None;
        }
        let asked = response?.as_object()?;
        let key = crate::protocol::session::LOCKED
            .iter()
            .find(|k| **k != "type" && asked.contains_key(**k))?;
        Some(
            ProtocolError::new(
                "session_locked",
                format!(
                    "`response.{key}` is fixed by the client secret this session was opened with"
                ),
            )
            .param(format!("response.{key}")),
        )
    }

    /// Handles one text frame; false when the session must end.
    async fn handle_text(&mut self, text: &str) -> bool {
        let msg = match parse_client_event(text) {
            Ok(m) => m,
            Err(e) => {
                self.out.error(&e);
                return true;
            }
        };
        let event_id = msg.event_id.clone();
        let input = match msg.event {
            ClientEvent::SessionUpdate { session } => {
                let mcp_before = self.config.mcp.clone();
                if let Err(e) = self.config.apply_update(&session) {
                    self.out.error(&e.event(event_id));
                    return true;
                }
                let _ = self.opts_tx.send(SessionOptions::of(self.config));
                self.out.send(ServerEvent::SessionUpdated {
                    session: self.config.to_view(),
                });
                // Attached MCP servers are listed after `session.updated`.
                if self.config.mcp != mcp_before {
                    let servers = self.config.mcp.clone();
                    let attach = AudioInput::Client(Command::AttachMcp { servers });
                    if self.audio_tx.send(attach).await.is_err() {
                        return false;
                    }
                }
                if !self.config.ignored.is_empty() {
                    info!(ignored = ?self.config.ignored, "session.update asked for what voxd does not do");
                }
                AudioInput::Configure(stage_config(self.config))
            }
            ClientEvent::AppendAudio { audio } => {
                // Check the size before decoding: base64 is 4 bytes for every 3.
                if audio.len() / 4 * 3 > self.limits.max_append_bytes {
                    self.out
                        .error(&too_large(self.limits.max_append_bytes, event_id));
                    return true;
                }
                let bytes = match base64::engine::general_purpose::STANDARD.decode(audio.as_bytes())
                {
                    Ok(b) => b,
                    Err(e) => {
                        self.out.error(
                            &ProtocolError::new(
                                "invalid_base64",
                                format!("`audio` is not valid base64: {e}"),
                            )
                            .param("audio")
                            .event(event_id),
                        );
                        return true;
                    }
                };
                match decode_audio(&bytes, self.config.input_format) {
                    Ok(s) if !self.admit(&s, event_id.clone()) => return true,
                    Ok(s) => return send_audio(self.audio_tx, s).await,
                    Err(e) => {
                        self.out.error(&e.event(event_id));
                        return true;
                    }
                }
            }
            ClientEvent::Commit => AudioInput::Commit { event_id },
            ClientEvent::Clear => AudioInput::Clear { event_id },
            ClientEvent::ResponseCreate { .. }
            | ClientEvent::ResponseCancel { .. }
            | ClientEvent::ItemCreate { .. }
            | ClientEvent::ItemTruncate { .. }
                if self.config.kind == SessionKind::Transcription =>
            {
                self.out.error(
                    &ProtocolError::new(
                        "responses_unavailable",
                        "a transcription session does not create responses",
                    )
                    .event(event_id),
                );
                return true;
            }
            ClientEvent::ResponseCreate { response } => {
                if let Some(e) = self.locked_in(response.as_ref()) {
                    self.out.error(&e.event(event_id));
                    return true;
                }
                AudioInput::Client(Command::CreateResponse { event_id, response })
            }
            ClientEvent::ResponseCancel { .. } => AudioInput::Client(Command::Cancel { event_id }),
            ClientEvent::ItemCreate {
                item,
                previous_item_id,
            } => AudioInput::Client(Command::CreateItem {
                event_id,
                item,
                previous_item_id,
            }),
            ClientEvent::ItemRetrieve { item_id } => {
                AudioInput::Client(Command::Retrieve { event_id, item_id })
            }
            ClientEvent::ItemDelete { item_id } => {
                AudioInput::Client(Command::Delete { event_id, item_id })
            }
            ClientEvent::ItemTruncate {
                item_id,
                audio_end_ms,
                ..
            } => AudioInput::Client(Command::Truncate {
                event_id,
                item_id,
                audio_end_ms,
            }),
        };
        self.audio_tx.send(input).await.is_ok()
    }
}

/// Keeps reading (and dropping) what the client sends until the writer has sent the close
/// frame and the client has answered it: a socket closed with unread input is reset, and the
/// reset would destroy the events and close frame still waiting in the client's buffers.
async fn drain<R, E>(mut writer: tokio::task::JoinHandle<()>, ws_rx: &mut R)
where
    R: futures::Stream<Item = Result<Message, E>> + Unpin,
{
    let mut writer_done = false;
    let deadline = tokio::time::sleep(Duration::from_secs(35));
    tokio::pin!(deadline);
    let mut reading = true;
    while reading || !writer_done {
        tokio::select! {
            _ = &mut writer, if !writer_done => {
                writer_done = true;
                // The close frame is out: give the client a moment to answer it.
                deadline.as_mut().reset(tokio::time::Instant::now() + Duration::from_secs(5));
            }
            m = ws_rx.next(), if reading => reading = matches!(m, Some(Ok(_))),
            _ = &mut deadline => {
                writer.abort();
                break;
            }
        }
    }
}
