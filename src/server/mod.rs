//! The HTTP server (axum): routes, shared state, start-up and graceful shutdown.
//!
//! Routes: `GET /` (the web demo and `/sdk/voxd.js`, compiled in), `GET /healthz` (the process answers),
//! `GET /readyz` (200 once the models are loaded), `POST /v1/audio/transcriptions`,
//! `GET /v1/realtime` (WebSocket), the knowledge base under `/v1/kb/` and `POST /v1/embeddings`
//! (see [`kb`]). Every error is JSON (see [`error`]). With an API key set,
//! every route but `/`, `/healthz` and `/readyz` requires it.

pub mod assets;
pub mod audit;
pub mod calls;
pub mod chat;
mod chat_tools;
pub mod config;
pub mod cors;
pub mod error;
pub mod guard;
pub mod kb;
pub mod loading;
pub mod quotas;
pub mod realtime;
pub mod secrets;
pub mod speech;
pub mod tls;
pub mod transcriptions;

use std::future::{Future, IntoFuture};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, StatusCode};
use axum::middleware;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;
use tracing::{info, warn};

use crate::asr::Asr;
use crate::llm::Llm;
use crate::rag::KnowledgeBase;
use crate::realtime::Limits;
use crate::realtime::{AnswerSettings, Answering};
use crate::tts::Tts;
use error::ApiError;
use guard::Caller;
use loading::Loading;

/// Server-wide settings that are not per-request.
#[derive(Debug, Clone)]
pub struct ServerSettings {
    /// Largest request body accepted.
    pub max_upload_bytes: usize,
    /// Required on every API route when set (`Authorization: Bearer`, or for browsers the
    /// `openai-insecure-api-key.<key>` WebSocket subprotocol).
    pub api_key: Option<String>,
    /// More API keys, each with an id and a role (see [`guard::ApiKey`]).
    pub keys: Vec<guard::ApiKey>,
    /// The demo page gets client secrets (`POST /demo/client_secret`), within this quota.
    pub demo: Option<quotas::Quota>,
    /// The address WebRTC peers are told to send media to (`--rtc-public-ip`).
    pub rtc_public_ip: Option<std::net::IpAddr>,
    /// The UDP ports calls' media may use (`--rtc-udp-ports`).
    pub rtc_udp_ports: Option<config::PortRange>,
    /// Browser origins allowed besides the server's own and loopback ones (see [`guard`]).
    pub allowed_origins: Vec<String>,
    /// Host names accepted besides the bind address and loopback names (see [`guard`]).
    pub allowed_hosts: Vec<String>,
    /// The address the server listens on, for the Host check (`None`: any host).
    pub bind: Option<SocketAddr>,
    /// Longest audio the transcription endpoint decodes, in seconds.
    pub max_audio_seconds: f64,
    /// Uploads decoded or transcribed at once; more get 503.
    pub max_transcriptions: usize,
    /// Concurrent realtime sessions; more get 503.
    pub max_sessions: usize,
    pub limits: Limits,
    /// How realtime sessions answer.
    pub answer: AnswerSettings,
}

impl Default for ServerSettings {
    fn default() -> Self {
        ServerSettings {
            max_upload_bytes: 25 << 20,
            api_key: None,
            keys: Vec::new(),
            demo: None,
            rtc_public_ip: None,
            rtc_udp_ports: None,
            allowed_origins: Vec::new(),
            allowed_hosts: Vec::new(),
            bind: None,
            max_audio_seconds: 30.0 * 60.0,
            max_transcriptions: 4,
            max_sessions: 64,
            limits: Limits::default(),
            answer: AnswerSettings::default(),
        }
    }
}

