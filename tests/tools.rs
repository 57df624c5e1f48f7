//! Function calling for real: the embedded model (SmolLM2-135M) writes calls under a grammar
//! built from each tool's JSON Schema, so every call it makes is schema-valid.

mod common;

use serde_json::{json, Value};
use voxd::llm::{complete_all, FinishReason, GenerateRequest};
use voxd::prompt::{ChatMessage, Role};
use voxd::tools::{ToolChoice, ToolSet};

/// Tools a restaurant's assistant might have: a booking with bounded integers, a pattern, an
/// enum and a nested object; an order lookup with a length-limited id; the time.
pub fn restaurant_tools() -> ToolSet {
    ToolSet::parse(
        &json!([
            {
                "type": "function",
                "name": "book_table",
                "description": "Books a table at the restaurant.",
                "parameters": {
                    "type": "object",
                    "properties": {
                        "people": {"type": "integer", "minimum": 1, "maximum": 12},
                        "time": {"type": "string", "pattern": "^([01][0-9]|2[0-3]):[0-5][0-9]$"},
                        "area": {"type": "string", "enum": ["inside", "terrace", "bar"]},
                        "contact": {
                            "type": "object",
                            "properties": {
                                "name": {"type": "string", "minLength": 1, "maxLength": 40},
                                "phone": {"type": "string", "pattern": "^[0-9+ ]{6,20}$", "x-sensitive": true}
                            },
                            "required": ["name"],
                            "additionalProperties": false
                        }
                    },
                    "required": ["people", "time", "area"],
                    "additionalProperties": false
                }
            },
            {
                "type": "function",
                "name": "order_status",
                "description": "Looks up a delivery order by its id.",
                "parameters": {
                    "type": "object",
                    "properties": {
                        "order_id": {"type": "string", "pattern": "^[A-Z]{2}[0-9]{4}$"}
                    },
                    "required": ["order_id"],
                    "additionalProperties": false
                }
            },
            {
                "type": "function",
                "name": "current_time",
                "description": "The current time.",
                "parameters": {"type": "object", "properties": {}, "additionalProperties": false}
            }
        ]),
        "tools",
    )
    .unwrap()
}

/// Twenty different requests a caller might make.
pub const REQUESTS: [&str; 20] = [
    "Book a table for four at half past seven tonight.",
    "Can I get a table on the terrace for 2 people at 8pm?",
    "I'd like to reserve for six people at 19:00, inside please.",
    "Table for one at the bar at 21:15.",
    "We are a group of twelve, is 13:30 possible?",
    "Reserve a table for three at noon, my name is Ana.",
    "Two people, terrace, 18:45, name Bob, phone 555 0100.",
    "Book for 5 at quarter to nine.",
    "Where is my order AB1234?",
    "Has order XY9876 left the kitchen yet?",
    "What's the status of my delivery, number QQ0001?",
    "What time is it?",
    "Book me something for tonight.",
    "Table for eight at 20:30 inside.",
    "Seven people at 7pm on the terrace, under the name Lee.",
    "A table for two at 12:15 at the bar please.",
    "Is my order CD5555 on its way?",
    "Could you book 4 seats at 6 in the evening?",
    "Reserve for nine people, 19:45.",
    "Do you know the time right now?",
];

fn ask(user: &str, tools: &ToolSet, choice: ToolChoice) -> GenerateRequest {
    let mut req = GenerateRequest::new(vec![
        ChatMessage::new(
            Role::System,
            "You are the phone assistant of a restaurant. Use the functions to act.",
        ),
        ChatMessage::new(Role::User, user),
    ]);
    req.max_tokens = 96;
    // The instructions and the tools are the same for every request: cache their state.
    req.cache_points = vec![1];
    req.tools = tools.clone();
    req.tool_choice = choice;
    req
}

