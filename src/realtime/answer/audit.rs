//! The audit trail of one response's tool calls: who called what, with which (redacted)
//! arguments, how it was checked and how it ended.

use std::sync::Arc;

use crate::tools::{ToolCall, ToolSet};

/// Writes a response's tool calls to the audit trail.
#[derive(Clone)]
pub(super) struct Auditor {
    pub log: Option<crate::tools::AuditLog>,
    pub session: String,
    pub key_id: String,
    pub response: String,
    /// The tools offered (their schemas say what is sensitive).
    pub tools: ToolSet,
    pub server: Option<Arc<crate::tools::ServerTools>>,
}

impl Auditor {
    /// The auditor of response `response_id`'s calls.
    pub fn new(
        answering: &super::Answering,
        params: &super::ResponseParams,
        response_id: &str,
    ) -> Self {
        Auditor {
            log: answering.audit.clone(),
            session: params.session_id.clone(),
            key_id: answering.caller.key_id.clone(),
            response: response_id.to_string(),
            tools: params.tools.clone(),
            server: answering.server_tools.clone(),
        }
    }

    /// A call's arguments with their sensitive parts redacted.
    pub fn redact(&self, call: &ToolCall) -> String {
        match &self.server {
            Some(s) if self.tools.get(&call.name).is_none() => {
                s.definitions().redact(&call.name, &call.arguments)
            }
            _ => self.tools.redact(&call.name, &call.arguments),
        }
    }

    pub fn record(
        &self,
        call: &ToolCall,
        kind: &str,
        validation: &str,
        status: &str,
        latency_ms: f64,
        error: Option<String>,
    ) {
        let Some(log) = self.log.clone() else {
            return;
        };
        let row = crate::tools::AuditRow {
            session: self.session.clone(),
            key_id: self.key_id.clone(),
            response: self.response.clone(),
            tool: call.name.clone(),
            kind: kind.into(),
            call_id: call.id.clone(),
            arguments: self.redact(call),
            validation: validation.into(),
            status: status.into(),
            latency_ms,
            error,
            ..Default::default()
        };
        tokio::spawn(async move { log.record(row).await });
    }
}
