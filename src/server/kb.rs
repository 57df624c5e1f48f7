//! The knowledge-base REST API and the OpenAI-compatible embeddings endpoint.
//!
//! - `POST /v1/kb/documents`: JSON `{title, text, uri?, source?, expires_at?, updated_at?,
//!   metadata?}` or a multipart upload (`file`, optional `title`, `uri`, `source`,
//!   `expires_at`) → 201 (created), 200 (updated or unchanged) with the document.
//! - `GET /v1/kb/documents`, `GET /v1/kb/documents/{id}`, `DELETE /v1/kb/documents/{id}`.
//! - `POST /v1/kb/search`: `{query, top_k?, filter?, min_score?}` → passages with citations.
//! - `POST /v1/embeddings`: `{model?, input: string | [string], dimensions?}`, OpenAI's shape.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{FromRequest, Multipart, Path, Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;

use super::error::ApiError;
use super::AppState;
use crate::rag::extract::{self, Format};
use crate::rag::store::WriteOutcome;
use crate::rag::{DocumentInput, KbError, SearchRequest};

impl From<KbError> for ApiError {
    fn from(e: KbError) -> Self {
        let status = match &e {
            KbError::Invalid { .. } => StatusCode::BAD_REQUEST,
            KbError::NotFound(_) => StatusCode::NOT_FOUND,
            KbError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            KbError::ReindexRequired { .. } => StatusCode::CONFLICT,
            KbError::Store(crate::rag::store::StoreError::Full { .. }) => {
                StatusCode::INSUFFICIENT_STORAGE
            }
            KbError::Embed(crate::rag::embed::EmbedError::Pool(_))
            | KbError::Store(crate::rag::store::StoreError::Unavailable { .. }) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            KbError::Embed(crate::rag::embed::EmbedError::Remote { .. }) => StatusCode::BAD_GATEWAY,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        if status.is_server_error() {
            tracing::warn!(error = %e, code = e.code(), "knowledge-base request failed");
        }
        ApiError::new(status, e.code(), e.public_message())
    }
}

/// Parses a JSON body into `T`, answering malformed JSON or wrong fields with a 400.
fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request(
            "invalid_json",
            format!("the request body is not valid: {e}"),
        )
    })
}

