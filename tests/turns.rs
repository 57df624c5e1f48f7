//! Turn-taking with the real models: Smart Turn v3.2 (is the turn finished?) and Silero VAD (is
//! this voice?) on ONNX Runtime, alone and in realtime sessions over a loopback socket.
//!
//! The recordings are people (jfk.wav, LDC93S1): Smart Turn judges prosody, and on synthetic
//! voices it misjudges pauses in the middle of phrases (see docs/turn-taking.md).

mod common;

use serde_json::{json, Value};
use voxd::client::{self, Receiver, Sender};
use voxd::protocol::server::TurnTiming;
use voxd::protocol::ServerEvent;
use voxd::server::ServerSettings;
use voxd::vad::{TurnDetector, VadParams};

use common::read_until;

const RATE: u32 = 16_000;

fn ms(n: u64) -> usize {
    (n * RATE as u64 / 1000) as usize
}

fn silence(n: u64) -> Vec<f32> {
    vec![0.0; ms(n)]
}

/// `audio[..cut_ms]` followed by 200 ms of silence: a pause as the model sees it at a check.
fn cut(audio: &[f32], cut_ms: u64) -> Vec<f32> {
    let mut a = audio[..ms(cut_ms).min(audio.len())].to_vec();
    a.extend(silence(200));
    a
}

#[test]
fn smart_turn_tells_a_finished_sentence_from_one_cut_mid_phrase() {
    let model = common::turn_models().end_of_turn.unwrap();
    let jfk = common::audio_at("jfk.wav", RATE);
    let p = |audio: Vec<f32>| model.check_blocking(audio).unwrap().probability;
    // "…ask not what your | country…", "…what your country can | do for you…", "…ask what
    // you | can do…", "…can do for | your country": cut between words, mid-phrase.
    let mid: Vec<f32> = [3750, 4330, 7540, 8580]
        .iter()
        .map(|&t| p(cut(&jfk, t)))
        .collect();
    // "…ask what you can do for your country." and "She had your dark suit in greasy wash
    // water all year.": whole sentences.
    let ldc = common::audio_at("LDC93S1_pcms16le_1_16000.wav", RATE);
    let whole = [p(cut(&jfk, 10_620)), p(cut(&ldc, 100_000))];
    assert!(
        mid.iter().all(|&x| x < 0.3),
        "mid-phrase cuts should read as unfinished: {mid:?}"
    );
    assert!(
        whole.iter().all(|&x| x > 0.6),
        "whole sentences should read as finished: {whole:?}"
    );
    // Junk in, a probability out (never a panic): silence alone, a click, a long stretch.
    for audio in [silence(300), vec![0.9; 64], vec![0.0; ms(30_000)]] {
        let v = model.check_blocking(audio).unwrap();
        assert!((0.0..=1.0).contains(&v.probability), "{v:?}");
    }
}

#[test]
fn silero_finds_the_turns_webrtc_finds() {
    let silero = common::turn_models().silero.unwrap();
    let detector = |params| TurnDetector::silero(params, silero.clone());
    let mut jfk = silence(1000);
    jfk.extend(common::audio_at("jfk.wav", RATE));
    // One turn with a 1.2 s window, from about when the speech starts to its last word.
    let long = VadParams {
        silence_duration_ms: 1200,
        ..Default::default()
    };
    let turns = voxd::vad::segment_with(&jfk, detector(long));
    assert_eq!(turns.len(), 1, "{turns:?}");
    let (start, end) = turns[0];
    assert!((600..1500).contains(&start), "start {start}");
    assert!((11_000..12_300).contains(&end), "end {end}");
    // Two utterances 1.5 s apart are two turns.
    let mut two = common::audio_at("LDC93S1_pcms16le_1_16000.wav", RATE);
    two.extend(silence(1500));
    two.extend(common::audio_at("new-home-in-the-stars-16k.wav", RATE));
    let turns = voxd::vad::segment_with(&two, detector(VadParams::default()));
    assert_eq!(turns.len(), 2, "{turns:?}");
    // Loud noise (not a voice) is no turn: 600 ms of a square wave, then hiss.
    let mut noise = silence(300);
    noise.extend((0..ms(600)).map(|i| if (i / 20) % 2 == 0 { 0.5 } else { -0.5 }));
    let mut x: u32 = 1;
    noise.extend((0..ms(1000)).map(|_| {
        x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        (x >> 8) as f32 / (1u32 << 24) as f32 * 0.2 - 0.1
    }));
    let turns = voxd::vad::segment_with(&noise, detector(VadParams::default()));
    assert!(turns.is_empty(), "noise made turns: {turns:?}");
}

