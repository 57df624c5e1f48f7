//! The configured LLM served as OpenAI's `POST /v1/chat/completions` (streaming SSE or one JSON
//! answer) and `GET /v1/models`, so one voxd can lend its model to other clients or another voxd.

use std::convert::Infallible;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::StreamExt;
use serde::Deserialize;
use serde_json::{json, Value};

use super::error::ApiError;
use super::AppState;
use crate::llm::{FinishReason, GenerateRequest, LlmError, LlmEvent, Usage};
use crate::prompt::{ChatMessage, Role};
use crate::tools::{ToolCall, ToolChoice, ToolError, ToolSet};

impl From<ToolError> for ApiError {
    fn from(e: ToolError) -> Self {
        let status = match e {
            ToolError::InvalidTool { .. } | ToolError::InvalidChoice { .. } => {
                StatusCode::BAD_REQUEST
            }
            // The model could not write a valid call, even with a retry.
            ToolError::InvalidArguments { .. } | ToolError::UnknownTool { .. } => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
        };
        let err = ApiError::new(status, e.code(), e.to_string());
        match e.param() {
            Some(p) => err.with_param(p.to_string()),
            None => err,
        }
    }
}

impl From<LlmError> for ApiError {
    fn from(e: LlmError) -> Self {
        if let LlmError::Tool(t) = e {
            tracing::warn!(error = %t, code = t.code(), "tool call failed");
            return t.into();
        }
        let status = match &e {
            LlmError::Invalid(_) | LlmError::ContextOverflow { .. } => StatusCode::BAD_REQUEST,
            LlmError::Pool(crate::workers::PoolError::Busy { .. }) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            LlmError::Unreachable { .. }
            | LlmError::Upstream { .. }
            | LlmError::Malformed { .. } => StatusCode::BAD_GATEWAY,
            LlmError::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        tracing::warn!(error = %e, code = e.code(), "language model request failed");
        ApiError::new(status, e.code(), e.public_message())
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Content {
    Text(String),
    Parts(Vec<Part>),
}

#[derive(Deserialize)]
struct Part {
    #[serde(rename = "type")]
    kind: String,
    text: Option<String>,
}

#[derive(Deserialize)]
struct Message {
    role: String,
    content: Option<Content>,
    /// An assistant message's calls.
    tool_calls: Option<Vec<WireCall>>,
    /// A tool message's call.
    tool_call_id: Option<String>,
}

#[derive(Deserialize)]
struct WireCall {
    id: String,
    function: WireFunction,
}

#[derive(Deserialize)]
struct WireFunction {
    name: String,
    #[serde(default)]
    arguments: String,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Stop {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: bool,
}

#[derive(Deserialize)]
struct Body {
    model: Option<String>,
    messages: Vec<Message>,
    #[serde(default)]
    stream: bool,
    stream_options: Option<StreamOptions>,
    max_tokens: Option<u64>,
    max_completion_tokens: Option<u64>,
    temperature: Option<f32>,
    top_p: Option<f32>,
    seed: Option<u64>,
    stop: Option<Stop>,
    n: Option<u32>,
    tools: Option<Value>,
    tool_choice: Option<Value>,
    parallel_tool_calls: Option<bool>,
}

fn bad(code: &'static str, message: impl Into<String>, param: &'static str) -> ApiError {
    ApiError::bad_request(code, message).with_param(param)
}

fn request(body: Body, default_max: usize) -> Result<GenerateRequest, ApiError> {
    if body.n.is_some_and(|n| n != 1) {
        return Err(bad("invalid_n", "only n = 1 is supported", "n"));
    }
    if body.messages.is_empty() {
        return Err(bad(
            "invalid_messages",
            "`messages` must not be empty",
            "messages",
        ));
    }
    let messages = body
        .messages
        .into_iter()
        .map(message)
        .collect::<Result<Vec<_>, _>>()?;
    let tools = match &body.tools {
        None | Some(Value::Null) => ToolSet::default(),
        Some(t) => ToolSet::parse(t, "tools")?,
    };
    let tool_choice = match &body.tool_choice {
        None | Some(Value::Null) => ToolChoice::Auto,
        Some(c) => ToolChoice::parse(c, "tool_choice")?,
    };
    if !tools.is_empty() {
        tool_choice.check(&tools, "tool_choice")?;
    }
    let max_tokens = body
        .max_completion_tokens
        .or(body.max_tokens)
        .map(|n| n as usize)
        .unwrap_or(default_max);
    if !(1..=4096).contains(&max_tokens) {
        return Err(bad(
            "invalid_max_tokens",
            "max_tokens must be 1..=4096",
            "max_tokens",
        ));
    }
    let temperature = body.temperature.unwrap_or(0.0);
    if !(0.0..=2.0).contains(&temperature) {
        return Err(bad(
            "invalid_temperature",
            "temperature must be 0..=2",
            "temperature",
        ));
    }
    if body
        .top_p
        .is_some_and(|p| !(0.0..=1.0).contains(&p) || p == 0.0)
    {
        return Err(bad("invalid_top_p", "top_p must be in (0, 1]", "top_p"));
    }
    let stop = match body.stop {
        None => Vec::new(),
        Some(Stop::One(s)) => vec![s],
        Some(Stop::Many(v)) if v.len() <= 4 => v,
        Some(Stop::Many(_)) => return Err(bad("invalid_stop", "at most 4 stop strings", "stop")),
    };
    let mut req = GenerateRequest::new(messages);
    // Cache the leading system message(s): the part repeated across requests.
    let leading = req
        .messages
        .iter()
        .take_while(|m| m.role == Role::System)
        .count();
    req.cache_points = vec![leading];
    req.max_tokens = max_tokens;
    req.temperature = temperature;
    req.top_p = body.top_p;
    req.seed = body.seed;
    req.stop = stop;
    req.tools = tools;
    req.tool_choice = tool_choice;
    req.parallel_tool_calls = body.parallel_tool_calls;
    Ok(req)
}

/// One chat message of the request, checked: its role, its text (text parts only), a tool
/// message's call id, an assistant message's calls.
fn message(m: Message) -> Result<ChatMessage, ApiError> {
    let role = match m.role.as_str() {
        "system" | "developer" => Role::System,
        "user" => Role::User,
        "assistant" => Role::Assistant,
        "tool" => Role::Tool,
        other => {
            return Err(bad(
                "invalid_role",
                format!(
                    "role `{other}` is not supported (system, developer, user, assistant, tool)"
                ),
                "messages",
            ))
        }
    };
    if role == Role::Tool && m.tool_call_id.is_none() {
        return Err(bad(
            "missing_required_parameter",
            "a tool message needs `tool_call_id`",
            "messages",
        ));
    }
    let text = match m.content {
        None => String::new(),
        Some(Content::Text(t)) => t,
        Some(Content::Parts(parts)) => {
            let mut t = String::new();
            for p in parts {
                if p.kind != "text" {
                    return Err(bad(
                        "unsupported_content",
                        format!("content parts of type `{}` are not supported", p.kind),
                        "messages",
                    ));
                }
                t.push_str(p.text.as_deref().unwrap_or(""));
            }
            t
        }
    };
    let mut msg = ChatMessage::new(role, text);
    if role == Role::Tool {
        msg.tool_call_id = m.tool_call_id;
    }
    if role == Role::Assistant {
        msg.tool_calls = m
            .tool_calls
            .unwrap_or_default()
            .into_iter()
            .map(|c| ToolCall {
                id: c.id,
                name: c.function.name,
                arguments: c.function.arguments,
            })
            .collect();
    }
    Ok(msg)
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn usage_json(u: &Usage) -> Value {
    json!({
        "prompt_tokens": u.prompt_tokens,
        "completion_tokens": u.completion_tokens,
        "total_tokens": u.prompt_tokens + u.completion_tokens,
        "prompt_tokens_details": { "cached_tokens": u.cached_tokens },
    })
}

fn finish_str(f: FinishReason) -> &'static str {
    match f {
        FinishReason::Stop => "stop",
        FinishReason::Length => "length",
        FinishReason::ToolCalls => "tool_calls",
    }
}

/// A call as Chat Completions writes it (`index` in streamed chunks).
fn call_json(c: &ToolCall, index: Option<usize>) -> Value {
    let mut v = json!({
        "id": c.id,
        "type": "function",
        "function": { "name": c.name, "arguments": c.arguments },
    });
    if let Some(i) = index {
        v["index"] = json!(i);
    }
    v
}

/// `POST /v1/chat/completions`.
pub async fn completions(
    State(state): State<Arc<AppState>>,
    caller: Option<axum::Extension<crate::tools::Caller>>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let llm = state.llm()?;
    let body: Body = serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad_request(
            "invalid_json",
            format!("the request body is not valid: {e}"),
        )
    })?;
    if let Some(m) = body.model.as_deref().filter(|m| *m != llm.model_name()) {
        tracing::debug!(
            requested = m,
            serving = llm.model_name(),
            "chat request for another model name; serving ours"
        );
    }
    let stream = body.stream;
    let include_usage = body
        .stream_options
        .as_ref()
        .is_some_and(|o| o.include_usage);
    let mut req = request(body, state.answer.max_tokens)?;
    let id = crate::ids::new_id("chatcmpl");
    let model = llm.model_name().to_string();
    let created = now();
    let server_tools = state
        .answering()
        .and_then(|a| a.server_tools)
        .and_then(|server| {
            let caller = caller.map_or_else(crate::tools::Caller::anonymous, |c| c.0);
            super::chat_tools::ChatTools::offer(
                &mut req,
                server,
                caller,
                state.audit().cloned(),
                &id,
            )
        });
    // Errors before the first token are HTTP errors in both modes.
    let (first, events) = match server_tools {
        Some(tools) => tools.run(llm.clone(), req).await?,
        None => {
            let mut events = crate::llm::checked::generate(llm.clone(), req).await?;
            match events.next().await {
                Some(Ok(ev)) => (ev, events),
                Some(Err(e)) => return Err(e.into()),
                None => {
                    return Err(
                        LlmError::Compute("the generation ended without finishing".into()).into(),
                    )
                }
            }
        }
    };

    let made = Made { id, model, created };
    if stream {
        Ok(streamed(made, first, events, include_usage))
    } else {
        whole(made, first, events).await
    }
}

/// The completion's id, model name and creation time, on every chunk.
struct Made {
    id: String,
    model: String,
    created: u64,
}

/// The whole completion as one `chat.completion` object.
async fn whole(
    made: Made,
    first: LlmEvent,
    mut events: crate::llm::LlmStream,
) -> Result<Response, ApiError> {
    let mut text = String::new();
    let mut calls = Vec::new();
    let mut ev: Option<Result<LlmEvent, LlmError>> = Some(Ok(first));
    loop {
        match ev {
            Some(Ok(LlmEvent::Delta(d))) => text.push_str(&d),
            Some(Ok(LlmEvent::ToolCall(c))) => calls.push(c),
            Some(Ok(LlmEvent::Done { finish, usage })) => {
                let mut message = json!({ "role": "assistant", "content": text, "refusal": null });
                if !calls.is_empty() {
                    if text.is_empty() {
                        message["content"] = Value::Null;
                    }
                    message["tool_calls"] = calls.iter().map(|c| call_json(c, None)).collect();
                }
                return Ok(Json(json!({
                    "id": made.id,
                    "object": "chat.completion",
                    "created": made.created,
                    "model": made.model,
                    "choices": [{
                        "index": 0,
                        "message": message,
                        "finish_reason": finish_str(finish),
                        "logprobs": null,
                    }],
                    "usage": usage_json(&usage),
                }))
                .into_response());
            }
            Some(Err(e)) => return Err(e.into()),
            None => {
                return Err(
                    LlmError::Compute("the generation ended without finishing".into()).into(),
                )
            }
        }
        ev = events.next().await;
    }
}

/// The completion as server-sent `chat.completion.chunk` events, then `[DONE]`.
fn streamed(
    made: Made,
    first: LlmEvent,
    events: crate::llm::LlmStream,
    include_usage: bool,
) -> Response {
    let chunk = move |delta: Value, finish: Option<&str>| {
        json!({
            "id": made.id,
            "object": "chat.completion.chunk",
            "created": made.created,
            "model": made.model,
            "choices": [{ "index": 0, "delta": delta, "finish_reason": finish, "logprobs": null }],
        })
    };
    let opening = chunk(json!({ "role": "assistant", "content": "" }), None);
    let rest = futures::stream::once(async move { Ok(first) }).chain(events);
    let mut calls_sent = 0;
    let sse = futures::stream::once(async move { opening })
        .chain(rest.flat_map(move |ev| {
            let items: Vec<Value> = match ev {
                Ok(LlmEvent::Delta(d)) => vec![chunk(json!({ "content": d }), None)],
                Ok(LlmEvent::ToolCall(c)) => {
                    calls_sent += 1;
                    vec![chunk(
                        json!({ "tool_calls": [call_json(&c, Some(calls_sent - 1))] }),
                        None,
                    )]
                }
                Ok(LlmEvent::Done { finish, usage }) => {
                    let mut v = vec![chunk(json!({}), Some(finish_str(finish)))];
                    if include_usage {
                        let mut u = chunk(json!({}), None);
                        u["choices"] = json!([]);
                        u["usage"] = usage_json(&usage);
                        v.push(u);
                    }
                    v
                }
                Err(e) => vec![json!({ "error": { "message": e.to_string(), "type": "server_error", "code": e.code() } })],
            };
            futures::stream::iter(items)
        }))
        .map(|v| Ok::<_, Infallible>(Event::default().data(v.to_string())))
        .chain(futures::stream::once(async { Ok(Event::default().data("[DONE]")) }));
    Sse::new(sse)
        .keep_alive(KeepAlive::default())
        .into_response()
}

/// `GET /v1/models`: the models this server runs.
pub async fn models(State(state): State<Arc<AppState>>) -> Response {
    let created = now();
    let mut data = Vec::new();
    if let Ok(llm) = state.llm() {
        data.push(json!({ "id": llm.model_name(), "object": "model", "created": created, "owned_by": "voxd" }));
    }
    if let Some(kb) = state.knowledge_base() {
        data.push(json!({ "id": kb.model().name, "object": "model", "created": created, "owned_by": "voxd" }));
    }
    if let Some(tts) = state.voice() {
        for id in ["tts-1", "gpt-4o-mini-tts"] {
            data.push(json!({ "id": id, "object": "model", "created": created, "owned_by": "voxd", "voxd": { "voice": tts.describe() } }));
        }
    }
    if state.asr().is_ok() {
        data.push(
            json!({ "id": "whisper-1", "object": "model", "created": created, "owned_by": "voxd" }),
        );
    }
    Json(json!({ "object": "list", "data": data })).into_response()
}
