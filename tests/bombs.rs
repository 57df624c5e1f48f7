//! Decompression bombs against the transcription endpoint: small uploads that decode to hours of
//! audio must get a typed 400 quickly, and the server's memory must stay bounded by the duration
//! cap at 16 kHz, whatever the source's rate. (A binary of its own, so the peak-memory reading is
//! this test's alone.)

mod common;

use std::sync::Arc;

use reqwest::multipart::{Form, Part};
use serde_json::Value;
use voxd::server::ServerSettings;
use voxd::wer::wer;

const JFK: &str = "And so my fellow Americans, ask not what your country can do for you, ask what you can do for your country.";

async fn post(base: &str, bytes: Vec<u8>, name: &str) -> (u16, Value) {
    let form = Form::new().part("file", Part::bytes(bytes).file_name(name.to_string()));
    let r = reqwest::Client::new()
        .post(format!("{base}/v1/audio/transcriptions"))
        .multipart(form)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap())
}

#[tokio::test]
async fn bombs_get_a_typed_error_within_a_memory_bound() {
    // The cap: one minute, as `--max-audio-minutes 1` sets it.
    let state = Arc::new(voxd::server::AppState::with_settings(ServerSettings {
        max_audio_seconds: 60.0,
        ..Default::default()
    }));
    let pool = tokio::task::spawn_blocking(common::pool).await.unwrap();
    state.set_asr(pool);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(voxd::server::serve(listener, state, std::future::pending()));

    // Three hours of 192 kHz silence: 2 billion samples (8 GB as f32) in 0.5 MB of FLAC.
    let declared = common::bomb::silent_flac(192_000, 3 * 3600, true);
    let undeclared = common::bomb::silent_flac(192_000, 3 * 3600, false);
    assert!(declared.len() < 1 << 20, "{} bytes", declared.len());
    let ogg = std::fs::read(common::data("silence-2min-96k.ogg")).unwrap();
    let sox_flac = std::fs::read(common::data("silence-2min-192k.flac")).unwrap();
    // Warm up (first request's allocations), then take the baseline.
    let (s, _) = post(
        &base,
        std::fs::read(common::data("jfk.wav")).unwrap(),
        "jfk.wav",
    )
    .await;
    assert_eq!(s, 200);
    let before = common::bomb::peak_rss();

    // Two of each at once: decodes run side by side (within --max-transcriptions, 4).
    for (bytes, name) in [
        (declared, "declared.flac"),
        (undeclared, "undeclared.flac"),
        (ogg, "silence.ogg"),
        (sox_flac, "silence.flac"),
    ] {
        let pair = [0, 1].map(|_| {
            let (b, base) = (bytes.clone(), base.clone());
            tokio::spawn(async move { post(&base, b, name).await })
        });
        for p in pair {
            let (status, body) = p.await.unwrap();
            assert_eq!(status, 400, "{name}: {body}");
            assert_eq!(body["error"]["code"], "audio_too_long", "{name}: {body}");
        }
    }
    let grown = common::bomb::peak_rss().saturating_sub(before);
    // Decoding at the source rate would hold 46 MB per bomb before the cap stopped it; at 16 kHz
    // a minute is 3.8 MB.
    assert!(grown < 40 << 20, "peak memory grew by {} MB", grown >> 20);

    // The server still transcribes.
    let (s, body) = post(
        &base,
        std::fs::read(common::data("jfk.wav")).unwrap(),
        "jfk.wav",
    )
    .await;
    assert_eq!(s, 200);
    assert!(wer(JFK, body["text"].as_str().unwrap()) <= 0.10, "{body}");
}
