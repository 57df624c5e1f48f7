//! Opening the configured speech synthesiser: the embedded Piper voice, or a remote endpoint.

use std::sync::Arc;
use std::time::Duration;

use super::lexicon::{Lexicon, Pronouncing};
use super::TtsConfig;
use super::{PiperTts, RemoteTts, Tts, TtsError};
use crate::models::{ModelStore, Role};

/// Opens the synthesiser `cfg` describes (blocking: loading a voice takes about a second), with
/// its pronunciation lexicon when one is configured.
pub fn open(cfg: &TtsConfig, store: &ModelStore) -> Result<Arc<dyn Tts>, TtsError> {
    // The lexicon first: a mistake in it is found before a second is spent loading the voice.
    let lexicon = match &cfg.lexicon {
        Some(path) => {
            let lexicon = Lexicon::read(path).map_err(|e| TtsError::Load(e.to_string()))?;
            tracing::info!(words = lexicon.len(), path = %path.display(), "pronunciation lexicon loaded");
            Some(lexicon)
        }
        None => None,
    };
    let voice = open_voice(cfg, store)?;
    Ok(match lexicon {
        Some(lexicon) => Arc::new(Pronouncing::new(voice, lexicon)),
        None => voice,
    })
}

fn open_voice(cfg: &TtsConfig, store: &ModelStore) -> Result<Arc<dyn Tts>, TtsError> {
    if let Some(url) = &cfg.url {
        let model = cfg.model.as_deref().unwrap_or("tts-1");
        let remote = RemoteTts::new(
            url,
            cfg.api_key.clone(),
            model,
            &cfg.voice,
            Duration::from_secs(30),
        )?;
        return Ok(Arc::new(remote));
    }
    let voice = store
        .resolve(Role::Tts, cfg.model.as_deref())
        .map_err(|e| TtsError::Load(e.to_string()))?;
    let runtime = match &cfg.onnxruntime {
        Some(path) => path.clone(),
        None => store
            .resolve(Role::Runtime, None)
            .map_err(|e| TtsError::Load(e.to_string()))?,
    };
    Ok(Arc::new(PiperTts::load(
        &runtime,
        &voice,
        cfg.workers,
        cfg.threads,
    )?))
}
