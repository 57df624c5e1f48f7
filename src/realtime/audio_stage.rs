//! The audio stage of a realtime session: resampling to 16 kHz, turn detection and the turn's
//! audio buffer, on a thread of its own (webrtc-vad's detector is not `Send`).
//!
//! With `semantic_vad`, the stage asks the end-of-turn model once per pause (after
//! [`SemanticParams::check_after_ms`] of silence) and ends the turn on its word, or after the
//! eagerness's longest wait. It waits for each answer (tens of
//! milliseconds, on the model's own workers): audio that arrives meanwhile queues, so every
//! decision lands on the same sample however fast the client sends.
//!
//! It takes [`AudioInput`] in arrival order (audio, commits, clears and the client's other
//! requests stay ordered) and sends
//! [`AudioSignal`]s to the session. Audio is fed to the detector in 20 ms frames so every event
//! lands on the right sample. Partial snapshots are sent with `try_send` and dropped when the
//! session is behind (a newer one follows); everything else waits for room.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::sync::mpsc;
use tracing::{debug, warn};

use super::command::Command;
use crate::audio::{StreamResampler, MODEL_RATE};
use crate::protocol::server::EndOfTurnTiming;
use crate::vad::VadEngine;
use crate::vad::{SemanticParams, TurnDetector, TurnEvent, TurnModels, VadParams};

/// Settings of the audio stage, derived from the session configuration.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StageConfig {
    /// Sample rate of the incoming audio.
    pub input_rate: u32,
    /// `None`: manual commits only.
    pub vad: Option<VadParams>,
    /// The voice detector (Silero only when the server loaded it).
    pub engine: VadEngine,
    /// `semantic_vad`: end turns by the end-of-turn model (needs one loaded).
    pub semantic: Option<SemanticParams>,
    /// Voiced audio a turn needs before it starts while a response runs (barge-in).
    pub interrupt_min_speech_ms: u64,
    /// Send a partial snapshot every this many ms of turn audio (0 = never).
    pub partial_interval_ms: u64,
    /// Send a speculative final snapshot after this much silence (`None` = never).
    pub speculative_after_ms: Option<u64>,
    /// Report `timeout_triggered` after this much audio without speech.
    pub idle_timeout_ms: Option<u64>,
}

/// Input of the audio stage.
#[derive(Debug)]
pub enum AudioInput {
    /// Samples at the configured input rate.
    Audio(Vec<f32>),
    Commit {
        event_id: Option<String>,
    },
    Clear {
        event_id: Option<String>,
    },
    Configure(StageConfig),
    /// Restart the idle timer (a response just ended).
    ResetIdle,
    /// Whether a response is running: speech must then last `interrupt_min_speech_ms` to
    /// become a turn.
    Responding(bool),
    /// A client request for the hub, passed through in order: a `response.create` sent after
    /// a commit reaches the hub after the committed turn.
    Client(Command),
}

/// What the audio stage tells the session. Times are ms of audio since the session started.
#[derive(Debug)]
pub enum AudioSignal {
    SpeechStarted {
        audio_start_ms: u64,
    },
    /// The turn so far, for a partial transcript.
    Partial {
        audio: Vec<f32>,
    },
    /// Silence began: the turn so far, to finalise speculatively.
    Speculate {
        audio: Vec<f32>,
    },
    /// Speech resumed after a speculative snapshot: drop it.
    Resumed,
    SpeechStopped {
        audio_end_ms: u64,
        last_voice_ms: u64,
        audio: Vec<f32>,
        /// How `semantic_vad` decided.
        end_of_turn: Option<EndOfTurnTiming>,
    },
    /// A manual commit of the buffered audio (may be empty).
    Committed {
        event_id: Option<String>,
        audio_start_ms: u64,
        audio_end_ms: u64,
        audio: Vec<f32>,
    },
    Cleared {
        event_id: Option<String>,
    },
    /// A client request, in its place among the signals.
    Client(Command),
    IdleTimeout {
        audio_start_ms: u64,
        audio_end_ms: u64,
    },
}

const FRAME: usize = 320;
/// Longest turn kept; older audio of a longer turn is dropped (whisper sees 30 s windows).
const MAX_TURN_SAMPLES: usize = MODEL_RATE as usize * 120;
/// How far a turn may run past [`MAX_TURN_SAMPLES`] before its front is trimmed.
const TRIM_STEP: usize = MODEL_RATE as usize * 10;

