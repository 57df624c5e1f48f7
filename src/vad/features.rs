//! Whisper-style log-mel features of the last 8 s of a turn: the input of the Smart Turn model.
//!
//! The recipe is Whisper's feature extractor with an 8 s window:
//! - the last 128 000 samples at 16 kHz, left-padded with zeros when the turn is shorter;
//! - the waveform normalised to zero mean and unit variance;
//! - a centred short-time Fourier transform (reflect padding, 400-sample periodic Hann window,
//!   hop 160), power spectrum;
//! - an 80-band Slaney mel filterbank (0–8 kHz, area-normalised), `log10` with a 1e-10 floor;
//! - the last frame dropped (800 remain), values clamped to the maximum − 8, then `(x + 4) / 4`.
//!
//! `scripts/reference/smart_turn_features.py` computes the same features with the reference
//! implementation; a test compares them.

use std::sync::Arc;

use realfft::{RealFftPlanner, RealToComplex};

/// Sample rate of the features' input.
pub const SAMPLE_RATE: usize = 16_000;
/// Samples in the analysed window (8 s).
pub const WINDOW_SAMPLES: usize = 8 * SAMPLE_RATE;
/// Mel bands.
pub const MELS: usize = 80;
/// Frames in the window (10 ms each).
pub const FRAMES: usize = 800;
const N_FFT: usize = 400;
const HOP: usize = 160;
const BINS: usize = N_FFT / 2 + 1;

/// One mel band: its first FFT bin and the weights from there.
struct Band {
    first: usize,
    weights: Vec<f64>,
}

/// Computes log-mel features; build it once and reuse it (it holds the FFT plan and filters).
pub struct MelFeatures {
    fft: Arc<dyn RealToComplex<f64>>,
    window: Vec<f64>,
    bands: Vec<Band>,
}

impl Default for MelFeatures {
    fn default() -> Self {
        Self::new()
    }
}

fn hz_to_mel(hz: f64) -> f64 {
    // Slaney: linear below 1 kHz, logarithmic above.
    if hz >= 1000.0 {
        15.0 + (hz / 1000.0).ln() * 27.0 / 6.4f64.ln()
    } else {
        3.0 * hz / 200.0
    }
}

fn mel_to_hz(mel: f64) -> f64 {
    if mel >= 15.0 {
        1000.0 * (6.4f64.ln() / 27.0 * (mel - 15.0)).exp()
    } else {
        200.0 * mel / 3.0
    }
}

fn filterbank() -> Vec<Band> {
    let top = hz_to_mel(SAMPLE_RATE as f64 / 2.0);
    let edges: Vec<f64> = (0..MELS + 2)
        .map(|i| mel_to_hz(top * i as f64 / (MELS + 1) as f64))
        .collect();
    let bin_hz = |k: usize| (SAMPLE_RATE / 2) as f64 * k as f64 / (BINS - 1) as f64;
    (0..MELS)
        .map(|m| {
            let (lo, mid, hi) = (edges[m], edges[m + 1], edges[m + 2]);
            let norm = 2.0 / (hi - lo);
            let all: Vec<f64> = (0..BINS)
                .map(|k| {
                    let f = bin_hz(k);
                    let up = (f - lo) / (mid - lo);
                    let down = (hi - f) / (hi - mid);
                    up.min(down).max(0.0) * norm
                })
                .collect();
            let first = all.iter().position(|&w| w > 0.0).unwrap_or(0);
            let last = all.iter().rposition(|&w| w > 0.0).unwrap_or(0);
            Band {
                first,
                weights: all[first..=last.max(first)].to_vec(),
            }
        })
        .collect()
}

impl MelFeatures {
    pub fn new() -> Self {
        let window = (0..N_FFT)
            .map(|n| 0.5 - 0.5 * (2.0 * std::f64::consts::PI * n as f64 / N_FFT as f64).cos())
            .collect();
        MelFeatures {
            fft: RealFftPlanner::<f64>::new().plan_fft_forward(N_FFT),
            window,
            bands: filterbank(),
        }
    }

