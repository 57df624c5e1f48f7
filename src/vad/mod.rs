//! Turn detection: where a person starts and stops talking, from 16 kHz samples.
//!
//! A voice detector classifies each 20 ms frame as voice or not: webrtc-vad (the default, no
//! model) or [Silero VAD](silero) (a small neural model, steadier in noise). [`TurnDetector`]
//! turns those flags into turns with the parameters of the OpenAI Realtime API's `server_vad`:
//!
//! - a turn starts once `min_speech_ms` of mostly-voiced frames (at least 80 % in a sliding
//!   window) are seen, so clicks and coughs are not turns; its `audio_start_ms` reaches back
//!   `prefix_padding_ms` before the first voiced frame;
//! - a turn stops after `silence_duration_ms` without voice; `audio_end_ms` is that moment;
//! - in between, [`TurnEvent::Paused`] marks the first silent frame after voice and
//!   [`TurnEvent::Resumed`] the voice that may follow, so a caller can start the final
//!   transcription speculatively at the pause and drop it on resume.
//!
//! `semantic_vad` adds a [model of whether the turn sounds finished](smart_turn), asked at
//! pauses; [`TurnDetector::end_turn`] ends a turn on its word.
//!
//! webrtc-vad's `Vad` holds a raw pointer and is not `Send`: a detector lives on one thread (the
//! realtime session gives the VAD stage its own).

pub mod config;
pub mod features;
pub mod open;
pub mod silero;
pub mod smart_turn;

use std::sync::Arc;

use webrtc_vad::{SampleRate, Vad, VadMode};

pub use config::{TurnsArgs, TurnsConfig};
pub use silero::{SileroModel, SileroVad};
pub use smart_turn::{EndOfTurn, SmartTurn, TurnModelError, Verdict};

/// How much lower Silero's probability may fall before a frame inside a turn counts as silent
/// (hysteresis, so a turn does not flicker around the threshold).
const SILERO_HYSTERESIS: f32 = 0.15;

/// The frame classifier of a detector.
enum Classifier {
    WebRtc(Vad),
    Silero(Box<SileroVad>),
}

/// The voice detector under turn detection (a voxd extension, `session.voxd.vad`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum VadEngine {
    #[default]
    WebRtc,
    Silero,
}

impl VadEngine {
    pub fn as_str(self) -> &'static str {
        match self {
            VadEngine::WebRtc => "webrtc",
            VadEngine::Silero => "silero",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "webrtc" => Some(VadEngine::WebRtc),
            "silero" => Some(VadEngine::Silero),
            _ => None,
        }
    }
}

/// The turn-taking models a server has loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TurnModelsAvailable {
    pub silero: bool,
    pub end_of_turn: bool,
}

/// Frame length fed to webrtc-vad.
pub const FRAME_MS: u64 = 20;
const FRAME_SAMPLES: usize = 320;

/// Turn-detection parameters (OpenAI `server_vad` names).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct VadParams {
    /// 0.0–1.0: higher needs louder, clearer speech (mapped to webrtc-vad's four modes).
    pub threshold: f32,
    /// Audio kept before the first voiced frame.
    pub prefix_padding_ms: u64,
    /// Silence that ends a turn.
    pub silence_duration_ms: u64,
    /// Voiced audio needed before a turn starts.
    pub min_speech_ms: u64,
}

impl Default for VadParams {
    fn default() -> Self {
        VadParams {
            threshold: 0.5,
            prefix_padding_ms: 300,
            silence_duration_ms: 500,
            // webrtc-vad keeps flagging voice for a few frames after a sound (its hangover), so a
            // 40 ms click reads as ~100 ms of voice; 200 ms at 80 % voiced rejects it.
            min_speech_ms: 200,
        }
    }
}

impl VadParams {
    fn mode(&self) -> VadMode {
        match self.threshold {
            t if t < 0.25 => VadMode::Quality,
            t if t < 0.5 => VadMode::LowBitrate,
            t if t < 0.75 => VadMode::Aggressive,
            _ => VadMode::VeryAggressive,
        }
    }
}

/// How `semantic_vad` asks the end-of-turn model, and how long it waits when the model says the
/// person is not done.
///
/// The model is asked once per pause, `check_after_ms` into it: Smart Turn was trained on turns
/// cut about 200 ms after the last word, and asked again later in the same pause its probability
/// creeps up with the silence whether or not the sentence is finished (measured on this
/// project's recordings), so a later check would mostly add false cut-offs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SemanticParams {
    /// Probability of a complete turn that ends it.
    pub threshold: f32,
    /// The check, this long into a pause.
    pub check_after_ms: u64,
    /// The turn ends after this much silence whatever the model said.
    pub max_wait_ms: u64,
}

