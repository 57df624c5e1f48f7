//! Server tools: functions the operator declares in the configuration and voxd runs itself,
//! feeding the result back to the model without a round trip to the client.
//!
//! - Built-ins: `search_knowledge_base` (cited passages) and `current_time`.
//! - HTTP tools: a URL (with `{argument}` placeholders), a method, a JSON Schema for the
//!   arguments, a timeout, a response size limit and the hosts the URL may reach. Redirects are
//!   not followed, so a tool cannot be bounced to another host.
//!
//! - MCP tools: each tool of an MCP server in `[[tools.mcp]]` (see [`super::mcp`]), named
//!   `{label}__{tool}`, listed when the server starts ([`ServerTools::list_mcp_tools`]).
//!
//! Who may call what: [`Permissions`] maps roles to the tools they may use; each API key has a
//! role (see [`Caller`]). A session is offered only the tools its caller may use; a call to any
//! other server tool is refused, and the model is told so.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::{json, Value};

use super::mcp::{McpError, McpServer, McpServerConfig};
pub use super::permissions::{Caller, Permissions};
use super::{FunctionTool, ToolCall, ToolError, ToolSet};
use crate::rag::{KnowledgeBase, SearchRequest};

/// An HTTP tool as the configuration declares it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpToolConfig {
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// `http://` or `https://`; `{name}` is replaced by that (scalar) argument, percent-encoded.
    pub url: String,
    /// GET (arguments as query parameters, except those in the URL) or POST/PUT/PATCH/DELETE
    /// (arguments as a JSON body).
    #[serde(default = "default_method")]
    pub method: String,
    /// The arguments' JSON Schema: a TOML table, or a JSON text.
    #[serde(default)]
    pub parameters: Option<Value>,
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    #[serde(default = "default_max_response_bytes")]
    pub max_response_bytes: usize,
    /// Hosts (`host` or `host:port`) the URL may reach; default: the URL's own.
    #[serde(default)]
    pub allowed_hosts: Vec<String>,
    /// Headers sent with every call (a token for the service, say).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// The result is sensitive: redacted in logs and the audit trail.
    #[serde(default)]
    pub sensitive_result: bool,
}

fn default_method() -> String {
    "POST".into()
}
fn default_timeout_ms() -> u64 {
    5_000
}
fn default_max_response_bytes() -> usize {
    64 * 1024
}

/// The `[tools]` table of the configuration file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToolsConfig {
    /// Built-in tools to offer (`search_knowledge_base`, `current_time`); default: none.
    #[serde(default)]
    pub builtin: Option<Vec<String>>,
    #[serde(default)]
    pub http: Vec<HttpToolConfig>,
    /// MCP servers whose tools are offered as server tools.
    #[serde(default)]
    pub mcp: Vec<McpServerConfig>,
    /// Whether, and where, clients may attach their own MCP servers to realtime sessions
    /// (`{"type": "mcp"}` tools); absent: they may not.
    #[serde(default)]
    pub client_mcp: Option<super::mcp::client::ClientMcpPolicy>,
    /// Role → the server tools it may call (`"*"`: all; `label__*`: every tool of that MCP
    /// server). Empty: every caller may call every tool.
    #[serde(default)]
    pub roles: BTreeMap<String, Vec<String>>,
}

/// Names of the built-in tools.
pub const BUILTINS: [&str; 2] = ["search_knowledge_base", "current_time"];

enum Kind {
    SearchKnowledgeBase,
    CurrentTime,
    Http(Box<HttpToolConfig>),
    Mcp {
        server: Arc<McpServer>,
        tool: String,
    },
}

struct ServerTool {
    def: FunctionTool,
    kind: Kind,
    sensitive_result: bool,
}

/// How a server tool's call ended.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    /// `ok`, `error`, `timeout`, `refused`.
    pub status: &'static str,
    /// What the model is shown.
    pub output: String,
    pub latency_ms: f64,
    /// The output is sensitive (redacted in logs and the audit trail).
    pub sensitive: bool,
}

/// The server's tools, checked at start.
pub struct ServerTools {
    tools: Vec<ServerTool>,
    mcp: Vec<Arc<McpServer>>,
    definitions: ToolSet,
    pub permissions: Permissions,
    /// Whether, and where, clients may attach MCP servers.
    pub client_mcp: Option<super::mcp::client::ClientMcpPolicy>,
    http: reqwest::Client,
}

