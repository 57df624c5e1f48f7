//! The realtime WebSocket API end to end: real server on a loopback port, real model, audio
//! streamed like a microphone, checked against the OpenAI Realtime GA event flow.

mod common;

use std::time::Duration;

use serde_json::{json, Value};
use voxd::client::{self, Receiver, Sender};
use voxd::protocol::ServerEvent;
use voxd::server::ServerSettings;
use voxd::wer::wer;

/// Hang guard: a broken server must fail the test, not stall CI. Not a speed target.
const GUARD: Duration = Duration::from_secs(180);

/// Tests that stream speech share one 2-worker whisper pool; partials rightly give way to finals
/// under load, so tests that count partials or make load take turns.
static SPEECH: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

use common::read_until;

fn completed(events: &[ServerEvent]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| match e {
            ServerEvent::TranscriptionCompleted { transcript, .. } => Some(transcript.clone()),
            _ => None,
        })
        .collect()
}

fn count(events: &[ServerEvent], kind: &str) -> usize {
    events.iter().filter(|e| e.kind() == kind).count()
}

fn deltas(events: &[ServerEvent]) -> String {
    events
        .iter()
        .filter_map(|e| match e {
            ServerEvent::TranscriptionDelta { delta, .. } => Some(delta.as_str()),
            _ => None,
        })
        .collect()
}

async fn open(url: &str, session: Value) -> (Sender, Receiver) {
    let (mut tx, mut rx) = client::connect(url, None).await.unwrap();
    let (first, _) = read_until(&mut rx, |e| !e.is_empty()).await;
    assert_eq!(first[0].kind(), "session.created");
    tx.update_session(session).await.unwrap();
    let (ev, _) = read_until(&mut rx, |e| {
        e.iter()
            .any(|e| e.kind() == "session.updated" || e.kind() == "error")
    })
    .await;
    assert_eq!(ev.last().unwrap().kind(), "session.updated", "{ev:?}");
    (tx, rx)
}

fn pcm(rate: u32, silence_ms: u32) -> Value {
    json!({
        "type": "transcription",
        "audio": {"input": {
            "format": {"type": "audio/pcm", "rate": rate},
            "turn_detection": {"type": "server_vad", "silence_duration_ms": silence_ms}
        }}
    })
}

/// Streams `file` at `rate` (paced like a microphone) followed by `tail_ms` of silence, and
/// returns every event up to the expected number of completed transcripts.
async fn stream_file(
    url: &str,
    file: &str,
    rate: u32,
    binary: bool,
    turns: usize,
) -> Vec<ServerEvent> {
    // jfk.wav pauses 0.8 s mid-sentence: a 1.2 s silence window keeps it one turn.
    let (mut tx, mut rx) = open(url, pcm(rate, 1200)).await;
    let mut audio = common::audio_at(file, rate);
    audio.extend(vec![0.0; rate as usize * 2]);
    let sender = tokio::spawn(async move {
        tx.stream(&audio, rate, 20, true, binary).await.unwrap();
        tx
    });
    let (events, closed) =
        read_until(&mut rx, |e| count(e, "conversation.item.done") >= turns).await;
    assert_eq!(closed, None, "closed early: {events:?}");
    let _ = sender.await;
    events
}

fn check_jfk_turn(events: &[ServerEvent], label: &str) {
    check_jfk_turn_with(events, label, 0.15)
}