/// State shared by all requests.
pub struct AppState {
    asr: OnceLock<Arc<dyn Asr>>,
    load_error: Mutex<Option<String>>,
    kb: Loading<Arc<KnowledgeBase>>,
    llm: Loading<Arc<dyn Llm>>,
    tts: Loading<Arc<dyn Tts>>,
    pub answer: AnswerSettings,
    /// Largest request body accepted.
    pub max_upload_bytes: usize,
    /// Longest decoded upload accepted, in seconds.
    pub max_audio_seconds: f64,
    /// Permits for uploads being decoded or transcribed.
    pub transcriptions: Arc<tokio::sync::Semaphore>,
    access: guard::Access,
    pub max_sessions: usize,
    pub limits: Limits,
    live: Arc<AtomicUsize>,
    /// Tools the server runs itself (from the configuration).
    server_tools: OnceLock<Arc<crate::tools::ServerTools>>,
    /// Where every tool call is recorded.
    audit: OnceLock<crate::tools::AuditLog>,
    /// Turn-taking models and the voice detector sessions start with.
    turns: std::sync::RwLock<(crate::vad::TurnModels, crate::vad::VadEngine)>,
    shutdown: tokio::sync::watch::Sender<bool>,
    /// Set when the server stops: long computations on behalf of requests give up.
    stopping: Arc<AtomicBool>,
    /// Ephemeral `ek_` keys minted for browsers and apps.
    client_secrets: secrets::ClientSecrets,
    /// Per-key limits and usage.
    quotas: Arc<quotas::Quotas>,
    /// The demo page may get client secrets.
    pub demo: bool,
    /// Where WebRTC calls' media goes.
    pub media: crate::rtc::MediaAddress,
    /// The live WebRTC calls.
    pub calls: calls::Calls,
}

impl AppState {
    pub fn new(max_upload_bytes: usize) -> Self {
        Self::with_settings(ServerSettings {
            max_upload_bytes,
            ..Default::default()
        })
    }

    pub fn with_settings(s: ServerSettings) -> Self {
        let mut quota_map: std::collections::HashMap<String, quotas::Quota> =
            s.keys.iter().map(|k| (k.id.clone(), k.quota)).collect();
        if let Some(q) = s.demo {
            quota_map.insert(secrets::DEMO_ACCOUNT.into(), q);
        }
        let demo = s.demo.is_some();
        AppState {
            asr: OnceLock::new(),
            load_error: Mutex::new(None),
            kb: Loading::new("the knowledge base", "kb_unavailable"),
            llm: Loading::new("the language model", "llm_unavailable"),
            tts: Loading::new("the voice", "tts_unavailable"),
            answer: s.answer,
            max_upload_bytes: s.max_upload_bytes,
            max_audio_seconds: s.max_audio_seconds,
            transcriptions: Arc::new(tokio::sync::Semaphore::new(s.max_transcriptions.max(1))),
            access: guard::Access {
                api_key: s.api_key.filter(|k| !k.is_empty()),
                keys: s.keys,
                allowed_origins: s.allowed_origins,
                allowed_hosts: s.allowed_hosts,
                bind: s.bind,
            },
            max_sessions: s.max_sessions,
            limits: s.limits,
            live: Arc::new(AtomicUsize::new(0)),
            server_tools: OnceLock::new(),
            turns: Default::default(),
            audit: OnceLock::new(),
            shutdown: tokio::sync::watch::channel(false).0,
            stopping: Arc::new(AtomicBool::new(false)),
            client_secrets: Default::default(),
            quotas: Arc::new(quotas::Quotas::new(quota_map)),
            demo,
            media: calls::media_address(s.bind, s.rtc_public_ip, s.rtc_udp_ports),
            calls: Default::default(),
        }
    }

    /// Per-key limits and usage.
    pub fn quotas(&self) -> &Arc<quotas::Quotas> {
        &self.quotas
    }

    /// The minted client secrets.
    pub fn client_secrets(&self) -> &secrets::ClientSecrets {
        &self.client_secrets
    }

    /// Whether `caller` may mint client secrets: an admin, or a key allowed to.
    pub fn may_mint(&self, caller: &Caller) -> bool {
        self.access.may_mint(caller)
    }

    /// The configuration a new realtime session starts with on this server (its voices and
    /// turn-taking models).
    pub fn new_session_config(
        &self,
        kind: crate::protocol::SessionKind,
    ) -> crate::protocol::SessionConfig {
        let voices = self.tts.get().map(|t| t.voices()).unwrap_or_default();
        let (models, vad) = self.turn_models();
        crate::protocol::SessionConfig::new(kind, "voxd")
            .with_voices(voices)
            .with_turn_models(models.available(), vad)
    }

    /// Whether the server is stopping.
    pub fn stopping(&self) -> Arc<AtomicBool> {
        self.stopping.clone()
    }

    /// Reserves a realtime session slot, or `None` at the cap. Checking and counting are one
    /// atomic step, so a burst of connections cannot get past the cap.
    fn reserve_session(&self) -> Option<crate::realtime::SessionSlot> {
        crate::realtime::SessionSlot::reserve(&self.live, self.max_sessions)
    }

