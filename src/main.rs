//! The `voxd` command: `serve`, `models pull|list|verify`, `transcribe`.
//! Errors from the library are typed; here, at the edge, they are printed once with their chain.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use tracing::{error, info};

use voxd::asr::{Asr, Request, WhisperConfig, WhisperPool};
use voxd::audio::{self, ChannelSelect};
use voxd::config::{AsrArgs, CommonArgs, Config, ServerArgs};
use voxd::models::{Manifest, ModelStore, PullOptions, PullOutcome, Role};
use voxd::server::{self, AppState, ServerSettings};

#[derive(Parser)]
#[command(
    name = "voxd",
    version,
    about = "Self-hosted real-time voice assistant server"
)]
struct Cli {
    #[command(flatten)]
    common: CommonArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server (pulls missing default models first).
    Serve {
        #[command(flatten)]
        server: ServerArgs,
        #[command(flatten)]
        asr: AsrArgs,
        /// Do not download missing default models; fail instead.
        #[arg(long)]
        no_pull: bool,
    },
    /// Manage the model cache.
    Models {
        #[command(subcommand)]
        action: ModelsAction,
    },
    /// Transcribe an audio file (WAV, FLAC, MP3, Ogg/Vorbis) and print the transcript.
    Transcribe {
        /// The audio file.
        file: PathBuf,
        /// Channel to transcribe: mix, left, right or a number.
        #[arg(long, default_value = "mix")]
        channel: ChannelSelect,
        /// Output format.
        #[arg(long, value_enum, default_value = "text")]
        format: OutputFormat,
        #[command(flatten)]
        asr: AsrArgs,
    },
}

#[derive(Subcommand)]
enum ModelsAction {
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
    },
    /// Re-check the SHA-256 of every cached file.
    Verify {
        /// Model names (default: every installed model).
        names: Vec<String>,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum OutputFormat {
    Text,
    Json,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Serve {
            server,
            asr,
            no_pull,
        } => {
            let cfg = Config::resolve(&cli.common, &asr, &server)?;
            voxd::telemetry::init(cfg.log_format);
            serve(cfg, no_pull)
        }
        Command::Models { action } => {
            let cfg = Config::resolve(&cli.common, &AsrArgs::default(), &ServerArgs::default())?;
            voxd::telemetry::init(cfg.log_format);
            models(cfg, action)
        }
        Command::Transcribe {
            file,
            channel,
            format,
            mut asr,
        } => {
            // One file at a time: one worker using every core, unless told otherwise.
            asr.asr_pool.get_or_insert(1);
            if asr.asr_threads.is_none() {
                asr.asr_threads = Some(
                    std::thread::available_parallelism()
                        .map(|n| n.get())
                        .unwrap_or(2),
                );
            }
            let cfg = Config::resolve(&cli.common, &asr, &ServerArgs::default())?;
            voxd::telemetry::init(cfg.log_format);
            transcribe(cfg, file, channel, format)
        }
    }
}

fn store(cfg: &Config) -> ModelStore {
    ModelStore::new(&cfg.home, Manifest::builtin())
}

fn whisper_config(cfg: &Config, model_path: PathBuf) -> WhisperConfig {
    WhisperConfig {
        pool_size: cfg.asr.pool,
        threads: cfg.asr.threads,
        language: cfg.asr.language.clone(),
        prompt: cfg.asr.prompt.clone(),
        audio_ctx: cfg.asr.audio_ctx,
        beam_size: cfg.asr.beam,
        ..WhisperConfig::new(model_path)
    }
}

