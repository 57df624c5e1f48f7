//! The HTTP server (axum): routes, shared state, start-up and graceful shutdown.
//!
//! Routes: `GET /` (the web demo and `/sdk/voxd.js`, compiled in), `GET /healthz` (the process answers),
//! `GET /readyz` (200 once the models are loaded), `POST /v1/audio/transcriptions`,
//! `GET /v1/realtime` (WebSocket), the knowledge base under `/v1/kb/` and `POST /v1/embeddings`
//! (see [`kb`]). Every error is JSON (see [`error`]). With an API key set,
//! every route but `/`, `/healthz` and `/readyz` requires it.

pub mod chat;
pub mod error;
pub mod kb;
pub mod loading;
pub mod realtime;
pub mod transcriptions;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;
use tokio::net::TcpListener;
use tracing::{info, warn};

use crate::asr::Asr;
use crate::llm::Llm;
use crate::rag::KnowledgeBase;
use crate::realtime::Limits;
use crate::realtime::{AnswerSettings, Answering};
use error::ApiError;
use loading::Loading;

/// Server-wide settings that are not per-request.
#[derive(Debug, Clone)]
pub struct ServerSettings {
    /// Largest request body accepted.
    pub max_upload_bytes: usize,
    /// Required on every API route when set (`Authorization: Bearer`, or for browsers the
    /// `openai-insecure-api-key.<key>` WebSocket subprotocol).
    pub api_key: Option<String>,
    /// Browser origins allowed to open realtime sessions; empty = any.
    pub allowed_origins: Vec<String>,
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
            allowed_origins: Vec::new(),
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
    pub answer: AnswerSettings,
    /// Largest request body accepted.
    pub max_upload_bytes: usize,
    /// Longest decoded upload accepted, in seconds.
    pub max_audio_seconds: f64,
    api_key: Option<String>,
    allowed_origins: Vec<String>,
    pub max_sessions: usize,
    pub limits: Limits,
    live: Arc<AtomicUsize>,
    shutdown: tokio::sync::watch::Sender<bool>,
}

impl AppState {
    pub fn new(max_upload_bytes: usize) -> Self {
        Self::with_settings(ServerSettings {
            max_upload_bytes,
            ..Default::default()
        })
    }

    pub fn with_settings(s: ServerSettings) -> Self {
        AppState {
            asr: OnceLock::new(),
            load_error: Mutex::new(None),
            kb: Loading::new("the knowledge base", "kb_unavailable"),
            llm: Loading::new("the language model", "llm_unavailable"),
            answer: s.answer,
            max_upload_bytes: s.max_upload_bytes,
            max_audio_seconds: 4.0 * 3600.0,
            api_key: s.api_key.filter(|k| !k.is_empty()),
            allowed_origins: s.allowed_origins,
            max_sessions: s.max_sessions,
            limits: s.limits,
            live: Arc::new(AtomicUsize::new(0)),
            shutdown: tokio::sync::watch::channel(false).0,
        }
    }

    /// Realtime sessions open now.
    pub fn live_sessions(&self) -> usize {
        self.live.load(Ordering::SeqCst)
    }

    fn live_counter(&self) -> Arc<AtomicUsize> {
        self.live.clone()
    }

    fn shutdown_signal(&self) -> tokio::sync::watch::Receiver<bool> {
        self.shutdown.subscribe()
    }

    /// Asks every realtime session to finish its turn and close (code 1001).
    pub fn begin_shutdown(&self) {
        let _ = self.shutdown.send(true);
    }

    fn origin_allowed(&self, origin: &str) -> bool {
        self.allowed_origins.is_empty()
            || self.allowed_origins.iter().any(|o| o == origin || o == "*")
    }

    /// Installs the loaded speech recogniser (the server becomes ready).
    pub fn set_asr(&self, asr: Arc<dyn Asr>) {
        let _ = self.asr.set(asr);
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
    pub fn set_llm(&self, llm: Arc<dyn Llm>) {
        self.llm.set(llm);
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
            settings: self.answer.clone(),
        })
    }

    /// Says a knowledge base is being opened: `/readyz` waits for it.
    pub fn expect_kb(&self) {
        self.kb.expect();
    }

    /// Installs the opened knowledge base.
    pub fn set_kb(&self, kb: Arc<KnowledgeBase>) {
        self.kb.set(kb);
    }

    /// Records that the knowledge base could not be opened (its routes answer 503 with this).
    pub fn set_kb_error(&self, message: String) {
        self.kb.fail(message);
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
    for (path, _, _) in WEB_ASSETS {
        router = router.route(path, get(move || async move { asset_response(path) }));
    }
    router
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route(
            "/v1/audio/transcriptions",
            post(transcriptions::transcribe).layer(DefaultBodyLimit::max(limit)),
        )
        .route("/v1/realtime", get(realtime::upgrade))
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
        .route("/metrics", get(metrics))
        .route(
            "/v1/embeddings",
            post(kb::embeddings).layer(DefaultBodyLimit::max(limit)),
        )
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(
            state.clone(),
            require_api_key,
        ))
        .with_state(state)
}

