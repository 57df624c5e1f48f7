//! Per-key quotas, so one key holder cannot starve the others: concurrent realtime sessions,
//! requests per minute on the HTTP APIs, and minutes of audio per day (realtime audio in and
//! transcription uploads). Set per key in `[[server.keys]]` or per role in `[server.roles.NAME]`
//! (a key's own setting wins). The admin key (`api_key`) and servers without keys have none.
//!
//! Sessions opened with a client secret count against the key that minted it. Beyond a limit:
//! HTTP 429 with `Retry-After` and a typed code; in a session, an `error` event and
//! `rate_limits.updated`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Deserialize;
use serde_json::{json, Value};

/// One key's or role's limits; `None`: unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Quota {
    /// Realtime sessions open at once.
    pub max_sessions: Option<u32>,
    /// HTTP API requests (session opens included) per minute.
    pub requests_per_minute: Option<u32>,
    /// Minutes of audio heard per UTC day.
    pub audio_minutes_per_day: Option<f64>,
}

impl Quota {
    /// `self`'s settings where it has them, `role`'s elsewhere.
    pub fn over(self, role: Quota) -> Quota {
        Quota {
            max_sessions: self.max_sessions.or(role.max_sessions),
            requests_per_minute: self.requests_per_minute.or(role.requests_per_minute),
            audio_minutes_per_day: self.audio_minutes_per_day.or(role.audio_minutes_per_day),
        }
    }

    pub fn is_unlimited(&self) -> bool {
        *self == Quota::default()
    }
}

/// A limit reached.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum OverQuota {
    #[error("this API key has {0} realtime sessions open, its limit")]
    Sessions(u32),
    #[error("this API key is over its {0} requests per minute")]
    Requests(u32, Duration),
    #[error("this API key has used its {0} minutes of audio for today (UTC)")]
    Audio(f64, Duration),
}

impl OverQuota {
    /// The typed code clients see.
    pub fn code(&self) -> &'static str {
        match self {
            OverQuota::Sessions(_) => "session_limit_reached",
            OverQuota::Requests(..) => "rate_limit_exceeded",
            OverQuota::Audio(..) => "audio_quota_exceeded",
        }
    }

    /// When to try again (`Retry-After`): a session closing is not foreseen, so a guess.
    pub fn retry_after(&self) -> Duration {
        match self {
            OverQuota::Sessions(_) => Duration::from_secs(10),
            OverQuota::Requests(_, d) | OverQuota::Audio(_, d) => *d,
        }
    }

    /// Which limit, for metrics.
    pub fn limit(&self) -> &'static str {
        match self {
            OverQuota::Sessions(_) => "sessions",
            OverQuota::Requests(..) => "requests",
            OverQuota::Audio(..) => "audio",
        }
    }
}

/// The HTTP answer to a request over its key's quota: 429 with `Retry-After` and the typed
/// code; counted in `voxd_quota_rejections_total`.
pub fn refused(e: &OverQuota, key_id: &str) -> axum::response::Response {
    use axum::response::IntoResponse;
    crate::metrics::global()
        .quota_rejections
        .inc_pair(account(key_id), e.limit());
    let mut response = super::error::ApiError::new(
        axum::http::StatusCode::TOO_MANY_REQUESTS,
        e.code(),
        e.to_string(),
    )
    .into_response();
    if let Ok(v) = e.retry_after().as_secs().max(1).to_string().parse() {
        response
            .headers_mut()
            .insert(axum::http::header::RETRY_AFTER, v);
    }
    response
}

/// What one key has used.
#[derive(Debug)]
struct Usage {
    sessions: u32,
    /// Requests allowed now (a token bucket refilled at the per-minute rate).
    tokens: f64,
    refilled: Instant,
    /// The UTC day `audio_seconds` counts.
    day: u64,
    audio_seconds: f64,
}

/// Every key's quota and usage.
#[derive(Debug, Default)]
pub struct Quotas {
    limits: HashMap<String, Quota>,
    usage: Mutex<HashMap<String, Usage>>,
}

fn today_and_left() -> (u64, Duration) {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    (now / 86_400, Duration::from_secs(86_400 - now % 86_400))
}

/// The key a caller's usage counts under: a client secret's session counts as its minter.
pub fn account(key_id: &str) -> &str {
    key_id.split('/').next().unwrap_or(key_id)
}

impl Quotas {
    /// Quotas by key id (keys without limits may be left out).
    pub fn new(limits: HashMap<String, Quota>) -> Self {
        Quotas {
            limits: limits
                .into_iter()
                .filter(|(_, q)| !q.is_unlimited())
                .collect(),
            usage: Mutex::default(),
        }
    }