impl SemanticParams {
    /// OpenAI's eagerness levels: `low` lets people take their time (8 s at most), `high` ends
    /// turns as soon as it can (2 s at most); `medium` (`auto`) is in between (4 s). A more
    /// eager level also needs less confidence from the model.
    pub fn low() -> Self {
        SemanticParams {
            threshold: 0.7,
            check_after_ms: 200,
            max_wait_ms: 8_000,
        }
    }

    pub fn medium() -> Self {
        SemanticParams {
            threshold: 0.5,
            max_wait_ms: 4_000,
            ..Self::low()
        }
    }

    pub fn high() -> Self {
        SemanticParams {
            threshold: 0.35,
            max_wait_ms: 2_000,
            ..Self::low()
        }
    }
}

/// The end-of-turn models a server has loaded, shared by its sessions.
#[derive(Clone, Default)]
pub struct TurnModels {
    /// Judges whether a turn sounds finished (`semantic_vad`).
    pub end_of_turn: Option<Arc<dyn EndOfTurn>>,
    /// Silero VAD, when loaded.
    pub silero: Option<Arc<SileroModel>>,
}

impl TurnModels {
    /// What sessions can ask for.
    pub fn available(&self) -> TurnModelsAvailable {
        TurnModelsAvailable {
            silero: self.silero.is_some(),
            end_of_turn: self.end_of_turn.is_some(),
        }
    }
}

/// What the detector saw, with times in ms from the start of the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TurnEvent {
    /// A turn began; audio from `audio_start_ms` belongs to it.
    SpeechStarted { audio_start_ms: u64 },
    /// Voice stopped at `at_ms`; the turn ends unless voice returns within the silence window.
    Paused { at_ms: u64 },
    /// Voice returned after a pause, within the silence window.
    Resumed { at_ms: u64 },
    /// The turn ended: `silence_duration_ms` of silence after the last voice.
    SpeechStopped {
        audio_end_ms: u64,
        last_voice_ms: u64,
    },
}

#[derive(Debug, Clone, Copy)]
enum State {
    Idle,
    Speaking { paused_since: Option<u64> },
}

/// Streaming turn detector over 16 kHz mono samples.
pub struct TurnDetector {
    vad: Classifier,
    params: VadParams,
    pending: Vec<i16>,
    /// ms of audio processed so far (frame boundaries).
    now_ms: u64,
    /// Voice flags of the last `min_speech_ms` worth of frames.
    recent: std::collections::VecDeque<bool>,
    state: State,
    last_voice_ms: u64,
}

impl TurnDetector {
    /// A detector on webrtc-vad.
    pub fn new(params: VadParams) -> Self {
        Self::with(
            Classifier::WebRtc(Vad::new_with_rate_and_mode(
                SampleRate::Rate16kHz,
                params.mode(),
            )),
            params,
        )
    }

    /// A detector on Silero VAD; `threshold` is then the speech probability a frame needs.
    pub fn silero(params: VadParams, model: Arc<SileroModel>) -> Self {
        Self::with(Classifier::Silero(Box::new(SileroVad::new(model))), params)
    }

