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
use super::{LiveGuard, Shared};
use crate::asr::{Asr, AsrError, Priority, Request, Transcript};
use crate::audio::g711::Law;
use crate::protocol::server::TurnTiming;
use crate::protocol::{
    new_id, parse_client_event, ClientEvent, InputFormat, Item, ProtocolError, ServerEvent,
    SessionConfig, SessionKind,
};

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
struct Out {
    tx: mpsc::Sender<Outgoing>,
    overflowed: Arc<AtomicBool>,
    overflow: Arc<Notify>,
}

impl Out {
    /// Queues an event; false when the queue is full (the session is ending) or closed.
    fn send(&self, e: ServerEvent) -> bool {
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

/// ASR options the hub reads from the current session configuration.
#[derive(Debug, Clone, Default)]
struct AsrOptions {
    language: Option<String>,
    prompt: Option<String>,
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
    }
}

/// Runs a session on an upgraded socket until it closes.
pub async fn run(socket: WebSocket, shared: Shared, kind: SessionKind) {
    let config = SessionConfig::new(kind, "voxd");
    let span = tracing::info_span!("session", id = %config.id);
    session(socket, shared, config).instrument(span).await
}

async fn session(socket: WebSocket, shared: Shared, mut config: SessionConfig) {
    let _live = LiveGuard::new(&shared.live);
    let (ws_tx, mut ws_rx) = socket.split();
    let (out_tx, out_rx) = mpsc::channel(shared.limits.out_queue);
    let (close_tx, close_rx) = tokio::sync::oneshot::channel();
    let writer = tokio::spawn(writer(ws_tx, out_rx, close_rx));
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
    let hub = tokio::spawn(Hub::new(shared.asr.clone(), out.clone(), opts_rx).run(sig_rx));

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
                        if !handle_text(text.as_str(), &mut config, &audio_tx, &opts_tx, &out, &limits).await {
                            close = (NORMAL, "");
                            break;
                        }
                    }
                    Message::Binary(bytes) => {
                        match decode_audio(&bytes, config.input_format) {
                            Ok(samples) if samples.is_empty() => {}
                            Ok(samples) => if audio_tx.send(AudioInput::Audio(samples)).await.is_err() { close = (NORMAL, ""); break; },
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
            AudioInput::Configure(stage_config(config))
        }
        ClientEvent::AppendAudio { audio } => {
            // Check the size before decoding: base64 is 4 bytes for every 3.
            if audio.len() / 4 * 3 > limits.max_append_bytes {
                out.error(
                    &ProtocolError::new(
                        "audio_too_large",
                        format!(
                            "one append may carry at most {} bytes of audio",
                            limits.max_append_bytes
                        ),
                    )
                    .param("audio")
                    .event(event_id),
                );
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
                Ok(s) if s.is_empty() => return true,
                Ok(s) => AudioInput::Audio(s),
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
        | ClientEvent::ItemCreate { .. } => {
            let what = if config.kind == SessionKind::Transcription {
                "a transcription session does not create responses"
            } else {
                "responses are not available yet: this server transcribes only"
            };
            out.error(&ProtocolError::new("responses_unavailable", what).event(event_id));
            return true;
        }
    };
    audio_tx.send(input).await.is_ok()
}

/// Decodes raw audio bytes in the session's input format to samples.
fn decode_audio(bytes: &[u8], format: InputFormat) -> Result<Vec<f32>, ProtocolError> {
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
    waiting_for: Option<u64>,
    result: Option<Result<Transcript, AsrError>>,
    speculative: bool,
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
}

impl Hub {
    fn new(asr: Arc<dyn Asr>, out: Out, opts: watch::Receiver<AsrOptions>) -> Self {
        let (results_tx, results_rx) = mpsc::channel(32);
        Hub {
            asr,
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

    async fn run(mut self, mut signals: mpsc::Receiver<AudioSignal>) {
        let mut signals_open = true;
        loop {
            tokio::select! {
                s = signals.recv(), if signals_open => match s {
                    Some(s) => if !self.signal(s) { return },
                    None => signals_open = false,
                },
                Some(r) = self.results_rx.recv() => if !self.result(r) { return },
            }
            if !signals_open && self.ending.is_empty() {
                return;
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
        tokio::spawn(async move {
            let result = asr.transcribe(request).await;
            let _ = tx.send(JobResult { turn, kind, result }).await;
        });
    }

    fn signal(&mut self, s: AudioSignal) -> bool {
        match s {
            AudioSignal::SpeechStarted { audio_start_ms } => {
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
            waiting_for: turn.speculation,
            result: turn.speculative_result,
            speculative,
        };
        if !speculative {
            ending.waiting_for = None;
            self.spawn_job(turn.seq, JobKind::Final, audio);
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
                if let Some(t) = self
                    .current
                    .as_mut()
                    .filter(|t| t.seq == r.turn && t.speculation == Some(id))
                {
                    t.speculative_result = Some(r.result);
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
                    };
                    debug!(item = %e.item_id, asr_ms = timing.asr_ms, speculative = e.speculative, "turn transcribed");
                    ok && self.out.send(ServerEvent::TranscriptionCompleted {
                        item_id: e.item_id.clone(),
                        content_index: 0,
                        transcript: t.text.clone(),
                        voxd_timing: Some(timing),
                    }) && self.out.send(ServerEvent::ItemDone {
                        previous_item_id: e.previous_item_id.clone(),
                        item: Item::user_audio(&e.item_id, Some(t.text)),
                    })
                }
                Err(err) => self.out.send(ServerEvent::TranscriptionFailed {
                    item_id: e.item_id.clone(),
                    content_index: 0,
                    error: crate::protocol::ErrorBody {
                        kind: "server_error".into(),
                        code: Some("transcription_failed".into()),
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
