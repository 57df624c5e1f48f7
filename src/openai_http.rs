//! The HTTP client for OpenAI-compatible endpoints, shared by the remote backends (embeddings,
//! LLM): base URL, optional key, connect timeout and an optional whole-request timeout. Every
//! outgoing HTTP client (remote engines, HTTP tools) starts from [`builder`], which trusts the
//! certificate authorities given with `--ca-cert` besides the system's.

use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

/// Authorities trusted besides the system's (`--ca-cert`).
static EXTRA_ROOTS: Mutex<Vec<reqwest::Certificate>> = Mutex::new(Vec::new());

/// Why a `--ca-cert` file was refused.
#[derive(Debug, thiserror::Error)]
#[error("the CA certificate file {path}: {message}")]
pub struct CaError {
    pub path: String,
    pub message: String,
}

/// Trusts the PEM certificates in `path` for every outgoing HTTPS client made after this call;
/// returns how many there were.
pub fn trust_ca_file(path: &Path) -> Result<usize, CaError> {
    let err = |message: String| CaError {
        path: path.display().to_string(),
        message,
    };
    let pem = std::fs::read(path).map_err(|e| err(e.to_string()))?;
    let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| err(e.to_string()))?;
    if certs.is_empty() {
        return Err(err("holds no PEM certificate".into()));
    }
    let n = certs.len();
    EXTRA_ROOTS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .extend(certs);
    Ok(n)
}

/// A reqwest builder that trusts the `--ca-cert` authorities too.
pub fn builder() -> reqwest::ClientBuilder {
    let roots = EXTRA_ROOTS.lock().unwrap_or_else(|e| e.into_inner());
    if roots.is_empty() {
        return reqwest::Client::builder();
    }
    reqwest::Client::builder().tls_certs_merge(roots.iter().cloned())
}

use async_openai::config::OpenAIConfig;
use async_openai::Client;

/// An async-openai client for `base_url` (with its `/v1`).
pub fn client(
    base_url: &str,
    api_key: Option<&str>,
    connect_timeout: Duration,
    request_timeout: Option<Duration>,
) -> Result<Client<OpenAIConfig>, reqwest::Error> {
    let mut http = builder().connect_timeout(connect_timeout);
    if let Some(t) = request_timeout {
        http = http.timeout(t);
    }
    let mut config = OpenAIConfig::new().with_api_base(base_url.trim_end_matches('/'));
    if let Some(key) = api_key {
        config = config.with_api_key(key);
    }
    Ok(Client::with_config(config).with_http_client(http.build()?))
}
