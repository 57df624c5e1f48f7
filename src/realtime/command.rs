//! The client's conversation and response requests, as the audio stage passes them to the hub.

/// Conversation and response requests from the client (they reach the hub through the audio
/// stage, in order with the audio and commits sent before them).
#[derive(Debug)]
pub enum Command {
    CreateResponse {
        event_id: Option<String>,
        response: Option<serde_json::Value>,
    },
    Cancel {
        event_id: Option<String>,
    },
    CreateItem {
        event_id: Option<String>,
        item: serde_json::Value,
        previous_item_id: Option<String>,
    },
    Truncate {
        event_id: Option<String>,
        item_id: String,
        audio_end_ms: u64,
    },
    Retrieve {
        event_id: Option<String>,
        item_id: String,
    },
    Delete {
        event_id: Option<String>,
        item_id: String,
    },
    /// A `session.update` changed the MCP servers attached to the session.
    AttachMcp {
        servers: Vec<crate::tools::mcp::client::McpSpec>,
    },
}
