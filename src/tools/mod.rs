//! Function calling: the tools a request offers the model, the choice it must make, and the
//! checks every call passes before it leaves the server.
//!
//! - [`schema`]: tool definitions as clients send them (OpenAI's `function` tools), checked
//!   once (name, JSON Schema) and compiled into validators; arguments are validated against
//!   them; `"x-sensitive": true` parts are redacted for logs.
//! - [`server`]: tools the server runs itself (built-ins and HTTP tools from the configuration).
//! - [`permissions`]: who calls ([`Caller`]) and which server tools each role may call.
//! - [`mcp`]: MCP servers (Streamable HTTP or stdio) whose tools become server tools.
//! - [`route`]: picks the tool a request asks for, and the values it gives, for a small model.
//! - [`audit`]: the audit trail of every call.
//!
//! The model's side of calling (the `<tool_call>` prompt convention and the checked generation
//! that retries invalid calls) lives in [`crate::llm`]: calls go one way, realtime -> llm -> these
//! types.

pub mod audit;
pub mod mcp;
pub mod permissions;
pub mod route;
pub mod schema;
pub mod server;

use serde::{Deserialize, Serialize};

pub use audit::{AuditLog, AuditQuery, AuditRow};
pub use schema::{FunctionTool, ToolSet};
pub use server::{Caller, ServerTools, ToolsConfig};

/// Errors of tool definitions and calls; [`ToolError::code`] is the code clients see.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ToolError {
    /// A tool definition is not usable (bad name, bad schema, duplicate, too large).
    #[error("{param}: {message}")]
    InvalidTool { param: String, message: String },
    /// `tool_choice` is malformed or names a tool that is not offered.
    #[error("{param}: {message}")]
    InvalidChoice { param: String, message: String },
    /// The model's call did not satisfy the tool's schema, even after a retry.
    #[error("the model's arguments for `{name}` do not match its schema: {reason}")]
    InvalidArguments { name: String, reason: String },
    /// The model called a tool that was not offered.
    #[error("the model called `{name}`, which is not an offered tool")]
    UnknownTool { name: String },
}

impl ToolError {
    pub fn code(&self) -> &'static str {
        match self {
            ToolError::InvalidTool { .. } => "invalid_tool",
            ToolError::InvalidChoice { .. } => "invalid_tool_choice",
            ToolError::InvalidArguments { .. } | ToolError::UnknownTool { .. } => {
                "invalid_tool_arguments"
            }
        }
    }

    /// The request parameter at fault, for definition errors.
    pub fn param(&self) -> Option<&str> {
        match self {
            ToolError::InvalidTool { param, .. } | ToolError::InvalidChoice { param, .. } => {
                Some(param)
            }
            _ => None,
        }
    }
}

/// Which tool the model must or may call.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum ToolChoice {
    /// The model decides between answering and calling a tool.
    #[default]
    Auto,
    /// No tool calls.
    None,
    /// One or more tool calls, no text.
    Required,
    /// This function, no text.
    Function(String),
}

impl ToolChoice {
    /// Reads OpenAI's forms: `"auto"`, `"none"`, `"required"`, `{"type": "function", "name":
    /// …}` (Realtime and Responses) or `{"type": "function", "function": {"name": …}}` (Chat
    /// Completions).
    pub fn parse(v: &serde_json::Value, param: &str) -> Result<Self, ToolError> {
        let bad = |message: &str| ToolError::InvalidChoice {
            param: param.to_string(),
            message: message.to_string(),
        };
        match v {
            serde_json::Value::String(s) => match s.as_str() {
                "auto" => Ok(ToolChoice::Auto),
                "none" => Ok(ToolChoice::None),
                "required" => Ok(ToolChoice::Required),
                _ => Err(bad(
                    "must be \"auto\", \"none\", \"required\" or {\"type\": \"function\", \"name\": …}",
                )),
            },
            serde_json::Value::Object(o) => {
                // An attached MCP server's tool: {"type": "mcp", "server_label", "name"}.
                if o.get("type").and_then(|t| t.as_str()) == Some("mcp") {
                    let field = |k: &str| o.get(k).and_then(|v| v.as_str()).filter(|s| !s.is_empty());
                    return match (field("server_label"), field("name")) {
                        (Some(label), Some(name)) => {
                            Ok(ToolChoice::Function(mcp::function_name(label, name)))
                        }
                        _ => Err(bad("an MCP tool choice needs `server_label` and `name`")),
                    };
                }
                if o.get("type").and_then(|t| t.as_str()) != Some("function") {
                    return Err(bad(
                        "an object tool choice must have \"type\": \"function\" or \"mcp\"",
                    ));
                }
                let name = o
                    .get("name")
                    .or_else(|| o.get("function").and_then(|f| f.get("name")))
                    .and_then(|n| n.as_str())
                    .ok_or_else(|| bad("a function tool choice needs the function's name"))?;
                Ok(ToolChoice::Function(name.to_string()))
            }
            _ => Err(bad("must be a string or an object")),
        }
    }

    /// Checks that a named function is among `tools`.
    pub fn check(&self, tools: &ToolSet, param: &str) -> Result<(), ToolError> {
        match self {
            ToolChoice::Function(name) if tools.get(name).is_none() => {
                Err(ToolError::InvalidChoice {
                    param: param.to_string(),
                    message: format!("`{name}` is not one of the session's tools"),
                })
            }
            ToolChoice::Required if tools.is_empty() => Err(ToolError::InvalidChoice {
                param: param.to_string(),
                message: "\"required\" needs at least one tool".into(),
            }),
            _ => Ok(()),
        }
    }

    /// The Realtime API's form.
    pub fn to_view(&self) -> serde_json::Value {
        match self {
            ToolChoice::Auto => "auto".into(),
            ToolChoice::None => "none".into(),
            ToolChoice::Required => "required".into(),
            ToolChoice::Function(name) => serde_json::json!({"type": "function", "name": name}),
        }
    }
}

/// A call the model made: the function, its arguments (a JSON text) and the id its result is
/// answered with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolCall {
    /// `call_id` in the Realtime API, `id` in Chat Completions.
    pub id: String,
    pub name: String,
    pub arguments: String,
}

/// A fresh call id.
pub fn new_call_id() -> String {
    crate::ids::new_id("call")
}
