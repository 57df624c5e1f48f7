//! ONNX Runtime: voxd's third inference engine (after whisper.cpp and candle), shared by every
//! stage that runs an ONNX model: the Piper voice ([`crate::tts`]) and the turn-taking models.
//!
//! The runtime is a shared library that `voxd models pull` takes out of the `onnxruntime` wheel
//! (pinned by SHA-256 like the weights), loaded once per process at run time, so building voxd
//! downloads and links nothing. Any ONNX Runtime 1.17 or newer works (`--onnxruntime PATH`).
//!
//! [`open`] loads the runtime on first use and opens a model as a [`Session`]; sessions are
//! `Send` and each is meant to be owned by one worker thread of a [`crate::workers::WorkerPool`].

use std::path::{Path, PathBuf};
use std::sync::Mutex;

pub use ort::session::Session;
pub use ort::value::Tensor;

/// What can go wrong loading the runtime, opening a model or running it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum OnnxError {
    #[error(
        "ONNX Runtime could not be loaded from {path}: {reason}; run `voxd models pull` or pass \
         --onnxruntime PATH (libonnxruntime.so, version 1.17 or newer)"
    )]
    Load { path: PathBuf, reason: String },
    #[error(
        "ONNX Runtime is already loaded from {loaded} in this process; it cannot also be loaded \
         from {wanted}"
    )]
    Conflict { loaded: PathBuf, wanted: PathBuf },
    #[error("{path} could not be opened as an ONNX model: {reason}")]
    Model { path: PathBuf, reason: String },
    #[error("ONNX inference failed: {0}")]
    Run(String),
}

impl From<ort::Error> for OnnxError {
    fn from(e: ort::Error) -> Self {
        OnnxError::Run(e.to_string())
    }
}

/// The process's one runtime: the library it came from and its environment.
static RUNTIME: Mutex<Option<(PathBuf, ort::environment::Environment)>> = Mutex::new(None);

/// Loads ONNX Runtime from `library` (once per process) and returns its environment. Loading
/// the same library again is free; a different one is [`OnnxError::Conflict`], because a process
/// can hold only one.
pub fn runtime(library: &Path) -> Result<ort::environment::Environment, OnnxError> {
    let mut slot = RUNTIME.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((loaded, env)) = slot.as_ref() {
        if same_file(loaded, library) {
            return Ok(env.clone());
        }
        return Err(OnnxError::Conflict {
            loaded: loaded.clone(),
            wanted: library.to_path_buf(),
        });
    }
    if !library.is_file() {
        return Err(OnnxError::Load {
            path: library.to_path_buf(),
            reason: "no such file".into(),
        });
    }
    let load = || -> Result<ort::environment::Environment, String> {
        ort::init_from(library)
            .map_err(|e| e.to_string())?
            .with_name("voxd")
            .with_telemetry(false)
            .build()
            .map_err(|e| e.to_string())
    };
    // A library that is not ONNX Runtime can make the loader panic rather than fail.
    let env = std::panic::catch_unwind(load)
        .unwrap_or_else(|_| Err("the library is not a usable ONNX Runtime".into()))
        .map_err(|reason| OnnxError::Load {
            path: library.to_path_buf(),
            reason,
        })?;
    tracing::info!(library = %library.display(), "ONNX Runtime loaded");
    *slot = Some((library.to_path_buf(), env.clone()));
    Ok(env)
}

fn same_file(a: &Path, b: &Path) -> bool {
    a == b
        || matches!(
            (a.canonicalize(), b.canonicalize()),
            (Ok(x), Ok(y)) if x == y
        )
}

/// Opens `model` on the runtime from `library`, computing on `threads` threads.
pub fn open(library: &Path, model: &Path, threads: usize) -> Result<Session, OnnxError> {
    let env = runtime(library)?;
    let bad = |reason: String| OnnxError::Model {
        path: model.to_path_buf(),
        reason,
    };
    if !model.is_file() {
        return Err(bad("no such file".into()));
    }
    Session::builder(&env)
        .map_err(|e| bad(e.to_string()))?
        .with_intra_threads(threads.max(1))
        .map_err(|e| bad(e.to_string()))?
        .with_inter_threads(1)
        .map_err(|e| bad(e.to_string()))?
        .commit_from_file(model)
        .map_err(|e| bad(e.to_string()))
}

/// Checks that `session` has every input in `needed`; the error says what `model` is not
/// (`"{path} is not a {kind}: it has no `x` input"`).
pub fn require_inputs(
    session: &Session,
    model: &Path,
    kind: &str,
    needed: &[&str],
) -> Result<(), String> {
    let inputs = input_names(session);
    match needed.iter().find(|n| !inputs.iter().any(|i| i == *n)) {
        Some(missing) => Err(format!(
            "{} is not a {kind}: it has no `{missing}` input",
            model.display()
        )),
        None => Ok(()),
    }
}

/// The names of a session's inputs, for models whose inputs vary (a multi-speaker voice).
pub fn input_names(session: &Session) -> Vec<String> {
    session
        .inputs()
        .iter()
        .map(|i| i.name().to_string())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_or_foreign_library_is_a_typed_error() {
        let err = runtime(Path::new("/nonexistent/libonnxruntime.so")).unwrap_err();
        assert!(matches!(err, OnnxError::Load { .. }), "{err}");
        assert!(err.to_string().contains("--onnxruntime"), "{err}");
    }
}