fn invalid(param: String, message: impl Into<String>) -> ToolError {
    ToolError::InvalidTool {
        param,
        message: message.into(),
    }
}

impl ServerTools {
    /// Checks the configuration: names, schemas, URLs, limits, roles.
    pub fn new(config: &ToolsConfig) -> Result<Self, ToolError> {
        let mut tools = Vec::new();
        let builtin = config.builtin.clone().unwrap_or_default();
        for (i, name) in builtin.iter().enumerate() {
            tools.push(builtin_tool(i, name)?);
        }
        for (i, h) in config.http.iter().enumerate() {
            tools.push(http_tool(i, h)?);
        }
        let builtins = tools.len() - config.http.len();
        let defs: Vec<(FunctionTool, String)> = tools
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let at = if i < builtins {
                    format!("tools.builtin[{i}]")
                } else {
                    format!("tools.http[{}]", i - builtins)
                };
                (t.def.clone(), at)
            })
            .collect();
        let definitions = ToolSet::compile_all(defs)?;
        let mut mcp = Vec::new();
        for (i, m) in config.mcp.iter().enumerate() {
            if mcp.iter().any(|s: &Arc<McpServer>| s.label == m.label) {
                return Err(invalid(
                    format!("tools.mcp[{i}].label"),
                    format!("`{}` is used twice", m.label),
                ));
            }
            mcp.push(
                McpServer::new(m).map_err(|e| invalid(format!("tools.mcp[{i}]"), e.to_string()))?,
            );
        }
        let is_mcp = |n: &str| {
            n.split_once("__")
                .is_some_and(|(label, _)| mcp.iter().any(|s| s.label == label))
        };
        for (role, names) in &config.roles {
            for n in names {
                if n != "*" && definitions.get(n).is_none() && !is_mcp(n) {
                    return Err(invalid(
                        format!("tools.roles.{role}"),
                        format!("`{n}` is not a server tool"),
                    ));
                }
            }
        }
        let http = crate::openai_http::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| invalid("tools".into(), e.to_string()))?;
        Ok(ServerTools {
            tools,
            mcp,
            definitions,
            permissions: Permissions {
                roles: config.roles.clone(),
            },
            client_mcp: config.client_mcp.clone(),
            http,
        })
    }

    /// Lists the tools of every configured MCP server and adds them (a server that cannot be
    /// reached, or a tool whose schema is not usable, is left out with a warning).
    pub async fn list_mcp_tools(&mut self) {
        for server in self.mcp.clone() {
            let listed = match server.list_tools().await {
                Ok(t) => t,
                Err(e) => {
                    tracing::warn!(server = %server.label, code = e.code(), error = %e, "MCP server not available; its tools are not offered");
                    continue;
                }
            };
            let mut added = 0;
            for t in listed {
                let tool = ServerTool {
                    def: FunctionTool {
                        name: format!("{}__{}", server.label, t.name),
                        description: t.description,
                        parameters: t.input_schema,
                        strict: true,
                    },
                    sensitive_result: server.sensitive_result,
                    kind: Kind::Mcp {
                        server: server.clone(),
                        tool: t.name,
                    },
                };
                if let Err(e) = ToolSet::new(vec![tool.def.clone()], "mcp") {
                    tracing::warn!(server = %server.label, tool = %tool.def.name, error = %e, "MCP tool left out");
                    continue;
                }
                if self.contains(&tool.def.name) {
                    continue;
                }
                self.tools.push(tool);
                added += 1;
            }
            tracing::info!(server = %server.label, tools = added, "MCP server tools listed");
        }
        let all: Vec<FunctionTool> = self.tools.iter().map(|t| t.def.clone()).collect();
        match ToolSet::new(all, "tools") {
            Ok(d) => self.definitions = d,
            Err(e) => tracing::warn!(error = %e, "server tools could not be compiled together"),
        }
    }

    /// Every server tool.
    pub fn definitions(&self) -> &ToolSet {
        &self.definitions
    }

    /// The tools `caller` may use.
    pub fn offered_to(&self, caller: &Caller) -> ToolSet {
        self.definitions
            .filtered(|name| self.permissions.allows(caller, name))
    }

    pub fn contains(&self, name: &str) -> bool {
        self.tools.iter().any(|t| t.def.name == name)
    }

    /// Whether a tool's result is sensitive.
    pub fn sensitive_result(&self, name: &str) -> bool {
        self.tools
            .iter()
            .any(|t| t.def.name == name && t.sensitive_result)
    }

    /// Runs a (validated) call for `caller`.
    pub async fn call(
        &self,
        call: &ToolCall,
        caller: &Caller,
        kb: Option<&Arc<KnowledgeBase>>,
    ) -> Outcome {
        let started = Instant::now();
        let Some(tool) = self.tools.iter().find(|t| t.def.name == call.name) else {
            return refused(format!("`{}` is not a tool of this server", call.name));
        };
        if !self.permissions.allows(caller, &call.name) {
            return Outcome {
                status: "refused",
                output: json!({"error": format!("You are not allowed to use `{}`. Tell the user you cannot do that.", call.name)}).to_string(),
                latency_ms: 0.0,
                sensitive: false,
            };
        }
        let args: Value = serde_json::from_str(&call.arguments).unwrap_or_else(|_| json!({}));
        let (status, output) = match &tool.kind {
            Kind::CurrentTime => {
                let now = std::time::SystemTime::now();
                let unix = now
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0);
                (
                    "ok",
                    json!({"utc": humantime::format_rfc3339_seconds(now).to_string(), "unix": unix})
                        .to_string(),
                )
            }
            Kind::SearchKnowledgeBase => search(kb, &args).await,
            Kind::Http(h) => self.http_call(h, &args).await,
            Kind::Mcp { server, tool } => mcp_call(server, tool, args).await,
        };
        Outcome {
            status,
            output,
            latency_ms: started.elapsed().as_secs_f64() * 1e3,
            sensitive: tool.sensitive_result,
        }
    }

    async fn http_call(&self, h: &HttpToolConfig, args: &Value) -> (&'static str, String) {
        let error = |status: &'static str, message: String| {
            (status, json!({ "error": message }).to_string())
        };
        // Placeholders take scalar arguments, percent-encoded; the rest go in the query or body.
        let mut url = h.url.clone();
        let mut rest = args.as_object().cloned().unwrap_or_default();
        for (k, v) in args.as_object().into_iter().flatten() {
            let placeholder = format!("{{{k}}}");
            if url.contains(&placeholder) {
                let text = match v {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                // A dot segment would climb the URL's path.
                if matches!(text.as_str(), "" | "." | "..") || text.eq_ignore_ascii_case("%2e") {
                    return error("error", format!("`{k}` cannot be empty, `.` or `..`"));
                }
                url = url.replace(&placeholder, &percent_encode(&text));
                rest.remove(k);
            }
        }
        let parsed = match reqwest::Url::parse(&url) {
            Ok(u) => u,
            Err(e) => return error("error", format!("bad URL: {e}")),
        };
        let host = authority(&parsed);
        let host_only = parsed.host_str().unwrap_or_default();
        if !h
            .allowed_hosts
            .iter()
            .any(|a| a.eq_ignore_ascii_case(&host) || a.eq_ignore_ascii_case(host_only))
        {
            return error("refused", format!("the host {host} is not allowed"));
        }
        let method = h.method.to_ascii_uppercase();
        let mut req = match method.as_str() {
            "GET" => {
                let mut u = parsed;
                {
                    let mut q = u.query_pairs_mut();
                    for (k, v) in &rest {
                        let text = match v {
                            Value::String(s) => s.clone(),
                            other => other.to_string(),
                        };
                        q.append_pair(k, &text);
                    }
                }
                self.http.get(u)
            }
            m => self
                .http
                .request(
                    reqwest::Method::from_bytes(m.as_bytes()).unwrap_or(reqwest::Method::POST),
                    parsed,
                )
                .header("content-type", "application/json")
                .body(Value::Object(rest).to_string()),
        };
        for (k, v) in &h.headers {
            req = req.header(k.as_str(), v.as_str());
        }
        let timeout = Duration::from_millis(h.timeout_ms);
        let work = async {
            let mut resp = req.send().await.map_err(|e| ("error", e.to_string()))?;
            let status = resp.status();
            let mut body = Vec::new();
            while let Some(chunk) = resp.chunk().await.map_err(|e| ("error", e.to_string()))? {
                if body.len() + chunk.len() > h.max_response_bytes {
                    return Err((
                        "error",
                        format!("the response is larger than {} bytes", h.max_response_bytes),
                    ));
                }
                body.extend_from_slice(&chunk);
            }
            if !status.is_success() {
                return Err((
                    "error",
                    format!("the service answered HTTP {}", status.as_u16()),
                ));
            }
            Ok(String::from_utf8_lossy(&body).into_owned())
        };
        match tokio::time::timeout(timeout, work).await {
            Err(_) => error(
                "timeout",
                format!("the service did not answer within {} ms", h.timeout_ms),
            ),
            Ok(Err((status, message))) => error(status, message),
            Ok(Ok(text)) => ("ok", text),
        }
    }
}

