//! `voxd transcribe`: one audio file through the embedded recogniser, printed as text or JSON.

use std::path::PathBuf;

use anyhow::{Context, Result};
use voxd::asr::{Asr, Request, WhisperPool};
use voxd::audio::{self, ChannelSelect};
use voxd::config::{AsrArgs, CommonArgs, Config, StageArgs};
use voxd::models::Role;

/// `voxd transcribe` options.
#[derive(clap::Args)]
pub struct TranscribeArgs {
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
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum OutputFormat {
    Text,
    Json,
}

pub fn run(common: &CommonArgs, mut args: TranscribeArgs) -> Result<()> {
    // One file at a time: one worker using every core, unless told otherwise.
    args.asr.asr_pool.get_or_insert(1);
    if args.asr.asr_threads.is_none() {
        args.asr.asr_threads = Some(
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2),
        );
    }
    let stages = StageArgs {
        asr: args.asr,
        ..Default::default()
    };
    let cfg = Config::resolve(common, &stages)?;
    voxd::telemetry::init(cfg.log_format);
    let store = super::model_store(&cfg);
    let model_path = store.resolve(Role::Asr, cfg.asr.model.as_deref())?;
    let started = std::time::Instant::now();
    let decoded = audio::decode_file(&args.file, args.channel)
        .with_context(|| format!("reading {}", args.file.display()))?;
    let source_rate = decoded.sample_rate;
    let decoded = audio::to_model_rate(decoded)?;
    let decode_ms = started.elapsed().as_millis();
    let pool = WhisperPool::load(cfg.asr.whisper(model_path))?;
    let runtime = tokio::runtime::Builder::new_current_thread().build()?;
    let transcript = runtime.block_on(pool.transcribe(Request::new(decoded.samples)))?;
    match args.format {
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
