//! The conversation a client drives by hand, against a real server with the real speech model,
//! knowledge base and embedded LLM: push-to-talk ("commit, then create" answers the question
//! just asked, in order), out-of-band responses that leave the history alone, retrieve and
//! delete, and the idle timeout's prompt.

mod common;

use serde_json::{json, Value};
use voxd::client::{self, Receiver, Sender};
use voxd::protocol::{Item, ServerEvent};
use voxd::server::ServerSettings;

/// One test at a time drives the model hard (they share two cores).
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

async fn send(tx: &mut Sender, v: Value) {
    tx.send_text(v.to_string()).await.unwrap();
}

async fn open(url: &str, session: Value) -> (Sender, Receiver) {
    let (mut tx, mut rx) = client::connect(url, None).await.unwrap();
    read_until(&mut rx, |e| !e.is_empty()).await;
    tx.update_session(session).await.unwrap();
    let ev = read_until(&mut rx, |e| {
        e.iter()
            .any(|e| matches!(e.kind(), "session.updated" | "error"))
    })
    .await;
    assert_eq!(ev.last().unwrap().kind(), "session.updated", "{ev:?}");
    (tx, rx)
}

fn user_text(text: &str) -> Value {
    json!({"type": "conversation.item.create", "item": {"type": "message", "role": "user",
        "content": [{"type": "input_text", "text": text}]}})
}

fn error_code(e: &ServerEvent) -> Option<(&str, Option<&str>)> {
    match e {
        ServerEvent::Error { error } => Some((error.code.as_deref()?, error.event_id.as_deref())),
        _ => None,
    }
}

