//! Any OpenAI-compatible chat-completions endpoint (OpenAI, vLLM, Ollama, llama.cpp's server,
//! another voxd) through async-openai, streaming.
//!
//! Timeouts: connecting, the first token, and the whole answer each have a limit. Failures before
//! the first token (connection refused, 5xx, 429, timeouts) are retried with exponential backoff;
//! once text has been streamed nothing is retried, so an answer is never repeated or spliced.

use std::time::{Duration, Instant};

use async_openai::config::OpenAIConfig;
use async_openai::error::OpenAIError;
use async_openai::types::chat::{ChatCompletionResponseStream, CreateChatCompletionRequest};
use async_openai::Client;
use futures::future::BoxFuture;
use futures::StreamExt;
use serde_json::json;

use super::{FinishReason, GenerateRequest, Llm, LlmError, LlmEvent, LlmStream, Usage};
use crate::tools::ToolCall;

/// Where and how to reach the endpoint.
#[derive(Debug, Clone)]
pub struct RemoteLlmConfig {
    /// Base URL including the version prefix, e.g. `http://127.0.0.1:11434/v1`.
    pub base_url: String,
    pub api_key: Option<String>,
    pub model: String,
    pub connect_timeout: Duration,
    pub first_token_timeout: Duration,
    pub total_timeout: Duration,
    /// Attempts after the first, before any token arrived.
    pub retries: u32,
    /// The context length to assume (for history trimming).
    pub context: usize,
}

impl RemoteLlmConfig {
    pub fn new(base_url: impl Into<String>, model: impl Into<String>) -> Self {
        RemoteLlmConfig {
            base_url: base_url.into(),
            api_key: None,
            model: model.into(),
            connect_timeout: Duration::from_secs(5),
            first_token_timeout: Duration::from_secs(20),
            total_timeout: Duration::from_secs(120),
            retries: 2,
            context: 8192,
        }
    }
}

/// An [`Llm`] backed by an HTTP endpoint.
pub struct RemoteLlm {
    client: Client<OpenAIConfig>,
    config: RemoteLlmConfig,
}

impl RemoteLlm {
    pub fn new(config: RemoteLlmConfig) -> Result<Self, LlmError> {
        let client = crate::openai_http::client(
            &config.base_url,
            config.api_key.as_deref(),
            config.connect_timeout,
            None,
        )
        .map_err(|e| LlmError::Unreachable {
            url: config.base_url.clone(),
            reason: e.to_string(),
        })?;
        Ok(RemoteLlm { client, config })
    }

    fn url(&self) -> String {
        self.config.base_url.clone()
    }

    fn map_error(&self, e: OpenAIError) -> LlmError {
        let url = self.url();
        match e {
            OpenAIError::Reqwest(e) if e.is_timeout() => LlmError::Timeout {
                url,
                seconds: self.config.connect_timeout.as_secs_f64(),
                what: "connecting",
            },
            OpenAIError::Reqwest(e) if e.is_connect() || e.is_request() => LlmError::Unreachable {
                url,
                reason: e.to_string(),
            },
            OpenAIError::Reqwest(e) => LlmError::Malformed {
                url,
                reason: e.to_string(),
            },
            OpenAIError::ApiError(r) => LlmError::Upstream {
                url,
                status: r.status_code.as_u16(),
                message: r.api_error.message.chars().take(300).collect(),
            },
            OpenAIError::JSONDeserialize(e, _) => LlmError::Malformed {
                url,
                reason: e.to_string(),
            },
            other => LlmError::Malformed {
                url,
                reason: other.to_string(),
            },
        }
    }

