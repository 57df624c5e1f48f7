//! CORS for the WebRTC routes only: a page on another origin (an app that talks to voxd with a
//! client secret) POSTs its SDP offer as `application/sdp`, which browsers send only after a
//! preflight. voxd answers the preflight, and exposes `Location` on the answer, for the origins
//! the operator lists in `--allowed-origins` (or `*`); other routes and origins get no CORS,
//! so no page elsewhere can read their answers.

use axum::extract::Request;
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};

use super::error::ApiError;
use super::guard::Access;

/// The routes a page on another origin may call.
fn cross_origin_route(path: &str) -> bool {
    path == "/v1/realtime/calls" || path.starts_with("/v1/realtime/calls/")
}

/// The request's `Origin`, when the operator listed it.
fn listed_origin(access: &Access, req: &Request) -> Option<HeaderValue> {
    let origin = req.headers().get(header::ORIGIN)?;
    let text = origin.to_str().ok()?.trim_end_matches('/');
    access
        .allowed_origins
        .iter()
        .any(|o| o == "*" || o == text)
        .then(|| origin.clone())
}

/// The request headers a listed origin may send: those the preflight asks for when they are
/// plain header names (the OpenAI Agents SDK adds `X-OpenAI-Agents-SDK`, other SDKs their own),
/// else `Authorization` and `Content-Type`. The origin is the operator's to trust, not the
/// header list: the route still checks the key.
fn allowed_headers(req: &Request) -> HeaderValue {
    let asked = req
        .headers()
        .get(header::ACCESS_CONTROL_REQUEST_HEADERS)
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            v.len() <= 1024
                && v.split(',').all(|name| {
                    let name = name.trim();
                    !name.is_empty()
                        && name
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                })
        });
    match asked {
        Some(list) => HeaderValue::from_str(list)
            .unwrap_or(HeaderValue::from_static("authorization, content-type")),
        None => HeaderValue::from_static("authorization, content-type"),
    }
}

/// The answer to a CORS preflight on a WebRTC route: 204 with the allowed methods and headers
/// for a listed origin, 403 for another. `None`: not a preflight there.
pub fn preflight(access: &Access, req: &Request) -> Option<Response> {
    if req.method() != Method::OPTIONS || !cross_origin_route(req.uri().path()) {
        return None;
    }
    req.headers().get(header::ORIGIN)?;
    let Some(origin) = listed_origin(access, req) else {
        return Some(
            ApiError::new(
                StatusCode::FORBIDDEN,
                "origin_not_allowed",
                "requests from this web page's origin are not allowed (--allowed-origins)",
            )
            .into_response(),
        );
    };
    let mut r = StatusCode::NO_CONTENT.into_response();
    let h = r.headers_mut();
    h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    h.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("POST, DELETE"),
    );
    h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, allowed_headers(req));
    h.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static("600"),
    );
    h.insert(header::VARY, HeaderValue::from_static("Origin"));
    Some(r)
}

/// The CORS headers for a WebRTC route's answer to a listed origin, taken before the request
/// is handled.
pub fn headers_for(access: &Access, req: &Request) -> Option<HeaderValue> {
    cross_origin_route(req.uri().path())
        .then(|| listed_origin(access, req))
        .flatten()
}

/// Adds them to `response`.
pub fn decorate(origin: Option<HeaderValue>, response: &mut Response) {
    let Some(origin) = origin else {
        return;
    };
    let h = response.headers_mut();
    h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    h.insert(
        header::ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static("Location"),
    );
    h.insert(header::VARY, HeaderValue::from_static("Origin"));
}