    /// Realtime sessions open now.
    pub fn live_sessions(&self) -> usize {
        self.live.load(Ordering::SeqCst)
    }

    fn shutdown_signal(&self) -> tokio::sync::watch::Receiver<bool> {
        self.shutdown.subscribe()
    }

    /// Asks every realtime session to finish its turn and close (code 1001), and stops the
    /// speech recogniser's running and queued work.
    pub fn begin_shutdown(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        let _ = self.shutdown.send(true);
    }

    /// Installs the loaded speech recogniser (the server becomes ready).
    pub fn set_asr(&self, asr: Arc<dyn Asr>) {
        let _ = self.asr.set(asr);
        crate::metrics::release_freed_memory();
    }

    /// Records that loading failed (`/readyz` reports it).
    pub fn set_load_error(&self, message: String) {
        *self.load_error.lock().expect("lock") = Some(message);
    }

    /// Says a language model is loading: `/readyz` waits for it.
    pub fn expect_llm(&self) {
        self.llm.expect();
    }

    /// Installs the loaded language model.
    /// Installs the loaded language model, and computes the state of the default instructions
    /// (the prompt prefix every session starts with unless it sets its own) ahead of the first
    /// question: a cold first answer paid ~130 ms more for it.
    pub fn set_llm(&self, llm: Arc<dyn Llm>) {
        self.llm.set(llm.clone());
        crate::metrics::release_freed_memory();
        let instructions = self.answer.instructions.trim().to_string();
        if instructions.is_empty() {
            return;
        }
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let system =
                    crate::prompt::ChatMessage::new(crate::prompt::Role::System, instructions);
                if let Err(e) = llm.prefill(vec![system]).await {
                    tracing::debug!(error = %e, "warming the instructions failed");
                }
            });
        }
    }

    /// Records that the language model could not be loaded.
    pub fn set_llm_error(&self, message: String) {
        self.llm.fail(message);
    }

    /// The language model, or a 503 saying why not.
    pub fn llm(&self) -> Result<Arc<dyn Llm>, ApiError> {
        self.llm.require()
    }

    /// What realtime sessions answer with, once the language model is loaded.
    pub fn answering(&self) -> Option<Answering> {
        self.llm.get().map(|llm| Answering {
            llm,
            kb: self.kb.get(),
            tts: self.tts.get(),
            settings: self.answer.clone(),
            server_tools: self.server_tools.get().cloned(),
            audit: self.audit.get().cloned(),
            caller: crate::tools::Caller::anonymous(),
        })
    }

    /// Installs the turn-taking models; new sessions detect voice with `default_vad`.
    pub fn set_turn_models(
        &self,
        models: crate::vad::TurnModels,
        default_vad: crate::vad::VadEngine,
    ) {
        *self.turns.write().unwrap_or_else(|p| p.into_inner()) = (models, default_vad);
    }

    /// The turn-taking models and the default voice detector.
    pub fn turn_models(&self) -> (crate::vad::TurnModels, crate::vad::VadEngine) {
        self.turns.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Installs the tools the server runs itself (once, at start).
    pub fn set_server_tools(&self, tools: Arc<crate::tools::ServerTools>) {
        let _ = self.server_tools.set(tools);
    }

    /// Installs the audit trail (once, at start).
    pub fn set_audit(&self, audit: crate::tools::AuditLog) {
        let _ = self.audit.set(audit);
    }

    /// The audit trail, if there is one.
    pub fn audit(&self) -> Option<&crate::tools::AuditLog> {
        self.audit.get()
    }

    /// Says a voice is loading: `/readyz` waits for it.
    pub fn expect_tts(&self) {
        self.tts.expect();
    }

    /// Installs the loaded voice.
    pub fn set_tts(&self, tts: Arc<dyn Tts>) {
        self.tts.set(tts);
        crate::metrics::release_freed_memory();
    }

    /// Records that the voice could not be loaded (speech answers 503 with this).
    pub fn set_tts_error(&self, message: String) {
        self.tts.fail(message);
    }

    /// The voice, if it is loaded.
    pub fn voice(&self) -> Option<Arc<dyn Tts>> {
        self.tts.get()
    }

    /// The voice, or a 503 saying why not.
    pub fn tts(&self) -> Result<Arc<dyn Tts>, ApiError> {
        self.tts.require()
    }

    /// Says a knowledge base is being opened: `/readyz` waits for it.
    pub fn expect_kb(&self) {
        self.kb.expect();
    }

    /// Installs the opened knowledge base.
    pub fn set_kb(&self, kb: Arc<KnowledgeBase>) {
        self.kb.set(kb);
        crate::metrics::release_freed_memory();
    }

    /// Records that the knowledge base could not be opened (its routes answer 503 with this).
    pub fn set_kb_error(&self, message: String) {
        self.kb.fail(message);
    }

    /// Records that opening the knowledge base failed and will be tried again (`/readyz` is 503
    /// meanwhile: a replica that cannot reach the shared database should get no traffic).
    pub fn set_kb_retrying(&self, message: String) {
        self.kb.retrying(message);
    }

    /// The knowledge base, if it is open.
    pub fn knowledge_base(&self) -> Option<Arc<KnowledgeBase>> {
        self.kb.get()
    }

    /// The knowledge base, or a 503 saying why not.
    pub fn kb(&self) -> Result<Arc<KnowledgeBase>, ApiError> {
        self.kb.require()
    }

    /// The speech recogniser, or a 503 while it is loading.
    pub fn asr(&self) -> Result<Arc<dyn Asr>, ApiError> {
        if let Some(a) = self.asr.get() {
            return Ok(a.clone());
        }
        let message = match self.load_error.lock().expect("lock").as_ref() {
            Some(e) => format!("the speech model failed to load: {e}"),
            None => "the speech model is still loading; retry shortly".into(),
        };
        Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "model_not_ready",
            message,
        ))
    }
}

