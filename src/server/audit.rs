//! `GET /v1/audit`: the audit trail of tool calls, for admin keys only (the `--api-key` key, or
//! a `[[server.keys]]` entry with `admin = true`; anyone on a server without keys). Filters:
//! `session`, `key_id`, `tool`, `status`; paging: `after` (the last `id` seen) and `limit`.

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde_json::json;

use super::error::ApiError;
use super::AppState;
use crate::tools::{AuditQuery, Caller};

pub async fn list(
    State(state): State<Arc<AppState>>,
    caller: Option<Extension<Caller>>,
    query: Result<Query<AuditQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let admin = caller.is_some_and(|Extension(c)| c.admin);
    if !admin {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "admin_key_required",
            "the audit trail is for admin keys only",
        ));
    }
    let Query(query) = query.map_err(|e| {
        ApiError::bad_request("invalid_query", format!("bad query parameters: {e}"))
    })?;
    let Some(log) = state.audit().cloned() else {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "audit_unavailable",
            "this server keeps no audit trail",
        ));
    };
    let rows = tokio::task::spawn_blocking(move || log.query(&query))
        .await
        .map_err(|e| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal_error",
                e.to_string(),
            )
        })?
        .map_err(|e| match e {
            crate::tools::audit::AuditError::Invalid(m) => {
                ApiError::bad_request("invalid_query", m).with_param("limit")
            }
            other => ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "audit_failed",
                other.to_string(),
            ),
        })?;
    let last = rows.last().map(|r| r.id);
    Ok(Json(json!({ "object": "list", "data": rows, "last_id": last })).into_response())
}
