//! voxd tried as a hostile client would: each test sends what a careless or malicious client
//! might, asserts the typed error it gets, and checks that the server still transcribes after it.

mod common;

use std::sync::Arc;
use std::time::Duration;

use reqwest::multipart::{Form, Part};
use reqwest::StatusCode;
use serde_json::{json, Value};
use voxd::asr::{Asr, AsrError, Request, WhisperConfig, WhisperPool};
use voxd::client::{self, Receiver, Sender};
use voxd::protocol::ServerEvent;
use voxd::server::ServerSettings;
use voxd::wer::wer;

const JFK: &str = "And so my fellow Americans, ask not what your country can do for you, ask what you can do for your country.";

fn jfk_16k() -> Vec<f32> {
    common::audio_at("jfk.wav", 16_000)
}

use common::read_until;

fn error_code(e: &ServerEvent) -> Option<&str> {
    match e {
        ServerEvent::Error { error } => error.code.as_deref(),
        _ => None,
    }
}

/// Opens a transcription session for 16 kHz PCM, turns committed by the client.
async fn open(url: &str) -> (Sender, Receiver) {
    let (mut tx, mut rx) = client::connect(url, None).await.unwrap();
    let (first, _) = read_until(&mut rx, |e| !e.is_empty()).await;
    assert_eq!(first[0].kind(), "session.created");
    tx.update_session(json!({"type": "transcription",
        "audio": {"input": {"format": {"type": "audio/pcm", "rate": 16000}, "turn_detection": null}}}))
        .await
        .unwrap();
    let (ev, _) = read_until(&mut rx, |e| e.iter().any(|e| e.kind() == "session.updated")).await;
    assert!(ev.iter().all(|e| e.kind() != "error"), "{ev:?}");
    (tx, rx)
}

/// Streams jfk.wav and asserts its transcript comes back (WER <= 15 %).
async fn still_transcribes(tx: &mut Sender, rx: &mut Receiver) {
    tx.stream(&jfk_16k(), 16_000, 100, false, false)
        .await
        .unwrap();
    tx.send_text(json!({"type": "input_audio_buffer.commit"}).to_string())
        .await
        .unwrap();
    let (events, closed) = read_until(rx, |e| {
        e.iter().any(|e| {
            matches!(e, ServerEvent::TranscriptionCompleted { transcript, .. }
                if wer(JFK, transcript) <= 0.15)
        })
    })
    .await;
    assert_eq!(closed, None, "{events:?}");
}

#[tokio::test]
async fn a_panicking_transcription_fails_alone_and_the_pool_keeps_serving() {
    // One worker: if a panic killed it, nothing would be transcribed afterwards.
    let pool = tokio::task::spawn_blocking(|| {
        WhisperPool::load(WhisperConfig {
            pool_size: 1,
            threads: 1,
            ..WhisperConfig::new(common::asr_model())
        })
        .unwrap()
    })
    .await
    .unwrap();
    for _ in 0..3 {
        let err = pool
            .transcribe_with_injected_panic(Request::new(vec![0.0; 16_000]))
            .await
            .unwrap_err();
        assert!(matches!(err, AsrError::Internal), "{err:?}");
    }
    assert_eq!(pool.queue_depth(), (0, 0));
    assert!(Asr::check_ready(&pool).is_ok());
    let t = pool.transcribe(Request::new(jfk_16k())).await.unwrap();
    assert!(wer(JFK, &t.text) <= 0.10, "{}", t.text);
}

