//! The embedded voice: a Piper VITS model (`voice.onnx` plus `voice.onnx.json`) on ONNX Runtime.
//!
//! Text becomes IPA phonemes through espeak-ng ([`super::espeak`]), phonemes become ids through
//! the voice's `phoneme_id_map` (each phoneme followed by the pad symbol, between `^` and `$`),
//! and the model turns ids into samples at the voice's rate. Each worker thread of the pool owns
//! one ONNX session; a request runs whole on one worker.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use futures::future::BoxFuture;
use serde::Deserialize;

use super::{espeak, text, SpeakRequest, Speech, Tts, TtsError};
use crate::onnx::{self, Session, Tensor};
use crate::workers::WorkerPool;

/// Longest phoneme-id sequence synthesised in one run; longer text is refused (callers cut
/// text into pieces of at most [`text::MAX_PIECE_CHARS`], far below this).
const MAX_IDS: usize = 4000;
/// Jobs that may wait for a worker.
const QUEUE: usize = 64;

/// The parts of `voice.onnx.json` that synthesis needs.
#[derive(Debug, Clone, Deserialize)]
pub struct VoiceConfig {
    pub audio: AudioConfig,
    pub espeak: EspeakConfig,
    #[serde(default)]
    pub inference: InferenceConfig,
    pub phoneme_id_map: HashMap<String, Vec<i64>>,
    #[serde(default = "one")]
    pub num_speakers: u32,
    #[serde(default)]
    pub phoneme_type: Option<String>,
}

fn one() -> u32 {
    1
}

#[derive(Debug, Clone, Deserialize)]
pub struct AudioConfig {
    pub sample_rate: u32,
}

#[derive(Debug, Clone, Deserialize)]
pub struct EspeakConfig {
    pub voice: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct InferenceConfig {
    #[serde(default = "noise_scale")]
    pub noise_scale: f32,
    #[serde(default = "length_scale")]
    pub length_scale: f32,
    #[serde(default = "noise_w")]
    pub noise_w: f32,
}

fn noise_scale() -> f32 {
    0.667
}
fn length_scale() -> f32 {
    1.0
}
fn noise_w() -> f32 {
    0.8
}

impl Default for InferenceConfig {
    fn default() -> Self {
        InferenceConfig {
            noise_scale: noise_scale(),
            length_scale: length_scale(),
            noise_w: noise_w(),
        }
    }
}

impl VoiceConfig {
    /// Reads and checks a voice's JSON.
    pub fn load(path: &Path) -> Result<Self, TtsError> {
        let bad = |m: String| TtsError::Load(format!("{}: {m}", path.display()));
        let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
        let config: VoiceConfig = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
        if let Some(t) = config.phoneme_type.as_deref().filter(|t| *t != "espeak") {
            return Err(bad(format!(
                "phoneme_type `{t}` is not supported (only espeak voices are)"
            )));
        }
        if !(8_000..=48_000).contains(&config.audio.sample_rate) {
            return Err(bad(format!(
                "sample rate {} is outside 8000..=48000",
                config.audio.sample_rate
            )));
        }
        for symbol in ["_", "^", "$", " "] {
            if config.id(symbol).is_none() {
                return Err(bad(format!("phoneme_id_map has no `{symbol}`")));
            }
        }
        Ok(config)
    }

    fn id(&self, symbol: &str) -> Option<&[i64]> {
        self.phoneme_id_map
            .get(symbol)
            .map(Vec::as_slice)
            .filter(|v| !v.is_empty())
    }

    /// The model's input ids for `text`: `^`, then each phoneme followed by the pad `_`, clause
    /// punctuation and a space between clauses, then `$`. Phonemes the voice does not know are
    /// skipped.
    pub fn phoneme_ids(&self, text: &str) -> Result<Vec<i64>, TtsError> {
        let pad = self.id("_").expect("checked at load").to_vec();
        let mut ids = self.id("^").expect("checked at load").to_vec();
        ids.extend(&pad);
        let push = |ids: &mut Vec<i64>, symbol: &str| {
            if let Some(id) = self.id(symbol) {
                ids.extend(id);
                ids.extend(&pad);
            }
        };
        let mut buf = [0u8; 4];
        for (n, (clause, punct)) in text::clauses(text).into_iter().enumerate() {
            if n > 0 {
                push(&mut ids, " ");
            }
            let phonemes = espeak::phonemize(clause, &self.espeak.voice)?.join(" ");
            for c in phonemes.chars() {
                push(&mut ids, c.encode_utf8(&mut buf));
            }
            if let Some(p) = punct {
                push(&mut ids, p.encode_utf8(&mut buf));
            }
        }
        ids.extend(self.id("$").expect("checked at load"));
        Ok(ids)
    }
}

/// One worker's model.
struct Worker {
    session: Session,
    has_sid: bool,
}

/// A Piper voice on a pool of ONNX Runtime workers.
pub struct PiperTts {
    name: String,
    model: PathBuf,
    config: Arc<VoiceConfig>,
    pool: WorkerPool<Worker>,
}

impl PiperTts {
    /// Loads the voice `model` (its JSON is `model` + `.json`) on the ONNX Runtime library
    /// `runtime`: `workers` sessions, each computing on `threads` threads. Checks that espeak-ng
    /// works with the voice's language.
    pub fn load(
        runtime: &Path,
        model: &Path,
        workers: usize,
        threads: usize,
    ) -> Result<Self, TtsError> {
        let json = PathBuf::from(format!("{}.json", model.display()));
        let config = VoiceConfig::load(&json)?;
        espeak::check(&config.espeak.voice)?;
        let mut states = Vec::new();
        for _ in 0..workers.max(1) {
            let session =
                onnx::open(runtime, model, threads).map_err(|e| TtsError::Load(e.to_string()))?;
            onnx::require_inputs(
                &session,
                model,
                "Piper voice",
                &["input", "input_lengths", "scales"],
            )
            .map_err(TtsError::Load)?;
            let has_sid = onnx::input_names(&session).iter().any(|i| i == "sid");
            states.push(Worker { session, has_sid });
        }
        let name = voice_name(model);
        // Each session holds its own copy of the weights.
        crate::metrics::model_memory(
            "voice",
            crate::metrics::file_bytes(model) * states.len() as u64,
        );
        tracing::info!(voice = %name, model = %model.display(), rate = config.audio.sample_rate, workers, threads, "voice loaded");
        Ok(PiperTts {
            name,
            model: model.to_path_buf(),
            config: Arc::new(config),
            pool: WorkerPool::start("tts", states, QUEUE),
        })
    }

