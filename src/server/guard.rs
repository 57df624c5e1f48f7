//! The checks every request passes before its route runs, in this order:
//!
//! 1. **Host**: the `Host` header must name this server (the bind address, `localhost` or a
//!    loopback address, or one of `--allowed-hosts`), so a DNS-rebinding page cannot reach the API
//!    through a name it controls. Skipped when the server listens on every interface
//!    (`0.0.0.0`, `::`) without `--allowed-hosts`: it cannot know its own names there.
//! 2. **Origin**: a browser request (it carries `Origin`) must come from the server's own origin
//!    or, with no API key set, a loopback origin; `--allowed-origins` lists more (`*`: any). With
//!    an API key and no `--allowed-origins`, any origin may call (the key is the protection).
//! 3. **API key**, when one is set: every route but the public ones (`/`, the demo's assets,
//!    `/healthz`, `/readyz`) needs `Authorization: Bearer <key>` or, for browsers, the
//!    `openai-insecure-api-key.<key>` WebSocket subprotocol. Compared in constant time. A client
//!    secret (`ek_…`, [`super::secrets`]) presented the same way opens `/v1/realtime` only, with
//!    or without server keys, and binds the session to the secret's configuration.
//! 4. **Content type**: JSON routes take `application/json` only (a cross-site form or a
//!    `text/plain` body is refused with 415), so a page cannot send them without a CORS preflight.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

use super::error::ApiError;
use super::{secrets, AppState};
pub use crate::tools::Caller;

/// An API key with its identity: an id (shown in the audit trail, never the key), a role (which
/// server tools it may call) and whether it is an admin (reads the audit trail, may use every
/// tool).
#[derive(Clone, PartialEq, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKey {
    pub id: String,
    pub key: String,
    #[serde(default = "default_role")]
    pub role: String,
    #[serde(default)]
    pub admin: bool,
    /// May mint client secrets (`POST /v1/realtime/client_secrets`); admins always may.
    #[serde(default)]
    pub client_secrets: bool,
    /// Its limits (its own settings over its role's).
    #[serde(skip)]
    pub quota: super::quotas::Quota,
}

fn default_role() -> String {
    "default".into()
}

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiKey")
            .field("id", &self.id)
            .field("role", &self.role)
            .field("admin", &self.admin)
            .field("client_secrets", &self.client_secrets)
            .field("quota", &self.quota)
            .finish_non_exhaustive()
    }
}

/// Who may call the server, from its settings.
#[derive(Debug, Clone, Default)]
pub struct Access {
    /// Required on every API route when set (the admin key, id `admin`).
    pub api_key: Option<String>,
    /// More keys, each with its id and role; any of them (or `api_key`) opens the API.
    pub keys: Vec<ApiKey>,
    /// Extra browser origins (`*`: any).
    pub allowed_origins: Vec<String>,
    /// Extra host names (`*`: any).
    pub allowed_hosts: Vec<String>,
    /// The address the server listens on (its own host name for the Host check).
    pub bind: Option<SocketAddr>,
}

impl Access {
    /// Whether `host` (a Host header: name or address, optional port) names this server.
    pub fn host_allowed(&self, host: &str) -> bool {
        if self.allowed_hosts.iter().any(|h| h == "*") {
            return true;
        }
        let name = host_name(host);
        if self
            .allowed_hosts
            .iter()
            .any(|h| h.eq_ignore_ascii_case(name))
            || is_loopback(name)
        {
            return true;
        }
        match self.bind {
            Some(addr) if addr.ip().is_unspecified() => self.allowed_hosts.is_empty(),
            Some(addr) => name
                .trim_start_matches('[')
                .trim_end_matches(']')
                .parse::<IpAddr>()
                .is_ok_and(|ip| ip == addr.ip()),
            None => true,
        }
    }

    /// Whether a browser on `origin` may call the server reached as `host`.
    pub fn origin_allowed(&self, origin: &str, host: Option<&str>) -> bool {
        let origin = origin.trim_end_matches('/');
        if self.allowed_origins.iter().any(|o| o == "*" || o == origin) {
            return true;
        }
        // The server's own origin: the demo page it serves.
        let authority = origin
            .strip_prefix("http://")
            .or_else(|| origin.strip_prefix("https://"));
        let Some(authority) = authority else {
            // `null` (sandboxed frames, files) and other schemes are never our own page.
            return false;
        };
        if host.is_some_and(|h| h.eq_ignore_ascii_case(authority)) {
            return true;
        }
        if !self.allowed_origins.is_empty() {
            return false;
        }
        // With a key, the key protects; without one, only pages on this machine.
        self.requires_key() || is_loopback(host_name(authority))
    }

    /// Whether API routes need a key.
    pub fn requires_key(&self) -> bool {
        self.api_key.is_some() || !self.keys.is_empty()
    }

