//! Ephemeral client secrets (`POST /v1/realtime/client_secrets`): a backend holding a real API
//! key mints a short-lived `ek_…` key for a browser or an app, bound to a session configuration.
//! The holder of the `ek_` key can open realtime sessions only (as many as the secret allows, one
//! by default) and cannot change what the secret fixed: the instructions, the tools and the tool
//! choice (see [`crate::protocol::SessionConfig::bind`]).
//!
//! Secrets live in memory (a restart revokes them all), are stored by their SHA-256 only, and are
//! bounded in number: expired ones are dropped as new ones are minted.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::error::ApiError;
use super::AppState;
use crate::protocol::SessionKind;
use crate::tools::Caller;

/// Shortest and longest life of a secret, and the default (as OpenAI's).
pub const MIN_TTL: Duration = Duration::from_secs(10);
pub const MAX_TTL: Duration = Duration::from_secs(2 * 60 * 60);
pub const DEFAULT_TTL: Duration = Duration::from_secs(600);
/// Most sessions one secret may open.
pub const MAX_USES: u32 = 100;
/// Most live secrets held at once; minting beyond is refused (429) until some expire.
pub const MAX_SECRETS: usize = 10_000;

/// One minted secret.
#[derive(Debug, Clone)]
pub struct Secret {
    /// Who minted it: sessions opened with it act for that key's id and role (never as admin).
    pub caller: Caller,
    /// The session configuration it is bound to (a `session.update` body, already checked).
    pub session: Value,
    expires: Instant,
    uses_left: u32,
}

/// Why a secret was not minted, or does not open a session.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    #[error("too many live client secrets ({MAX_SECRETS}): wait for some to expire")]
    TooMany,
    #[error("the client secret is unknown, expired or revoked")]
    Invalid,
    #[error("the client secret has opened all the sessions it may")]
    UsedUp,
    #[error("the operating system gave no random numbers for the secret")]
    NoRandom,
}

/// The server's live secrets, by the SHA-256 of their value.
#[derive(Default)]
pub struct ClientSecrets {
    live: Mutex<HashMap<[u8; 32], Secret>>,
}

fn digest(value: &str) -> [u8; 32] {
    Sha256::digest(value.as_bytes()).into()
}

/// Whether a key given by a client is shaped like a client secret.
pub fn is_client_secret(key: &str) -> bool {
    key.starts_with("ek_")
}

