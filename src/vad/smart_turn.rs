//! Semantic end of turn: whether what a person said so far sounds finished, from the audio alone.
//!
//! [`SmartTurn`] runs Smart Turn v3 (a Whisper-tiny encoder with a classifier head, 8.7 MB ONNX,
//! from the `pipecat-ai` wheel) on ONNX Runtime workers of its own, so a check never waits
//! behind transcriptions. Its input is the [`features`](super::features) of the last 8 s of the
//! turn; its output is the probability that the turn is complete.
//!
//! [`EndOfTurn`] is the interface the realtime audio stage uses: it asks at a short pause and
//! blocks its own thread (never the async executor) for the answer, typically 40–100 ms on one
//! core.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::features::{MelFeatures, FRAMES, MELS};
use crate::onnx::{self, Session, Tensor};
use crate::workers::{PoolError, WorkerPool};

/// Checks that may wait for a worker; more are refused (the caller keeps listening instead).
const QUEUE: usize = 16;

/// What can go wrong with a turn model.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TurnModelError {
    #[error("the turn model could not be loaded: {0}")]
    Load(String),
    #[error("the turn model failed: {0}")]
    Engine(String),
    #[error(transparent)]
    Pool(#[from] PoolError),
}

/// One check's outcome.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Verdict {
    /// Probability (0–1) that the turn is complete.
    pub probability: f32,
    /// Time spent computing (features and model), without queueing.
    pub compute: Duration,
}

/// A model that tells whether a turn is complete.
pub trait EndOfTurn: Send + Sync {
    /// Judges the turn in `audio` (16 kHz mono, trailing pause included). Blocks the calling
    /// thread, which must not be an async executor thread.
    fn check_blocking(&self, audio: Vec<f32>) -> Result<Verdict, TurnModelError>;

    /// A one-line description for logs and `/health`.
    fn describe(&self) -> String;
}

struct Worker {
    session: Session,
    mel: MelFeatures,
}

/// Smart Turn v3 on a pool of ONNX Runtime sessions.
pub struct SmartTurn {
    model: PathBuf,
    pool: WorkerPool<Worker>,
}

impl SmartTurn {
    /// Loads `model` on the ONNX Runtime library `runtime`, with `workers` sessions of one
    /// thread each.
    pub fn load(runtime: &Path, model: &Path, workers: usize) -> Result<Self, TurnModelError> {
        let mut states = Vec::new();
        for _ in 0..workers.max(1) {
            let session =
                onnx::open(runtime, model, 1).map_err(|e| TurnModelError::Load(e.to_string()))?;
            onnx::require_inputs(&session, model, "Smart Turn model", &["input_features"])
                .map_err(TurnModelError::Load)?;
            states.push(Worker {
                session,
                mel: MelFeatures::new(),
            });
        }
        crate::metrics::model_memory(
            "turn",
            crate::metrics::file_bytes(model) * states.len() as u64,
        );
        tracing::info!(model = %model.display(), workers, "turn model loaded");
        Ok(SmartTurn {
            model: model.to_path_buf(),
            pool: WorkerPool::start("turn", states, QUEUE),
        })
    }
}

fn judge(worker: &mut Worker, audio: &[f32]) -> Result<f32, TurnModelError> {
    let engine = |e: ort::Error| TurnModelError::Engine(e.to_string());
    let features = worker.mel.compute(audio);
    let input = Tensor::from_array(([1usize, MELS, FRAMES], features)).map_err(engine)?;
    let outputs = worker
        .session
        .run(ort::inputs!["input_features" => input])
        .map_err(engine)?;
    let (_, p) = outputs[0].try_extract_tensor::<f32>().map_err(engine)?;
    let p = p
        .first()
        .copied()
        .ok_or_else(|| TurnModelError::Engine("the model gave no output".into()))?;
    // The exported model ends in a sigmoid already; a NaN would mean a broken model.
    if !p.is_finite() {
        return Err(TurnModelError::Engine(format!("the model gave {p}")));
    }
    Ok(p.clamp(0.0, 1.0))
}

impl EndOfTurn for SmartTurn {
    fn check_blocking(&self, audio: Vec<f32>) -> Result<Verdict, TurnModelError> {
        // The turn's end waits on this: partials give way to it.
        let _opening = crate::workers::OpeningWork::begin();
        let (probability, compute) = self.pool.run_blocking(move |w| {
            let t = Instant::now();
            judge(w, &audio).map(|p| (p, t.elapsed()))
        })??;
        crate::metrics::global()
            .turn_model
            .observe_duration(compute);
        Ok(Verdict {
            probability,
            compute,
        })
    }

    fn describe(&self) -> String {
        format!("smart-turn ({})", self.model.display())
    }
}