/// Compares without an early exit, so the key's length of matching prefix does not leak by timing.
fn same_key(given: &str, key: &str) -> bool {
    let (a, b) = (given.as_bytes(), key.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn require_api_key(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let Some(key) = state.api_key.as_deref() else {
        return next.run(req).await;
    };
    let path = req.uri().path();
    if matches!(path, "/" | "/healthz" | "/readyz") || asset(path).is_some() {
        return next.run(req).await;
    }
    let headers = req.headers();
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|k| same_key(k.trim(), key));
    let subprotocol = headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|p| p.trim().strip_prefix("openai-insecure-api-key."))
        .any(|k| same_key(k, key));
    if bearer || subprotocol {
        next.run(req).await
    } else {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_api_key",
            "a valid API key is required: send `Authorization: Bearer <key>`",
        )
        .into_response()
    }
}

/// The browser demo and the JavaScript SDK, compiled into the binary so they work from any
/// folder and offline: (path, content type, body).
const WEB_ASSETS: &[(&str, &str, &str)] = &[
    (
        "/",
        "text/html; charset=utf-8",
        include_str!("../../web-demo/index.html"),
    ),
    (
        "/app.js",
        "text/javascript; charset=utf-8",
        include_str!("../../web-demo/app.js"),
    ),
    (
        "/mic-worklet.js",
        "text/javascript; charset=utf-8",
        include_str!("../../web-demo/mic-worklet.js"),
    ),
    (
        "/style.css",
        "text/css; charset=utf-8",
        include_str!("../../web-demo/style.css"),
    ),
    (
        "/sdk/voxd.js",
        "text/javascript; charset=utf-8",
        include_str!("../../web-demo/sdk/voxd.js"),
    ),
    (
        "/sdk/voxd.d.ts",
        "application/typescript; charset=utf-8",
        include_str!("../../web-demo/sdk/voxd.d.ts"),
    ),
];

fn asset(path: &str) -> Option<&'static (&'static str, &'static str, &'static str)> {
    WEB_ASSETS.iter().find(|(p, _, _)| *p == path)
}

fn asset_response(path: &str) -> Response {
    match asset(path) {
        Some((_, content_type, body)) => (
            [
                (header::CONTENT_TYPE, *content_type),
                (header::CACHE_CONTROL, "no-cache"),
            ],
            *body,
        )
            .into_response(),
        None => not_found_path(path).into_response(),
    }
}

/// `GET /metrics`: Prometheus text format (see [`crate::metrics`]).
async fn metrics(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    let body = crate::metrics::global().render(crate::metrics::Gauges {
        live_sessions: state.live_sessions(),
        max_sessions: state.max_sessions,
        asr_queue: state.asr.get().and_then(|a| a.queue_depth()),
        llm_queue: state.llm.get().and_then(|l| l.queue_depth()),
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

async fn readyz(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    let parts = (
        state
            .kb
            .status(|kb| json!({ "embedding_model": kb.model() })),
        state.llm.status(|l| json!({ "model": l.model_name() })),
    );
    let (kb, llm) = match parts {
        (Ok(kb), Ok(llm)) => (kb, llm),
        (Err(reason), _) | (_, Err(reason)) => {
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({ "status": "not_ready", "reason": reason })),
            )
        }
    };
    match state.asr() {
        Ok(asr) => (
            StatusCode::OK,
            Json(json!({ "status": "ready", "asr": asr.describe(), "kb": kb, "llm": llm })),
        ),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "status": "not_ready", "reason": e.message })),
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

/// Serves `state` on `listener` until `shutdown` resolves, then finishes in-flight requests.
pub async fn serve(
    listener: TcpListener,
    state: Arc<AppState>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let addr: SocketAddr = listener.local_addr()?;
    info!(%addr, "listening");
    let sessions = state.clone();
    let grace = state.limits.shutdown_grace;
    let signal = async move {
        shutdown.await;
        // Stop accepting; realtime sessions finish their turns and close with 1001.
        sessions.begin_shutdown();
    };
    axum::serve(listener, router(state.clone()))
        .with_graceful_shutdown(signal)
        .await?;
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
