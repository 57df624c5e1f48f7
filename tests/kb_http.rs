//! The knowledge base over real HTTP on loopback: the REST API, its errors, the API key, the
//! OpenAI-compatible `/v1/embeddings` endpoint and the remote embedder talking to it, and the
//! `voxd kb` command (including a crash in the middle of an ingestion).

mod common;

use std::sync::Arc;

use reqwest::StatusCode;
use serde_json::{json, Value};
use voxd::rag::embed::{dot, Embedder, RemoteEmbedder, RemoteEmbedderConfig};
use voxd::rag::store::SqliteStore;
use voxd::rag::{KbSettings, KnowledgeBase};
use voxd::server::ServerSettings;

async fn server(dir: &std::path::Path, settings: ServerSettings, kb: KbSettings) -> String {
    let store = SqliteStore::open(&dir.join("kb.sqlite")).unwrap();
    let kb = KnowledgeBase::new(Arc::new(store), common::embedder(), kb);
    common::start_kb_server(settings, kb).await
}

async fn error_code(r: reqwest::Response, status: StatusCode) -> String {
    assert_eq!(r.status(), status);
    let body: Value = r.json().await.unwrap();
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    body["error"]["code"].as_str().unwrap().to_string()
}

fn file_form(name: &str, bytes: Vec<u8>) -> reqwest::multipart::Form {
    reqwest::multipart::Form::new().part(
        "file",
        reqwest::multipart::Part::bytes(bytes).file_name(name.to_string()),
    )
}

