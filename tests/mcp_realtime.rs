//! MCP servers a client attaches to a realtime session (`{"type": "mcp"}` in `session.tools`),
//! against a real `voxd serve`, the reference MCP server `server-everything` over Streamable
//! HTTP, and a scripted remote model (so each call is the one the test wants):
//!
//! - the listing (`mcp_list_tools.*` and its item), a call that needs no approval
//!   (`response.mcp_call*`, the result in the answer), a call approved and one declined
//!   (`mcp_approval_request` / `mcp_approval_response`), each in the audit trail and metrics;
//!   every event checked against the official openai-python types;
//! - the policy: a role that may not attach servers, a host not allowed, a redirect, a server
//!   that never answers: typed errors, and the session goes on.

mod common;

use common::everything::everything_over_http;
use common::scripted::{scripted_llm, serve_scripted, Reply, Script};
use serde_json::{json, Value};
use voxd::client::{self, Receiver, Sender};
use voxd::protocol::ServerEvent;

const ADMIN: &str = "sk-voxd-mcp-admin";
const AGENT: &str = "sk-voxd-mcp-agent";
const KIOSK: &str = "sk-voxd-mcp-kiosk";

fn config() -> String {
    format!(
        r#"
[server]
api_key = "{ADMIN}"
[[server.keys]]
id = "agent"
key = "{AGENT}"
role = "agent"
[[server.keys]]
id = "kiosk"
key = "{KIOSK}"
role = "public"
[tools.client_mcp]
roles = ["agent"]
allowed_hosts = ["127.0.0.1"]
allow_private = true
timeout_ms = 3000
max_result_bytes = 4096
"#
    )
}

async fn read_until(
    rx: &mut Receiver,
    done: impl FnMut(&[ServerEvent]) -> bool,
) -> Vec<ServerEvent> {
    let (events, closed) = common::read_until(rx, done).await;
    assert_eq!(closed, None, "the session closed: {events:?}");
    events
}

fn count(events: &[ServerEvent], kind: &str) -> usize {
    events.iter().filter(|e| e.kind() == kind).count()
}

fn json_of(e: &ServerEvent) -> Value {
    serde_json::from_str(&e.to_json()).unwrap()
}

/// The events of `kind`, as JSON.
fn all(events: &[ServerEvent], kind: &str) -> Vec<Value> {
    events
        .iter()
        .filter(|e| e.kind() == kind)
        .map(json_of)
        .collect()
}

fn error_codes(events: &[ServerEvent]) -> Vec<String> {
    all(events, "error")
        .iter()
        .filter_map(|e| e["error"]["code"].as_str().map(str::to_string))
        .collect()
}

async fn send(tx: &mut Sender, v: Value) {
    tx.send_text(v.to_string()).await.unwrap();
}

/// Opens a text session with `key` and these tools; returns it with the events up to the end
/// of every listing (completed or failed), and the session id.
async fn attach(url: &str, key: &str, tools: Value) -> (Sender, Receiver, Vec<ServerEvent>) {
    let (mut tx, mut rx) = client::connect(url, Some(key)).await.unwrap();
    let mut events = read_until(&mut rx, |e| !e.is_empty()).await;
    let servers = tools.as_array().map_or(0, |t| t.len());
    tx.update_session(json!({"type": "realtime", "output_modalities": ["text"], "tools": tools}))
        .await
        .unwrap();
    events.extend(
        read_until(&mut rx, |e| {
            count(e, "mcp_list_tools.completed") + count(e, "mcp_list_tools.failed") == servers
                || count(e, "error") > servers
        })
        .await,
    );
    (tx, rx, events)
}

/// Says `text` and asks for a response; returns the events up to its `response.done`.
async fn ask(tx: &mut Sender, rx: &mut Receiver, text: &str) -> Vec<ServerEvent> {
    ask_with(tx, rx, text, json!({})).await
}