    /// Whether `caller` may mint client secrets: an admin (or anyone, on a server without keys),
    /// or a key with `client_secrets = true`.
    pub fn may_mint(&self, caller: &Caller) -> bool {
        caller.admin
            || self
                .keys
                .iter()
                .any(|k| k.id == caller.key_id && k.client_secrets)
    }

    /// Whether `given` is an API key (or none is required).
    pub fn key_matches(&self, given: &str) -> bool {
        !self.requires_key() || self.identify(given).is_some()
    }

    /// Who `given` is: the caller of the key it matches (compared in constant time, whatever
    /// the lengths; every key is compared).
    pub fn identify(&self, given: &str) -> Option<Caller> {
        let given = Sha256::digest(given.as_bytes());
        let same = |key: &str| {
            Sha256::digest(key.as_bytes())
                .iter()
                .zip(given.iter())
                .fold(0u8, |acc, (x, y)| acc | (x ^ y))
                == 0
        };
        let mut found = None;
        if let Some(k) = &self.api_key {
            if same(k) {
                found = Some(Caller {
                    key_id: "admin".into(),
                    role: "admin".into(),
                    admin: true,
                });
            }
        }
        for k in &self.keys {
            if same(&k.key) && found.is_none() {
                found = Some(Caller {
                    key_id: k.id.clone(),
                    role: k.role.clone(),
                    admin: k.admin,
                });
            }
        }
        found
    }
}

/// The name in a Host header or an origin's authority, without the port.
fn host_name(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        // [::1]:8080
        return rest.split(']').next().unwrap_or(rest);
    }
    match host.rsplit_once(':') {
        Some((name, port)) if port.chars().all(|c| c.is_ascii_digit()) => name,
        _ => host,
    }
}

fn is_loopback(name: &str) -> bool {
    let name = name.trim_end_matches('.');
    name.eq_ignore_ascii_case("localhost")
        || name.to_ascii_lowercase().ends_with(".localhost")
        || name.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Routes open without the API key.
fn is_public(path: &str) -> bool {
    matches!(path, "/" | "/healthz" | "/readyz" | "/demo/client_secret")
        || super::assets::asset(path).is_some()
}

/// Routes whose body is JSON.
fn takes_json(method: &Method, path: &str) -> bool {
    method == Method::POST
        && matches!(
            path,
            "/v1/kb/search"
                | "/v1/chat/completions"
                | "/v1/embeddings"
                | "/v1/realtime/client_secrets"
        )
}

/// Routes that take JSON or a multipart upload.
fn takes_json_or_form(method: &Method, path: &str) -> bool {
    method == Method::POST && path == "/v1/kb/documents"
}

/// The middleware: Host, Origin, API key, content type.
pub async fn check(State(state): State<Arc<AppState>>, mut req: Request, next: Next) -> Response {
    if let Some(answer) = super::cors::preflight(&state.access, &req) {
        return answer;
    }
    let cors = super::cors::headers_for(&state.access, &req);
    match verdict(&state.access, state.client_secrets(), &req) {
        Ok((caller, secret)) => {
            if !is_public(req.uri().path()) {
                if let Err(e) = state.quotas().request(&caller.key_id) {
                    return super::quotas::refused(&e, &caller.key_id);
                }
            }
            // Who is calling, for the handlers (tool permissions, the audit trail).
            req.extensions_mut().insert(caller);
            if let Some(secret) = secret {
                req.extensions_mut().insert(secret);
            }
            let mut response = next.run(req).await;
            super::cors::decorate(cors, &mut response);
            response
        }
        Err(e) => {
            let mut response = e.into_response();
            super::cors::decorate(cors, &mut response);
            response
        }
    }
}

/// The keys a request presents: the bearer token, then WebSocket subprotocol keys (browsers).
fn presented_keys(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let subprotocols = headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|p| p.trim().strip_prefix("openai-insecure-api-key."));
    bearer.into_iter().chain(subprotocols)
}

/// The client secret (`ek_…`) a request presents, if any.
fn presented_secret(headers: &HeaderMap) -> Option<&str> {
    presented_keys(headers).find(|k| secrets::is_client_secret(k))
}

/// The caller an API key names; anonymous when the server needs none or the route is public.
fn api_key(access: &Access, headers: &HeaderMap, path: &str) -> Result<Caller, ApiError> {
    if !access.requires_key() || is_public(path) {
        return Ok(Caller::anonymous());
    }
    presented_keys(headers)
        .find_map(|k| access.identify(k))
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "invalid_api_key",
                "a valid API key is required: send `Authorization: Bearer <key>`",
            )
        })
}

/// Routes a client secret opens: realtime sessions only.
fn opens_with_secret(path: &str) -> bool {
    path == "/v1/realtime" || path == "/v1/realtime/calls"
}

