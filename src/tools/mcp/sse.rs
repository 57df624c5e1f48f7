//! The older MCP transport, HTTP with Server-Sent Events (protocol 2024-11-05), for servers
//! that do not speak Streamable HTTP yet: voxd opens a `GET` event stream, the server's first
//! event (`endpoint`) names where to `POST` messages, and its answers arrive as `message` events
//! on the stream. Used as the fallback when a server refuses Streamable HTTP.
//!
//! Bounded like the rest: an event larger than the response limit ends the connection, and
//! the endpoint must be on the same origin as the stream (a server cannot send voxd elsewhere).

use futures::Sink;
use rmcp::service::{RoleClient, RxJsonRpcMessage, TxJsonRpcMessage};
use tokio::sync::{mpsc, watch};

/// Messages the server sends, as a stream.
pub type Incoming =
    std::pin::Pin<Box<dyn futures::Stream<Item = RxJsonRpcMessage<RoleClient>> + Send>>;

/// Opens the event stream at `url` with `client` (which has the headers and no redirects);
/// returns where to send messages and what arrives, once the server has named its endpoint.
pub async fn open(
    client: reqwest::Client,
    url: &str,
    limit: usize,
) -> Result<
    (
        impl Sink<TxJsonRpcMessage<RoleClient>, Error = std::io::Error> + Send + Unpin + 'static,
        Incoming,
    ),
    String,
> {
    let base = reqwest::Url::parse(url).map_err(|e| e.to_string())?;
    let response = client
        .get(base.clone())
        .header("accept", "text/event-stream")
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if !response.status().is_success() {
        return Err(format!("the event stream answered {}", response.status()));
    }
    let (tx, rx) = mpsc::channel(16);
    let (endpoint_tx, mut endpoint_rx) = watch::channel(None::<reqwest::Url>);
    tokio::spawn(read_events(response, base, limit, tx, endpoint_tx));
    let endpoint = loop {
        if let Some(e) = endpoint_rx.borrow().clone() {
            break e;
        }
        if endpoint_rx.changed().await.is_err() {
            return Err("the event stream ended before it named an endpoint".into());
        }
    };
    let sink = futures::sink::unfold(
        (client, endpoint),
        |(client, endpoint), message: TxJsonRpcMessage<RoleClient>| async move {
            let sent = client
                .post(endpoint.clone())
                .json(&message)
                .send()
                .await
                .map_err(std::io::Error::other)?;
            if !sent.status().is_success() {
                return Err(std::io::Error::other(format!(
                    "the server answered {} to a message",
                    sent.status()
                )));
            }
            Ok((client, endpoint))
        },
    );
    let incoming =
        futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|m| (m, rx)) });
    Ok((Box::pin(sink), Box::pin(incoming)))
}

/// Reads the event stream: the `endpoint` event (same origin only), then `message` events.
async fn read_events(
    mut response: reqwest::Response,
    base: reqwest::Url,
    limit: usize,
    tx: mpsc::Sender<RxJsonRpcMessage<RoleClient>>,
    endpoint: watch::Sender<Option<reqwest::Url>>,
) {
    let mut buffer: Vec<u8> = Vec::new();
    while let Ok(Some(chunk)) = response.chunk().await {
        buffer.extend_from_slice(&chunk);
        while let Some(end) = find_event_end(&buffer) {
            let event: Vec<u8> = buffer.drain(..end).collect();
            let (kind, data) = parse_event(&String::from_utf8_lossy(&event));
            match kind.as_str() {
                "endpoint" => match base.join(data.trim()) {
                    Ok(url) if url.origin() == base.origin() => {
                        let _ = endpoint.send(Some(url));
                    }
                    _ => {
                        tracing::warn!(endpoint = %data, "an MCP server named an endpoint elsewhere; closing");
                        return;
                    }
                },
                "message" | "" => match serde_json::from_str(&data) {
                    Ok(message) => {
                        if tx.send(message).await.is_err() {
                            return;
                        }
                    }
                    Err(e) => tracing::debug!(error = %e, "an MCP event that is not JSON-RPC"),
                },
                _ => {}
            }
        }
        if buffer.len() > limit {
            tracing::warn!(
                limit,
                "an MCP server's event is larger than the limit; closing"
            );
            return;
        }
    }
}

/// Where the first complete event in `buffer` ends (after its blank line).
fn find_event_end(buffer: &[u8]) -> Option<usize> {
    let lf = buffer.windows(2).position(|w| w == b"\n\n").map(|i| i + 2);
    let crlf = buffer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| i + 4);
    match (lf, crlf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// An event's type and data (data lines joined by newlines).
fn parse_event(text: &str) -> (String, String) {
    let (mut kind, mut data) = (String::new(), Vec::new());
    for line in text.lines() {
        if let Some(v) = line.strip_prefix("event:") {
            kind = v.trim().to_string();
        } else if let Some(v) = line.strip_prefix("data:") {
            data.push(v.strip_prefix(' ').unwrap_or(v).to_string());
        }
    }
    (kind, data.join("\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_split_and_read() {
        let stream = b"event: endpoint\ndata: /message?sessionId=1\n\nevent: message\r\ndata: {\"a\":\r\ndata: 1}\r\n\r\npartial";
        let end = find_event_end(stream).unwrap();
        assert_eq!(
            parse_event(&String::from_utf8_lossy(&stream[..end])),
            ("endpoint".into(), "/message?sessionId=1".into())
        );
        let rest = &stream[end..];
        let end2 = find_event_end(rest).unwrap();
        assert_eq!(
            parse_event(&String::from_utf8_lossy(&rest[..end2])),
            ("message".into(), "{\"a\":\n1}".into())
        );
        assert!(find_event_end(&rest[end2..]).is_none());
    }
}