async fn server() -> String {
    let (url, state) = common::start_realtime(ServerSettings::default()).await;
    state.set_turn_models(common::turn_models(), voxd::vad::VadEngine::WebRtc);
    url
}

async fn open(url: &str, turn_detection: Value, vad: &str) -> (Sender, Receiver, Value) {
    let (mut tx, mut rx) = client::connect(url, None).await.unwrap();
    let (first, _) = read_until(&mut rx, |e| !e.is_empty()).await;
    assert_eq!(first[0].kind(), "session.created");
    tx.update_session(json!({
        "type": "transcription",
        "audio": {"input": {
            "format": {"type": "audio/pcm", "rate": RATE},
            "turn_detection": turn_detection,
        }},
        "voxd": {"vad": vad, "partial_interval_ms": 0},
    }))
    .await
    .unwrap();
    let (ev, _) = read_until(&mut rx, |e| {
        e.iter()
            .any(|e| e.kind() == "session.updated" || e.kind() == "error")
    })
    .await;
    let session = match ev.last().unwrap() {
        ServerEvent::SessionUpdated { session } => session.clone(),
        other => panic!("{other:?}"),
    };
    (tx, rx, session)
}

/// What one streamed recording did: each `speech_stopped`'s `audio_end_ms`, and the timing of
/// each completed transcript.
struct Heard {
    stopped: Vec<u64>,
    timings: Vec<TurnTiming>,
    texts: Vec<String>,
}

/// Streams `audio` (faster than real time: the server's decisions sit on the audio clock) and
/// reads until `turns` transcripts are complete.
async fn stream(
    url: &str,
    turn_detection: Value,
    vad: &str,
    audio: Vec<f32>,
    turns: usize,
) -> Heard {
    let (mut tx, mut rx, _) = open(url, turn_detection, vad).await;
    let sender = tokio::spawn(async move {
        tx.stream(&audio, RATE, 100, false, false).await.unwrap();
        tx
    });
    let (events, closed) = read_until(&mut rx, |e| {
        e.iter()
            .filter(|e| e.kind() == "conversation.item.input_audio_transcription.completed")
            .count()
            >= turns
    })
    .await;
    assert_eq!(closed, None, "{events:?}");
    let tx = sender.await.unwrap();
    drop(tx);
    let mut heard = Heard {
        stopped: Vec::new(),
        timings: Vec::new(),
        texts: Vec::new(),
    };
    for e in events {
        match e {
            ServerEvent::SpeechStopped { audio_end_ms, .. } => heard.stopped.push(audio_end_ms),
            ServerEvent::TranscriptionCompleted {
                voxd_timing,
                transcript,
                ..
            } => {
                heard.timings.extend(voxd_timing);
                heard.texts.push(transcript);
            }
            ServerEvent::Error { error, .. } => panic!("{error:?}"),
            _ => {}
        }
    }
    heard
}

/// "Ask not what your country can do for you, [0.54 s] ask what you | [1 s] can do for your
/// country.": jfk.wav from 3.2 s, with a second pause inserted mid-phrase (tests/data/SOURCES.md).
fn paused_sentence() -> Vec<f32> {
    common::audio_at("turns/jfk-paused.wav", RATE)
}

#[tokio::test]
async fn a_sentence_with_pauses_is_one_turn_with_semantic_vad() {
    let url = server().await;
    let mut audio = paused_sentence();
    // Longer than `low`'s longest wait, so the turn ends even if the model never says so.
    audio.extend(silence(9000));
    let semantic = stream(
        &url,
        json!({"type": "semantic_vad", "eagerness": "low"}),
        "webrtc",
        audio.clone(),
        1,
    );
    let server_vad = stream(
        &url,
        json!({"type": "server_vad", "silence_duration_ms": 500}),
        "webrtc",
        audio,
        2,
    );
    let (semantic, server_vad) = tokio::join!(semantic, server_vad);
    assert_eq!(semantic.stopped.len(), 1, "{:?}", semantic.stopped);
    let heard = voxd::wer::wer(
        "ask not what your country can do for you ask what you can do for your country",
        &semantic.texts[0],
    );
    assert!(heard < 0.3, "{:?} (WER {heard})", semantic.texts);
    let end = semantic.timings[0]
        .end_of_turn
        .as_ref()
        .expect("end_of_turn timing");
    assert_eq!(end.checks, 1, "{end:?}");
    // The same audio under a 500 ms silence window is cut at its pauses.
    assert!(server_vad.stopped.len() >= 2, "{:?}", server_vad.stopped);
}

