//! OpenTelemetry export: the real `voxd serve` binary, started with `--otlp-endpoint`, sends one
//! spoken turn's spans over OTLP/HTTP (protobuf) to a collector listening on loopback (an axum
//! route decoding the requests with the OTLP protobuf types). The trace must have the shape an
//! operator follows in Jaeger or Tempo: `session` at the root, `asr` and `response` under it,
//! `retrieval` and `llm` under the response, ids and outcomes as attributes.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{any_value, KeyValue};
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use serde_json::json;
use voxd::client::{self, Incoming};
use voxd::protocol::ServerEvent;

#[derive(Default)]
struct Received {
    spans: Vec<Span>,
    service_names: Vec<String>,
    content_types: Vec<String>,
}

/// A minimal OTLP/HTTP collector on 127.0.0.1: `POST /v1/traces` with protobuf bodies.
async fn collector() -> (String, Arc<Mutex<Received>>) {
    use axum::body::Bytes;
    use axum::http::{header, HeaderMap, StatusCode};
    let received = Arc::new(Mutex::new(Received::default()));
    let sink = received.clone();
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |headers: HeaderMap, body: Bytes| {
            let sink = sink.clone();
            async move {
                let request = match ExportTraceServiceRequest::decode(body) {
                    Ok(r) => r,
                    Err(_) => return (StatusCode::BAD_REQUEST, Vec::new()),
                };
                let mut got = sink.lock().unwrap();
                got.content_types.push(
                    headers
                        .get(header::CONTENT_TYPE)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_string(),
                );
                for rs in request.resource_spans {
                    if let Some(name) = rs
                        .resource
                        .as_ref()
                        .and_then(|r| string_attr(&r.attributes, "service.name"))
                    {
                        got.service_names.push(name);
                    }
                    for ss in rs.scope_spans {
                        got.spans.extend(ss.spans);
                    }
                }
                (
                    StatusCode::OK,
                    ExportTraceServiceResponse::default().encode_to_vec(),
                )
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}"), received)
}

fn attr<'a>(attrs: &'a [KeyValue], key: &str) -> Option<&'a any_value::Value> {
    attrs
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v| v.value.as_ref())
}

fn string_attr(attrs: &[KeyValue], key: &str) -> Option<String> {
    match attr(attrs, key)? {
        any_value::Value::StringValue(s) => Some(s.clone()),
        _ => None,
    }
}

fn number_attr(attrs: &[KeyValue], key: &str) -> Option<f64> {
    match attr(attrs, key)? {
        any_value::Value::DoubleValue(v) => Some(*v),
        any_value::Value::IntValue(v) => Some(*v as f64),
        _ => None,
    }
}

