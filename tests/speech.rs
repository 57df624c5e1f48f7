//! Spoken answers over the realtime API and `POST /v1/audio/speech`, against a real server with
//! the real voice (Piper on ONNX Runtime), speech model, knowledge base and LLM. What the server
//! says is heard back by voxd's own Whisper and compared with the transcript it sent. The remote
//! backend (`--tts-url`) is tested against this server's own speech endpoint.

mod common;

use std::sync::Arc;

use base64::Engine;
use serde_json::{json, Value};
use voxd::client::{self, Receiver, Sender};
use voxd::protocol::ServerEvent;
use voxd::server::ServerSettings;

/// One test at a time drives the models hard (they share two cores).
static HEAVY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

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

fn user_text(text: &str) -> Value {
    json!({"type": "conversation.item.create", "item": {"type": "message", "role": "user",
        "content": [{"type": "input_text", "text": text}]}})
}

fn errors(events: &[ServerEvent]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| match e {
            ServerEvent::Error { error } => error.code.clone(),
            _ => None,
        })
        .collect()
}

/// The audio bytes sent for `response` (all of them when `None`).
fn audio_of(events: &[ServerEvent], response: Option<&str>) -> Vec<u8> {
    events
        .iter()
        .filter_map(|e| match e {
            ServerEvent::OutputAudioDelta {
                response_id, delta, ..
            } if response.is_none_or(|r| r == response_id) => Some(
                base64::engine::general_purpose::STANDARD
                    .decode(delta)
                    .unwrap(),
            ),
            _ => None,
        })
        .flatten()
        .collect()
}

fn transcript_done(events: &[ServerEvent]) -> String {
    events
        .iter()
        .find_map(|e| match e {
            ServerEvent::OutputAudioTranscriptDone { transcript, .. } => Some(transcript.clone()),
            _ => None,
        })
        .expect("a transcript")
}

fn response_done(events: &[ServerEvent]) -> Value {
    events
        .iter()
        .find_map(|e| match e {
            ServerEvent::ResponseDone { response } => Some(response.clone()),
            _ => None,
        })
        .expect("response.done")
}

/// What voxd's Whisper hears in `samples` at `rate`.
async fn hear(samples: &[f32], rate: u32) -> String {
    use voxd::asr::Asr;
    let at16 = voxd::audio::resample::resample_all(samples, rate, 16_000).unwrap();
    common::pool()
        .transcribe(voxd::asr::Request::new(at16))
        .await
        .unwrap()
        .text
}

fn pcm16(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(2)
        .map(|b| i16::from_le_bytes([b[0], b[1]]) as f32 / 32768.0)
        .collect()
}

async fn open(url: &str, session: Value) -> (Sender, Receiver, Value) {
    let (mut tx, mut rx) = client::connect(url, None).await.unwrap();
    let created = read_until(&mut rx, |e| !e.is_empty()).await;
    let ServerEvent::SessionCreated { session: view } = &created[0] else {
        panic!("{created:?}")
    };
    let view = view.clone();
    tx.update_session(session).await.unwrap();
    let ev = read_until(&mut rx, |e| {
        e.iter()
            .any(|e| matches!(e.kind(), "session.updated" | "error"))
    })
    .await;
    assert_eq!(ev.last().unwrap().kind(), "session.updated", "{ev:?}");
    (tx, rx, view)
}

async fn speaking_server(with_kb: bool) -> (String, String, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let kb = if with_kb {
        Some(common::fixture_kb(dir.path()).await)
    } else {
        None
    };
    let tts: Arc<dyn voxd::tts::Tts> = tokio::task::spawn_blocking(common::tts).await.unwrap();
    let (ws, http) = common::start_speaking(
        ServerSettings::default(),
        kb,
        Some(common::llm()),
        Some(tts),
    )
    .await;
    (ws, http, dir)
}