/// The built-in tool `name` (the `i`-th of `tools.builtin`).
fn builtin_tool(i: usize, name: &str) -> Result<ServerTool, ToolError> {
    let (def, kind) = match name {
        "search_knowledge_base" => (
            FunctionTool {
                name: name.to_string(),
                description:
                    "Searches the knowledge base; returns numbered passages with their sources."
                        .into(),
                parameters: json!({
                    "type": "object",
                    "properties": {"query": {"type": "string", "minLength": 1, "maxLength": 500}},
                    "required": ["query"],
                    "additionalProperties": false
                }),
                strict: true,
            },
            Kind::SearchKnowledgeBase,
        ),
        "current_time" => (
            FunctionTool {
                name: name.to_string(),
                description: "The current date and time (UTC).".into(),
                parameters: json!({"type": "object", "properties": {}, "additionalProperties": false}),
                strict: true,
            },
            Kind::CurrentTime,
        ),
        other => {
            return Err(invalid(
                format!("tools.builtin[{i}]"),
                format!("`{other}` is not a built-in tool ({})", BUILTINS.join(", ")),
            ))
        }
    };
    Ok(ServerTool {
        def,
        kind,
        sensitive_result: false,
    })
}

/// The `i`-th HTTP tool of the configuration, checked: its URL, method, limits and parameters.
fn http_tool(i: usize, h: &HttpToolConfig) -> Result<ServerTool, ToolError> {
    let at = format!("tools.http[{i}]");
    let url = reqwest::Url::parse(&h.url.replace(['{', '}'], "_"))
        .map_err(|e| invalid(format!("{at}.url"), format!("`{}`: {e}", h.url)))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(invalid(format!("{at}.url"), "must be http:// or https://"));
    }
    if !matches!(
        h.method.to_ascii_uppercase().as_str(),
        "GET" | "POST" | "PUT" | "PATCH" | "DELETE"
    ) {
        return Err(invalid(
            format!("{at}.method"),
            "must be GET, POST, PUT, PATCH or DELETE",
        ));
    }
    if !(1..=120_000).contains(&h.timeout_ms) {
        return Err(invalid(format!("{at}.timeout_ms"), "must be 1..=120000"));
    }
    if !(1..=16 * 1024 * 1024).contains(&h.max_response_bytes) {
        return Err(invalid(
            format!("{at}.max_response_bytes"),
            "must be 1..=16777216",
        ));
    }
    let parameters = match &h.parameters {
        None => json!({"type": "object", "properties": {}}),
        Some(Value::String(text)) => serde_json::from_str(text)
            .map_err(|e| invalid(format!("{at}.parameters"), format!("is not JSON: {e}")))?,
        Some(v) => v.clone(),
    };
    let mut h = h.clone();
    if h.allowed_hosts.is_empty() {
        h.allowed_hosts = vec![authority(&url)];
    }
    Ok(ServerTool {
        def: FunctionTool {
            name: h.name.clone(),
            description: h.description.clone(),
            parameters,
            strict: true,
        },
        sensitive_result: h.sensitive_result,
        kind: Kind::Http(Box::new(h)),
    })
}

