//! MCP servers a client attaches to a realtime session: `{"type": "mcp", "server_label",
//! "server_url", "allowed_tools", "require_approval", "headers", "authorization"}` in
//! `session.tools`, as in OpenAI's Realtime API.
//!
//! A client names a URL and voxd connects to it, so every attachment passes the operator's
//! [`ClientMcpPolicy`] (`[tools.client_mcp]`) first: the API key's role must be allowed to
//! attach servers at all, the host must be one the operator lists, and the address it resolves
//! to must be public unless the operator allows private ones (no reaching the server's own
//! network through it). The address is resolved once and the connection pinned to it, so a
//! name cannot resolve to a public address for the check and a private one for the call; and
//! redirects are never followed.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::{Endpoint, McpError, McpServer, McpTool};
use crate::tools::{Caller, ToolError};

/// Most MCP servers one session may attach.
pub const MAX_CLIENT_SERVERS: usize = 8;

/// The `[tools.client_mcp]` table: whether, and where, clients may attach MCP servers.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientMcpPolicy {
    /// Roles whose keys may attach servers (`"*"`: every role). Admin keys always may.
    #[serde(default)]
    pub roles: Vec<String>,
    /// Hosts a server URL may name: `host`, `host:port`, `*.example.com` (any subdomain), or
    /// `"*"` (any host; private addresses are still refused unless allowed).
    #[serde(default)]
    pub allowed_hosts: Vec<String>,
    /// Allow addresses that are not public (loopback, private, link-local, unique local).
    #[serde(default)]
    pub allow_private: bool,
    /// The longest the listing or a call may take.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// The largest result passed on to the model.
    #[serde(default = "default_max_result_bytes")]
    pub max_result_bytes: usize,
}

fn default_timeout_ms() -> u64 {
    10_000
}
fn default_max_result_bytes() -> usize {
    64 * 1024
}

/// Which of a server's tools a filter names: by name, by its read-only annotation, or both.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ToolFilter {
    pub tool_names: Option<Vec<String>>,
    pub read_only: Option<bool>,
}

impl ToolFilter {
    fn parse(v: &Value, param: &str) -> Result<Self, ToolError> {
        let bad = |m: &str| invalid(param, m);
        match v {
            Value::Array(_) => Ok(ToolFilter {
                tool_names: Some(names(v, param)?),
                read_only: None,
            }),
            Value::Object(o) => Ok(ToolFilter {
                tool_names: o
                    .get("tool_names")
                    .filter(|n| !n.is_null())
                    .map(|n| names(n, &format!("{param}.tool_names")))
                    .transpose()?,
                read_only: match o.get("read_only") {
                    None | Some(Value::Null) => None,
                    Some(Value::Bool(b)) => Some(*b),
                    Some(_) => return Err(bad("`read_only` must be a boolean")),
                },
            }),
            _ => Err(bad("must be a list of tool names or a filter object")),
        }
    }

    /// Whether `tool` is one the filter names (an empty filter names none).
    fn names(&self, tool: &McpTool) -> bool {
        if self.tool_names.is_none() && self.read_only.is_none() {
            return false;
        }
        self.tool_names
            .as_ref()
            .is_none_or(|n| n.iter().any(|n| n == &tool.name))
            && self.read_only.is_none_or(|r| r == tool.read_only)
    }

    fn to_view(&self) -> Value {
        let mut o = Map::new();
        if let Some(n) = &self.tool_names {
            o.insert("tool_names".into(), json!(n));
        }
        if let Some(r) = self.read_only {
            o.insert("read_only".into(), json!(r));
        }
        Value::Object(o)
    }
}

fn names(v: &Value, param: &str) -> Result<Vec<String>, ToolError> {
    let list = v
        .as_array()
        .filter(|l| l.len() <= 256)
        .ok_or_else(|| invalid(param, "must be a list of at most 256 tool names"))?;
    list.iter()
        .map(|n| {
            n.as_str()
                .filter(|s| !s.is_empty() && s.len() <= 128)
                .map(str::to_string)
                .ok_or_else(|| invalid(param, "tool names must be strings of 1-128 characters"))
        })
        .collect()
}

