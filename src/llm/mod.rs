//! Language models: the [`Llm`] trait and its two implementations, the embedded SmolLM2 run with
//! candle ([`local::LocalLlm`]) and any OpenAI-compatible chat-completions endpoint
//! ([`remote::RemoteLlm`]).
//!
//! A generation is a stream of [`LlmEvent`]s: text deltas, then one `Done` with the finish reason
//! and usage. Dropping the stream cancels the generation: the embedded model's loop stops at the
//! next token, the remote HTTP stream is closed.
//!
//! Tool calling, the model's side: [`tool_prompt`] (how tools and calls are written into a prompt
//! for a model whose chat template does not know them, the `<tool_call>` convention) and
//! [`checked`] (a generation wrapped so that only schema-valid calls come out: one retry with the
//! validation error fed back, then a typed `invalid_tool_arguments` failure).

pub mod checked;
pub mod config;
pub mod constrain;
pub mod gguf_tokenizer;
pub mod llama;
pub mod local;
pub mod open;
pub mod remote;
pub mod stop;
pub mod template;
pub mod tool_prompt;

use std::pin::Pin;

use futures::future::BoxFuture;
use futures::Stream;
use serde::Serialize;

use crate::prompt::ChatMessage;
use crate::tools::{ToolCall, ToolChoice, ToolError, ToolSet};
use crate::workers::PoolError;

pub use config::{LlmArgs, LlmConfig};
pub use local::{LocalLlm, LocalLlmConfig};
pub use remote::{RemoteLlm, RemoteLlmConfig};

/// Errors of the LLM stage; [`LlmError::code`] is the code clients see.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LlmError {
    #[error("could not load the language model from {path}: {reason}")]
    Load { path: String, reason: String },
    #[error(transparent)]
    Pool(#[from] PoolError),
    #[error("the prompt is {prompt} tokens; with {max_tokens} to generate it exceeds the model's context of {context}")]
    ContextOverflow {
        prompt: usize,
        max_tokens: usize,
        context: usize,
    },
    #[error("invalid request: {0}")]
    Invalid(String),
    #[error("generation failed: {0}")]
    Compute(String),
    #[error("the LLM endpoint {url} is unreachable: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("the LLM endpoint {url} did not answer within {seconds} s ({what})")]
    Timeout {
        url: String,
        seconds: f64,
        what: &'static str,
    },
    #[error("the LLM endpoint {url} answered {status}: {message}")]
    Upstream {
        url: String,
        status: u16,
        message: String,
    },
    #[error("the LLM endpoint {url} sent a malformed stream: {reason}")]
    Malformed { url: String, reason: String },
    /// A tool call that failed its checks (after the retry).
    #[error(transparent)]
    Tool(#[from] ToolError),
}

impl LlmError {
    /// What a client is told: the error without upstream URLs, upstream bodies or internal
    /// detail (those go to the server log).
    pub fn public_message(&self) -> String {
        match self {
            LlmError::ContextOverflow { .. } | LlmError::Invalid(_) | LlmError::Tool(_) => {
                self.to_string()
            }
            LlmError::Pool(PoolError::Busy { .. }) => {
                "the language model is busy; try again shortly".into()
            }
            LlmError::Unreachable { .. } => "the language model service is unreachable".into(),
            LlmError::Timeout { .. } => "the language model service did not answer in time".into(),
            LlmError::Upstream { status, .. } => {
                format!("the language model service answered with an error (HTTP {status})")
            }
            LlmError::Malformed { .. } => {
                "the language model service sent a malformed answer".into()
            }
            LlmError::Load { .. } | LlmError::Compute(_) | LlmError::Pool(_) => {
                "the language model failed on this request (an internal error; the server logged it)"
                    .into()
            }
        }
    }

    /// The machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            LlmError::Load { .. } | LlmError::Compute(_) => "llm_failed",
            LlmError::Pool(PoolError::Busy { .. }) => "server_busy",
            LlmError::Pool(_) => "llm_failed",
            LlmError::ContextOverflow { .. } => "context_length_exceeded",
            LlmError::Invalid(_) => "invalid_request",
            LlmError::Unreachable { .. } => "llm_unreachable",
            LlmError::Timeout { .. } => "llm_timeout",
            LlmError::Upstream { .. } => "llm_upstream_error",
            LlmError::Malformed { .. } => "llm_bad_response",
            LlmError::Tool(e) => e.code(),
        }
    }
}

/// What to generate.
#[derive(Debug, Clone)]
pub struct GenerateRequest {
    pub messages: Vec<ChatMessage>,
    /// Most tokens to generate.
    pub max_tokens: usize,
    /// 0 = greedy.
    pub temperature: f32,
    pub top_p: Option<f32>,
    /// Seed for sampling (temperature > 0); same seed, same prompt → same text.
    pub seed: Option<u64>,
    /// Generation stops before any of these strings.
    pub stop: Vec<String>,
    /// Penalty (> 1) on tokens generated in the last 64, against the loops small models fall
    /// into; 1 = off.
    pub repeat_penalty: f32,
    /// Message counts after which the prompt is a prefix worth caching (e.g. `[1]`: the
    /// instructions; the number of messages before the user's: instructions, passages and
    /// history). The embedded model keeps the attention state at those points for the next
    /// request that starts the same way.
    pub cache_points: Vec<usize>,
    /// Functions the model may call (none: it only writes text).
    pub tools: ToolSet,
    /// Whether it may, must, or must not call them.
    pub tool_choice: ToolChoice,
    /// Whether it may make several calls at once (`None`: the endpoint's default, which for
    /// OpenAI's is yes). The embedded model makes one.
    pub parallel_tool_calls: Option<bool>,
}

