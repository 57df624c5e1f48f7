//! The browser demo and the JavaScript SDK, served from the binary with the demo's security
//! headers.

use axum::http::header;
use axum::response::{IntoResponse, Response};

use super::not_found_path;

/// The browser demo and the JavaScript SDK, compiled into the binary so they work from any
/// folder and offline: (path, content type, body).
pub(super) const WEB_ASSETS: &[(&str, &str, &str)] = &[
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

/// The demo's Content-Security-Policy: its own scripts and styles only, no inline code, no
/// framing; connections to its own server (the realtime socket included).
const DEMO_CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; media-src 'self' blob:; connect-src 'self'; worker-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

pub(super) fn asset(path: &str) -> Option<&'static (&'static str, &'static str, &'static str)> {
    WEB_ASSETS.iter().find(|(p, _, _)| *p == path)
}

pub(super) fn asset_response(path: &str) -> Response {
    match asset(path) {
        Some((_, content_type, body)) => (
            [
                (header::CONTENT_TYPE, *content_type),
                (header::CACHE_CONTROL, "no-cache"),
                (header::CONTENT_SECURITY_POLICY, DEMO_CSP),
                (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
                (header::REFERRER_POLICY, "no-referrer"),
                (header::X_FRAME_OPTIONS, "DENY"),
            ],
            *body,
        )
            .into_response(),
        None => not_found_path(path).into_response(),
    }
}