/// Says `text` and asks for a response with these settings.
async fn ask_with(
    tx: &mut Sender,
    rx: &mut Receiver,
    text: &str,
    response: Value,
) -> Vec<ServerEvent> {
    send(
        tx,
        json!({"type": "conversation.item.create", "item": {"type": "message", "role": "user",
            "content": [{"type": "input_text", "text": text}]}}),
    )
    .await;
    send(tx, json!({"type": "response.create", "response": response})).await;
    read_until(rx, |e| {
        count(e, "response.done") == 1 || count(e, "error") == 1
    })
    .await
}

/// The `response.done` response of `events`.
fn done(events: &[ServerEvent]) -> Value {
    all(events, "response.done").pop().unwrap()["response"].clone()
}

/// `GET url` with the admin key: its JSON, or its text as a JSON string.
async fn admin_get(url: &str) -> Value {
    let text = reqwest::Client::new()
        .get(url)
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    serde_json::from_str(&text).unwrap_or(Value::String(text))
}

/// Every event validates as openai-python's `RealtimeServerEvent`.
fn conforms(events: &[ServerEvent]) {
    let python = common::python::openai_python();
    let lines: String = events.iter().map(|e| e.to_json() + "\n").collect();
    let mut child = std::process::Command::new(python)
        .arg(
            std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("tests/python/validate_events.py"),
        )
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(lines.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
}

fn everything_tool(server_url: &str) -> Value {
    json!([{"type": "mcp", "server_label": "everything", "server_url": server_url,
        "allowed_tools": ["echo", "get-sum", "trigger-long-running-operation"],
        "require_approval": {"never": {"tool_names": ["get-sum", "trigger-long-running-operation"]}},
        "headers": {"X-Secret-Team": "blue-team-token"}}])
}

#[tokio::test]
async fn a_clients_mcp_server_is_listed_called_and_approved() {
    let everything = everything_over_http();
    let script = Script::default();
    let llm_url = scripted_llm(script.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("voxd.toml");
    std::fs::write(&cfg, config()).unwrap();
    let (server, http) = serve_scripted(&cfg, &dir.path().join("kb.sqlite"), &llm_url).await;
    let url = format!("ws://{}/v1/realtime", server.addr);
    let mut seen = Vec::new();

    // Attached and listed.
    let (mut tx, mut rx, events) = attach(&url, AGENT, everything_tool(&everything.url)).await;
    assert!(
        error_codes(&events).is_empty(),
        "{:?}",
        error_codes(&events)
    );
    let updated = all(&events, "session.updated").pop().unwrap();
    let shown = updated["session"]["tools"][0].clone();
    assert_eq!(shown["type"], "mcp", "{shown}");
    assert!(
        !shown.to_string().contains("blue-team-token"),
        "a secret echoed: {shown}"
    );
    let listed = all(&events, "conversation.item.done")
        .into_iter()
        .find(|e| e["item"]["type"] == "mcp_list_tools")
        .expect("the mcp_list_tools item");
    let names: Vec<&str> = listed["item"]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["echo", "get-sum", "trigger-long-running-operation"]);
    let session_id = all(&events, "session.created")[0]["session"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    // The listing's item can be retrieved (the Agents SDK does).
    let list_item = listed["item"]["id"].as_str().unwrap().to_string();
    send(
        &mut tx,
        json!({"type": "conversation.item.retrieve", "item_id": list_item}),
    )
    .await;
    let got = read_until(&mut rx, |e| count(e, "conversation.item.retrieved") == 1).await;
    assert_eq!(
        all(&got, "conversation.item.retrieved")[0]["item"]["tools"][1]["name"],
        "get-sum"
    );
    seen.extend(events);
    seen.extend(got);

    // A call that needs no approval runs, and the answer has its result.
    script.queue(&[
        Reply::Call("everything__get-sum", r#"{"a": 2, "b": 40}"#),
        Reply::Text("Two and forty make 42."),
    ]);
    // (A response may choose an MCP tool, in OpenAI's shape.)
    let events = ask_with(
        &mut tx,
        &mut rx,
        "What is two plus forty?",
        json!({"tool_choice": {"type": "mcp", "server_label": "everything", "name": "get-sum"}}),
    )
    .await;
    assert!(
        error_codes(&events).is_empty(),
        "{:?}",
        error_codes(&events)
    );
    for kind in [
        "response.mcp_call_arguments.delta",
        "response.mcp_call_arguments.done",
        "response.mcp_call.in_progress",
        "response.mcp_call.completed",
    ] {
        assert_eq!(count(&events, kind), 1, "{kind}");
    }
    let response = done(&events);
    let output = response["output"].as_array().unwrap();
    assert_eq!(output[0]["type"], "mcp_call", "{response}");
    assert_eq!(output[0]["name"], "get-sum");
    assert_eq!(output[0]["server_label"], "everything");
    assert!(
        output[0]["output"].as_str().unwrap().contains("42"),
        "{response}"
    );
    assert_eq!(output[1]["type"], "message", "{response}");
    let added: Vec<u64> = all(&events, "response.output_item.added")
        .iter()
        .map(|e| e["output_index"].as_u64().unwrap())
        .collect();
    assert_eq!(added, [0, 1], "each item takes the next output index");
    let bodies = script.take_bodies();
    let offered: Vec<&str> = bodies[0]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["function"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        offered,
        [
            "everything__echo",
            "everything__get-sum",
            "everything__trigger-long-running-operation"
        ]
    );
    assert_eq!(
        bodies[0]["tool_choice"]["function"]["name"], "everything__get-sum",
        "{}",
        bodies[0]["tool_choice"]
    );
    let told = bodies[1]["messages"].as_array().unwrap().last().unwrap()["content"].clone();
    assert!(told.to_string().contains("42"), "{told}");
    seen.extend(events);

    // Two calls at once (as a remote model makes them) run together; both results reach it.
    script.queue(&[
        Reply::Calls(vec![
            ("everything__get-sum", r#"{"a": 1, "b": 2}"#),
            ("everything__get-sum", r#"{"a": 30, "b": 4}"#),
        ]),
        Reply::Text("Three, and thirty-four."),
    ]);
    let events = ask(
        &mut tx,
        &mut rx,
        "What are one plus two and thirty plus four?",
    )
    .await;
    assert_eq!(count(&events, "response.mcp_call.completed"), 2);
    let outputs: Vec<String> = done(&events)["output"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["type"] == "mcp_call")
        .map(|i| i["output"].as_str().unwrap().to_string())
        .collect();
    assert!(
        outputs.iter().any(|o| o.contains('3')) && outputs.iter().any(|o| o.contains("34")),
        "{outputs:?}"
    );
    let results: Vec<String> = script.take_bodies()[1]["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["role"] == "tool")
        .map(|m| m["content"].to_string())
        .collect();
    // (The first call's result is there too: earlier MCP calls are part of the history.)
    assert_eq!(results.len(), 3, "{results:?}");
    assert!(
        results[0].contains("is 42")
            && results[1].contains("is 3.")
            && results[2].contains("is 34"),
        "{results:?}"
    );
    seen.extend(events);

    // A call that fails (cut at the 3 s timeout) is a failed item, and the model is told.
    script.queue(&[
        Reply::Call(
            "everything__trigger-long-running-operation",
            r#"{"duration": 20, "steps": 2}"#,
        ),
        Reply::Text("The operation did not finish in time."),
    ]);
    // (A response may name the session's servers in its own tools.)
    let events = ask_with(
        &mut tx,
        &mut rx,
        "Run the long operation.",
        json!({"tools": everything_tool(&everything.url)}),
    )
    .await;
    assert_eq!(count(&events, "response.mcp_call.failed"), 1);
    let call = done(&events)["output"][0].clone();
    assert_eq!(call["error"]["type"], "protocol_error", "{call}");
    assert!(
        call["error"]["message"]
            .as_str()
            .unwrap()
            .contains("3000 ms"),
        "{call}"
    );
    let told = script.take_bodies()[1]["messages"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()["content"]
        .to_string();
    assert!(told.contains("failed"), "{told}");
    seen.extend(events);

    // A response cancelled while its call runs ends that call as a failed item.
    script.queue(&[Reply::Call(
        "everything__trigger-long-running-operation",
        r#"{"duration": 20, "steps": 2}"#,
    )]);
    send(
        &mut tx,
        json!({"type": "conversation.item.create", "item": {"type": "message", "role": "user",
            "content": [{"type": "input_text", "text": "Run it again."}]}}),
    )
    .await;
    send(&mut tx, json!({"type": "response.create"})).await;
    let mut events = read_until(&mut rx, |e| count(e, "response.mcp_call.in_progress") == 1).await;
    send(&mut tx, json!({"type": "response.cancel"})).await;
    events.extend(read_until(&mut rx, |e| count(e, "response.done") == 1).await);
    assert_eq!(count(&events, "response.mcp_call.failed"), 1);
    let response = done(&events);
    assert_eq!(response["status"], "cancelled", "{response}");
    assert_eq!(response["output"][0]["type"], "mcp_call", "{response}");
    assert!(
        response["output"][0]["error"]["message"].is_string(),
        "{response}"
    );
    script.take_bodies();
    seen.extend(events);

    // A call that needs approval waits for it; approved, it runs in the next response.
    script.queue(&[
        Reply::Call("everything__echo", r#"{"message": "hello voxd"}"#),
        Reply::Text("The echo says hello voxd."),
    ]);
    let events = ask(&mut tx, &mut rx, "Echo hello voxd.").await;
    let response = done(&events);
    let output = response["output"].as_array().unwrap();
    assert_eq!(output.len(), 1, "only the approval request: {response}");
    assert_eq!(output[0]["type"], "mcp_approval_request");
    assert_eq!(output[0]["name"], "echo");
    let request_id = output[0]["id"].as_str().unwrap().to_string();
    seen.extend(events);
    send(
        &mut tx,
        json!({"type": "conversation.item.create", "item": {"type": "mcp_approval_response",
            "approval_request_id": request_id, "approve": true}}),
    )
    .await;
    let events = read_until(&mut rx, |e| count(e, "response.done") == 1).await;
    let response = done(&events);
    let call = &response["output"][0];
    assert_eq!(call["type"], "mcp_call", "{response}");
    assert_eq!(call["approval_request_id"], request_id.as_str());
    assert!(
        call["output"].as_str().unwrap().contains("hello voxd"),
        "{call}"
    );
    assert_eq!(
        response["output"][1]["content"][0]["text"],
        "The echo says hello voxd."
    );
    // Answering it twice is refused.
    send(
        &mut tx,
        json!({"type": "conversation.item.create", "item": {"type": "mcp_approval_response",
            "approval_request_id": request_id, "approve": true}}),
    )
    .await;
    let again = read_until(&mut rx, |e| count(e, "error") == 1).await;
    assert_eq!(error_codes(&again), ["invalid_item"]);
    seen.extend(events);
    script.take_bodies();

    // Declined: not run; the model is told so and answers.
    script.queue(&[
        Reply::Call("everything__echo", r#"{"message": "secret"}"#),
        Reply::Text("All right, I did not run it."),
    ]);
    let events = ask(&mut tx, &mut rx, "Echo secret.").await;
    let request_id = done(&events)["output"][0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    seen.extend(events);
    send(
        &mut tx,
        json!({"type": "conversation.item.create", "item": {"type": "mcp_approval_response",
            "approval_request_id": request_id, "approve": false, "reason": "not now"}}),
    )
    .await;
    let events = read_until(&mut rx, |e| count(e, "response.done") == 1).await;
    assert_eq!(count(&events, "response.mcp_call.in_progress"), 0);
    let bodies = script.take_bodies();
    let told = bodies.last().unwrap()["messages"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()["content"]
        .to_string();
    assert!(
        told.contains("did not approve") && told.contains("not now"),
        "{told}"
    );
    seen.extend(events);
    conforms(&seen);

    // Audited: the listing, the call, the approval asked, approved and declined.
    let rows = admin_get(&format!("{http}/v1/audit?session={session_id}")).await;
    let rows: Vec<(String, String, String, String)> = rows["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let s = |k: &str| r[k].as_str().unwrap_or_default().to_string();
            (s("tool"), s("kind"), s("validation"), s("status"))
        })
        .collect();
    let has = |tool: &str, kind: &str, validation: &str, status: &str| {
        rows.contains(&(tool.into(), kind.into(), validation.into(), status.into()))
    };
    assert!(has("everything", "mcp_list", "valid", "ok"), "{rows:?}");
    assert!(has("everything__get-sum", "mcp", "valid", "ok"), "{rows:?}");
    assert!(
        has("everything__echo", "mcp", "valid", "approval_requested"),
        "{rows:?}"
    );
    assert!(has("everything__echo", "mcp", "approved", "ok"), "{rows:?}");
    assert!(
        has("everything__echo", "mcp", "declined", "declined"),
        "{rows:?}"
    );
    let metrics = admin_get(&format!("{http}/metrics")).await;
    let metrics = metrics.as_str().unwrap();
    assert!(
        metrics.contains(r#"voxd_mcp_requests_total{server="everything",outcome="ok"} 4"#),
        "{}",
        metrics
            .lines()
            .filter(|l| l.contains("mcp"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// A server that redirects every request elsewhere, and one that accepts connections and never
/// answers; their base URLs.
async fn hostile_servers() -> (String, String) {
    let redirect = axum::Router::new().fallback(|| async {
        axum::response::Redirect::temporary("http://169.254.169.254/latest/meta-data")
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let redirecting = format!("http://{}/mcp", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, redirect).await.unwrap() });
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_url = format!("http://{}/mcp", silent.local_addr().unwrap());
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = silent.accept().await {
            held.push(socket);
        }
    });
    (redirecting, silent_url)
}

#[tokio::test]
async fn the_policy_refuses_what_the_operator_did_not_allow() {
    let script = Script::default();
    let llm_url = scripted_llm(script.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("voxd.toml");
    std::fs::write(&cfg, config()).unwrap();
    let (server, http) = serve_scripted(&cfg, &dir.path().join("kb.sqlite"), &llm_url).await;
    let url = format!("ws://{}/v1/realtime", server.addr);
    let mcp = |label: &str, server_url: &str| {
        json!({"type": "mcp", "server_label": label, "server_url": server_url,
               "require_approval": "never"})
    };
    let failed = |events: &[ServerEvent]| count(events, "mcp_list_tools.failed");

    // A role that may not attach servers.
    let (_tx, _rx, events) = attach(&url, KIOSK, json!([mcp("a", "http://127.0.0.1:9/mcp")])).await;
    assert_eq!(
        (failed(&events), error_codes(&events)),
        (1, vec!["mcp_not_allowed".to_string()])
    );

    // A host the operator did not list; a redirect (to the cloud metadata address); a server
    // that never answers.
    let (redirecting, silent) = hostile_servers().await;
    let (mut tx, mut rx, events) = attach(
        &url,
        AGENT,
        json!([
            mcp("elsewhere", "http://10.1.2.3/mcp"),
            mcp("bounce", &redirecting),
            mcp("silent", &silent)
        ]),
    )
    .await;
    assert_eq!(failed(&events), 3, "{:?}", error_codes(&events));
    let mut codes = error_codes(&events);
    codes.sort();
    assert_eq!(
        codes,
        ["mcp_host_not_allowed", "mcp_timeout", "mcp_unreachable"],
        "{events:?}"
    );
    // A malformed entry is refused at once.
    tx.update_session(json!({"tools": [{"type": "mcp", "server_label": "x", "server_url": "file:///etc/passwd"}]}))
        .await
        .unwrap();
    let bad = read_until(&mut rx, |e| count(e, "error") == 1).await;
    assert_eq!(error_codes(&bad), ["invalid_tool"]);
    // A response cannot name a server the session has not attached.
    let refused = ask_with(
        &mut tx,
        &mut rx,
        "Hello?",
        json!({"tools": [mcp("bounce", &redirecting)]}),
    )
    .await;
    assert_eq!(error_codes(&refused), ["mcp_not_attached"]);
    // The session goes on.
    script.queue(&[Reply::Text("Still here.")]);
    let events = ask(&mut tx, &mut rx, "Are you there?").await;
    assert_eq!(done(&events)["status"], "completed");
    // Refusals are audited.
    let rows = admin_get(&format!("{http}/v1/audit?status=refused")).await;
    assert!(rows["data"].as_array().unwrap().len() >= 2, "{rows}");
}

/// A spoken question, the embedded models, and an MCP server written with the official Python
/// SDK: voxd hears the question, its tool router calls the server's tool, and the spoken answer
/// says what the tool returned.
#[tokio::test]
async fn a_spoken_question_is_answered_from_a_python_mcp_servers_tool() {
    let shop = common::python::shop_mcp();
    let dir = tempfile::tempdir().unwrap();
    // The knowledge base's sentence embedder is what the tool router compares meanings with.
    let kb = common::fixture_kb(dir.path()).await;
    let (url, _) = common::start_with_tools(
        voxd::server::ServerSettings::default(),
        Some(kb),
        Some(common::llm()),
        Some(common::tts()),
        Some(
            "[client_mcp]\nroles = [\"*\"]\nallowed_hosts = [\"127.0.0.1\"]\nallow_private = true",
        ),
    )
    .await;
    let (mut tx, mut rx) = client::connect(&url, None).await.unwrap();
    read_until(&mut rx, |e| !e.is_empty()).await;
    tx.update_session(json!({"type": "realtime",
        "tools": [{"type": "mcp", "server_label": "shop", "server_url": shop.url,
                   "require_approval": "never"}],
        "audio": {"input": {"turn_detection": {"type": "server_vad", "silence_duration_ms": 500}}}}))
        .await
        .unwrap();
    let listed = read_until(&mut rx, |e| {
        count(e, "mcp_list_tools.completed") + count(e, "mcp_list_tools.failed") == 1
    })
    .await;
    assert!(
        error_codes(&listed).is_empty(),
        "{:?}",
        error_codes(&listed)
    );
    let mut speech = common::speak(dir.path(), "What is the weather in Paris today?", 24_000);
    speech.extend(std::iter::repeat_n(0.0, 24_000));
    tx.append(&speech).await.unwrap();
    let events = read_until(&mut rx, |e| count(e, "response.done") == 1).await;
    assert!(
        error_codes(&events).is_empty(),
        "{:?}",
        error_codes(&events)
    );
    let response = done(&events);
    let call = &response["output"][0];
    assert_eq!(call["type"], "mcp_call", "{response}");
    assert_eq!(call["name"], "weather", "{response}");
    let arguments: Value = serde_json::from_str(call["arguments"].as_str().unwrap()).unwrap();
    assert_eq!(
        arguments["city"].as_str().map(str::to_lowercase).as_deref(),
        Some("paris")
    );
    let said = response["output"][1]["content"][0]["transcript"]
        .as_str()
        .unwrap_or_default()
        .to_lowercase();
    eprintln!("spoken answer: {said:?}");
    assert!(
        count(&events, "response.output_audio.delta") > 0,
        "not spoken"
    );
    assert!(said.contains("sunny") || said.contains("24"), "{said:?}");
}
