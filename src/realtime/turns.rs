//! Turns and their transcription: the turn being spoken (partial and speculative transcripts),
//! the turns that ended and wait for their final transcript (kept in order), and the ASR jobs
//! behind them.
//!
//! [`Turns`] sends the input side's events itself (`input_audio_buffer.speech_*`, `.cleared`,
//! transcription deltas, `.completed`, `.failed`) and tells the hub what it must act on as
//! [`Heard`]: a committed turn joins the conversation, a transcript may start a response.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{mpsc, watch};
use tracing::{debug, warn, Instrument};

use super::audio_stage::AudioSignal;
use super::options::SessionOptions;
use super::out::Out;
use super::partials::Partials;
use crate::asr::{Asr, AsrError, Priority, Request, Transcript};
use crate::protocol::server::{EndOfTurnTiming, TranscriptionUsage, TurnTiming};
use crate::protocol::{new_id, ErrorBody, ProtocolError, ServerEvent};

/// Turns of one session that may wait for their final transcript at once; more fail with
/// `server_busy`.
pub const MAX_PENDING_TURNS: usize = 4;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum JobKind {
    Partial,
    Speculative(u64),
    Final,
}

/// An ASR job's outcome.
pub(super) struct JobResult {
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
    /// The running partial's task: aborting it closes its reply, which stops whisper.cpp.
    partial_task: Option<tokio::task::AbortHandle>,
    queued_partial: Option<Vec<f32>>,
    speculation: Option<u64>,
    /// The running speculative pass's task, stopped when the person goes on.
    speculative_task: Option<tokio::task::AbortHandle>,
    speculative_result: Option<Result<Transcript, AsrError>>,
}

impl Turn {
    fn new(seq: u64) -> Self {
        Turn {
            seq,
            item_id: new_id("item"),
            partials: Partials::default(),
            partial_in_flight: false,
            partial_task: None,
            queued_partial: None,
            speculation: None,
            speculative_task: None,
            speculative_result: None,
        }
    }

    /// Stops the partial in flight and drops the queued one. Called when a pause begins (the
    /// speculative transcript covers the same audio and more) and when the turn ends: a partial
    /// nobody will see would take a core from the transcript the person waits for (measured: a
    /// partial of the turn's last 500 ms overlapped the speculative pass and the end-of-turn
    /// model on two cores, and slowed the pass from ~225 to 276–388 ms).
    fn stop_partial(&mut self) {
        if let Some(task) = self.partial_task.take() {
            task.abort();
        }
        self.partial_in_flight = false;
        self.queued_partial = None;
    }
}

/// A turn that ended and waits for its final transcript.
struct Ending {
    seq: u64,
    item_id: String,
    partials: Partials,
    speech_end_ms: Option<u64>,
    /// When the hub heard that the person stopped (VAD turns only).
    stopped_at: Option<Instant>,
    waiting_for: Option<u64>,
    result: Option<Result<Transcript, AsrError>>,
    speculative: bool,
    /// How `semantic_vad` ended the turn.
    end_of_turn: Option<EndOfTurnTiming>,
}

/// What the hub must act on.
pub(super) enum Heard {
    /// The person started talking (a response in progress may be interrupted).
    SpeechStarted,
    /// What the person seems to have said, while they pause (to retrieve ahead).
    Speculated(String),
    /// A turn ended: its user audio item joins the conversation (after the events already sent
    /// for it: `speech_stopped`).
    Committed { item_id: String },
    /// A turn's final transcript, sent as `.completed`.
    Transcribed {
        item_id: String,
        text: String,
        /// When the person stopped talking (turns ended by the VAD).
        stopped_at: Option<Instant>,
    },
    /// A turn could not be transcribed (`.failed` was sent).
    Failed { item_id: String },
    /// A turn was cleared.
    Cleared,
    /// No speech for the session's `idle_timeout_ms`.
    IdleTimeout {
        audio_start_ms: u64,
        audio_end_ms: u64,
    },
}

/// The knowledge base whose vocabulary the session listens for, when there is one (it may be
/// loaded after the session started).
pub(super) type KbSource = Box<dyn Fn() -> Option<Arc<crate::rag::KnowledgeBase>> + Send>;

/// The turns of one session.
pub(super) struct Turns {
    asr: Arc<dyn Asr>,
    kb: KbSource,
    out: Out,
    opts: watch::Receiver<SessionOptions>,
    results_tx: mpsc::Sender<JobResult>,
    pub(super) results: mpsc::Receiver<JobResult>,
    seq: u64,
    speculation_seq: u64,
    current: Option<Turn>,
    ending: VecDeque<Ending>,
}

