//! Progress bars for the slow model steps (download, checksum, unpack, convert).
//!
//! Bars draw on stderr when it is a terminal and stay silent otherwise (indicatif's rule), so
//! CI logs only get the `tracing` lines that each step also writes.

use indicatif::{ProgressBar, ProgressStyle};

/// A bar counting bytes, labelled with the step and the model.
pub fn bytes(len: u64, step: &str, model: &str, quiet: bool) -> ProgressBar {
    if quiet {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template(
            "{prefix:>10} {msg:<24} [{bar:30}] {bytes:>10}/{total_bytes:<10} {bytes_per_sec:>12} {eta:>4}",
        )
        .expect("static template")
        .progress_chars("=> "),
    );
    bar.set_prefix(step.to_string());
    bar.set_message(model.to_string());
    bar
}