/// Which calls wait for the client's approval (`mcp_approval_request`).
#[derive(Debug, Clone, PartialEq)]
pub enum Approval {
    Always,
    Never,
    /// Tools the `always` filter names need approval, those the `never` filter names do not,
    /// and the rest do.
    Filter {
        always: ToolFilter,
        never: ToolFilter,
    },
}

/// One `{"type": "mcp"}` tool entry, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct McpSpec {
    pub server_label: String,
    pub server_url: String,
    pub server_description: Option<String>,
    /// Which tools to offer (`None`: all).
    pub allowed_tools: Option<ToolFilter>,
    pub require_approval: Approval,
    /// Headers for every request (`authorization` becomes a bearer token).
    pub headers: Vec<(String, String)>,
    pub authorization: Option<String>,
}

fn invalid(param: &str, message: &str) -> ToolError {
    ToolError::InvalidTool {
        param: param.to_string(),
        message: message.to_string(),
    }
}

impl McpSpec {
    /// Reads one entry of a `tools` list whose `type` is `mcp` (`param` names it in errors).
    pub fn parse(def: &Value, param: &str) -> Result<Self, ToolError> {
        let o = def
            .as_object()
            .ok_or_else(|| invalid(param, "must be an object"))?;
        let at = |k: &str| format!("{param}.{k}");
        let string = |k: &str| -> Result<Option<String>, ToolError> {
            match o.get(k) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) if s.len() <= 4096 => Ok(Some(s.clone())),
                Some(_) => Err(invalid(&at(k), "must be a string of at most 4096 bytes")),
            }
        };
        let label =
            string("server_label")?.ok_or_else(|| invalid(&at("server_label"), "is required"))?;
        if label.is_empty()
            || label.len() > 32
            || !label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return Err(invalid(
                &at("server_label"),
                "must be 1-32 letters, digits, `_` or `-`",
            ));
        }
        if o.get("connector_id").is_some_and(|v| !v.is_null())
            || o.get("tunnel_id").is_some_and(|v| !v.is_null())
        {
            return Err(invalid(
                param,
                "voxd reaches MCP servers by `server_url` only (no connectors or tunnels)",
            ));
        }
        let url = string("server_url")?.ok_or_else(|| invalid(&at("server_url"), "is required"))?;
        let parsed =
            reqwest::Url::parse(&url).map_err(|e| invalid(&at("server_url"), &e.to_string()))?;
        if !matches!(parsed.scheme(), "http" | "https")
            || parsed.host_str().is_none()
            || !parsed.username().is_empty()
            || parsed.password().is_some()
        {
            return Err(invalid(
                &at("server_url"),
                "must be an http:// or https:// URL with a host and no credentials",
            ));
        }
        let allowed_tools = match o.get("allowed_tools") {
            None | Some(Value::Null) => None,
            Some(v) => Some(ToolFilter::parse(v, &at("allowed_tools"))?),
        };
        let require_approval = match o.get("require_approval") {
            None | Some(Value::Null) => Approval::Always,
            Some(Value::String(s)) if s == "always" => Approval::Always,
            Some(Value::String(s)) if s == "never" => Approval::Never,
            Some(Value::Object(f)) => {
                let side = |k: &str| -> Result<ToolFilter, ToolError> {
                    match f.get(k) {
                        None | Some(Value::Null) => Ok(ToolFilter::default()),
                        Some(v @ Value::Object(_)) => {
                            ToolFilter::parse(v, &format!("{param}.require_approval.{k}"))
                        }
                        Some(_) => Err(invalid(
                            &format!("{param}.require_approval.{k}"),
                            "must be a filter object",
                        )),
                    }
                };
                Approval::Filter {
                    always: side("always")?,
                    never: side("never")?,
                }
            }
            Some(_) => {
                return Err(invalid(
                    &at("require_approval"),
                    "must be \"always\", \"never\" or {\"always\": …, \"never\": …}",
                ))
            }
        };
        let mut headers = Vec::new();
        match o.get("headers") {
            None | Some(Value::Null) => {}
            Some(Value::Object(h)) if h.len() <= 32 => {
                for (k, v) in h {
                    let v = v
                        .as_str()
                        .ok_or_else(|| invalid(&at("headers"), "values must be strings"))?;
                    let ok = reqwest::header::HeaderName::from_bytes(k.as_bytes()).is_ok()
                        && reqwest::header::HeaderValue::from_str(v).is_ok()
                        && !k.eq_ignore_ascii_case("host")
                        && v.len() <= 8192;
                    if !ok {
                        return Err(invalid(&at("headers"), &format!("`{k}` is not usable")));
                    }
                    headers.push((k.clone(), v.to_string()));
                }
            }
            Some(_) => {
                return Err(invalid(
                    &at("headers"),
                    "must be an object of at most 32 string values",
                ))
            }
        }
        let authorization = string("authorization")?;
        if let Some(a) = &authorization {
            if reqwest::header::HeaderValue::from_str(a).is_err() {
                return Err(invalid(&at("authorization"), "is not usable in a header"));
            }
        }
        Ok(McpSpec {
            server_label: label,
            server_url: url,
            server_description: string("server_description")?,
            allowed_tools,
            require_approval,
            headers,
            authorization,
        })
    }

    /// The entry as `session.updated` shows it: secrets (header values, the authorization
    /// token) are not echoed.
    pub fn to_view(&self) -> Value {
        let mut v = json!({
            "type": "mcp",
            "server_label": self.server_label,
            "server_url": self.server_url,
            "require_approval": match &self.require_approval {
                Approval::Always => json!("always"),
                Approval::Never => json!("never"),
                Approval::Filter { always, never } => json!({
                    "always": always.to_view(),
                    "never": never.to_view(),
                }),
            },
        });
        if let Some(d) = &self.server_description {
            v["server_description"] = json!(d);
        }
        if let Some(f) = &self.allowed_tools {
            v["allowed_tools"] = match (&f.tool_names, f.read_only) {
                (Some(n), None) => json!(n),
                _ => f.to_view(),
            };
        }
        if !self.headers.is_empty() {
            let h: Map<String, Value> = self
                .headers
                .iter()
                .map(|(k, _)| (k.clone(), json!(super::super::schema::REDACTED)))
                .collect();
            v["headers"] = Value::Object(h);
        }
        v
    }

    /// Whether `tool` is offered.
    pub fn offers(&self, tool: &McpTool) -> bool {
        self.allowed_tools.as_ref().is_none_or(|f| f.names(tool))
    }

    /// Whether a call to `tool` waits for the client's approval.
    pub fn needs_approval(&self, tool: &McpTool) -> bool {
        match &self.require_approval {
            Approval::Always => true,
            Approval::Never => false,
            Approval::Filter { always, never } => always.names(tool) || !never.names(tool),
        }
    }
}

