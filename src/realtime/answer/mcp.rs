//! MCP tools in a response: the tools of the servers the client attached, offered to the model
//! as functions (`{label}__{tool}`), and what happens when it calls one: a call the client must
//! approve first becomes an `mcp_approval_request` item (and the response ends there); any
//! other runs now as an `mcp_call` item, its result going back to the model for the answer.

use std::sync::Arc;
use std::time::Instant;

use serde_json::{Map, Value};

use super::audit::Auditor;
use super::items::Writer;
use super::{Cancel, Stop};
use crate::protocol::mcp_items::{mcp_error, McpCallView};
use crate::protocol::Item;
use crate::tools::mcp::{McpError, McpServer, McpTool};
use crate::tools::{FunctionTool, ToolCall};

/// A tool of an attached MCP server, as a response offers it.
#[derive(Debug, Clone)]
pub struct McpOffer {
    /// The function name the model calls it by.
    pub function: String,
    pub label: String,
    pub tool: McpTool,
    pub server: Arc<McpServer>,
    /// A call waits for the client's approval.
    pub approval: bool,
}

/// The MCP tools a response offers (cheap to clone).
#[derive(Debug, Clone, Default)]
pub struct McpOffers(pub Arc<Vec<McpOffer>>);

impl McpOffers {
    pub fn get(&self, function: &str) -> Option<&McpOffer> {
        self.0.iter().find(|o| o.function == function)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Only the tools of the servers `labels` names (`None`: all).
    pub fn only(&self, labels: Option<&[String]>) -> McpOffers {
        match labels {
            None => self.clone(),
            Some(l) => McpOffers(Arc::new(
                self.0
                    .iter()
                    .filter(|o| l.contains(&o.label))
                    .cloned()
                    .collect(),
            )),
        }
    }

    /// The tools as function definitions for the model.
    pub fn definitions(&self) -> Vec<FunctionTool> {
        self.0
            .iter()
            .map(|o| FunctionTool {
                name: o.function.clone(),
                description: o.tool.description.clone(),
                parameters: o.tool.input_schema.clone(),
                strict: true,
            })
            .collect()
    }
}

pub use crate::tools::mcp::function_name;

/// An approval request the client answered, for the response that follows the answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Approved {
    /// The `mcp_approval_request` item's id.
    pub request_id: String,
    pub function: String,
    pub arguments: String,
    pub approve: bool,
    pub reason: Option<String>,
}

impl Approved {
    /// The call the approval is about (its id: the request's).
    pub fn call(&self) -> ToolCall {
        ToolCall {
            id: self.request_id.clone(),
            name: self.function.clone(),
            arguments: self.arguments.clone(),
        }
    }
}

/// What the model is told about a call it made.
pub(super) struct Ran {
    pub call: ToolCall,
    pub output: String,
}

/// Sends an `mcp_approval_request` for `call` (the response then ends, waiting for the
/// client's `mcp_approval_response`) and returns its item with its output index.
pub(super) fn request_approval(
    writer: &Writer,
    audit: &Auditor,
    offer: &McpOffer,
    call: &ToolCall,
) -> (u32, Item) {
    let id = crate::ids::new_id("mcpr");
    let item = Item::mcp_approval_request(&id, &offer.label, &offer.tool.name, &call.arguments);
    let index = writer.send_whole_item(&item);
    tracing::info!(server = %offer.label, tool = %offer.tool.name, "MCP call waits for the client's approval");
    count(&offer.label, "approval_requested");
    audit.record(call, "mcp", "valid", "approval_requested", 0.0, None);
    (index, item)
}

