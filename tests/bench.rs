//! `voxd bench` itself: a short run (1 session, 1 turn) against a real server with the default
//! models (the voice too) and the fixture knowledge base; its JSON, table and plot are well-formed and its
//! latencies positive and in pipeline order, over the WebSocket and over a WebRTC call. Also: the speech segments stored beside the test
//! recordings are what the VAD finds now.

mod common;

use serde_json::Value;
use voxd::server::ServerSettings;

#[tokio::test]
async fn a_one_turn_bench_run_is_well_formed_and_ordered() {
    let dir = tempfile::tempdir().unwrap();
    let kb = common::fixture_kb(dir.path()).await;
    let tts: std::sync::Arc<dyn voxd::tts::Tts> =
        tokio::task::spawn_blocking(common::tts).await.unwrap();
    let (url, _) = common::start_speaking(
        ServerSettings::default(),
        Some(kb),
        Some(common::llm()),
        Some(tts),
    )
    .await;
    // A copy, so the bench stores the speech segments beside it (in the temp folder).
    let wav = dir.path().join("ldc.wav");
    std::fs::copy(common::data("LDC93S1_pcms16le_1_16000.wav"), &wav).unwrap();
    let (json, svg) = (dir.path().join("b.json"), dir.path().join("b.svg"));
    let run = |extra: Vec<String>| {
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_voxd"));
        cmd.args([
            "bench",
            "--url",
            &url,
            "--sessions",
            "1",
            "--turns",
            "1",
            "--quiet",
        ])
        .arg("--audio")
        .arg(&wav)
        .arg("--out")
        .arg(&json)
        .arg("--svg")
        .arg(&svg)
        .args(extra)
        .env("RUST_LOG", "warn");
        async move {
            let out = cmd.output().await.unwrap();
            let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
            assert!(
                out.status.success(),
                "{stdout}\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
            stdout
        }
    };
    let first = run(vec![]).await;
    let old = dir.path().join("old.json");
    std::fs::copy(&json, &old).unwrap();
    // The second run ends turns with the end-of-turn model, on Silero VAD.
    let second = run(vec![
        "--compare".into(),
        old.display().to_string(),
        "--turn-detection".into(),
        "semantic_vad".into(),
        "--vad".into(),
        "silero".into(),
    ])
    .await;
    assert!(
        second.contains("turns: semantic_vad (auto), silero"),
        "{second}"
    );
    let semantic: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(semantic["turn_detection"], "semantic_vad (auto), silero");
    assert_eq!(semantic["levels"][0]["completed"], 1, "{semantic}");
    // The third run calls over WebRTC (Opus on the track, events on `oai-events`): the answer's
    // first audio is its first packet on the call's track. (This server listens on every
    // interface, so its media socket does too: the call connects all the same.)
    let third = run(vec!["--transport".into(), "webrtc".into()]).await;
    assert!(third.contains("webrtc"), "{third}");
    let rtc: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(rtc["levels"][0]["transport"], "webrtc", "{rtc}");
    assert_eq!(rtc["levels"][0]["completed"], 1, "{rtc}");
    let t = &rtc["turns"][0];
    let (token, audio) = (t["first_token"].as_f64(), t["first_audio"].as_f64());
    assert!(
        matches!((token, audio), (Some(a), Some(b)) if a > 0.0 && a <= b),
        "{t}"
    );
    // The first run's report, read back for the checks below.
    std::fs::copy(&old, &json).unwrap();

    assert!(
        first.contains("end of speech") && first.contains("first_token"),
        "{first}"
    );
    assert!(second.contains("compared with the earlier run"), "{second}");
    assert!(dir.path().join("ldc.wav.speech.json").exists());

    let report: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(report["answers"], true);
    let level = &report["levels"][0];
    assert_eq!(level["sessions"], 1);
    assert_eq!(level["turns"], 1);
    assert_eq!(level["completed"], 1, "{level}");
    let turn = &report["turns"][0];
    let ms = |k: &str| {
        turn[k]
            .as_f64()
            .unwrap_or_else(|| panic!("no {k} in {turn}"))
    };
    let (stopped, transcript, first_token, first_audio, done) = (
        ms("speech_stopped"),
        ms("transcript"),
        ms("first_token"),
        ms("first_audio"),
        ms("done"),
    );
    assert!(stopped > 0.0, "{turn}");
    // The answer is spoken: its first audio byte comes after its first token.
    assert!(
        stopped <= transcript
            && transcript <= first_token
            && first_token <= first_audio
            && first_audio <= done,
        "{turn}"
    );
    assert!(ms("asr_rtf") > 0.0);
    let words = voxd::wer::wer(
        &common::reference("LDC93S1_pcms16le_1_16000.wav", ""),
        turn["transcript_text"].as_str().unwrap(),
    );
    assert!(words <= 0.3, "{turn}");
    for stage in [
        "speech_stopped",
        "transcript",
        "first_token",
        "first_audio",
        "done",
    ] {
        let s = &level["stages"][stage];
        assert_eq!(s["n"], 1, "{stage}");
        assert_eq!(s["p50"], turn[stage], "{stage}");
    }
    let server = &level["server"];
    assert!(server["rss_max_mb"].as_f64().unwrap() > 50.0, "{server}");
    assert!(server["cpu_cores"].as_f64().unwrap() > 0.0, "{server}");
    // The soak figures: the server before and after; the session is gone once the client left.
    for k in ["start", "end"] {
        let s = &server[k];
        assert!(s["rss_mb"].as_f64().unwrap() > 50.0, "{server}");
        assert!(s["open_fds"].as_f64().unwrap() > 3.0, "{server}");
        assert!(s["threads"].as_f64().unwrap() > 1.0, "{server}");
    }
    assert_eq!(server["end"]["live_sessions"], 0.0, "{server}");
    assert!(first.contains("server before -> after"), "{first}");

    let svg = std::fs::read_to_string(svg).unwrap();
    assert!(
        svg.starts_with("<svg") && svg.contains("first_audio p50"),
        "{svg}"
    );
}

#[test]
fn stored_speech_segments_match_the_vad() {
    for file in ["LDC93S1_pcms16le_1_16000.wav", "jfk.wav"] {
        let path = common::data(file);
        let stored: voxd::bench::speech::SpeechFile = serde_json::from_str(
            &std::fs::read_to_string(voxd::bench::speech::speech_path(&path)).unwrap(),
        )
        .unwrap();
        let params = voxd::vad::VadParams {
            silence_duration_ms: stored.silence_duration_ms,
            threshold: stored.threshold,
            ..Default::default()
        };
        let decoded = voxd::audio::decode_file(&path, voxd::audio::ChannelSelect::Mix).unwrap();
        let at_16k = voxd::audio::to_model_rate(decoded).unwrap().samples;
        assert_eq!(
            voxd::bench::speech::find_speech(&at_16k, params),
            stored,
            "{file}"
        );
    }
}