    /// Which voice detector this is (`webrtc` or `silero`).
    pub fn engine(&self) -> &'static str {
        match self.vad {
            Classifier::WebRtc(_) => "webrtc",
            Classifier::Silero(_) => "silero",
        }
    }

    fn with(vad: Classifier, params: VadParams) -> Self {
        TurnDetector {
            vad,
            params,
            pending: Vec::with_capacity(FRAME_SAMPLES),
            now_ms: 0,
            recent: std::collections::VecDeque::new(),
            state: State::Idle,
            last_voice_ms: 0,
        }
    }

    pub fn params(&self) -> VadParams {
        self.params
    }

    /// Changes the parameters; a turn in progress continues under the new ones.
    pub fn set_params(&mut self, params: VadParams) {
        if let Classifier::WebRtc(v) = &mut self.vad {
            v.set_mode(params.mode());
        }
        self.params = params;
    }

    /// Whether a turn is in progress.
    pub fn in_speech(&self) -> bool {
        matches!(self.state, State::Speaking { .. })
    }

    /// Milliseconds of audio seen.
    pub fn now_ms(&self) -> u64 {
        self.now_ms
    }

    /// Forgets any turn in progress (after a buffer clear or a manual commit); time keeps running.
    pub fn reset_turn(&mut self) {
        self.state = State::Idle;
        self.recent.clear();
        self.pending.clear();
        if let Classifier::Silero(v) = &mut self.vad {
            v.reset();
        }
    }

    /// Ends the turn in progress now (a turn model judged it complete during a pause) and
    /// returns its [`TurnEvent::SpeechStopped`]; `None` when no turn is in progress.
    pub fn end_turn(&mut self) -> Option<TurnEvent> {
        let State::Speaking { paused_since } = self.state else {
            return None;
        };
        self.state = State::Idle;
        self.recent.clear();
        Some(TurnEvent::SpeechStopped {
            audio_end_ms: self.now_ms,
            last_voice_ms: paused_since.unwrap_or(self.now_ms),
        })
    }

    /// Feeds samples, appending what happened to `events`.
    pub fn push(&mut self, samples: &[f32], events: &mut Vec<TurnEvent>) {
        for &s in samples {
            self.pending.push((s.clamp(-1.0, 1.0) * 32767.0) as i16);
            if self.pending.len() == FRAME_SAMPLES {
                let voiced = match &mut self.vad {
                    // A 20 ms frame at 16 kHz is always a valid webrtc-vad input.
                    Classifier::WebRtc(v) => v.is_voice_segment(&self.pending).unwrap_or(false),
                    Classifier::Silero(v) => {
                        let frame: Vec<f32> =
                            self.pending.iter().map(|&s| s as f32 / 32768.0).collect();
                        v.push(&frame);
                        let needed = if matches!(self.state, State::Speaking { .. }) {
                            self.params.threshold - SILERO_HYSTERESIS
                        } else {
                            self.params.threshold
                        };
                        v.probability() >= needed
                    }
                };
                self.pending.clear();
                self.frame(voiced, events);
            }
        }
    }

    fn frame(&mut self, voiced: bool, events: &mut Vec<TurnEvent>) {
        let start = self.now_ms;
        self.now_ms += FRAME_MS;
        let window = (self.params.min_speech_ms / FRAME_MS).max(1) as usize;
        self.recent.push_back(voiced);
        while self.recent.len() > window {
            self.recent.pop_front();
        }
        if voiced {
            self.last_voice_ms = self.now_ms;
        }
        match self.state {
            State::Idle => {
                let voiced_count = self.recent.iter().filter(|&&v| v).count();
                if self.recent.len() == window && voiced_count * 5 >= window * 4 {
                    let first_voice = start + FRAME_MS - window as u64 * FRAME_MS;
                    let audio_start_ms = first_voice.saturating_sub(self.params.prefix_padding_ms);
                    self.state = State::Speaking { paused_since: None };
                    events.push(TurnEvent::SpeechStarted { audio_start_ms });
                }
            }
            State::Speaking { paused_since } => match (voiced, paused_since) {
                (true, Some(_)) => {
                    self.state = State::Speaking { paused_since: None };
                    events.push(TurnEvent::Resumed { at_ms: start });
                }
                (true, None) => {}
                (false, None) => {
                    self.state = State::Speaking {
                        paused_since: Some(start),
                    };
                    events.push(TurnEvent::Paused { at_ms: start });
                }
                (false, Some(since)) => {
                    if self.now_ms - since >= self.params.silence_duration_ms {
                        self.state = State::Idle;
                        self.recent.clear();
                        events.push(TurnEvent::SpeechStopped {
                            audio_end_ms: self.now_ms,
                            last_voice_ms: since,
                        });
                    }
                }
            },
        }
    }
}

/// Runs the detector over a whole signal and returns the turns as (start, end of voice) in ms.
pub fn segment(samples: &[f32], params: VadParams) -> Vec<(u64, u64)> {
    segment_with(samples, TurnDetector::new(params))
}

