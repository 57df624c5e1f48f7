//! Tools and calls in a prompt, for a model whose chat template does not know them.
//!
//! The convention is the one most open chat models with tool support are tuned on (Hermes,
//! Qwen, SmolLM3): the system message lists the functions as JSON inside `<tools>` … `</tools>`,
//! and a call is a JSON object `{"name": …, "arguments": {…}}` between `<tool_call>` and
//! `</tool_call>`, and a result comes back in a `tool` message inside `<tool_response>` tags. A template that does know tools
//! (it reads `tools`) renders them its own way instead: see [`crate::llm::template`].

use serde_json::{json, Value};

use crate::prompt::{ChatMessage, Role};
use crate::tools::{FunctionTool, ToolCall, ToolChoice, ToolSet};

/// The tag that opens a call.
pub const CALL_OPEN: &str = "<tool_call>";
/// The tag that closes a call.
pub const CALL_CLOSE: &str = "</tool_call>";

/// A function as the system message lists it (the Hugging Face `tools` shape).
pub fn hf_tool(tool: &FunctionTool) -> Value {
    json!({
        "type": "function",
        "function": {
            "name": tool.name,
            "description": tool.description,
            "parameters": tool.parameters,
        }
    })
}

/// The system-message block that offers `tools`.
pub fn tools_block(tools: &ToolSet, choice: &ToolChoice) -> String {
    let mut s = String::from(
        "You can call functions. Their signatures are inside <tools></tools>:\n<tools>\n",
    );
    for t in tools.iter() {
        s.push_str(&hf_tool(t).to_string());
        s.push('\n');
    }
    s.push_str("</tools>\n");
    s.push_str(
        "To call a function, reply with only a JSON object with its name and arguments inside \
         <tool_call></tool_call> tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": \
         <args-json-object>}\n</tool_call>\n",
    );
    match choice {
        ToolChoice::Auto => s.push_str(
            "Call a function when the request needs one; otherwise answer in plain words. \
             When a function's result is given to you, answer from it.",
        ),
        ToolChoice::Required => s.push_str("Call one of the functions now."),
        ToolChoice::Function(name) => s.push_str(&format!("Call `{name}` now.")),
        ToolChoice::None => {}
    }
    s
}

/// A call as the model writes it (without the closing tag's newline).
pub fn render_call(call: &ToolCall) -> String {
    let args: Value =
        serde_json::from_str(&call.arguments).unwrap_or(Value::String(call.arguments.clone()));
    format!(
        "{CALL_OPEN}\n{}\n{CALL_CLOSE}",
        json!({"name": call.name, "arguments": args})
    )
}

/// The text the model is given before it writes a call's name (`Some(name)`: the name is
/// forced too, and the text ends where the arguments begin).
pub fn call_prefix(name: Option<&str>) -> String {
    match name {
        None => format!("{CALL_OPEN}\n{{\"name\": "),
        Some(name) => format!("{CALL_OPEN}\n{{\"name\": {}, \"arguments\": ", json!(name)),
    }
}

/// `messages` with tools, calls and results written as text, for a chat template that knows
/// only roles and contents: the tools block goes at the end of the first system message (one is
/// added when there is none), an assistant's calls after its words, a result in a `tool`
/// message between [`RESULT_OPEN`] and [`RESULT_CLOSE`]. (The embedded model is kept from
/// echoing those tags in its answer: see [`crate::llm::local`].)
pub fn inline(
    messages: &[ChatMessage],
    offered: Option<(&ToolSet, &ToolChoice)>,
) -> Vec<ChatMessage> {
    let mut out: Vec<ChatMessage> = messages
        .iter()
        .map(|m| {
            let mut content = m.content.clone();
            for call in &m.tool_calls {
                if !content.is_empty() {
                    content.push('\n');
                }
                content.push_str(&render_call(call));
            }
            if m.role == Role::Tool {
                content = format!(
                    "{RESULT_OPEN}\n{}\n{RESULT_CLOSE}",
                    readable_result(m.content.trim())
                );
            }
            ChatMessage::new(m.role, content)
        })
        .collect();
    if let Some((tools, choice)) = offered.filter(|(t, c)| !t.is_empty() && **c != ToolChoice::None)
    {
        let block = tools_block(tools, choice);
        match out.iter_mut().find(|m| m.role == Role::System) {
            Some(sys) => {
                sys.content.push_str("\n\n");
                sys.content.push_str(&block);
            }
            None => out.insert(0, ChatMessage::new(Role::System, block)),
        }
    }
    out
}