    /// The quota of `key_id` (a caller's id), if it has one.
    pub fn of(&self, key_id: &str) -> Option<Quota> {
        self.limits.get(account(key_id)).copied()
    }

    fn with_usage<T>(&self, key: &str, quota: &Quota, f: impl FnOnce(&mut Usage) -> T) -> T {
        let mut all = self.usage.lock().unwrap_or_else(|e| e.into_inner());
        let (day, _) = today_and_left();
        let usage = all.entry(key.to_string()).or_insert_with(|| Usage {
            sessions: 0,
            tokens: quota.requests_per_minute.unwrap_or(0) as f64,
            refilled: Instant::now(),
            day,
            audio_seconds: 0.0,
        });
        if let Some(rpm) = quota.requests_per_minute {
            let now = Instant::now();
            let rate = rpm as f64 / 60.0;
            usage.tokens = (usage.tokens + now.duration_since(usage.refilled).as_secs_f64() * rate)
                .min(rpm as f64);
            usage.refilled = now;
        }
        if usage.day != day {
            usage.day = day;
            usage.audio_seconds = 0.0;
        }
        f(usage)
    }

    /// Counts one HTTP request of `key_id`.
    pub fn request(&self, key_id: &str) -> Result<(), OverQuota> {
        let Some(quota) = self.of(key_id) else {
            return Ok(());
        };
        let Some(rpm) = quota.requests_per_minute else {
            return Ok(());
        };
        self.with_usage(account(key_id), &quota, |u| {
            if u.tokens >= 1.0 {
                u.tokens -= 1.0;
                return Ok(());
            }
            let wait = (1.0 - u.tokens) * 60.0 / rpm.max(1) as f64;
            Err(OverQuota::Requests(
                rpm,
                Duration::from_secs_f64(wait.ceil().max(1.0)),
            ))
        })
    }

    /// Whether `key_id` may still hear audio today.
    pub fn audio_left(&self, key_id: &str) -> Result<(), OverQuota> {
        let Some(quota) = self.of(key_id) else {
            return Ok(());
        };
        let Some(minutes) = quota.audio_minutes_per_day else {
            return Ok(());
        };
        self.with_usage(account(key_id), &quota, |u| {
            if u.audio_seconds < minutes * 60.0 {
                Ok(())
            } else {
                Err(OverQuota::Audio(minutes, today_and_left().1))
            }
        })
    }

    /// Counts `seconds` of audio heard for `key_id`; an error once the day's minutes are used
    /// (the audio that crossed the line is counted, and was heard).
    pub fn add_audio(&self, key_id: &str, seconds: f64) -> Result<(), OverQuota> {
        crate::metrics::global()
            .key_audio_ms
            .add(account(key_id), (seconds * 1000.0) as u64);
        let Some(quota) = self.of(key_id) else {
            return Ok(());
        };
        let Some(minutes) = quota.audio_minutes_per_day else {
            return Ok(());
        };
        let over = self.with_usage(account(key_id), &quota, |u| {
            let was_under = u.audio_seconds < minutes * 60.0;
            u.audio_seconds += seconds;
            !was_under
        });
        if over {
            return Err(OverQuota::Audio(minutes, today_and_left().1));
        }
        Ok(())
    }

    /// Opens a realtime session for `key_id`: held until the returned guard drops.
    pub fn open_session(self: &Arc<Self>, key_id: &str) -> Result<KeySession, OverQuota> {
        let key = account(key_id).to_string();
        if let Some(quota) = self.of(key_id) {
            self.audio_left(key_id)?;
            self.with_usage(&key, &quota, |u| match quota.max_sessions {
                Some(max) if u.sessions >= max => Err(OverQuota::Sessions(max)),
                _ => {
                    u.sessions += 1;
                    Ok(())
                }
            })?;
        }
        Ok(KeySession {
            quotas: self.clone(),
            key_id: key_id.to_string(),
        })
    }