#[tokio::test]
async fn a_spoken_question_gets_a_spoken_answer_that_says_its_transcript() {
    let _heavy = HEAVY.lock().await;
    let (url, _, dir) = speaking_server(true).await;
    let (mut tx, mut rx, created) = open(
        &url,
        json!({"type": "realtime", "audio": {"input": {"turn_detection": null}}}),
    )
    .await;
    // Like OpenAI's, a realtime session speaks by default, with the server's voice.
    assert_eq!(created["output_modalities"], json!(["audio"]));
    assert_eq!(created["audio"]["output"]["voice"], "joe");
    assert_eq!(
        created["audio"]["output"]["format"],
        json!({"type": "audio/pcm", "rate": 24000})
    );

    let question = common::speak(dir.path(), "What time do you open on Sunday?", 24_000);
    tx.append(&question).await.unwrap();
    tx.commit().await.unwrap();
    tx.create_response().await.unwrap();
    let events = read_until(&mut rx, |e| count(e, "response.done") == 1).await;
    assert!(errors(&events).is_empty(), "{:?}", errors(&events));
    assert_eq!(count(&events, "response.output_text.delta"), 0);
    let part = events
        .iter()
        .find_map(|e| match e {
            ServerEvent::ContentPartAdded { part, .. } => Some(part.clone()),
            _ => None,
        })
        .unwrap();
    assert_eq!(part["type"], "audio");

    // The transcript deltas add up to the transcript, which is what the audio says.
    let deltas: String = events
        .iter()
        .filter_map(|e| match e {
            ServerEvent::OutputAudioTranscriptDelta { delta, .. } => Some(delta.as_str()),
            _ => None,
        })
        .collect();
    let transcript = transcript_done(&events);
    assert_eq!(deltas, transcript);
    assert!(!transcript.trim().is_empty());
    let audio = pcm16(&audio_of(&events, None));
    let secs = audio.len() as f64 / 24_000.0;
    assert!(secs > 1.0, "{secs} s of audio for {transcript:?}");
    let heard = hear(&audio, 24_000).await;
    // Compared with the words as spoken ("10:00" is said "10").
    let said = voxd::tts::text::spoken_forms(&transcript);
    let e = voxd::wer::wer(&said, &heard);
    assert!(e <= 0.3, "WER {e:.2}: said {said:?}, heard {heard:?}");

    let response = response_done(&events);
    assert_eq!(response["status"], "completed");
    assert_eq!(response["output_modalities"], json!(["audio"]));
    let content = &response["output"][0]["content"][0];
    assert_eq!(content["type"], "output_audio");
    assert_eq!(content["transcript"], transcript.as_str());
    let timing = &response["voxd_timing"];
    let audio_ms = timing["audio_ms"].as_f64().unwrap();
    assert!((audio_ms - secs * 1e3).abs() < 50.0, "{audio_ms} vs {secs}");
    assert!(
        timing["first_audio_ms"].as_f64().unwrap() >= timing["first_token_ms"].as_f64().unwrap()
    );
}