impl ClientMcpPolicy {
    /// Whether `caller` may attach MCP servers at all.
    pub fn allows(&self, caller: &Caller) -> bool {
        caller.admin || self.roles.iter().any(|r| r == "*" || r == &caller.role)
    }

    /// Checks `spec` against the policy (role, host, address) and returns its server, pinned to
    /// the address that passed the check.
    pub async fn admit(&self, spec: &McpSpec, caller: &Caller) -> Result<Arc<McpServer>, McpError> {
        let refuse = |code: &'static str, message: String| McpError::Refused { code, message };
        if !self.allows(caller) {
            return Err(refuse(
                "mcp_not_allowed",
                format!(
                    "this API key (role `{}`) may not attach MCP servers",
                    caller.role
                ),
            ));
        }
        let url = reqwest::Url::parse(&spec.server_url)
            .map_err(|e| McpError::Config(format!("server_url: {e}")))?;
        let host = url.host_str().unwrap_or_default().to_ascii_lowercase();
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port = url.port_or_known_default().unwrap_or(80);
        if !self.host_allowed(&host, port) {
            return Err(refuse(
                "mcp_host_not_allowed",
                format!("`{host}` is not among the hosts this server lets clients reach"),
            ));
        }
        let addr = resolve(&host, port)
            .await
            .map_err(|m| McpError::Unreachable {
                label: spec.server_label.clone(),
                message: m,
            })?;
        if !self.allow_private && !is_public(addr.ip()) {
            return Err(refuse(
                "mcp_private_address",
                format!(
                    "`{host}` is a private or local address ({}), which clients may not reach",
                    addr.ip()
                ),
            ));
        }
        let mut headers = spec.headers.clone();
        if let Some(token) = &spec.authorization {
            headers.retain(|(k, _)| !k.eq_ignore_ascii_case("authorization"));
            headers.push(("authorization".into(), token.clone()));
        }
        let pin = url
            .host_str()
            .filter(|h| h.parse::<IpAddr>().is_err() && !h.starts_with('['))
            .map(|h| (h.to_string(), addr));
        Ok(McpServer::from_parts(
            &spec.server_label,
            Endpoint::Http {
                url: spec.server_url.clone(),
                headers,
                pin,
            },
            Duration::from_millis(self.timeout_ms.clamp(100, 120_000)),
            self.max_result_bytes.clamp(256, 4 * 1024 * 1024),
        ))
    }

