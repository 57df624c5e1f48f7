//! The HTTP surface over a real loopback socket: OpenAI-compatible transcription in every
//! response format, JSON errors for bad uploads, and a server that keeps serving after them.

mod common;

use reqwest::multipart::{Form, Part};
use reqwest::StatusCode;
use serde_json::Value;
use voxd::wer::wer;

const JFK: &str = "And so my fellow Americans, ask not what your country can do for you, ask what you can do for your country.";

fn upload(bytes: Vec<u8>, filename: &str) -> Form {
    Form::new()
        .part("file", Part::bytes(bytes).file_name(filename.to_string()))
        .text("model", "whisper-1")
}

async fn post(base: &str, form: Form) -> reqwest::Response {
    reqwest::Client::new()
        .post(format!("{base}/v1/audio/transcriptions"))
        .multipart(form)
        .send()
        .await
        .unwrap()
}

/// Asserts an OpenAI-style JSON error with the given status and code.
async fn assert_error(resp: reqwest::Response, status: StatusCode, code: &str) -> Value {
    assert_eq!(resp.status(), status);
    let body: Value = resp.json().await.expect("error bodies are JSON");
    assert_eq!(body["error"]["code"], code, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    assert!(body["error"]["type"].is_string(), "{body}");
    body
}

async fn healthy(base: &str) {
    let r = reqwest::get(format!("{base}/healthz")).await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
}

#[tokio::test]
async fn transcribes_jfk_in_every_response_format() {
    let base = common::start_server(25 << 20, true).await;
    let wav = std::fs::read(common::data("jfk.wav")).unwrap();

    let r = post(&base, upload(wav.clone(), "jfk.wav")).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r.headers().contains_key("server-timing"));
    let body: Value = r.json().await.unwrap();
    assert!(wer(JFK, body["text"].as_str().unwrap()) <= 0.10, "{body}");

    let r = post(
        &base,
        upload(wav.clone(), "jfk.wav").text("response_format", "text"),
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    assert!(wer(JFK, &r.text().await.unwrap()) <= 0.10);

    let r = post(
        &base,
        upload(wav.clone(), "jfk.wav").text("response_format", "verbose_json"),
    )
    .await;
    let body: Value = r.json().await.unwrap();
    assert!(wer(JFK, body["text"].as_str().unwrap()) <= 0.10, "{body}");
    assert!(
        (body["duration"].as_f64().unwrap() - 11.0).abs() < 0.1,
        "{body}"
    );
    let segments = body["segments"].as_array().unwrap();
    assert!(!segments.is_empty());
    let joined: Vec<&str> = segments
        .iter()
        .map(|s| s["text"].as_str().unwrap())
        .collect();
    assert!(wer(JFK, &joined.join(" ")) <= 0.10, "{body}");
    for s in segments {
        assert!(
            s["end"].as_f64().unwrap() >= s["start"].as_f64().unwrap(),
            "{s}"
        );
    }

    let r = post(
        &base,
        upload(wav.clone(), "jfk.wav").text("response_format", "srt"),
    )
    .await;
    let srt = r.text().await.unwrap();
    assert!(
        srt.starts_with("1\n00:00:0") && srt.contains(" --> "),
        "{srt}"
    );
    let r = post(&base, upload(wav, "jfk.wav").text("response_format", "vtt")).await;
    let vtt = r.text().await.unwrap();
    assert!(vtt.starts_with("WEBVTT\n\n00:00:0"), "{vtt}");
}

#[tokio::test]
async fn other_containers_and_a_chosen_channel_work_over_http() {
    let base = common::start_server(25 << 20, true).await;
    let flac = std::fs::read(common::data("jfk.flac")).unwrap();
    let body: Value = post(&base, upload(flac, "jfk.flac"))
        .await
        .json()
        .await
        .unwrap();
    assert!(wer(JFK, body["text"].as_str().unwrap()) <= 0.10, "{body}");

    let stereo = std::fs::read(common::data("stereo_diarization.wav")).unwrap();
    let form = upload(stereo, "s.wav").text("channel", "right");
    let body: Value = post(&base, form).await.json().await.unwrap();
    let right = common::reference("stereo_diarization.wav", "right");
    assert!(
        wer(&right, body["text"].as_str().unwrap()) <= 0.10,
        "{body}"
    );
}

#[tokio::test]
async fn bad_requests_get_json_errors_and_the_server_keeps_serving() {
    // A 1 MiB limit so that the oversized case is cheap.
    let base = common::start_server(1 << 20, true).await;

    // Random bytes are not audio.
    let noise: Vec<u8> = (0..50_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8)
        .collect();
    let body = assert_error(
        post(&base, upload(noise, "x.wav")).await,
        StatusCode::BAD_REQUEST,
        "invalid_audio",
    )
    .await;
    assert_eq!(body["error"]["param"], "file");
    healthy(&base).await;

    // Too large.
    let big = vec![0u8; 3 << 20];
    assert_error(
        post(&base, upload(big, "big.wav")).await,
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
    )
    .await;
    healthy(&base).await;

    // No file field, an empty file, unknown format, a bad channel.
    let form = Form::new().text("model", "whisper-1");
    assert_error(
        post(&base, form).await,
        StatusCode::BAD_REQUEST,
        "missing_file",
    )
    .await;
    assert_error(
        post(&base, upload(vec![], "e.wav")).await,
        StatusCode::BAD_REQUEST,
        "empty_audio",
    )
    .await;
    let wav = std::fs::read(common::data("LDC93S1_pcms16le_1_16000.wav")).unwrap();
    let form = upload(wav.clone(), "a.wav").text("response_format", "xml");
    assert_error(
        post(&base, form).await,
        StatusCode::BAD_REQUEST,
        "invalid_response_format",
    )
    .await;
    let form = upload(wav.clone(), "a.wav").text("channel", "3");
    assert_error(
        post(&base, form).await,
        StatusCode::BAD_REQUEST,
        "invalid_channel",
    )
    .await;

    // Not multipart at all.
    let r = reqwest::Client::new()
        .post(format!("{base}/v1/audio/transcriptions"))
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_error(r, StatusCode::BAD_REQUEST, "invalid_multipart").await;

    // Unknown routes are JSON 404s.
    let r = reqwest::get(format!("{base}/v1/nope")).await.unwrap();
    assert_error(r, StatusCode::NOT_FOUND, "not_found").await;

    // And a good request still works afterwards.
    let body: Value = post(&base, upload(wav, "a.wav"))
        .await
        .json()
        .await
        .unwrap();
    assert!(
        body["text"]
            .as_str()
            .unwrap()
            .to_lowercase()
            .contains("suit"),
        "{body}"
    );
    healthy(&base).await;
}

#[tokio::test]
async fn readiness_follows_the_model() {
    let loading = common::start_server(1 << 20, false).await;
    healthy(&loading).await;
    let r = reqwest::get(format!("{loading}/readyz")).await.unwrap();
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    let wav = std::fs::read(common::data("jfk.wav")).unwrap();
    let r = post(&loading, upload(wav, "jfk.wav")).await;
    assert!(r.headers().contains_key("retry-after"));
    assert_error(r, StatusCode::SERVICE_UNAVAILABLE, "model_not_ready").await;

    // The web demo is served at / even while the model loads.
    let r = reqwest::get(format!("{loading}/")).await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    let page = r.text().await.unwrap();
    assert!(page.contains("/app.js") && page.contains("/style.css"));
    // Its script, worklet and SDK too, with JavaScript content types.
    for (path, needle) in [
        ("/app.js", "audioWorklet"),
        ("/mic-worklet.js", "registerProcessor"),
        ("/sdk/voxd.js", "export async function connect"),
    ] {
        let r = reqwest::get(format!("{loading}{path}")).await.unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{path}");
        assert!(r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/javascript"));
        assert!(r.text().await.unwrap().contains(needle), "{path}");
    }

    let ready = common::start_server(1 << 20, true).await;
    let r = reqwest::get(format!("{ready}/readyz")).await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["status"], "ready");
}
