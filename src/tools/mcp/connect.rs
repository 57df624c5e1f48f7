//! The MCP connection itself, over `rmcp`: Streamable HTTP (no redirects, responses bounded before
//! they are parsed) or a child process on stdio (lines bounded), the initialisation handshake,
//! and the two requests voxd makes: `tools/list` (page by page) and `tools/call`.

use std::collections::HashMap;

use rmcp::model::{
    CallToolRequestParams, ClientCapabilities, ClientConfig, ContentBlock, Implementation,
    PaginatedRequestParams,
};
use rmcp::service::{RoleClient, RunningService, ServiceError};
use rmcp::ServiceExt;
use serde_json::{Map, Value};

use super::{McpError, McpOutput, McpTool, MAX_TOOLS};

/// Where an MCP server is.
#[derive(Debug, Clone, PartialEq)]
pub enum Endpoint {
    /// Streamable HTTP, with headers for every request.
    Http {
        url: String,
        headers: Vec<(String, String)>,
        /// The host name and the address it must connect to (checked once, then pinned).
        pin: Option<(String, std::net::SocketAddr)>,
    },
    /// A command voxd starts (operator configuration only), with its environment.
    Stdio {
        command: Vec<String>,
        env: Vec<(String, String)>,
    },
}

/// The client's handle for requests (cheap to clone; requests run concurrently).
pub type Peer = rmcp::Peer<RoleClient>;

/// A live connection.
pub struct Connection {
    service: RunningService<RoleClient, ClientConfig>,
}

impl Connection {
    pub fn peer(&self) -> Peer {
        self.service.peer().clone()
    }

    pub fn is_closed(&self) -> bool {
        self.service.is_closed()
    }

    pub async fn close(self) {
        let _ = self.service.cancel().await;
    }
}

/// Pages of `tools/list` read at most (a server that keeps paging is cut off).
const MAX_PAGES: usize = 20;
/// Bytes of overhead a response may have beyond the result limit (JSON-RPC framing).
const RESPONSE_SLACK: usize = 256 * 1024;
/// The smallest response limit (a tool list of a few thousand entries fits).
const MIN_RESPONSE_LIMIT: usize = 2 * 1024 * 1024;

fn client_config() -> ClientConfig {
    ClientConfig::new(
        ClientCapabilities::default(),
        Implementation::new("voxd", env!("CARGO_PKG_VERSION")),
    )
}

/// Connects and initialises.
pub async fn connect(
    label: &str,
    endpoint: &Endpoint,
    max_result_bytes: usize,
) -> Result<Connection, McpError> {
    let unreachable = |message: String| McpError::Unreachable {
        label: label.to_string(),
        message,
    };
    // Bounded before parsing; room for a long tool list (a server listing thousands of tools
    // is read, then cut to MAX_TOOLS).
    let limit = (max_result_bytes + RESPONSE_SLACK).max(MIN_RESPONSE_LIMIT);
    let service = match endpoint {
        Endpoint::Http { url, headers, pin } => {
            use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
            use rmcp::transport::StreamableHttpClientTransport;
            let mut custom = HashMap::new();
            let mut auth = None;
            for (k, v) in headers {
                if k.eq_ignore_ascii_case("authorization") {
                    auth = Some(v.trim_start_matches("Bearer ").to_string());
                    continue;
                }
                let name = reqwest::header::HeaderName::from_bytes(k.as_bytes())
                    .map_err(|e| McpError::Config(format!("header `{k}`: {e}")))?;
                let value = reqwest::header::HeaderValue::from_str(v)
                    .map_err(|e| McpError::Config(format!("header `{k}`: {e}")))?;
                custom.insert(name, value);
            }
            let mut config = StreamableHttpClientTransportConfig::with_uri(url.as_str())
                .custom_headers(custom)
                .max_json_response_size(limit)
                .max_sse_event_size(limit);
            if let Some(token) = auth {
                config = config.auth_header(token);
            }
            let mut http = reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .connect_timeout(std::time::Duration::from_secs(5));
            if let Some((host, addr)) = pin {
                http = http.resolve(host, *addr);
            }
            let http = http.build().map_err(|e| unreachable(e.to_string()))?;
            let transport = StreamableHttpClientTransport::with_client(http, config);
            match client_config().serve(transport).await {
                Ok(service) => service,
                // A server that predates Streamable HTTP: the HTTP+SSE transport.
                Err(first) => match sse_fallback(url, headers, pin.as_ref(), limit).await {
                    Some(service) => service,
                    None => return Err(unreachable(first.to_string())),
                },
            }
        }
        Endpoint::Stdio { command, env } => {
            use rmcp::transport::TokioChildProcess;
            let (program, args) = command
                .split_first()
                .ok_or_else(|| McpError::Config("an empty command".into()))?;
            let mut cmd = tokio::process::Command::new(program);
            cmd.args(args).envs(env.iter().cloned()).kill_on_drop(true);
            let (transport, _stderr) = TokioChildProcess::builder(cmd)
                .stderr(std::process::Stdio::null())
                .spawn()
                .map_err(|e| unreachable(format!("cannot start {program}: {e}")))?;
            client_config()
                .serve(transport)
                .await
                .map_err(|e| unreachable(e.to_string()))?
        }
    };
    Ok(Connection { service })
}

