//! The MCP servers a client attached to its session (`{"type": "mcp"}` in `session.tools`):
//! each is checked against the server's policy and its tools listed when `session.update`
//! attaches it (an `mcp_list_tools` item, with `mcp_list_tools.in_progress`, then `.completed`
//! or `.failed`); responses offer the tools listed; and the client's `mcp_approval_response`
//! items answer the approval requests responses made.

use std::sync::Arc;
use std::time::Instant;

use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::answer::mcp::{count, function_name, Approved, McpOffer, McpOffers};
use super::answer::Answering;
use super::conversation::{ConvItem, Conversation};
use super::out::Out;
use crate::protocol::{ErrorBody, Item, ServerEvent};
use crate::tools::mcp::client::McpSpec;
use crate::tools::mcp::{McpError, McpServer, McpTool};
use crate::tools::ToolSet;

/// One attached server.
struct Attached {
    spec: McpSpec,
    /// Its `mcp_list_tools` item.
    item_id: String,
    /// Set once listed.
    server: Option<Arc<McpServer>>,
    tools: Vec<McpTool>,
}

/// A listing that ended.
pub(super) struct Listed {
    item_id: String,
    result: Result<(Arc<McpServer>, Vec<McpTool>), McpError>,
    latency_ms: f64,
}

/// The session's attached servers.
pub(super) struct AttachedMcp {
    servers: Vec<Attached>,
    listed_tx: mpsc::Sender<Listed>,
    /// Listings that ended, for [`AttachedMcp::listed`].
    pub(super) listed: mpsc::Receiver<Listed>,
}

impl AttachedMcp {
    pub(super) fn new() -> Self {
        let (listed_tx, listed) = mpsc::channel(crate::tools::mcp::client::MAX_CLIENT_SERVERS);
        AttachedMcp {
            servers: Vec::new(),
            listed_tx,
            listed,
        }
    }

    /// The servers of a `session.update`: those already attached with the same settings stay,
    /// the others are dropped, and new ones are checked and listed (in the background).
    pub(super) fn attach(
        &mut self,
        specs: Vec<McpSpec>,
        conversation: &mut Conversation,
        out: &Out,
        answering: Option<&Answering>,
    ) {
        self.servers.retain(|a| specs.contains(&a.spec));
        for spec in specs {
            if self.servers.iter().any(|a| a.spec == spec) {
                continue;
            }
            let item_id = crate::ids::new_id("mcpl");
            let item = Item::mcp_list_tools(&item_id, &spec.server_label, json!([]), "in_progress");
            let previous_item_id = conversation.push(ConvItem::mcp(item.clone()));
            out.send(ServerEvent::ItemAdded {
                previous_item_id,
                item,
            });
            out.send(ServerEvent::McpListToolsInProgress {
                item_id: item_id.clone(),
            });
            let policy = answering
                .and_then(|a| a.server_tools.as_ref())
                .and_then(|t| t.client_mcp.clone());
            let caller = answering.map(|a| a.caller.clone());
            let (tx, id, s) = (self.listed_tx.clone(), item_id.clone(), spec.clone());
            tokio::spawn(async move {
                let started = Instant::now();
                let result = match (policy, caller) {
                    (Some(policy), Some(caller)) => match policy.admit(&s, &caller).await {
                        Ok(server) => server.list_tools().await.map(|tools| (server, tools)),
                        Err(e) => Err(e),
                    },
                    _ => Err(McpError::Refused {
                        code: "mcp_not_allowed",
                        message: "this server does not let clients attach MCP servers \
                                  ([tools.client_mcp] is not configured)"
                            .into(),
                    }),
                };
                let latency_ms = started.elapsed().as_secs_f64() * 1e3;
                let _ = tx
                    .send(Listed {
                        item_id: id,
                        result,
                        latency_ms,
                    })
                    .await;
            });
            self.servers.push(Attached {
                spec,
                item_id,
                server: None,
                tools: Vec::new(),
            });
        }
    }