/// Runs an approved (or approval-free) call as an `mcp_call` item: its events, the call
/// within the server's limits, the audit row and metrics. Returns the finished item with its
/// output index, and what the model is told.
pub(super) async fn run_call(
    writer: &Writer,
    audit: &Auditor,
    offer: &McpOffer,
    call: &ToolCall,
    approval_request_id: Option<String>,
) -> ((u32, Item), Ran) {
    let id = crate::ids::new_id("mcp");
    let mut view = McpCallView {
        server_label: offer.label.clone(),
        name: offer.tool.name.clone(),
        arguments: call.arguments.clone(),
        output: None,
        error: None,
        approval_request_id,
    };
    let index = writer.start_mcp_call(&id, &view);
    let arguments: Map<String, Value> = serde_json::from_str(&call.arguments).unwrap_or_default();
    let started = Instant::now();
    let result = offer.server.call(&offer.tool.name, arguments).await;
    let latency_ms = started.elapsed().as_secs_f64() * 1e3;
    let validation = if view.approval_request_id.is_some() {
        "approved"
    } else {
        "valid"
    };
    let told = match result {
        Ok(out) => {
            view.output = Some(out.text.clone());
            count(&offer.label, "ok");
            audit.record(call, "mcp", validation, "ok", latency_ms, None);
            out.text
        }
        Err(e) => {
            let status = status_of(&e);
            view.error = Some(mcp_error(
                if matches!(e, McpError::Tool(_)) {
                    "tool_execution_error"
                } else {
                    "protocol_error"
                },
                &e.to_string(),
            ));
            tracing::warn!(server = %offer.label, tool = %offer.tool.name, code = e.code(), error = %e, "MCP call failed");
            count(&offer.label, status);
            audit.record(
                call,
                "mcp",
                validation,
                status,
                latency_ms,
                Some(e.to_string()),
            );
            format!("The tool failed: {e}")
        }
    };
    crate::metrics::global().tool_seconds.observe_ms(latency_ms);
    let ok = view.error.is_none();
    let item = writer.finish_mcp_call(&id, index, &view, ok);
    (
        (index, item),
        Ran {
            call: call.clone(),
            output: told,
        },
    )
}

/// What the model is told of a call the client declined.
pub(super) fn declined(audit: &Auditor, offer: Option<&McpOffer>, a: &Approved) -> Ran {
    let call = a.call();
    let output = match (offer, a.approve) {
        (None, true) => {
            audit.record(
                &call,
                "mcp",
                "approved",
                "error",
                0.0,
                Some("the server was detached".into()),
            );
            "The tool's server is no longer attached; the call was not run.".to_string()
        }
        _ => {
            if let Some(o) = offer {
                count(&o.label, "declined");
            }
            audit.record(&call, "mcp", "declined", "declined", 0.0, a.reason.clone());
            match &a.reason {
                Some(r) => format!("The user did not approve this call ({r}). It was not run."),
                None => "The user did not approve this call. It was not run.".to_string(),
            }
        }
    };
    Ran { call, output }
}

/// Runs the calls the client approved since the user's words (and reports the declined ones),
/// each as the call and its result in `messages`.
pub(super) async fn run_approved(
    writer: &Writer,
    audit: &Auditor,
    params: &super::ResponseParams,
    items: &mut Vec<(u32, Item)>,
    messages: &mut Vec<crate::prompt::ChatMessage>,
    cancel: &mut Cancel,
) -> Result<(), Stop> {
    use crate::prompt::ChatMessage;
    for a in &params.approvals {
        let ran = match params.mcp.get(&a.function) {
            Some(offer) if a.approve => {
                let call = a.call();
                let running = run_call(writer, audit, offer, &call, Some(a.request_id.clone()));
                let (item, ran) = cancel.or(running).await?;
                items.push(item);
                ran
            }
            offer => declined(audit, offer, a),
        };
        messages.push(ChatMessage::calls("", vec![ran.call.clone()]));
        messages.push(ChatMessage::tool_result(ran.call.id.clone(), ran.output));
    }
    Ok(())
}

fn status_of(e: &McpError) -> &'static str {
    match e {
        McpError::Timeout { .. } => "timeout",
        McpError::Refused { .. } => "refused",
        _ => "error",
    }
}

/// Counts an MCP request by server and outcome (`voxd_mcp_requests_total`).
pub fn count(label: &str, outcome: &str) {
    crate::metrics::global()
        .mcp_requests
        .inc_pair(label, outcome);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn function_names_are_usable_and_bounded() {
        assert_eq!(function_name("docs", "search"), "docs__search");
        assert_eq!(function_name("docs", "get.page v2"), "docs__get_page_v2");
        assert_eq!(function_name("a", &"x".repeat(100)).len(), 64);
    }
}
