//! `voxd kb`: add, list, remove, search and re-index the knowledge base. The store and
//! embedding flags (`--kb`, `--kb-url`, `--embed-*`) go before or after the action.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use voxd::config::{CommonArgs, Config, KbArgs, StageArgs};
use voxd::rag::KnowledgeBase;

/// `voxd kb` options.
#[derive(clap::Args)]
pub struct KbCommand {
    #[command(flatten)]
    pub kb: KbArgs,
    #[command(subcommand)]
    action: KbAction,
}

#[derive(clap::Subcommand)]
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
    /// Say the knowledge base's names and rare words with the voice, hear each back with the
    /// recogniser, and print a pronunciation lexicon (`--tts-lexicon`) of respellings for the
    /// words that do not come back.
    Pronounce(Box<super::pronounce::PronounceArgs>),
}

pub fn run(common: &CommonArgs, args: KbCommand) -> Result<()> {
    let mut stages = StageArgs {
        kb: args.kb,
        ..Default::default()
    };
    if let KbAction::Pronounce(p) = &args.action {
        stages.asr = p.asr.clone();
        stages.tts = p.tts.clone();
    }
    let cfg = Config::resolve(common, &stages)?;
    voxd::telemetry::init(cfg.log_format);
    tokio::runtime::Runtime::new()?.block_on(kb_command(cfg, args.action))
}

async fn kb_command(cfg: Config, action: KbAction) -> Result<()> {
    let models = super::model_store(&cfg);
    let kb = voxd::rag::open::open(&cfg.kb, &models).await?;
    match action {
        KbAction::Add { paths } => add(&kb, &paths).await,
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
            search(&kb, request, json).await
        }
        KbAction::Pronounce(p) => super::pronounce::run(&cfg, &models, &kb, *p).await,
        KbAction::Reindex => {
            let bar = indicatif::ProgressBar::new(0);
            bar.set_style(
                super::bar_style("re-embedding [{bar:30}] {pos}/{len} chunks")
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

async fn add(kb: &KnowledgeBase, paths: &[PathBuf]) -> Result<()> {
    if paths.is_empty() {
        bail!("name at least one file or folder to add");
    }
    let files = collect_files(paths)?;
    if files.is_empty() {
        bail!("no .txt, .md or .html files found");
    }
    let bar = indicatif::ProgressBar::new(files.len() as u64);
    bar.set_style(
        super::bar_style("{spinner} adding [{bar:30}] {pos}/{len} {wide_msg}")
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
                let status = format!("{:?}", out.status).to_lowercase();
                bar.println(format!(
                    "{:<9} {}  {} ({} chunks)",
                    status,
                    out.document.id,
                    file.display(),
                    out.document.chunks
                ));
                *counts.entry(status).or_insert(0) += 1;
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

async fn search(kb: &KnowledgeBase, request: voxd::rag::SearchRequest, json: bool) -> Result<()> {
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