    /// The voice's own sample rate.
    pub fn sample_rate(&self) -> u32 {
        self.config.audio.sample_rate
    }
}

/// A voice's short name from its file: `en_US-joe-medium.onnx` gives `joe`.
pub fn voice_name(model: &Path) -> String {
    let stem = model
        .file_name()
        .and_then(|s| s.to_str())
        .unwrap_or("voice")
        .trim_end_matches(".onnx");
    let parts: Vec<&str> = stem.split('-').collect();
    match parts.as_slice() {
        [_lang, name, _quality] => name.to_string(),
        _ => stem.to_string(),
    }
}

fn synthesize(
    worker: &mut Worker,
    config: &VoiceConfig,
    text: &str,
    speed: f32,
) -> Result<Vec<f32>, TtsError> {
    let ids = config.phoneme_ids(text)?;
    if ids.len() > MAX_IDS {
        return Err(TtsError::TooLong {
            len: text.chars().count(),
            max: text::MAX_PIECE_CHARS,
        });
    }
    let n = ids.len();
    let inf = &config.inference;
    let engine = |e: ort::Error| TtsError::Engine(e.to_string());
    let input = Tensor::from_array(([1usize, n], ids)).map_err(engine)?;
    let lengths = Tensor::from_array(([1usize], vec![n as i64])).map_err(engine)?;
    let scales = Tensor::from_array((
        [3usize],
        vec![inf.noise_scale, inf.length_scale / speed, inf.noise_w],
    ))
    .map_err(engine)?;
    let outputs = if worker.has_sid {
        let sid = Tensor::from_array(([1usize], vec![0i64])).map_err(engine)?;
        worker.session.run(ort::inputs![
            "input" => input,
            "input_lengths" => lengths,
            "scales" => scales,
            "sid" => sid,
        ])
    } else {
        worker.session.run(ort::inputs![
            "input" => input,
            "input_lengths" => lengths,
            "scales" => scales,
        ])
    }
    .map_err(engine)?;
    let (_, audio) = outputs[0].try_extract_tensor::<f32>().map_err(engine)?;
    Ok(audio.iter().map(|s| s.clamp(-1.0, 1.0)).collect())
}

impl Tts for PiperTts {
    fn speak(&self, request: SpeakRequest) -> BoxFuture<'_, Result<Speech, TtsError>> {
        Box::pin(async move {
            let text = text::spoken_forms(&text::speakable(&request.text));
            if text.is_empty() {
                return Err(TtsError::Empty);
            }
            let config = self.config.clone();
            let speed = request.speed;
            let job = move |worker: &mut Worker| {
                let started = Instant::now();
                synthesize(worker, &config, &text, speed).map(|s| (s, started.elapsed()))
            };
            let (samples, compute) = if request.urgent {
                self.pool.run_urgent(job).await??
            } else {
                self.pool.run(job).await??
            };
            crate::metrics::global().tts.observe_duration(compute);
            Ok(Speech {
                samples,
                sample_rate: self.config.audio.sample_rate,
                compute,
            })
        })
    }

    fn voices(&self) -> Vec<String> {
        vec![self.name.clone()]
    }

    fn describe(&self) -> String {
        format!(
            "piper {} ({}, {} Hz)",
            self.name,
            self.model.display(),
            self.config.audio.sample_rate
        )
    }

    fn queue_depth(&self) -> Option<usize> {
        Some(self.pool.queued())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn voice_names_come_from_piper_file_names() {
        assert_eq!(voice_name(Path::new("/m/en_US-joe-medium.onnx")), "joe");
        assert_eq!(voice_name(Path::new("custom.onnx")), "custom");
    }

    #[test]
    fn a_config_without_the_special_symbols_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.onnx.json");
        std::fs::write(
            &path,
            r#"{"audio":{"sample_rate":22050},"espeak":{"voice":"en-us"},"phoneme_id_map":{"_":[0]}}"#,
        )
        .unwrap();
        let err = VoiceConfig::load(&path).unwrap_err();
        assert!(err.to_string().contains("`^`"), "{err}");
    }
}