/// [`segment`] with a given detector (Silero's, say).
pub fn segment_with(samples: &[f32], mut d: TurnDetector) -> Vec<(u64, u64)> {
    let params = d.params();
    let mut events = Vec::new();
    d.push(samples, &mut events);
    // Close a turn still open at the end: enough silence to outlast webrtc-vad's hangover too.
    let tail = vec![0.0; (params.silence_duration_ms as usize + 1000) * 16];
    d.push(&tail, &mut events);
    let mut turns = Vec::new();
    let mut start = None;
    for e in events {
        match e {
            TurnEvent::SpeechStarted { audio_start_ms } => start = Some(audio_start_ms),
            TurnEvent::SpeechStopped { last_voice_ms, .. } => {
                if let Some(s) = start.take() {
                    turns.push((s, last_voice_ms));
                }
            }
            _ => {}
        }
    }
    turns
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audio::{self, ChannelSelect};

    fn load(name: &str) -> Vec<f32> {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/data")
            .join(name);
        audio::to_model_rate(audio::decode_file(&path, ChannelSelect::Mix).unwrap())
            .unwrap()
            .samples
    }

    fn silence(ms: usize) -> Vec<f32> {
        vec![0.0; ms * 16]
    }

    #[test]
    fn one_utterance_is_one_turn_with_sensible_bounds() {
        let mut audio = silence(1000);
        audio.extend(load("jfk.wav"));
        // jfk.wav pauses ~0.8 s after "my fellow Americans": a 1.2 s window keeps one turn...
        let turns = segment(
            &audio,
            VadParams {
                silence_duration_ms: 1200,
                ..Default::default()
            },
        );
        assert_eq!(turns.len(), 1, "{turns:?}");
        let (start, end) = turns[0];
        // Voice starts within the file's first ~0.3 s (after the 1 s of silence here) and the
        // start reaches back 300 ms of prefix padding; the last word ends ~10.6 s into the file.
        assert!((600..1400).contains(&start), "start {start}");
        assert!((11_000..12_300).contains(&end), "end {end}");
        // ...and the default 500 ms window splits it there and at a 0.54 s pause after "you".
        let turns = segment(&audio, VadParams::default());
        assert_eq!(turns.len(), 3, "{turns:?}");
        assert!((5_000..6_000).contains(&turns[0].1), "{turns:?}");
    }

    #[test]
    fn two_utterances_with_a_long_gap_are_two_turns() {
        let mut audio = load("LDC93S1_pcms16le_1_16000.wav");
        audio.extend(silence(1500));
        audio.extend(load("new-home-in-the-stars-16k.wav"));
        let turns = segment(&audio, VadParams::default());
        assert_eq!(turns.len(), 2, "{turns:?}");
        assert!(turns[0].1 < turns[1].0, "{turns:?}");
    }

    #[test]
    fn a_click_is_not_a_turn() {
        let mut audio = silence(500);
        // 40 ms burst of loud noise, shorter than min_speech_ms.
        audio.extend((0..640).map(|i| if i % 2 == 0 { 0.8 } else { -0.8 }));
        audio.extend(silence(1000));
        assert!(segment(&audio, VadParams::default()).is_empty());
    }

    #[test]
    fn a_short_pause_pauses_and_resumes_without_ending_the_turn() {
        let speech = load("jfk.wav");
        let mut audio = speech[..16_000 * 3].to_vec();
        audio.extend(silence(200));
        audio.extend(&speech[16_000 * 3..16_000 * 6]);
        let mut d = TurnDetector::new(VadParams {
            silence_duration_ms: 600,
            ..Default::default()
        });
        let mut events = Vec::new();
        d.push(&audio, &mut events);
        let starts = events
            .iter()
            .filter(|e| matches!(e, TurnEvent::SpeechStarted { .. }))
            .count();
        let stops = events
            .iter()
            .filter(|e| matches!(e, TurnEvent::SpeechStopped { .. }))
            .count();
        let resumes = events
            .iter()
            .filter(|e| matches!(e, TurnEvent::Resumed { .. }))
            .count();
        assert_eq!((starts, stops), (1, 0), "{events:?}");
        assert!(resumes >= 1, "{events:?}");
        assert!(d.in_speech());
    }

    #[test]
    fn chunking_does_not_change_the_events() {
        let audio = load("LDC93S1_pcms16le_1_16000.wav");
        let mut whole = Vec::new();
        TurnDetector::new(VadParams::default()).push(&audio, &mut whole);
        let mut chunked = Vec::new();
        let mut d = TurnDetector::new(VadParams::default());
        for c in audio.chunks(37 * 16) {
            d.push(c, &mut chunked);
        }
        assert_eq!(whole, chunked);
        assert!(!whole.is_empty());
    }
}