/// A result as the model reads it: MCP content (`{"type": "text", "text": …}`, or a list of such
/// parts, as SDKs pass an MCP tool's result on) becomes its text, and any other JSON object its
/// fields in plain words (`eta: Friday`), so a small model repeats words a voice can say rather
/// than JSON; anything else is left as it is.
pub fn readable_result(output: &str) -> String {
    let Ok(v) = serde_json::from_str::<serde_json::Value>(output) else {
        return output.to_string();
    };
    let text_of = |p: &serde_json::Value| {
        (p.get("type").and_then(|t| t.as_str()) == Some("text"))
            .then(|| p.get("text").and_then(|t| t.as_str()).map(str::to_string))
            .flatten()
    };
    let parts: Option<Vec<String>> = match &v {
        serde_json::Value::Array(list) if !list.is_empty() => list.iter().map(text_of).collect(),
        serde_json::Value::Object(_) => text_of(&v).map(|t| vec![t]),
        _ => None,
    };
    match (parts, &v) {
        (Some(p), _) => p.join("\n"),
        // Any other object reads as its fields, in words a voice can say.
        (None, serde_json::Value::Object(_)) => plain(&v),
        (None, _) => output.to_string(),
    }
}

/// A JSON value in plain words: `{"eta": "Friday", "booked": true}` → `eta: Friday, booked: yes`.
fn plain(v: &serde_json::Value) -> String {
    use serde_json::Value;
    match v {
        Value::Null => "none".into(),
        Value::Bool(b) => if *b { "yes" } else { "no" }.into(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => s.clone(),
        Value::Array(list) => list.iter().map(plain).collect::<Vec<_>>().join(", "),
        Value::Object(map) => map
            .iter()
            .map(|(k, v)| format!("{}: {}", k.replace('_', " "), plain(v)))
            .collect::<Vec<_>>()
            .join(", "),
    }
}

/// The tag that opens a function's result.
pub const RESULT_OPEN: &str = "<tool_response>";
/// The tag that closes a function's result.
pub const RESULT_CLOSE: &str = "</tool_response>";

/// What follows the name before the arguments.
pub const ARGUMENTS_KEY: &str = ", \"arguments\": ";

/// Calls written in plain text (a remote model that ignores `tools` but follows the
/// convention, or a local one answering freely): each `<tool_call>` block's name and
/// arguments.
pub fn parse_calls(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find(CALL_OPEN) {
        let body = &rest[start + CALL_OPEN.len()..];
        let end = body.find(CALL_CLOSE).unwrap_or(body.len());
        if let Ok(v) = serde_json::from_str::<Value>(body[..end].trim()) {
            if let Some(name) = v.get("name").and_then(Value::as_str) {
                let args = v.get("arguments").cloned().unwrap_or_else(|| json!({}));
                let args = match args {
                    Value::String(s) => s,
                    other => other.to_string(),
                };
                out.push((name.to_string(), args));
            }
        }
        rest = &body[end..];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_round_trip_through_the_text_convention() {
        let call = ToolCall {
            id: "call_1".into(),
            name: "book_table".into(),
            arguments: r#"{"people":2}"#.into(),
        };
        let text = render_call(&call);
        assert!(text.starts_with(CALL_OPEN) && text.ends_with(CALL_CLOSE));
        assert_eq!(
            parse_calls(&format!("ok {text} and {text}")),
            vec![
                ("book_table".to_string(), r#"{"people":2}"#.to_string()),
                ("book_table".to_string(), r#"{"people":2}"#.to_string())
            ]
        );
        assert!(parse_calls("<tool_call>\n{broken").is_empty());
        assert!(call_prefix(Some("f")).ends_with("\"arguments\": "));
    }

    #[test]
    fn mcp_content_is_read_as_its_text() {
        assert_eq!(
            readable_result(r#"{"type": "text", "text": "Order AB1234 has shipped."}"#),
            "Order AB1234 has shipped."
        );
        assert_eq!(
            readable_result(r#"[{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]"#),
            "a\nb"
        );
        for other in ["plain words", r#"[{"type": "image"}]"#, "42"] {
            assert_eq!(readable_result(other), other);
        }
        // Other objects read as their fields, in words a voice can say.
        assert_eq!(
            readable_result(r#"{"booked": true, "table": 12, "eta_day": "Friday"}"#),
            "booked: yes, table: 12, eta day: Friday"
        );
    }
}
