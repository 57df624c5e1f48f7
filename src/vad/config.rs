//! Turn-taking settings: the voice detector and the end-of-turn model (`--vad`, `--turn-model`,
//! `--no-turn-models`), the file's `[turns]` table, and the validated [`TurnsConfig`] that
//! [`super::open`] opens.

use clap::Args;
use serde::Deserialize;

use super::VadEngine;
use crate::setting::{in_range, ConfigError};

/// Turn-taking settings.
#[derive(Debug, Clone, Default, Args)]
pub struct TurnsArgs {
    /// Voice detector under turn detection: `webrtc` (no model) or `silero` (Silero VAD);
    /// sessions may choose with `session.voxd.vad` [default: webrtc].
    #[arg(long, env = "VOXD_VAD")]
    pub vad: Option<String>,
    /// End-of-turn model for `semantic_vad`: a manifest name (smart-turn-v3.2) or a path to a
    /// Smart Turn v3 ONNX file.
    #[arg(long, env = "VOXD_TURN_MODEL")]
    pub turn_model: Option<String>,
    /// Load neither the end-of-turn model nor Silero VAD (`semantic_vad` then ends turns after
    /// 500 ms of silence).
    #[arg(long, env = "VOXD_NO_TURN_MODELS")]
    pub no_turn_models: bool,
}

/// The file's `[turns]` table.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileTurns {
    enabled: Option<bool>,
    vad: Option<String>,
    model: Option<String>,
    silero_model: Option<String>,
    workers: Option<usize>,
}

/// Turn-taking configuration: the voice detector and the end-of-turn model.
#[derive(Debug, Clone)]
pub struct TurnsConfig {
    /// Load the turn-taking models (Silero VAD, the end-of-turn model).
    pub enabled: bool,
    /// The voice detector sessions start with.
    pub vad: VadEngine,
    /// `None`: the manifest's end-of-turn model.
    pub model: Option<String>,
    /// `None`: the manifest's Silero VAD.
    pub silero_model: Option<String>,
    /// End-of-turn workers (one thread each).
    pub workers: usize,
}

impl TurnsConfig {
    /// Flags over the file over the defaults, validated.
    pub fn resolve(args: &TurnsArgs, file: FileTurns) -> Result<Self, ConfigError> {
        let vad_name = args
            .vad
            .clone()
            .or(file.vad)
            .unwrap_or_else(|| "webrtc".into());
        let vad = VadEngine::parse(&vad_name).ok_or_else(|| {
            ConfigError::invalid(
                "vad",
                format!("`{vad_name}` is not a voice detector: use webrtc or silero"),
            )
        })?;
        let workers = in_range("turns.workers", file.workers.unwrap_or(1), 1..=16)?;
        let turns = TurnsConfig {
            enabled: !args.no_turn_models && file.enabled.unwrap_or(true),
            vad,
            model: args.turn_model.clone().or(file.model),
            silero_model: file.silero_model,
            workers,
        };
        if !turns.enabled && vad == VadEngine::Silero {
            return Err(ConfigError::invalid(
                "vad",
                "--vad silero needs the turn-taking models (drop --no-turn-models)",
            ));
        }
        Ok(turns)
    }
}