async fn wait_ready(http: &str, server: &common::ServeProcess) {
    let deadline = Instant::now() + Duration::from_secs(300);
    while Instant::now() < deadline {
        if let Ok(r) = reqwest::get(format!("{http}/readyz")).await {
            if r.status() == 200 {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("voxd serve never became ready:\n{}", server.log_tail());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_turn_exports_a_nested_trace() {
    let dir = tempfile::tempdir().unwrap();
    let kb = common::kb_added_by_cli(dir.path());
    let (endpoint, received) = collector().await;
    let server = common::ServeProcess::start_with_env(
        &[
            "--kb".as_ref(),
            kb.as_os_str(),
            "--otlp-endpoint".as_ref(),
            endpoint.as_ref(),
            // The model answers (and its span is in the trace); extractive answers have none.
            "--llm-answer-mode".as_ref(),
            "checked".as_ref(),
        ],
        // Export every 100 ms rather than every 5 s, so the test does not wait.
        &[("OTEL_BSP_SCHEDULE_DELAY", "100")],
    );
    let http = format!("http://{}", server.addr);
    wait_ready(&http, &server).await;

    let rate = 16_000;
    let mut audio = common::speak(dir.path(), "What time do you open on Sunday?", rate);
    audio.extend(vec![0.0; rate as usize * 2]);
    let url = format!("ws://{}/v1/realtime", server.addr);
    let (mut tx, mut rx) = client::connect(&url, None).await.unwrap();
    tx.update_session(json!({"type": "realtime",
        "audio": {"input": {"format": {"type": "audio/pcm", "rate": rate}}}}))
        .await
        .unwrap();
    let sender = tokio::spawn(async move {
        tx.stream(&audio, rate, 20, true, true).await.unwrap();
        tx
    });
    let mut session_id = None;
    let done = tokio::time::timeout(Duration::from_secs(300), async {
        while let Some(msg) = rx.next().await {
            match msg.unwrap() {
                Incoming::Event(ServerEvent::SessionCreated { session }) => {
                    session_id = session["id"].as_str().map(String::from);
                }
                Incoming::Event(ServerEvent::ResponseDone { response }) => return response,
                _ => {}
            }
        }
        panic!("the session ended without an answer");
    })
    .await
    .expect("hang guard");
    assert_eq!(done["status"], "completed", "{done}");
    let session_id = session_id.expect("session.created");
    let response_id = done["id"].as_str().unwrap().to_string();
    // Closing the socket ends the session span, the last one to be exported.
    let mut tx = sender.await.unwrap();
    tx.close().await.unwrap();
    drop(rx);

    let deadline = Instant::now() + Duration::from_secs(60);
    let spans = loop {
        {
            let got = received.lock().unwrap();
            if got.spans.iter().any(|s| s.name == "session") {
                break got.spans.clone();
            }
        }
        assert!(
            Instant::now() < deadline,
            "no session span reached the collector:\n{}",
            server.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    {
        let got = received.lock().unwrap();
        assert!(got.service_names.iter().all(|n| n == "voxd"), "resource");
        assert!(!got.service_names.is_empty());
        assert!(got
            .content_types
            .iter()
            .all(|c| c == "application/x-protobuf"));
    }

    let by_name = |name: &str| -> Vec<&Span> { spans.iter().filter(|s| s.name == name).collect() };
    let session = by_name("session");
    assert_eq!(session.len(), 1, "one session span");
    let session = session[0];
    assert!(session.parent_span_id.is_empty(), "session is the root");
    assert_eq!(
        string_attr(&session.attributes, "id").as_deref(),
        Some(session_id.as_str())
    );
    // Everything the turn did is in the session's trace.
    let trace: Vec<&Span> = spans
        .iter()
        .filter(|s| s.trace_id == session.trace_id)
        .collect();
    let ids: HashMap<&[u8], &Span> = trace.iter().map(|s| (&s.span_id[..], *s)).collect();
    let parent_name = |s: &Span| ids.get(&s.parent_span_id[..]).map(|p| p.name.as_str());

    let asr = by_name("asr");
    assert!(!asr.is_empty(), "an asr span per transcription");
    for s in &asr {
        assert_eq!(s.trace_id, session.trace_id);
        assert_eq!(parent_name(s), Some("session"));
        assert!(
            number_attr(&s.attributes, "turn").is_some(),
            "{:?}",
            s.attributes
        );
    }

    let response: Vec<&Span> = by_name("response")
        .into_iter()
        .filter(|s| string_attr(&s.attributes, "id").as_deref() == Some(response_id.as_str()))
        .collect();
    assert_eq!(response.len(), 1, "the answer's response span");
    let response = response[0];
    assert_eq!(parent_name(response), Some("session"));
    assert_eq!(
        string_attr(&response.attributes, "status").as_deref(),
        Some("completed")
    );
    assert!(string_attr(&response.attributes, "answers").is_some_and(|a| a.starts_with("item")));
    let first_token_ms = number_attr(&response.attributes, "first_token_ms").unwrap();
    let response_ms = (response.end_time_unix_nano - response.start_time_unix_nano) as f64 / 1e6;
    assert!(
        first_token_ms > 0.0 && first_token_ms <= response_ms,
        "first token {first_token_ms} ms within the response's {response_ms} ms"
    );
    assert!(number_attr(&response.attributes, "prompt_tokens").unwrap() > 0.0);
    assert!(number_attr(&response.attributes, "output_tokens").unwrap() > 0.0);

    // Under the response: the knowledge-base search (unless it was done while the person paused,
    // under `prepare`), then the generation.
    let children = |name: &str| -> Vec<&Span> {
        trace
            .iter()
            .copied()
            .filter(|s| s.name == name && s.parent_span_id == response.span_id)
            .collect()
    };
    let llm = children("llm");
    assert_eq!(llm.len(), 1, "one llm span under the response");
    let llm = llm[0];
    assert!(llm.start_time_unix_nano >= response.start_time_unix_nano);
    assert!(llm.end_time_unix_nano <= response.end_time_unix_nano);
    assert!(number_attr(&llm.attributes, "first_token_ms").is_some());
    for r in children("retrieval") {
        assert!(
            r.end_time_unix_nano <= llm.start_time_unix_nano,
            "retrieval first"
        );
    }
    let searched = !children("retrieval").is_empty()
        || trace
            .iter()
            .any(|s| s.name == "prepare" && parent_name(s) == Some("session"));
    assert!(searched, "the knowledge base was searched for the answer");
    for s in &trace {
        assert!(s.end_time_unix_nano >= s.start_time_unix_nano, "{}", s.name);
    }
}

#[test]
fn a_malformed_endpoint_stops_the_start_with_a_clear_message() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_voxd"))
        .env("VOXD_HOME", common::home())
        .args(["serve", "--no-pull", "--otlp-endpoint", "localhost:4318"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("otlp_endpoint") && err.contains("http://"),
        "{err}"
    );
}
