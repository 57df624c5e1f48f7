//! `/v1/realtime/calls` as a hostile or careless client uses it: every mistake gets a typed
//! error, offers beyond the session cap are refused and their places come back when calls end,
//! and garbage on a call's UDP port stops nothing. (A whole call, from aiortc, is in
//! tests/clients.rs.)

mod common;

use std::time::{Duration, Instant};

use serde_json::Value;
use str0m::media::{Direction, MediaKind};
use voxd::server::ServerSettings;

const KEY: &str = "calls-key-0123456789abcdef";

/// An SDP offer as a browser makes one: an audio track and the `oai-events` channel.
fn offer(audio: bool) -> String {
    let mut rtc = str0m::Rtc::new(Instant::now());
    let mut change = rtc.sdp_api();
    if audio {
        change.add_media(MediaKind::Audio, Direction::SendRecv, None, None, None);
    }
    change.add_channel("oai-events".into());
    let (offer, _pending) = change.apply().unwrap();
    offer.to_sdp_string()
}

async fn server(max_sessions: usize) -> String {
    let settings = ServerSettings {
        api_key: Some(KEY.into()),
        max_sessions,
        ..Default::default()
    };
    common::start_full(settings, None, None).await.1
}

async fn post(base: &str, key: Option<&str>, kind: &str, body: Vec<u8>) -> (u16, Value, String) {
    let mut r = reqwest::Client::new()
        .post(format!("{base}/v1/realtime/calls"))
        .header("content-type", kind)
        .body(body);
    if let Some(k) = key {
        r = r.header("authorization", format!("Bearer {k}"));
    }
    let r = r.send().await.unwrap();
    let status = r.status().as_u16();
    let location = r
        .headers()
        .get("location")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    let text = r.text().await.unwrap();
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, body, location)
}

fn code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("")
}

async fn hang_up(base: &str, location: &str) -> u16 {
    reqwest::Client::new()
        .delete(format!("{base}{location}"))
        .header("authorization", format!("Bearer {KEY}"))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test]
