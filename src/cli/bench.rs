//! `voxd bench`: see [`voxd::bench`]. Streams recordings at real-time pace from N sessions and
//! reports each stage's latency from the true end of speech.

use std::path::PathBuf;

use anyhow::{Context, Result};
use voxd::bench::{self, report::Report, speech, BenchConfig};
use voxd::config::CommonArgs;

/// `voxd bench` options.
#[derive(clap::Args)]
pub struct BenchArgs {
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
    /// How sessions reach the server: websocket, webrtc, or both (`websocket,webrtc`: each level
    /// runs over each, one after the other, to compare them).
    #[arg(long, value_delimiter = ',', default_value = "websocket")]
    transport: Vec<bench::link::Transport>,
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
    #[command(flatten)]
    driver: super::child::DriverArgs,
    /// Arguments for the `voxd serve` the bench starts (after `--`), e.g. `-- --llm-url URL`.
    #[arg(last = true)]
    serve_args: Vec<String>,
}

/// `voxd bench --turn-detection`.
#[derive(Clone, Copy, clap::ValueEnum)]
enum BenchTurns {
    #[value(name = "server_vad", alias = "server-vad")]
    ServerVad,
    #[value(name = "semantic_vad", alias = "semantic-vad")]
    SemanticVad,
}

pub fn run(common: &CommonArgs, args: BenchArgs) -> Result<()> {
    super::common_config(common)?;
    tokio::runtime::Runtime::new()?.block_on(bench(args))
}

async fn bench(args: BenchArgs) -> Result<()> {
    let vad = voxd::vad::VadParams {
        silence_duration_ms: args.silence_ms,
        ..Default::default()
    };
    let mut recordings = Vec::new();
    for path in &args.audio {
        recordings.push(speech::load(path, bench::STREAM_RATE, vad)?);
    }
    let old = args.compare.as_deref().map(Report::read).transpose()?;
    let (_server, url) = super::child::endpoint(&args.url, &args.serve_args, args.no_llm).await?;
    let cfg = BenchConfig {
        url,
        api_key: args.driver.api_key.clone(),
        sessions: args.sessions.clone(),
        transports: args.transport.clone(),
        turns: args.turns.max(1),
        duration: args.duration.map(Into::into),
        answers: !args.no_llm,
        silence_ms: args.silence_ms,
        semantic: matches!(args.turn_detection, BenchTurns::SemanticVad)
            .then(|| args.eagerness.clone()),
        vad: args.vad.clone(),
        turn_timeout: std::time::Duration::from_secs(args.turn_timeout_s),
        progress: !args.driver.quiet,
    };
    let per_turn: usize = recordings
        .iter()
        .map(|r| r.speech.segments.len())
        .sum::<usize>()
        / recordings.len();
    let total: usize = cfg
        .sessions
        .iter()
        .map(|n| n * cfg.turns * per_turn)
        .sum::<usize>()
        * cfg.transports.len();
    let bar = match (cfg.progress, cfg.duration) {
        (false, _) => indicatif::ProgressBar::hidden(),
        (true, None) => indicatif::ProgressBar::new(total as u64),
        (true, Some(_)) => indicatif::ProgressBar::new_spinner(),
    };
    bar.set_style(super::bar_style(
        "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} utterances {msg}",
    ));
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
