//! Server tools in `/v1/chat/completions`: the caller's server tools (built-in, HTTP, MCP) are
//! offered beside the request's own, and when the model calls one, voxd runs it, gives the
//! result to the model and asks again (at most [`MAX_ROUNDS`] rounds), so the client sees only
//! the answer, or calls of its own tools. Every server call is audited and counted as in a
//! realtime session.

use std::sync::Arc;

use futures::StreamExt;

use super::error::ApiError;
use crate::llm::{GenerateRequest, LlmError, LlmEvent, LlmStream};
use crate::prompt::ChatMessage;
use crate::tools::{Caller, ServerTools, ToolCall, ToolChoice};

/// Rounds of server tools before the model must answer.
pub const MAX_ROUNDS: usize = 3;

/// Who asks and what the server runs for them.
pub struct ChatTools {
    pub server: Arc<ServerTools>,
    pub caller: Caller,
    pub audit: Option<crate::tools::AuditLog>,
    /// The completion's id (the audit trail's response).
    pub completion: String,
    /// The server tools offered in this request (not shadowed by the request's own).
    names: Vec<String>,
}

impl ChatTools {
    /// Adds the server tools `caller` may use to `req` (a tool the request defines itself keeps
    /// its definition, and is the client's).
    pub fn offer(
        req: &mut GenerateRequest,
        server: Arc<ServerTools>,
        caller: Caller,
        audit: Option<crate::tools::AuditLog>,
        completion: &str,
    ) -> Option<ChatTools> {
        let offered = server.offered_to(&caller);
        let names: Vec<String> = offered
            .iter()
            .filter(|t| req.tools.get(&t.name).is_none())
            .map(|t| t.name.clone())
            .collect();
        if names.is_empty() || req.tool_choice == ToolChoice::None {
            return None;
        }
        req.tools = req.tools.merged(&offered);
        Some(ChatTools {
            server,
            caller,
            audit,
            completion: completion.to_string(),
            names,
        })
    }

    /// Generates until a round is not all server calls: returns its first event and the rest
    /// of its stream, for the client. Server calls are run between rounds.
    pub async fn run(
        &self,
        llm: Arc<dyn crate::llm::Llm>,
        mut req: GenerateRequest,
    ) -> Result<(LlmEvent, LlmStream), ApiError> {
        for round in 0..=MAX_ROUNDS {
            if round == MAX_ROUNDS {
                req.tool_choice = ToolChoice::None;
            }
            let mut events = crate::llm::checked::generate(llm.clone(), req.clone()).await?;
            let mut calls: Vec<ToolCall> = Vec::new();
            loop {
                match events.next().await {
                    Some(Ok(LlmEvent::ToolCall(c))) if self.names.contains(&c.name) => {
                        calls.push(c)
                    }
                    // Once a server call is made, the round's other output is dropped: the
                    // next round answers with its result.
                    Some(Ok(LlmEvent::Done { .. })) if !calls.is_empty() => break,
                    Some(Ok(_)) if !calls.is_empty() => {}
                    Some(Ok(ev)) => return Ok((ev, events)),
                    Some(Err(e)) => return Err(e.into()),
                    None => {
                        return Err(LlmError::Compute(
                            "the generation ended without finishing".into(),
                        )
                        .into())
                    }
                }
            }
            for call in calls {
                let outcome = self.server.call(&call, &self.caller, None).await;
                self.record(&call, &outcome);
                req.messages
                    .push(ChatMessage::calls("", vec![call.clone()]));
                req.messages
                    .push(ChatMessage::tool_result(call.id.clone(), outcome.output));
            }
        }
        Err(LlmError::Compute("the model kept calling tools".into()).into())
    }

    /// Logs, counts and audits one server call.
    fn record(&self, call: &ToolCall, outcome: &crate::tools::server::Outcome) {
        let arguments = self
            .server
            .definitions()
            .redact(&call.name, &call.arguments);
        tracing::info!(tool = %call.name, %arguments, status = outcome.status, latency_ms = outcome.latency_ms, "server tool call (chat)");
        let m = crate::metrics::global();
        m.tool_calls.inc_pair(&call.name, outcome.status);
        m.tool_seconds.observe_ms(outcome.latency_ms);
        let Some(log) = self.audit.clone() else {
            return;
        };
        let row = crate::tools::AuditRow {
            session: "chat".into(),
            key_id: self.caller.key_id.clone(),
            response: self.completion.clone(),
            tool: call.name.clone(),
            kind: "server".into(),
            call_id: call.id.clone(),
            arguments,
            validation: "valid".into(),
            status: outcome.status.into(),
            latency_ms: outcome.latency_ms,
            error: (outcome.status != "ok").then(|| outcome.output.clone()),
            ..Default::default()
        };
        tokio::spawn(async move { log.record(row).await });
    }
}