#[tokio::test]
async fn a_finished_sentence_ends_sooner_than_the_silence_window() {
    let url = server().await;
    let mut audio = silence(500);
    audio.extend(common::audio_at("LDC93S1_pcms16le_1_16000.wav", RATE));
    audio.extend(silence(5000));
    for vad in ["webrtc", "silero"] {
        let semantic = stream(&url, json!({"type": "semantic_vad"}), vad, audio.clone(), 1);
        let server_vad = stream(
            &url,
            json!({"type": "server_vad", "silence_duration_ms": 500}),
            vad,
            audio.clone(),
            1,
        );
        let (semantic, server_vad) = tokio::join!(semantic, server_vad);
        assert_eq!(semantic.stopped.len(), 1, "{vad}: {:?}", semantic.stopped);
        assert_eq!(
            server_vad.stopped.len(),
            1,
            "{vad}: {:?}",
            server_vad.stopped
        );
        let end = semantic.timings[0]
            .end_of_turn
            .clone()
            .expect("end_of_turn timing");
        assert_eq!(end.ended_by, "model", "{vad}: {end:?}");
        assert!(end.probability.unwrap() >= 0.5, "{vad}: {end:?}");
        // The model's word comes 200 ms into the pause; the window closes at 500 ms.
        assert!(
            semantic.stopped[0] + 200 <= server_vad.stopped[0],
            "{vad}: semantic ended at {} ms, server_vad at {} ms",
            semantic.stopped[0],
            server_vad.stopped[0]
        );
        assert!(server_vad.timings[0].end_of_turn.is_none());
        let e = voxd::wer::wer(
            &common::reference("LDC93S1_pcms16le_1_16000.wav", "mono"),
            &semantic.texts[0],
        );
        assert!(e < 0.3, "{vad}: {:?} (WER {e})", semantic.texts);
    }
}

#[tokio::test]
async fn sessions_report_and_check_their_turn_settings() {
    let url = server().await;
    let (_tx, _rx, session) = open(
        &url,
        json!({"type": "semantic_vad", "eagerness": "high"}),
        "silero",
    )
    .await;
    let td = &session["audio"]["input"]["turn_detection"];
    assert_eq!(td["type"], "semantic_vad", "{session}");
    assert_eq!(td["eagerness"], "high", "{session}");
    assert_eq!(session["voxd"]["vad"], "silero", "{session}");
    assert_eq!(session["voxd"]["ignored"], json!([]), "{session}");
    // Typed errors, and the session goes on.
    let (mut tx, mut rx) = client::connect(&url, None).await.unwrap();
    read_until(&mut rx, |e| !e.is_empty()).await;
    for (update, param) in [
        (
            json!({"audio": {"input": {"turn_detection": {"type": "semantic_vad", "eagerness": "eager"}}}}),
            "session.audio.input.turn_detection.eagerness",
        ),
        (
            json!({"audio": {"input": {"turn_detection": {"type": "server_vad", "eagerness": "low"}}}}),
            "session.audio.input.turn_detection.eagerness",
        ),
        (
            json!({"audio": {"input": {"turn_detection": {"type": "magic_vad"}}}}),
            "session.audio.input.turn_detection.type",
        ),
        (json!({"voxd": {"vad": "ears"}}), "session.voxd.vad"),
    ] {
        tx.update_session(update).await.unwrap();
        let (ev, _) = read_until(&mut rx, |e| e.iter().any(|e| e.kind() == "error")).await;
        match ev.last().unwrap() {
            ServerEvent::Error { error, .. } => {
                assert_eq!(error.param.as_deref(), Some(param), "{error:?}");
                assert_eq!(
                    error.code.as_deref(),
                    Some("invalid_session_config"),
                    "{error:?}"
                );
            }
            other => panic!("{other:?}"),
        }
    }
}

