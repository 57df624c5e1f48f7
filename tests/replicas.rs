//! Scale-out on a real PostgreSQL + pgvector server (from the pgserver wheel): several `voxd
//! serve` replicas (the real binary) on one knowledge base, a replica killed with SIGKILL in the
//! middle of a write, migrations run twice and at once, and a database that goes away and comes
//! back.

mod common;

use std::time::Duration;

use common::off_runtime;
use common::pg::Postgres;
use serde_json::{json, Value};
use voxd::client::{self, Incoming, Receiver};
use voxd::protocol::ServerEvent;
use voxd::rag::store::{PgStore, Store, StoreError};

/// `voxd serve` on the shared database, without the voice and turn models (not needed here).
fn replica(url: &str) -> common::ServeProcess {
    common::ServeProcess::start(&[
        "--kb-url".as_ref(),
        url.as_ref(),
        "--no-tts".as_ref(),
        "--no-turn-models".as_ref(),
    ])
}

/// `/readyz` until it answers `want` (a hang guard, not a speed target); returns its body.
async fn wait_readyz(base: &str, want: u16) -> Value {
    wait_readyz_saying(base, want, "").await
}

/// `/readyz` until it answers `want` with a reason containing `reason`.
async fn wait_readyz_saying(base: &str, want: u16, reason: &str) -> Value {
    let mut last = Value::Null;
    for _ in 0..1200 {
        if let Ok(r) = reqwest::get(format!("{base}/readyz")).await {
            let status = r.status().as_u16();
            last = r.json().await.unwrap_or(Value::Null);
            if status == want
                && (reason.is_empty() || last["reason"].as_str().unwrap_or("").contains(reason))
            {
                return last;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("/readyz never answered {want}; last {last}");
}

async fn search(base: &str, query: &str) -> Value {
    let r = reqwest::Client::new()
        .post(format!("{base}/v1/kb/search"))
        .json(&json!({ "query": query }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

async fn read_until(rx: &mut Receiver, kind: &str) -> Vec<ServerEvent> {
    let mut events = Vec::new();
    let read = async {
        while let Some(msg) = rx.next().await {
            if let Incoming::Event(e) = msg.expect("socket ok") {
                let done = e.kind() == kind;
                events.push(e);
                if done {
                    return;
                }
            }
        }
        panic!("the socket closed");
    };
    tokio::time::timeout(common::READ_GUARD, read)
        .await
        .expect("the server stopped answering");
    events
}

/// Asks one question in a text session; returns `response.done`'s response.
async fn ask(addr: &str, question: &str) -> Value {
    let (mut tx, mut rx) = client::connect(&format!("ws://{addr}/v1/realtime"), None)
        .await
        .unwrap();
    read_until(&mut rx, "session.created").await;
    tx.update_session(json!({"type": "realtime", "output_modalities": ["text"]}))
        .await
        .unwrap();
    read_until(&mut rx, "session.updated").await;
    let item = json!({"type": "conversation.item.create", "item": {"type": "message",
        "role": "user", "content": [{"type": "input_text", "text": question}]}});
    tx.send_text(item.to_string()).await.unwrap();
    tx.send_text(json!({"type": "response.create"}).to_string())
        .await
        .unwrap();
    let events = read_until(&mut rx, "response.done").await;
    events
        .iter()
        .find_map(|e| match e {
            ServerEvent::ResponseDone { response } => Some(response.clone()),
            _ => None,
        })
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_share_one_knowledge_base() {
    let pg = off_runtime(Postgres::start);
    let url = off_runtime(|| pg.database("kb"));
    let a = replica(&url);
    let b = replica(&url);
    let (base_a, base_b) = (format!("http://{}", a.addr), format!("http://{}", b.addr));
    let ready = wait_readyz(&base_a, 200).await;
    assert!(
        ready["kb"]["store"]
            .as_str()
            .unwrap()
            .starts_with("postgres://postgres@127.0.0.1"),
        "{ready}"
    );
    wait_readyz(&base_b, 200).await;

    // Written through A...
    let http = reqwest::Client::new();
    let r = http
        .post(format!("{base_a}/v1/kb/documents"))
        .json(&json!({"title": "Ferry timetable", "source": "ferry",
            "text": "The ferry to Gull Island leaves at 8 am every day. Tickets cost 6 euros."}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{}", a.log_tail());
    let doc: Value = r.json().await.unwrap();
    let id = doc["document"]["id"].as_str().unwrap().to_string();

    // ...is searchable on B at once (nothing is cached in a replica)...
    let found = search(&base_b, "when does the ferry to gull island leave").await;
    assert_eq!(found["grounded"], true, "{found}");
    assert_eq!(found["passages"][0]["citation"]["document_id"], id.as_str());

    // ...and B answers from it, with the citation.
    let done = ask(&b.addr, "When does the ferry to Gull Island leave?").await;
    assert_eq!(done["status"], "completed", "{done}");
    let text = done["output"][0]["content"][0]["text"].as_str().unwrap();
    assert!(text.contains('8'), "{text}");
    assert_eq!(done["voxd"]["citations"][0]["source"], "ferry", "{done}");

    // Both list it; removed through B, it is gone from A.
    let list: Value = http
        .get(format!("{base_a}/v1/kb/documents"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["data"].as_array().map(Vec::len), Some(1), "{list}");
    let r = http
        .delete(format!("{base_b}/v1/kb/documents/{id}"))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    let found = search(&base_a, "when does the ferry to gull island leave").await;
    assert_eq!(found["grounded"], false, "{found}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_mid_write_leaves_no_partial_document() {
    let pg = off_runtime(Postgres::start);
    let url = off_runtime(|| pg.database("kb"));
    let mut a = replica(&url);
    let base = format!("http://{}", a.addr);
    wait_readyz(&base, 200).await;
    let http = reqwest::Client::new();
    let r = http
        .post(format!("{base}/v1/kb/documents"))
        .json(&json!({"title": "Bells", "text": "The harbour bell rings at noon."}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);

    // A large document: many chunks, written in one transaction.
    let big: String = (0..3000)
        .map(|i| {
            format!("Paragraph {i} describes knot number {i} used by the harbour sailors.\n\n")
        })
        .collect();
    let post = tokio::spawn({
        let http = http.clone();
        async move {
            http.post(format!("{base}/v1/kb/documents"))
                .json(&json!({"title": "Knots", "text": big}))
                .send()
                .await
        }
    });
    // Watch the database until the replica is inside the document's write transaction, then
    // kill it.
    let watcher = off_runtime(|| pg.client("kb"));
    let watcher = std::sync::Mutex::new(watcher);
    let mut seen_write = false;
    for _ in 0..20_000 {
        let writing = off_runtime(|| {
            watcher
                .lock()
                .unwrap()
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'voxd'
                     AND state = 'active' AND query LIKE 'INSERT INTO kb_chunks%'",
                    &[],
                )
                .unwrap()
                .get::<_, i64>(0)
        });
        if writing > 0 {
            seen_write = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert!(seen_write, "never saw the write: {}", a.log_tail());
    a.child.kill().unwrap();
    a.child.wait().unwrap();
    // (A blocking client must not be dropped on the runtime's thread.)
    off_runtime(move || drop(watcher));
    assert!(
        post.await.unwrap().is_err(),
        "the request died with the replica"
    );

    // The database holds the first document only, whole, and its bookkeeping agrees.
    let (docs, chunks, counted) = off_runtime(|| {
        let mut c = pg.client("kb");
        let docs: Vec<String> = c
            .query("SELECT title FROM kb_documents", &[])
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        let chunks: i64 = c
            .query_one("SELECT count(*) FROM kb_chunks", &[])
            .unwrap()
            .get(0);
        let counted: i64 = c
            .query_one("SELECT chunks FROM kb_meta", &[])
            .unwrap()
            .get(0);
        (docs, chunks, counted)
    });
    assert_eq!(docs, ["Bells"]);
    assert_eq!(chunks, 1);
    assert_eq!(counted, 1);

    // A new replica serves what was committed.
    let b = replica(&url);
    let base_b = format!("http://{}", b.addr);
    wait_readyz(&base_b, 200).await;
    let found = search(&base_b, "which knot do the sailors use").await;
    assert!(
        found["passages"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["citation"]["title"] == "Bells"),
        "{found}"
    );
}

#[test]
fn migrations_run_once_when_replicas_start_together_and_again_without_harm() {
    let pg = Postgres::start();
    let url = pg.database("kb");
    // Four "replicas" start at the same moment.
    let barrier = std::sync::Barrier::new(4);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|_| {
                s.spawn(|| {
                    barrier.wait();
                    PgStore::open(&url).map(|st| st.revision().unwrap())
                })
            })
            .collect();
        for h in handles {
            assert_eq!(h.join().unwrap().unwrap(), 0);
        }
    });
    let mut c = pg.client("kb");
    let versions: Vec<i32> = c
        .query(
            "SELECT version FROM kb_schema_migrations ORDER BY version",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(versions, [1]);
    // Again: nothing to do.
    let store = PgStore::open(&url).unwrap();
    assert_eq!(store.migrate().unwrap(), 1);
    assert_eq!(store.chunk_count().unwrap(), 0);
    // A database a newer voxd migrated is refused, not damaged.
    c.execute(
        "INSERT INTO kb_schema_migrations (version) VALUES (99)",
        &[],
    )
    .unwrap();
    match PgStore::open(&url) {
        Err(StoreError::TooNew { found: 99, .. }) => {}
        other => panic!("expected TooNew, got {:?}", other.map(|_| ())),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_that_goes_away_makes_the_replica_unready_until_it_returns() {
    // The replica starts before its database exists: not ready, and says why.
    let mut pg = off_runtime(Postgres::start);
    let url = off_runtime(|| pg.database("kb"));
    off_runtime(|| pg.stop());
    let a = replica(&url);
    let base = format!("http://{}", a.addr);
    wait_readyz_saying(&base, 503, "unreachable").await;
    let r = reqwest::get(format!("{base}/v1/kb/documents"))
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    let err: Value = r.json().await.unwrap();
    assert_eq!(err["error"]["code"], "kb_unavailable", "{err}");

    // The database comes up: the replica connects, migrates and becomes ready.
    off_runtime(|| pg.restart());
    wait_readyz(&base, 200).await;
    let found = search(&base, "anything at all").await;
    assert_eq!(found["grounded"], false);

    // It goes away while the replica serves: typed errors, not ready, the process lives on.
    off_runtime(|| pg.stop());
    let r = reqwest::Client::new()
        .post(format!("{base}/v1/kb/search"))
        .json(&json!({ "query": "when does the ferry leave" }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    let err: Value = r.json().await.unwrap();
    assert_eq!(err["error"]["code"], "kb_unavailable", "{err}");
    let body = wait_readyz(&base, 503).await;
    assert!(
        body["reason"].as_str().unwrap().contains("unavailable"),
        "{body}"
    );

    // Back again: ready, and it serves.
    off_runtime(|| pg.restart());
    wait_readyz(&base, 200).await;
    search(&base, "when does the ferry leave").await;
    assert!(!a.log_tail().contains("panicked"), "{}", a.log_tail());
}

/// Streams `file` to a realtime URL with `voxd client --json`; returns its events.
async fn stream(url: &str, file: &str) -> Vec<Value> {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_voxd"))
        .args(["client", "--json", "--url", url, "--rate", "16000"])
        .arg(common::data(file))
        .env("RUST_LOG", "warn")
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON event per line"))
        .collect()
}

async fn upload(base: &str, file: &str) -> reqwest::Response {
    let bytes = std::fs::read(common::data(file)).unwrap();
    let form = reqwest::multipart::Form::new()
        .part(
            "file",
            reqwest::multipart::Part::bytes(bytes).file_name(file.to_string()),
        )
        .text("model", "whisper-1");
    reqwest::Client::new()
        .post(format!("{base}/v1/audio/transcriptions"))
        .multipart(form)
        .send()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_asr_transcribes_on_another_voxd_and_a_failing_engine_is_a_typed_error() {
    // A transcribes with its embedded whisper. B detects voice and turns itself and sends each
    // final turn's audio to A.
    let no_extras = ["--no-tts", "--no-turn-models", "--llm-model", "none"];
    let args = |extra: &[String]| -> Vec<std::ffi::OsString> {
        no_extras
            .iter()
            .map(Into::into)
            .chain(extra.iter().map(Into::into))
            .collect()
    };
    let start = |extra: &[String]| {
        let a = args(extra);
        let refs: Vec<&std::ffi::OsStr> = a.iter().map(|s| s.as_os_str()).collect();
        common::ServeProcess::start(&refs)
    };
    let mut a = start(&[]);
    let b = start(&["--asr-url".into(), format!("http://{}/v1", a.addr)]);
    for s in [&a, &b] {
        wait_readyz(&format!("http://{}", s.addr), 200).await;
    }
    let ready: Value = reqwest::get(format!("http://{}/readyz", b.addr))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        ready["asr"].as_str().unwrap().starts_with("remote"),
        "{ready}"
    );

    // Realtime on B: the turn is found locally and transcribed on A.
    let file = "LDC93S1_pcms16le_1_16000.wav";
    let reference = common::reference(file, "");
    let events = stream(&format!("ws://{}/v1/realtime", b.addr), file).await;
    let completed = events
        .iter()
        .find(|e| e["type"] == "conversation.item.input_audio_transcription.completed")
        .unwrap_or_else(|| panic!("no final transcript: {events:?}"));
    let heard = completed["transcript"].as_str().unwrap();
    assert!(voxd::wer::wer(&reference, heard) <= 0.2, "{heard}");
    // The HTTP route on B goes to A too.
    let r = upload(&format!("http://{}", b.addr), file).await;
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert!(
        voxd::wer::wer(&reference, body["text"].as_str().unwrap()) <= 0.2,
        "{body}"
    );

    // A goes away: each turn on B fails with a typed event, and the session and server go on.
    a.child.kill().unwrap();
    a.child.wait().unwrap();
    let events = stream(&format!("ws://{}/v1/realtime", b.addr), file).await;
    let failed = events
        .iter()
        .find(|e| e["type"] == "conversation.item.input_audio_transcription.failed")
        .unwrap_or_else(|| panic!("no failure event: {events:?}"));
    assert_eq!(failed["error"]["code"], "transcription_failed", "{failed}");
    assert!(
        failed["error"]["message"]
            .as_str()
            .unwrap()
            .contains("remote"),
        "{failed}"
    );
    let r = upload(&format!("http://{}", b.addr), file).await;
    assert_eq!(r.status(), 502);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "asr_failed", "{body}");
    // An engine that accepts and never answers: the turn fails when --asr-timeout runs out.
    let hung = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hung_addr = hung.local_addr().unwrap();
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((socket, _)) = hung.accept().await {
            open.push(socket);
        }
    });
    let c = start(&[
        "--asr-url".into(),
        format!("http://{hung_addr}/v1"),
        "--asr-timeout".into(),
        "2".into(),
    ]);
    wait_readyz(&format!("http://{}", c.addr), 200).await;
    let events = stream(&format!("ws://{}/v1/realtime", c.addr), file).await;
    let failed = events
        .iter()
        .find(|e| e["type"] == "conversation.item.input_audio_transcription.failed")
        .unwrap_or_else(|| panic!("no failure event: {events:?}"));
    assert!(
        failed["error"]["message"]
            .as_str()
            .unwrap()
            .contains("no answer within"),
        "{failed}"
    );
    held.abort();
    let r = reqwest::get(format!("http://{}/healthz", b.addr))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}