/// The caller a client secret stands for: its minter's key id and role, never an admin. The
/// secret is checked here and redeemed when the session opens.
fn client_secret(
    secrets: &secrets::ClientSecrets,
    path: &str,
    value: &str,
) -> Result<(Caller, Option<secrets::Presented>), ApiError> {
    if !opens_with_secret(path) {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_api_key",
            "a client secret (ek_…) opens realtime sessions only: use an API key here",
        ));
    }
    let secret = secrets.check(value).map_err(|e| {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_client_secret",
            e.to_string(),
        )
    })?;
    let caller = Caller {
        key_id: format!("{}/client_secret", secret.caller.key_id),
        role: secret.caller.role,
        admin: false,
    };
    Ok((caller, Some(secrets::Presented(value.to_string()))))
}

fn verdict(
    access: &Access,
    secrets: &secrets::ClientSecrets,
    req: &Request,
) -> Result<(Caller, Option<secrets::Presented>), ApiError> {
    let headers = req.headers();
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .or_else(|| req.uri().authority().map(|a| a.as_str()));
    if let Some(h) = host {
        if !access.host_allowed(h) {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "host_not_allowed",
                "this server does not answer to that host name (--allowed-hosts)",
            ));
        }
    }
    if let Some(origin) = headers.get(header::ORIGIN) {
        let allowed = origin
            .to_str()
            .is_ok_and(|o| access.origin_allowed(o, host));
        if !allowed {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "origin_not_allowed",
                "requests from this web page's origin are not allowed (--allowed-origins)",
            ));
        }
    }
    let path = req.uri().path();
    let caller = match presented_secret(headers) {
        Some(value) => client_secret(secrets, path, value)?,
        None => (api_key(access, headers, path)?, None),
    };
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.to_ascii_lowercase());
    let json = content_type
        .as_deref()
        .is_some_and(|c| c.starts_with("application/json"));
    let form = content_type
        .as_deref()
        .is_some_and(|c| c.starts_with("multipart/form-data"));
    let method = req.method();
    if (takes_json(method, path) && !json) || (takes_json_or_form(method, path) && !json && !form) {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            if takes_json(method, path) {
                "send the body as JSON with `Content-Type: application/json`"
            } else {
                "send JSON (`Content-Type: application/json`) or a multipart/form-data upload"
            },
        ));
    }
    Ok(caller)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open() -> Access {
        Access {
            bind: Some("127.0.0.1:8080".parse().unwrap()),
            ..Default::default()
        }
    }

    #[test]
    fn host_names_are_checked_against_the_bind_address_and_loopback() {
        let a = open();
        for ok in [
            "127.0.0.1:8080",
            "localhost:8080",
            "localhost",
            "[::1]:8080",
            "app.localhost",
        ] {
            assert!(a.host_allowed(ok), "{ok}");
        }
        for bad in [
            "evil.example:8080",
            "evil.example",
            "10.0.0.5:8080",
            "127.0.0.1.evil.example",
        ] {
            assert!(!a.host_allowed(bad), "{bad}");
        }
        let listed = Access {
            allowed_hosts: vec!["voice.example.org".into()],
            ..open()
        };
        assert!(listed.host_allowed("voice.example.org:443"));
        let lan = Access {
            bind: Some("192.168.1.9:8080".parse().unwrap()),
            ..Default::default()
        };
        assert!(lan.host_allowed("192.168.1.9:8080"));
        assert!(!lan.host_allowed("evil.example"));
        let any = Access {
            bind: Some("0.0.0.0:8080".parse().unwrap()),
            ..Default::default()
        };
        assert!(any.host_allowed("whatever.example"));
    }

    #[test]
    fn origins_are_own_or_loopback_without_a_key() {
        let a = open();
        let host = Some("127.0.0.1:8080");
        assert!(a.origin_allowed("http://127.0.0.1:8080", host));
        assert!(a.origin_allowed("http://localhost:3000", host));
        assert!(!a.origin_allowed("https://evil.example", host));
        assert!(!a.origin_allowed("null", host));
        // The page's own origin, reached by a name the operator allowed.
        assert!(a.origin_allowed("https://voice.example.org", Some("voice.example.org")));
        let keyed = Access {
            api_key: Some("k".into()),
            ..open()
        };
        assert!(keyed.origin_allowed("https://app.example", host));
        let listed = Access {
            allowed_origins: vec!["https://app.example".into()],
            api_key: Some("k".into()),
            ..open()
        };
        assert!(listed.origin_allowed("https://app.example", host));
        assert!(!listed.origin_allowed("https://other.example", host));
        assert!(!listed.origin_allowed("http://localhost:3000", host));
    }

    #[test]
    fn keys_compare_by_content_only() {
        let a = Access {
            api_key: Some("secret".into()),
            ..open()
        };
        assert!(a.key_matches("secret"));
        assert!(!a.key_matches("secreT"));
        assert!(!a.key_matches("secret-and-more"));
        assert!(!a.key_matches(""));
    }
}
