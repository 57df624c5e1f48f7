//! A scripted OpenAI-compatible chat endpoint on a loopback port (a remote model whose every
//! answer the test decides), and `voxd serve` using it.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use serde_json::{json, Value};

/// What the scripted endpoint answers, request by request.
#[derive(Clone)]
pub enum Reply {
    Call(&'static str, &'static str),
    /// Several calls at once (a model making parallel calls).
    Calls(Vec<(&'static str, &'static str)>),
    Text(&'static str),
}

#[derive(Clone, Default)]
pub struct Script {
    pub replies: Arc<Mutex<VecDeque<Reply>>>,
    /// The request bodies it received.
    pub bodies: Arc<Mutex<Vec<Value>>>,
}

impl Script {
    pub fn queue(&self, replies: &[Reply]) {
        self.replies.lock().unwrap().extend(replies.iter().cloned());
    }
    pub fn take_bodies(&self) -> Vec<Value> {
        std::mem::take(&mut *self.bodies.lock().unwrap())
    }
}

/// Streams `reply` as chat-completion chunks; a call's arguments come in two pieces.
pub fn sse(reply: Reply) -> String {
    let chunk = |delta: Value, finish: Value| {
        format!(
            "data: {}\n\n",
            json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 0, "model": "scripted",
                   "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
        )
    };
    let mut out = String::new();
    match reply {
        Reply::Call(name, args) => return sse(Reply::Calls(vec![(name, args)])),
        Reply::Calls(calls) => {
            for (i, (name, args)) in calls.into_iter().enumerate() {
                let id = if i == 0 {
                    "call_remote".to_string()
                } else {
                    format!("call_remote_{i}")
                };
                let (a, b) = args.split_at(args.len() / 2);
                out += &chunk(
                    json!({"role": "assistant", "tool_calls": [{"index": i, "id": id, "type": "function", "function": {"name": name, "arguments": ""}}]}),
                    Value::Null,
                );
                for piece in [a, b] {
                    out += &chunk(
                        json!({"tool_calls": [{"index": i, "function": {"arguments": piece}}]}),
                        Value::Null,
                    );
                }
            }
            out += &chunk(json!({}), json!("tool_calls"));
        }
        Reply::Text(t) => {
            out += &chunk(json!({"role": "assistant", "content": t}), Value::Null);
            out += &chunk(json!({}), json!("stop"));
        }
    }
    out + "data: [DONE]\n\n"
}

/// Starts the scripted endpoint; returns its base URL (with `/v1`).
pub async fn scripted_llm(script: Script) -> String {
    use axum::routing::post;
    let app = axum::Router::new()
        .route(
            "/v1/chat/completions",
            post(
                |axum::extract::State(s): axum::extract::State<Script>,
                 axum::Json(body): axum::Json<Value>| async move {
                    s.bodies.lock().unwrap().push(body);
                    let reply = s
                        .replies
                        .lock()
                        .unwrap()
                        .pop_front()
                        .unwrap_or(Reply::Text("Nothing scripted."));
                    axum::response::Response::builder()
                        .header("content-type", "text/event-stream")
                        .body(axum::body::Body::from(sse(reply)))
                        .unwrap()
                },
            ),
        )
        .with_state(script);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}/v1")
}

/// `voxd serve` with the configuration file `cfg`, the knowledge base `kb` and the scripted
/// model at `llm_url` (no voice), once it is ready; and its `http://` base.
pub async fn serve_scripted(
    cfg: &std::path::Path,
    kb: &std::path::Path,
    llm_url: &str,
) -> (super::ServeProcess, String) {
    let server = super::ServeProcess::start(&[
        "--config".as_ref(),
        cfg.as_os_str(),
        "--kb".as_ref(),
        kb.as_os_str(),
        "--llm-url".as_ref(),
        llm_url.as_ref(),
        "--llm-model".as_ref(),
        "scripted".as_ref(),
        "--no-tts".as_ref(),
    ]);
    let http = format!("http://{}", server.addr);
    // The server is ready once the language model is.
    let client = reqwest::Client::new();
    for _ in 0..600 {
        let r = client.get(format!("{http}/readyz")).send().await;
        if r.is_ok_and(|r| r.status() == 200) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    (server, http)
}