/// `max_delta_wer` bounds how far the concatenated partial deltas may be from the final text.
fn check_jfk_turn_with(events: &[ServerEvent], label: &str, max_delta_wer: f64) {
    let jfk = common::reference("jfk.wav", "");
    let kinds: Vec<&str> = events.iter().map(|e| e.kind()).collect();
    let started = kinds
        .iter()
        .position(|k| *k == "input_audio_buffer.speech_started")
        .expect("speech_started");
    let stopped = kinds
        .iter()
        .position(|k| *k == "input_audio_buffer.speech_stopped")
        .expect("speech_stopped");
    let partials_before_stop = kinds[started..stopped]
        .iter()
        .filter(|k| **k == "conversation.item.input_audio_transcription.delta")
        .count();
    assert!(
        partials_before_stop >= 2,
        "{label}: only {partials_before_stop} partials before speech_stopped: {kinds:?}"
    );
    // The GA order after the end of speech.
    let after: Vec<&str> = kinds[stopped..]
        .iter()
        .copied()
        .filter(|k| *k != "conversation.item.input_audio_transcription.delta")
        .collect();
    assert_eq!(
        after,
        [
            "input_audio_buffer.speech_stopped",
            "input_audio_buffer.committed",
            "conversation.item.added",
            "conversation.item.input_audio_transcription.completed",
            "conversation.item.done"
        ],
        "{label}"
    );
    let finals = completed(events);
    assert_eq!(finals.len(), 1, "{label}: {finals:?}");
    let w = wer(&jfk, &finals[0]);
    assert!(w <= 0.10, "{label}: WER {w:.2}: {}", finals[0]);
    let d = deltas(events);
    let agreement = wer(&finals[0], &d);
    assert!(
        agreement <= max_delta_wer,
        "{label}: deltas `{d}` vs final `{}`",
        finals[0]
    );
    // Every event of the turn names the same item.
    let ids: std::collections::HashSet<&str> = events
        .iter()
        .filter_map(|e| match e {
            ServerEvent::SpeechStarted { item_id, .. }
            | ServerEvent::SpeechStopped { item_id, .. }
            | ServerEvent::TranscriptionDelta { item_id, .. }
            | ServerEvent::TranscriptionCompleted { item_id, .. } => Some(item_id.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(ids.len(), 1, "{label}: {ids:?}");
}

#[tokio::test]
async fn jfk_in_real_time_gives_partials_then_the_final() {
    let _turn = SPEECH.lock().await;
    let (url, _) = common::start_realtime(ServerSettings::default()).await;
    let events = stream_file(&url, "jfk.wav", 24_000, false, 1).await;
    check_jfk_turn(&events, "24 kHz");
}

#[tokio::test]
async fn other_rates_and_binary_frames() {
    let _turn = SPEECH.lock().await;
    let (url, _) = common::start_realtime(ServerSettings::default()).await;
    // At 8 kHz tiny.en mishears the first two seconds until more context arrives ("and so am I
    // fellow" for "and so my fellow"), sometimes consistently enough for three hypotheses to agree;
    // those partial words then differ from the final (measured: up to 4 of 21 words).
    for (rate, binary, max_delta_wer) in [
        (8_000, false, 0.25),
        (48_000, false, 0.15),
        (16_000, true, 0.15),
    ] {
        let events = stream_file(&url, "jfk.wav", rate, binary, 1).await;
        check_jfk_turn_with(
            &events,
            &format!("{rate} Hz binary={binary}"),
            max_delta_wer,
        );
    }
}

#[tokio::test]
async fn two_utterances_are_two_turns() {
    let _turn = SPEECH.lock().await;
    let (url, _) = common::start_realtime(ServerSettings::default()).await;
    let (mut tx, mut rx) = open(&url, pcm(16_000, 1200)).await;
    let mut audio = common::audio_at("LDC93S1_pcms16le_1_16000.wav", 16_000);
    audio.extend(vec![0.0; 24_000]);
    audio.extend(common::audio_at("jfk.wav", 16_000));
    audio.extend(vec![0.0; 32_000]);
    let sender =
        tokio::spawn(async move { tx.stream(&audio, 16_000, 20, true, false).await.map(|_| tx) });
    let (events, _) = read_until(&mut rx, |e| completed(e).len() >= 2).await;
    sender.await.unwrap().unwrap();
    let finals = completed(&events);
    assert_eq!(
        count(&events, "input_audio_buffer.speech_started"),
        2,
        "{finals:?}"
    );
    assert!(
        wer(
            &common::reference("LDC93S1_pcms16le_1_16000.wav", ""),
            &finals[0]
        ) <= 0.2,
        "{finals:?}"
    );
    assert!(
        wer(&common::reference("jfk.wav", ""), &finals[1]) <= 0.1,
        "{finals:?}"
    );
    // The second item follows the first.
    let (first, second): (Vec<_>, Vec<_>) = events
        .iter()
        .filter_map(|e| match e {
            ServerEvent::Committed {
                previous_item_id,
                item_id,
            } => Some((previous_item_id.clone(), item_id.clone())),
            _ => None,
        })
        .unzip();
    assert_eq!(first[0], None);
    assert_eq!(first[1].as_ref(), Some(&second[0]));
}

#[tokio::test]
async fn manual_commit_without_turn_detection() {
    let _turn = SPEECH.lock().await;
    let (url, _) = common::start_realtime(ServerSettings::default()).await;
    let session = json!({"type": "transcription", "audio": {"input": {
        "format": {"type": "audio/pcm", "rate": 16000}, "turn_detection": null}}});
    let (mut tx, mut rx) = open(&url, session).await;
    // As fast as possible, then commit by hand.
    tx.stream(
        &common::audio_at("LDC93S1_pcms16le_1_16000.wav", 16_000),
        16_000,
        100,
        false,
        false,
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    let (events, _) = read_until(&mut rx, |e| !completed(e).is_empty()).await;
    assert_eq!(
        count(&events, "input_audio_buffer.speech_started"),
        0,
        "no VAD events"
    );
    assert!(
        wer(
            &common::reference("LDC93S1_pcms16le_1_16000.wav", ""),
            &completed(&events)[0]
        ) <= 0.2
    );
    // An empty buffer cannot be committed.
    tx.commit().await.unwrap();
    let (events, _) = read_until(&mut rx, |e| e.iter().any(|e| e.kind() == "error")).await;
    match events.last().unwrap() {
        ServerEvent::Error { error } => assert_eq!(
            error.code.as_deref(),
            Some("input_audio_buffer_commit_empty")
        ),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn eight_concurrent_sessions_all_get_correct_transcripts() {
    let _turn = SPEECH.lock().await;
    let (url, state) = common::start_realtime(ServerSettings::default()).await;
    let runs = futures::future::join_all((0..8).map(|_| {
        let url = url.clone();
        async move { stream_file(&url, "jfk.wav", 24_000, false, 1).await }
    }))
    .await;
    let jfk = common::reference("jfk.wav", "");
    for (i, events) in runs.iter().enumerate() {
        let finals = completed(events);
        assert!(wer(&jfk, &finals[0]) <= 0.10, "session {i}: {finals:?}");
    }
    drop(runs);
    wait_for_no_sessions(&state).await;
}

async fn wait_for_no_sessions(state: &voxd::server::AppState) {
    for _ in 0..200 {
        if state.live_sessions() == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("{} sessions still live", state.live_sessions());
}

#[tokio::test]
async fn disconnecting_mid_utterance_ends_the_session() {
    let (url, state) = common::start_realtime(ServerSettings::default()).await;
    let (mut tx, rx) = open(&url, pcm(16_000, 500)).await;
    let audio = common::audio_at("jfk.wav", 16_000);
    tx.stream(&audio[..16_000 * 3], 16_000, 20, false, false)
        .await
        .unwrap();
    assert_eq!(state.live_sessions(), 1);
    drop(tx);
    drop(rx);
    wait_for_no_sessions(&state).await;
}

/// Each malformed input gets an `error` with its code, and the session keeps working.
#[tokio::test]
async fn malformed_input_catalogue() {
    let (url, state) = common::start_realtime(ServerSettings::default()).await;
    let (mut tx, mut rx) = open(&url, pcm(16_000, 500)).await;
    let cases: &[(&str, &str)] = &[
        ("{not json", "invalid_json"),
        (r#"{"event_id":"c1","audio":"AAAA"}"#, "missing_event_type"),
        (
            r#"{"type":"input_audio_buffer.explode"}"#,
            "unknown_event_type",
        ),
        (
            r#"{"type":"input_audio_buffer.append","audio":"@@@not base64@@@"}"#,
            "invalid_base64",
        ),
        (
            r#"{"type":"input_audio_buffer.append","audio":"AAAA"}"#,
            "invalid_audio_length",
        ),
        (r#"{"type":"input_audio_buffer.append"}"#, "invalid_event"),
        (
            r#"{"type":"session.update","session":{"audio":{"input":{"format":{"type":"audio/opus"}}}}}"#,
            "unsupported_audio_format",
        ),
        (
            r#"{"type":"session.update","session":{"audio":{"input":{"format":{"type":"audio/pcm","rate":0}}}}}"#,
            "unsupported_sample_rate",
        ),
        (
            r#"{"type":"session.update","session":{"turn_detection":{"silence_duration_ms":-1}}}"#,
            "invalid_session_config",
        ),
        (
            r#"{"type":"session.update","session":{"audio":{"input":{"turn_detection":{"prefix_padding_ms":-300}}}}}"#,
            "invalid_session_config",
        ),
        (
            r#"{"type":"input_audio_buffer.commit","event_id":"c2"}"#,
            "input_audio_buffer_commit_empty",
        ),
        (r#"{"type":"response.create"}"#, "responses_unavailable"),
    ];
    for (i, (message, code)) in cases.iter().enumerate() {
        tx.send_text(message.to_string()).await.unwrap();
        let (events, closed) = read_until(&mut rx, |e| e.iter().any(|e| e.kind() == "error")).await;
        assert_eq!(closed, None, "case {i} closed the session");
        match events.last().unwrap() {
            ServerEvent::Error { error } => {
                assert_eq!(error.code.as_deref(), Some(*code), "case {i}: {message}");
                assert!(!error.message.is_empty());
                if message.contains("\"event_id\":\"c") {
                    assert!(
                        error
                            .event_id
                            .as_deref()
                            .is_some_and(|id| id.starts_with('c')),
                        "case {i}: {error:?}"
                    );
                }
            }
            other => panic!("case {i}: {other:?}"),
        }
        // Still working: a valid update is answered.
        tx.update_session(json!({"instructions": format!("after case {i}")}))
            .await
            .unwrap();
        let (events, _) =
            read_until(&mut rx, |e| e.iter().any(|e| e.kind() == "session.updated")).await;
        assert_eq!(events.last().unwrap().kind(), "session.updated");
    }
    // A message over the size limit closes the socket with 1009.
    let over = voxd::server::realtime::MAX_MESSAGE_BYTES + 512 * 1024;
    let _ = tx
        .send_text(format!(
            r#"{{"type":"input_audio_buffer.append","audio":"{}"}}"#,
            "A".repeat(over)
        ))
        .await;
    let (_, closed) = read_until(&mut rx, |_| false).await;
    assert_eq!(closed, Some(1009));
    wait_for_no_sessions(&state).await;
}

#[tokio::test]
async fn api_key_is_required_when_set() {
    let settings = ServerSettings {
        api_key: Some("s3cret".into()),
        ..Default::default()
    };
    let (url, _) = common::start_realtime(settings).await;
    match client::connect(&url, None).await {
        Err(client::ClientError::Refused { status, body }) => {
            assert_eq!(status, 401);
            assert!(body.contains("invalid_api_key"), "{body}");
        }
        other => panic!("expected 401, got {:?}", other.map(|_| ())),
    }
    assert!(matches!(
        client::connect(&url, Some("wrong")).await,
        Err(client::ClientError::Refused { status: 401, .. })
    ));

    // Header form.
    let (_tx, mut rx) = client::connect(&url, Some("s3cret")).await.unwrap();
    let (ev, _) = read_until(&mut rx, |e| !e.is_empty()).await;
    assert_eq!(ev[0].kind(), "session.created");

    // Browser form: the key travels as a WebSocket subprotocol, and `realtime` is selected.
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut req = url.as_str().into_client_request().unwrap();
    req.headers_mut().insert(
        "sec-websocket-protocol",
        "realtime, openai-insecure-api-key.s3cret".parse().unwrap(),
    );
    let (_ws, resp) = tokio_tungstenite::connect_async(req).await.unwrap();
    assert_eq!(resp.headers()["sec-websocket-protocol"], "realtime");
}

#[tokio::test]
async fn a_client_that_never_reads_is_disconnected() {
    let settings = ServerSettings {
        limits: voxd::realtime::Limits {
            out_queue: 8,
            ..Default::default()
        },
        ..Default::default()
    };
    let (url, state) = common::start_realtime(settings).await;
    let (mut tx, mut rx) = client::connect(&url, None).await.unwrap();
    // Each bad message earns an error event; the client reads none of them until the kernel's
    // socket buffers and the server's queue of 8 are full.
    let flood = async {
        for _ in 0..100_000 {
            if tx.send_text("x".into()).await.is_err() {
                break;
            }
        }
    };
    tokio::time::timeout(GUARD, flood)
        .await
        .expect("sending stalled");
    // Only now does the client read: what was queued, then the close.
    let (_, closed) = read_until(&mut rx, |_| false).await;
    assert_eq!(closed, Some(1013), "expected close 1013 (try again later)");
    wait_for_no_sessions(&state).await;
}

#[tokio::test]
async fn session_cap_origins_and_maximum_length() {
    let settings = ServerSettings {
        max_sessions: 1,
        allowed_origins: vec!["http://app.example".into()],
        limits: voxd::realtime::Limits {
            max_session: Duration::from_secs(2),
            ..Default::default()
        },
        ..Default::default()
    };
    let (url, state) = common::start_realtime(settings).await;
    let (_tx, mut rx) = client::connect(&url, None).await.unwrap();
    // The cap: a second session is refused before the upgrade.
    match client::connect(&url, None).await {
        Err(client::ClientError::Refused { status, body }) => {
            assert_eq!(status, 503);
            assert!(body.contains("too_many_sessions"), "{body}");
        }
        other => panic!("expected 503, got {:?}", other.map(|_| ())),
    }
    // The maximum length: an error, then a normal close.
    let (events, closed) = read_until(&mut rx, |_| false).await;
    assert!(
        events.iter().any(|e| matches!(e, ServerEvent::Error { error } if error.code.as_deref() == Some("session_expired"))),
        "{events:?}"
    );
    assert_eq!(closed, Some(1000));
    wait_for_no_sessions(&state).await;

    // Origins: a browser from elsewhere is refused; the allowed one gets in.
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut req = url.as_str().into_client_request().unwrap();
    req.headers_mut()
        .insert("origin", "http://evil.example".parse().unwrap());
    match tokio_tungstenite::connect_async(req).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), 403),
        other => panic!("expected 403, got {:?}", other.map(|_| ())),
    }
    let mut req = url.as_str().into_client_request().unwrap();
    req.headers_mut()
        .insert("origin", "http://app.example".parse().unwrap());
    assert!(tokio_tungstenite::connect_async(req).await.is_ok());
}

#[tokio::test]
async fn an_append_over_15_mib_is_refused_and_the_session_continues() {
    let (url, _) = common::start_realtime(ServerSettings::default()).await;
    let (mut tx, mut rx) = open(&url, pcm(16_000, 500)).await;
    // 15.5 MiB of audio: within the WebSocket message limit, over the API's append limit.
    let audio = "A".repeat((15 * 1024 * 1024 + 512 * 1024) / 3 * 4);
    tx.send_text(format!(
        r#"{{"type":"input_audio_buffer.append","event_id":"big","audio":"{audio}"}}"#
    ))
    .await
    .unwrap();
    let (events, closed) = read_until(&mut rx, |e| e.iter().any(|e| e.kind() == "error")).await;
    assert_eq!(closed, None);
    match events.last().unwrap() {
        ServerEvent::Error { error } => {
            assert_eq!(error.code.as_deref(), Some("audio_too_large"));
            assert_eq!(error.event_id.as_deref(), Some("big"));
        }
        other => panic!("{other:?}"),
    }
    tx.update_session(json!({"instructions": "still here"}))
        .await
        .unwrap();
    let (events, _) =
        read_until(&mut rx, |e| e.iter().any(|e| e.kind() == "session.updated")).await;
    assert_eq!(events.last().unwrap().kind(), "session.updated");
}

#[tokio::test]
async fn idle_timeout_is_reported_when_nobody_speaks() {
    let (url, _) = common::start_realtime(ServerSettings::default()).await;
    let session = json!({"audio": {"input": {"format": {"type": "audio/pcm", "rate": 16000},
        "turn_detection": {"type": "server_vad", "idle_timeout_ms": 1000}}}});
    let (mut tx, mut rx) = open(&url, session).await;
    tx.stream(&vec![0.0; 16_000 * 5 / 2], 16_000, 100, false, false)
        .await
        .unwrap();
    let (events, _) = read_until(&mut rx, |e| {
        e.iter()
            .any(|e| e.kind() == "input_audio_buffer.timeout_triggered")
    })
    .await;
    match events.last().unwrap() {
        ServerEvent::TimeoutTriggered {
            audio_start_ms,
            audio_end_ms,
            ..
        } => {
            assert_eq!((*audio_start_ms, *audio_end_ms), (0, 1000));
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn g711_mu_law_and_a_law_sessions() {
    let (url, _) = common::start_realtime(ServerSettings::default()).await;
    let reference = common::reference("LDC93S1_pcms16le_1_8000.wav", "");
    for (format, file) in [
        ("audio/pcmu", "LDC93S1_8000.ulaw"),
        ("audio/pcma", "LDC93S1_8000.alaw"),
    ] {
        let session = json!({"type": "transcription", "audio": {"input": {
            "format": {"type": format}, "turn_detection": null}}});
        let (mut tx, mut rx) = open(&url, session).await;
        // Bytes encoded by sox, sent as they would come off a phone line: 20 ms binary frames.
        let bytes = std::fs::read(common::data(file)).unwrap();
        for frame in bytes.chunks(160) {
            tx.send_binary(frame.to_vec()).await.unwrap();
        }
        tx.commit().await.unwrap();
        let (events, _) = read_until(&mut rx, |e| !completed(e).is_empty()).await;
        let text = &completed(&events)[0];
        // tiny.en gets 2 of these 11 words wrong from 8 kHz PCM and one more from G.711's
        // quantisation noise; a wrong law or byte order gives no sentence at all.
        assert!(wer(&reference, text) <= 0.3, "{format}: {text}");
    }
}
