//! The HTTP server (axum): routes, shared state, start-up and graceful shutdown.
//!
//! Routes: `GET /` (the web demo, compiled in), `GET /healthz` (the process answers),
//! `GET /readyz` (200 once the models are loaded), `POST /v1/audio/transcriptions`. Every error
//! is JSON (see [`error`]).

pub mod error;
pub mod transcriptions;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};

use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;
use tokio::net::TcpListener;
use tracing::info;

use crate::asr::Asr;
use error::ApiError;

/// State shared by all requests.
pub struct AppState {
    asr: OnceLock<Arc<dyn Asr>>,
    load_error: Mutex<Option<String>>,
    /// Largest request body accepted.
    pub max_upload_bytes: usize,
    /// Longest decoded upload accepted, in seconds.
    pub max_audio_seconds: f64,
}

impl AppState {
    pub fn new(max_upload_bytes: usize) -> Self {
        AppState {
            asr: OnceLock::new(),
            load_error: Mutex::new(None),
            max_upload_bytes,
            max_audio_seconds: 4.0 * 3600.0,
        }
    }

    /// Installs the loaded speech recogniser (the server becomes ready).
    pub fn set_asr(&self, asr: Arc<dyn Asr>) {
        let _ = self.asr.set(asr);
    }

    /// Records that loading failed (`/readyz` reports it).
    pub fn set_load_error(&self, message: String) {
        *self.load_error.lock().expect("lock") = Some(message);
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
    Router::new()
        .route("/", get(web_demo))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route(
            "/v1/audio/transcriptions",
            post(transcriptions::transcribe).layer(DefaultBodyLimit::max(limit)),
        )
        .fallback(not_found)
        .with_state(state)
}

/// The browser demo, compiled into the binary so it works from any folder and offline.
const WEB_DEMO: &str = include_str!("../../web-demo/index.html");

async fn web_demo() -> axum::response::Html<&'static str> {
    axum::response::Html(WEB_DEMO)
}

async fn healthz() -> impl IntoResponse {
    Json(json!({ "status": "ok" }))
}

async fn readyz(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    match state.asr() {
        Ok(asr) => (
            StatusCode::OK,
            Json(json!({ "status": "ready", "asr": asr.describe() })),
        ),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "status": "not_ready", "reason": e.message })),
        ),
    }
}

async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("no route for {}", uri.path()),
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
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
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