impl GenerateRequest {
    pub fn new(messages: Vec<ChatMessage>) -> Self {
        GenerateRequest {
            messages,
            max_tokens: 256,
            temperature: 0.0,
            top_p: None,
            seed: None,
            stop: Vec::new(),
            repeat_penalty: 1.0,
            cache_points: Vec::new(),
            tools: ToolSet::default(),
            tool_choice: ToolChoice::Auto,
            parallel_tool_calls: None,
        }
    }
}

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// End of message or a stop string.
    Stop,
    /// `max_tokens` reached.
    Length,
    /// The model called one or more tools.
    ToolCalls,
}

/// Token counts and timings of one generation.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    /// Prompt tokens whose attention state came from the prefix cache.
    pub cached_tokens: usize,
    /// Waiting for a worker, in ms.
    pub queue_ms: f64,
    /// Processing the (uncached part of the) prompt, in ms.
    pub prefill_ms: f64,
    /// From the request to the first token, in ms.
    pub first_token_ms: f64,
    /// Generated tokens per second after the first.
    pub tokens_per_second: f64,
    /// Tokens drafted ahead of time ([`Llm::speculate`]) and sent at once.
    pub drafted_tokens: usize,
}

/// One item of a generation stream.
#[derive(Debug, Clone)]
pub enum LlmEvent {
    Delta(String),
    /// A whole function call (sent before `Done`).
    ToolCall(ToolCall),
    Done {
        finish: FinishReason,
        usage: Usage,
    },
}

/// A generation in progress; drop it to cancel.
pub type LlmStream = Pin<Box<dyn Stream<Item = Result<LlmEvent, LlmError>> + Send>>;

/// A chat language model: local or remote.
pub trait Llm: Send + Sync {
    /// Starts generating. Errors found before the first token (unreachable endpoint, prompt too
    /// long) come back here or as the stream's first item.
    fn generate(&self, request: GenerateRequest) -> BoxFuture<'_, Result<LlmStream, LlmError>>;
    /// Computes and caches the attention state for `messages` as a prompt prefix, so a later
    /// [`Llm::generate`] starting with them only processes the rest (a hint; remote backends
    /// ignore it).
    fn prefill(&self, messages: Vec<ChatMessage>) -> BoxFuture<'_, Result<(), LlmError>> {
        let _ = messages;
        Box::pin(async { Ok(()) })
    }
    /// Runs `request` ahead of time and keeps its first `tokens` tokens, so that a later
    /// [`Llm::generate`] of exactly the same request (same messages and settings) sends them at
    /// once and goes on from there. A hint: the text is the same either way, and a draft no
    /// request claims is dropped (after a few newer ones). The realtime session drafts the answer
    /// while the person pauses. Remote backends do nothing.
    fn speculate(
        &self,
        request: GenerateRequest,
        tokens: usize,
    ) -> BoxFuture<'_, Result<(), LlmError>> {
        let _ = (request, tokens);
        Box::pin(async { Ok(()) })
    }
    /// Whether the model needs the tool router ([`crate::tools::route`]) to call tools: a small
    /// embedded model answers in words when left to choose; capable remote models do not.
    fn needs_tool_routing(&self) -> bool {
        false
    }
    /// The model's name (for `/v1/models` and logs).
    fn model_name(&self) -> &str;
    /// Tokens in `text` (an estimate for remote models).
    fn count_tokens(&self, text: &str) -> usize {
        crate::rag::embed::estimate_tokens(text)
    }
    /// Longest prompt + answer, in tokens.
    fn context_length(&self) -> usize;
    /// Jobs waiting for the model (answers, paused answers and early prefills), for `/metrics`;
    /// `None` for a backend without a local queue.
    fn queue_depth(&self) -> Option<usize> {
        None
    }
}

impl GenerateRequest {
    /// Whether the model is offered tools it may call.
    pub fn offers_tools(&self) -> bool {
        !self.tools.is_empty() && self.tool_choice != ToolChoice::None
    }
}

/// A whole generation: its text, calls, why it ended and its usage.
#[derive(Debug, Clone)]
pub struct Completion {
    pub text: String,
    pub calls: Vec<ToolCall>,
    pub finish: FinishReason,
    pub usage: Usage,
}

/// Collects a whole generation's text, why it ended and its usage.
pub async fn complete(
    llm: &dyn Llm,
    request: GenerateRequest,
) -> Result<(String, FinishReason, Usage), LlmError> {
    let c = complete_all(llm, request).await?;
    Ok((c.text, c.finish, c.usage))
}

/// Collects a whole generation, calls included.
pub async fn complete_all(llm: &dyn Llm, request: GenerateRequest) -> Result<Completion, LlmError> {
    use futures::StreamExt;
    let mut stream = llm.generate(request).await?;
    let mut text = String::new();
    let mut calls = Vec::new();
    while let Some(ev) = stream.next().await {
        match ev? {
            LlmEvent::Delta(d) => text.push_str(&d),
            LlmEvent::ToolCall(c) => calls.push(c),
            LlmEvent::Done { finish, usage } => {
                return Ok(Completion {
                    text,
                    calls,
                    finish,
                    usage,
                })
            }
        }
    }
    Err(LlmError::Compute(
        "the generation ended without finishing".into(),
    ))
}
