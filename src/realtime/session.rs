//! The tasks of one session: reader (this function's own loop), hub and writer.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use base64::Engine;
use futures::stream::{SplitSink, StreamExt};
use futures::SinkExt;
use tokio::sync::{mpsc, watch, Notify};
use tracing::{debug, info, warn, Instrument};

use super::audio_stage::{self, AudioInput, AudioSignal, StageConfig};
use super::partials::Partials;
use super::responses::{
    self, Answering, ConvItem, Finished, Prepared, ResponseJob, ResponseParams,
};
use super::Shared;
use crate::asr::{Asr, AsrError, Priority, Request, Transcript};
use crate::audio::g711::Law;
use crate::prompt::Role;
use crate::protocol::server::TurnTiming;
use crate::protocol::{
    new_id, parse_client_event, ClientEvent, InputFormat, Item, ProtocolError, ServerEvent,
    SessionConfig, SessionKind,
};

/// Most conversation items a session keeps (older ones are forgotten).
pub const MAX_ITEMS: usize = 512;
/// Most text a session's conversation keeps, in bytes (older items are forgotten).
pub const MAX_CONVERSATION_BYTES: usize = 1 << 20;
/// Longest text of one conversation item, in bytes.
pub const MAX_ITEM_BYTES: usize = 100_000;
/// Most samples in one message to the audio stage: a large append is split, so the bounded
/// queue to the stage holds at most 64 of these (4 MiB) per session.
const AUDIO_CHUNK: usize = 16_384;

/// Turns of one session that may wait for their final transcript at once; more fail with
/// `server_busy`.
pub const MAX_PENDING_TURNS: usize = 4;

/// Close codes.
const NORMAL: u16 = 1000;
const GOING_AWAY: u16 = 1001;
const TOO_BIG: u16 = 1009;
const TRY_AGAIN_LATER: u16 = 1013;