#[tokio::test]
async fn g711_output_text_on_request_and_unknown_voices_refused() {
    let _heavy = HEAVY.lock().await;
    let (url, _, _dir) = speaking_server(false).await;
    let (mut tx, mut rx, _) = open(
        &url,
        json!({"type": "realtime", "instructions": "Answer in one short sentence.",
            "audio": {"output": {"format": {"type": "audio/pcmu"}, "voice": "alloy"}}}),
    )
    .await;
    tx.send_text(user_text("Say hello to Maria.").to_string())
        .await
        .unwrap();
    tx.create_response().await.unwrap();
    let events = read_until(&mut rx, |e| count(e, "response.done") == 1).await;
    assert!(errors(&events).is_empty(), "{:?}", errors(&events));
    // μ-law: one byte a sample at 8 kHz.
    let ulaw = audio_of(&events, None);
    let audio_ms = response_done(&events)["voxd_timing"]["audio_ms"]
        .as_f64()
        .unwrap();
    assert!(
        (ulaw.len() as f64 / 8.0 - audio_ms).abs() < 20.0,
        "{} bytes for {audio_ms} ms",
        ulaw.len()
    );
    let mut samples = Vec::new();
    voxd::audio::g711::Law::Mu.decode_into(&ulaw, &mut samples);
    let transcript = transcript_done(&events);
    let heard = hear(&samples, 8_000).await;
    let e = voxd::wer::wer(&voxd::tts::text::spoken_forms(&transcript), &heard);
    assert!(e <= 0.4, "WER {e:.2}: said {transcript:?}, heard {heard:?}");

    // A voice the server does not have is refused, and the session keeps its settings.
    tx.update_session(json!({"audio": {"output": {"voice": "darth"}}}))
        .await
        .unwrap();
    let ev = read_until(&mut rx, |e| count(e, "error") == 1).await;
    assert_eq!(errors(&ev), vec!["invalid_voice".to_string()]);
    // One response in text, asked for on the response alone.
    tx.send_text(
        json!({"type": "response.create", "response": {"output_modalities": ["text"]}}).to_string(),
    )
    .await
    .unwrap();
    let events = read_until(&mut rx, |e| count(e, "response.done") == 1).await;
    assert!(count(&events, "response.output_text.delta") > 0);
    assert_eq!(count(&events, "response.output_audio.delta"), 0);
    assert_eq!(response_done(&events)["output_modalities"], json!(["text"]));

    // voxd's extension: the audio as binary frames of raw PCM16, not base64 events.
    tx.update_session(
        json!({"audio": {"output": {"format": {"type": "audio/pcm", "rate": 24000}}},
        "voxd": {"binary_audio_out": true}}),
    )
    .await
    .unwrap();
    tx.create_response().await.unwrap();
    let (mut frames, mut events) = (Vec::new(), Vec::new());
    while count(&events, "response.done") == 0 {
        let next = tokio::time::timeout(std::time::Duration::from_secs(120), rx.next())
            .await
            .expect("the server stopped answering")
            .expect("the session ended")
            .unwrap();
        match next {
            client::Incoming::Event(e) => events.push(e),
            client::Incoming::Audio(bytes) => frames.push(bytes),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(count(&events, "response.output_audio.delta"), 0);
    assert!(count(&events, "response.output_audio_transcript.delta") > 0);
    let bytes: usize = frames.iter().map(Vec::len).sum();
    let audio_ms = response_done(&events)["voxd_timing"]["audio_ms"]
        .as_f64()
        .unwrap();
    assert!(
        bytes > 0 && (bytes as f64 / 48.0 - audio_ms).abs() < 20.0,
        "{bytes} bytes in {} frames for {audio_ms} ms",
        frames.len()
    );
}

#[tokio::test]
async fn barge_in_stops_the_voice_and_truncate_keeps_what_was_heard() {
    let _heavy = HEAVY.lock().await;
    let (url, _, dir) = speaking_server(false).await;
    let (mut tx, mut rx, _) = open(
        &url,
        json!({"type": "realtime",
            "instructions": "You are a storyteller. Tell long stories of many sentences.",
            "audio": {"input": {"format": {"type": "audio/pcm", "rate": 16000},
                "turn_detection": {"type": "server_vad", "silence_duration_ms": 500}}}}),
    )
    .await;
    tx.send_text(user_text("Tell me a long story about a dragon and a knight.").to_string())
        .await
        .unwrap();
    tx.create_response().await.unwrap();
    let mut events = read_until(&mut rx, |e| {
        count(e, "response.output_audio.delta") > 0 || count(e, "response.done") > 0
    })
    .await;
    let first = response_done_or_created(&events);
    assert_eq!(
        count(&events, "response.done"),
        0,
        "the story ended at once"
    );

    // A short sound first (the first 300 ms of the words: an "mm-hm" or a cough), which must
    // not interrupt; then the person talks over the answer.
    let words = common::speak(dir.path(), "Wait, stop, stop please.", 16_000);
    let onset = words
        .iter()
        .position(|s| s.abs() > 0.05)
        .expect("espeak spoke");
    let mut speech = words[onset..onset + 16_000 * 3 / 10].to_vec();
    speech.extend(vec![0.0; 16_000]);
    speech.extend(&words);
    speech.extend(vec![0.0; 16_000]);
    tx.append(&speech).await.unwrap();
    events.extend(
        read_until(&mut rx, |e| {
            e.iter().any(|e| {
                matches!(e, ServerEvent::ResponseDone { response } if response["id"] == first.as_str())
            })
        })
        .await,
    );
    let started = events
        .iter()
        .position(|e| e.kind() == "input_audio_buffer.speech_started")
        .expect("the barge-in was heard");
    match &events[started] {
        // A turn the short sound started would start at 0 ms.
        ServerEvent::SpeechStarted { audio_start_ms, .. } => assert!(
            *audio_start_ms > 300,
            "the short sound at 0–300 ms started a turn ({audio_start_ms} ms)"
        ),
        other => panic!("{other:?}"),
    }
    let after = events[started..]
        .iter()
        .filter(|e| matches!(e, ServerEvent::OutputAudioDelta { response_id, .. } if *response_id == first))
        .count();
    assert!(after <= 1, "{after} audio deltas after speech_started");
    let done = events
        .iter()
        .find_map(|e| match e {
            ServerEvent::ResponseDone { response } if response["id"] == first.as_str() => {
                Some(response.clone())
            }
            _ => None,
        })
        .unwrap();
    assert_eq!(done["status"], "cancelled");
    assert_eq!(done["status_details"]["reason"], "turn_detected");
    let item = done["output"][0]["id"].as_str().unwrap().to_string();

    // The pieces as the client saw them: each transcript delta, then its audio.
    let mut pieces: Vec<(String, usize)> = Vec::new();
    for e in &events {
        match e {
            ServerEvent::OutputAudioTranscriptDelta {
                response_id, delta, ..
            } if *response_id == first => pieces.push((delta.trim().to_string(), 0)),
            ServerEvent::OutputAudioDelta {
                response_id, delta, ..
            } if *response_id == first => {
                pieces.last_mut().unwrap().1 += base64::engine::general_purpose::STANDARD
                    .decode(delta)
                    .unwrap()
                    .len()
            }
            _ => {}
        }
    }
    let first_piece_ms = pieces[0].1 as u64 / 48;
    let sent_ms: u64 = pieces.iter().map(|p| p.1 as u64).sum::<u64>() / 48;

    let truncate = |ms: u64| {
        json!({"type": "conversation.item.truncate", "item_id": item, "content_index": 0,
            "audio_end_ms": ms})
        .to_string()
    };
    let retrieve = json!({"type": "conversation.item.retrieve", "item_id": item}).to_string();
    // Beyond the audio sent: refused.
    tx.send_text(truncate(sent_ms + 5_000)).await.unwrap();
    let ev = read_until(&mut rx, |e| count(e, "error") > 0).await;
    assert!(errors(&ev).contains(&"invalid_audio_end_ms".to_string()));
    // At the end of the first piece: exactly its words were heard.
    tx.send_text(truncate(first_piece_ms)).await.unwrap();
    tx.send_text(retrieve.clone()).await.unwrap();
    let ev = read_until(&mut rx, |e| count(e, "conversation.item.retrieved") > 0).await;
    assert_eq!(count(&ev, "conversation.item.truncated"), 1);
    let kept = ev
        .iter()
        .find_map(|e| match e {
            ServerEvent::ItemRetrieved { item } => item.content[0].transcript.clone(),
            _ => None,
        })
        .unwrap();
    assert_eq!(kept, pieces[0].0);
    // Nothing played: nothing heard.
    tx.send_text(truncate(0)).await.unwrap();
    tx.send_text(retrieve).await.unwrap();
    let ev = read_until(&mut rx, |e| count(e, "conversation.item.retrieved") > 0).await;
    let kept = ev
        .iter()
        .find_map(|e| match e {
            ServerEvent::ItemRetrieved { item } => item.content[0].transcript.clone(),
            _ => None,
        })
        .unwrap();
    assert_eq!(kept, "");
}

#[tokio::test]
async fn a_truncate_sent_while_the_answer_is_generated_applies_when_it_ends() {
    let _heavy = HEAVY.lock().await;
    let (url, _, _dir) = speaking_server(false).await;
    let (mut tx, mut rx, _) = open(
        &url,
        json!({"type": "realtime",
            "instructions": "You are a storyteller. Tell long stories of many sentences."}),
    )
    .await;
    tx.send_text(user_text("Tell me a long story about a dragon and a knight.").to_string())
        .await
        .unwrap();
    tx.create_response().await.unwrap();
    let events = read_until(&mut rx, |e| {
        count(e, "response.output_audio.delta") > 0 || count(e, "response.done") > 0
    })
    .await;
    assert_eq!(
        count(&events, "response.done"),
        0,
        "the story ended at once"
    );
    let item = events
        .iter()
        .find_map(|e| match e {
            ServerEvent::OutputAudioDelta { item_id, .. } => Some(item_id.clone()),
            _ => None,
        })
        .unwrap();
    // As the web demo's "Stop answer": playback stops after 100 ms, the client truncates the
    // answer the model is still writing, then cancels it.
    tx.send_text(
        json!({"type": "conversation.item.truncate", "item_id": item, "content_index": 0,
            "audio_end_ms": 100})
        .to_string(),
    )
    .await
    .unwrap();
    tx.send_text(json!({"type": "response.cancel"}).to_string())
        .await
        .unwrap();
    let events = read_until(&mut rx, |e| {
        count(e, "conversation.item.truncated") > 0 || count(e, "error") > 0
    })
    .await;
    assert_eq!(errors(&events), Vec::<String>::new());
    let done = events
        .iter()
        .position(|e| e.kind() == "response.done")
        .expect("the cancel ended the response first");
    match &events[done + 1..] {
        [.., ServerEvent::ItemTruncated {
            item_id,
            audio_end_ms,
            ..
        }] => assert_eq!((item_id, *audio_end_ms), (&item, 100)),
        other => panic!("{:?}", other.iter().map(|e| e.kind()).collect::<Vec<_>>()),
    }
}

/// The id of the response the events are about.
fn response_done_or_created(events: &[ServerEvent]) -> String {
    events
        .iter()
        .find_map(|e| match e {
            ServerEvent::ResponseCreated { response } => response["id"].as_str().map(String::from),
            _ => None,
        })
        .unwrap()
}

#[tokio::test]
async fn the_speech_endpoint_streams_wav_and_pcm_and_types_its_errors() {
    let _heavy = HEAVY.lock().await;
    let (_, base, _dir) = speaking_server(false).await;
    let http = reqwest::Client::new();
    let text = "The museum is open from 10 until 6. Tickets cost 12 euros.";
    let resp = http
        .post(format!("{base}/v1/audio/speech"))
        .json(&json!({"model": "tts-1", "voice": "alloy", "input": text, "response_format": "wav"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "audio/wav");
    let wav = resp.bytes().await.unwrap();
    let file = _dir.path().join("speech.wav");
    std::fs::write(&file, &wav).unwrap();
    let decoded = voxd::audio::decode_file(&file, voxd::audio::ChannelSelect::Mix).unwrap();
    assert_eq!(decoded.sample_rate, 24_000);
    let heard = hear(&decoded.samples, 24_000).await;
    let e = voxd::wer::wer(text, &heard);
    assert!(e <= 0.2, "WER {e:.2}: heard {heard:?}");

    // Raw PCM at a faster speed is shorter.
    let pcm = http
        .post(format!("{base}/v1/audio/speech"))
        .json(&json!({"model": "tts-1", "voice": "joe", "input": text, "response_format": "pcm", "speed": 1.5}))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let ratio = (pcm.len() / 2) as f64 / decoded.samples.len() as f64;
    assert!((0.5..0.8).contains(&ratio), "{ratio}");

    // Another server's speech endpoint as a backend (`--tts-url`): voxd's remote TTS against
    // this one.
    let remote = voxd::tts::RemoteTts::new(
        &format!("{base}/v1"),
        None,
        "tts-1",
        "alloy",
        std::time::Duration::from_secs(60),
    )
    .unwrap();
    use voxd::tts::Tts;
    assert_eq!(remote.voices()[0], "alloy");
    let ask = |text: &str, voice: &str| voxd::tts::SpeakRequest {
        text: text.into(),
        voice: voice.into(),
        speed: 1.0,
        urgent: false,
    };
    let speech = remote.speak(ask(text, "alloy")).await.unwrap();
    assert_eq!(speech.sample_rate, 24_000);
    let heard = hear(&speech.samples, 24_000).await;
    assert!(voxd::wer::wer(text, &heard) <= 0.2, "{heard:?}");
    let err = remote.speak(ask("hi", "darth")).await.unwrap_err();
    assert!(
        matches!(&err, voxd::tts::TtsError::Remote(m) if m.contains("invalid_voice")),
        "{err}"
    );

    for (body, status, code) in [
        (
            json!({"model": "tts-1", "voice": "darth", "input": "hi"}),
            400,
            "invalid_voice",
        ),
        (
            json!({"model": "tts-1", "voice": "joe", "input": "hi", "response_format": "mp3"}),
            400,
            "unsupported_response_format",
        ),
        (
            json!({"model": "tts-1", "voice": "joe", "input": "x".repeat(4097)}),
            400,
            "string_above_max_length",
        ),
        (
            json!({"model": "tts-1", "voice": "joe", "input": "hi", "speed": 9}),
            400,
            "invalid_speed",
        ),
        (
            json!({"model": "tts-1", "voice": "joe", "input": "  ** "}),
            400,
            "invalid_value",
        ),
        (
            json!({"model": "tts-1", "input": "hi"}),
            400,
            "missing_required_parameter",
        ),
        (
            json!({"model": "tts-1", "voice": "joe", "input": 5}),
            400,
            "invalid_json",
        ),
    ] {
        let resp = http
            .post(format!("{base}/v1/audio/speech"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), status, "{body}");
        let v: Value = resp.json().await.unwrap();
        assert_eq!(v["error"]["code"], code, "{body}: {v}");
    }
}
