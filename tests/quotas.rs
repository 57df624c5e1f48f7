//! Per-key quotas on the real server over loopback: one key holder over its limits gets typed
//! 429s (and, in a session, an error event with `rate_limits.updated`) while other keys go on.

mod common;

use serde_json::{json, Value};
use voxd::client::{self, ClientError};
use voxd::protocol::ServerEvent;
use voxd::server::guard::ApiKey;
use voxd::server::quotas::Quota;
use voxd::server::ServerSettings;

const ADMIN: &str = "admin-key-0123456789abcdef";

fn key(id: &str, quota: Quota) -> ApiKey {
    ApiKey {
        id: id.into(),
        key: format!("{id}-key-0123456789abcdef"),
        role: "web".into(),
        client_secrets: true,
        quota,
        ..Default::default()
    }
}

async fn server(keys: Vec<ApiKey>) -> (String, String) {
    let settings = ServerSettings {
        api_key: Some(ADMIN.into()),
        keys,
        ..Default::default()
    };
    common::start_full(settings, None, None).await
}

fn secret(id: &str) -> String {
    format!("{id}-key-0123456789abcdef")
}

fn refused(r: Result<(client::Sender, client::Receiver), ClientError>) -> (u16, String) {
    match r {
        Err(ClientError::Refused { status, body }) => (status, body),
        Err(e) => panic!("not refused over HTTP: {e}"),
        Ok(_) => panic!("the session opened"),
    }
}

fn limits_of(events: &[ServerEvent]) -> Option<(Value, Value)> {
    events.iter().rev().find_map(|e| match e {
        ServerEvent::RateLimitsUpdated { rate_limits, voxd } => {
            Some((rate_limits.clone(), voxd.clone().unwrap_or_default()))
        }
        _ => None,
    })
}

async fn metrics(base: &str) -> String {
    reqwest::Client::new()
        .get(format!("{base}/metrics"))
        .header("authorization", format!("Bearer {ADMIN}"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_key_at_its_session_cap_is_refused_while_another_key_gets_in() {
    let one = Quota {
        max_sessions: Some(1),
        ..Default::default()
    };
    let (url, base) = server(vec![key("small", one), key("other", one)]).await;
    let (mut tx, mut rx) = client::connect(&url, Some(&secret("small"))).await.unwrap();
    let (events, _) = common::read_until(&mut rx, |e| {
        e.iter().any(|e| e.kind() == "rate_limits.updated")
    })
    .await;
    assert_eq!(events[0].kind(), "session.created");
    let (_, voxd) = limits_of(&events).unwrap();
    assert_eq!(voxd["sessions"], json!({"limit": 1, "remaining": 0}));

    let (status, body) = refused(client::connect(&url, Some(&secret("small"))).await);
    assert_eq!(status, 429, "{body}");
    assert!(body.contains("session_limit_reached"), "{body}");
    // A client secret minted by the key counts as the key.
    let minted: Value = reqwest::Client::new()
        .post(format!("{base}/v1/realtime/client_secrets"))
        .header("authorization", format!("Bearer {}", secret("small")))
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ek = minted["value"].as_str().unwrap().to_string();
    let (status, _) = refused(client::connect(&url, Some(&ek)).await);
    assert_eq!(status, 429);
    // Another key is not affected.
    let (_other, _) = client::connect(&url, Some(&secret("other"))).await.unwrap();

    // Closed, the session gives its place back (and the secret was not used up by the refusal).
    tx.close().await.unwrap();
    drop((tx, rx));
    let mut opened = None;
    for _ in 0..50 {
        match client::connect(&url, Some(&ek)).await {
            Ok(pair) => {
                opened = Some(pair);
                break;
            }
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(100)).await,
        }
    }
    assert!(opened.is_some(), "the key's place was not given back");
    assert!(
        metrics(&base)
            .await
            .contains("voxd_quota_rejections_total{key_id=\"small\",limit=\"sessions\"} 2"),
        "{}",
        metrics(&base).await
    );
}

#[tokio::test]
async fn requests_over_a_keys_rate_get_429_with_retry_after() {
    let (_, base) = server(vec![
        key(
            "rpm",
            Quota {
                requests_per_minute: Some(3),
                ..Default::default()
            },
        ),
        key("free", Quota::default()),
    ])
    .await;
    let get = |id: &'static str| {
        let base = base.clone();
        async move {
            reqwest::Client::new()
                .get(format!("{base}/v1/models"))
                .header("authorization", format!("Bearer {}", secret(id)))
                .send()
                .await
                .unwrap()
        }
    };
    for _ in 0..3 {
        assert_eq!(get("rpm").await.status().as_u16(), 200);
    }
    let r = get("rpm").await;
    assert_eq!(r.status().as_u16(), 429);
    assert_eq!(r.headers()["retry-after"], "20");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "rate_limit_exceeded");
    for _ in 0..10 {
        assert_eq!(get("free").await.status().as_u16(), 200);
    }
    // Public routes are not counted.
    let health = reqwest::get(format!("{base}/healthz")).await.unwrap();
    assert_eq!(health.status().as_u16(), 200);
}