enum Outgoing {
    Event(ServerEvent),
    Close(u16, &'static str),
}

/// The sending side of the outgoing queue; a full queue ends the session.
#[derive(Clone)]
pub(crate) struct Out {
    tx: mpsc::Sender<Outgoing>,
    overflowed: Arc<AtomicBool>,
    overflow: Arc<Notify>,
}

impl Out {
    /// Queues an event; false when the queue is full (the session is ending) or closed.
    pub(crate) fn send(&self, e: ServerEvent) -> bool {
        if let ServerEvent::Error { error } = &e {
            crate::metrics::global()
                .errors
                .inc(error.code.as_deref().unwrap_or(&error.kind));
        }
        match self.tx.try_send(Outgoing::Event(e)) {
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

    fn error(&self, e: &ProtocolError) -> bool {
        debug!(code = e.code, message = %e.message, "client error");
        self.send(ServerEvent::error(e))
    }
}

/// Options the hub reads from the current session configuration.
#[derive(Debug, Clone, Default)]
struct AsrOptions {
    language: Option<String>,
    prompt: Option<String>,
    realtime: bool,
    instructions: String,
    create_response: bool,
    interrupt_response: bool,
    max_output_tokens: Option<u32>,
    citations_event: bool,
    knowledge_base: bool,
    modalities: Vec<String>,
}

fn stage_config(c: &SessionConfig) -> StageConfig {
    StageConfig {
        input_rate: c.input_format.rate(),
        vad: c.vad_params(),
        partial_interval_ms: c.partial_interval_ms,
        speculative_after_ms: c.speculative_after_ms,
        idle_timeout_ms: c.turn_detection.and_then(|t| t.idle_timeout_ms),
    }
}

fn asr_options(c: &SessionConfig) -> AsrOptions {
    AsrOptions {
        language: c.language.clone(),
        prompt: c.prompt.clone(),
        realtime: c.kind == SessionKind::Realtime,
        instructions: c.instructions.clone(),
        // Without server VAD there is no turn to respond to automatically.
        create_response: c.turn_detection.is_some_and(|t| t.create_response),
        interrupt_response: c.turn_detection.is_some_and(|t| t.interrupt_response),
        max_output_tokens: c.max_output_tokens,
        citations_event: c.citations_event,
        knowledge_base: c.knowledge_base,
        modalities: c.output_modalities.clone(),
    }
}

/// Conversation and response requests from the client, for the hub.
enum Command {
    CreateResponse {
        event_id: Option<String>,
        response: Option<serde_json::Value>,
    },
    Cancel {
        event_id: Option<String>,
    },
    CreateItem {
        event_id: Option<String>,
        item: serde_json::Value,
    },
    Truncate {
        event_id: Option<String>,
        item_id: String,
        audio_end_ms: u64,
    },
}

/// Runs a session on an upgraded socket until it closes.
pub async fn run(socket: WebSocket, shared: Shared, kind: SessionKind) {
    let config = SessionConfig::new(kind, "voxd");
    let span = tracing::info_span!("session", id = %config.id);
    session(socket, shared, config).instrument(span).await
}

async fn session(socket: WebSocket, shared: Shared, mut config: SessionConfig) {
    let (ws_tx, mut ws_rx) = socket.split();
    let (out_tx, out_rx) = mpsc::channel(shared.limits.out_queue);
    let (close_tx, close_rx) = tokio::sync::oneshot::channel();
    let writer = tokio::spawn(writer(ws_tx, out_rx, close_rx).in_current_span());
    let out = Out {
        tx: out_tx,
        overflowed: Arc::new(AtomicBool::new(false)),
        overflow: Arc::new(Notify::new()),
    };

    info!("session opened");

    let (audio_tx, audio_rx) = mpsc::channel(64);
    let (sig_tx, sig_rx) = mpsc::channel(64);
    if let Err(e) = audio_stage::spawn(stage_config(&config), audio_rx, sig_tx) {
        warn!(error = %e, "cannot start the audio stage");
        let _ = close_tx.send((TRY_AGAIN_LATER, "server cannot start a session"));
        let _ = writer.await;
        return;
    }
    let (opts_tx, opts_rx) = watch::channel(asr_options(&config));
    out.send(ServerEvent::SessionCreated {
        session: config.to_view(),
    });
    let (cmd_tx, cmd_rx) = mpsc::channel(32);
    let hub = tokio::spawn(
        Hub::new(
            shared.asr.clone(),
            shared.answering.clone(),
            out.clone(),
            opts_rx,
        )
        .run(sig_rx, cmd_rx)
        .in_current_span(),
    );

    let limits = shared.limits.clone();
    let mut shutdown = shared.shutdown.clone();
    let expires = tokio::time::sleep(limits.max_session);
    tokio::pin!(expires);
    let close: (u16, &'static str);
    let mut graceful = false;
    loop {
        tokio::select! {
            msg = tokio::time::timeout(limits.idle, ws_rx.next()) => {
                let msg = match msg {
                    Err(_) => {
                        out.error(&ProtocolError::new("session_idle_timeout", "no message from the client for too long; closing"));
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
                match msg {
                    Message::Text(text) => {
                        if !handle_text(text.as_str(), &mut config, &audio_tx, &cmd_tx, &opts_tx, &out, &limits).await {
                            close = (NORMAL, "");
                            break;
                        }
                    }
                    Message::Binary(bytes) => {
                        if bytes.len() > limits.max_append_bytes {
                            out.error(&too_large(limits.max_append_bytes, None));
                            continue;
                        }
                        match decode_audio(&bytes, config.input_format) {
                            Ok(samples) => if !send_audio(&audio_tx, samples).await { close = (NORMAL, ""); break; },
                            Err(e) => { out.error(&e); }
                        }
                    }
                    Message::Close(_) => { close = (NORMAL, ""); break; }
                    Message::Ping(_) | Message::Pong(_) => {}
                }
            }
            _ = &mut expires => {
                out.error(&ProtocolError::new("session_expired", format!("the session reached its maximum length of {} s", limits.max_session.as_secs())));
                close = (NORMAL, "maximum session length reached");
                break;
            }
            _ = out.overflow.notified() => {
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

    // Stop the audio stage; at shutdown let in-flight turns finish first.
    drop(audio_tx);
    drop(cmd_tx);
    if graceful {
        match tokio::time::timeout(limits.shutdown_grace, hub).await {
            Ok(_) => {}
            Err(_) => warn!("in-flight turns did not finish before the shutdown deadline"),
        }
    } else {
        hub.abort();
    }
    let _ = close_tx.send(close);
    // Keep reading (and dropping) what the client sends until the writer has sent the close
    // frame and the client has answered it: a socket closed with unread input is reset, and the
    // reset would destroy the events and close frame still waiting in the client's buffers.
    let mut writer = writer;
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
    info!(code = close.0, "session closed");
}

/// Handles one text frame; false when the session must end.
async fn handle_text(
    text: &str,
    config: &mut SessionConfig,
    audio_tx: &mpsc::Sender<AudioInput>,
    cmd_tx: &mpsc::Sender<Command>,
    opts_tx: &watch::Sender<AsrOptions>,
    out: &Out,
    limits: &super::Limits,
) -> bool {
    let msg = match parse_client_event(text) {
        Ok(m) => m,
        Err(e) => {
            out.error(&e);
            return true;
        }
    };
    let event_id = msg.event_id.clone();
    let input = match msg.event {
        ClientEvent::SessionUpdate { session } => {
            if let Err(e) = config.apply_update(&session) {
                out.error(&e.event(event_id));
                return true;
            }
            let _ = opts_tx.send(asr_options(config));
            out.send(ServerEvent::SessionUpdated {
                session: config.to_view(),
            });
            if config.output_modalities.iter().any(|m| m == "audio") {
                out.send(ServerEvent::server_error(
                    "audio_output_unsupported",
                    "voxd does not synthesise speech yet: responses are sent as text (response.output_text.*)",
                ));
            }
            AudioInput::Configure(stage_config(config))
        }
        ClientEvent::AppendAudio { audio } => {
            // Check the size before decoding: base64 is 4 bytes for every 3.
            if audio.len() / 4 * 3 > limits.max_append_bytes {
                out.error(&too_large(limits.max_append_bytes, event_id));
                return true;
            }
            let bytes = match base64::engine::general_purpose::STANDARD.decode(audio.as_bytes()) {
                Ok(b) => b,
                Err(e) => {
                    out.error(
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
            match decode_audio(&bytes, config.input_format) {
                Ok(s) => return send_audio(audio_tx, s).await,
                Err(e) => {
                    out.error(&e.event(event_id));
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
            if config.kind == SessionKind::Transcription =>
        {
            out.error(
                &ProtocolError::new(
                    "responses_unavailable",
                    "a transcription session does not create responses",
                )
                .event(event_id),
            );
            return true;
        }
        ClientEvent::ResponseCreate { response } => {
            return cmd_tx
                .send(Command::CreateResponse { event_id, response })
                .await
                .is_ok()
        }
        ClientEvent::ResponseCancel { .. } => {
            return cmd_tx.send(Command::Cancel { event_id }).await.is_ok()
        }
        ClientEvent::ItemCreate { item, .. } => {
            return cmd_tx
                .send(Command::CreateItem { event_id, item })
                .await
                .is_ok()
        }
        ClientEvent::ItemTruncate {
            item_id,
            audio_end_ms,
            ..
        } => {
            return cmd_tx
                .send(Command::Truncate {
                    event_id,
                    item_id,
                    audio_end_ms,
                })
                .await
                .is_ok()
        }
    };
    audio_tx.send(input).await.is_ok()
}

/// The error for an append (JSON or binary) over the byte limit.
fn too_large(limit: usize, event_id: Option<String>) -> ProtocolError {
    ProtocolError::new(
        "audio_too_large",
        format!("one append may carry at most {limit} bytes of audio"),
    )
    .param("audio")
    .event(event_id)
}

/// Sends samples to the audio stage in chunks of at most [`AUDIO_CHUNK`], waiting while its
/// queue is full; false once the stage has gone.
async fn send_audio(audio_tx: &mpsc::Sender<AudioInput>, samples: Vec<f32>) -> bool {
    if samples.len() <= AUDIO_CHUNK {
        return samples.is_empty() || audio_tx.send(AudioInput::Audio(samples)).await.is_ok();
    }
    for chunk in samples.chunks(AUDIO_CHUNK) {
        if audio_tx
            .send(AudioInput::Audio(chunk.to_vec()))
            .await
            .is_err()
        {
            return false;
        }
    }
    true
}

/// Decodes raw audio bytes in the session's input format (PCM16 little-endian, G.711 μ-law or
/// A-law) to samples in [-1, 1].
pub fn decode_audio(bytes: &[u8], format: InputFormat) -> Result<Vec<f32>, ProtocolError> {
    crate::metrics::global()
        .audio_bytes_in
        .add(bytes.len() as u64);
    match format {
        InputFormat::Pcm16 { .. } => {
            if bytes.len() % 2 != 0 {
                return Err(ProtocolError::new(
                    "invalid_audio_length",
                    format!(
                        "PCM16 audio needs an even number of bytes, got {}",
                        bytes.len()
                    ),
                )
                .param("audio"));
            }
            Ok(bytes
                .chunks_exact(2)
                .map(|b| i16::from_le_bytes([b[0], b[1]]) as f32 / 32768.0)
                .collect())
        }
        InputFormat::Pcmu | InputFormat::Pcma => {
            let law = if format == InputFormat::Pcmu {
                Law::Mu
            } else {
                Law::A
            };
            let mut out = Vec::with_capacity(bytes.len());
            law.decode_into(bytes, &mut out);
            Ok(out)
        }
    }
}

async fn writer(
    mut tx: SplitSink<WebSocket, Message>,
    mut rx: mpsc::Receiver<Outgoing>,
    mut close: tokio::sync::oneshot::Receiver<(u16, &'static str)>,
) {
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum JobKind {
    Partial,
    Speculative(u64),
    Final,
}

struct JobResult {
    turn: u64,
    kind: JobKind,
    result: Result<Transcript, AsrError>,
}

/// The turn being spoken.
struct Turn {
    seq: u64,
    item_id: String,
    partials: Partials,
    partial_in_flight: bool,
    queued_partial: Option<Vec<f32>>,
    speculation: Option<u64>,
    speculative_result: Option<Result<Transcript, AsrError>>,
}

impl Turn {
    fn new(seq: u64) -> Self {
        Turn {
            seq,
            item_id: new_id("item"),
            partials: Partials::default(),
            partial_in_flight: false,
            queued_partial: None,
            speculation: None,
            speculative_result: None,
        }
    }
}

/// A turn that ended and waits for its final transcript (kept in order).
struct Ending {
    seq: u64,
    item_id: String,
    previous_item_id: Option<String>,
    partials: Partials,
    speech_end_ms: Option<u64>,
    /// When the hub heard that the person stopped (VAD turns only).
    stopped_at: Option<std::time::Instant>,
    waiting_for: Option<u64>,
    result: Option<Result<Transcript, AsrError>>,
    speculative: bool,
}

/// The response being generated.
struct ActiveResponse {
    id: String,
    cancel: Option<tokio::sync::oneshot::Sender<&'static str>>,
}

struct Hub {
    asr: Arc<dyn Asr>,
    out: Out,
    opts: watch::Receiver<AsrOptions>,
    results_tx: mpsc::Sender<JobResult>,
    results_rx: mpsc::Receiver<JobResult>,
    seq: u64,
    speculation_seq: u64,
    current: Option<Turn>,
    ending: VecDeque<Ending>,
    last_item: Option<String>,
    answering: Option<Answering>,
    conversation: Vec<ConvItem>,
    active: Option<ActiveResponse>,
    finished_tx: mpsc::Sender<Finished>,
    finished_rx: mpsc::Receiver<Finished>,
    prepared_tx: mpsc::Sender<Prepared>,
    prepared_rx: mpsc::Receiver<Prepared>,
    prepared: Option<Prepared>,
    /// The early retrieval and prefill under way; aborted when the session ends. (Not when the
    /// person goes on talking: the passages usually stay the same, so the prefix it caches still
    /// serves the final question.)
    preparing: Option<tokio::task::JoinHandle<()>>,
    /// Where each running response's answer goes in the conversation: right after what it
    /// answers, even if the person has spoken again since.
    answer_slots: std::collections::HashMap<String, usize>,
}

impl Drop for Hub {
    fn drop(&mut self) {
        self.stop_preparing();
    }
}

impl Hub {
    fn new(
        asr: Arc<dyn Asr>,
        answering: Option<Answering>,
        out: Out,
        opts: watch::Receiver<AsrOptions>,
    ) -> Self {
        let (results_tx, results_rx) = mpsc::channel(32);
        let (finished_tx, finished_rx) = mpsc::channel(4);
        let (prepared_tx, prepared_rx) = mpsc::channel(4);
        Hub {
            asr,
            answering,
            conversation: Vec::new(),
            active: None,
            finished_tx,
            finished_rx,
            prepared_tx,
            prepared_rx,
            prepared: None,
            preparing: None,
            answer_slots: std::collections::HashMap::new(),
            out,
            opts,
            results_tx,
            results_rx,
            seq: 0,
            speculation_seq: 0,
            current: None,
            ending: VecDeque::new(),
            last_item: None,
        }
    }

    async fn run(
        mut self,
        mut signals: mpsc::Receiver<AudioSignal>,
        mut commands: mpsc::Receiver<Command>,
    ) {
        let mut signals_open = true;
        let mut commands_open = true;
        loop {
            tokio::select! {
                s = signals.recv(), if signals_open => match s {
                    Some(s) => if !self.signal(s) { return },
                    None => signals_open = false,
                },
                c = commands.recv(), if commands_open => match c {
                    Some(c) => if !self.command(c) { return },
                    None => commands_open = false,
                },
                Some(r) = self.results_rx.recv() => if !self.result(r) { return },
                Some(f) = self.finished_rx.recv() => self.finished(f),
                Some(p) = self.prepared_rx.recv() => self.prepared = Some(p),
            }
            if !signals_open && self.ending.is_empty() && self.active.is_none() {
                return;
            }
        }
    }

    fn cancel_active(&mut self, reason: &'static str) -> bool {
        match self.active.as_mut().and_then(|a| a.cancel.take()) {
            Some(tx) => {
                debug!(reason, "cancelling the response");
                let _ = tx.send(reason);
                true
            }
            None => false,
        }
    }

    fn finished(&mut self, f: Finished) {
        if self.active.as_ref().is_some_and(|a| a.id == f.response_id) {
            self.active = None;
        }
        let slot = self
            .answer_slots
            .remove(&f.response_id)
            .unwrap_or(self.conversation.len())
            .min(self.conversation.len());
        if !f.text.trim().is_empty() {
            // Later answers' places move down by the one inserted before them.
            for s in self.answer_slots.values_mut().filter(|s| **s >= slot) {
                *s += 1;
            }
            self.conversation.insert(
                slot,
                ConvItem {
                    id: f.item_id,
                    role: Role::Assistant,
                    text: f.text,
                },
            );
            self.trim_conversation();
        }
        debug!(response = %f.response_id, status = f.status, "response ended");
    }

    /// Keeps the conversation within [`MAX_ITEMS`] and [`MAX_CONVERSATION_BYTES`] by forgetting
    /// the oldest items (the prompt only ever uses the newest ones), so a long or hostile session
    /// cannot grow without bound.
    fn trim_conversation(&mut self) {
        let mut bytes: usize = self.conversation.iter().map(|i| i.text.len()).sum();
        let mut drop = 0;
        while self.conversation.len() - drop > 1
            && (self.conversation.len() - drop > MAX_ITEMS || bytes > MAX_CONVERSATION_BYTES)
        {
            bytes -= self.conversation[drop].text.len();
            drop += 1;
        }
        if drop == 0 {
            return;
        }
        self.conversation.drain(..drop);
        for slot in self.answer_slots.values_mut() {
            *slot = slot.saturating_sub(drop);
        }
        debug!(
            forgotten = drop,
            kept = self.conversation.len(),
            "conversation at its limit: oldest items forgotten"
        );
    }

    /// Starts a response to the latest user message.
    fn start_response(
        &mut self,
        event_id: Option<String>,
        overrides: Option<&serde_json::Value>,
        stopped_at: Option<std::time::Instant>,
    ) -> bool {
        let Some(answering) = self.answering.clone() else {
            return self.out.send(ServerEvent::server_error(
                "llm_unavailable",
                "the language model is not loaded (still loading, or it failed to load)",
            ));
        };
        if self.active.is_some() {
            return self.out.error(
                &ProtocolError::new(
                    "conversation_already_has_active_response",
                    "a response is in progress; cancel it first (response.cancel)",
                )
                .event(event_id),
            );
        }
        let Some(pos) = self.conversation.iter().rposition(|i| i.role == Role::User) else {
            return self.out.error(
                &ProtocolError::new(
                    "response_needs_input",
                    "there is no user message to respond to: speak, or add one with conversation.item.create",
                )
                .event(event_id),
            );
        };
        let opts = self.opts.borrow().clone();
        let get = |k: &str| overrides.and_then(|o| o.get(k));
        if let Some(text) = get("instructions").and_then(|v| v.as_str()) {
            if let Err(e) = crate::protocol::session::check_model_text(
                text,
                crate::protocol::session::MAX_INSTRUCTIONS_BYTES,
                "response.instructions",
            ) {
                return self.out.error(&e.event(event_id));
            }
        }
        let instructions = get("instructions")
            .and_then(|v| v.as_str())
            .map(str::to_string)
            .filter(|s| !s.trim().is_empty())
            .or_else(|| Some(opts.instructions.clone()).filter(|s| !s.trim().is_empty()))
            .unwrap_or_else(|| answering.settings.instructions.clone());
        let max_tokens = get("max_output_tokens")
            .and_then(|v| v.as_u64())
            .map(|n| n.clamp(1, 4096) as usize)
            .or(opts.max_output_tokens.map(|n| n as usize))
            .unwrap_or(answering.settings.max_tokens);
        let user = self.conversation[pos].text.clone();
        let history = responses::history(&self.conversation[..pos]);
        let prepared = self.prepared.take().filter(|p| p.question == user);
        let (cancel_tx, cancel_rx) = tokio::sync::oneshot::channel();
        let response_id = new_id("resp");
        self.answer_slots.insert(response_id.clone(), pos + 1);
        self.active = Some(ActiveResponse {
            id: response_id.clone(),
            cancel: Some(cancel_tx),
        });
        // Follow one turn's answer through the logs: session id (outer span), response id and
        // the user item it answers.
        let span = tracing::info_span!(
            "response",
            id = %response_id,
            answers = %self.conversation[pos].id,
            status = tracing::field::Empty,
            first_token_ms = tracing::field::Empty,
            prompt_tokens = tracing::field::Empty,
            cached_tokens = tracing::field::Empty,
            output_tokens = tracing::field::Empty,
        );
        let job = ResponseJob {
            response_id,
            item_id: new_id("item"),
            params: ResponseParams {
                instructions,
                max_tokens,
                use_kb: opts.knowledge_base,
                citations_event: opts.citations_event,
                modalities: opts.modalities.clone(),
            },
            history,
            user,
            prepared,
            speech_stopped_at: stopped_at,
        };
        tokio::spawn(
            responses::run(
                job,
                answering,
                self.out.clone(),
                cancel_rx,
                self.finished_tx.clone(),
            )
            .instrument(span),
        );
        true
    }

    /// Retrieves and prefills for what the person seems to have asked, while they pause.
    fn prepare(&mut self, question: String) {
        let opts = self.opts.borrow().clone();
        let Some(answering) = self
            .answering
            .clone()
            .filter(|_| opts.realtime && opts.create_response)
        else {
            return;
        };
        if question.trim().is_empty() {
            return;
        }
        let history = responses::history(&self.conversation);
        let tx = self.prepared_tx.clone();
        let instructions = if opts.instructions.trim().is_empty() {
            answering.settings.instructions.clone()
        } else {
            opts.instructions.clone()
        };
        self.preparing = Some(tokio::spawn(
            async move {
                let results = if opts.knowledge_base {
                    match responses::retrieve(answering.kb.as_ref(), &question).await {
                        Ok(r) => r,
                        // The response retries, and says it cannot look it up if that fails too.
                        Err(_) => return,
                    }
                } else {
                    None
                };
                let mut msgs =
                    responses::messages(&answering, &instructions, &results, &history, &question);
                let _ = tx.send(Prepared { question, results }).await;
                msgs.pop(); // everything but the question
                if let Err(e) = answering.llm.prefill(msgs).await {
                    debug!(error = %e, "early prefill failed");
                }
            }
            .instrument(tracing::info_span!("prepare")),
        ));
    }

    /// Aborts the early prefill under way, if any.
    fn stop_preparing(&mut self) {
        if let Some(task) = self.preparing.take() {
            task.abort();
        }
    }

    fn command(&mut self, c: Command) -> bool {
        match c {
            Command::CreateResponse { event_id, response } => {
                self.start_response(event_id, response.as_ref(), None)
            }
            Command::Cancel { event_id } => {
                if self.cancel_active("client_cancelled") {
                    true
                } else {
                    self.out.error(
                        &ProtocolError::new(
                            "response_cancel_not_active",
                            "there is no response in progress to cancel",
                        )
                        .event(event_id),
                    )
                }
            }
            Command::CreateItem { event_id, item } => match parse_item(&item) {
                Ok((role, text, id)) => {
                    let id = id.unwrap_or_else(|| new_id("item"));
                    let previous_item_id = self.last_item.replace(id.clone());
                    self.conversation.push(ConvItem {
                        id: id.clone(),
                        role,
                        text: text.clone(),
                    });
                    self.trim_conversation();
                    let item = Item::text(&id, role.as_str(), &text, "completed");
                    self.out.send(ServerEvent::ItemAdded {
                        previous_item_id: previous_item_id.clone(),
                        item: item.clone(),
                    }) && self.out.send(ServerEvent::ItemDone {
                        previous_item_id,
                        item,
                    })
                }
                Err(message) => self.out.error(
                    &ProtocolError::new("invalid_item", message)
                        .param("item")
                        .event(event_id),
                ),
            },
            Command::Truncate {
                event_id,
                item_id,
                audio_end_ms,
            } => {
                let Some(item) = self
                    .conversation
                    .iter_mut()
                    .find(|i| i.id == item_id && i.role == Role::Assistant)
                else {
                    return self.out.error(
                        &ProtocolError::new(
                            "item_truncate_invalid_item_id",
                            format!("no assistant message `{item_id}` to truncate"),
                        )
                        .param("item_id")
                        .event(event_id),
                    );
                };
                item.text = truncate_spoken(&item.text, audio_end_ms);
                self.out.send(ServerEvent::ItemTruncated {
                    item_id,
                    content_index: 0,
                    audio_end_ms,
                })
            }
        }
    }

    fn spawn_job(&self, turn: u64, kind: JobKind, samples: Vec<f32>) {
        let opts = self.opts.borrow().clone();
        let request = Request {
            samples,
            language: opts.language,
            prompt: opts.prompt,
            priority: if kind == JobKind::Partial {
                Priority::Partial
            } else {
                Priority::Final
            },
        };
        let asr = self.asr.clone();
        let tx = self.results_tx.clone();
        // Signed: OTLP has no unsigned integers (a u64 would be exported as a string).
        let span = tracing::info_span!("asr", turn = turn as i64, kind = ?kind);
        tokio::spawn(
            async move {
                let result = asr.transcribe(request).await;
                let _ = tx.send(JobResult { turn, kind, result }).await;
            }
            .instrument(span),
        );
    }

    fn signal(&mut self, s: AudioSignal) -> bool {
        match s {
            AudioSignal::SpeechStarted { audio_start_ms } => {
                if self.opts.borrow().interrupt_response {
                    self.cancel_active("turn_detected");
                }
                self.prepared = None;
                self.seq += 1;
                let item_id = new_id("item");
                self.current = Some(Turn {
                    seq: self.seq,
                    item_id: item_id.clone(),
                    partials: Partials::default(),
                    partial_in_flight: false,
                    queued_partial: None,
                    speculation: None,
                    speculative_result: None,
                });
                self.out.send(ServerEvent::SpeechStarted {
                    audio_start_ms,
                    item_id,
                })
            }
            AudioSignal::Partial { audio } => {
                if let Some(t) = self.current.as_mut() {
                    if t.partial_in_flight {
                        t.queued_partial = Some(audio);
                    } else {
                        t.partial_in_flight = true;
                        let seq = t.seq;
                        self.spawn_job(seq, JobKind::Partial, audio);
                    }
                }
                true
            }
            AudioSignal::Speculate { audio } => {
                if let Some(t) = self.current.as_mut() {
                    self.speculation_seq += 1;
                    t.speculation = Some(self.speculation_seq);
                    t.speculative_result = None;
                    let (seq, id) = (t.seq, self.speculation_seq);
                    self.spawn_job(seq, JobKind::Speculative(id), audio);
                }
                true
            }
            AudioSignal::Resumed => {
                if let Some(t) = self.current.as_mut() {
                    t.speculation = None;
                    t.speculative_result = None;
                }
                true
            }
            AudioSignal::SpeechStopped {
                audio_end_ms,
                last_voice_ms,
                audio,
            } => {
                let Some(turn) = self.current.take() else {
                    return true;
                };
                let ok = self.out.send(ServerEvent::SpeechStopped {
                    audio_end_ms,
                    item_id: turn.item_id.clone(),
                });
                ok && self.end_turn(turn, Some(last_voice_ms), audio)
            }
            AudioSignal::Committed {
                event_id, audio, ..
            } => {
                let turn = self.current.take();
                if audio.is_empty() {
                    return self.out.error(
                        &ProtocolError::new(
                            "input_audio_buffer_commit_empty",
                            "there is no audio to commit",
                        )
                        .event(event_id),
                    );
                }
                let turn = turn.unwrap_or_else(|| {
                    self.seq += 1;
                    Turn::new(self.seq)
                });
                // A manual commit never uses a speculative result: the audio may continue past it.
                let turn = Turn {
                    speculation: None,
                    speculative_result: None,
                    ..turn
                };
                self.end_turn(turn, None, audio)
            }
            AudioSignal::Cleared { .. } => {
                self.current = None;
                self.out.send(ServerEvent::Cleared)
            }
            AudioSignal::IdleTimeout {
                audio_start_ms,
                audio_end_ms,
            } => self.out.send(ServerEvent::TimeoutTriggered {
                audio_start_ms,
                audio_end_ms,
                item_id: new_id("item"),
            }),
        }
    }

    /// Commits a turn and gets (or reuses) its final transcript.
    fn end_turn(&mut self, turn: Turn, speech_end_ms: Option<u64>, audio: Vec<f32>) -> bool {
        let previous_item_id = self.last_item.replace(turn.item_id.clone());
        let ok = self.out.send(ServerEvent::Committed {
            previous_item_id: previous_item_id.clone(),
            item_id: turn.item_id.clone(),
        }) && self.out.send(ServerEvent::ItemAdded {
            previous_item_id: previous_item_id.clone(),
            item: Item::user_audio(&turn.item_id, None),
        });
        let speculative = turn.speculation.is_some();
        let mut ending = Ending {
            seq: turn.seq,
            item_id: turn.item_id,
            previous_item_id,
            partials: turn.partials,
            speech_end_ms,
            stopped_at: speech_end_ms.map(|_| std::time::Instant::now()),
            waiting_for: turn.speculation,
            result: turn.speculative_result,
            speculative,
        };
        if !speculative {
            ending.waiting_for = None;
            // A session's share of the recogniser: at most MAX_PENDING_TURNS of its turns wait
            // for a final transcript, so one client cannot fill the queue for everyone.
            let pending = self.ending.iter().filter(|e| e.result.is_none()).count();
            if pending >= MAX_PENDING_TURNS {
                warn!(
                    pending,
                    "too many turns waiting for transcription in this session"
                );
                ending.result = Some(Err(AsrError::Busy { queued: pending }));
            } else {
                self.spawn_job(turn.seq, JobKind::Final, audio);
            }
        }
        self.ending.push_back(ending);
        ok && self.flush()
    }

    fn result(&mut self, r: JobResult) -> bool {
        match r.kind {
            JobKind::Partial => {
                let Some(t) = self.current.as_mut().filter(|t| t.seq == r.turn) else {
                    return true;
                };
                t.partial_in_flight = false;
                let delta = match &r.result {
                    Ok(tr) => {
                        debug!(turn = r.turn, audio_ms = tr.audio.as_millis() as u64, queue_ms = tr.queue_wait.as_millis() as u64, text = %tr.text, "partial hypothesis");
                        t.partials.update(&tr.text)
                    }
                    Err(e) => {
                        debug!(turn = r.turn, error = %e, "partial skipped");
                        None
                    }
                };
                let item_id = t.item_id.clone();
                if let Some(next) = t.queued_partial.take() {
                    t.partial_in_flight = true;
                    let seq = t.seq;
                    self.spawn_job(seq, JobKind::Partial, next);
                }
                match delta {
                    Some(delta) => self.out.send(ServerEvent::TranscriptionDelta {
                        item_id,
                        content_index: 0,
                        delta,
                    }),
                    None => true,
                }
            }
            JobKind::Speculative(id) => {
                if self
                    .current
                    .as_mut()
                    .filter(|t| t.seq == r.turn && t.speculation == Some(id))
                    .is_some()
                {
                    if let Ok(tr) = &r.result {
                        self.prepare(tr.text.trim().to_string());
                    }
                    if let Some(t) = self.current.as_mut() {
                        t.speculative_result = Some(r.result);
                    }
                } else if let Some(e) = self
                    .ending
                    .iter_mut()
                    .find(|e| e.seq == r.turn && e.waiting_for == Some(id) && e.result.is_none())
                {
                    e.result = Some(r.result);
                }
                self.flush()
            }
            JobKind::Final => {
                if let Some(e) = self
                    .ending
                    .iter_mut()
                    .find(|e| e.seq == r.turn && e.result.is_none())
                {
                    e.result = Some(r.result);
                }
                self.flush()
            }
        }
    }

    /// Sends the finished turns' transcripts, oldest first.
    fn flush(&mut self) -> bool {
        while self.ending.front().is_some_and(|e| e.result.is_some()) {
            let mut e = self.ending.pop_front().expect("checked");
            let ok = match e.result.take().expect("checked") {
                Ok(t) => {
                    let mut ok = true;
                    if let Some(delta) = e.partials.finish(&t.text) {
                        ok &= self.out.send(ServerEvent::TranscriptionDelta {
                            item_id: e.item_id.clone(),
                            content_index: 0,
                            delta,
                        });
                    }
                    let timing = TurnTiming {
                        speech_end_ms: e.speech_end_ms,
                        audio_ms: t.audio.as_millis() as u64,
                        asr_queue_ms: t.queue_wait.as_millis() as u64,
                        asr_ms: t.compute.as_millis() as u64,
                        speculative: e.speculative,
                        speech_stopped_to_completed_ms: e
                            .stopped_at
                            .map(|at| at.elapsed().as_millis() as u64),
                    };
                    debug!(item = %e.item_id, asr_ms = timing.asr_ms, speculative = e.speculative, "turn transcribed");
                    let m = crate::metrics::global();
                    m.turns.inc();
                    m.asr.observe_duration(t.compute);
                    m.asr_queue_wait.observe_duration(t.queue_wait);
                    if let Some(ms) = timing.speech_stopped_to_completed_ms {
                        m.stopped_to_transcript.observe_ms(ms as f64);
                    }
                    let ok =
                        ok && self.out.send(ServerEvent::TranscriptionCompleted {
                            item_id: e.item_id.clone(),
                            content_index: 0,
                            transcript: t.text.clone(),
                            voxd_timing: Some(timing),
                        }) && self.out.send(ServerEvent::ItemDone {
                            previous_item_id: e.previous_item_id.clone(),
                            item: Item::user_audio(&e.item_id, Some(t.text.clone())),
                        });
                    let text = t.text.trim().to_string();
                    if !text.is_empty() {
                        self.conversation.push(ConvItem {
                            id: e.item_id.clone(),
                            role: Role::User,
                            text,
                        });
                        self.trim_conversation();
                        let opts = self.opts.borrow().clone();
                        if ok && opts.realtime && opts.create_response && e.speech_end_ms.is_some()
                        {
                            // A new turn supersedes an answer still running.
                            self.cancel_active("turn_detected");
                            self.active = None;
                            return self.start_response(None, None, e.stopped_at) && self.flush();
                        }
                    }
                    ok
                }
                Err(err) => self.out.send(ServerEvent::TranscriptionFailed {
                    item_id: e.item_id.clone(),
                    content_index: 0,
                    error: crate::protocol::ErrorBody {
                        kind: "server_error".into(),
                        code: Some(
                            match err {
                                AsrError::Busy { .. } => "server_busy",
                                _ => "transcription_failed",
                            }
                            .into(),
                        ),
                        message: err.to_string(),
                        param: None,
                        event_id: None,
                    },
                }),
            };
            if !ok {
                return false;
            }
        }
        true
    }
}

/// Reads a `conversation.item.create` message item: (role, text, id).
fn parse_item(item: &serde_json::Value) -> Result<(Role, String, Option<String>), String> {
    if item.get("type").and_then(|t| t.as_str()) != Some("message") {
        return Err("only items of type `message` can be created".into());
    }
    let role = match item.get("role").and_then(|r| r.as_str()) {
        Some("user") => Role::User,
        Some("assistant") => Role::Assistant,
        Some("system") => Role::System,
        _ => return Err("`role` must be user, assistant or system".into()),
    };
    let parts = item
        .get("content")
        .and_then(|c| c.as_array())
        .ok_or("`content` must be an array of parts")?;
    let mut text = String::new();
    for p in parts {
        match p.get("type").and_then(|t| t.as_str()) {
            Some("input_text" | "text" | "output_text") => text.push_str(
                p.get("text")
                    .and_then(|t| t.as_str())
                    .ok_or("a text part needs `text`")?,
            ),
            Some("input_audio") => {
                if let Some(t) = p.get("transcript").and_then(|t| t.as_str()) {
                    text.push_str(t)
                }
            }
            _ => return Err("content parts must be input_text, text or output_text".into()),
        }
    }
    if text.trim().is_empty() {
        return Err("the message has no text".into());
    }
    if text.len() > MAX_ITEM_BYTES {
        return Err(format!("the message is longer than {MAX_ITEM_BYTES} bytes"));
    }
    let id = item.get("id").and_then(|i| i.as_str()).map(str::to_string);
    Ok((role, text, id))
}

/// The part of an answer spoken in `audio_end_ms` of speech (at ~15 characters a second, cut at
/// a word boundary): what the person heard before they interrupted.
fn truncate_spoken(text: &str, audio_end_ms: u64) -> String {
    let chars = (audio_end_ms as usize).saturating_mul(15) / 1000;
    if text.chars().count() <= chars {
        return text.to_string();
    }
    let cut: String = text.chars().take(chars).collect();
    match cut.rfind(char::is_whitespace) {
        Some(i) => cut[..i].trim_end().to_string(),
        None => cut,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn message_items_are_read_and_bad_ones_named() {
        let (role, text, id) = parse_item(&json!({"type": "message", "role": "user", "id": "i1",
            "content": [{"type": "input_text", "text": "Hi "}, {"type": "input_text", "text": "there"}]}))
        .unwrap();
        assert_eq!(
            (role, text.as_str(), id.as_deref()),
            (Role::User, "Hi there", Some("i1"))
        );
        for bad in [
            json!({"type": "function_call"}),
            json!({"type": "message", "role": "user"}),
            json!({"type": "message", "role": "user", "content": [{"type": "input_image"}]}),
            json!({"type": "message", "role": "user", "content": [{"type": "input_text"}]}),
        ] {
            assert!(parse_item(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn truncation_keeps_what_was_heard_at_a_word_boundary() {
        let text = "The shop opens at eight on weekdays and at ten on Sundays.";
        assert_eq!(truncate_spoken(text, 60_000), text);
        assert_eq!(truncate_spoken(text, 1_000), "The shop opens");
        assert_eq!(truncate_spoken(text, 0), "");
    }
}