    /// A listing ended: the server's tools are offered from now on (or the failure is told),
    /// and its item is completed.
    pub(super) fn listed(
        &mut self,
        l: Listed,
        conversation: &mut Conversation,
        out: &Out,
        answering: Option<&Answering>,
        session_id: &str,
    ) {
        let Some(a) = self.servers.iter_mut().find(|a| a.item_id == l.item_id) else {
            return; // detached meanwhile
        };
        let label = a.spec.server_label.clone();
        let (status, error) = match l.result {
            Ok((server, tools)) => {
                a.tools = tools
                    .into_iter()
                    .filter(|t| a.spec.offers(t))
                    .filter(|t| {
                        let def = crate::tools::FunctionTool {
                            name: function_name(&label, &t.name),
                            description: String::new(),
                            parameters: t.input_schema.clone(),
                            strict: true,
                        };
                        ToolSet::new(vec![def], "mcp").is_ok()
                    })
                    .collect();
                a.server = Some(server);
                tracing::info!(server = %label, tools = a.tools.len(), ms = l.latency_ms, "client MCP server listed");
                ("ok", None)
            }
            Err(e) => {
                tracing::warn!(server = %label, code = e.code(), error = %e, "client MCP server not listed");
                out.send(ServerEvent::Error {
                    error: ErrorBody {
                        kind: "invalid_request_error".into(),
                        code: Some(e.code().into()),
                        message: format!("MCP server `{label}`: {e}"),
                        param: Some("session.tools".into()),
                        event_id: None,
                    },
                });
                let status = if matches!(e, McpError::Refused { .. }) {
                    "refused"
                } else {
                    "error"
                };
                (status, Some(e.to_string()))
            }
        };
        count(
            &label,
            if error.is_none() {
                "list_ok"
            } else {
                "list_failed"
            },
        );
        record_listing(
            answering,
            session_id,
            &label,
            status,
            l.latency_ms,
            error.clone(),
        );
        let tools: Vec<Value> = a
            .tools
            .iter()
            .map(|t| {
                json!({"name": t.name, "description": t.description,
                       "input_schema": t.input_schema,
                       "annotations": {"read_only": t.read_only}})
            })
            .collect();
        let item = Item::mcp_list_tools(&a.item_id, &label, Value::Array(tools), "completed");
        if let Some(c) = conversation.get_mut(&a.item_id) {
            c.mcp = Some(item.clone());
        }
        let previous_item_id = conversation.previous_of(&a.item_id);
        let item_id = a.item_id.clone();
        out.send(ServerEvent::ItemDone {
            previous_item_id,
            item,
        });
        out.send(if error.is_none() {
            ServerEvent::McpListToolsCompleted { item_id }
        } else {
            ServerEvent::McpListToolsFailed { item_id }
        });
    }

    /// The tools of the servers listed so far.
    pub(super) fn offers(&self) -> McpOffers {
        let mut offers: Vec<McpOffer> = Vec::new();
        for a in &self.servers {
            let Some(server) = &a.server else { continue };
            for t in &a.tools {
                let function = function_name(&a.spec.server_label, &t.name);
                if offers.iter().any(|o| o.function == function) {
                    continue;
                }
                offers.push(McpOffer {
                    function,
                    label: a.spec.server_label.clone(),
                    tool: t.clone(),
                    server: server.clone(),
                    approval: a.spec.needs_approval(t),
                });
            }
        }
        McpOffers(Arc::new(offers))
    }
}

/// Writes a listing to the audit trail (tool: the server's label, kind `mcp_list`).
fn record_listing(
    answering: Option<&Answering>,
    session_id: &str,
    label: &str,
    status: &str,
    latency_ms: f64,
    error: Option<String>,
) {
    let Some(a) = answering else { return };
    let Some(log) = a.audit.clone() else { return };
    let row = crate::tools::AuditRow {
        session: session_id.to_string(),
        key_id: a.caller.key_id.clone(),
        tool: label.to_string(),
        kind: "mcp_list".into(),
        arguments: "{}".into(),
        validation: "valid".into(),
        status: status.into(),
        latency_ms,
        error,
        ..Default::default()
    };
    tokio::spawn(async move { log.record(row).await });
}

/// Reads a client's `mcp_approval_response` item: `Ok(None)` when the item is of another type.
pub(super) fn approval_response(item: &Value) -> Result<Option<Item>, String> {
    if item.get("type").and_then(Value::as_str) != Some("mcp_approval_response") {
        return Ok(None);
    }
    let request = item
        .get("approval_request_id")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty() && s.len() <= 64)
        .ok_or("an mcp_approval_response needs `approval_request_id`")?;
    let approve = item
        .get("approve")
        .and_then(Value::as_bool)
        .ok_or("an mcp_approval_response needs `approve` (a boolean)")?;
    let reason = match item.get("reason") {
        None | Some(Value::Null) => None,
        Some(Value::String(r)) if r.len() <= 1000 => Some(r.clone()),
        Some(_) => return Err("`reason` must be a string of at most 1000 bytes".into()),
    };
    let id = match item.get("id").and_then(Value::as_str) {
        Some(id) if !id.is_empty() && id.len() <= 64 => id.to_string(),
        Some(_) => return Err("`id` must be 1-64 characters".into()),
        None => crate::ids::new_id("mcpa"),
    };
    Ok(Some(Item::mcp_approval_response(
        &id, request, approve, reason,
    )))
}

/// The approval requests in `items` the client has answered and no call has followed yet.
pub(super) fn answered_approvals(items: &[ConvItem]) -> Vec<Approved> {
    let mcp = |kind: &'static str| {
        items
            .iter()
            .filter_map(|i| i.mcp.as_ref())
            .filter(move |m| m.kind == kind)
    };
    let mut out = Vec::new();
    for request in mcp("mcp_approval_request") {
        let ran = mcp("mcp_call").any(|c| c.approval_request_id.as_ref() == Some(&request.id));
        let answer = mcp("mcp_approval_response")
            .find(|r| r.approval_request_id.as_ref() == Some(&request.id));
        if let (false, Some(answer)) = (ran, answer) {
            out.push(Approved {
                request_id: request.id.clone(),
                function: function_name(
                    request.server_label.as_deref().unwrap_or_default(),
                    request.name.as_deref().unwrap_or_default(),
                ),
                arguments: request.arguments.clone().unwrap_or_else(|| "{}".into()),
                approve: answer.approve == Some(true),
                reason: answer.reason.clone(),
            });
        }
    }
    out
}