/// The application's routes.
pub fn router(state: Arc<AppState>) -> Router {
    let limit = state.max_upload_bytes;
    let mut router = Router::new();
    for (path, _, _) in assets::WEB_ASSETS {
        router = router.route(
            path,
            get(move || async move { assets::asset_response(path) }),
        );
    }
    router
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route(
            "/v1/audio/transcriptions",
            post(transcriptions::transcribe).layer(DefaultBodyLimit::max(limit)),
        )
        .route("/v1/audio/speech", post(speech::speech))
        .route("/v1/realtime", get(realtime::upgrade))
        .route("/v1/realtime/client_secrets", post(secrets::mint))
        .route("/v1/realtime/calls", post(calls::create))
        .route(
            "/v1/realtime/calls/{id}",
            axum::routing::delete(calls::hangup),
        )
        .route("/v1/realtime/calls/{id}/hangup", post(calls::hangup))
        .route("/demo/client_secret", post(secrets::mint_for_demo))
        .route(
            "/v1/realtime/client_secrets/{value}",
            axum::routing::delete(secrets::revoke),
        )
        .route(
            "/v1/kb/documents",
            post(kb::add_document)
                .get(kb::list_documents)
                .layer(DefaultBodyLimit::max(limit)),
        )
        .route(
            "/v1/kb/documents/{id}",
            get(kb::get_document).delete(kb::delete_document),
        )
        .route("/v1/kb/search", post(kb::search))
        .route(
            "/v1/chat/completions",
            post(chat::completions).layer(DefaultBodyLimit::max(limit)),
        )
        .route("/v1/models", get(chat::models))
        .route("/v1/audit", get(audit::list))
        .route("/metrics", get(metrics))
        .route(
            "/v1/embeddings",
            post(kb::embeddings).layer(DefaultBodyLimit::max(limit)),
        )
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(state.clone(), guard::check))
        .with_state(state)
}

/// `GET /metrics`: Prometheus text format (see [`crate::metrics`]).
async fn metrics(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    let body = crate::metrics::global().render(crate::metrics::Gauges {
        live_sessions: state.live_sessions(),
        max_sessions: state.max_sessions,
        asr_queue: state.asr.get().and_then(|a| a.queue_depth()),
        llm_queue: state.llm.get().and_then(|l| l.queue_depth()),
        tts_queue: state.tts.get().and_then(|t| t.queue_depth()),
    });
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
}

async fn healthz() -> impl IntoResponse {
    Json(json!({ "status": "ok" }))
}