    /// The key's limits and what is left, as a `rate_limits.updated` event's fields: the
    /// requests limit in `rate_limits` (OpenAI's names), sessions and audio minutes under `voxd`.
    pub fn view(&self, key_id: &str) -> Option<Value> {
        let quota = self.of(key_id)?;
        let (_, until_midnight) = today_and_left();
        self.with_usage(account(key_id), &quota, |u| {
            let mut limits = Vec::new();
            if let Some(rpm) = quota.requests_per_minute {
                limits.push(json!({
                    "name": "requests",
                    "limit": rpm,
                    "remaining": u.tokens.floor() as u64,
                    "reset_seconds": ((rpm as f64 - u.tokens) * 60.0 / rpm.max(1) as f64).max(0.0),
                }));
            }
            let mut voxd = serde_json::Map::new();
            if let Some(max) = quota.max_sessions {
                voxd.insert(
                    "sessions".into(),
                    json!({"limit": max, "remaining": max.saturating_sub(u.sessions)}),
                );
            }
            if let Some(minutes) = quota.audio_minutes_per_day {
                voxd.insert(
                    "audio_minutes".into(),
                    json!({
                        "limit": minutes,
                        "remaining": (minutes - u.audio_seconds / 60.0).max(0.0),
                        "reset_seconds": until_midnight.as_secs(),
                    }),
                );
            }
            Some(json!({ "rate_limits": limits, "voxd": voxd }))
        })
    }
}

/// A realtime session counted against its key; the count drops with it.
#[derive(Debug)]
pub struct KeySession {
    quotas: Arc<Quotas>,
    key_id: String,
}

impl KeySession {
    /// Counts audio heard in this session (see [`Quotas::add_audio`]).
    pub fn add_audio(&self, seconds: f64) -> Result<(), OverQuota> {
        self.quotas.add_audio(&self.key_id, seconds)
    }

    /// The key id its usage counts under.
    pub fn account(&self) -> String {
        account(&self.key_id).to_string()
    }

    /// The session's `rate_limits.updated` fields, when its key has limits.
    pub fn view(&self) -> Option<Value> {
        self.quotas.view(&self.key_id)
    }
}

impl Drop for KeySession {
    fn drop(&mut self) {
        let Some(quota) = self.quotas.of(&self.key_id) else {
            return;
        };
        self.quotas.with_usage(account(&self.key_id), &quota, |u| {
            u.sessions = u.sessions.saturating_sub(1)
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quotas(q: Quota) -> Arc<Quotas> {
        Arc::new(Quotas::new(HashMap::from([("app".to_string(), q)])))
    }

    #[test]
    fn sessions_are_counted_per_key_and_given_back() {
        let q = quotas(Quota {
            max_sessions: Some(2),
            ..Default::default()
        });
        let a = q.open_session("app").unwrap();
        let _b = q.open_session("app/client_secret").unwrap();
        assert_eq!(q.open_session("app").unwrap_err(), OverQuota::Sessions(2));
        // Another key, and a key without a quota, are not affected.
        assert!(q.open_session("other").is_ok());
        drop(a);
        assert!(q.open_session("app").is_ok());
    }

    #[test]
    fn requests_per_minute_refill_over_the_minute() {
        let q = quotas(Quota {
            requests_per_minute: Some(3),
            ..Default::default()
        });
        for _ in 0..3 {
            q.request("app").unwrap();
        }
        let e = q.request("app").unwrap_err();
        assert_eq!(e.code(), "rate_limit_exceeded");
        // One token comes back every 20 s.
        assert_eq!(e.retry_after(), Duration::from_secs(20));
        let view = q.view("app").unwrap();
        assert_eq!(view["rate_limits"][0]["name"], "requests");
        assert_eq!(view["rate_limits"][0]["remaining"], 0);
    }

    #[test]
    fn audio_minutes_run_out_for_the_day() {
        let q = quotas(Quota {
            audio_minutes_per_day: Some(1.0),
            ..Default::default()
        });
        let s = q.open_session("app").unwrap();
        s.add_audio(45.0).unwrap();
        s.add_audio(20.0).unwrap(); // crosses the line: heard
        let e = s.add_audio(1.0).unwrap_err();
        assert_eq!(e.code(), "audio_quota_exceeded");
        assert!(e.retry_after() <= Duration::from_secs(86_400));
        assert_eq!(
            q.open_session("app").unwrap_err().code(),
            "audio_quota_exceeded"
        );
        assert_eq!(s.view().unwrap()["voxd"]["audio_minutes"]["remaining"], 0.0);
    }

    #[test]
    fn a_keys_own_setting_wins_over_its_roles() {
        let role = Quota {
            max_sessions: Some(4),
            requests_per_minute: Some(60),
            audio_minutes_per_day: None,
        };
        let own = Quota {
            max_sessions: Some(1),
            ..Default::default()
        };
        assert_eq!(
            own.over(role),
            Quota {
                max_sessions: Some(1),
                requests_per_minute: Some(60),
                audio_minutes_per_day: None
            }
        );
    }
}
