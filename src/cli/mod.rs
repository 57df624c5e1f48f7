//! The subcommands of `voxd`, one file each. Each file holds its clap arguments and its `run`,
//! which resolves the configuration it needs, sets up logging and does the work. Output for a
//! person (tables, progress bars) is printed here, at the binary's edge, not in the library.

pub mod audit;
pub mod bench;
pub mod child;
pub mod client;
pub mod eval;
pub mod kb;
pub mod models;
pub mod pronounce;
pub mod serve;
pub mod transcribe;

use anyhow::Result;
use voxd::config::{CommonArgs, Config};
use voxd::models::{Manifest, ModelStore};

/// The model cache under the configured home, with the built-in manifest.
pub fn model_store(cfg: &Config) -> ModelStore {
    ModelStore::new(&cfg.home, Manifest::builtin())
}

/// The configuration of a subcommand that takes only the common flags, with logging set up.
pub fn common_config(common: &CommonArgs) -> Result<Config> {
    let cfg = Config::resolve(common, &Default::default())?;
    voxd::telemetry::init(cfg.log_format);
    Ok(cfg)
}

/// A progress-bar style from `template` (the default bar if the template does not parse).
pub fn bar_style(template: &str) -> indicatif::ProgressStyle {
    indicatif::ProgressStyle::with_template(template)
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
}