fn is_json(req: &Request) -> bool {
    req.headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewDocumentBody {
    title: Option<String>,
    text: String,
    uri: Option<String>,
    source: Option<String>,
    /// Text format: text (default), markdown.
    format: Option<String>,
    /// Date or RFC 3339 time this version took effect.
    updated_at: Option<String>,
    expires_at: Option<String>,
    #[serde(default)]
    metadata: serde_json::Map<String, serde_json::Value>,
}

fn time(what: &str, v: Option<&str>) -> Result<Option<i64>, ApiError> {
    v.map(|t| extract::parse_time(what, t))
        .transpose()
        .map_err(|e| {
            ApiError::from(e).with_param(if what == "updated_at" {
                "updated_at"
            } else {
                "expires_at"
            })
        })
}

fn written(out: crate::rag::AddOutcome) -> Response {
    let status = if out.status == WriteOutcome::Created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    (
        status,
        Json(json!({ "status": out.status, "document": out.document })),
    )
        .into_response()
}

/// `POST /v1/kb/documents`.
pub async fn add_document(
    State(state): State<Arc<AppState>>,
    req: Request,
) -> Result<Response, ApiError> {
    let kb = state.kb()?;
    if is_json(&req) {
        let body = Bytes::from_request(req, &())
            .await
            .map_err(|e| ApiError::bad_request("invalid_body", e.body_text()))?;
        let b: NewDocumentBody = parse_json(&body)?;
        let format = match b.format.as_deref() {
            None | Some("text") | Some("txt") => Format::Text,
            Some("markdown") | Some("md") => Format::Markdown,
            Some(other) => {
                return Err(ApiError::bad_request(
                    "unsupported_file_type",
                    format!("format must be text or markdown (got {other})"),
                )
                .with_param("format"))
            }
        };
        let input = DocumentInput {
            text: b.text,
            format,
            title: b.title,
            uri: b.uri,
            source: b.source,
            key: None,
            version_at: time("updated_at", b.updated_at.as_deref())?,
            expires_at: time("expires_at", b.expires_at.as_deref())?,
            metadata: b.metadata,
        };
        return Ok(written(kb.add(input).await?));
    }
    let mut multipart = Multipart::from_request(req, &()).await?;
    let mut file: Option<(Option<String>, Option<String>, Bytes)> = None;
    let mut fields = std::collections::HashMap::new();
    while let Some(field) = multipart.next_field().await? {
        let name = field.name().unwrap_or("").to_string();
        if name == "file" {
            let file_name = field.file_name().map(str::to_string);
            let content_type = field.content_type().map(str::to_string);
            file = Some((file_name, content_type, field.bytes().await?));
        } else if matches!(
            name.as_str(),
            "title" | "uri" | "source" | "expires_at" | "updated_at"
        ) {
            fields.insert(name, field.text().await?);
        } else {
            return Err(ApiError::bad_request(
                "unknown_parameter",
                format!("unknown form field `{name}`"),
            ));
        }
    }
    let Some((file_name, content_type, bytes)) = file else {
        return Err(
            ApiError::bad_request("missing_file", "send the document in a `file` field")
                .with_param("file"),
        );
    };
    let format = Format::for_upload(file_name.as_deref(), content_type.as_deref())?;
    if bytes.len() > kb.settings().max_document_bytes {
        return Err(KbError::TooLarge {
            size: bytes.len(),
            limit: kb.settings().max_document_bytes,
        }
        .into());
    }
    // HTML and Markdown extraction is CPU work: off the async executor.
    let ex = tokio::task::spawn_blocking(move || extract::extract(&bytes, format))
        .await
        .map_err(|e| KbError::Internal(e.to_string()))??;
    let get = |k: &str| fields.get(k).map(String::as_str).filter(|s| !s.is_empty());
    let mut metadata = serde_json::Map::new();
    for (k, v) in ex.metadata {
        metadata.insert(k, v.into());
    }
    let uri = get("uri").map(str::to_string).or(ex.uri);
    let input = DocumentInput {
        text: ex.text,
        format,
        title: get("title")
            .map(str::to_string)
            .or(ex.title)
            .or(file_name.clone()),
        key: uri
            .is_none()
            .then(|| file_name.map(|n| format!("upload:{n}")))
            .flatten(),
        uri,
        source: get("source").map(str::to_string).or(ex.source),
        version_at: match get("updated_at") {
            Some(t) => time("updated_at", Some(t))?,
            None => ex.updated_at,
        },
        expires_at: match get("expires_at") {
            Some(t) => time("expires_at", Some(t))?,
            None => ex.expires_at,
        },
        metadata,
    };
    Ok(written(kb.add(input).await?))
}

/// `GET /v1/kb/documents`.
pub async fn list_documents(State(state): State<Arc<AppState>>) -> Result<Response, ApiError> {
    let docs = state.kb()?.list().await?;
    Ok(Json(json!({ "object": "list", "data": docs })).into_response())
}

/// `GET /v1/kb/documents/{id}`.
pub async fn get_document(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    Ok(Json(state.kb()?.get(&id).await?).into_response())
}

/// `DELETE /v1/kb/documents/{id}`.
pub async fn delete_document(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    state.kb()?.remove(&id).await?;
    Ok(Json(json!({ "id": id, "object": "kb.document", "deleted": true })).into_response())
}

/// `POST /v1/kb/search`.
pub async fn search(State(state): State<Arc<AppState>>, body: Bytes) -> Result<Response, ApiError> {
    let kb = state.kb()?;
    let request: SearchRequest = parse_json(&body)?;
    let results = kb.search(request).await?;
    Ok(Json(results).into_response())
}

#[derive(Deserialize)]
#[serde(untagged)]
enum EmbeddingInput {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
struct EmbeddingsBody {
    model: Option<String>,
    input: EmbeddingInput,
    encoding_format: Option<String>,
    dimensions: Option<usize>,
    #[allow(dead_code)]
    user: Option<String>,
}

/// Most inputs in one embeddings request (OpenAI's limit).
const MAX_EMBEDDING_INPUTS: usize = 2048;

/// `POST /v1/embeddings` (OpenAI-compatible), served by the knowledge base's embedder.
pub async fn embeddings(
    State(state): State<Arc<AppState>>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let kb = state.kb()?;
    let b: EmbeddingsBody = parse_json(&body)?;
    let embedder = kb.embedder().clone();
    if let Some(m) = b.model.as_deref().filter(|m| *m != embedder.model_name()) {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "model_not_found",
            format!(
                "this server embeds with `{}`, not `{m}`",
                embedder.model_name()
            ),
        )
        .with_param("model"));
    }
    if b.encoding_format.as_deref().is_some_and(|f| f != "float") {
        return Err(ApiError::bad_request(
            "invalid_encoding_format",
            "only encoding_format `float` is supported",
        )
        .with_param("encoding_format"));
    }
    if b.dimensions.is_some_and(|d| d != embedder.dimensions()) {
        return Err(ApiError::bad_request(
            "invalid_dimensions",
            format!(
                "this model's vectors have {} dimensions",
                embedder.dimensions()
            ),
        )
        .with_param("dimensions"));
    }
    let inputs = match b.input {
        EmbeddingInput::One(s) => vec![s],
        EmbeddingInput::Many(v) => v,
    };
    if inputs.is_empty()
        || inputs.len() > MAX_EMBEDDING_INPUTS
        || inputs.iter().any(|s| s.is_empty())
    {
        return Err(ApiError::bad_request(
            "invalid_input",
            format!("input must be 1..={MAX_EMBEDDING_INPUTS} non-empty strings"),
        )
        .with_param("input"));
    }
    let tokens: usize = inputs.iter().map(|s| embedder.count_tokens(s) + 2).sum();
    let vectors = embedder.embed(inputs).await.map_err(KbError::from)?;
    let data: Vec<_> = vectors
        .into_iter()
        .enumerate()
        .map(|(i, v)| json!({ "object": "embedding", "index": i, "embedding": v }))
        .collect();
    Ok(Json(json!({
        "object": "list",
        "data": data,
        "model": embedder.model_name(),
        "usage": { "prompt_tokens": tokens, "total_tokens": tokens },
    }))
    .into_response())
}
