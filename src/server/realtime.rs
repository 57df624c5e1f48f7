//! `GET /v1/realtime`: the OpenAI Realtime API over a WebSocket (the URL the official SDKs build
//! from a base URL ending in `/v1`). Checks come before the upgrade: readiness (503) and the
//! session cap (503, reserved atomically); Host, Origin and the API key are checked for every
//! route by [`super::guard`].

use std::sync::Arc;

use axum::extract::ws::{rejection::WebSocketUpgradeRejection, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde::Deserialize;

use super::error::ApiError;
use super::AppState;
use crate::protocol::SessionKind;
use crate::realtime::{self, Shared};

/// Largest WebSocket message: a 15 MiB append in base64 plus its JSON envelope.
pub const MAX_MESSAGE_BYTES: usize = 21 * 1024 * 1024;
/// Frames up to 1 MiB beyond the message limit are read whole, so the message check answers
/// with a clean close 1009; a larger frame is refused from its header and the socket is reset.
pub const MAX_FRAME_BYTES: usize = MAX_MESSAGE_BYTES + 1024 * 1024;

#[derive(Debug, Deserialize)]
pub struct RealtimeQuery {
    /// Accepted for compatibility (`?model=gpt-realtime`); the loaded models answer.
    #[allow(dead_code)]
    model: Option<String>,
    /// `transcription` starts a transcription session (the beta API's `?intent=transcription`).
    intent: Option<String>,
    /// Joins a WebRTC call's session as a sideband (a server beside the browser).
    call_id: Option<String>,
}

pub async fn upgrade(
    State(state): State<Arc<AppState>>,
    caller: Option<axum::Extension<crate::tools::Caller>>,
    secret: Option<axum::Extension<super::secrets::Presented>>,
    Query(query): Query<RealtimeQuery>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let ws = ws.map_err(|e| {
        ApiError::new(
            StatusCode::UPGRADE_REQUIRED,
            "websocket_required",
            format!("this endpoint speaks WebSocket: {e}"),
        )
    })?;
    if let Some(id) = &query.call_id {
        let caller = caller
            .map(|axum::Extension(c)| c)
            .unwrap_or_else(crate::tools::Caller::anonymous);
        if secret.is_some() {
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "invalid_api_key",
                "a sideband joins a call with an API key, not a client secret",
            ));
        }
        let joined = state.calls.join(id, &caller).map_err(|e| match e {
            super::calls::JoinError::NotFound => ApiError::new(
                StatusCode::NOT_FOUND,
                "call_not_found",
                "no call of yours with that id is running",
            ),
            super::calls::JoinError::Full => ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_sidebands",
                format!(
                    "a call has at most {} sideband connections",
                    super::calls::MAX_SIDEBANDS
                ),
            ),
        })?;
        return Ok(ws
            .protocols(["realtime"])
            .max_message_size(MAX_MESSAGE_BYTES)
            .on_upgrade(move |socket| super::calls::sideband(socket, joined)));
    }
    let kind = match query.intent.as_deref() {
        Some("transcription") => SessionKind::Transcription,
        _ => SessionKind::Realtime,
    };
    let shared = match prepare(
        &state,
        caller.map(|axum::Extension(c)| c),
        secret.map(|axum::Extension(s)| s),
    ) {
        Ok(shared) => shared,
        Err(refusal) => return Ok(*refusal),
    };
    Ok(ws
        .protocols(["realtime"])
        .max_message_size(MAX_MESSAGE_BYTES)
        .max_frame_size(MAX_FRAME_BYTES)
        .on_upgrade(move |socket| realtime::run(socket, shared, kind)))
}

/// Everything a new session needs, checked in order: the recogniser is ready, the caller's key
/// is under its quota (before a client secret is used up), the client secret (if any) is
/// redeemed, and the server has room. Shared by the WebSocket and WebRTC transports; the error
/// is the HTTP answer.
pub fn prepare(
    state: &Arc<AppState>,
    caller: Option<crate::tools::Caller>,
    secret: Option<super::secrets::Presented>,
) -> Result<Shared, Box<Response>> {
    use axum::response::IntoResponse;
    let asr = state.asr().map_err(|e| Box::new(e.into_response()))?;
    let key_id = caller
        .as_ref()
        .map_or_else(|| "anonymous".to_string(), |c| c.key_id.clone());
    let key_session = state
        .quotas()
        .open_session(&key_id)
        .map_err(|e| Box::new(super::quotas::refused(&e, &key_id)))?;
    // A client secret opens as many sessions as it allows: taken now, in one step.
    let bound = match secret {
        Some(super::secrets::Presented(value)) => Some(
            state
                .client_secrets()
                .redeem(&value)
                .map_err(|e| {
                    Box::new(
                        ApiError::new(
                            StatusCode::UNAUTHORIZED,
                            "invalid_client_secret",
                            e.to_string(),
                        )
                        .into_response(),
                    )
                })?
                .session,
        ),
        None => None,
    };
    let Some(slot) = state.reserve_session() else {
        return Err(Box::new(
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "too_many_sessions",
                format!(
                    "the server is at its limit of {} sessions",
                    state.max_sessions
                ),
            )
            .into_response(),
        ));
    };
    crate::metrics::global().sessions.inc();
    let mut shared = Shared::new(asr, state.limits.clone(), slot, state.shutdown_signal());
    (shared.turn_models, shared.default_vad) = state.turn_models();
    shared.bound = bound;
    shared.key_session = Some(key_session);
    let with_caller = move |mut a: crate::realtime::Answering| {
        if let Some(c) = &caller {
            a.caller = c.clone();
        }
        a
    };
    shared.answering = state.answering().map(&with_caller);
    // A session opened while the LLM still loads answers once it has.
    let later = state.clone();
    shared.answering_later = Some(Arc::new(move || later.answering().map(&with_caller)));
    Ok(shared)
}