async fn readyz(
    State(state): State<Arc<AppState>>,
    headers: axum::http::HeaderMap,
) -> impl IntoResponse {
    let (status, body) = readiness(&state);
    // The models and failure reasons are for operators: with an API key set, callers without
    // it see only the status.
    let authenticated = !state.access.requires_key()
        || headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .is_some_and(|k| state.access.key_matches(k.trim()));
    if authenticated {
        (status, Json(body))
    } else {
        (status, Json(json!({ "status": body["status"] })))
    }
}

fn readiness(state: &AppState) -> (StatusCode, serde_json::Value) {
    let parts = (
        state
            .kb
            .status(|kb| json!({ "embedding_model": kb.model(), "store": kb.describe_store() })),
        state.llm.status(|l| json!({ "model": l.model_name() })),
        state.tts.status(|t| json!({ "voice": t.describe() })),
    );
    // An open knowledge base whose database stopped answering makes the replica not ready.
    if let Some(Err(reason)) = state.kb.get().map(|kb| kb.health()) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            json!({ "status": "not_ready", "reason": reason }),
        );
    }
    let (kb, llm, tts) = match parts {
        (Ok(kb), Ok(llm), Ok(tts)) => (kb, llm, tts),
        (Err(reason), _, _) | (_, Err(reason), _) | (_, _, Err(reason)) => {
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                json!({ "status": "not_ready", "reason": reason }),
            )
        }
    };
    let asr = state
        .asr()
        .map_err(|e| e.message)
        .and_then(|asr| asr.check_ready().map(|()| asr));
    match asr {
        Ok(asr) => (
            StatusCode::OK,
            json!({ "status": "ready", "asr": asr.describe(), "kb": kb, "llm": llm, "tts": tts }),
        ),
        Err(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            json!({ "status": "not_ready", "reason": reason }),
        ),
    }
}

async fn not_found(uri: axum::http::Uri) -> ApiError {
    not_found_path(uri.path())
}

fn not_found_path(path: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("no route for {path}"),
    )
}

/// The longest a stop takes after the signal: in-flight requests and sessions that have not
/// finished by then are dropped.
pub const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(10);

/// Serves `state` on `listener` until `shutdown` resolves, then stops within
/// [`SHUTDOWN_DEADLINE`]: new connections are refused at once, upload decodes stop, realtime
/// sessions finish their turns for [`Limits::shutdown_grace`] and close with 1001, then the
/// speech recogniser's remaining work is cancelled.
pub async fn serve<L>(
    listener: L,
    state: Arc<AppState>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()>
where
    L: axum::serve::Listener,
    L::Addr: std::fmt::Debug,
{
    info!(addr = ?listener.local_addr()?, "listening");
    let sessions = state.clone();
    let grace = state.limits.shutdown_grace;
    let (fired_tx, fired_rx) = tokio::sync::oneshot::channel::<()>();
    let signal = async move {
        shutdown.await;
        // Stop accepting; realtime sessions finish their turns and close with 1001.
        sessions.begin_shutdown();
        let _ = fired_tx.send(());
    };
    let server = axum::serve(listener, router(state.clone()))
        .with_graceful_shutdown(signal)
        .into_future();
    tokio::pin!(server);
    let stopper = state.clone();
    let deadline = async move {
        if fired_rx.await.is_err() {
            return std::future::pending().await;
        }
        // Turns in flight get the grace period; then the recogniser stops what is left
        // (uploads still transcribing get 503).
        tokio::time::sleep(grace + Duration::from_secs(1)).await;
        if let Some(asr) = stopper.asr.get() {
            asr.stop();
        }
        tokio::time::sleep(SHUTDOWN_DEADLINE.saturating_sub(grace + Duration::from_secs(1))).await;
    };
    tokio::select! {
        r = &mut server => r?,
        _ = deadline => {
            warn!(sessions = state.live_sessions(), "requests still running at the shutdown deadline; stopping anyway");
            return Ok(());
        }
    }
    // Upgraded sockets are not HTTP connections: wait for the sessions themselves.
    let deadline = tokio::time::Instant::now() + grace + Duration::from_secs(3);
    while state.live_sessions() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if state.live_sessions() > 0 {
        warn!(
            sessions = state.live_sessions(),
            "closing with sessions still open"
        );
    }
    if let Some(asr) = state.asr.get() {
        asr.stop();
    }
    Ok(())
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            s.recv().await;
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    info!("shutting down");
}
