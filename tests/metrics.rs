//! `GET /metrics` after one spoken turn: the counters and histograms a turn must move have moved,
//! and the exposition is well-formed Prometheus text. One test in this binary, since the metrics
//! are process-wide.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::json;
use voxd::client::{self, Incoming};
use voxd::protocol::ServerEvent;
use voxd::server::ServerSettings;

/// Parses the text format into `name{labels}` -> value, checking every line's shape.
fn scrape_text(text: &str) -> BTreeMap<String, f64> {
    let mut samples = BTreeMap::new();
    let mut typed = std::collections::HashSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split(' ');
            let name = parts.next().unwrap().to_string();
            let kind = parts.next().unwrap();
            assert!(["counter", "gauge", "histogram"].contains(&kind), "{line}");
            assert!(typed.insert(name), "TYPE twice: {line}");
            continue;
        }
        if line.starts_with("# HELP ") || line.is_empty() {
            continue;
        }
        let (key, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("{line}"));
        let name = key.split('{').next().unwrap();
        assert!(
            name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                && (name.starts_with("voxd_") || name.starts_with("process_")),
            "{line}"
        );
        let base = name
            .trim_end_matches("_bucket")
            .trim_end_matches("_sum")
            .trim_end_matches("_count");
        assert!(
            typed.contains(name) || typed.contains(base),
            "no TYPE before {line}"
        );
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("{line}"));
        samples.insert(key.to_string(), value);
    }
    samples
}

async fn scrape(http: &str) -> BTreeMap<String, f64> {
    let r = reqwest::get(format!("{http}/metrics")).await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain; version=0.0.4"));
    scrape_text(&r.text().await.unwrap())
}

fn delta(before: &BTreeMap<String, f64>, after: &BTreeMap<String, f64>, key: &str) -> f64 {
    after
        .get(key)
        .copied()
        .unwrap_or_else(|| panic!("no {key}"))
        - before.get(key).copied().unwrap_or(0.0)
}

/// Waits for the next `response.done` and returns its response.
async fn response_done(rx: &mut client::Receiver) -> serde_json::Value {
    tokio::time::timeout(Duration::from_secs(300), async {
        while let Some(msg) = rx.next().await {
            if let Incoming::Event(ServerEvent::ResponseDone { response }) = msg.unwrap() {
                return response;
            }
        }
        panic!("the session ended without an answer");
    })
    .await
    .expect("hang guard")
}