impl ClientSecrets {
    /// Mints a secret for `caller`, bound to `session`, living `ttl` and opening at most `uses`
    /// sessions. Returns its value and when it expires (Unix seconds).
    pub fn mint(
        &self,
        caller: Caller,
        session: Value,
        ttl: Duration,
        uses: u32,
    ) -> Result<(String, u64), SecretError> {
        let mut bytes = [0u8; 24];
        getrandom::fill(&mut bytes).map_err(|_| SecretError::NoRandom)?;
        let value = format!("ek_{}", hex::encode(bytes));
        let now = Instant::now();
        let mut live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        if live.len() >= MAX_SECRETS {
            live.retain(|_, s| s.expires > now && s.uses_left > 0);
        }
        if live.len() >= MAX_SECRETS {
            return Err(SecretError::TooMany);
        }
        live.insert(
            digest(&value),
            Secret {
                caller,
                session,
                expires: now + ttl,
                uses_left: uses.max(1),
            },
        );
        let expires_at = SystemTime::now()
            .checked_add(ttl)
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_secs());
        Ok((value, expires_at))
    }

    /// The secret `value` names, if it is live (not consumed).
    pub fn check(&self, value: &str) -> Result<Secret, SecretError> {
        let live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        let secret = live.get(&digest(value)).ok_or(SecretError::Invalid)?;
        if secret.expires <= Instant::now() {
            return Err(SecretError::Invalid);
        }
        if secret.uses_left == 0 {
            return Err(SecretError::UsedUp);
        }
        Ok(secret.clone())
    }

    /// Takes one session from the secret (checked and counted in one step, so two connections
    /// racing with a single-use secret cannot both open).
    pub fn redeem(&self, value: &str) -> Result<Secret, SecretError> {
        let mut live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        let key = digest(value);
        let secret = live.get_mut(&key).ok_or(SecretError::Invalid)?;
        if secret.expires <= Instant::now() {
            live.remove(&key);
            return Err(SecretError::Invalid);
        }
        if secret.uses_left == 0 {
            return Err(SecretError::UsedUp);
        }
        secret.uses_left -= 1;
        Ok(secret.clone())
    }

    /// Revokes a secret; `by` must be an admin or the key that minted it. Whether it was live
    /// (a secret someone else minted reads as unknown).
    pub fn revoke(&self, value: &str, by: &Caller) -> bool {
        let mut live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        let key = digest(value);
        let mine = live
            .get(&key)
            .is_some_and(|s| by.admin || s.caller.key_id == by.key_id);
        mine && live.remove(&key).is_some()
    }

    /// Secrets held now (live or not yet swept).
    pub fn len(&self) -> usize {
        self.live.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A client secret presented with a request (in `Authorization` or the WebSocket subprotocol),
/// checked by the guard; the realtime route redeems it.
#[derive(Debug, Clone)]
pub struct Presented(pub String);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MintBody {
    expires_after: Option<ExpiresAfter>,
    #[serde(default)]
    session: Option<Value>,
    /// voxd: how many sessions the secret may open (default 1).
    voxd: Option<MintExtras>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ExpiresAfter {
    anchor: Option<String>,
    seconds: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MintExtras {
    sessions: Option<u32>,
}

/// `POST /v1/realtime/client_secrets`: mints an `ek_` key bound to a session configuration.
pub async fn mint(
    State(state): State<Arc<AppState>>,
    caller: Option<Extension<Caller>>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let caller = caller.map_or_else(Caller::anonymous, |Extension(c)| c);
    if !state.may_mint(&caller) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "permission_denied",
            "this API key may not mint client secrets (an admin key, or `client_secrets = true` in its [[server.keys]] entry)",
        ));
    }
    let body: MintBody = if body.is_empty() {
        MintBody {
            expires_after: None,
            session: None,
            voxd: None,
        }
    } else {
        serde_json::from_slice(&body).map_err(|e| {
            ApiError::bad_request(
                "invalid_json",
                format!("the request body is not valid: {e}"),
            )
        })?
    };
    let ttl = ttl_of(body.expires_after.as_ref())?;
    let uses = body.voxd.and_then(|v| v.sessions).unwrap_or(1);
    if !(1..=MAX_USES).contains(&uses) {
        return Err(ApiError::bad_request(
            "invalid_value",
            format!("`voxd.sessions` must be 1 to {MAX_USES}"),
        )
        .with_param("voxd.sessions"));
    }
    let session = body.session.unwrap_or_else(|| json!({}));
    // Checked now, as the session will apply it: a mistake is the minter's 400, not a
    // browser's failed session later.
    let mut config = state.new_session_config(SessionKind::Realtime);
    config.bind(&session).map_err(|e| {
        let mut err = ApiError::bad_request(e.code, e.message);
        err.param = e.param;
        err
    })?;
    tracing::info!(key_id = %caller.key_id, ttl_s = ttl.as_secs(), sessions = uses, "client secret minted");
    minted(&state, caller, session, ttl, uses, &config)
}

/// Mints the secret and answers with it: `{value, expires_at, session}` (the session as it
/// will start).
fn minted(
    state: &AppState,
    caller: Caller,
    session: Value,
    ttl: Duration,
    uses: u32,
    config: &crate::protocol::SessionConfig,
) -> Result<Response, ApiError> {
    let (value, expires_at) = state
        .client_secrets()
        .mint(caller, session, ttl, uses)
        .map_err(|e| {
            ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_client_secrets",
                e.to_string(),
            )
        })?;
    Ok(Json(json!({
        "value": value,
        "expires_at": expires_at,
        "session": config.to_view(),
    }))
    .into_response())
}

fn ttl_of(expires: Option<&ExpiresAfter>) -> Result<Duration, ApiError> {
    let Some(e) = expires else {
        return Ok(DEFAULT_TTL);
    };
    if e.anchor.as_deref().is_some_and(|a| a != "created_at") {
        return Err(ApiError::bad_request(
            "invalid_value",
            "`expires_after.anchor` must be \"created_at\"",
        )
        .with_param("expires_after.anchor"));
    }
    let ttl = e.seconds.map_or(DEFAULT_TTL, Duration::from_secs);
    if ttl < MIN_TTL || ttl > MAX_TTL {
        return Err(ApiError::bad_request(
            "invalid_value",
            format!(
                "`expires_after.seconds` must be {} to {}",
                MIN_TTL.as_secs(),
                MAX_TTL.as_secs()
            ),
        )
        .with_param("expires_after.seconds"));
    }
    Ok(ttl)
}