impl Turns {
    pub(super) fn new(
        asr: Arc<dyn Asr>,
        kb: KbSource,
        out: Out,
        opts: watch::Receiver<SessionOptions>,
    ) -> Self {
        let (results_tx, results) = mpsc::channel(32);
        Turns {
            asr,
            kb,
            out,
            opts,
            results_tx,
            results,
            seq: 0,
            speculation_seq: 0,
            current: None,
            ending: VecDeque::new(),
        }
    }

    /// True while some ended turn still waits for its transcript.
    pub(super) fn pending(&self) -> bool {
        !self.ending.is_empty()
    }

    fn spawn_job(&self, turn: u64, kind: JobKind, samples: Vec<f32>) -> tokio::task::AbortHandle {
        let opts = self.opts.borrow().clone();
        // The knowledge base's names and rare words, listened for in sessions that answer from it.
        let kb = (opts.realtime && opts.knowledge_base)
            .then(|| (self.kb)())
            .flatten();
        let mut request = Request {
            samples,
            language: opts.language,
            prompt: opts.prompt,
            hints: None,
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
                if let Some(kb) = kb {
                    request.hints = Some(kb.vocabulary().await);
                }
                let result = asr.transcribe(request).await;
                let _ = tx.send(JobResult { turn, kind, result }).await;
            }
            .instrument(span),
        )
        .abort_handle()
    }

    /// Handles a signal of the audio stage.
    pub(super) fn signal(&mut self, s: AudioSignal) -> Option<Heard> {
        match s {
            AudioSignal::SpeechStarted { audio_start_ms } => {
                self.seq += 1;
                let turn = Turn::new(self.seq);
                self.out.send(ServerEvent::SpeechStarted {
                    audio_start_ms,
                    item_id: turn.item_id.clone(),
                });
                self.current = Some(turn);
                Some(Heard::SpeechStarted)
            }
            AudioSignal::Partial { audio } => {
                if let Some(t) = self.current.as_mut() {
                    if t.partial_in_flight {
                        t.queued_partial = Some(audio);
                    } else {
                        t.partial_in_flight = true;
                        let seq = t.seq;
                        let task = self.spawn_job(seq, JobKind::Partial, audio);
                        if let Some(t) = self.current.as_mut() {
                            t.partial_task = Some(task);
                        }
                    }
                }
                None
            }
            AudioSignal::Speculate { audio } => {
                if let Some(t) = self.current.as_mut() {
                    t.stop_partial();
                    self.speculation_seq += 1;
                    t.speculation = Some(self.speculation_seq);
                    t.speculative_result = None;
                    let (seq, id) = (t.seq, self.speculation_seq);
                    let task = self.spawn_job(seq, JobKind::Speculative(id), audio);
                    if let Some(t) = self.current.as_mut() {
                        t.speculative_task = Some(task);
                    }
                }
                None
            }
            AudioSignal::Resumed => {
                if let Some(t) = self.current.as_mut() {
                    // The person went on: the pause's transcript is of a fragment. Stopping it
                    // frees the core for the next partial and the turn's real transcript.
                    if let Some(task) = t.speculative_task.take() {
                        task.abort();
                    }
                    t.speculation = None;
                    t.speculative_result = None;
                }
                None
            }
            AudioSignal::SpeechStopped {
                audio_end_ms,
                last_voice_ms,
                audio,
                end_of_turn,
            } => {
                let mut turn = self.current.take()?;
                turn.stop_partial();
                self.out.send(ServerEvent::SpeechStopped {
                    audio_end_ms,
                    item_id: turn.item_id.clone(),
                });
                let heard = self.end_turn(turn, Some(last_voice_ms), audio);
                if let Some(e) = self.ending.back_mut() {
                    e.end_of_turn = end_of_turn;
                }
                Some(heard)
            }
            AudioSignal::Committed {
                event_id, audio, ..
            } => self.commit(event_id, audio),
            AudioSignal::Cleared { .. } => {
                if let Some(t) = self.current.as_mut() {
                    t.stop_partial();
                }
                self.current = None;
                self.out.send(ServerEvent::Cleared);
                Some(Heard::Cleared)
            }
            AudioSignal::Client(_) => None, // the hub's
            AudioSignal::IdleTimeout {
                audio_start_ms,
                audio_end_ms,
            } => Some(Heard::IdleTimeout {
                audio_start_ms,
                audio_end_ms,
            }),
        }
    }

    /// A manual commit (`input_audio_buffer.commit`): the turn so far ends with this audio.
    fn commit(&mut self, event_id: Option<String>, audio: Vec<f32>) -> Option<Heard> {
        let mut turn = self.current.take();
        if let Some(t) = turn.as_mut() {
            t.stop_partial();
            if let Some(task) = t.speculative_task.take() {
                task.abort();
            }
        }
        if audio.is_empty() {
            self.out.error(
                &ProtocolError::new(
                    "input_audio_buffer_commit_empty",
                    "there is no audio to commit",
                )
                .event(event_id),
            );
            return None;
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
        Some(self.end_turn(turn, None, audio))
    }

    /// Ends a turn and gets (or reuses) its final transcript.
    fn end_turn(&mut self, turn: Turn, speech_end_ms: Option<u64>, audio: Vec<f32>) -> Heard {
        let speculative = turn.speculation.is_some();
        let mut ending = Ending {
            seq: turn.seq,
            item_id: turn.item_id.clone(),
            partials: turn.partials,
            speech_end_ms,
            stopped_at: speech_end_ms.map(|_| Instant::now()),
            waiting_for: turn.speculation,
            result: turn.speculative_result,
            speculative,
            end_of_turn: None,
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
        Heard::Committed {
            item_id: turn.item_id,
        }
    }

    /// Takes an ASR job's result.
    pub(super) fn result(&mut self, r: JobResult) -> Option<Heard> {
        match r.kind {
            JobKind::Partial => {
                let t = self.current.as_mut().filter(|t| t.seq == r.turn)?;
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
                t.partial_task = None;
                if let Some(next) = t.queued_partial.take() {
                    t.partial_in_flight = true;
                    let seq = t.seq;
                    let task = self.spawn_job(seq, JobKind::Partial, next);
                    if let Some(t) = self.current.as_mut() {
                        t.partial_task = Some(task);
                    }
                }
                if let Some(delta) = delta {
                    self.out.send(ServerEvent::TranscriptionDelta {
                        item_id,
                        content_index: 0,
                        delta,
                    });
                }
                None
            }
            JobKind::Speculative(id) => {
                if let Some(t) = self
                    .current
                    .as_mut()
                    .filter(|t| t.seq == r.turn && t.speculation == Some(id))
                {
                    let heard = r
                        .result
                        .as_ref()
                        .ok()
                        .map(|tr| Heard::Speculated(tr.text.trim().to_string()));
                    t.speculative_result = Some(r.result);
                    heard
                } else {
                    if let Some(e) = self.ending.iter_mut().find(|e| {
                        e.seq == r.turn && e.waiting_for == Some(id) && e.result.is_none()
                    }) {
                        e.result = Some(r.result);
                    }
                    None
                }
            }
            JobKind::Final => {
                if let Some(e) = self
                    .ending
                    .iter_mut()
                    .find(|e| e.seq == r.turn && e.result.is_none())
                {
                    e.result = Some(r.result);
                }
                None
            }
        }
    }

    /// The oldest ended turn, once its transcript is known: sends its last delta and
    /// `.completed` (or `.failed`). Turns finish in the order they ended.
    pub(super) fn next_finished(&mut self) -> Option<Heard> {
        if self.ending.front().is_none_or(|e| e.result.is_none()) {
            return None;
        }
        let mut e = self.ending.pop_front()?;
        match e.result.take()? {
            Ok(t) => {
                if let Some(delta) = e.partials.finish(&t.text) {
                    self.out.send(ServerEvent::TranscriptionDelta {
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
                    end_of_turn: e.end_of_turn.take(),
                };
                debug!(item = %e.item_id, asr_ms = timing.asr_ms, speculative = e.speculative, "turn transcribed");
                let m = crate::metrics::global();
                m.turns.inc();
                m.asr.observe_duration(t.compute);
                m.asr_queue_wait.observe_duration(t.queue_wait);
                if let Some(ms) = timing.speech_stopped_to_completed_ms {
                    m.stopped_to_transcript.observe_ms(ms as f64);
                }
                self.out.send(ServerEvent::TranscriptionCompleted {
                    item_id: e.item_id.clone(),
                    content_index: 0,
                    transcript: t.text.clone(),
                    usage: TranscriptionUsage::seconds(t.audio.as_secs_f64()),
                    voxd_timing: Some(timing),
                });
                Some(Heard::Transcribed {
                    item_id: e.item_id,
                    text: t.text,
                    stopped_at: e.stopped_at,
                })
            }
            Err(err) => {
                self.out.send(ServerEvent::TranscriptionFailed {
                    item_id: e.item_id.clone(),
                    content_index: 0,
                    error: ErrorBody {
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
                });
                Some(Heard::Failed { item_id: e.item_id })
            }
        }
    }
}