#[tokio::test]
async fn metrics_move_after_one_spoken_turn() {
    let dir = tempfile::tempdir().unwrap();
    let kb = common::fixture_kb(dir.path()).await;
    let tts: std::sync::Arc<dyn voxd::tts::Tts> =
        tokio::task::spawn_blocking(common::tts).await.unwrap();
    // The model answers, each sentence checked against the passages (the extractive default
    // would leave the LLM's histograms still).
    let settings = ServerSettings {
        answer: voxd::realtime::AnswerSettings {
            mode: voxd::grounding::AnswerMode::Checked,
            ..Default::default()
        },
        ..Default::default()
    };
    let (url, http) =
        common::start_speaking(settings, Some(kb), Some(common::llm()), Some(tts)).await;
    let before = scrape(&http).await;
    assert_eq!(before["voxd_live_sessions"], 0.0);

    let rate = 16_000;
    let mut audio = common::speak(dir.path(), "What time do you open on Sunday?", rate);
    audio.extend(vec![0.0; rate as usize * 2]);
    let (mut tx, mut rx) = client::connect(&url, None).await.unwrap();
    tx.update_session(json!({"type": "realtime",
        "audio": {"input": {"format": {"type": "audio/pcm", "rate": rate}}}}))
        .await
        .unwrap();
    // A client mistake, counted by code.
    tx.send_text(json!({"type": "no.such.event"}).to_string())
        .await
        .unwrap();
    let bytes = audio.len() as f64 * 2.0;
    let sender = tokio::spawn(async move {
        tx.stream(&audio, rate, 20, true, true).await.unwrap();
        tx
    });
    let during = scrape(&http).await;
    assert_eq!(during["voxd_live_sessions"], 1.0);
    let done = response_done(&mut rx).await;
    assert_eq!(done["status"], "completed", "{done}");
    let mut tx = sender.await.unwrap();
    tx.close().await.unwrap();
    drop(rx);
    let after = scrape(&http).await;

    assert_eq!(delta(&before, &after, "voxd_sessions_total"), 1.0);
    assert_eq!(delta(&before, &after, "voxd_turns_total"), 1.0);
    assert_eq!(
        delta(
            &before,
            &after,
            "voxd_responses_total{status=\"completed\"}"
        ),
        1.0
    );
    assert_eq!(
        delta(
            &before,
            &after,
            "voxd_errors_total{code=\"unknown_event_type\"}"
        ),
        1.0
    );
    assert_eq!(delta(&before, &after, "voxd_audio_bytes_in_total"), bytes);
    for hist in [
        "voxd_speech_stopped_to_transcript_seconds",
        "voxd_speech_stopped_to_first_token_seconds",
        "voxd_speech_stopped_to_first_audio_seconds",
        "voxd_speech_stopped_to_response_done_seconds",
        "voxd_asr_seconds",
        "voxd_asr_queue_wait_seconds",
        "voxd_retrieval_seconds",
        "voxd_llm_queue_wait_seconds",
        "voxd_llm_time_to_first_token_seconds",
        "voxd_llm_tokens_per_second",
    ] {
        assert_eq!(
            delta(&before, &after, &format!("{hist}_count")),
            1.0,
            "{hist}"
        );
        assert_eq!(
            after[&format!("{hist}_bucket{{le=\"+Inf\"}}")],
            after[&format!("{hist}_count")],
            "{hist}"
        );
        assert!(
            delta(&before, &after, &format!("{hist}_sum")) >= 0.0,
            "{hist}"
        );
    }
    // These cannot be zero (the others can: a speculative transcript or retrieval may be ready
    // the moment speech stops, and a free worker has no queue).
    // The answer was spoken: at least one piece was synthesised.
    assert!(delta(&before, &after, "voxd_tts_seconds_count") >= 1.0);
    for hist in [
        "voxd_speech_stopped_to_first_token_seconds",
        "voxd_speech_stopped_to_first_audio_seconds",
        "voxd_tts_seconds",
        "voxd_asr_seconds",
        "voxd_llm_time_to_first_token_seconds",
        "voxd_llm_tokens_per_second",
    ] {
        assert!(
            delta(&before, &after, &format!("{hist}_sum")) > 0.0,
            "{hist}"
        );
    }
    // The stages are ordered: transcript before first token before done.
    let sum = |h: &str| {
        delta(
            &before,
            &after,
            &format!("voxd_speech_stopped_to_{h}_seconds_sum"),
        )
    };
    assert!(
        sum("transcript") <= sum("first_token")
            && sum("first_token") <= sum("first_audio")
            && sum("first_audio") < sum("response_done")
    );
    // Answer quality: the answer was checked against its passages and its groundedness recorded.
    assert_eq!(
        delta(&before, &after, "voxd_answer_groundedness_count"),
        1.0
    );
    let made: f64 = ["checked", "replaced", "cut_repeat", "cut_unsupported"]
        .iter()
        .map(|o| {
            let key = format!("voxd_answers_total{{outcome=\"{o}\"}}");
            after.get(&key).copied().unwrap_or(0.0) - before.get(&key).copied().unwrap_or(0.0)
        })
        .sum();
    assert_eq!(made, 1.0);
    assert!(after["process_resident_memory_bytes"] > 50e6);
    // The weights each model holds: the LLM's layers in 4 bits and its embeddings in 8 (~97 MB),
    // the others their files or their 8-bit forms.
    let model = |m: &str| after[&format!("voxd_model_memory_bytes{{model=\"{m}\"}}")];
    assert!((80e6..120e6).contains(&model("llm")), "{}", model("llm"));
    for m in ["asr", "embeddings", "voice"] {
        assert!(model(m) > 10e6, "{m}: {}", model(m));
    }
    assert!(after["process_cpu_seconds_total"] > before["process_cpu_seconds_total"]);

    // Queue depths: nothing waits at rest; four long transcriptions on the server's two whisper
    // workers (each takes over a second) leave some waiting.
    for key in [
        "voxd_asr_queue_depth{priority=\"final\"}",
        "voxd_asr_queue_depth{priority=\"partial\"}",
        "voxd_llm_queue_depth",
        "voxd_tts_queue_depth",
    ] {
        assert_eq!(after[key], 0.0, "{key}");
    }
    let pool = common::pool();
    let jfk = voxd::audio::decode_file(&common::data("jfk.wav"), voxd::audio::ChannelSelect::Mix)
        .unwrap()
        .samples;
    let jobs: Vec<_> = (0..4)
        .map(|_| {
            let (pool, jfk) = (pool.clone(), jfk.clone());
            tokio::spawn(async move {
                voxd::asr::Asr::transcribe(pool.as_ref(), voxd::asr::Request::new(jfk)).await
            })
        })
        .collect();
    tokio::task::yield_now().await;
    let busy = scrape(&http).await;
    // At most two run, so at least two wait (until the first finishes, over a second later).
    let waiting = busy["voxd_asr_queue_depth{priority=\"final\"}"];
    assert!((2.0..=4.0).contains(&waiting), "{waiting}");
    for job in jobs {
        job.await.unwrap().unwrap();
    }

    // A question the knowledge base cannot answer: "I don't know", counted as a refusal.
    let before = scrape(&http).await;
    let (mut tx, mut rx) = client::connect(&url, None).await.unwrap();
    tx.send_text(
        json!({"type": "conversation.item.create", "item": {"type": "message", "role": "user",
            "content": [{"type": "input_text", "text": "What is the wifi password in the shop?"}]}})
        .to_string(),
    )
    .await
    .unwrap();
    tx.send_text(json!({"type": "response.create"}).to_string())
        .await
        .unwrap();
    let done = response_done(&mut rx).await;
    assert_eq!(done["voxd"]["answer"], "refused", "{done}");
    let after = scrape(&http).await;
    assert_eq!(delta(&before, &after, "voxd_refusals_total"), 1.0);
    assert_eq!(
        delta(&before, &after, "voxd_answers_total{outcome=\"refused\"}"),
        1.0
    );
    // Nothing the model said, so no groundedness to record.
    assert_eq!(
        delta(&before, &after, "voxd_answer_groundedness_count"),
        0.0
    );
}
