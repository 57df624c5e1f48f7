//! `voxd eval`: see [`voxd::eval`]. Asks a suite's questions and scores the answers; exits with
//! status 1 when a metric regressed against a baseline.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use voxd::config::CommonArgs;
use voxd::eval::{self, report::Report, EvalConfig, Suite};

/// `voxd eval` options.
#[derive(clap::Args)]
pub struct EvalArgs {
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
    /// Have each answer spoken by the server's voice and hear it back (the server's own
    /// transcription endpoint, or --listen-url): the fact is scored on what was heard too, and
    /// each miss is put down to the stage that lost it (question, passage, sentence, check,
    /// voice).
    #[arg(long)]
    listen: bool,
    /// The transcription endpoint that hears the answers back (an OpenAI-compatible base URL
    /// ending in /v1) [default: the server's own].
    #[arg(long, requires = "listen")]
    listen_url: Option<String>,
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
    #[command(flatten)]
    driver: super::child::DriverArgs,
    /// Arguments for the `voxd serve` eval starts (after `--`), e.g. `-- --llm-url URL`.
    #[arg(last = true)]
    serve_args: Vec<String>,
}

pub fn run(common: &CommonArgs, args: EvalArgs) -> Result<()> {
    super::common_config(common)?;
    let regressed = tokio::runtime::Runtime::new()?.block_on(eval(args))?;
    if regressed {
        std::process::exit(1);
    }
    Ok(())
}

/// True when a metric regressed against the baseline.
async fn eval(args: EvalArgs) -> Result<bool> {
    if eval::tools::ToolSuite::is_tool_suite(&args.suite) {
        return eval_tools(&args).await;
    }
    let suite = Suite::load(&args.suite)?;
    let baseline = args.baseline.as_deref().map(Report::read).transpose()?;
    let kb_dir = tempfile::tempdir()?;
    let suite = if args.fuzz {
        eval::fuzz::suite(&suite, kb_dir.path(), args.url.is_none())?
    } else {
        suite
    };
    let mut serve_args = Vec::new();
    if args.url.is_none() {
        let kb = kb_dir.path().join("kb.sqlite");
        add_documents(&kb, &suite.documents)?;
        serve_args = vec!["--kb".to_string(), kb.display().to_string()];
        serve_args.extend(args.serve_args.iter().cloned());
    }
    let (_server, url) = super::child::endpoint(&args.url, &serve_args, false).await?;
    let listen = args.listen.then(|| {
        args.listen_url
            .clone()
            .unwrap_or_else(|| eval::listen::Listener::base_for(&url))
    });
    let cfg = EvalConfig {
        listen,
        url,
        api_key: args.driver.api_key.clone(),
        spoken: args.spoken,
        one_conversation: args.conversation == "one",
        turn_timeout: std::time::Duration::from_secs(args.turn_timeout_s),
    };
    let bar = if args.driver.quiet {
        indicatif::ProgressBar::hidden()
    } else {
        indicatif::ProgressBar::new(suite.questions.len() as u64)
    };
    bar.set_style(super::bar_style(
        "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} questions {msg}",
    ));
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
    write_reports(&args, &report)?;
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

/// A tool suite (`cases.jsonl`): are the calls right? Writes the JSON report; with a baseline,
/// true when a rate fell by more than the tolerance.
async fn eval_tools(args: &EvalArgs) -> Result<bool> {
    let suite = eval::tools::ToolSuite::load(&args.suite)?;
    let (_server, url) = super::child::endpoint(&args.url, &args.serve_args, false).await?;
    let bar = if args.driver.quiet {
        indicatif::ProgressBar::hidden()
    } else {
        indicatif::ProgressBar::new(suite.cases.len() as u64)
    };
    bar.set_style(super::bar_style(
        "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} cases {msg}",
    ));
    let progress = bar.clone();
    let on_case = move |r: &eval::tools::ToolCaseResult| {
        progress.set_message(r.id.clone());
        progress.inc(1);
    };
    let report = eval::tools::run(
        &url,
        args.driver.api_key.as_deref(),
        &suite,
        std::time::Duration::from_secs(args.turn_timeout_s),
        &on_case,
    )
    .await?;
    bar.finish_and_clear();
    std::fs::write(&args.out, serde_json::to_string_pretty(&report)? + "\n")
        .with_context(|| format!("writing {}", args.out.display()))?;
    print!("{}", report.table());
    println!("wrote {}", args.out.display());
    let Some(path) = &args.baseline else {
        return Ok(false);
    };
    let old: eval::tools::ToolReport = serde_json::from_str(&std::fs::read_to_string(path)?)
        .with_context(|| format!("{} is not a tool suite report", path.display()))?;
    let mut regressed = false;
    for (name, new, was) in [
        ("right tool", report.right_tool, old.right_tool),
        (
            "every argument right",
            report.arguments_right,
            old.arguments_right,
        ),
        (
            "no extra arguments",
            report.no_extra_arguments,
            old.no_extra_arguments,
        ),
        (
            "answer uses result",
            report.answer_uses_result,
            old.answer_uses_result,
        ),
    ] {
        if new + args.tolerance < was {
            println!(
                "regressed: {name} {:.1} % (was {:.1} %)",
                new * 100.0,
                was * 100.0
            );
            regressed = true;
        }
    }
    Ok(regressed)
}

/// Adds the suite's documents to a fresh knowledge base at `kb` with `voxd kb add`.
fn add_documents(kb: &Path, documents: &[PathBuf]) -> Result<()> {
    if documents.is_empty() {
        return Ok(());
    }
    eprintln!("adding the suite's documents to a fresh knowledge base…");
    let out = std::process::Command::new(std::env::current_exe()?)
        .args(["kb", "--kb"])
        .arg(kb)
        .arg("add")
        .args(documents)
        .output()
        .context("running voxd kb add")?;
    if !out.status.success() {
        bail!(
            "voxd kb add failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// Writes the JSON and HTML reports and prints the summary table.
fn write_reports(args: &EvalArgs, report: &Report) -> Result<()> {
    std::fs::write(&args.out, serde_json::to_string_pretty(report)? + "\n")
        .with_context(|| format!("writing {}", args.out.display()))?;
    let html = args
        .html
        .clone()
        .unwrap_or_else(|| args.out.with_extension("html"));
    std::fs::write(&html, eval::html::render(report))
        .with_context(|| format!("writing {}", html.display()))?;
    print!("{}", report.table());
    if args.fuzz {
        print!("{}", eval::fuzz::summary(report));
    }
    println!("wrote {} and {}", args.out.display(), html.display());
    Ok(())
}
