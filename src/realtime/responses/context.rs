//! What a response answers and how: its context in the conversation (earlier turns, the user's
//! words, the calls and results that followed them), whether a question leans on the one
//! before it, and its parameters (the request's settings over the session's over the server's).

use super::super::answer::mcp::{Approved, McpOffers};
use super::super::answer::{Answering, ResponseParams};
use super::super::conversation::{self, ConvItem, Conversation};
use super::super::options::SessionOptions;
use super::request::{speech_of, ResponseRequest};
use crate::prompt::ChatMessage;
use crate::tools::ToolChoice;

/// What the user is asked when they have said nothing for the session's `idle_timeout_ms`.
const IDLE_NUDGE: &str = "The user has not said anything for a while. In one short sentence, \
ask whether they are still there or whether there is anything else you can help with.";

/// What a response answers: earlier turns, the user's words, and what followed them (function
/// calls made for them and their results), with the item the answer follows.
pub(super) struct Context {
    pub history: Vec<ChatMessage>,
    pub user: String,
    pub after: Vec<ChatMessage>,
    /// How many conversation items `after` holds (the answer goes after them).
    pub after_items: usize,
    pub previous_item_id: Option<String>,
}

/// The context of a response to conversation item `id` (which `pump` checked is there).
pub(super) fn context_in_conversation(
    id: &str,
    conversation: &Conversation,
    nudge: bool,
) -> Context {
    let pos = conversation
        .items
        .iter()
        .position(|i| i.id == id)
        .expect("checked by pump");
    // Function calls made for this question and their results follow it.
    let rest = &conversation.items[pos + 1..];
    let mut previous = id.to_string();
    let (mut after, mut after_items) = (Vec::new(), 0);
    if rest.iter().any(ConvItem::is_tool_item) {
        after = conversation::history(rest);
        after_items = rest.len();
        previous = rest.last().map_or(previous, |i| i.id.clone());
    }
    let user = if nudge {
        format!("[{IDLE_NUDGE}]")
    } else {
        conversation.items[pos].text.clone()
    };
    Context {
        history: conversation::history(&conversation.items[..pos]),
        user,
        after,
        after_items,
        previous_item_id: Some(previous),
    }
}

/// A response's parameters: the request's own settings over the session's over the server's.
/// `after`: what followed the user's words (function calls and their results); `conversation`:
/// the item the answer follows, `None` for an out-of-band response. The response and the
/// speculation in the pause both build theirs here, so a draft matches its response exactly.
pub(super) fn response_params(
    opts: &SessionOptions,
    r: &ResponseRequest,
    answering: &Answering,
    after: &[ChatMessage],
    conversation: Option<Option<String>>,
    mcp: (&McpOffers, Vec<Approved>),
) -> ResponseParams {
    let (mcp, approvals) = mcp;
    let mcp = &mcp.only(r.mcp_labels.as_deref());
    let mut instructions = r
        .instructions
        .clone()
        .or_else(|| Some(opts.instructions.clone()).filter(|s| !s.trim().is_empty()))
        .unwrap_or_else(|| answering.settings.instructions.clone());
    if r.nudge {
        instructions = format!("{instructions}\n\n{IDLE_NUDGE}");
    }
    let max_tokens = r
        .max_tokens
        .or(opts.max_output_tokens.map(|n| n as usize))
        .unwrap_or(answering.settings.max_tokens);
    ResponseParams {
        instructions,
        max_tokens,
        use_kb: opts.knowledge_base && !r.nudge,
        citations_event: opts.citations_event,
        metadata: r.metadata.clone(),
        conversation,
        speech: speech_of(opts, r),
        client_tools: r.tools.clone().unwrap_or_else(|| opts.tools.clone()),
        tools: r
            .tools
            .clone()
            .unwrap_or_else(|| opts.tools.clone())
            .merged(
                &answering
                    .server_tools
                    .as_ref()
                    .map(|s| s.offered_to(&answering.caller))
                    .unwrap_or_default(),
            )
            .merged(&mcp_tools(mcp)),
        mcp: mcp.clone(),
        session_id: opts.session_id.clone(),
        follows_results: after.iter().any(|m| m.tool_call_id.is_some()) || !approvals.is_empty(),
        approvals,
        tool_choice: match r
            .tool_choice
            .clone()
            .unwrap_or_else(|| opts.tool_choice.clone())
        {
            // The call this turn had to make was made and answered: now the model
            // answers from the result rather than call again forever (as the Agents SDK
            // resets a forced choice after a call). A `response.create` that sets its
            // own `tool_choice` gets exactly that.
            ToolChoice::Required | ToolChoice::Function(_)
                if r.tool_choice.is_none() && after.iter().any(|m| m.tool_call_id.is_some()) =>
            {
                ToolChoice::None
            }
            c => c,
        },
    }
}

/// The MCP tools as function tools (those whose schemas compile; listing checked them).
pub(super) fn mcp_tools(mcp: &McpOffers) -> crate::tools::ToolSet {
    if mcp.is_empty() {
        return Default::default();
    }
    crate::tools::ToolSet::new(mcp.definitions(), "mcp").unwrap_or_default()
}

/// Whether a short question leans on the one before it: it names its subject with a pronoun
/// ("how much does it cost?", "how long are they valid?"), is "and" with at most three words
/// ("and your email?"), or starts with "what about".
pub fn is_follow_up(text: &str) -> bool {
    const LEANING: &[&str] = &[
        "it", "its", "it's", "they", "them", "their", "that", "those", "this", "these", "he",
        "she", "him", "her", "his",
    ];
    let words: Vec<String> = text
        .to_lowercase()
        .split(|c: char| !(c.is_alphanumeric() || c == '\''))
        .filter(|w| !w.is_empty())
        .map(str::to_string)
        .collect();
    if words.is_empty() || words.len() > 10 {
        return false;
    }
    // "And your email?" leans on the question before; "and where is the shop?" does not.
    (words[0] == "and" && words.len() <= 4)
        || text.to_lowercase().trim_start().starts_with("what about")
        || text.to_lowercase().trim_start().starts_with("how about")
        || words.iter().any(|w| LEANING.contains(&w.as_str()))
}