#[tokio::test]
async fn every_call_the_embedded_model_makes_satisfies_its_schema() {
    let llm = common::llm();
    let tools = restaurant_tools();
    let mut by_tool = std::collections::BTreeMap::<String, usize>::new();
    for (i, user) in REQUESTS.iter().enumerate() {
        // Half the requests name the function, half leave the choice to the model (required).
        let choice = if i % 2 == 0 {
            let name = if user.contains("order") || user.contains("delivery") {
                "order_status"
            } else if user.contains("time") && !user.contains("table") {
                "current_time"
            } else {
                "book_table"
            };
            ToolChoice::Function(name.into())
        } else {
            ToolChoice::Required
        };
        let c = complete_all(llm.as_ref(), ask(user, &tools, choice.clone()))
            .await
            .unwrap();
        eprintln!(
            "{user:?} -> {:?} ({} tokens, prefill {:.0} ms of {} prompt tokens, {} cached, {:.1} tok/s)",
            c.calls,
            c.usage.completion_tokens,
            c.usage.prefill_ms,
            c.usage.prompt_tokens,
            c.usage.cached_tokens,
            c.usage.tokens_per_second
        );
        assert_eq!(c.finish, FinishReason::ToolCalls, "{user}: {c:?}");
        assert_eq!(c.calls.len(), 1, "{user}");
        assert!(c.text.is_empty(), "a forced call has no text: {c:?}");
        let call = &c.calls[0];
        if let ToolChoice::Function(name) = &choice {
            assert_eq!(&call.name, name);
        }
        let args: Value = tools
            .validate(&call.name, &call.arguments)
            .unwrap_or_else(|e| panic!("{user}: {e}"));
        assert!(args.is_object());
        assert!(call.id.starts_with("call_"));
        *by_tool.entry(call.name.clone()).or_default() += 1;
    }
    eprintln!("calls by tool: {by_tool:?}");
}

// ---------------------------------------------------------------------------------------------
// Over the realtime socket.

use voxd::client::{self, Receiver, Sender};
use voxd::protocol::ServerEvent;
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

fn errors(events: &[ServerEvent]) -> Vec<(String, Option<String>)> {
    events
        .iter()
        .filter_map(|e| match e {
            ServerEvent::Error { error } => Some((error.code.clone()?, error.param.clone())),
            _ => None,
        })
        .collect()
}

fn response_done(events: &[ServerEvent]) -> Value {
    events
        .iter()
        .rev()
        .find_map(|e| match e {
            ServerEvent::ResponseDone { response } => Some(response.clone()),
            _ => None,
        })
        .expect("a response.done")
}

async fn send(tx: &mut Sender, v: Value) {
    tx.send_text(v.to_string()).await.unwrap();
}

/// Opens a session with `session`; returns the session as updated.
async fn open(url: &str, session: Value) -> (Sender, Receiver, Value) {
    let (mut tx, mut rx) = client::connect(url, None).await.unwrap();
    read_until(&mut rx, |e| !e.is_empty()).await;
    tx.update_session(session).await.unwrap();
    let ev = read_until(&mut rx, |e| {
        e.iter()
            .any(|e| matches!(e.kind(), "session.updated" | "error"))
    })
    .await;
    match ev.last().unwrap() {
        ServerEvent::SessionUpdated { session } => (tx, rx, session.clone()),
        other => panic!("{other:?}"),
    }
}

/// The tools in the Realtime API's shape.
fn realtime_tools() -> Value {
    restaurant_tools().to_view()
}