/// Whether a role's entry `entry` names `tool`: `*`, the tool's name, or `label__*` for every
/// tool of an MCP server.
/// Calls an MCP server's tool: its text for the model, or the error as `{"error": …}`.
async fn mcp_call(server: &McpServer, tool: &str, args: Value) -> (&'static str, String) {
    let args = match args {
        Value::Object(m) => m,
        _ => serde_json::Map::new(),
    };
    match server.call(tool, args).await {
        Ok(out) => ("ok", out.text),
        Err(e) => {
            let status = match e {
                McpError::Timeout { .. } => "timeout",
                _ => "error",
            };
            tracing::info!(server = %server.label, tool, code = e.code(), error = %e, "MCP call failed");
            (
                status,
                json!({ "error": e.to_string(), "code": e.code() }).to_string(),
            )
        }
    }
}

fn refused(message: String) -> Outcome {
    Outcome {
        status: "refused",
        output: json!({ "error": message }).to_string(),
        latency_ms: 0.0,
        sensitive: false,
    }
}

/// `host:port` (the port only when explicit).
fn authority(url: &reqwest::Url) -> String {
    match (url.host_str(), url.port()) {
        (Some(h), Some(p)) => format!("{h}:{p}"),
        (Some(h), None) => h.to_string(),
        _ => String::new(),
    }
}

fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

async fn search(kb: Option<&Arc<KnowledgeBase>>, args: &Value) -> (&'static str, String) {
    let Some(kb) = kb else {
        return (
            "error",
            json!({"error": "this server has no knowledge base"}).to_string(),
        );
    };
    let query = args.get("query").and_then(Value::as_str).unwrap_or("");
    match kb.search(SearchRequest::new(query)).await {
        Ok(r) => {
            let passages: Vec<Value> = r
                .passages
                .iter()
                .enumerate()
                .map(|(i, p)| {
                    json!({"n": i + 1, "title": p.citation.title, "source": p.citation.source,
                           "uri": p.citation.uri, "text": p.text})
                })
                .collect();
            ("ok", json!({ "passages": passages }).to_string())
        }
        Err(e) => (
            "error",
            json!({"error": format!("the search failed: {e}")}).to_string(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(toml_text: &str) -> Result<ServerTools, ToolError> {
        let c: ToolsConfig = toml::from_str(toml_text).unwrap();
        ServerTools::new(&c)
    }

    #[test]
    fn the_configuration_is_checked() {
        let ok = config(
            r#"
            [[http]]
            name = "book_table"
            url = "http://127.0.0.1:9/book/{id}"
            "#,
        )
        .unwrap();
        assert_eq!(ok.definitions().len(), 1, "no built-in unless asked for");
        let ok = config(
            r#"
            builtin = ["search_knowledge_base", "current_time"]
            [[http]]
            name = "book_table"
            url = "http://127.0.0.1:9/book/{id}"
            parameters = { type = "object", properties = { id = { type = "string" } } }
            [roles]
            staff = ["book_table", "search_knowledge_base"]
            public = ["search_knowledge_base"]
            "#,
        )
        .unwrap();
        assert_eq!(ok.definitions().len(), 3);
        let public = Caller {
            key_id: "web".into(),
            role: "public".into(),
            admin: false,
        };
        let names: Vec<String> = ok
            .offered_to(&public)
            .iter()
            .map(|t| t.name.clone())
            .collect();
        assert_eq!(names, ["search_knowledge_base"]);
        assert!(ok.permissions.allows(&Caller::anonymous(), "book_table"));
        for (bad, param) in [
            (r#"builtin = ["rm_rf"]"#, "tools.builtin[0]"),
            (
                "[[http]]\nname = \"x\"\nurl = \"ftp://h/x\"",
                "tools.http[0].url",
            ),
            (
                "[[http]]\nname = \"x\"\nurl = \"http://h/x\"\nmethod = \"TRACE\"",
                "tools.http[0].method",
            ),
            (
                "[[http]]\nname = \"x\"\nurl = \"http://h/x\"\nparameters = '{\"type\": \"array\"}'",
                "tools.http[0].parameters",
            ),
            ("[roles]\nstaff = [\"nope\"]", "tools.roles.staff"),
        ] {
            let err = config(bad).err().unwrap_or_else(|| panic!("{bad}"));
            assert_eq!(err.param(), Some(param), "{bad}: {err}");
        }
    }

    #[test]
    fn placeholders_are_percent_encoded() {
        assert_eq!(percent_encode("a b/../c?d"), "a%20b%2F..%2Fc%3Fd");
    }
}
