//! Who calls tools and what they may call: the caller (an API key's id and role), and the
//! roles' allowlists of server tools.

use std::collections::BTreeMap;

use serde::Serialize;

/// Who is calling: the API key's id (never the key) and its role.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Caller {
    pub key_id: String,
    pub role: String,
    /// May read the audit trail and use every tool.
    pub admin: bool,
}

impl Caller {
    /// A caller on a server without API keys: everything is open, as the rest of the API.
    pub fn anonymous() -> Self {
        Caller {
            key_id: "anonymous".into(),
            role: "default".into(),
            admin: true,
        }
    }
}

/// Which roles may call which tools.
#[derive(Debug, Clone, Default)]
pub struct Permissions {
    pub(crate) roles: BTreeMap<String, Vec<String>>,
}

impl Permissions {
    pub fn allows(&self, caller: &Caller, tool: &str) -> bool {
        if caller.admin || self.roles.is_empty() {
            return true;
        }
        self.roles
            .get(&caller.role)
            .is_some_and(|names| names.iter().any(|n| names_tool(n, tool)))
    }
}

/// Whether an allowlist entry names `tool` (`"*"`, the name, or `label__*` for every tool of
/// an MCP server).
fn names_tool(entry: &str, tool: &str) -> bool {
    entry == "*"
        || entry == tool
        || entry
            .strip_suffix('*')
            .is_some_and(|prefix| prefix.ends_with("__") && tool.starts_with(prefix))
}