async fn every_bad_offer_gets_a_typed_error() {
    let base = server(8).await;
    let sdp = "application/sdp";
    let (status, body, _) = post(&base, None, sdp, offer(true).into_bytes()).await;
    assert_eq!((status, code(&body)), (401, "invalid_api_key"));
    let (status, body, _) = post(&base, Some(KEY), sdp, b"v=0\r\nnonsense".to_vec()).await;
    assert_eq!((status, code(&body)), (400, "invalid_sdp"), "{body}");
    let (status, body, _) = post(&base, Some(KEY), sdp, offer(false).into_bytes()).await;
    assert_eq!((status, code(&body)), (400, "invalid_sdp"), "{body}");
    let huge = format!("{}a=x-padding:{}\r\n", offer(true), "x".repeat(100_000));
    let (status, body, _) = post(&base, Some(KEY), sdp, huge.into_bytes()).await;
    assert_eq!((status, code(&body)), (413, "payload_too_large"), "{body}");
    let (status, body, _) = post(&base, Some(KEY), "application/json", b"{}".to_vec()).await;
    assert_eq!((status, code(&body)), (415, "unsupported_media_type"));
    let (status, body, _) = post(&base, Some(KEY), sdp, vec![0xff, 0xfe, 0]).await;
    assert_eq!((status, code(&body)), (400, "invalid_sdp"));
    // The multipart form: `sdp` is required, `session` must be JSON.
    let form = |parts: &[(&str, &str)]| {
        let mut body = String::new();
        for (name, value) in parts {
            body.push_str(&format!(
                "--XyZ\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n"
            ));
        }
        body.push_str("--XyZ--\r\n");
        body.into_bytes()
    };
    let multipart = "multipart/form-data; boundary=XyZ";
    let (status, body, _) = post(&base, Some(KEY), multipart, form(&[("session", "{}")])).await;
    assert_eq!((status, code(&body)), (400, "missing_required_parameter"));
    let bad_session = form(&[("sdp", &offer(true)), ("session", "{not json")]);
    let (status, body, _) = post(&base, Some(KEY), multipart, bad_session).await;
    assert_eq!((status, code(&body)), (400, "invalid_json"));
    let good = form(&[
        ("sdp", &offer(true)),
        ("session", r#"{"instructions": "Be brief."}"#),
    ]);
    let (status, answer, location) = post(&base, Some(KEY), multipart, good).await;
    assert_eq!(status, 201, "{answer}");
    assert!(answer.as_str().unwrap().starts_with("v=0"), "{answer}");
    assert_eq!(hang_up(&base, &location).await, 200);
    assert_eq!(hang_up(&base, &location).await, 404);
}

#[tokio::test]
async fn offers_beyond_the_cap_are_refused_and_places_come_back() {
    let base = server(3).await;
    let open_fds = || std::fs::read_dir("/proc/self/fd").unwrap().count();
    let fds_before = open_fds();
    let mut calls = Vec::new();
    let mut refused = 0;
    // A thousand offers from one key: three calls, the rest refused with a typed error, and the
    // refused ones hold nothing (no UDP port, no session).
    for _ in 0..1000 {
        let (status, body, location) = post(
            &base,
            Some(KEY),
            "application/sdp",
            offer(true).into_bytes(),
        )
        .await;
        match status {
            201 => calls.push(location),
            503 => {
                assert_eq!(code(&body), "too_many_sessions");
                refused += 1;
            }
            other => panic!("{other}: {body}"),
        }
    }
    assert_eq!((calls.len(), refused), (3, 997));
    let held = open_fds().saturating_sub(fds_before);
    assert!(
        held <= 10,
        "{held} more file descriptors open for three calls"
    );
    for location in &calls {
        assert_eq!(hang_up(&base, location).await, 200);
    }
    // Hung up, the calls' sessions end and give their places back.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, _, location) = post(
            &base,
            Some(KEY),
            "application/sdp",
            offer(true).into_bytes(),
        )
        .await;
        if status == 201 {
            hang_up(&base, &location).await;
            break;
        }
        assert!(Instant::now() < deadline, "no place came back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The port in an answer's host candidate.
fn candidate_port(answer: &Value) -> u16 {
    let sdp = answer.as_str().unwrap();
    let candidate = sdp
        .lines()
        .find(|l| l.starts_with("a=candidate"))
        .unwrap_or_else(|| panic!("no candidate in {sdp}"));
    candidate
        .split_whitespace()
        .nth(5)
        .unwrap()
        .parse()
        .unwrap()
}

/// `--rtc-udp-ports`: calls take their media port from the range; when it is all taken the
/// offer gets a typed 503, and a port comes back when its call ends.
#[tokio::test]
async fn calls_take_their_ports_from_the_configured_range() {
    // Two free ports next to each other.
    let (first, last) = loop {
        let a = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let p = a.local_addr().unwrap().port();
        drop(a);
        if p < 65_000 && std::net::UdpSocket::bind(("127.0.0.1", p + 1)).is_ok() {
            break (p, p + 1);
        }
    };
    let settings = ServerSettings {
        api_key: Some(KEY.into()),
        max_sessions: 8,
        rtc_udp_ports: Some(
            voxd::server::config::parse_port_range(&format!("{first}-{last}")).unwrap(),
        ),
        ..Default::default()
    };
    let base = common::start_full(settings, None, None).await.1;
    let sdp = "application/sdp";
    let mut ports = Vec::new();
    let mut calls = Vec::new();
    for _ in 0..2 {
        let (status, answer, location) =
            post(&base, Some(KEY), sdp, offer(true).into_bytes()).await;
        assert_eq!(status, 201, "{answer}");
        ports.push(candidate_port(&answer));
        calls.push(location);
    }
    ports.sort();
    assert_eq!(ports, [first, last]);
    let (status, body, _) = post(&base, Some(KEY), sdp, offer(true).into_bytes()).await;
    assert_eq!((status, code(&body)), (503, "webrtc_unavailable"), "{body}");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("--rtc-udp-ports"));
    assert_eq!(hang_up(&base, &calls[0]).await, 200);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, answer, location) =
            post(&base, Some(KEY), sdp, offer(true).into_bytes()).await;
        if status == 201 {
            assert!((first..=last).contains(&candidate_port(&answer)));
            hang_up(&base, &location).await;
            break;
        }
        assert!(Instant::now() < deadline, "the port never came back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn garbage_on_a_calls_port_stops_nothing() {
    let base = server(4).await;
    let (status, answer, location) = post(
        &base,
        Some(KEY),
        "application/sdp",
        offer(true).into_bytes(),
    )
    .await;
    assert_eq!(status, 201);
    // The port from the answer's host candidate.
    let sdp = answer.as_str().unwrap().to_string();
    let candidate = sdp
        .lines()
        .find(|l| l.starts_with("a=candidate"))
        .unwrap_or_else(|| panic!("no candidate in {sdp}"));
    let fields: Vec<&str> = candidate.split_whitespace().collect();
    let port: u16 = fields[5].parse().unwrap();
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    // DTLS-looking records, RTP-looking packets and noise, 20,000 of them as fast as they go.
    for i in 0..20_000u32 {
        let mut packet = vec![(i % 256) as u8; 16 + (i % 1200) as usize];
        packet[0] = [22u8, 0x80, 0x00, 0xff][(i % 4) as usize];
        let _ = socket.send_to(&packet, ("127.0.0.1", port)).await;
    }
    let health = reqwest::get(format!("{base}/healthz")).await.unwrap();
    assert_eq!(health.status().as_u16(), 200);
    assert_eq!(hang_up(&base, &location).await, 200);
}

/// A sideband WebSocket (`/v1/realtime?call_id=…`) joins a call's session: it sees the session's
/// events and its client events act on it; only the key that placed the call (or an admin) may
/// join, and an unknown call is 404.
#[tokio::test]
async fn a_sideband_websocket_joins_the_calls_session() {
    use voxd::client::{self, ClientError};
    use voxd::protocol::ServerEvent;
    let base = server(4).await;
    let (status, _, location) = post(
        &base,
        Some(KEY),
        "application/sdp",
        offer(true).into_bytes(),
    )
    .await;
    assert_eq!(status, 201);
    let id = location.rsplit('/').next().unwrap().to_string();
    let ws = base.replace("http://", "ws://");
    let (mut tx, mut rx) = client::connect(&format!("{ws}/v1/realtime?call_id={id}"), Some(KEY))
        .await
        .unwrap();
    tx.update_session(serde_json::json!({"instructions": "Speak like a harbour pilot."}))
        .await
        .unwrap();
    let (events, _) =
        common::read_until(&mut rx, |e| e.iter().any(|e| e.kind() == "session.updated")).await;
    let updated = events
        .iter()
        .find_map(|e| match e {
            ServerEvent::SessionUpdated { session } => Some(session.clone()),
            _ => None,
        })
        .unwrap();
    assert_eq!(updated["instructions"], "Speak like a harbour pilot.");
    match client::connect(&format!("{ws}/v1/realtime?call_id=rtc_nope"), Some(KEY)).await {
        Err(ClientError::Refused { status, .. }) => assert_eq!(status, 404),
        other => panic!("{:?}", other.map(|_| ())),
    }
    // At most four sidebands a call: the one above and three more; a fifth is refused.
    let url = format!("{ws}/v1/realtime?call_id={id}");
    let mut more = Vec::new();
    for _ in 0..3 {
        more.push(client::connect(&url, Some(KEY)).await.unwrap());
    }
    match client::connect(&url, Some(KEY)).await {
        Err(ClientError::Refused { status, body }) => {
            assert_eq!(status, 429);
            assert!(body.contains("too_many_sidebands"), "{body}");
        }
        other => panic!("{:?}", other.map(|_| ())),
    }
    drop(more);
    // Hung up, the sideband closes with the call.
    assert_eq!(hang_up(&base, &location).await, 200);
    let (_, closed) = common::read_until(&mut rx, |_| false).await;
    assert!(closed.is_some());
}

/// A page on another origin that the operator listed (`--allowed-origins`) may place a call: its
/// preflight is answered and the answer's `Location` is exposed; any other origin is refused, and
/// other routes get no CORS at all.
#[tokio::test]
async fn a_listed_origin_may_place_a_call_from_its_page() {
    let settings = ServerSettings {
        api_key: Some(KEY.into()),
        allowed_origins: vec!["https://app.example".into()],
        ..Default::default()
    };
    let base = common::start_full(settings, None, None).await.1;
    let http = reqwest::Client::new();
    let preflight = |origin: &'static str, path: &'static str| {
        http.request(reqwest::Method::OPTIONS, format!("{base}{path}"))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "authorization, content-type",
            )
            .send()
    };
    let ok = preflight("https://app.example", "/v1/realtime/calls")
        .await
        .unwrap();
    assert_eq!(ok.status().as_u16(), 204);
    let h = ok.headers();
    assert_eq!(h["access-control-allow-origin"], "https://app.example");
    assert!(h["access-control-allow-methods"]
        .to_str()
        .unwrap()
        .contains("POST"));
    assert!(h["access-control-allow-headers"]
        .to_str()
        .unwrap()
        .contains("content-type"));
    let evil = preflight("https://evil.example", "/v1/realtime/calls")
        .await
        .unwrap();
    assert_eq!(evil.status().as_u16(), 403);
    // Only the WebRTC routes: the rest of the API answers no preflight.
    let other = preflight("https://app.example", "/v1/kb/search")
        .await
        .unwrap();
    assert!(other.headers().get("access-control-allow-origin").is_none());

    let r = http
        .post(format!("{base}/v1/realtime/calls"))
        .header("origin", "https://app.example")
        .header("authorization", format!("Bearer {KEY}"))
        .header("content-type", "application/sdp")
        .body(offer(true))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 201);
    assert_eq!(
        r.headers()["access-control-allow-origin"],
        "https://app.example"
    );
    assert_eq!(r.headers()["access-control-expose-headers"], "Location");
    let location = r.headers()["location"].to_str().unwrap().to_string();
    assert_eq!(hang_up(&base, &location).await, 200);
}
