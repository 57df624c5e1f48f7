//! The `voxd` command: parses the command line and hands each subcommand to its file in
//! [`cli`]. Errors from the library are typed; here, at the edge, they are printed once with
//! their chain.

mod cli;

use anyhow::Result;
use clap::{Parser, Subcommand};

use voxd::config::CommonArgs;

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
    Serve(cli::serve::ServeArgs),
    /// Manage the model cache.
    Models {
        #[command(subcommand)]
        action: cli::models::ModelsAction,
    },
    /// Stream an audio file to a realtime endpoint and print the events.
    Client(cli::client::ClientArgs),
    /// Measure latency under load: N users streaming recordings at real-time pace.
    Bench(cli::bench::BenchArgs),
    /// Measure answer quality on a suite of questions: facts, citations, refusals, groundedness,
    /// prompt injection, stale data, repeats and latency; compare with a baseline run.
    Eval(cli::eval::EvalArgs),
    /// Manage the knowledge base that grounds answers.
    Kb(cli::kb::KbCommand),
    /// Read the audit trail of tool calls (from the knowledge base's database).
    Audit(cli::audit::AuditArgs),
    /// Transcribe an audio file (WAV, FLAC, MP3, Ogg/Vorbis) and print the transcript.
    Transcribe(cli::transcribe::TranscribeArgs),
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
    let common = &cli.common;
    if let Some(path) = &common.ca_cert {
        voxd::openai_http::trust_ca_file(path)?;
    }
    match cli.command {
        Command::Serve(args) => cli::serve::run(common, args),
        Command::Models { action } => cli::models::run(common, action),
        Command::Kb(args) => cli::kb::run(common, args),
        Command::Audit(args) => cli::audit::run(common, args),
        Command::Eval(args) => cli::eval::run(common, args),
        Command::Bench(args) => cli::bench::run(common, args),
        Command::Client(args) => cli::client::run(common, args),
        Command::Transcribe(args) => cli::transcribe::run(common, args),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parses(args: &[&str]) -> bool {
        Cli::try_parse_from(args).is_ok()
    }

    #[test]
    fn store_flags_go_before_or_after_the_kb_subcommand() {
        let url = "postgres://voxd@127.0.0.1:5432/voxd";
        assert!(parses(&["voxd", "kb", "add", "--kb-url", url, "docs/"]));
        assert!(parses(&["voxd", "kb", "--kb-url", url, "add", "docs/"]));
        assert!(parses(&[
            "voxd",
            "kb",
            "search",
            "--kb",
            "x.sqlite",
            "opening hours"
        ]));
        assert!(parses(&[
            "voxd",
            "kb",
            "list",
            "--embed-model",
            "m",
            "--json"
        ]));
        let Command::Kb(kb) = Cli::try_parse_from(["voxd", "kb", "add", "--kb-url", url, "d/"])
            .unwrap()
            .command
        else {
            panic!("not the kb command");
        };
        assert_eq!(kb.kb.kb_url.as_deref(), Some(url));
        assert!(!parses(&["voxd", "kb", "add", "--no-such-flag", "d/"]));
    }

    #[test]
    fn home_and_config_are_accepted_after_any_subcommand() {
        assert!(parses(&["voxd", "models", "list", "--home", "/tmp/x"]));
        assert!(parses(&[
            "voxd",
            "serve",
            "--config",
            "voxd.toml",
            "--asr-pool",
            "2"
        ]));
        assert!(parses(&["voxd", "kb", "list", "--home", "/tmp/x"]));
    }
}