/// What a realtime session with `semantic_vad` (low) answered to `first` then `rest`: the
/// transcript, the answer's text and its timing extension. With `speculate`, the audio stops
/// after `first` until the server has drafted an answer to what it heard so far (the turn stays
/// open: its decisions follow the audio's clock, not the wall clock).
async fn answer_to(
    url: &str,
    first: &[f32],
    rest: &[f32],
    speculate: bool,
) -> (String, String, Value) {
    use voxd::client::Incoming;
    let (mut tx, mut rx) = client::connect(url, None).await.unwrap();
    tx.update_session(json!({
        "type": "realtime",
        "output_modalities": ["text"],
        "audio": {"input": {
            "format": {"type": "audio/pcm", "rate": RATE},
            "turn_detection": {"type": "semantic_vad", "eagerness": "low"},
        }},
        "voxd": {"vad": "webrtc", "partial_interval_ms": 0,
                 "speculative_after_ms": if speculate { json!(100) } else { Value::Null }},
    }))
    .await
    .unwrap();
    let (first, rest) = (first.to_vec(), rest.to_vec());
    let sender = tokio::spawn(async move {
        tx.stream(&first, RATE, 20, false, true).await.unwrap();
        if speculate {
            let made = voxd::metrics::global().llm_drafts.get("made");
            let drafted = tokio::time::timeout(std::time::Duration::from_secs(120), async {
                while voxd::metrics::global().llm_drafts.get("made") == made {
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            });
            drafted
                .await
                .expect("a draft for the fragment within 2 minutes");
        }
        tx.stream(&rest, RATE, 20, false, true).await.unwrap();
        tx
    });
    let (mut transcript, mut text) = (String::new(), String::new());
    let timing = tokio::time::timeout(std::time::Duration::from_secs(240), async {
        while let Some(msg) = rx.next().await {
            match msg.unwrap() {
                Incoming::Event(ServerEvent::TranscriptionCompleted { transcript: t, .. }) => {
                    transcript.push_str(&t)
                }
                Incoming::Event(ServerEvent::OutputTextDelta { delta, .. }) => {
                    text.push_str(&delta)
                }
                Incoming::Event(ServerEvent::ResponseDone { response }) => {
                    return response["voxd_timing"].clone();
                }
                Incoming::Event(ServerEvent::Error { error, .. }) => panic!("{error:?}"),
                _ => {}
            }
        }
        panic!("the session closed before an answer");
    })
    .await
    .expect("an answer within 4 minutes");
    sender.await.unwrap();
    (transcript, text, timing)
}

/// The answer a realtime session gives to `text` typed as the first message.
async fn answer_to_text(url: &str, text: &str) -> (String, Value) {
    use voxd::client::Incoming;
    let (mut tx, mut rx) = client::connect(url, None).await.unwrap();
    for event in [
        json!({"type": "session.update", "session": {"type": "realtime",
            "output_modalities": ["text"], "audio": {"input": {"turn_detection": null}}}}),
        json!({"type": "conversation.item.create", "item": {"type": "message", "role": "user",
            "content": [{"type": "input_text", "text": text}]}}),
        json!({"type": "response.create"}),
    ] {
        tx.send_text(event.to_string()).await.unwrap();
    }
    let mut answer = String::new();
    loop {
        match rx.next().await.expect("open").unwrap() {
            Incoming::Event(ServerEvent::OutputTextDelta { delta, .. }) => answer.push_str(&delta),
            Incoming::Event(ServerEvent::ResponseDone { response }) => {
                return (answer, response["voxd_timing"].clone())
            }
            Incoming::Event(ServerEvent::Error { error, .. }) => panic!("{error:?}"),
            _ => {}
        }
    }
}

/// Speculation inside the pause: when the person pauses, the answer to what they said so far is
/// drafted (its first tokens computed and kept) to go out the moment the turn ends. Here they
/// pause mid-phrase ("... ask what you | can do for your country"), a draft is made for the
/// fragment, and they go on: the fragment's draft is never sent, and the answer is exactly the
/// one the model gives to the whole sentence typed in, without any draft.
#[tokio::test]
async fn speculative_tokens_are_never_sent_when_the_person_continues() {
    let (url, _) =
        common::start_speaking(ServerSettings::default(), None, Some(common::llm()), None).await;
    // jfk-paused.wav: the fragment ends at 4.84 s, then 1 s of silence; stop 300 ms into it.
    let audio = paused_sentence();
    let (first, rest) = audio.split_at(ms(5140));
    let mut rest = rest.to_vec();
    rest.extend(silence(9000));
    let drafts = |outcome: &str| voxd::metrics::global().llm_drafts.get(outcome);
    let (made, used) = (drafts("made"), drafts("used"));
    let (transcript, answer, timing) = answer_to(&url, first, &rest, true).await;
    let (made, used) = (drafts("made") - made, drafts("used") - used);
    let heard = voxd::wer::wer(
        "ask not what your country can do for you ask what you can do for your country",
        &transcript,
    );
    assert!(
        heard < 0.3,
        "one turn, the whole sentence: {transcript:?} (WER {heard})"
    );
    // At least the fragment's draft went unused (the whole sentence's may have been used).
    assert!(made >= 1 && used < made, "{made} drafts made, {used} used");
    let (typed, typed_timing) = answer_to_text(&url, transcript.trim()).await;
    assert_eq!(typed_timing["drafted_tokens"], 0);
    assert!(!typed.is_empty());
    assert_eq!(
        answer, typed,
        "the answer to the whole sentence, nothing of a fragment's"
    );
    eprintln!(
        "drafts: {made} made, {used} used; the spoken answer's drafted tokens: {}",
        timing["drafted_tokens"]
    );
}