struct Stage {
    cfg: StageConfig,
    models: TurnModels,
    resampler: StreamResampler,
    detector: Option<TurnDetector>,
    /// The last 2.5 s of audio, for prefix padding.
    history: VecDeque<f32>,
    /// Absolute sample index (16 kHz) of the next sample.
    total: u64,
    /// Samples pending to be fed in 20 ms frames.
    pending: Vec<f32>,
    turn: Vec<f32>,
    in_turn: bool,
    /// Absolute index where the buffered (manual) audio starts.
    buffer_start: u64,
    next_partial: usize,
    pause: Option<PauseState>,
    idle_since_ms: u64,
    /// A response is running (barge-in needs longer speech).
    responding: bool,
    out: mpsc::Sender<AudioSignal>,
    events: Vec<TurnEvent>,
}

struct PauseState {
    at_ms: u64,
    speculated: bool,
    /// Pause length (ms) at which the end-of-turn model is asked (`u64::MAX`: not again).
    next_check_ms: u64,
    checks: u32,
    probability: Option<f32>,
    model_time: Duration,
}

impl PauseState {
    fn new(at_ms: u64, semantic: Option<SemanticParams>) -> Self {
        PauseState {
            at_ms,
            speculated: false,
            next_check_ms: semantic.map_or(u64::MAX, |s| s.check_after_ms),
            checks: 0,
            probability: None,
            model_time: Duration::ZERO,
        }
    }

    fn report(&self, now_ms: u64, ended_by: &str) -> EndOfTurnTiming {
        EndOfTurnTiming {
            probability: self.probability,
            checks: self.checks,
            ended_by: ended_by.into(),
            pause_ms: now_ms.saturating_sub(self.at_ms),
            model_ms: self.model_time.as_millis() as u64,
        }
    }
}

/// A detector on the configured voice detector (webrtc-vad when Silero is not loaded).
fn detector(params: VadParams, engine: VadEngine, models: &TurnModels) -> TurnDetector {
    match (engine, &models.silero) {
        (VadEngine::Silero, Some(model)) => TurnDetector::silero(params, model.clone()),
        _ => TurnDetector::new(params),
    }
}

fn ms(samples: u64) -> u64 {
    samples * 1000 / MODEL_RATE as u64
}

impl Stage {
    fn new(cfg: StageConfig, models: TurnModels, out: mpsc::Sender<AudioSignal>) -> Self {
        let cfg = cfg.checked(&models);
        Stage {
            cfg,
            detector: cfg
                .vad
                .map(|p| detector(cfg.effective(p, false), cfg.engine, &models)),
            models,
            resampler: StreamResampler::new(cfg.input_rate, MODEL_RATE)
                .expect("rate validated by the protocol"),
            history: VecDeque::with_capacity(MODEL_RATE as usize * 3),
            total: 0,
            pending: Vec::with_capacity(FRAME * 4),
            turn: Vec::new(),
            in_turn: false,
            buffer_start: 0,
            next_partial: 0,
            pause: None,
            idle_since_ms: 0,
            responding: false,
            out,
            events: Vec::new(),
        }
    }

    /// Sends a signal, waiting for room; false when the session has gone.
    fn send(&self, s: AudioSignal) -> bool {
        self.out.blocking_send(s).is_ok()
    }

    fn configure(&mut self, cfg: StageConfig) {
        let cfg = cfg.checked(&self.models);
        if cfg.input_rate != self.cfg.input_rate {
            self.resampler = StreamResampler::new(cfg.input_rate, MODEL_RATE)
                .expect("rate validated by the protocol");
        }
        if self.cfg.vad.is_some() && cfg.vad.is_some() && cfg.engine != self.cfg.engine {
            // Another voice detector: a turn in progress is forgotten with the old one.
            self.detector = None;
            self.in_turn = false;
            self.pause = None;
            self.turn.clear();
        }
        let params = cfg.vad.map(|p| cfg.effective(p, self.responding));
        match (params, self.detector.as_mut()) {
            (Some(p), Some(d)) => d.set_params(p),
            (Some(p), None) => self.detector = Some(detector(p, cfg.engine, &self.models)),
            (None, _) => {
                self.detector = None;
                if self.in_turn {
                    // The turn in progress becomes the manual buffer.
                    self.in_turn = false;
                    self.pause = None;
                }
            }
        }
        self.cfg = cfg;
    }

    fn audio(&mut self, samples: &[f32]) -> bool {
        let mut resampled =
            Vec::with_capacity(samples.len() * 16_000 / self.cfg.input_rate as usize + 16);
        self.resampler.push(samples, &mut resampled);
        self.pending.extend_from_slice(&resampled);
        let pending = std::mem::take(&mut self.pending);
        let mut frames = pending.chunks_exact(FRAME);
        for frame in &mut frames {
            if !self.frame(frame) {
                return false;
            }
        }
        self.pending = frames.remainder().to_vec();
        true
    }

