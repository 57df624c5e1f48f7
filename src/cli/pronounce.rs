//! `voxd kb pronounce`: the knowledge base's names and rare words, said by the voice and heard
//! back by the recogniser; prints a pronunciation lexicon for the words that do not come back.

use std::sync::Arc;

use anyhow::{bail, Context, Result};
use voxd::asr::Asr;
use voxd::config::Config;
use voxd::models::{ModelStore, Role};
use voxd::rag::KnowledgeBase;
use voxd::tts::pronounce;
use voxd::tts::Tts;

/// `voxd kb pronounce` options.
#[derive(clap::Args)]
pub struct PronounceArgs {
    /// Words to check at most, names first [default: 100].
    #[arg(long, default_value_t = 100)]
    limit: usize,
    /// Print every word checked, with what was heard, as JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    pub asr: voxd::config::AsrArgs,
    #[command(flatten)]
    pub tts: voxd::tts::config::TtsArgs,
}

pub async fn run(
    cfg: &Config,
    models: &ModelStore,
    kb: &KnowledgeBase,
    args: PronounceArgs,
) -> Result<()> {
    if !cfg.tts.enabled {
        bail!("`voxd kb pronounce` needs the voice: drop --no-tts");
    }
    let words = pronounce::words_to_check(&kb.vocabulary().await, args.limit);
    if words.is_empty() {
        bail!("the knowledge base has no words to check: add documents first");
    }
    let (tts, asr) = open(cfg, models).await?;
    let voice = tts
        .voices()
        .into_iter()
        .next()
        .unwrap_or_else(|| cfg.tts.voice.clone());
    let bar = indicatif::ProgressBar::new(words.len() as u64);
    bar.set_style(
        super::bar_style("saying [{bar:30}] {pos}/{len} {wide_msg}").progress_chars("=> "),
    );
    let mut checked = Vec::with_capacity(words.len());
    for word in &words {
        bar.set_message(word.clone());
        let p = pronounce::check(tts.as_ref(), asr.as_ref(), &voice, word)
            .await
            .with_context(|| format!("checking {word:?}"))?;
        checked.push(p);
        bar.inc(1);
    }
    bar.finish_and_clear();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&checked)?);
    } else {
        print!("{}", pronounce::lexicon_text(&checked));
    }
    Ok(())
}

/// Opens the voice (with the configured lexicon) and the recogniser, off the async threads.
async fn open(cfg: &Config, models: &ModelStore) -> Result<(Arc<dyn Tts>, Arc<dyn Asr>)> {
    let (tts_cfg, store) = (cfg.tts.clone(), models.clone());
    let tts = tokio::task::spawn_blocking(move || voxd::tts::open::open(&tts_cfg, &store))
        .await?
        .context("opening the voice")?;
    let asr: Arc<dyn Asr> = match cfg.asr.remote.clone() {
        Some(remote) => Arc::new(voxd::asr::RemoteAsr::new(remote)?),
        None => {
            let path = models.resolve(Role::Asr, cfg.asr.model.as_deref())?;
            let wcfg = cfg.asr.whisper(path);
            Arc::new(
                tokio::task::spawn_blocking(move || voxd::asr::WhisperPool::load(wcfg)).await??,
            )
        }
    };
    Ok((tts, asr))
}
