//! Recordings for the bench and where their speech really ends.
//!
//! The true end of each utterance is found once, offline, by running voxd's VAD over the whole
//! file with the session's turn settings, and stored beside the audio as `FILE.speech.json`. The
//! bench measures every latency from those moments: when the person really stopped, not when the
//! server noticed.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::BenchError;
use crate::audio::{self, ChannelSelect};
use crate::vad::{self, VadParams};

/// The speech in one file, as stored beside it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SpeechFile {
    /// The turn detector settings the segments were found with.
    pub silence_duration_ms: u64,
    pub threshold: f32,
    /// File length, ms.
    pub duration_ms: u64,
    /// Each utterance (a turn at these settings): start and end of voice, ms into the file.
    pub segments: Vec<(u64, u64)>,
}

/// One recording, ready to stream.
#[derive(Debug, Clone)]
pub struct Recording {
    pub name: String,
    /// Mono samples at `rate`.
    pub samples: Vec<f32>,
    pub rate: u32,
    pub speech: SpeechFile,
}

/// `FILE.speech.json` beside `file`.
pub fn speech_path(file: &Path) -> PathBuf {
    let mut name = file.file_name().unwrap_or_default().to_os_string();
    name.push(".speech.json");
    file.with_file_name(name)
}

/// Finds the utterances of 16 kHz `samples` with the turn detector.
pub fn find_speech(samples_16k: &[f32], params: VadParams) -> SpeechFile {
    SpeechFile {
        silence_duration_ms: params.silence_duration_ms,
        threshold: params.threshold,
        duration_ms: samples_16k.len() as u64 * 1000 / 16_000,
        segments: vad::segment(samples_16k, params),
    }
}

/// Loads `file` resampled to `rate`, with its speech segments: read from `FILE.speech.json` when
/// that was made with the same settings, else found now and written there (a read-only folder
/// only costs the recomputation next time).
pub fn load(file: &Path, rate: u32, params: VadParams) -> Result<Recording, BenchError> {
    let decoded = audio::decode_file(file, ChannelSelect::Mix).map_err(|e| BenchError::Audio {
        path: file.display().to_string(),
        message: e.to_string(),
    })?;
    let audio_err = |e: audio::AudioError| BenchError::Audio {
        path: file.display().to_string(),
        message: e.to_string(),
    };
    let samples = audio::resample::resample_all(&decoded.samples, decoded.sample_rate, rate)
        .map_err(audio_err)?;
    let stored = speech_path(file);
    let cached = std::fs::read_to_string(&stored)
        .ok()
        .and_then(|t| serde_json::from_str::<SpeechFile>(&t).ok())
        .filter(|s| {
            s.silence_duration_ms == params.silence_duration_ms && s.threshold == params.threshold
        });
    let speech = match cached {
        Some(s) => s,
        None => {
            let at_16k = audio::to_model_rate(decoded).map_err(audio_err)?.samples;
            let s = find_speech(&at_16k, params);
            let text = serde_json::to_string_pretty(&s).unwrap_or_default();
            if let Err(e) = std::fs::write(&stored, text + "\n") {
                tracing::warn!(path = %stored.display(), error = %e, "cannot store the speech segments");
            }
            s
        }
    };
    if speech.segments.is_empty() {
        return Err(BenchError::NoSpeech(file.display().to_string()));
    }
    Ok(Recording {
        name: file
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        samples,
        rate,
        speech,
    })
}