fn serve(cfg: Config, no_pull: bool) -> Result<()> {
    let store = store(&cfg);
    // Pull the default models the server needs, unless the user brought their own.
    let wants_default = cfg
        .asr
        .model
        .as_deref()
        .is_none_or(|m| store.manifest().get(m).is_some());
    if wants_default && !no_pull {
        let opts = PullOptions::default();
        for entry in store.manifest().models.clone() {
            if !store.is_installed(&entry) {
                info!(model = %entry.name, "model missing: pulling it");
                store.pull(&entry, &opts)?;
            }
        }
    }
    let model_path = store.resolve(Role::Asr, cfg.asr.model.as_deref())?;
    // Check the file now so a bad model stops the start with a clear message.
    voxd::models::ggml::validate_whisper(&model_path)?;

    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async move {
        let state = Arc::new(AppState::with_settings(ServerSettings {
            max_upload_bytes: cfg.server.max_upload_bytes,
            api_key: cfg.server.api_key.clone(),
            allowed_origins: cfg.server.allowed_origins.clone(),
            max_sessions: cfg.server.max_sessions,
            limits: voxd::realtime::Limits {
                max_session: std::time::Duration::from_secs(cfg.server.max_session_minutes * 60),
                ..Default::default()
            },
        }));
        let listener = tokio::net::TcpListener::bind(cfg.server.addr)
            .await
            .with_context(|| format!("cannot listen on {}", cfg.server.addr))?;
        let loader_state = state.clone();
        let wcfg = whisper_config(&cfg, model_path);
        tokio::task::spawn_blocking(move || match WhisperPool::load(wcfg) {
            Ok(pool) => loader_state.set_asr(Arc::new(pool)),
            Err(e) => {
                error!(error = %e, "loading the speech model failed");
                loader_state.set_load_error(e.to_string());
            }
        });
        server::serve(listener, state, server::shutdown_signal()).await?;
        Ok(())
    })
}

fn models(cfg: Config, action: ModelsAction) -> Result<()> {
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
            let entries = select(&store, &names)?;
            let opts = PullOptions {
                python,
                wheel_dir,
                force,
                quiet,
            };
            let mut installed = 0;
            for entry in &entries {
                if store.pull(entry, &opts)? == PullOutcome::Installed {
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
        ModelsAction::List => {
            let store = store(&cfg);
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
            Ok(())
        }
        ModelsAction::Convert { src, out } => {
            voxd::models::whisper_convert::convert(&src, &out, "whisper", false)?;
            let summary = voxd::models::ggml::validate_whisper(&out)?;
            println!(
                "wrote {} ({} tensors, {:.1} MB)",
                out.display(),
                summary.tensors.len(),
                summary.file_size as f64 / 1e6
            );
            Ok(())
        }
        ModelsAction::Verify { names } => {
            let store = store(&cfg);
            let entries = if names.is_empty() {
                store
                    .list()
                    .into_iter()
                    .filter(|s| s.installed)
                    .map(|s| s.entry)
                    .collect()
            } else {
                select(&store, &names)?
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
    }
}

fn select(store: &ModelStore, names: &[String]) -> Result<Vec<voxd::models::ModelEntry>> {
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

fn transcribe(
    cfg: Config,
    file: PathBuf,
    channel: ChannelSelect,
    format: OutputFormat,
) -> Result<()> {
    let store = store(&cfg);
    let model_path = store.resolve(Role::Asr, cfg.asr.model.as_deref())?;
    let started = std::time::Instant::now();
    let decoded = audio::decode_file(&file, channel)
        .with_context(|| format!("reading {}", file.display()))?;
    let source_rate = decoded.sample_rate;
    let decoded = audio::to_model_rate(decoded)?;
    let decode_ms = started.elapsed().as_millis();
    let pool = WhisperPool::load(whisper_config(&cfg, model_path))?;
    let runtime = tokio::runtime::Builder::new_current_thread().build()?;
    let transcript = runtime.block_on(pool.transcribe(Request::new(decoded.samples)))?;
    match format {
        OutputFormat::Text => println!("{}", transcript.text),
        OutputFormat::Json => println!(
            "{}",
            serde_json::json!({
                "text": transcript.text,
                "language": transcript.language,
                "duration": transcript.audio.as_secs_f64(),
                "source_sample_rate": source_rate,
                "segments": transcript.segments,
                "timing_ms": { "decode": decode_ms, "asr": transcript.compute.as_millis() },
            })
        ),
    }
    Ok(())
}