    /// Features of the last 8 s of `audio` (16 kHz), as `MELS` rows of `FRAMES` values
    /// (row-major, the layout of the model's `[1, 80, 800]` input).
    pub fn compute(&self, audio: &[f32]) -> Vec<f32> {
        let tail = &audio[audio.len().saturating_sub(WINDOW_SAMPLES)..];
        let mut x = vec![0f32; WINDOW_SAMPLES - tail.len()];
        x.extend_from_slice(tail);
        normalise(&mut x);

        // Reflect padding by half a window on both sides (the edge sample is not repeated).
        let pad = N_FFT / 2;
        let n = x.len();
        let at = |i: isize| -> f64 {
            let j = if i < 0 {
                (-i) as usize
            } else if i as usize >= n {
                2 * (n - 1) - i as usize
            } else {
                i as usize
            };
            x[j] as f64
        };

        let mut log = vec![0f64; MELS * FRAMES];
        let mut input = self.fft.make_input_vec();
        let mut spectrum = self.fft.make_output_vec();
        let mut power = vec![0f64; BINS];
        for frame in 0..FRAMES {
            let start = (frame * HOP) as isize - pad as isize;
            for (k, v) in input.iter_mut().enumerate() {
                *v = at(start + k as isize) * self.window[k];
            }
            // Lengths match the plan, so this cannot fail.
            let _ = self.fft.process(&mut input, &mut spectrum);
            for (p, c) in power.iter_mut().zip(&spectrum) {
                *p = c.norm_sqr();
            }
            for (m, band) in self.bands.iter().enumerate() {
                let energy: f64 = band
                    .weights
                    .iter()
                    .zip(&power[band.first..])
                    .map(|(w, p)| w * p)
                    .sum();
                log[m * FRAMES + frame] = energy.max(1e-10).log10();
            }
        }
        let max = log.iter().copied().fold(f64::MIN, f64::max);
        log.iter()
            .map(|&v| ((v.max(max - 8.0) + 4.0) / 4.0) as f32)
            .collect()
    }
}

/// Zero mean and unit variance (silence stays silence).
fn normalise(x: &mut [f32]) {
    let n = x.len() as f64;
    let mean = x.iter().map(|&v| v as f64).sum::<f64>() / n;
    let var = x.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n;
    let scale = 1.0 / (var + 1e-7).sqrt();
    for v in x.iter_mut() {
        *v = ((*v as f64 - mean) * scale) as f32;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize)]
    struct Reference {
        cases: Vec<Case>,
    }

    #[derive(serde::Deserialize)]
    struct Case {
        name: String,
        /// The input: a sine sum with a seed, rebuilt here exactly as the script builds it.
        samples: usize,
        /// Selected feature values: (mel, frame, value).
        values: Vec<(usize, usize, f32)>,
        mean: f64,
        max: f32,
        min: f32,
    }

    /// The script's input: a deterministic chirp-like mix, so no audio file is needed.
    fn signal(samples: usize) -> Vec<f32> {
        (0..samples)
            .map(|i| {
                let t = i as f64 / SAMPLE_RATE as f64;
                (0.3 * (2.0 * std::f64::consts::PI * 220.0 * t).sin()
                    + 0.2 * (2.0 * std::f64::consts::PI * (440.0 + 300.0 * t) * t).sin()
                    + 0.05 * (2.0 * std::f64::consts::PI * 3100.0 * t).sin()) as f32
            })
            .collect()
    }

    #[test]
    fn features_match_the_reference_implementation() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/data/turns/smart_turn_features_reference.json");
        let reference: Reference = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
        let mel = MelFeatures::new();
        assert!(!reference.cases.is_empty());
        for case in reference.cases {
            let f = mel.compute(&signal(case.samples));
            assert_eq!(f.len(), MELS * FRAMES);
            let mean = f.iter().map(|&v| v as f64).sum::<f64>() / f.len() as f64;
            let max = f.iter().copied().fold(f32::MIN, f32::max);
            let min = f.iter().copied().fold(f32::MAX, f32::min);
            assert!(
                (mean - case.mean).abs() < 1e-4,
                "{}: mean {mean} vs {}",
                case.name,
                case.mean
            );
            assert!(
                (max - case.max).abs() < 1e-4,
                "{}: max {max} vs {}",
                case.name,
                case.max
            );
            assert!(
                (min - case.min).abs() < 1e-4,
                "{}: min {min} vs {}",
                case.name,
                case.min
            );
            for (m, t, want) in case.values {
                let got = f[m * FRAMES + t];
                assert!(
                    (got - want).abs() < 1e-3,
                    "{}: mel {m} frame {t}: {got} vs {want}",
                    case.name
                );
            }
        }
    }
}
