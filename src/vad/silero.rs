//! Silero VAD: a small neural voice detector (2.3 MB ONNX, from the `pipecat-ai` wheel), an
//! alternative to webrtc-vad that holds up better in noise and music.
//!
//! The model reads 32 ms windows (512 samples at 16 kHz, with the previous window's last 64
//! samples as context) and carries a recurrent state between them. One [`SileroModel`] is
//! shared by every session (a call takes well under a millisecond); each session has its own
//! [`SileroVad`] holding that state.

use std::path::Path;
use std::sync::{Arc, Mutex};

use super::smart_turn::TurnModelError;
use crate::onnx::{self, Session, Tensor};

/// Samples per window at 16 kHz.
pub const WINDOW: usize = 512;
const CONTEXT: usize = 64;
const STATE: usize = 2 * 128;

/// The loaded model, shared by sessions.
pub struct SileroModel {
    session: Mutex<Session>,
}

impl SileroModel {
    /// Loads `model` on the ONNX Runtime library `runtime` (one thread).
    pub fn load(runtime: &Path, model: &Path) -> Result<Arc<Self>, TurnModelError> {
        let session =
            onnx::open(runtime, model, 1).map_err(|e| TurnModelError::Load(e.to_string()))?;
        onnx::require_inputs(
            &session,
            model,
            "Silero VAD model (v5)",
            &["input", "state", "sr"],
        )
        .map_err(TurnModelError::Load)?;
        crate::metrics::model_memory("vad", crate::metrics::file_bytes(model));
        tracing::info!(model = %model.display(), "Silero VAD loaded");
        Ok(Arc::new(SileroModel {
            session: Mutex::new(session),
        }))
    }

    fn run(&self, input: Vec<f32>, state: &mut [f32; STATE]) -> Result<f32, TurnModelError> {
        let engine = |e: ort::Error| TurnModelError::Engine(e.to_string());
        let x = Tensor::from_array(([1usize, CONTEXT + WINDOW], input)).map_err(engine)?;
        let s = Tensor::from_array(([2usize, 1, 128], state.to_vec())).map_err(engine)?;
        let sr = Tensor::from_array(((), vec![16_000i64])).map_err(engine)?;
        let mut session = self.session.lock().unwrap_or_else(|p| p.into_inner());
        let outputs = session
            .run(ort::inputs!["input" => x, "state" => s, "sr" => sr])
            .map_err(engine)?;
        let (_, p) = outputs["output"]
            .try_extract_tensor::<f32>()
            .map_err(engine)?;
        let (_, next) = outputs["stateN"]
            .try_extract_tensor::<f32>()
            .map_err(engine)?;
        if next.len() != STATE {
            return Err(TurnModelError::Engine(format!(
                "the state has {} values, not {STATE}",
                next.len()
            )));
        }
        state.copy_from_slice(next);
        let p = p.first().copied().unwrap_or(0.0);
        Ok(if p.is_finite() {
            p.clamp(0.0, 1.0)
        } else {
            0.0
        })
    }
}

/// One stream's detector: feed 16 kHz samples, read the latest speech probability.
pub struct SileroVad {
    model: Arc<SileroModel>,
    state: [f32; STATE],
    context: [f32; CONTEXT],
    pending: Vec<f32>,
    probability: f32,
    failed: bool,
}

impl SileroVad {
    pub fn new(model: Arc<SileroModel>) -> Self {
        SileroVad {
            model,
            state: [0.0; STATE],
            context: [0.0; CONTEXT],
            pending: Vec::with_capacity(WINDOW),
            probability: 0.0,
            failed: false,
        }
    }

    /// Feeds samples; every full 32 ms window updates [`SileroVad::probability`].
    pub fn push(&mut self, samples: &[f32]) {
        for &s in samples {
            self.pending.push(s);
            if self.pending.len() == WINDOW {
                let mut input = Vec::with_capacity(CONTEXT + WINDOW);
                input.extend_from_slice(&self.context);
                input.extend_from_slice(&self.pending);
                self.context
                    .copy_from_slice(&self.pending[WINDOW - CONTEXT..]);
                self.pending.clear();
                match self.model.run(input, &mut self.state) {
                    Ok(p) => self.probability = p,
                    Err(e) => {
                        // Logged once per stream; the stream reads as silence from here.
                        if !self.failed {
                            tracing::error!(error = %e, "Silero VAD failed");
                            self.failed = true;
                        }
                        self.probability = 0.0;
                    }
                }
            }
        }
    }

    /// The speech probability of the last full window.
    pub fn probability(&self) -> f32 {
        self.probability
    }

    /// Forgets the stream (its recurrent state and context).
    pub fn reset(&mut self) {
        self.state = [0.0; STATE];
        self.context = [0.0; CONTEXT];
        self.pending.clear();
        self.probability = 0.0;
    }
}
