//! Loading the configured turn-taking models: the end-of-turn model (`semantic_vad`) and Silero
//! VAD, both on the shared ONNX Runtime.

use std::path::PathBuf;
use std::sync::Arc;

use super::TurnsConfig;
use super::VadEngine;
use super::{SileroModel, SmartTurn, TurnModelError, TurnModels};
use crate::models::{ModelStore, Role};

/// Loads what `cfg` asks for (blocking: a few hundred milliseconds). A model the configuration
/// names, or Silero when it is the default detector, must load; the default models are skipped
/// with a warning when they are not installed, and the server then runs without them.
pub fn open(
    cfg: &TurnsConfig,
    onnxruntime: Option<PathBuf>,
    store: &ModelStore,
) -> Result<TurnModels, TurnModelError> {
    if !cfg.enabled {
        return Ok(TurnModels::default());
    }
    let load_err = |e: crate::models::ModelError| TurnModelError::Load(e.to_string());
    let runtime = match onnxruntime {
        Some(p) => p,
        None => store.resolve(Role::Runtime, None).map_err(load_err)?,
    };
    let end_of_turn = match store.resolve(Role::Turn, cfg.model.as_deref()) {
        Ok(path) => match SmartTurn::load(&runtime, &path, cfg.workers) {
            Ok(m) => Some(Arc::new(m) as Arc<dyn super::EndOfTurn>),
            Err(e) if cfg.model.is_some() => return Err(e),
            Err(e) => {
                tracing::warn!(error = %e, "no end-of-turn model: semantic_vad will end turns on silence");
                None
            }
        },
        Err(e) if cfg.model.is_some() => return Err(load_err(e)),
        Err(e) => {
            tracing::warn!(error = %e, "no end-of-turn model: semantic_vad will end turns on silence");
            None
        }
    };
    let needed = cfg.silero_model.is_some() || cfg.vad == VadEngine::Silero;
    let silero = match store
        .resolve(Role::Vad, cfg.silero_model.as_deref())
        .map_err(load_err)
        .and_then(|path| SileroModel::load(&runtime, &path))
    {
        Ok(m) => Some(m),
        Err(e) if needed => return Err(e),
        Err(e) => {
            tracing::warn!(error = %e, "Silero VAD is not available; sessions use webrtc-vad");
            None
        }
    };
    Ok(TurnModels {
        end_of_turn,
        silero,
    })
}
