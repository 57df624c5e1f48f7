//! The `voxd serve` process itself: it starts with the default models, serves, and on SIGTERM
//! closes realtime sessions with 1001 and exits cleanly.

mod common;

use std::process::Command;
use std::time::Duration;

use voxd::client::{self, Incoming};

/// Waits until the server's models are loaded (`/readyz` 200).
async fn wait_ready(base: &str) {
    for _ in 0..600 {
        if reqwest::get(format!("{base}/readyz"))
            .await
            .is_ok_and(|r| r.status() == 200)
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("never ready");
}

#[tokio::test]
async fn sigterm_closes_sessions_with_1001_and_exits_cleanly() {
    let serve = common::ServeProcess::start(&["--asr-pool".as_ref(), "1".as_ref()]);
    let addr = serve.addr.clone();

    wait_ready(&format!("http://{addr}")).await;

    let (_tx, mut rx) = client::connect(&format!("ws://{addr}/v1/realtime"), None)
        .await
        .unwrap();
    assert!(
        matches!(rx.next().await, Some(Ok(Incoming::Event(_)))),
        "session.created"
    );

    let status = Command::new("kill")
        .args(["-TERM", &serve.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let closed = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match rx.next().await {
                Some(Ok(Incoming::Closed { code, .. })) => return Some(code),
                Some(Ok(_)) => continue,
                _ => return None,
            }
        }
    })
    .await
    .expect("no close after SIGTERM");
    assert_eq!(closed, Some(1001));
    let exit = tokio::task::spawn_blocking(move || {
        let mut serve = serve;
        serve.child.wait()
    })
    .await
    .unwrap()
    .unwrap();
    assert!(exit.success(), "{exit:?}");
}

#[tokio::test]
async fn voxd_client_streams_a_file_and_prints_events() {
    let (url, _) = common::start_realtime(voxd::server::ServerSettings::default()).await;
    let file = common::data("LDC93S1_pcms16le_2_44100.wav");
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_voxd"))
        .args([
            "client",
            "--json",
            "--url",
            &url,
            "--rate",
            "16000",
            file.to_str().unwrap(),
        ])
        .env("RUST_LOG", "warn")
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let events: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON event per line"))
        .collect();
    let kinds: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert!(
        kinds.contains(&"input_audio_buffer.speech_started"),
        "{kinds:?}"
    );
    let completed = events
        .iter()
        .find(|e| e["type"] == "conversation.item.input_audio_transcription.completed")
        .expect("a final transcript");
    let reference = common::reference("LDC93S1_pcms16le_2_44100.wav", "");
    assert!(
        voxd::wer::wer(&reference, completed["transcript"].as_str().unwrap()) <= 0.2,
        "{completed}"
    );
}

#[tokio::test]
async fn sigterm_stops_the_server_while_a_long_upload_decodes() {
    let serve = common::ServeProcess::start(&[
        "--asr-pool".as_ref(),
        "1".as_ref(),
        "--max-audio-minutes".as_ref(),
        "1440".as_ref(),
    ]);
    let base = format!("http://{}", serve.addr);
    wait_ready(&base).await;
    // Three hours of 192 kHz audio whose length only decoding reveals: minutes of work.
    let bomb = common::bomb::silent_flac(192_000, 3 * 3600, false);
    let upload = tokio::spawn(async move {
        let form = reqwest::multipart::Form::new().part(
            "file",
            reqwest::multipart::Part::bytes(bomb).file_name("long.flac"),
        );
        reqwest::Client::new()
            .post(format!("{base}/v1/audio/transcriptions"))
            .multipart(form)
            .send()
            .await
    });
    // Let the decode get going, then stop the server.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let status = Command::new("kill")
        .args(["-TERM", &serve.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    // The stop is bounded (voxd::server::SHUTDOWN_DEADLINE, 10 s); before, it waited for the
    // decode. The guard here is generous: it only tells "stops" from "hangs".
    let exit = tokio::task::spawn_blocking(move || {
        let mut serve = serve;
        for _ in 0..600 {
            if let Some(status) = serve.child.try_wait().unwrap() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = serve.child.kill();
        None
    })
    .await
    .unwrap();
    assert!(
        exit.is_some(),
        "voxd serve was still running 30 s after SIGTERM"
    );
    // The upload got an answer (503, the server is stopping) or its connection closed.
    if let Ok(r) = upload.await.unwrap() {
        assert_eq!(r.status(), 503);
    }
}

#[tokio::test]
async fn no_tts_serves_text_answers_and_a_typed_503_for_speech() {
    let serve = common::ServeProcess::start(&[
        "--no-tts".as_ref(),
        "--llm-model".as_ref(),
        "none".as_ref(),
    ]);
    let base = format!("http://{}", serve.addr);
    wait_ready(&base).await;
    let ready: serde_json::Value = reqwest::get(format!("{base}/readyz"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ready["tts"]["status"], "not_configured", "{ready}");
    let resp = reqwest::Client::new()
        .post(format!("{base}/v1/audio/speech"))
        .json(&serde_json::json!({"model": "tts-1", "voice": "alloy", "input": "Hello."}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 503);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "tts_unavailable", "{body}");
    // Realtime sessions answer in text, and say why audio is not on.
    let (mut tx, mut rx) = client::connect(&format!("ws://{}/v1/realtime", serve.addr), None)
        .await
        .unwrap();
    tx.update_session(serde_json::json!({"output_modalities": ["audio"]}))
        .await
        .unwrap();
    let updated = loop {
        match rx.next().await {
            Some(Ok(Incoming::Event(voxd::protocol::ServerEvent::SessionUpdated { session }))) => {
                break session
            }
            Some(Ok(_)) => continue,
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(updated["output_modalities"], serde_json::json!(["text"]));
    assert_eq!(updated["voxd"]["voices"], serde_json::json!([]));
    let ignored = updated["voxd"]["ignored"].as_array().unwrap();
    assert!(
        ignored
            .iter()
            .any(|i| i["param"] == "session.output_modalities"),
        "{updated}"
    );
}