    fn frame(&mut self, frame: &[f32]) -> bool {
        self.history.extend(frame.iter().copied());
        while self.history.len() > MODEL_RATE as usize * 5 / 2 {
            self.history.pop_front();
        }
        self.total += frame.len() as u64;
        let manual = self.detector.is_none();
        if self.in_turn || manual {
            self.turn.extend_from_slice(frame);
            // Trimmed in 10 s steps, not every frame: draining the front moves the whole buffer.
            if self.turn.len() > MAX_TURN_SAMPLES + TRIM_STEP {
                let excess = self.turn.len() - MAX_TURN_SAMPLES;
                self.turn.drain(..excess);
                self.buffer_start += excess as u64;
            }
        }
        let Some(detector) = self.detector.as_mut() else {
            return true;
        };
        detector.push(frame, &mut self.events);
        let events = std::mem::take(&mut self.events);
        for e in events {
            if !self.turn_event(e) {
                return false;
            }
        }
        let now_ms = ms(self.total);
        if self.in_turn {
            if let Some(p) = self.pause.as_mut() {
                if let Some(after) = self.cfg.speculative_after_ms {
                    if !p.speculated && now_ms.saturating_sub(p.at_ms) >= after {
                        p.speculated = true;
                        let audio = self.turn.clone();
                        if !self.send(AudioSignal::Speculate { audio }) {
                            return false;
                        }
                    }
                }
                if !self.check_end_of_turn(now_ms) {
                    return false;
                }
            } else if self.cfg.partial_interval_ms > 0 && self.turn.len() >= self.next_partial {
                self.next_partial = self.turn.len() + (self.cfg.partial_interval_ms * 16) as usize;
                // Dropped when the session is behind: a newer snapshot follows.
                let _ = self.out.try_send(AudioSignal::Partial {
                    audio: self.turn.clone(),
                });
            }
        } else if let Some(idle) = self.cfg.idle_timeout_ms {
            if now_ms.saturating_sub(self.idle_since_ms) >= idle {
                let start = self.idle_since_ms;
                self.idle_since_ms = now_ms;
                return self.send(AudioSignal::IdleTimeout {
                    audio_start_ms: start,
                    audio_end_ms: now_ms,
                });
            }
        }
        true
    }

    fn turn_event(&mut self, e: TurnEvent) -> bool {
        match e {
            TurnEvent::SpeechStarted { audio_start_ms } => {
                let start_idx = audio_start_ms * MODEL_RATE as u64 / 1000;
                let available = self.history.len() as u64;
                let take = self.total.saturating_sub(start_idx).min(available) as usize;
                self.turn = self
                    .history
                    .iter()
                    .skip(self.history.len() - take)
                    .copied()
                    .collect();
                self.buffer_start = self.total - take as u64;
                self.in_turn = true;
                self.pause = None;
                self.next_partial = self.turn.len() + (self.cfg.partial_interval_ms * 16) as usize;
                self.send(AudioSignal::SpeechStarted {
                    audio_start_ms: ms(self.buffer_start),
                })
            }
            TurnEvent::Paused { at_ms } => {
                self.pause = Some(PauseState::new(at_ms, self.cfg.semantic));
                true
            }
            TurnEvent::Resumed { .. } => {
                let speculated = self.pause.take().is_some_and(|p| p.speculated);
                !speculated || self.send(AudioSignal::Resumed)
            }
            TurnEvent::SpeechStopped {
                audio_end_ms,
                last_voice_ms,
            } => {
                // The silence window of semantic_vad is the eagerness's longest wait.
                let end_of_turn = self
                    .cfg
                    .semantic
                    .and(self.pause.as_ref())
                    .map(|p| p.report(audio_end_ms, "max_wait"));
                self.stop_turn(audio_end_ms, last_voice_ms, end_of_turn)
            }
        }
    }

    fn stop_turn(
        &mut self,
        audio_end_ms: u64,
        last_voice_ms: u64,
        end_of_turn: Option<EndOfTurnTiming>,
    ) -> bool {
        self.in_turn = false;
        self.pause = None;
        self.idle_since_ms = audio_end_ms;
        let audio = std::mem::take(&mut self.turn);
        self.send(AudioSignal::SpeechStopped {
            audio_end_ms,
            last_voice_ms,
            audio,
            end_of_turn,
        })
    }

