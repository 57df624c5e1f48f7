//! `voxd serve`: pulls missing default models, then loads each stage (speech recogniser,
//! knowledge base, language model, voice, turn-taking models) in the background while the
//! server already answers `/healthz` and reports loading on `/readyz`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use tracing::{error, info};
use voxd::asr::Asr;
use voxd::config::{CommonArgs, Config, StageArgs};
use voxd::models::{ModelStore, PullOptions, Role};
use voxd::server::{self, AppState, ServerSettings};

/// `voxd serve` options.
#[derive(clap::Args)]
pub struct ServeArgs {
    #[command(flatten)]
    stages: StageArgs,
    /// Do not download missing default models; fail instead.
    #[arg(long)]
    no_pull: bool,
}

pub fn run(common: &CommonArgs, args: ServeArgs) -> Result<()> {
    let cfg = Config::resolve(common, &args.stages)?;
    // Kept until the server has stopped, so the last spans are flushed.
    let _telemetry =
        voxd::telemetry::init_with_export(cfg.log_format, cfg.server.otlp_endpoint.as_deref())?;
    serve(cfg, args.no_pull)
}

fn serve(cfg: Config, no_pull: bool) -> Result<()> {
    cfg.server.check_exposure()?;
    let store = super::model_store(&cfg);
    pull_defaults(&cfg, &store, no_pull)?;
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
        let state = Arc::new(AppState::with_settings(ServerSettings::from_config(
            &cfg.server,
            voxd::realtime::AnswerSettings::from_config(&cfg.llm),
        )));
        // Tool calls are recorded in the knowledge base's database.
        match voxd::tools::AuditLog::for_kb(&cfg.kb.path, cfg.kb.url.as_deref()) {
            Ok(log) => state.set_audit(log),
            Err(e) => tracing::warn!(error = %e, "no audit trail of tool calls"),
        }
        let mut server_tools = voxd::tools::ServerTools::new(&cfg.tools)?;
        // MCP servers' tools are listed now (each within its timeout).
        server_tools.list_mcp_tools().await;
        if !server_tools.definitions().is_empty() || server_tools.client_mcp.is_some() {
            info!(
                tools = server_tools.definitions().len(),
                "server tools configured"
            );
            state.set_server_tools(Arc::new(server_tools));
        }
        load_llm(&cfg, &store, &state);
        let turn_models = voxd::vad::open::open(&cfg.turns, cfg.tts.onnxruntime.clone(), &store)
            .context("loading the turn-taking models")?;
        state.set_turn_models(turn_models, cfg.turns.vad);
        load_tts(&cfg, &store, &state);
        let listener = tokio::net::TcpListener::bind(cfg.server.addr)
            .await
            .with_context(|| format!("cannot listen on {}", cfg.server.addr))?;
        state.expect_kb();
        tokio::spawn(open_kb(cfg.kb.clone(), store.clone(), state.clone()));
        load_asr(&cfg, model_path, &state);
        match &cfg.server.tls {
            Some(files) => {
                let tls = server::tls::TlsListener::bind(listener, files.clone())
                    .context("setting up TLS")?;
                info!(cert = %files.cert.display(), "serving HTTPS and WSS");
                server::serve(tls, state, server::shutdown_signal()).await?
            }
            None => server::serve(listener, state, server::shutdown_signal()).await?,
        }
        Ok(())
    });
    // Blocking work still running (a model job that ignores cancellation) does not hold the
    // process: the stop is bounded.
    runtime.shutdown_timeout(Duration::from_secs(1));
    served
}

/// Pulls the default models the server needs, unless the user brought their own.
fn pull_defaults(cfg: &Config, store: &ModelStore, no_pull: bool) -> Result<()> {
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
    Ok(())
}

/// Loads the language model in the background (`/readyz` waits for it).
fn load_llm(cfg: &Config, store: &ModelStore, state: &Arc<AppState>) {
    if !cfg.llm.enabled() {
        return;
    }
    state.expect_llm();
    let (state, llm_cfg, models) = (state.clone(), cfg.llm.clone(), store.clone());
    tokio::spawn(async move {
        match voxd::llm::open::open(&llm_cfg, &models).await {
            Ok(llm) => state.set_llm(llm),
            Err(e) => {
                error!(error = %e, "loading the language model failed");
                state.set_llm_error(e.to_string());
            }
        }
    });
}

/// Loads the voice in the background; without it answers are text only.
fn load_tts(cfg: &Config, store: &ModelStore, state: &Arc<AppState>) {
    if !cfg.tts.enabled {
        return;
    }
    state.expect_tts();
    let (state, tts_cfg, models) = (state.clone(), cfg.tts.clone(), store.clone());
    tokio::task::spawn_blocking(move || match voxd::tts::open::open(&tts_cfg, &models) {
        Ok(tts) => state.set_tts(tts),
        Err(e) => {
            error!(error = %e, "loading the voice failed; answers will be text only");
            state.set_tts_error(e.to_string());
        }
    });
}

/// Opens the knowledge base, retrying while its database is unreachable, then follows its
/// health for readiness.
async fn open_kb(kb_cfg: voxd::config::KbConfig, models: ModelStore, state: Arc<AppState>) {
    // A shared database may come up after the replica: keep trying (readiness says why
    // meanwhile). A file that cannot be opened will not open later.
    let mut pause = Duration::from_millis(500);
    let kb = loop {
        match voxd::rag::open::open(&kb_cfg, &models).await {
            Ok(kb) => break Arc::new(kb),
            Err(
                e @ voxd::rag::KbError::Store(voxd::rag::store::StoreError::Unavailable { .. }),
            ) => {
                error!(error = %e, retry_in_ms = pause.as_millis() as u64, "the knowledge-base database is unreachable");
                state.set_kb_retrying(e.to_string());
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(10));
            }
            Err(e) => {
                error!(error = %e, "opening the knowledge base failed");
                state.set_kb_error(e.to_string());
                return;
            }
        }
    };
    if let Err(e) = kb.check_model().await {
        error!(error = %e, "the knowledge base needs re-indexing");
    }
    state.set_kb(kb.clone());
    // Readiness follows the store: checked every 2 s (and on every use).
    let mut was_up = true;
    loop {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let up = kb.check_health().await;
        match (&up, was_up) {
            (Err(e), true) => error!(error = %e, "the knowledge base stopped answering"),
            (Ok(()), false) => info!("the knowledge base answers again"),
            _ => {}
        }
        was_up = up.is_ok();
    }
}

/// Sets up the speech recogniser: a remote engine at once, or whisper.cpp loaded in the
/// background.
fn load_asr(cfg: &Config, model_path: Option<PathBuf>, state: &Arc<AppState>) {
    match (cfg.asr.remote.clone(), model_path) {
        (Some(remote), _) => match voxd::asr::RemoteAsr::new(remote) {
            Ok(asr) => {
                info!(asr = %asr.describe(), "transcribing on a remote engine");
                state.set_asr(Arc::new(asr))
            }
            Err(e) => state.set_load_error(e.to_string()),
        },
        (None, Some(model_path)) => {
            let state = state.clone();
            let wcfg = cfg.asr.whisper(model_path);
            tokio::task::spawn_blocking(move || match voxd::asr::WhisperPool::load(wcfg) {
                Ok(pool) => state.set_asr(Arc::new(pool)),
                Err(e) => {
                    error!(error = %e, "loading the speech model failed");
                    state.set_load_error(e.to_string());
                }
            });
        }
        (None, None) => {
            unreachable!("a local speech model is resolved when there is no remote one")
        }
    }
}
