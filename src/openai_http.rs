//! The HTTP client for OpenAI-compatible endpoints, shared by the remote backends (embeddings,
//! LLM): base URL, optional key, connect timeout and an optional whole-request timeout.

use std::time::Duration;

use async_openai::config::OpenAIConfig;
use async_openai::Client;

/// An async-openai client for `base_url` (with its `/v1`).
pub fn client(
    base_url: &str,
    api_key: Option<&str>,
    connect_timeout: Duration,
    request_timeout: Option<Duration>,
) -> Result<Client<OpenAIConfig>, reqwest::Error> {
    let mut http = reqwest::Client::builder().connect_timeout(connect_timeout);
    if let Some(t) = request_timeout {
        http = http.timeout(t);
    }
    let mut config = OpenAIConfig::new().with_api_base(base_url.trim_end_matches('/'));
    if let Some(key) = api_key {
        config = config.with_api_key(key);
    }
    Ok(Client::with_config(config).with_http_client(http.build()?))
}