    /// With `semantic_vad`, asks the end-of-turn model when the pause reaches its next check
    /// and ends the turn if the model judges it complete. False when the session has gone.
    fn check_end_of_turn(&mut self, now_ms: u64) -> bool {
        let (Some(sem), Some(model)) = (self.cfg.semantic, self.models.end_of_turn.clone()) else {
            return true;
        };
        let Some(p) = self.pause.as_mut() else {
            return true;
        };
        let silent = now_ms.saturating_sub(p.at_ms);
        if silent < p.next_check_ms {
            return true;
        }
        p.checks += 1;
        p.next_check_ms = u64::MAX;
        let metrics = crate::metrics::global();
        match model.check_blocking(self.turn.clone()) {
            Ok(v) => {
                p.probability = Some(v.probability);
                p.model_time += v.compute;
                let complete = v.probability >= sem.threshold;
                metrics
                    .turn_checks
                    .inc(if complete { "complete" } else { "incomplete" });
                debug!(
                    pause_ms = silent,
                    probability = v.probability,
                    compute_ms = v.compute.as_millis() as u64,
                    complete,
                    "end-of-turn check"
                );
                if !complete {
                    return true;
                }
                let report = p.report(now_ms, "model");
                let Some(TurnEvent::SpeechStopped {
                    audio_end_ms,
                    last_voice_ms,
                }) = self.detector.as_mut().and_then(TurnDetector::end_turn)
                else {
                    return true;
                };
                self.stop_turn(audio_end_ms, last_voice_ms, Some(report))
            }
            Err(e) => {
                // Without an answer the turn ends at the longest wait, as if judged incomplete.
                metrics.turn_checks.inc("error");
                warn!(error = %e, "end-of-turn check failed");
                true
            }
        }
    }

    fn responding(&mut self, on: bool) {
        self.responding = on;
        if let (Some(p), Some(d)) = (self.cfg.vad, self.detector.as_mut()) {
            d.set_params(self.cfg.effective(p, on));
        }
    }

    fn commit(&mut self, event_id: Option<String>) -> bool {
        // Audio still pending (< 20 ms) belongs to the commit.
        let rest = std::mem::take(&mut self.pending);
        if self.in_turn || self.detector.is_none() {
            self.turn.extend_from_slice(&rest);
        }
        self.total += rest.len() as u64;
        let audio = std::mem::take(&mut self.turn);
        let start = if audio.is_empty() {
            self.total
        } else {
            self.buffer_start
        };
        self.in_turn = false;
        self.pause = None;
        self.buffer_start = self.total;
        self.idle_since_ms = ms(self.total);
        if let Some(d) = self.detector.as_mut() {
            d.reset_turn();
        }
        self.send(AudioSignal::Committed {
            event_id,
            audio_start_ms: ms(start),
            audio_end_ms: ms(self.total),
            audio,
        })
    }

    fn clear(&mut self, event_id: Option<String>) -> bool {
        self.pending.clear();
        self.turn.clear();
        self.in_turn = false;
        self.pause = None;
        self.buffer_start = self.total;
        if let Some(d) = self.detector.as_mut() {
            d.reset_turn();
        }
        self.send(AudioSignal::Cleared { event_id })
    }
}

impl StageConfig {
    /// The detector's parameters while a response runs (`responding`) or not.
    fn effective(&self, p: VadParams, responding: bool) -> VadParams {
        VadParams {
            min_speech_ms: if responding {
                p.min_speech_ms.max(self.interrupt_min_speech_ms)
            } else {
                p.min_speech_ms
            },
            ..p
        }
    }

    /// The configuration this server can run: webrtc-vad without a Silero model, and
    /// silence-based turns without an end-of-turn model.
    fn checked(mut self, models: &TurnModels) -> Self {
        if models.silero.is_none() {
            self.engine = VadEngine::WebRtc;
        }
        if models.end_of_turn.is_none() {
            self.semantic = None;
        }
        self
    }
}

/// Starts the audio stage thread; it ends when `input` closes or the session stops listening.
pub fn spawn(
    cfg: StageConfig,
    models: TurnModels,
    mut input: mpsc::Receiver<AudioInput>,
    out: mpsc::Sender<AudioSignal>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("voxd-audio".into())
        .spawn(move || {
            let mut stage = Stage::new(cfg, models, out);
            while let Some(msg) = input.blocking_recv() {
                let alive = match msg {
                    AudioInput::Audio(samples) => stage.audio(&samples),
                    AudioInput::Commit { event_id } => stage.commit(event_id),
                    AudioInput::Clear { event_id } => stage.clear(event_id),
                    AudioInput::Configure(c) => {
                        stage.configure(c);
                        true
                    }
                    AudioInput::Client(c) => stage.send(AudioSignal::Client(c)),
                    AudioInput::Responding(on) => {
                        stage.responding(on);
                        true
                    }
                    AudioInput::ResetIdle => {
                        stage.idle_since_ms = ms(stage.total);
                        true
                    }
                };
                if !alive {
                    break;
                }
            }
            debug!("audio stage ended");
        })
}