    fn host_allowed(&self, host: &str, port: u16) -> bool {
        self.allowed_hosts.iter().any(|a| {
            let a = a.to_ascii_lowercase();
            a == "*"
                || a == host
                || a == format!("{host}:{port}")
                || a.strip_prefix("*.")
                    .is_some_and(|suffix| host.ends_with(&format!(".{suffix}")))
        })
    }
}

/// The first address `host` resolves to (within five seconds).
async fn resolve(host: &str, port: u16) -> Result<SocketAddr, String> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, port));
    }
    let found = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::net::lookup_host((host, port)),
    )
    .await
    .map_err(|_| format!("resolving `{host}` took too long"))?
    .map_err(|e| format!("cannot resolve `{host}`: {e}"))?;
    let all: Vec<SocketAddr> = found.collect();
    // Any private address among them refuses the host (the check must not depend on which one
    // the connection would pick).
    all.iter()
        .find(|a| !is_public(a.ip()))
        .or_else(|| all.first())
        .copied()
        .ok_or_else(|| format!("`{host}` has no address"))
}

/// Whether `ip` is a public unicast address.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            !(v4.is_private()
                || v4.is_loopback()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_documentation()
                || v4.is_multicast()
                || o[0] == 0
                || (o[0] == 100 && (64..128).contains(&o[1]))
                || (o[0] == 192 && o[1] == 0 && o[2] == 0)
                || (o[0] == 198 && (18..20).contains(&o[1]))
                || o[0] >= 240)
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public(IpAddr::V4(v4));
            }
            let s = v6.segments();
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00
                || (s[0] & 0xffc0) == 0xfe80
                || (s[0] == 0x2001 && s[1] == 0x0db8)
                || (s[0] == 0x64 && s[1] == 0xff9b))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tool(name: &str, read_only: bool) -> McpTool {
        McpTool {
            name: name.into(),
            description: String::new(),
            input_schema: json!({"type": "object"}),
            read_only,
        }
    }

    #[test]
    fn entries_are_read_as_openai_sends_them() {
        let spec = McpSpec::parse(
            &json!({"type": "mcp", "server_label": "docs", "server_url": "https://mcp.example.com/mcp",
                "allowed_tools": {"tool_names": ["search", "fetch"]},
                "require_approval": {"never": {"tool_names": ["search"]}},
                "headers": {"X-Team": "blue"}, "authorization": "tok"}),
            "session.tools[0]",
        )
        .unwrap();
        assert!(spec.offers(&tool("search", false)) && !spec.offers(&tool("delete", false)));
        assert!(!spec.needs_approval(&tool("search", false)));
        assert!(spec.needs_approval(&tool("fetch", false)));
        let view = spec.to_view().to_string();
        assert!(!view.contains("blue") && !view.contains("tok"), "{view}");
        let default = McpSpec::parse(
            &json!({"type": "mcp", "server_label": "x", "server_url": "http://h/mcp"}),
            "t",
        )
        .unwrap();
        assert_eq!(default.require_approval, Approval::Always);
        let read_only = McpSpec::parse(
            &json!({"type": "mcp", "server_label": "x", "server_url": "http://h/mcp",
                "require_approval": {"never": {"read_only": true}}}),
            "t",
        )
        .unwrap();
        assert!(!read_only.needs_approval(&tool("get", true)));
        assert!(read_only.needs_approval(&tool("set", false)));
        for (bad, at) in [
            (
                json!({"type": "mcp", "server_url": "http://h/"}),
                "t.server_label",
            ),
            (
                json!({"type": "mcp", "server_label": "a b", "server_url": "http://h/"}),
                "t.server_label",
            ),
            (
                json!({"type": "mcp", "server_label": "x", "server_url": "file:///etc/passwd"}),
                "t.server_url",
            ),
            (
                json!({"type": "mcp", "server_label": "x", "server_url": "http://u:p@h/"}),
                "t.server_url",
            ),
            (
                json!({"type": "mcp", "server_label": "x", "connector_id": "connector_gmail"}),
                "t",
            ),
            (
                json!({"type": "mcp", "server_label": "x", "server_url": "http://h/", "require_approval": "sometimes"}),
                "t.require_approval",
            ),
            (
                json!({"type": "mcp", "server_label": "x", "server_url": "http://h/", "headers": {"X": 1}}),
                "t.headers",
            ),
        ] {
            let e = McpSpec::parse(&bad, "t").unwrap_err();
            assert_eq!(e.param(), Some(at), "{bad}");
        }
    }

    #[test]
    fn only_public_addresses_are_public() {
        for private in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
        ] {
            assert!(!is_public(private.parse().unwrap()), "{private}");
        }
        for public in ["1.1.1.1", "93.184.216.34", "2606:4700::1111"] {
            assert!(is_public(public.parse().unwrap()), "{public}");
        }
    }

    #[tokio::test]
    async fn the_policy_checks_role_host_and_address() {
        let policy = |hosts: &[&str], private: bool| ClientMcpPolicy {
            roles: vec!["agent".into()],
            allowed_hosts: hosts.iter().map(|h| h.to_string()).collect(),
            allow_private: private,
            timeout_ms: 1000,
            max_result_bytes: 1024,
        };
        let caller = |role: &str| Caller {
            key_id: "k".into(),
            role: role.into(),
            admin: false,
        };
        let spec = |url: &str| {
            McpSpec::parse(
                &json!({"type": "mcp", "server_label": "x", "server_url": url}),
                "t",
            )
            .unwrap()
        };
        let code = |r: Result<Arc<McpServer>, McpError>| r.map(|_| ()).unwrap_err().code();
        let p = policy(&["127.0.0.1", "*.example.com"], false);
        assert_eq!(
            code(
                p.admit(&spec("http://127.0.0.1:9/mcp"), &caller("viewer"))
                    .await
            ),
            "mcp_not_allowed"
        );
        assert_eq!(
            code(
                p.admit(&spec("http://10.0.0.1/mcp"), &caller("agent"))
                    .await
            ),
            "mcp_host_not_allowed"
        );
        assert_eq!(
            code(
                p.admit(&spec("http://127.0.0.1:9/mcp"), &caller("agent"))
                    .await
            ),
            "mcp_private_address"
        );
        assert_eq!(
            code(p.admit(&spec("http://[::1]:9/mcp"), &caller("agent")).await),
            "mcp_host_not_allowed"
        );
        let open = policy(&["127.0.0.1"], true);
        assert!(open
            .admit(&spec("http://127.0.0.1:9/mcp"), &caller("agent"))
            .await
            .is_ok());
    }
}
