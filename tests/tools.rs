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

/// A text session that must call `book_table`, asked `text`, with its response requested.
async fn ask_to_book(url: &str, text: &str) -> (Sender, Receiver) {
    let (mut tx, rx, _) = open(
        url,
        json!({"type": "realtime", "output_modalities": ["text"], "tools": realtime_tools(),
               "tool_choice": {"type": "function", "name": "book_table"}}),
    )
    .await;
    send(
        &mut tx,
        json!({"type": "conversation.item.create", "item": {"type": "message", "role": "user",
            "content": [{"type": "input_text", "text": text}]}}),
    )
    .await;
    send(&mut tx, json!({"type": "response.create"})).await;
    (tx, rx)
}

/// Function results ground the answer: a factual question the knowledge base does not cover
/// ("Where is …?") is answered from the result of the call made for it, not with "I don't know"
/// (the not-found rule fired before, although the result held the answer).
#[tokio::test]
async fn a_function_result_is_answered_even_where_the_knowledge_base_knows_nothing() {
    let _heavy = HEAVY.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let kb = common::fixture_kb(dir.path()).await;
    let (url, _) =
        common::start_full(ServerSettings::default(), Some(kb), Some(common::llm())).await;
    let (mut tx, mut rx) = ask_to_book(
        &url,
        "Where will we sit? Book a table for four at 19:30 on the terrace.",
    )
    .await;
    let events = read_until(&mut rx, |e| count(e, "response.done") == 1).await;
    assert!(errors(&events).is_empty(), "{:?}", errors(&events));
    let (call_id, _) = the_call(&events, "book_table");
    let answer = answer_with_result(&mut tx, &mut rx, &call_id).await;
    assert!(errors(&answer).is_empty(), "{:?}", errors(&answer));
    let response = response_done(&answer);
    assert_eq!(response["status"], "completed", "{response}");
    let text = response["output"][0]["content"][0]["text"]
        .as_str()
        .unwrap()
        .to_string();
    eprintln!("answer: {text:?}, made: {}", response["voxd"]["answer"]);
    assert_ne!(response["voxd"]["answer"], "refused", "{text:?}");
    assert_ne!(text, voxd::realtime::answer::NOT_FOUND);
    assert!(uses_the_result(&text), "{text:?}");
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

/// A client that sends a call's output as soon as the call is complete (on
/// `response.output_item.done`, before `response.done`), and one that sends it the moment
/// `response.done` arrives: both are accepted, in order, and answered from.
#[tokio::test]
async fn a_call_output_sent_before_or_just_after_response_done_is_accepted() {
    let _heavy = HEAVY.lock().await;
    let (url, _) = common::start_full(ServerSettings::default(), None, Some(common::llm())).await;
    for early in [true, false] {
        let (mut tx, mut rx) = ask_to_book(&url, "Book a table for two at 20:00.").await;
        let until = if early {
            "response.output_item.done"
        } else {
            "response.done"
        };
        let events = read_until(&mut rx, |e| count(e, until) == 1).await;
        let call_id = events
            .iter()
            .find_map(|e| match e {
                ServerEvent::OutputItemDone { item, .. } if item.kind == "function_call" => {
                    item.call_id.clone()
                }
                _ => None,
            })
            .expect("the forced call");
        // The output and the next response.create go out back to back, without waiting.
        send(
            &mut tx,
            json!({"type": "conversation.item.create", "item": {"type": "function_call_output", "call_id": call_id, "output": BOOKED}}),
        )
        .await;
        send(
            &mut tx,
            json!({"type": "response.create", "response": {"tool_choice": "none"}}),
        )
        .await;
        let rest = read_until(&mut rx, |e| {
            count(e, "response.done") == if early { 2 } else { 1 }
        })
        .await;
        assert!(
            errors(&rest).is_empty(),
            "early {early}: {:?}",
            errors(&rest)
        );
        assert!(
            rest.iter().any(|e| matches!(e, ServerEvent::ItemDone { item, .. } if item.kind == "function_call_output" && item.call_id.as_deref() == Some(call_id.as_str()))),
            "early {early}: the output joined the conversation"
        );
        let answer = response_done(&rest);
        assert_eq!(answer["status"], "completed", "early {early}: {answer}");
        assert_eq!(
            answer["output"][0]["type"], "message",
            "early {early}: {answer}"
        );
    }
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

// ---------------------------------------------------------------------------------------------
// A remote model that writes invalid arguments: a scripted OpenAI-compatible endpoint.

use common::scripted::{scripted_llm, serve_scripted, Reply, Script};
use std::sync::{Arc, Mutex};

fn remote(url: String) -> Arc<dyn voxd::llm::Llm> {
    use voxd::llm::{RemoteLlm, RemoteLlmConfig};
    Arc::new(
        RemoteLlm::new(RemoteLlmConfig {
            retries: 0,
            ..RemoteLlmConfig::new(url, "scripted")
        })
        .unwrap(),
    )
}

const INVALID: &str = r#"{"people": "four", "time": "7pm", "area": "roof"}"#;
const VALID: &str = r#"{"people": 4, "time": "19:00", "area": "inside"}"#;

/// Every call event in `events` carries schema-valid arguments.
fn nothing_invalid_emitted(events: &[ServerEvent]) {
    let tools = restaurant_tools();
    for e in events {
        let args = match e {
            ServerEvent::FunctionCallArgumentsDone {
                name, arguments, ..
            } => Some((name, arguments)),
            _ => None,
        };
        if let Some((name, arguments)) = args {
            tools
                .validate(name, arguments)
                .unwrap_or_else(|e| panic!("an invalid call was emitted: {e}"));
        }
    }
}

#[tokio::test]
async fn a_remote_model_gets_one_retry_and_an_invalid_call_never_leaves_the_server() {
    let script = Script::default();
    let base = scripted_llm(script.clone()).await;
    let (url, http) = common::start_full(ServerSettings::default(), None, Some(remote(base))).await;
    let (mut tx, mut rx, _) = open(
        &url,
        json!({"type": "realtime", "output_modalities": ["text"], "tools": realtime_tools(), "tool_choice": "auto"}),
    )
    .await;
    let ask = |text: &str| {
        json!({"type": "conversation.item.create", "item": {"type": "message", "role": "user",
            "content": [{"type": "input_text", "text": text}]}})
    };

    // 1. Invalid, then valid after the error is fed back: the valid call is what comes out.
    script.queue(&[
        Reply::Call("book_table", INVALID),
        Reply::Call("book_table", VALID),
    ]);
    send(&mut tx, ask("Book a table for four at seven.")).await;
    send(&mut tx, json!({"type": "response.create"})).await;
    let events = read_until(&mut rx, |e| count(e, "response.done") == 1).await;
    assert!(errors(&events).is_empty(), "{:?}", errors(&events));
    nothing_invalid_emitted(&events);
    let (call_id, args) = the_call(&events, "book_table");
    assert_eq!(call_id, "call_remote");
    assert_eq!(args["people"], 4);
    let bodies = script.take_bodies();
    assert_eq!(bodies.len(), 2, "one retry");
    // The endpoint was given the tools (strict) and the choice.
    assert_eq!(bodies[0]["tool_choice"], "auto");
    assert_eq!(bodies[0]["tools"][0]["function"]["name"], "book_table");
    assert_eq!(
        bodies[0]["tools"][0]["function"]["parameters"]["required"],
        json!(["people", "time", "area"])
    );
    // The retry shows the model its invalid call and what was wrong, and names the function.
    let msgs = bodies[1]["messages"].as_array().unwrap();
    let last = msgs.last().unwrap();
    assert_eq!(last["role"], "tool");
    assert_eq!(last["tool_call_id"], "call_remote");
    assert!(
        last["content"].as_str().unwrap().contains("/people"),
        "{last}"
    );
    assert_eq!(
        msgs[msgs.len() - 2]["tool_calls"][0]["function"]["arguments"],
        INVALID
    );
    assert_eq!(
        bodies[1]["tool_choice"],
        json!({"type": "function", "function": {"name": "book_table"}})
    );

    // 2. Invalid twice: a typed failure, and no call at all.
    script.queue(&[
        Reply::Call("book_table", INVALID),
        Reply::Call("book_table", r#"{"people": 99}"#),
    ]);
    send(&mut tx, ask("Book a table for my whole village.")).await;
    send(&mut tx, json!({"type": "response.create"})).await;
    let events = read_until(&mut rx, |e| count(e, "response.done") == 1).await;
    assert_eq!(count(&events, "response.function_call_arguments.delta"), 0);
    assert_eq!(count(&events, "response.function_call_arguments.done"), 0);
    let response = response_done(&events);
    assert_eq!(response["status"], "failed", "{response}");
    assert_eq!(
        response["status_details"]["error"]["code"],
        "invalid_tool_arguments"
    );
    assert!(response["output"]
        .as_array()
        .unwrap()
        .iter()
        .all(|o| o["type"] != "function_call"));
    assert_eq!(errors(&events)[0].0, "invalid_tool_arguments");
    // The client is told what failed, never the model's values.
    let message = response["status_details"]["error"]["message"]
        .as_str()
        .unwrap();
    assert!(!message.contains("99"), "{message}");
    assert_eq!(script.take_bodies().len(), 2);

    // 3. A call to a function that was not offered is as invalid as bad arguments.
    script.queue(&[
        Reply::Call("launch_rockets", "{}"),
        Reply::Call("order_status", r#"{"order_id": "AB1234"}"#),
    ]);
    send(&mut tx, ask("Where is my order AB1234?")).await;
    send(&mut tx, json!({"type": "response.create"})).await;
    let events = read_until(&mut rx, |e| count(e, "response.done") == 1).await;
    nothing_invalid_emitted(&events);
    the_call(&events, "order_status");
    let retry = &script.take_bodies()[1];
    assert_eq!(retry["tool_choice"], "required");

    // 4. With auto, a plain answer stays a plain answer.
    script.queue(&[Reply::Text("We open at nine.")]);
    send(&mut tx, ask("When do you open?")).await;
    send(&mut tx, json!({"type": "response.create"})).await;
    let events = read_until(&mut rx, |e| count(e, "response.done") == 1).await;
    let response = response_done(&events);
    assert_eq!(
        response["output"][0]["content"][0]["text"],
        "We open at nine."
    );

    // 5. The same rules on /v1/chat/completions, unstreamed and streamed.
    let client = reqwest::Client::new();
    let body = |stream: bool| {
        json!({"messages": [{"role": "user", "content": "Table for four at seven"}],
               "tools": restaurant_tools().iter().map(|t| t.to_chat()).collect::<Vec<_>>(),
               "tool_choice": "auto", "stream": stream})
    };
    script.queue(&[
        Reply::Call("book_table", INVALID),
        Reply::Call("book_table", VALID),
    ]);
    let r: Value = client
        .post(format!("{http}/v1/chat/completions"))
        .json(&body(false))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let choice = &r["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls", "{r}");
    assert_eq!(choice["message"]["content"], Value::Null);
    assert_eq!(
        choice["message"]["tool_calls"][0]["function"]["arguments"],
        VALID
    );
    script.queue(&[Reply::Call("book_table", VALID)]);
    let streamed = client
        .post(format!("{http}/v1/chat/completions"))
        .json(&body(true))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(streamed.contains(r#""tool_calls":[{"#), "{streamed}");
    assert!(
        streamed.contains(r#""finish_reason":"tool_calls""#),
        "{streamed}"
    );
    script.queue(&[
        Reply::Call("book_table", INVALID),
        Reply::Call("book_table", INVALID),
    ]);
    let failed = client
        .post(format!("{http}/v1/chat/completions"))
        .json(&body(false))
        .send()
        .await
        .unwrap();
    assert_eq!(failed.status(), 500);
    let err: Value = failed.json().await.unwrap();
    assert_eq!(err["error"]["code"], "invalid_tool_arguments", "{err}");
    // A bad definition is the client's mistake: 400, naming the parameter.
    let bad = client
        .post(format!("{http}/v1/chat/completions"))
        .json(&json!({"messages": [{"role": "user", "content": "hi"}],
                      "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "array"}}}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    let err: Value = bad.json().await.unwrap();
    assert_eq!(err["error"]["code"], "invalid_tool");
    assert_eq!(err["error"]["param"], "tools[0].function.parameters");
}

// ---------------------------------------------------------------------------------------------
// Server tools, permissions and the audit trail, against the real `voxd serve`.

/// What the loopback service behind the HTTP tools received.
#[derive(Clone, Default)]
struct Service {
    bookings: Arc<Mutex<Vec<Value>>>,
}

/// A service for the HTTP tools: a booking endpoint, a slow one and an oversized one.
async fn tool_service(service: Service) -> String {
    use axum::routing::{get, post};
    let app = axum::Router::new()
        .route(
            "/book",
            post(
                |axum::extract::State(s): axum::extract::State<Service>,
                 axum::Json(body): axum::Json<Value>| async move {
                    s.bookings.lock().unwrap().push(body);
                    axum::Json(json!({"booked": true, "table": 7}))
                },
            ),
        )
        .route(
            "/slow/{code}",
            get(|| async {
                tokio::time::sleep(std::time::Duration::from_secs(3)).await;
                "late"
            }),
        )
        .route("/big", get(|| async { "x".repeat(100_000) }))
        .with_state(service);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr.to_string()
}

const ADMIN: &str = "admin-key-0123456789abcdef";
const STAFF: &str = "staff-key-0123456789abcdef";
const KIOSK: &str = "kiosk-key-0123456789abcdef";
const PHONE: &str = "+1 555 0100";

fn config(service: &str) -> String {
    format!(
        r#"
[server]
api_key = "{ADMIN}"
[[server.keys]]
id = "frontdesk"
key = "{STAFF}"
role = "staff"
[[server.keys]]
id = "kiosk"
key = "{KIOSK}"
role = "public"

[tools]
builtin = ["current_time"]
[tools.roles]
staff = ["*"]
public = ["current_time"]

[[tools.http]]
name = "book_table"
description = "Books a table."
url = "http://{service}/book"
method = "POST"
sensitive_result = true
parameters = '{{"type": "object", "properties": {{"people": {{"type": "integer", "minimum": 1}}, "phone": {{"type": "string", "x-sensitive": true}}}}, "required": ["people"], "additionalProperties": false}}'

[[tools.http]]
name = "slow_lookup"
url = "http://{service}/slow/{{code}}"
method = "GET"
timeout_ms = 300
parameters = {{ type = "object", properties = {{ code = {{ type = "string" }} }}, required = ["code"] }}

[[tools.http]]
name = "big_report"
url = "http://{service}/big"
method = "GET"
max_response_bytes = 1024
"#
    )
}

/// Asks one question in a text session opened with `key`; returns the response's events.
async fn ask_as(url: &str, key: &str, question: &str) -> Vec<ServerEvent> {
    let (mut tx, mut rx) = client::connect(url, Some(key)).await.unwrap();
    read_until(&mut rx, |e| !e.is_empty()).await;
    tx.update_session(json!({"type": "realtime", "output_modalities": ["text"]}))
        .await
        .unwrap();
    read_until(&mut rx, |e| count(e, "session.updated") == 1).await;
    send(
        &mut tx,
        json!({"type": "conversation.item.create", "item": {"type": "message", "role": "user",
            "content": [{"type": "input_text", "text": question}]}}),
    )
    .await;
    send(&mut tx, json!({"type": "response.create"})).await;
    read_until(&mut rx, |e| count(e, "response.done") == 1).await
}

fn offered(body: &Value) -> Vec<String> {
    body["tools"]
        .as_array()
        .map(|t| {
            t.iter()
                .map(|t| t["function"]["name"].as_str().unwrap().to_string())
                .collect()
        })
        .unwrap_or_default()
}

fn last_tool_message(body: &Value) -> String {
    let m = body["messages"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(m["role"], "tool", "{m}");
    m["content"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn server_tools_run_within_their_limits_and_permissions_and_are_audited() {
    let script = Script::default();
    let llm_url = scripted_llm(script.clone()).await;
    let service = Service::default();
    let service_addr = tool_service(service.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("voxd.toml");
    std::fs::write(&cfg, config(&service_addr)).unwrap();
    let kb = dir.path().join("kb.sqlite");
    let (server, http) = serve_scripted(&cfg, &kb, &llm_url).await;
    let url = format!("ws://{}/v1/realtime", server.addr);
    let client = reqwest::Client::new();

    // 1. Staff: the booking runs on the server; its result goes back to the model, not to the
    //    client, and the answer uses it.
    script.queue(&[
        Reply::Call("book_table", r#"{"people": 2, "phone": "+1 555 0100"}"#),
        Reply::Text("Your table 7 is booked."),
    ]);
    let events = ask_as(
        &url,
        STAFF,
        "Book a table for two, my number is +1 555 0100.",
    )
    .await;
    assert!(errors(&events).is_empty(), "{:?}", errors(&events));
    let response = response_done(&events);
    assert_eq!(response["status"], "completed", "{response}");
    assert_eq!(response["output"].as_array().unwrap().len(), 1);
    assert_eq!(
        response["output"][0]["content"][0]["text"],
        "Your table 7 is booked."
    );
    assert_eq!(count(&events, "response.function_call_arguments.done"), 0);
    assert_eq!(response["voxd"]["tool_calls"][0]["name"], "book_table");
    assert_eq!(response["voxd"]["tool_calls"][0]["status"], "ok");
    assert_eq!(
        service.bookings.lock().unwrap().as_slice(),
        [json!({"people": 2, "phone": PHONE})]
    );
    let bodies = script.take_bodies();
    assert_eq!(
        offered(&bodies[0]),
        ["current_time", "book_table", "slow_lookup", "big_report"]
    );
    assert!(
        last_tool_message(&bodies[1]).contains(r#""table": 7"#)
            || last_tool_message(&bodies[1]).contains(r#""table":7"#)
    );

    // 2. A service slower than the tool's timeout; 3. an answer larger than its limit. The
    //    model is told what went wrong and answers.
    script.queue(&[
        Reply::Call("slow_lookup", r#"{"code": "A1"}"#),
        Reply::Text("The lookup timed out."),
        Reply::Call("big_report", "{}"),
        Reply::Text("The report is too large."),
    ]);
    let events = ask_as(&url, STAFF, "Look up A1.").await;
    assert_eq!(
        response_done(&events)["voxd"]["tool_calls"][0]["status"],
        "timeout"
    );
    let events = ask_as(&url, STAFF, "Give me the report.").await;
    assert_eq!(
        response_done(&events)["voxd"]["tool_calls"][0]["status"],
        "error"
    );
    let bodies = script.take_bodies();
    assert!(last_tool_message(&bodies[1]).contains("did not answer within 300 ms"));
    assert!(last_tool_message(&bodies[3]).contains("larger than 1024 bytes"));

    // 4. The kiosk may only ask the time: it is offered nothing else, and a booking the model
    //    makes anyway is refused, with a typed error for the client and a word for the model.
    script.queue(&[
        Reply::Call("book_table", r#"{"people": 4}"#),
        Reply::Text("Sorry, I cannot book tables."),
    ]);
    let events = ask_as(&url, KIOSK, "Book a table for four.").await;
    assert_eq!(errors(&events), [("tool_not_allowed".to_string(), None)]);
    let response = response_done(&events);
    assert_eq!(response["status"], "completed");
    assert_eq!(response["voxd"]["tool_calls"][0]["status"], "refused");
    let bodies = script.take_bodies();
    assert_eq!(offered(&bodies[0]), ["current_time"]);
    assert!(last_tool_message(&bodies[1]).contains("not allowed"));
    assert_eq!(
        service.bookings.lock().unwrap().len(),
        1,
        "the refused call never ran"
    );

    // 5. The audit trail: every call, who made it, how it ended; the phone number redacted.
    let audit = |key: &str, query: &str| {
        client
            .get(format!("{http}/v1/audit{query}"))
            .bearer_auth(key)
            .send()
    };
    let r = audit(KIOSK, "").await.unwrap();
    assert_eq!(r.status(), 403);
    let rows: Value = audit(ADMIN, "").await.unwrap().json().await.unwrap();
    let rows = rows["data"].as_array().unwrap().clone();
    let summary: Vec<(String, String, String)> = rows
        .iter()
        .map(|r| {
            (
                r["tool"].as_str().unwrap().into(),
                r["key_id"].as_str().unwrap().into(),
                r["status"].as_str().unwrap().into(),
            )
        })
        .collect();
    let s = |a: &str, b: &str, c: &str| (a.to_string(), b.to_string(), c.to_string());
    assert_eq!(
        summary,
        [
            s("book_table", "frontdesk", "ok"),
            s("slow_lookup", "frontdesk", "timeout"),
            s("big_report", "frontdesk", "error"),
            s("book_table", "kiosk", "refused"),
        ]
    );
    let booking = rows[0]["arguments"].as_str().unwrap();
    assert!(
        !booking.contains("555") && booking.contains("[redacted]"),
        "{booking}"
    );
    assert!(rows[0]["latency_ms"].as_f64().unwrap() > 0.0);
    assert!(rows
        .iter()
        .all(|r| r["session"].as_str().unwrap().starts_with("sess_")));
    let refused: Value = audit(ADMIN, "?status=refused&tool=book_table")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(refused["data"].as_array().unwrap().len(), 1);
    let page: Value = audit(ADMIN, &format!("?after={}&limit=1", rows[1]["id"]))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(page["data"][0]["id"], rows[2]["id"]);
    let bad = audit(ADMIN, "?limit=0").await.unwrap();
    assert_eq!(bad.status(), 400);

    // The log never shows the number either.
    let log = server.log.lock().unwrap().join("\n");
    assert!(!log.contains("555 0100"), "{}", server.log_tail());
    assert!(log.contains("server tool call"));

    // The metrics count calls by tool and outcome.
    let metrics = client
        .get(format!("{http}/metrics"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for line in [
        r#"voxd_tool_calls_total{tool="book_table",status="ok"} 1"#,
        r#"voxd_tool_calls_total{tool="book_table",status="refused"} 1"#,
        r#"voxd_tool_calls_total{tool="slow_lookup",status="timeout"} 1"#,
    ] {
        assert!(metrics.contains(line), "{line}\n{metrics}");
    }
    assert!(metrics.contains("voxd_tool_call_seconds_count 3"));

    // `voxd audit` reads the same trail.
    drop(server);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_voxd"))
        .args(["audit", "--json", "--tool", "book_table", "--kb"])
        .arg(&kb)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[1]["status"], "refused");
}

/// An MCP server in the configuration (the reference `server-everything` over stdio, which
/// `voxd serve` starts): its tools are listed at start and offered as `everything__{tool}`; the
/// model's call runs on the MCP server, its result goes back to the model and grounds the answer,
/// and the call is in the audit trail. A role sees an MCP server's tools only through its list.
#[tokio::test]
async fn an_mcp_servers_tools_are_server_tools_end_to_end() {
    let everything = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/js/node_modules/@modelcontextprotocol/server-everything/dist/index.js");
    assert!(everything.exists(), "run `bash scripts/deps --test`");
    let script = Script::default();
    let llm_url = scripted_llm(script.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("voxd.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"
[server]
api_key = "{ADMIN}"
[[server.keys]]
id = "kiosk"
key = "{KIOSK}"
role = "public"
[tools.roles]
public = ["everything__echo"]
[[tools.mcp]]
label = "everything"
command = ["node", "{}", "stdio"]
allowed_tools = ["echo", "get-sum"]
"#,
            everything.display()
        ),
    )
    .unwrap();
    let kb = dir.path().join("kb.sqlite");
    let (server, http) = serve_scripted(&cfg, &kb, &llm_url).await;
    let url = format!("ws://{}/v1/realtime", server.addr);
    let client = reqwest::Client::new();
    script.queue(&[
        Reply::Call("everything__get-sum", r#"{"a": 2, "b": 40}"#),
        Reply::Text("Two and forty make 42."),
    ]);
    let events = ask_as(&url, ADMIN, "What is two plus forty?").await;
    assert!(errors(&events).is_empty(), "{:?}", errors(&events));
    let response = response_done(&events);
    assert_eq!(
        response["voxd"]["tool_calls"][0]["name"],
        "everything__get-sum"
    );
    assert_eq!(
        response["voxd"]["tool_calls"][0]["status"], "ok",
        "{response}"
    );
    let bodies = script.take_bodies();
    assert_eq!(
        offered(&bodies[0]),
        ["everything__echo", "everything__get-sum"]
    );
    assert!(
        last_tool_message(&bodies[1]).contains("42"),
        "{}",
        last_tool_message(&bodies[1])
    );
    // The kiosk's role lists only the echo tool.
    script.queue(&[Reply::Text("Hello.")]);
    ask_as(&url, KIOSK, "Hello").await;
    assert_eq!(offered(&script.take_bodies()[0]), ["everything__echo"]);
    // Audited.
    let rows: Value = client
        .get(format!("{http}/v1/audit?tool=everything__get-sum"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let row = &rows["data"][0];
    assert_eq!(row["kind"], "server", "{rows}");
    assert_eq!(row["status"], "ok", "{rows}");
}

/// Server tools in `/v1/chat/completions`: offered beside the request's own tools (as the key's
/// role allows), run by voxd when the model calls them, their result given to the model, so the
/// client gets the answer; streamed or whole; audited like a session's calls.
#[tokio::test]
async fn server_tools_answer_chat_completions_too() {
    let script = Script::default();
    let llm_url = scripted_llm(script.clone()).await;
    let service = Service::default();
    let service_addr = tool_service(service.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("voxd.toml");
    std::fs::write(&cfg, config(&service_addr)).unwrap();
    let kb = dir.path().join("kb.sqlite");
    let (_server, http) = serve_scripted(&cfg, &kb, &llm_url).await;
    let client = reqwest::Client::new();
    let chat = |key: &'static str, body: Value| {
        client
            .post(format!("{http}/v1/chat/completions"))
            .bearer_auth(key)
            .json(&body)
            .send()
    };
    let question = json!([{"role": "user", "content": "Book a table for two."}]);
    // Whole: the booking runs on the server; the client gets only the answer.
    script.queue(&[
        Reply::Call("book_table", r#"{"people": 2}"#),
        Reply::Text("Table 7 is yours."),
    ]);
    let r: Value = chat(STAFF, json!({"model": "x", "messages": question}))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        r["choices"][0]["message"]["content"], "Table 7 is yours.",
        "{r}"
    );
    assert!(r["choices"][0]["message"]["tool_calls"].is_null(), "{r}");
    assert_eq!(service.bookings.lock().unwrap().len(), 1);
    let bodies = script.take_bodies();
    assert_eq!(
        offered(&bodies[0]),
        ["current_time", "book_table", "slow_lookup", "big_report"]
    );
    assert!(last_tool_message(&bodies[1]).contains("table"));
    // Streamed, with a tool of the client's own beside them: the client's call comes back to it.
    script.queue(&[Reply::Call("lookup_order", r#"{"id": "AB1234"}"#)]);
    let own = json!([{"type": "function", "function": {"name": "lookup_order",
        "parameters": {"type": "object", "properties": {"id": {"type": "string"}}}}}]);
    let text = chat(
        STAFF,
        json!({"model": "x", "messages": question, "tools": own, "stream": true,
               "parallel_tool_calls": false}),
    )
    .await
    .unwrap()
    .text()
    .await
    .unwrap();
    assert!(
        text.contains("lookup_order") && text.contains("[DONE]"),
        "{text}"
    );
    let body = &script.take_bodies()[0];
    assert_eq!(offered(body)[0], "lookup_order");
    // `parallel_tool_calls` reaches the model's endpoint.
    assert_eq!(body["parallel_tool_calls"], false, "{body}");
    // The kiosk is offered only what its role lists.
    script.queue(&[Reply::Text("It is noon.")]);
    chat(KIOSK, json!({"model": "x", "messages": question}))
        .await
        .unwrap();
    assert_eq!(offered(&script.take_bodies()[0]), ["current_time"]);
    // Audited, as the completion's calls.
    let rows: Value = client
        .get(format!("{http}/v1/audit?tool=book_table"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let row = &rows["data"][0];
    assert_eq!(row["session"], "chat", "{rows}");
    assert_eq!(row["key_id"], "frontdesk", "{rows}");
    assert!(
        row["response"].as_str().unwrap().starts_with("chatcmpl"),
        "{rows}"
    );
}