/// The assistant items added to the conversation, with the item each follows.
fn answers(events: &[ServerEvent]) -> Vec<(Option<String>, String)> {
    events
        .iter()
        .filter_map(|e| match e {
            ServerEvent::ItemAdded {
                previous_item_id,
                item,
            } if item.role == "assistant" => Some((previous_item_id.clone(), item.id.clone())),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn push_to_talk_answers_each_question_in_order() {
    let _heavy = HEAVY.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let kb = common::fixture_kb(dir.path()).await;
    let (url, _) =
        common::start_full(ServerSettings::default(), Some(kb), Some(common::llm())).await;
    let rate = 16_000;
    let (mut tx, mut rx) = open(
        &url,
        json!({"type": "realtime", "audio": {"input": {"format": {"type": "audio/pcm", "rate": rate},
            "turn_detection": null}}}),
    )
    .await;
    let questions = [
        "What time do you open on Sunday?",
        "How much does a full service cost?",
        "Where is the shop?",
    ];
    // Three presses of the button, sent at once: audio, commit, response.create each time.
    for q in questions {
        let audio = common::speak(dir.path(), q, rate);
        tx.append(&audio).await.unwrap();
        tx.commit().await.unwrap();
        tx.create_response().await.unwrap();
    }
    let events = read_until(&mut rx, |e| count(e, "response.done") == 3).await;
    let errors: Vec<_> = events.iter().filter_map(error_code).collect();
    assert!(errors.is_empty(), "{errors:?}");
    let committed: Vec<String> = events
        .iter()
        .filter_map(|e| match e {
            ServerEvent::Committed { item_id, .. } => Some(item_id.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(committed.len(), 3);
    // Each answer follows the question it answers, in the order asked...
    let followed: Vec<Option<String>> = answers(&events).into_iter().map(|a| a.0).collect();
    assert_eq!(
        followed,
        committed.iter().cloned().map(Some).collect::<Vec<_>>()
    );
    // ...and starts only once that question's transcript is known.
    for (i, item) in committed.iter().enumerate() {
        let transcript = events
            .iter()
            .position(|e| matches!(e, ServerEvent::TranscriptionCompleted { item_id, .. } if item_id == item))
            .unwrap();
        let created = events
            .iter()
            .enumerate()
            .filter(|(_, e)| e.kind() == "response.created")
            .nth(i)
            .unwrap()
            .0;
        assert!(
            transcript < created,
            "response {i} started before its transcript"
        );
        let ServerEvent::TranscriptionCompleted { transcript, .. } = &events[transcript] else {
            unreachable!()
        };
        // The transcript is question i's: nearer to it than to the others.
        let nearest = (0..questions.len())
            .min_by(|&a, &b| {
                let (wa, wb) = (
                    voxd::wer::wer(questions[a], transcript),
                    voxd::wer::wer(questions[b], transcript),
                );
                wa.partial_cmp(&wb).unwrap()
            })
            .unwrap();
        assert_eq!(nearest, i, "question {i} heard as {transcript:?}");
    }
}

#[tokio::test]
async fn out_of_band_responses_retrieve_and_delete() {
    let _heavy = HEAVY.lock().await;
    let (url, _) = common::start_full(ServerSettings::default(), None, Some(common::llm())).await;
    let (mut tx, mut rx) = open(
        &url,
        json!({"type": "realtime", "voxd": {"knowledge_base": false}}),
    )
    .await;

    // An item, read back as the server keeps it.
    send(
        &mut tx,
        json!({"type": "conversation.item.create", "item": {"id": "q1", "type": "message",
        "role": "user", "content": [{"type": "input_text", "text": "Hello there"}]}}),
    )
    .await;
    send(
        &mut tx,
        json!({"type": "conversation.item.retrieve", "item_id": "q1"}),
    )
    .await;
    let events = read_until(&mut rx, |e| count(e, "conversation.item.retrieved") == 1).await;
    let retrieved: &Item = events
        .iter()
        .find_map(|e| match e {
            ServerEvent::ItemRetrieved { item } => Some(item),
            _ => None,
        })
        .unwrap();
    assert_eq!(
        (retrieved.id.as_str(), retrieved.role.as_str()),
        ("q1", "user")
    );
    assert_eq!(retrieved.content[0].text.as_deref(), Some("Hello there"));
    // The same id twice is refused.
    send(
        &mut tx,
        json!({"type": "conversation.item.create", "item": {"id": "q1", "type": "message",
        "role": "user", "content": [{"type": "input_text", "text": "again"}]}}),
    )
    .await;
    let events = read_until(&mut rx, |e| e.iter().any(|e| e.kind() == "error")).await;
    assert_eq!(
        error_code(events.last().unwrap()).unwrap().0,
        "item_id_in_use"
    );
    // After an item that does not exist: refused; after "root": first.
    send(&mut tx, json!({"type": "conversation.item.create", "previous_item_id": "nope",
        "item": {"type": "message", "role": "system", "content": [{"type": "input_text", "text": "Be brief."}]}})).await;
    let events = read_until(&mut rx, |e| e.iter().any(|e| e.kind() == "error")).await;
    assert_eq!(
        error_code(events.last().unwrap()).unwrap().0,
        "item_create_invalid_previous_item_id"
    );
    send(&mut tx, json!({"type": "conversation.item.create", "previous_item_id": "root",
        "item": {"id": "s0", "type": "message", "role": "system", "content": [{"type": "input_text", "text": "Be brief."}]}})).await;
    let events = read_until(&mut rx, |e| count(e, "conversation.item.done") == 1).await;
    assert!(matches!(events.last().unwrap(),
        ServerEvent::ItemDone { previous_item_id: None, item } if item.id == "s0"));

    // An out-of-band response: its own input and metadata, nothing added to the conversation.
    send(&mut tx, json!({"type": "response.create", "response": {"conversation": "none",
        "metadata": {"job": "classify"},
        "input": [{"type": "item_reference", "id": "q1"},
                  {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Is that a greeting? Answer yes or no."}]}]}})).await;
    let events = read_until(&mut rx, |e| count(e, "response.done") == 1).await;
    let ServerEvent::ResponseDone { response } = events.last().unwrap() else {
        panic!()
    };
    assert_eq!(response["conversation_id"], Value::Null, "{response}");
    assert_eq!(response["metadata"], json!({"job": "classify"}));
    assert!(
        answers(&events).is_empty(),
        "an out-of-band answer joined the conversation"
    );
    let oob_item = response["output"][0]["id"].as_str().unwrap().to_string();
    send(
        &mut tx,
        json!({"type": "conversation.item.retrieve", "item_id": oob_item}),
    )
    .await;
    let events = read_until(&mut rx, |e| e.iter().any(|e| e.kind() == "error")).await;
    assert_eq!(
        error_code(events.last().unwrap()).unwrap().0,
        "item_retrieve_invalid_item_id"
    );

    // An in-band answer now follows q1 directly: the history was left alone.
    send(&mut tx, json!({"type": "response.create"})).await;
    let events = read_until(&mut rx, |e| count(e, "response.done") == 1).await;
    assert_eq!(answers(&events)[0].0.as_deref(), Some("q1"));
    let answer_id = answers(&events)[0].1.clone();

    // Delete the answer and the question; then there is nothing to respond to.
    for id in [answer_id.as_str(), "q1"] {
        send(
            &mut tx,
            json!({"type": "conversation.item.delete", "item_id": id}),
        )
        .await;
        let events = read_until(&mut rx, |e| count(e, "conversation.item.deleted") == 1).await;
        assert!(
            matches!(events.last().unwrap(), ServerEvent::ItemDeleted { item_id } if item_id == id)
        );
    }
    send(
        &mut tx,
        json!({"type": "conversation.item.delete", "item_id": "q1", "event_id": "d2"}),
    )
    .await;
    let events = read_until(&mut rx, |e| e.iter().any(|e| e.kind() == "error")).await;
    assert_eq!(
        error_code(events.last().unwrap()).unwrap(),
        ("item_delete_invalid_item_id", Some("d2"))
    );
    send(&mut tx, json!({"type": "response.create"})).await;
    let events = read_until(&mut rx, |e| e.iter().any(|e| e.kind() == "error")).await;
    assert_eq!(
        error_code(events.last().unwrap()).unwrap().0,
        "response_needs_input"
    );

    // A second response for the same question while the first runs is refused.
    send(&mut tx, user_text("Tell me a long story about a bicycle.")).await;
    send(&mut tx, json!({"type": "response.create"})).await;
    send(
        &mut tx,
        json!({"type": "response.create", "event_id": "twice"}),
    )
    .await;
    let events = read_until(&mut rx, |e| e.iter().any(|e| e.kind() == "error")).await;
    assert_eq!(
        error_code(events.last().unwrap()).unwrap(),
        ("conversation_already_has_active_response", Some("twice"))
    );
    read_until(&mut rx, |e| count(e, "response.done") == 1).await;
}

#[tokio::test]
async fn the_idle_timeout_commits_and_asks_whether_anyone_is_there() {
    let _heavy = HEAVY.lock().await;
    let (url, _) = common::start_full(ServerSettings::default(), None, Some(common::llm())).await;
    let (mut tx, mut rx) = open(
        &url,
        json!({"type": "realtime", "audio": {"input": {"format": {"type": "audio/pcm", "rate": 16000},
            "turn_detection": {"type": "server_vad", "idle_timeout_ms": 1000}}}}),
    )
    .await;
    tx.stream(&vec![0.0; 16_000 * 2], 16_000, 100, false, false)
        .await
        .unwrap();
    let events = read_until(&mut rx, |e| count(e, "response.done") == 1).await;
    let timeout_item = events
        .iter()
        .find_map(|e| match e {
            ServerEvent::TimeoutTriggered { item_id, .. } => Some(item_id.clone()),
            _ => None,
        })
        .expect("timeout_triggered");
    // What was heard (silence) is committed as a turn, and the prompt follows it.
    assert!(events
        .iter()
        .any(|e| matches!(e, ServerEvent::Committed { item_id, .. } if *item_id == timeout_item)));
    assert_eq!(
        answers(&events)[0].0.as_deref(),
        Some(timeout_item.as_str())
    );
    let ServerEvent::ResponseDone { response } = events.last().unwrap() else {
        panic!()
    };
    assert!(!response["output"][0]["content"][0]["text"]
        .as_str()
        .unwrap()
        .trim()
        .is_empty());
    // Only once: no second prompt while nobody speaks during the answer.
    assert_eq!(count(&events, "input_audio_buffer.timeout_triggered"), 1);
}

/// The sentences of an answer, normalised (lower case, words only).
fn sentences(text: &str) -> Vec<String> {
    text.split(['.', '!', '?', '\n'])
        .map(|s| {
            s.split(|c: char| !c.is_alphanumeric() && c != '\'')
                .filter(|w| !w.is_empty())
                .collect::<Vec<_>>()
                .join(" ")
                .to_lowercase()
        })
        .filter(|s| !s.is_empty())
        .collect()
}

/// Small talk with the embedded model, which no passage checks, must not loop: a sentence the
/// answer already said is not said again ("… I'm just a helpful voice assistant. I'm just a
/// helpful voice assistant." before).
#[tokio::test]
async fn small_talk_never_says_a_sentence_twice() {
    let _heavy = HEAVY.lock().await;
    let (url, _) = common::start_full(ServerSettings::default(), None, Some(common::llm())).await;
    let (mut tx, mut rx) = open(
        &url,
        json!({"type": "realtime", "output_modalities": ["text"]}),
    )
    .await;
    for text in [
        "Hello there. Can you tell me a short joke?",
        "Who are you?",
        "Tell me something nice.",
    ] {
        send(&mut tx, user_text(text)).await;
        send(&mut tx, json!({"type": "response.create"})).await;
        let events = read_until(&mut rx, |e| count(e, "response.done") == 1).await;
        let response = events
            .iter()
            .find_map(|e| match e {
                ServerEvent::ResponseDone { response } => Some(response.clone()),
                _ => None,
            })
            .unwrap();
        assert_eq!(response["status"], "completed", "{response}");
        let answer = response["output"][0]["content"][0]["text"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        eprintln!("{text:?} -> {answer:?} ({})", response["voxd"]["answer"]);
        assert!(!answer.trim().is_empty(), "{text:?}: no answer");
        let said = sentences(&answer);
        let mut seen = std::collections::HashSet::new();
        for s in &said {
            assert!(seen.insert(s), "{text:?}: {s:?} said twice in {answer:?}");
        }
    }
}