#[tokio::test]
async fn a_keys_audio_minutes_run_out_in_a_session_and_on_uploads() {
    // Three seconds a day.
    let (url, base) = server(vec![key(
        "listener",
        Quota {
            audio_minutes_per_day: Some(0.05),
            ..Default::default()
        },
    )])
    .await;
    let (mut tx, mut rx) = client::connect(&url, Some(&secret("listener")))
        .await
        .unwrap();
    let (events, _) = common::read_until(&mut rx, |e| {
        e.iter().any(|e| e.kind() == "rate_limits.updated")
    })
    .await;
    let (_, voxd) = limits_of(&events).unwrap();
    assert_eq!(voxd["audio_minutes"]["limit"], 0.05);
    // Four seconds of quiet at 24 kHz, in half-second appends.
    for _ in 0..8 {
        tx.append(&vec![0.0; 12_000]).await.unwrap();
    }
    let (events, closed) = common::read_until(&mut rx, |e| {
        e.iter().any(|e| e.kind() == "rate_limits.updated")
    })
    .await;
    assert_eq!(closed, None);
    let error = events
        .iter()
        .find_map(|e| match e {
            ServerEvent::Error { error } => Some(error.clone()),
            _ => None,
        })
        .expect("an error event");
    assert_eq!(error.code.as_deref(), Some("audio_quota_exceeded"));
    let (_, voxd) = limits_of(&events).unwrap();
    assert_eq!(voxd["audio_minutes"]["remaining"], 0.0);
    // Said once; the session goes on (text still works).
    for _ in 0..4 {
        tx.append(&vec![0.0; 12_000]).await.unwrap();
    }
    tx.update_session(json!({"output_modalities": ["text"]}))
        .await
        .unwrap();
    let (events, _) =
        common::read_until(&mut rx, |e| e.iter().any(|e| e.kind() == "session.updated")).await;
    assert!(events.iter().all(|e| e.kind() != "error"), "{events:?}");

    // New sessions and uploads are refused until tomorrow (UTC).
    let (status, body) = refused(client::connect(&url, Some(&secret("listener"))).await);
    assert_eq!(status, 429);
    assert!(body.contains("audio_quota_exceeded"), "{body}");
    let form = reqwest::multipart::Form::new().part(
        "file",
        reqwest::multipart::Part::bytes(std::fs::read(common::data("jfk.wav")).unwrap())
            .file_name("jfk.wav"),
    );
    let r = reqwest::Client::new()
        .post(format!("{base}/v1/audio/transcriptions"))
        .header("authorization", format!("Bearer {}", secret("listener")))
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 429);
    let retry: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=86_400).contains(&retry));
    let m = metrics(&base).await;
    let heard: f64 = m
        .lines()
        .find_map(|l| l.strip_prefix("voxd_key_audio_seconds_total{key_id=\"listener\"} "))
        .unwrap_or_else(|| panic!("{m}"))
        .parse()
        .unwrap();
    // What crossed the line was heard (3.5 s); what came after was not counted.
    assert!((3.0..=3.6).contains(&heard), "{heard}");
}

/// The file form: `[server.roles.NAME]` gives a role's keys their limits; a key's own settings
/// win; a zero limit is refused with the key's name.
#[test]
fn quotas_come_from_roles_and_keys_in_the_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("voxd.toml");
    let resolve = |text: &str| {
        std::fs::write(&path, text).unwrap();
        let common = voxd::config::CommonArgs {
            config: Some(path.clone()),
            home: Some(dir.path().to_path_buf()),
            log_format: None,
            ca_cert: None,
        };
        voxd::config::Config::resolve(&common, &Default::default())
    };
    let cfg = resolve(
        r#"
[server]
api_key = "admin-key-0123456789abcdef"
[server.roles.web]
max_sessions = 4
requests_per_minute = 120
[[server.keys]]
id = "shop"
key = "shop-key-0123456789abcdef"
role = "web"
max_sessions = 1
audio_minutes_per_day = 90
[[server.keys]]
id = "kiosk"
key = "kiosk-key-0123456789abcdef"
role = "web"
[[server.keys]]
id = "staff"
key = "staff-key-0123456789abcdef"
"#,
    )
    .unwrap();
    let quota = |id: &str| cfg.server.keys.iter().find(|k| k.id == id).unwrap().quota;
    assert_eq!(
        quota("shop"),
        Quota {
            max_sessions: Some(1),
            requests_per_minute: Some(120),
            audio_minutes_per_day: Some(90.0)
        }
    );
    assert_eq!(quota("kiosk").max_sessions, Some(4));
    assert!(quota("staff").is_unlimited());
    let err = resolve(
        r#"
[[server.keys]]
id = "zero"
key = "zero-key-0123456789abcdef"
max_sessions = 0
"#,
    )
    .err()
    .unwrap();
    assert!(err.to_string().contains("`zero`"), "{err}");
}