#[tokio::test]
async fn documents_are_added_listed_searched_and_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let base = server(dir.path(), ServerSettings::default(), KbSettings::default()).await;
    let http = reqwest::Client::new();
    let docs = format!("{base}/v1/kb/documents");

    let body = json!({
        "title": "Opening hours",
        "text": "We open at 8 am on weekdays and 10 am on Sundays.",
        "uri": "https://example.test/hours",
        "expires_at": "2999-01-01",
    });
    let r = http.post(&docs).json(&body).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let created: Value = r.json().await.unwrap();
    assert_eq!(created["status"], "created");
    let hours_id = created["document"]["id"].as_str().unwrap().to_string();
    // Unchanged: 200, same id, nothing re-embedded.
    let r = http.post(&docs).json(&body).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let again: Value = r.json().await.unwrap();
    assert_eq!(again["status"], "unchanged");
    assert_eq!(again["document"]["id"], hours_id.as_str());

    let md = "---\ntitle: Service prices\n---\n# Prices\n\nA full service costs £120.\n";
    let r = http
        .post(&docs)
        .multipart(file_form("prices.md", md.as_bytes().to_vec()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let prices: Value = r.json().await.unwrap();
    assert_eq!(prices["document"]["title"], "Service prices");

    let list: Value = http.get(&docs).send().await.unwrap().json().await.unwrap();
    assert_eq!(list["object"], "list");
    assert_eq!(list["data"].as_array().unwrap().len(), 2);

    let r = http
        .post(format!("{base}/v1/kb/search"))
        .json(&json!({ "query": "how much is a full service", "top_k": 2 }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let found: Value = r.json().await.unwrap();
    assert_eq!(found["grounded"], true);
    let top = &found["passages"][0];
    assert!(top["text"].as_str().unwrap().contains("£120"));
    let cite = &top["citation"];
    assert_eq!(cite["title"], "Service prices");
    assert_eq!(cite["document_id"], prices["document"]["id"]);
    for field in ["chunk_id", "char_start", "char_end"] {
        assert!(cite[field].is_u64(), "{field}: {cite}");
    }
    assert!(found["embed_ms"].as_f64().unwrap() > 0.0);

    let one: Value = http
        .get(format!("{docs}/{hours_id}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(one["uri"], "https://example.test/hours");
    let r = http
        .delete(format!("{docs}/{hours_id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r = http
        .delete(format!("{docs}/{hours_id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        error_code(r, StatusCode::NOT_FOUND).await,
        "document_not_found"
    );
    let list: Value = http.get(&docs).send().await.unwrap().json().await.unwrap();
    assert_eq!(list["data"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn bad_requests_get_a_json_400_and_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let base = server(
        dir.path(),
        ServerSettings::default(),
        KbSettings {
            max_document_bytes: 2000,
            ..Default::default()
        },
    )
    .await;
    let http = reqwest::Client::new();
    let docs = format!("{base}/v1/kb/documents");
    let search = format!("{base}/v1/kb/search");
    let json_cases = [
        (
            &docs,
            json!({ "title": "Empty", "text": " \n " }),
            StatusCode::BAD_REQUEST,
            "empty_document",
        ),
        (
            &docs,
            json!({ "title": "x", "text": "y", "colour": "red" }),
            StatusCode::BAD_REQUEST,
            "invalid_json",
        ),
        (
            &docs,
            json!({ "title": "x" }),
            StatusCode::BAD_REQUEST,
            "invalid_json",
        ),
        (
            &docs,
            json!({ "title": "x", "text": "y", "expires_at": "soon" }),
            StatusCode::BAD_REQUEST,
            "invalid_time",
        ),
        (
            &docs,
            json!({ "title": "Big", "text": "word ".repeat(1000) }),
            StatusCode::PAYLOAD_TOO_LARGE,
            "document_too_large",
        ),
        (
            &search,
            json!({ "query": "hours", "top_k": 0 }),
            StatusCode::BAD_REQUEST,
            "invalid_top_k",
        ),
        (
            &search,
            json!({ "query": "hours", "top_k": 10000 }),
            StatusCode::BAD_REQUEST,
            "invalid_top_k",
        ),
        (
            &search,
            json!({ "query": "" }),
            StatusCode::BAD_REQUEST,
            "invalid_query",
        ),
        (
            &search,
            json!({ "query": "hours", "filter": { "colour": "red" } }),
            StatusCode::BAD_REQUEST,
            "invalid_json",
        ),
        (
            &search,
            json!({ "query": "hours", "filter": { "sources": "not-a-list" } }),
            StatusCode::BAD_REQUEST,
            "invalid_json",
        ),
        (
            &search,
            json!({ "query": "hours", "filter": { "updated_after": "yesterday-ish" } }),
            StatusCode::BAD_REQUEST,
            "invalid_filter",
        ),
    ];
    for (url, body, status, code) in json_cases {
        let r = http.post(url).json(&body).send().await.unwrap();
        assert_eq!(error_code(r, status).await, code, "{body}");
    }
    let r = http
        .post(&docs)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(r, StatusCode::BAD_REQUEST).await, "invalid_json");
    let uploads = [
        (
            "latin1.txt",
            b"caf\xe9 au lait".to_vec(),
            StatusCode::BAD_REQUEST,
            "invalid_utf8",
        ),
        (
            "menu.pdf",
            b"%PDF-1.4 ...".to_vec(),
            StatusCode::BAD_REQUEST,
            "unsupported_file_type",
        ),
        (
            "big.txt",
            vec![b'a'; 5000],
            StatusCode::PAYLOAD_TOO_LARGE,
            "document_too_large",
        ),
    ];
    for (name, bytes, status, code) in uploads {
        let r = http
            .post(&docs)
            .multipart(file_form(name, bytes))
            .send()
            .await
            .unwrap();
        assert_eq!(error_code(r, status).await, code, "{name}");
    }
    let r = http
        .post(&docs)
        .multipart(reqwest::multipart::Form::new().text("title", "no file"))
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(r, StatusCode::BAD_REQUEST).await, "missing_file");

    let list: Value = http.get(&docs).send().await.unwrap().json().await.unwrap();
    assert!(
        list["data"].as_array().unwrap().is_empty(),
        "nothing was written: {list}"
    );
    // The server is still fine.
    let r = http
        .post(&docs)
        .json(&json!({ "title": "Hours", "text": "We open at eight." }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
}

#[tokio::test]
async fn the_api_key_guards_the_knowledge_base() {
    let dir = tempfile::tempdir().unwrap();
    let settings = ServerSettings {
        api_key: Some("sesame".into()),
        ..Default::default()
    };
    let base = server(dir.path(), settings, KbSettings::default()).await;
    let http = reqwest::Client::new();
    for r in [
        http.get(format!("{base}/v1/kb/documents"))
            .send()
            .await
            .unwrap(),
        http.post(format!("{base}/v1/kb/search"))
            .json(&json!({ "query": "x" }))
            .send()
            .await
            .unwrap(),
        http.post(format!("{base}/v1/embeddings"))
            .json(&json!({ "input": "x" }))
            .send()
            .await
            .unwrap(),
    ] {
        assert_eq!(
            error_code(r, StatusCode::UNAUTHORIZED).await,
            "invalid_api_key"
        );
    }
    let r = http
        .get(format!("{base}/v1/kb/documents"))
        .bearer_auth("sesame")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
}

#[tokio::test]
async fn the_remote_embedder_against_a_second_voxd_gives_the_local_vectors() {
    let dir = tempfile::tempdir().unwrap();
    let settings = ServerSettings {
        api_key: Some("k".into()),
        ..Default::default()
    };
    let base = server(dir.path(), settings, KbSettings::default()).await;

    // The endpoint speaks OpenAI's shape.
    let http = reqwest::Client::new();
    let r = http
        .post(format!("{base}/v1/embeddings"))
        .bearer_auth("k")
        .json(&json!({ "model": "all-minilm-l6-v2", "input": ["hello there", "general kenobi"] }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["object"], "list");
    assert_eq!(body["data"][1]["index"], 1);
    assert_eq!(body["data"][0]["embedding"].as_array().unwrap().len(), 384);
    assert!(body["usage"]["prompt_tokens"].as_u64().unwrap() >= 4);
    let r = http
        .post(format!("{base}/v1/embeddings"))
        .bearer_auth("k")
        .json(&json!({ "model": "text-embedding-3-large", "input": "x" }))
        .send()
        .await
        .unwrap();
    assert_eq!(
        error_code(r, StatusCode::NOT_FOUND).await,
        "model_not_found"
    );

    let config = |url: String| RemoteEmbedderConfig {
        base_url: url,
        api_key: Some("k".into()),
        model: "all-minilm-l6-v2".into(),
        dimensions: None,
        max_tokens: 256,
        timeout: std::time::Duration::from_secs(20),
    };
    let remote = RemoteEmbedder::connect(config(format!("{base}/v1")))
        .await
        .unwrap();
    assert_eq!(remote.dimensions(), 384, "learned from a probe request");
    let texts = vec!["The ferry leaves at eight.".to_string(); 70];
    let got = remote.embed(texts.clone()).await.unwrap();
    assert_eq!(got.len(), 70, "split across requests of 64");
    let local = common::embedder().embed(texts[..1].to_vec()).await.unwrap();
    assert!(dot(&got[69], &local[0]) > 0.9999);

    // A knowledge base embedding through the remote endpoint works end to end, and its vectors
    // are tagged with the same model name, so the two are interchangeable.
    let kb2 = KnowledgeBase::new(
        Arc::new(SqliteStore::open(&dir.path().join("remote.sqlite")).unwrap()),
        Arc::new(remote),
        KbSettings::default(),
    );
    kb2.add(voxd::rag::DocumentInput::text(
        "Ferry",
        "The ferry leaves at eight.",
    ))
    .await
    .unwrap();
    let res = kb2
        .search(voxd::rag::SearchRequest::new("when does the ferry leave"))
        .await
        .unwrap();
    assert!(res.grounded);

    // Nothing listening: a typed error naming the endpoint.
    let dead = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dead_url = format!("http://{}/v1", dead.local_addr().unwrap());
    drop(dead);
    let err = RemoteEmbedder::connect(config(dead_url.clone()))
        .await
        .err()
        .unwrap();
    assert!(
        matches!(err, voxd::rag::embed::EmbedError::Remote { ref url, .. } if *url == dead_url),
        "{err}"
    );
}

fn voxd_cmd(home: &std::path::Path, kb: &std::path::Path) -> std::process::Command {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_voxd"));
    cmd.env("VOXD_HOME", common::home())
        .env("RUST_LOG", "warn")
        .current_dir(home)
        .arg("kb")
        .arg("--kb")
        .arg(kb);
    cmd
}

#[test]
fn the_kb_command_adds_searches_lists_and_refuses_bad_files() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("kb.sqlite");
    let out = voxd_cmd(dir.path(), &db)
        .arg("add")
        .arg(common::data("kb"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("32 created (0 failed)"), "{stdout}");
    let out = voxd_cmd(dir.path(), &db)
        .arg("add")
        .arg(common::data("kb"))
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("32 unchanged"));

    let out = voxd_cmd(dir.path(), &db)
        .args([
            "search",
            "are you open on sundays",
            "--json",
            "--top-k",
            "2",
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    let res: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(res["grounded"], true);
    assert_eq!(res["passages"][0]["citation"]["source"], "opening-hours");
    assert!(res["passages"][0]["text"]
        .as_str()
        .unwrap()
        .contains("Sundays from 10 am"));

    let out = voxd_cmd(dir.path(), &db)
        .args(["list", "--json"])
        .output()
        .unwrap();
    let docs: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(docs.as_array().unwrap().len(), 32);
    let id = docs[0]["id"].as_str().unwrap().to_string();
    let out = voxd_cmd(dir.path(), &db)
        .args(["remove", &id])
        .output()
        .unwrap();
    assert!(out.status.success());

    let pdf = dir.path().join("menu.pdf");
    std::fs::write(&pdf, b"%PDF").unwrap();
    for args in [
        vec!["add".to_string(), pdf.display().to_string()],
        vec!["add".to_string(), "/no/such/file.md".to_string()],
        vec!["remove".to_string(), id.clone()],
        vec![
            "search".to_string(),
            "x".to_string(),
            "--top-k".to_string(),
            "0".to_string(),
        ],
    ] {
        let out = voxd_cmd(dir.path(), &db).args(&args).output().unwrap();
        assert!(!out.status.success(), "{args:?} should fail");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(text.contains("error"), "{args:?}: {text}");
    }
}

#[test]
fn a_crash_during_ingestion_leaves_the_previous_version_intact() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("kb.sqlite");
    let doc = dir.path().join("manual.md");
    std::fs::write(&doc, "# Manual\nThe harbour bell rings at noon.\n").unwrap();
    assert!(voxd_cmd(dir.path(), &db)
        .arg("add")
        .arg(&doc)
        .status()
        .unwrap()
        .success());

    // A new version long enough to take seconds to embed; kill -9 the writer midway.
    let big: String = (0..6000)
        .map(|i| format!("Paragraph {i} explains knot number {i} of the harbour sailors.\n\n"))
        .collect();
    std::fs::write(&doc, format!("# Manual\n{big}")).unwrap();
    let mut child = voxd_cmd(dir.path(), &db)
        .arg("add")
        .arg(&doc)
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1500));
    assert!(
        child.try_wait().unwrap().is_none(),
        "the ingestion ended before the crash"
    );
    child.kill().unwrap();
    child.wait().unwrap();

    let out = voxd_cmd(dir.path(), &db)
        .args(["list", "--json"])
        .output()
        .unwrap();
    let docs: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(docs.as_array().unwrap().len(), 1);
    assert_eq!(docs[0]["chunks"], 1, "the old version, whole: {docs}");
    let out = voxd_cmd(dir.path(), &db)
        .args(["search", "when does the bell ring", "--json"])
        .output()
        .unwrap();
    let res: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(res["passages"][0]["text"]
        .as_str()
        .unwrap()
        .contains("noon"));
}