/// The one function call of a response: its events are in order and it is schema-valid.
/// Returns (call_id, arguments).
fn the_call(events: &[ServerEvent], name: &str) -> (String, Value) {
    let kinds: Vec<&str> = events
        .iter()
        .map(|e| e.kind())
        .filter(|k| k.starts_with("response.") && *k != "response.created")
        .collect();
    assert_eq!(
        kinds,
        [
            "response.output_item.added",
            "response.function_call_arguments.delta",
            "response.function_call_arguments.done",
            "response.output_item.done",
            "response.done"
        ],
        "a call-only response has no message"
    );
    let (call_id, arguments) = events
        .iter()
        .find_map(|e| match e {
            ServerEvent::FunctionCallArgumentsDone {
                call_id,
                name: n,
                arguments,
                ..
            } if n == name => Some((call_id.clone(), arguments.clone())),
            _ => None,
        })
        .expect("function_call_arguments.done");
    let deltas: String = events
        .iter()
        .filter_map(|e| match e {
            ServerEvent::FunctionCallArgumentsDelta { delta, .. } => Some(delta.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(deltas, arguments);
    let args = restaurant_tools()
        .validate(name, &arguments)
        .unwrap_or_else(|e| panic!("{e}"));
    let response = response_done(events);
    assert_eq!(response["status"], "completed", "{response}");
    let item = &response["output"][0];
    assert_eq!(item["type"], "function_call");
    assert_eq!(item["name"], name);
    assert_eq!(item["call_id"], call_id.as_str());
    assert_eq!(item["arguments"], arguments.as_str());
    assert_eq!(response["output"].as_array().unwrap().len(), 1);
    (call_id, args)
}

/// Whether an answer repeats something only the function's result said.
fn uses_the_result(answer: &str) -> bool {
    ["19:30", "ZX81", "table 7", "seven"]
        .iter()
        .any(|w| answer.contains(w))
}

const BOOKED: &str = r#"{"booked": true, "table": 7, "time": "19:30", "confirmation": "ZX81"}"#;

/// Sends the function's result and asks for the answer; returns the answer's events.
async fn answer_with_result(tx: &mut Sender, rx: &mut Receiver, call_id: &str) -> Vec<ServerEvent> {
    send(
        tx,
        json!({"type": "conversation.item.create", "item": {"type": "function_call_output", "call_id": call_id, "output": BOOKED}}),
    )
    .await;
    let added = read_until(rx, |e| count(e, "conversation.item.done") == 1).await;
    assert!(errors(&added).is_empty(), "{:?}", errors(&added));
    send(
        tx,
        json!({"type": "response.create", "response": {"tool_choice": "none"}}),
    )
    .await;
    read_until(rx, |e| count(e, "response.done") == 1).await
}

#[tokio::test]
async fn a_text_turn_calls_the_function_and_answers_from_its_result() {
    let _heavy = HEAVY.lock().await;
    let (url, _) = common::start_full(ServerSettings::default(), None, Some(common::llm())).await;
    let (mut tx, mut rx, session) = open(
        &url,
        json!({"type": "realtime", "output_modalities": ["text"], "tools": realtime_tools(),
               "tool_choice": {"type": "function", "name": "book_table"}}),
    )
    .await;
    assert_eq!(session["tools"].as_array().unwrap().len(), 3);
    assert_eq!(
        session["tool_choice"],
        json!({"type": "function", "name": "book_table"})
    );

    send(
        &mut tx,
        json!({"type": "conversation.item.create", "item": {"type": "message", "role": "user",
            "content": [{"type": "input_text", "text": "Book a table for four at 19:30 on the terrace."}]}}),
    )
    .await;
    send(&mut tx, json!({"type": "response.create"})).await;
    let events = read_until(&mut rx, |e| count(e, "response.done") == 1).await;
    assert!(errors(&events).is_empty(), "{:?}", errors(&events));
    assert_eq!(count(&events, "response.output_text.delta"), 0);
    let (call_id, args) = the_call(&events, "book_table");
    eprintln!("called book_table({args})");
    // The call joined the conversation.
    assert!(events.iter().any(|e| matches!(e, ServerEvent::ItemDone { item, .. } if item.kind == "function_call" && item.call_id.as_deref() == Some(call_id.as_str()))));

    // An output for a call that was never made is refused, and the session goes on.
    send(
        &mut tx,
        json!({"type": "conversation.item.create", "item": {"type": "function_call_output", "call_id": "call_nope", "output": "{}"}}),
    )
    .await;
    let refused = read_until(&mut rx, |e| count(e, "error") == 1).await;
    assert_eq!(
        errors(&refused),
        [("invalid_item".to_string(), Some("item.call_id".to_string()))]
    );

    let answer = answer_with_result(&mut tx, &mut rx, &call_id).await;
    assert!(errors(&answer).is_empty(), "{:?}", errors(&answer));
    let response = response_done(&answer);
    assert_eq!(response["status"], "completed");
    assert_eq!(response["output"][0]["type"], "message");
    let text = response["output"][0]["content"][0]["text"]
        .as_str()
        .unwrap()
        .to_string();
    eprintln!("answer: {text:?}");
    assert!(uses_the_result(&text), "{text:?}");
    assert_eq!(count(&answer, "response.function_call_arguments.done"), 0);
    // The answer follows the function's result in the conversation.
    let after = answer
        .iter()
        .find_map(|e| match e {
            ServerEvent::ItemAdded {
                previous_item_id,
                item,
            } if item.role == "assistant" => Some(previous_item_id.clone()),
            _ => None,
        })
        .unwrap();
    assert!(after.is_some());

    // Bad definitions and choices are typed errors; the session keeps its tools.
    for (update, code, param) in [
        (
            json!({"tools": [{"type": "function", "name": "f", "parameters": {"type": "object", "properties": {"n": {"type": "nonsense"}}}}]}),
            "invalid_tool",
            "session.tools[0].parameters",
        ),
        (
            json!({"tool_choice": {"type": "function", "name": "launch_rockets"}}),
            "invalid_tool_choice",
            "session.tool_choice",
        ),
    ] {
        tx.update_session(update).await.unwrap();
        let ev = read_until(&mut rx, |e| count(e, "error") == 1).await;
        assert_eq!(
            errors(&ev),
            [(code.to_string(), Some(param.to_string()))],
            "{ev:?}"
        );
    }
    send(
        &mut tx,
        json!({"type": "response.create", "response": {"tool_choice": "sometimes"}}),
    )
    .await;
    let ev = read_until(&mut rx, |e| count(e, "error") == 1).await;
    assert_eq!(errors(&ev)[0].0, "invalid_tool_choice");
}

#[tokio::test]
async fn a_spoken_turn_calls_the_function_and_speaks_the_answer() {
    let _heavy = HEAVY.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let (url, _) = common::start_speaking(
        ServerSettings::default(),
        None,
        Some(common::llm()),
        Some(common::tts()),
    )
    .await;
    let (mut tx, mut rx, session) = open(
        &url,
        json!({"type": "realtime", "tools": realtime_tools(), "tool_choice": "required",
               "audio": {"input": {"turn_detection": {"type": "server_vad", "silence_duration_ms": 500}}}}),
    )
    .await;
    assert_eq!(session["output_modalities"], json!(["audio"]));
    let mut speech = common::speak(
        dir.path(),
        "Please book a table for two people at eight tonight.",
        24_000,
    );
    speech.extend(std::iter::repeat_n(0.0, 24_000)); // a second of silence ends the turn
    tx.append(&speech).await.unwrap();
    let events = read_until(&mut rx, |e| count(e, "response.done") == 1).await;
    assert!(errors(&events).is_empty(), "{:?}", errors(&events));
    assert_eq!(count(&events, "response.output_audio.delta"), 0);
    let name = events
        .iter()
        .find_map(|e| match e {
            ServerEvent::FunctionCallArgumentsDone { name, .. } => Some(name.clone()),
            _ => None,
        })
        .expect("a call");
    let responses: Vec<&ServerEvent> = events
        .iter()
        .skip_while(|e| e.kind() != "response.created")
        .collect();
    let responses: Vec<ServerEvent> = responses.into_iter().cloned().collect();
    let (call_id, args) = the_call(&responses, &name);
    eprintln!("heard a request; called {name}({args})");

    let answer = answer_with_result(&mut tx, &mut rx, &call_id).await;
    assert!(errors(&answer).is_empty(), "{:?}", errors(&answer));
    let response = response_done(&answer);
    assert_eq!(response["status"], "completed");
    assert_eq!(response["output"][0]["content"][0]["type"], "output_audio");
    assert!(count(&answer, "response.output_audio.delta") > 0);
    let said = response["output"][0]["content"][0]["transcript"]
        .as_str()
        .unwrap()
        .to_string();
    eprintln!("spoken answer: {said:?}");
    assert!(uses_the_result(&said), "{said:?}");
}
