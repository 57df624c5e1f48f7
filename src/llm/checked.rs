//! A generation whose tool calls are checked before anyone sees them.
//!
//! Text passes through as it comes. Calls are held until the generation ends, then each is
//! validated against its tool's schema. If one fails, the model gets one retry: the invalid
//! call and the validation error are added to the conversation, and it must call that function
//! again. A retry that fails too ends the stream with [`ToolError::InvalidArguments`]
//! (`invalid_tool_arguments`): an invalid call never reaches a client or a tool.

use std::sync::Arc;

use futures::StreamExt;
use tokio::sync::mpsc;

use super::{FinishReason, GenerateRequest, Llm, LlmError, LlmEvent, LlmStream, Usage};
use crate::prompt::ChatMessage;
use crate::tools::{ToolCall, ToolChoice, ToolError};

/// Told of each call that failed validation: the call, the error, and whether the model gets
/// a retry (the audit trail records these).
pub type OnInvalid = Arc<dyn Fn(&ToolCall, &ToolError, bool) + Send + Sync>;

/// What the checks know beyond the request.
#[derive(Clone, Default)]
pub struct Checks {
    /// Tools that exist on the server but are not offered to this caller: calls to them pass
    /// unvalidated, for the caller to refuse (and tell the model so).
    pub refused: Vec<String>,
    pub on_invalid: Option<OnInvalid>,
}

/// Starts `request` on `llm`; the stream yields only calls that passed validation.
pub async fn generate(llm: Arc<dyn Llm>, request: GenerateRequest) -> Result<LlmStream, LlmError> {
    generate_with(llm, request, Checks::default()).await
}

/// [`generate`] with what the caller knows of refused tools, and a hook for invalid calls.
pub async fn generate_with(
    llm: Arc<dyn Llm>,
    request: GenerateRequest,
    checks: Checks,
) -> Result<LlmStream, LlmError> {
    let first = llm.generate(request.clone()).await?;
    if !request.offers_tools() && request.tools.is_empty() {
        return Ok(first);
    }
    let (tx, mut rx) = mpsc::channel(64);
    // Dropping the returned stream closes the channel, which ends the task and with it the
    // model's generation.
    tokio::spawn(async move {
        tokio::select! {
            () = tx.closed() => {}
            () = run(llm, request, checks, first, &tx) => {}
        }
    });
    Ok(Box::pin(futures::stream::poll_fn(move |cx| {
        rx.poll_recv(cx)
    })))
}

type Tx = mpsc::Sender<Result<LlmEvent, LlmError>>;

/// What one generation produced.
struct Pass {
    calls: Vec<ToolCall>,
    finish: FinishReason,
    usage: Usage,
}

/// Forwards text from `stream`, collecting its calls. `None`: the stream failed (the error was
/// sent) or the receiver is gone.
async fn pass(mut stream: LlmStream, tx: &Tx) -> Option<Pass> {
    let mut calls = Vec::new();
    while let Some(ev) = stream.next().await {
        match ev {
            Ok(LlmEvent::Delta(d)) => {
                if tx.send(Ok(LlmEvent::Delta(d))).await.is_err() {
                    return None;
                }
            }
            Ok(LlmEvent::ToolCall(c)) => calls.push(c),
            Ok(LlmEvent::Done { finish, usage }) => {
                return Some(Pass {
                    calls,
                    finish,
                    usage,
                })
            }
            Err(e) => {
                let _ = tx.send(Err(e)).await;
                return None;
            }
        }
    }
    let _ = tx
        .send(Err(LlmError::Compute(
            "the generation ended without finishing".into(),
        )))
        .await;
    None
}

/// The first call of `calls` that fails its checks, with the error.
fn first_invalid(
    request: &GenerateRequest,
    checks: &Checks,
    calls: &[ToolCall],
) -> Option<(ToolCall, ToolError)> {
    for c in calls.iter().filter(|c| !checks.refused.contains(&c.name)) {
        let checked = match &request.tool_choice {
            ToolChoice::Function(name) if *name != c.name => Err(ToolError::UnknownTool {
                name: c.name.clone(),
            }),
            _ => request.tools.validate(&c.name, &c.arguments).map(|_| ()),
        };
        if let Err(e) = checked {
            return Some((c.clone(), e));
        }
    }
    None
}

/// The metric label of a call's tool: its name when it is offered, else `unknown` (the model
/// names what it likes).
fn label(request: &GenerateRequest, name: &str) -> String {
    if request.tools.get(name).is_some() {
        name.to_string()
    } else {
        "unknown".into()
    }
}

fn add(total: &mut Usage, more: &Usage) {
    total.prompt_tokens += more.prompt_tokens;
    total.completion_tokens += more.completion_tokens;
    total.cached_tokens += more.cached_tokens;
}

async fn run(
    llm: Arc<dyn Llm>,
    request: GenerateRequest,
    checks: Checks,
    first: LlmStream,
    tx: &Tx,
) {
    let Some(mut p) = pass(first, tx).await else {
        return;
    };
    if request.tool_choice == ToolChoice::None && !p.calls.is_empty() {
        tracing::warn!(
            calls = p.calls.len(),
            "the model called tools although tool_choice is none; the calls are dropped"
        );
        p.calls.clear();
    }
    let mut usage = p.usage.clone();
    if let Some((bad, err)) = first_invalid(&request, &checks, &p.calls) {
        tracing::warn!(tool = %bad.name, error = %err, "invalid tool call; the model gets one retry");
        if let Some(hook) = &checks.on_invalid {
            hook(&bad, &err, true);
        }
        crate::metrics::global()
            .tool_calls
            .inc_pair(&label(&request, &bad.name), "invalid_retried");
        let mut retry = request.clone();
        let name = if request.tools.get(&bad.name).is_some() {
            bad.name.clone()
        } else {
            match &request.tool_choice {
                ToolChoice::Function(n) => n.clone(),
                _ => String::new(),
            }
        };
        retry
            .messages
            .push(ChatMessage::calls("", vec![bad.clone()]));
        retry.messages.push(ChatMessage::tool_result(
            bad.id.clone(),
            format!(
                "Error: {err}. Call the function again with arguments that satisfy its JSON Schema."
            ),
        ));
        retry.tool_choice = if name.is_empty() {
            ToolChoice::Required
        } else {
            ToolChoice::Function(name)
        };
        let stream = match llm.generate(retry.clone()).await {
            Ok(s) => s,
            Err(e) => {
                let _ = tx.send(Err(e)).await;
                return;
            }
        };
        let Some(again) = pass(stream, tx).await else {
            return;
        };
        add(&mut usage, &again.usage);
        if let Some((bad, err)) = first_invalid(&retry, &checks, &again.calls) {
            tracing::warn!(tool = %bad.name, error = %err, "invalid tool call after the retry");
            if let Some(hook) = &checks.on_invalid {
                hook(&bad, &err, false);
            }
            crate::metrics::global()
                .tool_calls
                .inc_pair(&label(&retry, &bad.name), "invalid_arguments");
            let err = match err {
                ToolError::UnknownTool { name } => ToolError::InvalidArguments {
                    name,
                    reason: "not an offered tool".into(),
                },
                e => e,
            };
            let _ = tx.send(Err(LlmError::Tool(err))).await;
            return;
        }
        p = again;
    }
    for c in p.calls {
        if tx.send(Ok(LlmEvent::ToolCall(c))).await.is_err() {
            return;
        }
    }
    let _ = tx
        .send(Ok(LlmEvent::Done {
            finish: p.finish,
            usage,
        }))
        .await;
}
