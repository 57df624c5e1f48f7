//! The MCP items of the Realtime API: a server's tool list, a call, a request for the client's
//! approval and the client's answer.

use serde_json::{json, Value};

use super::server::Item;

impl Item {
    /// `mcp_list_tools`: the tools an attached server offers (empty while it is being listed).
    pub fn mcp_list_tools(id: &str, server_label: &str, tools: Value, status: &str) -> Self {
        Item {
            server_label: Some(server_label.into()),
            tools: Some(tools),
            ..Item::bare(id, "mcp_list_tools", status)
        }
    }

    /// `mcp_call`: a call of an attached server's tool, with its output or error once done.
    pub fn mcp_call(id: &str, call: &McpCallView, status: &str) -> Self {
        Item {
            server_label: Some(call.server_label.clone()),
            name: Some(call.name.clone()),
            arguments: Some(call.arguments.clone()),
            output: call.output.clone(),
            error: call.error.clone(),
            approval_request_id: call.approval_request_id.clone(),
            ..Item::bare(id, "mcp_call", status)
        }
    }

    /// `mcp_approval_request`: the model wants to call a tool the client must approve first.
    pub fn mcp_approval_request(id: &str, server_label: &str, name: &str, arguments: &str) -> Self {
        Item {
            server_label: Some(server_label.into()),
            name: Some(name.into()),
            arguments: Some(arguments.into()),
            ..Item::bare(id, "mcp_approval_request", "completed")
        }
    }

    /// `mcp_approval_response`: the client's decision.
    pub fn mcp_approval_response(
        id: &str,
        approval_request_id: &str,
        approve: bool,
        reason: Option<String>,
    ) -> Self {
        Item {
            approval_request_id: Some(approval_request_id.into()),
            approve: Some(approve),
            reason,
            ..Item::bare(id, "mcp_approval_response", "completed")
        }
    }
}

/// What an `mcp_call` item says.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct McpCallView {
    pub server_label: String,
    pub name: String,
    pub arguments: String,
    pub output: Option<String>,
    pub error: Option<Value>,
    pub approval_request_id: Option<String>,
}

/// An MCP call's `error`: the tool's own failure, or the server's.
pub fn mcp_error(kind: &str, message: &str) -> Value {
    match kind {
        "tool_execution_error" => json!({"type": kind, "message": message}),
        _ => json!({"type": kind, "code": -32000, "message": message}),
    }
}