    fn request(&self, req: &GenerateRequest) -> Result<CreateChatCompletionRequest, LlmError> {
        let messages: Vec<_> = req
            .messages
            .iter()
            .map(|m| {
                let mut msg = json!({ "role": m.role.as_str(), "content": m.content });
                if !m.tool_calls.is_empty() {
                    msg["tool_calls"] = m
                        .tool_calls
                        .iter()
                        .map(|c| json!({"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}))
                        .collect();
                }
                if let Some(id) = &m.tool_call_id {
                    msg["tool_call_id"] = json!(id);
                }
                msg
            })
            .collect();
        let mut body = json!({
            "model": self.config.model,
            "messages": messages,
            "max_tokens": req.max_tokens,
            "temperature": req.temperature,
            "stream": true,
            "stream_options": { "include_usage": true },
        });
        if let Some(p) = req.top_p {
            body["top_p"] = json!(p);
        }
        if req.repeat_penalty > 1.0 {
            // Not in OpenAI's API; vLLM and llama.cpp's server read it, others ignore it.
            body["repetition_penalty"] = json!(req.repeat_penalty);
        }
        if let Some(s) = req.seed {
            body["seed"] = json!(s);
        }
        if !req.stop.is_empty() {
            body["stop"] = json!(req.stop.iter().take(4).collect::<Vec<_>>());
        }
        if !req.tools.is_empty() {
            body["tools"] = req.tools.iter().map(|t| t.to_chat()).collect();
            body["tool_choice"] = match &req.tool_choice {
                crate::tools::ToolChoice::Function(name) => {
                    json!({"type": "function", "function": {"name": name}})
                }
                other => other.to_view(),
            };
            if let Some(p) = req.parallel_tool_calls {
                body["parallel_tool_calls"] = json!(p);
            }
        }
        serde_json::from_value(body).map_err(|e| LlmError::Invalid(e.to_string()))
    }

    /// Opens the stream and waits for its first piece of text (or its end), retrying failures.
    async fn open(
        &self,
        req: &GenerateRequest,
    ) -> Result<
        (
            ChatCompletionResponseStream,
            Vec<LlmEvent>,
            Usage,
            Vec<ToolCall>,
        ),
        LlmError,
    > {
        let body = self.request(req)?;
        let mut attempt = 0;
        loop {
            let started = Instant::now();
            let result = tokio::time::timeout(self.config.first_token_timeout, async {
                let mut stream = self
                    .client
                    .chat()
                    .create_stream(body.clone())
                    .await
                    .map_err(|e| self.map_error(e))?;
                let mut early = Vec::new();
                let mut usage = Usage::default();
                let mut calls = Vec::new();
                while let Some(chunk) = stream.next().await {
                    let chunk = chunk.map_err(|e| self.map_error(e))?;
                    let (events, done) = events_of(chunk, &mut usage, &mut calls);
                    let has_text = events.iter().any(|e| matches!(e, LlmEvent::Delta(_)));
                    early.extend(events);
                    if has_text || done {
                        break;
                    }
                }
                usage.first_token_ms = started.elapsed().as_secs_f64() * 1e3;
                Ok::<_, LlmError>((stream, early, usage, calls))
            })
            .await
            .unwrap_or_else(|_| {
                Err(LlmError::Timeout {
                    url: self.url(),
                    seconds: self.config.first_token_timeout.as_secs_f64(),
                    what: "waiting for the first token",
                })
            });
            match result {
                Ok(ok) => return Ok(ok),
                Err(e) if attempt < self.config.retries && retryable(&e) => {
                    let wait = Duration::from_millis(200 << attempt);
                    tracing::warn!(error = %e, attempt, ?wait, "LLM request failed before the first token; retrying");
                    tokio::time::sleep(wait).await;
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }
}

fn retryable(e: &LlmError) -> bool {
    match e {
        LlmError::Unreachable { .. } | LlmError::Timeout { .. } => true,
        LlmError::Upstream { status, .. } => *status >= 500 || *status == 429,
        _ => false,
    }
}

/// The events in one streamed chunk, and whether it finished the answer.
fn events_of(
    chunk: async_openai::types::chat::CreateChatCompletionStreamResponse,
    usage: &mut Usage,
    calls: &mut Vec<ToolCall>,
) -> (Vec<LlmEvent>, bool) {
    let mut out = Vec::new();
    let mut done = false;
    if let Some(u) = &chunk.usage {
        usage.prompt_tokens = u.prompt_tokens as usize;
        usage.completion_tokens = u.completion_tokens as usize;
    }
    for choice in chunk.choices {
        if let Some(text) = choice.delta.content.filter(|t| !t.is_empty()) {
            out.push(LlmEvent::Delta(text));
        }
        // A call streams in pieces, by index: its id and name first, then its arguments.
        for piece in choice.delta.tool_calls.unwrap_or_default() {
            let i = piece.index as usize;
            if i >= crate::tools::schema::MAX_TOOLS {
                continue;
            }
            while calls.len() <= i {
                calls.push(ToolCall {
                    id: String::new(),
                    name: String::new(),
                    arguments: String::new(),
                });
            }
            let call = &mut calls[i];
            if let Some(id) = piece.id {
                call.id = id;
            }
            if let Some(f) = piece.function {
                if let Some(n) = f.name {
                    call.name.push_str(&n);
                }
                if let Some(a) = f.arguments {
                    if call.arguments.len() + a.len()
                        <= crate::tools::schema::MAX_ARGUMENTS_BYTES + 1
                    {
                        call.arguments.push_str(&a);
                    }
                }
            }
        }
        if let Some(reason) = choice.finish_reason {
            for mut call in calls.drain(..) {
                if call.id.is_empty() {
                    call.id = crate::tools::new_call_id();
                }
                out.push(LlmEvent::ToolCall(call));
            }
            let finish = match reason {
                async_openai::types::chat::FinishReason::Length => FinishReason::Length,
                async_openai::types::chat::FinishReason::ToolCalls => FinishReason::ToolCalls,
                _ => FinishReason::Stop,
            };
            out.push(LlmEvent::Done {
                finish,
                usage: Usage::default(),
            });
            done = true;
        }
    }
    (out, done)
}

impl Llm for RemoteLlm {
    fn generate(&self, request: GenerateRequest) -> BoxFuture<'_, Result<LlmStream, LlmError>> {
        Box::pin(async move {
            let deadline = tokio::time::Instant::now() + self.config.total_timeout;
            let (stream, early, usage, calls) = self.open(&request).await?;
            let first = early
                .iter()
                .any(|e| matches!(e, LlmEvent::Delta(_)))
                .then(Instant::now);
            let reading = Reading {
                stream,
                queue: early.into(),
                usage,
                finish: None,
                calls,
                completion: 0,
                ended: false,
                first,
                deadline,
                url: self.url(),
                total_s: self.config.total_timeout.as_secs_f64(),
                connect_s: self.config.connect_timeout.as_secs_f64(),
            };
            let s = futures::stream::unfold(reading, |mut r| async move {
                let event = r.next_event().await?;
                Some((event, r))
            });
            Ok(Box::pin(s) as LlmStream)
        })
    }

    fn model_name(&self) -> &str {
        &self.config.model
    }

    fn context_length(&self) -> usize {
        self.config.context
    }
}

/// A streamed answer being read: the HTTP stream, events already read, the usage and finish
/// seen, and whether it ended.
struct Reading {
    stream: ChatCompletionResponseStream,
    queue: std::collections::VecDeque<LlmEvent>,
    usage: Usage,
    finish: Option<FinishReason>,
    calls: Vec<ToolCall>,
    /// Deltas sent, and when the first was.
    completion: usize,
    first: Option<Instant>,
    ended: bool,
    deadline: tokio::time::Instant,
    url: String,
    total_s: f64,
    connect_s: f64,
}

impl Reading {
    /// The next event: a delta or call already read, else what the next chunk brings; the
    /// finish waits for the end of the stream (usage may follow in a last chunk).
    async fn next_event(&mut self) -> Option<Result<LlmEvent, LlmError>> {
        loop {
            if let Some(ev) = self.queue.pop_front() {
                match ev {
                    LlmEvent::Delta(t) => {
                        self.completion += 1;
                        self.first.get_or_insert_with(Instant::now);
                        return Some(Ok(LlmEvent::Delta(t)));
                    }
                    LlmEvent::Done { finish, .. } => {
                        self.finish = Some(finish);
                        continue;
                    }
                    call @ LlmEvent::ToolCall(_) => return Some(Ok(call)),
                }
            }
            if self.ended {
                return None;
            }
            let next = tokio::time::timeout_at(self.deadline, self.stream.next()).await;
            match next {
                Err(_) => {
                    self.ended = true;
                    return Some(Err(LlmError::Timeout {
                        url: self.url.clone(),
                        seconds: self.total_s,
                        what: "streaming the answer",
                    }));
                }
                Ok(Some(Ok(chunk))) => {
                    let (events, _) = events_of(chunk, &mut self.usage, &mut self.calls);
                    self.queue.extend(events);
                }
                Ok(Some(Err(e))) => {
                    self.ended = true;
                    return Some(Err(self.error(e)));
                }
                Ok(None) => {
                    self.ended = true;
                    return Some(self.done());
                }
            }
        }
    }

    /// The end of the stream: its finish and usage (completion tokens counted from the deltas
    /// when the engine sent none).
    fn done(&self) -> Result<LlmEvent, LlmError> {
        let Some(finish) = self.finish else {
            return Err(LlmError::Malformed {
                url: self.url.clone(),
                reason: "the stream ended without a finish reason".into(),
            });
        };
        let mut usage = self.usage.clone();
        if usage.completion_tokens == 0 {
            usage.completion_tokens = self.completion;
        }
        if let Some(first) = self.first {
            let secs = first.elapsed().as_secs_f64();
            if secs > 0.0 && usage.completion_tokens > 1 {
                usage.tokens_per_second = (usage.completion_tokens - 1) as f64 / secs;
            }
        }
        Ok(LlmEvent::Done { finish, usage })
    }

    /// An error while streaming, typed.
    fn error(&self, e: OpenAIError) -> LlmError {
        match e {
            OpenAIError::ApiError(r) => LlmError::Upstream {
                url: self.url.clone(),
                status: r.status_code.as_u16(),
                message: r.api_error.message,
            },
            OpenAIError::Reqwest(e) if e.is_timeout() => LlmError::Timeout {
                url: self.url.clone(),
                seconds: self.connect_s,
                what: "reading",
            },
            other => LlmError::Malformed {
                url: self.url.clone(),
                reason: other.to_string(),
            },
        }
    }
}
