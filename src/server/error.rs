//! The one place where typed errors become HTTP responses: a status and an OpenAI-style JSON
//! body `{"error": {"message", "type", "code", "param"}}`. The detail is logged server-side.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;
use tracing::{error, warn};

use crate::asr::AsrError;
use crate::audio::AudioError;

/// An error answered to an HTTP client.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    /// Stable machine-readable code, such as `invalid_audio`.
    pub code: &'static str,
    pub message: String,
    /// The request parameter at fault, if any.
    pub param: Option<String>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            param: None,
        }
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn with_param(mut self, param: impl Into<String>) -> Self {
        self.param = Some(param.into());
        self
    }

    fn error_type(&self) -> &'static str {
        match self.status.as_u16() {
            401 => "authentication_error",
            404 => "not_found_error",
            413 => "invalid_request_error",
            429 | 503 => "server_busy_error",
            s if s >= 500 => "server_error",
            _ => "invalid_request_error",
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        crate::metrics::global().errors.inc(self.code);
        if self.status.is_server_error() {
            error!(status = self.status.as_u16(), code = self.code, message = %self.message, "request failed");
        } else {
            warn!(status = self.status.as_u16(), code = self.code, message = %self.message, "request rejected");
        }
        let body = json!({
            "error": {
                "message": self.message,
                "type": self.error_type(),
                "code": self.code,
                "param": self.param,
            }
        });
        let mut resp = (self.status, Json(body)).into_response();
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            resp.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from_static("1"),
            );
        }
        resp
    }
}

impl From<AudioError> for ApiError {
    fn from(e: AudioError) -> Self {
        if let AudioError::Cancelled = e {
            return ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "server_shutting_down",
                "the server is stopping",
            );
        }
        let code = match e {
            AudioError::TooLong { .. } => "audio_too_long",
            AudioError::Empty => "empty_audio",
            AudioError::ChannelOutOfRange { .. } => "invalid_channel",
            _ => "invalid_audio",
        };
        ApiError::bad_request(code, e.to_string()).with_param("file")
    }
}

impl From<AsrError> for ApiError {
    fn from(e: AsrError) -> Self {
        match e {
            AsrError::Busy { .. } | AsrError::ShuttingDown | AsrError::Superseded => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "server_busy",
                e.to_string(),
            ),
            AsrError::NoAudio => ApiError::bad_request("empty_audio", e.to_string()),
            AsrError::InvalidPrompt(_) => {
                ApiError::bad_request("invalid_prompt", e.to_string()).with_param("prompt")
            }
            AsrError::InvalidLanguage(_) => {
                ApiError::bad_request("invalid_language", e.to_string()).with_param("language")
            }
            AsrError::Remote(_) => {
                ApiError::new(StatusCode::BAD_GATEWAY, "asr_failed", e.to_string())
            }
            _ => ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "asr_failed",
                e.to_string(),
            ),
        }
    }
}

impl From<axum::extract::multipart::MultipartError> for ApiError {
    fn from(e: axum::extract::multipart::MultipartError) -> Self {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                "the upload is larger than the server's limit (--max-upload-mb)",
            )
        } else {
            ApiError::bad_request(
                "invalid_multipart",
                format!("malformed multipart body: {}", e.body_text()),
            )
        }
    }
}

impl From<axum::extract::multipart::MultipartRejection> for ApiError {
    fn from(e: axum::extract::multipart::MultipartRejection) -> Self {
        ApiError::bad_request(
            "invalid_multipart",
            format!("expected a multipart/form-data body: {}", e.body_text()),
        )
    }
}