/// Connects over the HTTP+SSE transport; `None` when that fails too.
async fn sse_fallback(
    url: &str,
    headers: &[(String, String)],
    pin: Option<&(String, std::net::SocketAddr)>,
    limit: usize,
) -> Option<RunningService<RoleClient, ClientConfig>> {
    let mut default_headers = reqwest::header::HeaderMap::new();
    for (k, v) in headers {
        let name = reqwest::header::HeaderName::from_bytes(k.as_bytes()).ok()?;
        let value = if k.eq_ignore_ascii_case("authorization") && !v.starts_with("Bearer ") {
            format!("Bearer {v}")
        } else {
            v.clone()
        };
        default_headers.insert(name, reqwest::header::HeaderValue::from_str(&value).ok()?);
    }
    let mut http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(std::time::Duration::from_secs(5))
        .default_headers(default_headers);
    if let Some((host, addr)) = pin {
        http = http.resolve(host, *addr);
    }
    let (sink, stream) = super::sse::open(http.build().ok()?, url, limit)
        .await
        .ok()?;
    tracing::info!(%url, "the MCP server speaks the HTTP+SSE transport");
    client_config().serve((sink, stream)).await.ok()
}

/// A request's failure as an [`McpError`].
fn failed(label: &str, e: ServiceError) -> McpError {
    let message = e.to_string();
    match e {
        ServiceError::McpError(_) | ServiceError::UnexpectedResponse => McpError::Protocol {
            label: label.to_string(),
            message,
        },
        _ if message.contains("too large") || message.contains("exceed") => McpError::TooLarge {
            label: label.to_string(),
            limit: 0,
        },
        _ => McpError::Unreachable {
            label: label.to_string(),
            message,
        },
    }
}

/// `tools/list`, page by page, up to a few times [`MAX_TOOLS`] entries.
pub async fn list_tools(peer: &Peer, label: &str) -> Result<Vec<McpTool>, McpError> {
    let mut tools = Vec::new();
    let mut cursor = None;
    for _ in 0..MAX_PAGES {
        let mut params = PaginatedRequestParams::default();
        params.cursor = cursor.take();
        let page = peer
            .list_tools(Some(params))
            .await
            .map_err(|e| failed(label, e))?;
        for t in page.tools {
            tools.push(McpTool {
                name: t.name.to_string(),
                description: t.description.map(|d| d.to_string()).unwrap_or_default(),
                input_schema: Value::Object((*t.input_schema).clone()),
                read_only: t
                    .annotations
                    .as_ref()
                    .and_then(|a| a.read_only_hint)
                    .unwrap_or(false),
            });
        }
        cursor = page.next_cursor;
        if cursor.is_none() || tools.len() >= 4 * MAX_TOOLS {
            break;
        }
    }
    Ok(tools)
}

/// `tools/call`; a result the tool marks as an error is [`McpError::Tool`].
pub async fn call_tool(
    peer: &Peer,
    label: &str,
    tool: &str,
    arguments: Map<String, Value>,
) -> Result<McpOutput, McpError> {
    let params = CallToolRequestParams::new(tool.to_string()).with_arguments(arguments);
    let result = peer.call_tool(params).await.map_err(|e| failed(label, e))?;
    let mut parts: Vec<String> = Vec::new();
    for block in &result.content {
        match block {
            ContentBlock::Text(t) => parts.push(t.text.clone()),
            ContentBlock::Resource(r) => parts.push(
                serde_json::to_value(&r.resource)
                    .ok()
                    .and_then(|v| v.get("text").and_then(Value::as_str).map(str::to_string))
                    .unwrap_or_else(|| "[a resource]".into()),
            ),
            ContentBlock::ResourceLink(r) => parts.push(format!("[a link: {}]", r.uri)),
            ContentBlock::Image(_) => parts.push("[an image]".into()),
            ContentBlock::Audio(_) => parts.push("[audio]".into()),
            _ => parts.push("[content voxd does not show]".into()),
        }
    }
    let mut text = parts.join("\n");
    if text.is_empty() {
        if let Some(v) = &result.structured_content {
            text = v.to_string();
        }
    }
    if result.is_error == Some(true) {
        return Err(McpError::Tool(if text.is_empty() {
            format!("`{tool}` failed")
        } else {
            text
        }));
    }
    Ok(McpOutput { text })
}
