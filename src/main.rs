//! The `voxd` command: `serve`, `models pull|list|verify`, `transcribe`.
//! Errors from the library are typed; here, at the edge, they are printed once with their chain.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use tracing::{error, info};

use voxd::asr::{Asr, Request, WhisperConfig, WhisperPool};
use voxd::audio::{self, ChannelSelect};
use voxd::config::{AsrArgs, CommonArgs, Config, KbArgs, LlmArgs, ServerArgs, TtsArgs};
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

// Parsed once at start-up; boxing the large variant would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Run the server (pulls missing default models first).
    Serve {
        #[command(flatten)]
        server: ServerArgs,
        #[command(flatten)]
        asr: AsrArgs,
        #[command(flatten)]
        kb: KbArgs,
        #[command(flatten)]
        llm: LlmArgs,
        #[command(flatten)]
        tts: TtsArgs,
        /// Do not download missing default models; fail instead.
        #[arg(long)]
        no_pull: bool,
    },
    /// Manage the model cache.
    Models {
        #[command(subcommand)]
        action: ModelsAction,
    },
    /// Stream an audio file to a realtime endpoint and print the events.
    Client(ClientArgs),
    /// Measure latency under load: N users streaming recordings at real-time pace.
    Bench(BenchArgs),
    /// Measure answer quality on a suite of questions: facts, citations, refusals, groundedness,
    /// prompt injection, stale data, repeats and latency; compare with a baseline run.
    Eval(EvalArgs),
    /// Manage the knowledge base that grounds answers.
    Kb {
        #[command(flatten)]
        kb: KbArgs,
        #[command(subcommand)]
        action: KbAction,
    },
    /// Read the audit trail of tool calls (from the knowledge base's database).
    Audit {
        #[command(flatten)]
        kb: KbArgs,
        /// Only this session's calls.
        #[arg(long)]
        session: Option<String>,
        /// Only calls made with this API key id.
        #[arg(long)]
        key_id: Option<String>,
        /// Only calls of this tool.
        #[arg(long)]
        tool: Option<String>,
        /// Only calls that ended so (sent, ok, error, timeout, refused, rejected).
        #[arg(long)]
        status: Option<String>,
        /// Rows after this id (paging).
        #[arg(long)]
        after: Option<i64>,
        /// Most rows (1-1000).
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// Print JSON lines instead of a table.
        #[arg(long)]
        json: bool,
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

/// `voxd bench` options.
#[derive(clap::Args)]
struct BenchArgs {
    /// Recordings to stream (WAV, FLAC, MP3, Ogg/Vorbis); each file's speech segments are found
    /// once and stored beside it as FILE.speech.json.
    #[arg(long = "audio", num_args = 1.., default_values = ["tests/data/LDC93S1_pcms16le_1_16000.wav", "tests/data/jfk.wav"])]
    audio: Vec<PathBuf>,
    /// A running server's realtime endpoint; without it, voxd starts `voxd serve` itself on a
    /// loopback port (with the arguments after `--`) and stops it at the end.
    #[arg(long)]
    url: Option<String>,
    /// Concurrent sessions, one level after the other.
    #[arg(long, value_delimiter = ',', default_value = "1,2,4,8")]
    sessions: Vec<usize>,
    /// Turns (recordings) per session at each level.
    #[arg(long, default_value_t = 3)]
    turns: usize,
    /// Instead of a number of turns: keep each session talking this long (e.g. 60s).
    #[arg(long)]
    duration: Option<humantime::Duration>,
    /// Transcription only (no answers); the server it starts loads no LLM.
    #[arg(long)]
    no_llm: bool,
    /// The pause that ends a turn (server_vad silence_duration_ms).
    #[arg(long, default_value_t = 500)]
    silence_ms: u64,
    /// How turns end: server_vad (a silence window) or semantic_vad (the end-of-turn model).
    #[arg(long, value_enum, default_value = "server_vad")]
    turn_detection: BenchTurns,
    /// semantic_vad's eagerness: low, medium, high or auto.
    #[arg(long, default_value = "auto", value_parser = ["low", "medium", "high", "auto"])]
    eagerness: String,
    /// The voice detector: webrtc or silero.
    #[arg(long, default_value = "webrtc", value_parser = ["webrtc", "silero"])]
    vad: String,
    /// Give up on a turn this long after its audio ended (seconds).
    #[arg(long, default_value_t = 120)]
    turn_timeout_s: u64,
    /// Where to write the JSON report.
    #[arg(long, default_value = "bench.json")]
    out: PathBuf,
    /// Where to draw the SVG plot of latency vs sessions.
    #[arg(long, default_value = "bench.svg")]
    svg: PathBuf,
    /// An earlier report: print the ratio of this run to it.
    #[arg(long)]
    compare: Option<PathBuf>,
    #[arg(long, env = "VOXD_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
    /// Arguments for the `voxd serve` the bench starts (after `--`), e.g. `-- --llm-url URL`.
    #[arg(last = true)]
    serve_args: Vec<String>,
}

/// `voxd bench --turn-detection`.
#[derive(Clone, Copy, ValueEnum)]
enum BenchTurns {
    #[value(name = "server_vad", alias = "server-vad")]
    ServerVad,
    #[value(name = "semantic_vad", alias = "semantic-vad")]
    SemanticVad,
}

/// `voxd eval` options.
#[derive(clap::Args)]
struct EvalArgs {
    /// The suite: a folder with questions.jsonl and the knowledge base's documents (kb/ or as
    /// suite.json names them).
    #[arg(default_value = "tests/data/eval")]
    suite: PathBuf,
    /// A running server's realtime endpoint (its own knowledge base is used); without it, voxd
    /// starts `voxd serve` itself with the suite's documents in a fresh knowledge base (and the
    /// arguments after `--`) and stops it at the end.
    #[arg(long)]
    url: Option<String>,
    /// Ask by voice (each question's recording, or espeak-ng saying it) instead of text turns.
    #[arg(long)]
    spoken: bool,
    /// `per-question` (a conversation each; follow-ups stay with their question) or `one`
    /// conversation for the whole suite.
    #[arg(long, default_value = "per-question", value_parser = ["per-question", "one"])]
    conversation: String,
    /// Give up on an answer this long after the question (seconds).
    #[arg(long, default_value_t = 120)]
    turn_timeout_s: u64,
    /// Where to write the JSON report.
    #[arg(long, default_value = "eval.json")]
    out: PathBuf,
    /// Instead of the suite's questions, fuzz prompt injection: attacks of several families
    /// (override, role play, false authority, fake delimiters, chat-template tokens, other
    /// languages, encodings) planted in new documents and in the user's turn before the suite's
    /// own questions; reports attack success per family. With --url only the user-turn attacks
    /// run (a running server's knowledge base is left alone).
    #[arg(long)]
    fuzz: bool,
    /// Where to write the self-contained HTML report (tables, bars per category, first token by
    /// turn, every answer) [default: the JSON report's path with `.html`].
    #[arg(long)]
    html: Option<PathBuf>,
    /// An earlier report: exit with status 1 when a metric got worse than it by more than
    /// `--tolerance`.
    #[arg(long)]
    baseline: Option<PathBuf>,
    /// How much worse a rate may get before it counts as a regression (0.05 = 5 points); the
    /// first-token p50 may grow by max(this, 25 %).
    #[arg(long, default_value_t = 0.05)]
    tolerance: f64,
    #[arg(long, env = "VOXD_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
    /// Arguments for the `voxd serve` eval starts (after `--`), e.g. `-- --llm-url URL`.
    #[arg(last = true)]
    serve_args: Vec<String>,
}

/// `voxd client` options.
#[derive(clap::Args)]
struct ClientArgs {
    /// The audio file to stream (WAV, FLAC, MP3, Ogg/Vorbis).
    file: PathBuf,
    /// Realtime endpoint.
    #[arg(long, default_value = "ws://127.0.0.1:8080/v1/realtime")]
    url: String,
    /// Pace the audio in real time, as a microphone would (default: as fast as possible).
    #[arg(long)]
    realtime: bool,
    /// Session sample rate the file is converted to.
    #[arg(long, default_value_t = 24_000)]
    rate: u32,
    /// Send raw PCM16 binary frames instead of base64 `append` events.
    #[arg(long)]
    binary: bool,
    /// Channel of the file: mix, left, right or a number.
    #[arg(long, default_value = "mix")]
    channel: ChannelSelect,
    /// Silence (ms) that ends a turn.
    #[arg(long, default_value_t = 500)]
    silence_ms: u64,
    /// Turn speculative finalisation off (wait for the whole silence window).
    #[arg(long)]
    no_speculative: bool,
    /// No server VAD: commit once at the end of the file.
    #[arg(long)]
    manual: bool,
    /// Ask for spoken answers too (a `realtime` session): print each answer as it streams and the
    /// time from the true end of speech to its first token.
    #[arg(long)]
    answer: bool,
    /// With --answer: ask for spoken answers and write their audio (16-bit PCM, 24 kHz) to this
    /// WAV file (without it, answers are asked for as text).
    #[arg(long, requires = "answer")]
    audio_out: Option<PathBuf>,
    /// Silence appended after the file, in ms.
    #[arg(long, default_value_t = 1500)]
    tail_ms: u64,
    /// Print every server event as a JSON line.
    #[arg(long)]
    json: bool,
    /// API key (Authorization: Bearer).
    #[arg(long, env = "VOXD_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
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

#[derive(Subcommand)]
enum KbAction {
    /// Add files or folders (.txt, .md, .html); unchanged files are skipped, changed ones replaced.
    Add {
        /// Files or folders (searched recursively).
        paths: Vec<PathBuf>,
    },
    /// List the documents.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Remove a document by id.
    Remove { id: String },
    /// Search the knowledge base.
    Search {
        query: String,
        /// Passages to return.
        #[arg(long)]
        top_k: Option<usize>,
        /// Only documents of this source (repeatable).
        #[arg(long)]
        source: Vec<String>,
        /// Relevance floor for this search (cosine, -1..1) [default: --kb-min-score].
        #[arg(long, allow_hyphen_values = true)]
        min_score: Option<f32>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Re-embed every chunk with the configured embedding model.
    Reindex,
}

#[derive(Clone, Copy, ValueEnum)]
enum OutputFormat {
    Text,
    Json,
}

fn main() -> std::process::ExitCode {
    // candle asks for its thread count at every matmul (the LLM's attention) and, without this
    // variable, counts the physical cores by reading /proc/cpuinfo each time (~3 % of decoding,
    // measured with perf). Set while the process has one thread; an operator's value stands.
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        std::env::set_var("RAYON_NUM_THREADS", cores.to_string());
    }
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
            kb,
            llm,
            tts,
            no_pull,
        } => {
            let cfg = Config::resolve_all(&cli.common, &asr, &server, &kb, &llm, &tts)?;
            // Kept until the server has stopped, so the last spans are flushed.
            let _telemetry = voxd::telemetry::init_with_export(
                cfg.log_format,
                cfg.server.otlp_endpoint.as_deref(),
            )?;
            serve(cfg, no_pull)
        }
        Command::Models { action } => {
            let cfg = Config::resolve(&cli.common, &AsrArgs::default(), &ServerArgs::default())?;
            voxd::telemetry::init(cfg.log_format);
            models(cfg, action)
        }
        Command::Kb { kb, action } => {
            let cfg = Config::resolve_with(
                &cli.common,
                &AsrArgs::default(),
                &ServerArgs::default(),
                &kb,
            )?;
            voxd::telemetry::init(cfg.log_format);
            tokio::runtime::Runtime::new()?.block_on(kb_command(cfg, action))
        }
        Command::Audit {
            kb,
            session,
            key_id,
            tool,
            status,
            after,
            limit,
            json,
        } => {
            let cfg = Config::resolve_with(
                &cli.common,
                &AsrArgs::default(),
                &ServerArgs::default(),
                &kb,
            )?;
            voxd::telemetry::init(cfg.log_format);
            let log = voxd::tools::AuditLog::for_kb(&cfg.kb.path, cfg.kb.url.as_deref())?;
            let rows = log.query(&voxd::tools::AuditQuery {
                session,
                key_id,
                tool,
                status,
                after,
                limit: Some(limit),
            })?;
            for r in rows {
                if json {
                    println!("{}", serde_json::to_string(&r)?);
                } else {
                    println!(
                        "{:>6}  {}  {}  {}  {}  {}  {}  {:.0} ms  {}",
                        r.id,
                        r.at,
                        r.session,
                        r.key_id,
                        r.tool,
                        r.validation,
                        r.status,
                        r.latency_ms,
                        r.arguments
                    );
                }
            }
            Ok(())
        }
        Command::Eval(args) => {
            let cfg = Config::resolve(&cli.common, &AsrArgs::default(), &ServerArgs::default())?;
            voxd::telemetry::init(cfg.log_format);
            let regressed = tokio::runtime::Runtime::new()?.block_on(eval(args))?;
            if regressed {
                std::process::exit(1);
            }
            Ok(())
        }
        Command::Bench(args) => {
            let cfg = Config::resolve(&cli.common, &AsrArgs::default(), &ServerArgs::default())?;
            voxd::telemetry::init(cfg.log_format);
            tokio::runtime::Runtime::new()?.block_on(bench(args))
        }
        Command::Client(args) => {
            let cfg = Config::resolve(&cli.common, &AsrArgs::default(), &ServerArgs::default())?;
            voxd::telemetry::init(cfg.log_format);
            tokio::runtime::Runtime::new()?.block_on(client(args))
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
    cfg.server.check_exposure()?;
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
    // With a remote engine there is no speech model to load here.
    let model_path = match &cfg.asr.remote {
        Some(_) => None,
        None => {
            let path = store.resolve(Role::Asr, cfg.asr.model.as_deref())?;
            // Check the file now so a bad model stops the start with a clear message.
            voxd::models::ggml::validate_whisper(&path)?;
            Some(path)
        }
    };

    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    let served = runtime.block_on(async move {
        let state = Arc::new(AppState::with_settings(ServerSettings {
            max_upload_bytes: cfg.server.max_upload_bytes,
            api_key: cfg.server.api_key.clone(),
            keys: cfg.server.keys.clone(),
            allowed_origins: cfg.server.allowed_origins.clone(),
            allowed_hosts: cfg.server.allowed_hosts.clone(),
            bind: Some(cfg.server.addr),
            max_audio_seconds: cfg.server.max_audio_seconds,
            max_transcriptions: cfg.server.max_transcriptions,
            max_sessions: cfg.server.max_sessions,
            limits: voxd::realtime::Limits {
                max_session: std::time::Duration::from_secs(cfg.server.max_session_minutes * 60),
                ..Default::default()
            },
            answer: voxd::realtime::AnswerSettings {
                instructions: cfg
                    .llm
                    .instructions
                    .clone()
                    .unwrap_or_else(|| voxd::realtime::answer::DEFAULT_INSTRUCTIONS.into()),
                max_tokens: cfg.llm.max_tokens,
                temperature: cfg.llm.temperature,
                refuse_unfound: !cfg.llm.answer_unfound,
                mode: cfg.llm.answer_mode,
                ..Default::default()
            },
        }));
        // Tool calls are recorded in the knowledge base's database.
        match voxd::tools::AuditLog::for_kb(&cfg.kb.path, cfg.kb.url.as_deref()) {
            Ok(log) => state.set_audit(log),
            Err(e) => tracing::warn!(error = %e, "no audit trail of tool calls"),
        }
        let server_tools = voxd::tools::ServerTools::new(&cfg.tools)?;
        if !server_tools.definitions().is_empty() {
            info!(
                tools = server_tools.definitions().len(),
                "server tools configured"
            );
            state.set_server_tools(Arc::new(server_tools));
        }
        if cfg.llm.enabled() {
            state.expect_llm();
            let llm_state = state.clone();
            let llm_cfg = cfg.llm.clone();
            let llm_models = store.clone();
            tokio::spawn(async move {
                match voxd::llm::open::open(&llm_cfg, &llm_models).await {
                    Ok(llm) => llm_state.set_llm(llm),
                    Err(e) => {
                        error!(error = %e, "loading the language model failed");
                        llm_state.set_llm_error(e.to_string());
                    }
                }
            });
        }
        let turn_models = voxd::vad::open::open(&cfg.turns, cfg.tts.onnxruntime.clone(), &store)
            .context("loading the turn-taking models")?;
        state.set_turn_models(turn_models, cfg.turns.vad);
        if cfg.tts.enabled {
            state.expect_tts();
            let tts_state = state.clone();
            let tts_cfg = cfg.tts.clone();
            let tts_models = store.clone();
            tokio::task::spawn_blocking(move || {
                match voxd::tts::open::open(&tts_cfg, &tts_models) {
                    Ok(tts) => tts_state.set_tts(tts),
                    Err(e) => {
                        error!(error = %e, "loading the voice failed; answers will be text only");
                        tts_state.set_tts_error(e.to_string());
                    }
                }
            });
        }
        let listener = tokio::net::TcpListener::bind(cfg.server.addr)
            .await
            .with_context(|| format!("cannot listen on {}", cfg.server.addr))?;
        state.expect_kb();
        let kb_state = state.clone();
        let kb_cfg = cfg.kb.clone();
        let kb_models = store.clone();
        tokio::spawn(async move {
            // A shared database may come up after the replica: keep trying (readiness says why
            // meanwhile). A file that cannot be opened will not open later.
            let mut pause = std::time::Duration::from_millis(500);
            let kb = loop {
                match voxd::rag::open::open(&kb_cfg, &kb_models).await {
                    Ok(kb) => break Arc::new(kb),
                    Err(
                        e @ voxd::rag::KbError::Store(
                            voxd::rag::store::StoreError::Unavailable { .. },
                        ),
                    ) => {
                        error!(error = %e, retry_in_ms = pause.as_millis() as u64, "the knowledge-base database is unreachable");
                        kb_state.set_kb_retrying(e.to_string());
                        tokio::time::sleep(pause).await;
                        pause = (pause * 2).min(std::time::Duration::from_secs(10));
                    }
                    Err(e) => {
                        error!(error = %e, "opening the knowledge base failed");
                        kb_state.set_kb_error(e.to_string());
                        return;
                    }
                }
            };
            if let Err(e) = kb.check_model().await {
                error!(error = %e, "the knowledge base needs re-indexing");
            }
            kb_state.set_kb(kb.clone());
            // Readiness follows the store: checked every 2 s (and on every use).
            let mut was_up = true;
            loop {
                tokio::time::sleep(std::time::Duration::from_secs(2)).await;
                let up = kb.check_health().await;
                match (&up, was_up) {
                    (Err(e), true) => error!(error = %e, "the knowledge base stopped answering"),
                    (Ok(()), false) => info!("the knowledge base answers again"),
                    _ => {}
                }
                was_up = up.is_ok();
            }
        });
        match (cfg.asr.remote.clone(), model_path) {
            (Some(remote), _) => match voxd::asr::RemoteAsr::new(remote) {
                Ok(asr) => {
                    info!(asr = %asr.describe(), "transcribing on a remote engine");
                    state.set_asr(Arc::new(asr))
                }
                Err(e) => state.set_load_error(e.to_string()),
            },
            (None, Some(model_path)) => {
                let loader_state = state.clone();
                let wcfg = whisper_config(&cfg, model_path);
                tokio::task::spawn_blocking(move || match WhisperPool::load(wcfg) {
                    Ok(pool) => loader_state.set_asr(Arc::new(pool)),
                    Err(e) => {
                        error!(error = %e, "loading the speech model failed");
                        loader_state.set_load_error(e.to_string());
                    }
                });
            }
            (None, None) => unreachable!("a local speech model is resolved when there is no remote one"),
        }
        server::serve(listener, state, server::shutdown_signal()).await?;
        Ok(())
    });
    // Blocking work still running (a model job that ignores cancellation) does not hold the
    // process: the stop is bounded.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    served
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
        ModelsAction::Convert { src, out, weights } => {
            let weights = match weights.as_str() {
                "f16" => voxd::models::whisper_convert::Weights::F16,
                _ => voxd::models::whisper_convert::Weights::Q8_0,
            };
            voxd::models::whisper_convert::convert(&src, &out, weights, "whisper", false)?;
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

/// A `voxd serve` this process started (for `voxd bench`), stopped on drop.
struct ChildServer(std::process::Child);

impl Drop for ChildServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `voxd serve` on a loopback port and waits until it is ready; returns its address.
async fn start_child_server(extra: &[String], no_llm: bool) -> Result<(ChildServer, String)> {
    use std::io::{BufRead, BufReader};
    let mut cmd = std::process::Command::new(std::env::current_exe()?);
    cmd.args(["serve", "--addr", "127.0.0.1:0", "--log-format", "json"]);
    if no_llm {
        cmd.args(["--llm-model", "none"]);
    }
    let mut child = cmd
        .args(extra)
        // whisper.cpp reports every aborted transcription as an error: not the server's errors.
        .env(
            "RUST_LOG",
            std::env::var("VOXD_SERVE_RUST_LOG").unwrap_or_else(|_| "info,whisper_rs=off".into()),
        )
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .context("starting voxd serve")?;
    let stderr = child.stderr.take().context("no stderr")?;
    let child = ChildServer(child);
    let (tx, rx) = std::sync::mpsc::channel();
    // `VOXD_SERVE_LOG=FILE`: keep the server's log (JSON lines) there.
    let mut log_file =
        std::env::var_os("VOXD_SERVE_LOG").and_then(|p| std::fs::File::create(p).ok());
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(f) = log_file.as_mut() {
                use std::io::Write;
                let _ = writeln!(f, "{line}");
            }
            let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
            if v["fields"]["message"] == "listening" {
                let _ = tx.send(v["fields"]["addr"].as_str().unwrap_or_default().to_string());
            } else if v["level"] == "ERROR" {
                eprintln!("voxd serve: {}", v["fields"]["message"]);
            }
        }
    });
    let addr =
        tokio::task::spawn_blocking(move || rx.recv_timeout(std::time::Duration::from_secs(600)))
            .await?
            .context("voxd serve did not start (see its errors above)")?;
    let http = reqwest::Client::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(600);
    loop {
        let ready = http
            .get(format!("http://{addr}/readyz"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success());
        if ready {
            return Ok((child, addr));
        }
        if std::time::Instant::now() > deadline {
            bail!("voxd serve at {addr} never became ready");
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// `voxd bench`: see [`voxd::bench`].
async fn bench(args: BenchArgs) -> Result<()> {
    use voxd::bench::{self, report::Report, speech, BenchConfig};
    let vad = voxd::vad::VadParams {
        silence_duration_ms: args.silence_ms,
        ..Default::default()
    };
    let mut recordings = Vec::new();
    for path in &args.audio {
        recordings.push(speech::load(path, bench::STREAM_RATE, vad)?);
    }
    let old = args.compare.as_deref().map(Report::read).transpose()?;
    let (_server, url) = match &args.url {
        Some(u) => (None, u.clone()),
        None => {
            eprintln!("starting voxd serve…");
            let (child, addr) = start_child_server(&args.serve_args, args.no_llm).await?;
            (Some(child), format!("ws://{addr}/v1/realtime"))
        }
    };
    let cfg = BenchConfig {
        url,
        api_key: args.api_key.clone(),
        sessions: args.sessions.clone(),
        turns: args.turns.max(1),
        duration: args.duration.map(Into::into),
        answers: !args.no_llm,
        silence_ms: args.silence_ms,
        semantic: matches!(args.turn_detection, BenchTurns::SemanticVad)
            .then(|| args.eagerness.clone()),
        vad: args.vad.clone(),
        turn_timeout: std::time::Duration::from_secs(args.turn_timeout_s),
        progress: !args.quiet,
    };
    let per_turn: usize = recordings
        .iter()
        .map(|r| r.speech.segments.len())
        .sum::<usize>()
        / recordings.len();
    let total: usize = cfg.sessions.iter().map(|n| n * cfg.turns * per_turn).sum();
    let bar = if cfg.progress && cfg.duration.is_none() {
        indicatif::ProgressBar::new(total as u64)
    } else if cfg.progress {
        indicatif::ProgressBar::new_spinner()
    } else {
        indicatif::ProgressBar::hidden()
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} utterances {msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let progress = bar.clone();
    let on_turn = std::sync::Arc::new(move |t: &voxd::bench::report::TurnRecord| {
        progress.set_message(format!(
            "{} sessions, last: {} {}",
            t.sessions,
            t.status,
            t.first_token
                .or(t.transcript)
                .map(|ms| format!("{ms:.0} ms"))
                .unwrap_or_default()
        ));
        progress.inc(1);
    });
    let report = bench::run(&cfg, recordings, on_turn).await?;
    bar.finish_and_clear();
    std::fs::write(&args.out, serde_json::to_string_pretty(&report)? + "\n")
        .with_context(|| format!("writing {}", args.out.display()))?;
    report.plot(&args.svg)?;
    print!("{}", report.table());
    if let Some(old) = old {
        print!("{}", report.compare(&old));
    }
    println!("wrote {} and {}", args.out.display(), args.svg.display());
    Ok(())
}

/// `voxd eval`: see [`voxd::eval`]. True when a metric regressed against the baseline.
async fn eval(args: EvalArgs) -> Result<bool> {
    use voxd::eval::{self, report::Report, EvalConfig, Suite};
    let suite = Suite::load(&args.suite)?;
    let baseline = args.baseline.as_deref().map(Report::read).transpose()?;
    let kb_dir = tempfile::tempdir()?;
    let suite = if args.fuzz {
        eval::fuzz::suite(&suite, kb_dir.path(), args.url.is_none())?
    } else {
        suite
    };
    let (_server, url) = match &args.url {
        Some(u) => (None, u.clone()),
        None => {
            let kb = kb_dir.path().join("kb.sqlite");
            if !suite.documents.is_empty() {
                eprintln!("adding the suite's documents to a fresh knowledge base…");
                let out = std::process::Command::new(std::env::current_exe()?)
                    .args(["kb", "--kb"])
                    .arg(&kb)
                    .arg("add")
                    .args(&suite.documents)
                    .output()
                    .context("running voxd kb add")?;
                if !out.status.success() {
                    bail!(
                        "voxd kb add failed: {}",
                        String::from_utf8_lossy(&out.stderr)
                    );
                }
            }
            eprintln!("starting voxd serve…");
            let mut serve_args = vec!["--kb".to_string(), kb.display().to_string()];
            serve_args.extend(args.serve_args.iter().cloned());
            let (child, addr) = start_child_server(&serve_args, false).await?;
            (Some(child), format!("ws://{addr}/v1/realtime"))
        }
    };
    let cfg = EvalConfig {
        url,
        api_key: args.api_key.clone(),
        spoken: args.spoken,
        one_conversation: args.conversation == "one",
        turn_timeout: std::time::Duration::from_secs(args.turn_timeout_s),
    };
    let bar = if args.quiet {
        indicatif::ProgressBar::hidden()
    } else {
        indicatif::ProgressBar::new(suite.questions.len() as u64)
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} questions {msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let progress = bar.clone();
    let on_question = move |r: &eval::report::QuestionResult| {
        progress.set_message(format!(
            "{}: {}",
            r.id,
            if r.correct { "right" } else { "wrong" }
        ));
        progress.inc(1);
    };
    let report = eval::run(&cfg, &suite, &on_question).await?;
    bar.finish_and_clear();
    std::fs::write(&args.out, serde_json::to_string_pretty(&report)? + "\n")
        .with_context(|| format!("writing {}", args.out.display()))?;
    let html = args
        .html
        .clone()
        .unwrap_or_else(|| args.out.with_extension("html"));
    std::fs::write(&html, eval::html::render(&report))
        .with_context(|| format!("writing {}", html.display()))?;
    print!("{}", report.table());
    if args.fuzz {
        print!("{}", eval::fuzz::summary(&report));
    }
    println!("wrote {} and {}", args.out.display(), html.display());
    let Some(baseline) = baseline else {
        return Ok(false);
    };
    let regressions = report.regressions(&baseline, args.tolerance);
    if regressions.is_empty() {
        println!("no metric regressed against the baseline");
        return Ok(false);
    }
    println!("regressed against the baseline:");
    for r in &regressions {
        println!("  {r}");
    }
    Ok(true)
}

/// Streams a file to a realtime endpoint; prints events and, per turn, the time from the end of
/// speech in the file (found offline with the same VAD) to the final transcript.
async fn client(args: ClientArgs) -> Result<()> {
    use voxd::client::Incoming;
    use voxd::protocol::ServerEvent;

    let decoded = audio::decode_file(&args.file, args.channel)
        .with_context(|| format!("reading {}", args.file.display()))?;
    let at_16k = audio::to_model_rate(decoded.clone())?.samples;
    let mut samples =
        audio::resample::resample_all(&decoded.samples, decoded.sample_rate, args.rate)?;
    samples.extend(vec![0.0; (args.rate as u64 * args.tail_ms / 1000) as usize]);
    // True ends of speech in the file, for latency figures.
    let vad = voxd::vad::VadParams {
        silence_duration_ms: args.silence_ms,
        ..Default::default()
    };
    let speech_ends: Vec<u64> = voxd::vad::segment(&at_16k, vad)
        .into_iter()
        .map(|(_, end)| end)
        .collect();

    let (mut tx, mut rx) = voxd::client::connect(&args.url, args.api_key.as_deref()).await?;
    let turn_detection = if args.manual {
        serde_json::Value::Null
    } else {
        serde_json::json!({"type": "server_vad", "silence_duration_ms": args.silence_ms})
    };
    let speculative = if args.no_speculative {
        serde_json::Value::Null
    } else {
        serde_json::json!(100)
    };
    let mut session = serde_json::json!({
        "type": if args.answer { "realtime" } else { "transcription" },
        "audio": {"input": {"format": {"type": "audio/pcm", "rate": args.rate}, "turn_detection": turn_detection}},
        "voxd": {"speculative_after_ms": speculative}
    });
    if args.answer {
        let modality = if args.audio_out.is_some() {
            "audio"
        } else {
            "text"
        };
        session["output_modalities"] = serde_json::json!([modality]);
    }
    tx.update_session(session).await?;
    let mut audio_out: Vec<u8> = Vec::new();

    let start = tokio::time::Instant::now();
    let (rate, realtime, binary, manual) = (args.rate, args.realtime, args.binary, args.manual);
    let sender = tokio::spawn(async move {
        tx.stream(&samples, rate, 20, realtime, binary).await?;
        if manual {
            tx.commit().await?;
        }
        Ok::<_, voxd::client::ClientError>(tx)
    });

    let expected_turns = if args.manual {
        1
    } else {
        speech_ends.len().max(1)
    };
    let mut done = 0;
    let mut latencies = Vec::new();
    let mut first_token_latencies = Vec::new();
    let mut answered = 0;
    let mut answer_started = false;
    let mut streaming_done = false;
    let mut sender = Some(sender);
    // An answer, or a transcript from a remote engine, may take a while on a busy CPU.
    let idle_limit = std::time::Duration::from_secs(if args.answer { 60 } else { 30 });
    while done < expected_turns || (args.answer && answered < done) {
        let msg = tokio::select! {
            m = rx.next() => m,
            r = async { sender.as_mut().expect("checked").await }, if sender.is_some() => {
                sender = None;
                r??;
                streaming_done = true;
                continue;
            }
            _ = tokio::time::sleep(idle_limit), if streaming_done => {
                eprintln!("no more turns after the audio ended ({done} of {expected_turns} transcribed)");
                break;
            }
        };
        let Some(msg) = msg else { break };
        let event = match msg? {
            Incoming::Event(e) => e,
            Incoming::Other(v) => {
                if args.json {
                    println!("{v}");
                }
                continue;
            }
            Incoming::Audio(bytes) => {
                audio_out.extend_from_slice(&bytes);
                continue;
            }
            Incoming::Closed { code, reason } => {
                bail!("the server closed the session ({code} {reason})")
            }
        };
        if args.json {
            println!("{}", serde_json::to_string(&event)?);
        }
        match &event {
            ServerEvent::TranscriptionDelta { delta, .. } if !args.json => {
                use std::io::Write;
                print!("{delta}");
                std::io::stdout().flush()?;
            }
            ServerEvent::TranscriptionCompleted {
                transcript,
                voxd_timing,
                ..
            } => {
                let now_ms = start.elapsed().as_millis() as i64;
                let latency = speech_ends
                    .get(done)
                    .filter(|_| args.realtime && !args.manual)
                    .map(|&end| now_ms - end as i64);
                if let Some(l) = latency {
                    latencies.push(l);
                }
                if !args.json {
                    println!();
                    let timing = voxd_timing
                        .as_ref()
                        .map(|t| {
                            format!(
                                " (asr {} ms{})",
                                t.asr_ms,
                                if t.speculative { ", speculative" } else { "" }
                            )
                        })
                        .unwrap_or_default();
                    match latency {
                        Some(l) => println!(
                            "[final] {transcript}\n        end of speech -> final: {l} ms{timing}"
                        ),
                        None => println!("[final] {transcript}{timing}"),
                    }
                }
                done += 1;
            }
            ServerEvent::TranscriptionFailed { error, .. } => {
                // A turn that could not be transcribed is finished too.
                if !args.json {
                    eprintln!("\n[transcription failed] {}", error.message);
                }
                done += 1;
            }
            ServerEvent::OutputAudioDelta { delta, .. } => {
                use base64::Engine;
                match base64::engine::general_purpose::STANDARD.decode(delta) {
                    Ok(bytes) => audio_out.extend_from_slice(&bytes),
                    Err(e) => eprintln!("error: bad audio delta: {e}"),
                }
            }
            ServerEvent::OutputTextDelta { delta, .. }
            | ServerEvent::OutputAudioTranscriptDelta { delta, .. } => {
                if !answer_started {
                    answer_started = true;
                    let now_ms = start.elapsed().as_millis() as i64;
                    let latency = speech_ends
                        .get(answered)
                        .filter(|_| args.realtime && !args.manual)
                        .map(|&end| now_ms - end as i64);
                    if let Some(l) = latency {
                        first_token_latencies.push(l);
                    }
                    if !args.json {
                        match latency {
                            Some(l) => {
                                print!("[answer, first token {l} ms after the end of speech] ")
                            }
                            None => print!("[answer] "),
                        }
                    }
                }
                if !args.json {
                    use std::io::Write;
                    print!("{delta}");
                    std::io::stdout().flush()?;
                }
            }
            ServerEvent::ResponseDone { response } => {
                answered += 1;
                answer_started = false;
                if !args.json {
                    println!();
                    let status = response["status"].as_str().unwrap_or("");
                    let sources = response["voxd"]["citations"]
                        .as_array()
                        .map(|a| {
                            a.iter()
                                .filter_map(|x| x["title"].as_str().map(str::to_string))
                                .collect::<Vec<_>>()
                        })
                        .unwrap_or_default();
                    println!(
                        "        ({status}; sources: {})",
                        if sources.is_empty() {
                            "none".into()
                        } else {
                            sources.join(", ")
                        }
                    );
                }
            }
            ServerEvent::Error { error } => eprintln!(
                "error: {} ({})",
                error.message,
                error.code.as_deref().unwrap_or("")
            ),
            _ => {}
        }
    }
    if !latencies.is_empty() && !args.json {
        latencies.sort_unstable();
        println!(
            "median end of speech -> final: {} ms over {} turn(s)",
            latencies[latencies.len() / 2],
            latencies.len()
        );
    }
    if !first_token_latencies.is_empty() && !args.json {
        first_token_latencies.sort_unstable();
        println!(
            "median end of speech -> first answer token: {} ms over {} turn(s)",
            first_token_latencies[first_token_latencies.len() / 2],
            first_token_latencies.len()
        );
    }
    if let Some(path) = &args.audio_out {
        voxd::client::wav::write_pcm16(path, 24_000, &audio_out)?;
        if !args.json {
            println!(
                "wrote {:.1} s of spoken answers to {}",
                audio_out.len() as f64 / 48_000.0,
                path.display()
            );
        }
    }
    Ok(())
}

/// Files under `paths` (folders recursively, in name order).
fn collect_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for path in paths {
        if path.is_dir() {
            let mut entries: Vec<PathBuf> = std::fs::read_dir(path)
                .with_context(|| format!("reading {}", path.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    !p.file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with('.'))
                })
                .collect();
            entries.sort();
            let (dirs, files): (Vec<_>, Vec<_>) = entries.into_iter().partition(|p| p.is_dir());
            // In a folder, files of other types are skipped (named explicitly, they are errors).
            out.extend(
                files
                    .into_iter()
                    .filter(|p| voxd::rag::extract::Format::for_path(p).is_ok()),
            );
            out.extend(collect_files(&dirs)?);
        } else if path.exists() {
            out.push(path.clone());
        } else {
            bail!("{}: no such file or folder", path.display());
        }
    }
    Ok(out)
}

async fn kb_command(cfg: Config, action: KbAction) -> Result<()> {
    let models = store(&cfg);
    let kb = voxd::rag::open::open(&cfg.kb, &models).await?;
    match action {
        KbAction::Add { paths } => {
            if paths.is_empty() {
                bail!("name at least one file or folder to add");
            }
            let files = collect_files(&paths)?;
            if files.is_empty() {
                bail!("no .txt, .md or .html files found");
            }
            let bar = indicatif::ProgressBar::new(files.len() as u64);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{spinner} adding [{bar:30}] {pos}/{len} {wide_msg}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            if files.len() < 2 {
                bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
            }
            let mut failed = 0;
            let mut counts = std::collections::BTreeMap::new();
            for file in &files {
                bar.set_message(file.display().to_string());
                match kb.add_file(file).await {
                    Ok(out) => {
                        *counts
                            .entry(format!("{:?}", out.status).to_lowercase())
                            .or_insert(0) += 1;
                        bar.println(format!(
                            "{:<9} {}  {} ({} chunks)",
                            format!("{:?}", out.status).to_lowercase(),
                            out.document.id,
                            file.display(),
                            out.document.chunks
                        ));
                    }
                    Err(e) => {
                        failed += 1;
                        bar.println(format!("error     {}: {e}", file.display()));
                    }
                }
                bar.inc(1);
            }
            bar.finish_and_clear();
            let summary: Vec<String> = counts.iter().map(|(k, v)| format!("{v} {k}")).collect();
            println!("{} ({} failed)", summary.join(", "), failed);
            if failed > 0 {
                bail!("{failed} of {} files could not be added", files.len());
            }
            Ok(())
        }
        KbAction::List { json } => {
            let docs = kb.list().await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&docs)?);
                return Ok(());
            }
            println!("{:<26} {:>6} {:<20} TITLE / URI", "ID", "CHUNKS", "VERSION");
            for d in &docs {
                println!(
                    "{:<26} {:>6} {:<20} {}  {}",
                    d.id,
                    d.chunks,
                    voxd::rag::extract::format_time(d.version_at),
                    d.title,
                    d.uri.as_deref().unwrap_or("")
                );
            }
            println!("{} documents in {}", docs.len(), cfg.kb.path.display());
            Ok(())
        }
        KbAction::Remove { id } => {
            kb.remove(&id).await?;
            println!("removed {id}");
            Ok(())
        }
        KbAction::Search {
            query,
            top_k,
            source,
            min_score,
            json,
        } => {
            let mut request = voxd::rag::SearchRequest::new(query);
            request.top_k = top_k;
            request.min_score = min_score;
            if !source.is_empty() {
                request.filter = Some(voxd::rag::Filter {
                    sources: Some(source),
                    ..Default::default()
                });
            }
            let results = kb.search(request).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&results)?);
                return Ok(());
            }
            if !results.grounded {
                println!("nothing in the knowledge base passes the relevance floor");
            }
            for (i, p) in results.passages.iter().enumerate() {
                let c = &p.citation;
                println!(
                    "[{}] {:.3} (cosine {:.3})  {} › {}  [{}, chunk {}, chars {}..{}]",
                    i + 1,
                    p.score,
                    p.similarity,
                    c.title,
                    c.heading,
                    c.document_id,
                    c.chunk_id,
                    c.char_start,
                    c.char_end
                );
                for line in p.text.lines().filter(|l| !l.trim().is_empty()).take(4) {
                    println!("    {line}");
                }
            }
            println!(
                "embed {:.1} ms, search {:.1} ms",
                results.embed_ms, results.search_ms
            );
            Ok(())
        }
        KbAction::Reindex => {
            let bar = indicatif::ProgressBar::new(0);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "re-embedding [{bar:30}] {pos}/{len} chunks",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            let n = kb
                .reindex(&|done, total| {
                    bar.set_length(total as u64);
                    bar.set_position(done as u64);
                })
                .await?;
            bar.finish_and_clear();
            println!("re-embedded {n} chunks with {}", kb.model());
            Ok(())
        }
    }
}