#[tokio::test]
async fn strings_that_would_reach_c_apis_are_refused_at_the_edge() {
    let base = common::start_server(25 << 20, true).await;
    let wav = std::fs::read(common::data("jfk.wav")).unwrap();
    let post = |fields: Vec<(&'static str, String)>| {
        let mut form = Form::new().part(
            "file",
            Part::bytes(wav.clone()).file_name("jfk.wav".to_string()),
        );
        for (k, v) in fields {
            form = form.text(k, v);
        }
        let url = format!("{base}/v1/audio/transcriptions");
        async move {
            reqwest::Client::new()
                .post(url)
                .multipart(form)
                .send()
                .await
                .unwrap()
        }
    };
    // More bad requests than the pool has workers: before the fix each one killed a worker.
    for (field, value, code) in [
        ("prompt", "Ken\0nedy".to_string(), "invalid_prompt"),
        ("prompt", "Kennedy ".repeat(1000), "invalid_prompt"),
        ("language", "e\0n".to_string(), "invalid_language"),
        ("prompt", "\0".to_string(), "invalid_prompt"),
    ] {
        let r = post(vec![(field, value)]).await;
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"]["code"], code, "{body}");
        assert_eq!(body["error"]["param"], field, "{body}");
    }
    let r = post(vec![("prompt", "President Kennedy.".to_string())]).await;
    assert_eq!(r.status(), StatusCode::OK);
    let body: Value = r.json().await.unwrap();
    assert!(wer(JFK, body["text"].as_str().unwrap()) <= 0.10, "{body}");
    let ready: Value = reqwest::get(format!("{base}/readyz"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ready["status"], "ready", "{ready}");

    // The realtime session: the same strings through session.update.
    let url = base.replace("http://", "ws://") + "/v1/realtime";
    let (mut tx, mut rx) = open(&url).await;
    for (session, param, code) in [
        (
            json!({"type": "transcription", "audio": {"input": {"transcription": {"prompt": "a\0b"}}}}),
            "session.audio.input.transcription.prompt",
            "invalid_session_config",
        ),
        (
            json!({"type": "transcription", "audio": {"input": {"transcription": {"prompt": "x".repeat(5000)}}}}),
            "session.audio.input.transcription.prompt",
            "string_too_long",
        ),
        (
            json!({"type": "transcription", "audio": {"input": {"transcription": {"language": "e\0"}}}}),
            "session.audio.input.transcription.language",
            "invalid_session_config",
        ),
        (
            json!({"type": "transcription", "instructions": "y".repeat(40 * 1024)}),
            "session.instructions",
            "string_too_long",
        ),
    ] {
        tx.send_text(json!({"type": "session.update", "session": session}).to_string())
            .await
            .unwrap();
        let (events, _) = read_until(&mut rx, |e| e.iter().any(|e| e.kind() == "error")).await;
        let ServerEvent::Error { error } = events.last().unwrap() else {
            unreachable!()
        };
        assert_eq!(error.code.as_deref(), Some(code), "{error:?}");
        assert_eq!(error.param.as_deref(), Some(param), "{error:?}");
    }
    still_transcribes(&mut tx, &mut rx).await;
}

#[tokio::test]
async fn binary_frames_obey_the_append_limit_and_the_session_goes_on() {
    let settings = ServerSettings {
        limits: voxd::realtime::Limits {
            max_append_bytes: 64 * 1024,
            ..Default::default()
        },
        ..Default::default()
    };
    let (url, _) = common::start_realtime(settings).await;
    let (mut tx, mut rx) = open(&url).await;
    tx.send_binary(vec![0u8; 64 * 1024 + 2]).await.unwrap();
    let (events, closed) = read_until(&mut rx, |e| e.iter().any(|e| e.kind() == "error")).await;
    assert_eq!(closed, None);
    assert_eq!(error_code(events.last().unwrap()), Some("audio_too_large"));
    still_transcribes(&mut tx, &mut rx).await;
}

#[tokio::test]
async fn a_burst_of_connections_cannot_pass_the_session_cap() {
    let settings = ServerSettings {
        max_sessions: 3,
        ..Default::default()
    };
    let (url, state) = common::start_realtime(settings).await;
    // 24 connections at once; the cap is checked and counted in one step before the upgrade.
    let attempts: Vec<_> = (0..24)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { client::connect(&url, None).await })
        })
        .collect();
    let mut open = Vec::new();
    let mut refused = 0;
    for a in attempts {
        match a.await.unwrap() {
            Ok(conn) => open.push(conn),
            Err(client::ClientError::Refused { status, body }) => {
                assert_eq!(status, 503);
                assert!(body.contains("too_many_sessions"), "{body}");
                refused += 1;
            }
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(open.len(), 3, "{} sessions got in", open.len());
    assert_eq!(refused, 21);
    assert!(state.live_sessions() <= 3);
    drop(open);
    // Slots come back when sessions end: a new one gets in.
    let mut got_in = false;
    for _ in 0..200 {
        if client::connect(&url, None).await.is_ok() {
            got_in = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(got_in, "slots were not released");
}

/// One request with a Host, an Origin, a content type, an API key sent one way or another.
struct Ask<'a> {
    method: reqwest::Method,
    path: &'a str,
    host: Option<&'a str>,
    origin: Option<&'a str>,
    content_type: Option<&'a str>,
    key: Key<'a>,
}

#[derive(Clone, Copy)]
enum Key<'a> {
    None,
    Bearer(&'a str),
    Subprotocol(&'a str),
}

impl Ask<'_> {
    async fn status(&self, base: &str) -> (u16, Value) {
        let client = reqwest::Client::new();
        let mut req = client.request(self.method.clone(), format!("{base}{}", self.path));
        if let Some(h) = self.host {
            req = req.header("host", h);
        }
        if let Some(o) = self.origin {
            req = req.header("origin", o);
        }
        if let Some(c) = self.content_type {
            req = req.header("content-type", c).body("{}");
        }
        match self.key {
            Key::None => {}
            Key::Bearer(k) => req = req.header("authorization", format!("Bearer {k}")),
            Key::Subprotocol(k) => {
                req = req.header(
                    "sec-websocket-protocol",
                    format!("realtime, openai-insecure-api-key.{k}"),
                )
            }
        }
        let r = req.send().await.unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }
}

fn get(path: &str) -> Ask<'_> {
    Ask {
        method: reqwest::Method::GET,
        path,
        host: None,
        origin: None,
        content_type: None,
        key: Key::None,
    }
}

async fn start_guarded(api_key: Option<&str>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let state = Arc::new(voxd::server::AppState::with_settings(ServerSettings {
        api_key: api_key.map(str::to_string),
        bind: Some(addr),
        ..Default::default()
    }));
    let p = tokio::task::spawn_blocking(common::pool).await.unwrap();
    state.set_asr(p);
    tokio::spawn(async move {
        voxd::server::serve(listener, state, std::future::pending())
            .await
            .unwrap();
    });
    format!("http://{addr}")
}

#[tokio::test]
async fn host_origin_content_type_and_api_key_are_checked_on_every_route() {
    // No API key (the default): loopback pages and the server's own page only.
    let base = start_guarded(None).await;
    let own = base.clone();
    let (s, body) = Ask {
        host: Some("evil.example:8080"),
        ..get("/v1/models")
    }
    .status(&base)
    .await;
    assert_eq!(
        (s, body["error"]["code"].as_str()),
        (403, Some("host_not_allowed"))
    );
    for (origin, allowed) in [
        (own.as_str(), true),
        ("http://localhost:5173", true),
        ("https://evil.example", false),
        ("null", false),
    ] {
        for path in ["/v1/models", "/v1/realtime", "/metrics"] {
            let (s, body) = Ask {
                origin: Some(origin),
                ..get(path)
            }
            .status(&base)
            .await;
            if allowed {
                assert_ne!(s, 403, "{origin} {path}: {body}");
            } else {
                assert_eq!(s, 403, "{origin} {path}");
                assert_eq!(body["error"]["code"], "origin_not_allowed");
            }
        }
    }
    // A cross-site form or a text/plain body cannot reach the JSON routes.
    for path in [
        "/v1/kb/search",
        "/v1/chat/completions",
        "/v1/embeddings",
        "/v1/kb/documents",
    ] {
        for ct in ["text/plain", "application/x-www-form-urlencoded"] {
            let (s, body) = Ask {
                method: reqwest::Method::POST,
                content_type: Some(ct),
                ..get(path)
            }
            .status(&base)
            .await;
            assert_eq!(s, 415, "{path} {ct}: {body}");
            assert_eq!(body["error"]["code"], "unsupported_media_type");
        }
    }
    // The demo page carries a Content-Security-Policy.
    let r = reqwest::get(format!("{base}/")).await.unwrap();
    let csp = r.headers()["content-security-policy"].to_str().unwrap();
    assert!(
        csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"),
        "{csp}"
    );

    // With an API key: every API route × {no key, wrong key, Bearer, subprotocol}.
    let base = start_guarded(Some("s3cret")).await;
    let public = ["/", "/healthz", "/readyz", "/app.js", "/sdk/voxd.js"];
    let api = [
        (reqwest::Method::GET, "/v1/models"),
        (reqwest::Method::GET, "/v1/realtime"),
        (reqwest::Method::GET, "/metrics"),
        (reqwest::Method::GET, "/v1/kb/documents"),
        (reqwest::Method::GET, "/v1/kb/documents/doc_1"),
        (reqwest::Method::DELETE, "/v1/kb/documents/doc_1"),
        (reqwest::Method::POST, "/v1/kb/search"),
        (reqwest::Method::POST, "/v1/kb/documents"),
        (reqwest::Method::POST, "/v1/chat/completions"),
        (reqwest::Method::POST, "/v1/embeddings"),
        (reqwest::Method::POST, "/v1/audio/transcriptions"),
    ];
    for path in public {
        let (s, _) = get(path).status(&base).await;
        assert_eq!(s, 200, "{path} is public");
    }
    for (method, path) in api {
        for (key, allowed) in [
            (Key::None, false),
            (Key::Bearer("wrong"), false),
            (Key::Bearer("s3cret-and-more"), false),
            (Key::Subprotocol("wrong"), false),
            (Key::Bearer("s3cret"), true),
            (Key::Subprotocol("s3cret"), true),
        ] {
            let json = (method == reqwest::Method::POST).then_some("application/json");
            let (s, body) = Ask {
                method: method.clone(),
                content_type: json,
                key,
                ..get(path)
            }
            .status(&base)
            .await;
            if allowed {
                assert_ne!(s, 401, "{method} {path}: {body}");
            } else {
                assert_eq!(s, 401, "{method} {path}");
                assert_eq!(body["error"]["code"], "invalid_api_key");
            }
        }
    }
    // With a key, any page's origin may call (the key protects); readiness details need the key.
    let (s, _) = Ask {
        origin: Some("https://app.example"),
        key: Key::Bearer("s3cret"),
        ..get("/v1/models")
    }
    .status(&base)
    .await;
    assert_eq!(s, 200);
    let (_, anonymous) = get("/readyz").status(&base).await;
    assert_eq!(anonymous, json!({"status": "ready"}));
    let (_, operator) = Ask {
        key: Key::Bearer("s3cret"),
        ..get("/readyz")
    }
    .status(&base)
    .await;
    assert!(operator["asr"].is_string(), "{operator}");
}

#[tokio::test]
async fn an_answer_fails_closed_when_the_knowledge_base_cannot_be_searched() {
    // A knowledge base whose embedder is down: the fixture documents are stored, but a question
    // cannot be embedded, so nothing can be retrieved.
    let dir = tempfile::tempdir().unwrap();
    drop(common::fixture_kb(dir.path()).await);
    let dead = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dead_url = format!("http://{}/v1", dead.local_addr().unwrap());
    drop(dead);
    let local = common::embedder();
    let remote =
        voxd::rag::embed::RemoteEmbedder::connect(voxd::rag::embed::RemoteEmbedderConfig {
            base_url: dead_url,
            api_key: None,
            model: voxd::rag::embed::Embedder::model_name(&*local).to_string(),
            dimensions: Some(voxd::rag::embed::Embedder::dimensions(&*local)),
            max_tokens: 256,
            timeout: Duration::from_secs(2),
        })
        .await
        .unwrap();
    let store = voxd::rag::store::SqliteStore::open(&dir.path().join("kb.sqlite")).unwrap();
    let kb = voxd::rag::KnowledgeBase::new(
        Arc::new(store),
        Arc::new(remote),
        voxd::rag::KbSettings::default(),
    );
    let (url, _) =
        common::start_full(ServerSettings::default(), Some(kb), Some(common::llm())).await;
    let (mut tx, mut rx) = client::connect(&url, None).await.unwrap();
    read_until(&mut rx, |e| !e.is_empty()).await;
    let rate = 24_000;
    tx.update_session(json!({"type": "realtime",
        "audio": {"input": {"format": {"type": "audio/pcm", "rate": rate}}}}))
        .await
        .unwrap();
    read_until(&mut rx, |e| e.iter().any(|e| e.kind() == "session.updated")).await;
    let check = |events: &[ServerEvent]| {
        let done = events
            .iter()
            .find_map(|e| match e {
                ServerEvent::ResponseDone { response } => Some(response.clone()),
                _ => None,
            })
            .unwrap();
        assert_eq!(done["status"], "failed", "{done}");
        assert_eq!(
            done["status_details"]["error"]["code"], "retrieval_failed",
            "{done}"
        );
        let said: String = events
            .iter()
            .filter_map(|e| match e {
                ServerEvent::OutputTextDelta { delta, .. } => Some(delta.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(said, voxd::realtime::answer::CANNOT_LOOK_UP);
        // Nothing upstream leaks to the client: no URL, no port.
        let text = format!("{events:?}");
        assert!(!text.contains("127.0.0.1"), "{text}");
    };
    // A typed question.
    for v in [
        json!({"type": "conversation.item.create", "item": {"type": "message", "role": "user",
               "content": [{"type": "input_text", "text": "How much does a basic service cost?"}]}}),
        json!({"type": "response.create"}),
    ] {
        tx.send_text(v.to_string()).await.unwrap();
    }
    let (events, _) = read_until(&mut rx, |e| e.iter().any(|e| e.kind() == "response.done")).await;
    check(&events);
    // A spoken one: heard, transcribed, and answered the same way.
    let mut audio = common::speak(dir.path(), "What time do you open on Sunday?", rate);
    audio.extend(vec![0.0; rate as usize * 2]);
    tx.stream(&audio, rate, 20, true, false).await.unwrap();
    let (events, _) = read_until(&mut rx, |e| e.iter().any(|e| e.kind() == "response.done")).await;
    let heard = events.iter().find_map(|e| match e {
        ServerEvent::TranscriptionCompleted { transcript, .. } => Some(transcript.clone()),
        _ => None,
    });
    assert!(
        heard.is_some_and(|t| wer("what time do you open on sunday", &t) <= 0.3),
        "{events:?}"
    );
    check(&events);
}

#[tokio::test]
async fn a_full_knowledge_base_refuses_a_document_whole() {
    // A database limited to 384 KiB (`--kb-max-mb` in miniature): documents go in until one
    // would not fit.
    let dir = tempfile::tempdir().unwrap();
    let store =
        voxd::rag::store::SqliteStore::open_limited(&dir.path().join("kb.sqlite"), Some(384 << 10))
            .unwrap();
    let kb = voxd::rag::KnowledgeBase::new(
        Arc::new(store),
        common::embedder(),
        voxd::rag::KbSettings::default(),
    );
    let base = common::start_kb_server(ServerSettings::default(), kb).await;
    let http = reqwest::Client::new();
    let mut accepted = Vec::new();
    let mut refused = None;
    for n in 0..60 {
        let text: String = (0..120)
            .map(|i| format!("Document {n} sentence {i} says the workshop {i} opens at {n}. "))
            .collect();
        let title = format!("Notes {n}");
        let r = http
            .post(format!("{base}/v1/kb/documents"))
            .json(&json!({"title": title, "text": text}))
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let body: Value = r.json().await.unwrap();
        match status {
            201 => accepted.push(title),
            507 => {
                assert_eq!(body["error"]["code"], "kb_full", "{body}");
                assert!(
                    !body["error"]["message"].as_str().unwrap().contains('/'),
                    "{body}"
                );
                refused = Some(title);
                break;
            }
            s => panic!("{s} {body}"),
        }
    }
    let refused = refused.expect("the limit was never reached");
    assert!(!accepted.is_empty());
    // Nothing of the refused document is stored; every accepted one is whole.
    let list: Value = http
        .get(format!("{base}/v1/kb/documents"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let titles: Vec<&str> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["title"].as_str().unwrap())
        .collect();
    assert_eq!(titles.len(), accepted.len(), "{list}");
    assert!(!titles.contains(&refused.as_str()), "{list}");
    for d in list["data"].as_array().unwrap() {
        assert!(d["chunks"].as_u64().unwrap() > 0, "{d}");
    }
    // The knowledge base still answers.
    let r = http
        .post(format!("{base}/v1/kb/search"))
        .json(&json!({"query": "When does workshop 7 open?"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
}