/// The account the demo's secrets and sessions count under (`[server.roles.demo]` quotas).
pub const DEMO_ACCOUNT: &str = "demo";
/// How long a demo page's secret lives: long enough to connect.
const DEMO_TTL: Duration = Duration::from_secs(60);

/// `POST /demo/client_secret` (with `--demo-client-secrets`): a secret for one session of the
/// web demo, asked for by the server's own page only (its `Origin` must be this server), so the
/// browser never holds an API key. Counted against the `demo` account's quotas.
pub async fn mint_for_demo(
    State(state): State<Arc<AppState>>,
    headers: axum::http::HeaderMap,
) -> Result<Response, ApiError> {
    if !state.demo {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "the demo's client secrets are off (--demo-client-secrets)",
        ));
    }
    let text = |name| headers.get(name).and_then(|v| v.to_str().ok());
    let own_page = match (
        text(axum::http::header::ORIGIN),
        text(axum::http::header::HOST),
    ) {
        (Some(origin), Some(host)) => origin
            .split_once("://")
            .is_some_and(|(_, authority)| authority.eq_ignore_ascii_case(host)),
        _ => false,
    };
    if !own_page {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "origin_not_allowed",
            "only this server's own demo page may ask for a demo client secret",
        ));
    }
    if let Err(e) = state.quotas().request(DEMO_ACCOUNT) {
        return Ok(super::quotas::refused(&e, DEMO_ACCOUNT));
    }
    let caller = Caller {
        key_id: DEMO_ACCOUNT.into(),
        role: DEMO_ACCOUNT.into(),
        admin: false,
    };
    let config = state.new_session_config(SessionKind::Realtime);
    minted(&state, caller, json!({}), DEMO_TTL, 1, &config)
}

/// `DELETE /v1/realtime/client_secrets/{value}`: revokes a secret (its minter or an admin);
/// sessions it already opened go on.
pub async fn revoke(
    State(state): State<Arc<AppState>>,
    caller: Option<Extension<Caller>>,
    Path(value): Path<String>,
) -> Result<Response, ApiError> {
    let caller = caller.map_or_else(Caller::anonymous, |Extension(c)| c);
    if !state.client_secrets().revoke(&value, &caller) {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "client_secret_not_found",
            "no live client secret of yours has that value",
        ));
    }
    tracing::info!(key_id = %caller.key_id, "client secret revoked");
    Ok(Json(json!({ "object": "realtime.client_secret", "deleted": true })).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller(id: &str) -> Caller {
        Caller {
            key_id: id.into(),
            role: "web".into(),
            admin: false,
        }
    }

    #[test]
    fn a_secret_opens_as_many_sessions_as_it_allows_then_none() {
        let secrets = ClientSecrets::default();
        let (value, expires_at) = secrets
            .mint(caller("app"), serde_json::json!({}), DEFAULT_TTL, 2)
            .unwrap();
        assert!(value.starts_with("ek_") && value.len() == 51, "{value}");
        assert!(expires_at > 0);
        assert!(secrets.check(&value).is_ok());
        assert_eq!(secrets.redeem(&value).unwrap().caller.key_id, "app");
        assert!(secrets.redeem(&value).is_ok());
        assert_eq!(secrets.redeem(&value).unwrap_err(), SecretError::UsedUp);
        assert_eq!(secrets.check(&value).unwrap_err(), SecretError::UsedUp);
        assert_eq!(secrets.check("ek_nope").unwrap_err(), SecretError::Invalid);
    }

    #[test]
    fn expired_and_revoked_secrets_open_nothing() {
        let secrets = ClientSecrets::default();
        let (short, _) = secrets
            .mint(caller("app"), Value::Null, Duration::from_millis(1), 1)
            .unwrap();
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(secrets.redeem(&short).unwrap_err(), SecretError::Invalid);

        let (value, _) = secrets
            .mint(caller("app"), Value::Null, DEFAULT_TTL, 1)
            .unwrap();
        assert!(!secrets.revoke(&value, &caller("other")), "not its minter");
        assert!(secrets.revoke(&value, &caller("app")));
        assert_eq!(secrets.check(&value).unwrap_err(), SecretError::Invalid);
    }
}
