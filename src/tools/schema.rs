//! Tool definitions: read from a request, checked once, compiled into JSON Schema validators.
//!
//! A definition is OpenAI's function tool: `{"type": "function", "name", "description",
//! "parameters"}` (Realtime, Responses) or `{"type": "function", "function": {…}}` (Chat
//! Completions). Its `parameters` must be a valid JSON Schema (checked against its draft's
//! meta-schema) describing an object; references must be local (`#/$defs/…`): nothing is ever
//! fetched to compile a schema.

use std::sync::Arc;

use serde_json::{json, Map, Value};

use super::mcp::client::{McpSpec, MAX_CLIENT_SERVERS};
use super::ToolError;

/// Most tools one request or session may offer.
pub const MAX_TOOLS: usize = 128;
/// Largest `parameters` schema of one tool, as JSON bytes.
pub const MAX_SCHEMA_BYTES: usize = 64 * 1024;
/// Largest `tools` array of one request or session, as JSON bytes (compiling validators is
/// work done for the client, so it is bounded).
pub const MAX_TOOLS_BYTES: usize = 256 * 1024;
/// Longest tool description, in bytes (it goes into every prompt).
pub const MAX_DESCRIPTION_BYTES: usize = 4096;
/// Longest arguments text a call may have, in bytes.
pub const MAX_ARGUMENTS_BYTES: usize = 64 * 1024;
/// What a redacted value is replaced with.
pub const REDACTED: &str = "[redacted]";

/// One function tool, as offered.
#[derive(Debug, Clone, PartialEq)]
pub struct FunctionTool {
    pub name: String,
    pub description: String,
    /// The arguments' JSON Schema (an object schema).
    pub parameters: Value,
    /// Whether the definition asked for strict schema adherence (always enforced here).
    pub strict: bool,
}

impl FunctionTool {
    /// The Realtime API's form.
    pub fn to_view(&self) -> Value {
        json!({
            "type": "function",
            "name": self.name,
            "description": self.description,
            "parameters": self.parameters,
        })
    }

    /// The Chat Completions form (what an OpenAI-compatible endpoint is sent).
    pub fn to_chat(&self) -> Value {
        json!({
            "type": "function",
            "function": {
                "name": self.name,
                "description": self.description,
                "parameters": self.parameters,
                "strict": self.strict,
            }
        })
    }
}

struct Compiled {
    tool: FunctionTool,
    validator: jsonschema::Validator,
}

/// The tools offered to one request or session, each with its compiled validator. Cheap to
/// clone (shared).
#[derive(Clone, Default)]
pub struct ToolSet {
    tools: Arc<Vec<Compiled>>,
}

impl std::fmt::Debug for ToolSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.tools.iter().map(|c| &c.tool.name))
            .finish()
    }
}

impl PartialEq for ToolSet {
    fn eq(&self, other: &Self) -> bool {
        self.tools.len() == other.tools.len()
            && self
                .tools
                .iter()
                .zip(other.tools.iter())
                .all(|(a, b)| a.tool == b.tool)
    }
}

impl ToolSet {
    /// Reads and checks a `tools` array of function tools (`param` names it in errors).
    pub fn parse(value: &Value, param: &str) -> Result<Self, ToolError> {
        Self::parse_all(value, param, false).map(|(set, _)| set)
    }

    /// Reads a realtime session's `tools`: function tools, and MCP servers (`{"type": "mcp"}`).
    pub fn parse_with_mcp(value: &Value, param: &str) -> Result<(Self, Vec<McpSpec>), ToolError> {
        Self::parse_all(value, param, true)
    }

    fn parse_all(value: &Value, param: &str, mcp: bool) -> Result<(Self, Vec<McpSpec>), ToolError> {
        let list = value.as_array().ok_or_else(|| ToolError::InvalidTool {
            param: param.to_string(),
            message: "must be an array".into(),
        })?;
        if list.len() > MAX_TOOLS {
            return Err(ToolError::InvalidTool {
                param: param.to_string(),
                message: format!("{} tools; the limit is {MAX_TOOLS}", list.len()),
            });
        }
        let size = value.to_string().len();
        if size > MAX_TOOLS_BYTES {
            return Err(ToolError::InvalidTool {
                param: param.to_string(),
                message: format!("the tools are {size} bytes; the limit is {MAX_TOOLS_BYTES}"),
            });
        }
        let mut tools = Vec::with_capacity(list.len());
        let mut servers: Vec<McpSpec> = Vec::new();
        for (i, def) in list.iter().enumerate() {
            let at = format!("{param}[{i}]");
            if mcp && def.get("type").and_then(Value::as_str) == Some("mcp") {
                let spec = McpSpec::parse(def, &at)?;
                if servers.iter().any(|s| s.server_label == spec.server_label) {
                    return Err(ToolError::InvalidTool {
                        param: format!("{at}.server_label"),
                        message: format!("`{}` is used twice", spec.server_label),
                    });
                }
                if servers.len() == MAX_CLIENT_SERVERS {
                    return Err(ToolError::InvalidTool {
                        param: at,
                        message: format!("at most {MAX_CLIENT_SERVERS} MCP servers"),
                    });
                }
                servers.push(spec);
                continue;
            }
            let (tool, nested) = parse_one(def, &at)?;
            tools.push((tool, format!("{at}{nested}")));
        }
        Ok((Self::compile_all(tools)?, servers))
    }

    /// Compiles definitions already read (from the server's configuration, say).
    pub fn new(tools: Vec<FunctionTool>, param: &str) -> Result<Self, ToolError> {
        Self::compile_all(
            tools
                .into_iter()
                .enumerate()
                .map(|(i, t)| (t, format!("{param}[{i}]")))
                .collect(),
        )
    }

    /// Compiles each tool; the string is where it was defined, for errors.
    pub(crate) fn compile_all(tools: Vec<(FunctionTool, String)>) -> Result<Self, ToolError> {
        let mut compiled: Vec<Compiled> = Vec::with_capacity(tools.len());
        for (tool, at) in tools {
            if compiled.iter().any(|c| c.tool.name == tool.name) {
                return Err(ToolError::InvalidTool {
                    param: format!("{at}.name"),
                    message: format!("`{}` is defined twice", tool.name),
                });
            }
            let validator = compile(&tool.parameters, &format!("{at}.parameters"))?;
            compiled.push(Compiled { tool, validator });
        }
        Ok(ToolSet {
            tools: Arc::new(compiled),
        })
    }

    /// Both sets' tools; `extra`'s are skipped where a name is already taken.
    pub fn merged(&self, extra: &ToolSet) -> ToolSet {
        if extra.is_empty() {
            return self.clone();
        }
        if self.is_empty() {
            return extra.clone();
        }
        let mut all: Vec<FunctionTool> = self.iter().cloned().collect();
        for t in extra.iter() {
            if !all.iter().any(|a| a.name == t.name) {
                all.push(t.clone());
            }
        }
        ToolSet::new(all, "tools").unwrap_or_else(|_| self.clone())
    }

    pub fn is_empty(&self) -> bool {
        self.tools.is_empty()
    }

    pub fn len(&self) -> usize {
        self.tools.len()
    }

    pub fn iter(&self) -> impl Iterator<Item = &FunctionTool> {
        self.tools.iter().map(|c| &c.tool)
    }

    pub fn get(&self, name: &str) -> Option<&FunctionTool> {
        self.tools
            .iter()
            .find(|c| c.tool.name == name)
            .map(|c| &c.tool)
    }

    /// Only the tools whose names pass `keep`.
    pub fn filtered(&self, keep: impl Fn(&str) -> bool) -> ToolSet {
        let tools: Vec<FunctionTool> = self.iter().filter(|t| keep(&t.name)).cloned().collect();
        if tools.len() == self.len() {
            return self.clone();
        }
        ToolSet::new(tools, "tools").unwrap_or_default()
    }

    /// Checks a call's arguments: a JSON object that satisfies the tool's schema. The error
    /// lists what is wrong (at most three problems), for the model's retry.
    pub fn validate(&self, name: &str, arguments: &str) -> Result<Value, ToolError> {
        let compiled = self
            .tools
            .iter()
            .find(|c| c.tool.name == name)
            .ok_or_else(|| ToolError::UnknownTool {
                name: name.to_string(),
            })?;
        let fail = |reason: String| ToolError::InvalidArguments {
            name: name.to_string(),
            reason,
        };
        if arguments.len() > MAX_ARGUMENTS_BYTES {
            return Err(fail(format!(
                "the arguments are {} bytes; the limit is {MAX_ARGUMENTS_BYTES}",
                arguments.len()
            )));
        }
        let value: Value = serde_json::from_str(arguments)
            .map_err(|e| fail(format!("the arguments are not JSON: {e}")))?;
        if !value.is_object() {
            return Err(fail("the arguments must be a JSON object".into()));
        }
        let problems: Vec<String> = compiled
            .validator
            .iter_errors(&value)
            .take(3)
            .map(|e| {
                let at = e.instance_path().to_string();
                let at = if at.is_empty() { "/".to_string() } else { at };
                format!("at {at}: {}", e.masked())
            })
            .collect();
        if problems.is_empty() {
            Ok(value)
        } else {
            Err(fail(problems.join("; ")))
        }
    }

    /// `arguments` with every part the tool's schema marks `"x-sensitive": true` replaced by
    /// [`REDACTED`] (the whole value when the schema itself is marked, or when the arguments
    /// are not JSON and the schema has any sensitive part).
    pub fn redact(&self, name: &str, arguments: &str) -> String {
        let Some(tool) = self.get(name) else {
            return arguments.to_string();
        };
        if !has_sensitive(&tool.parameters) {
            return arguments.to_string();
        }
        match serde_json::from_str::<Value>(arguments) {
            Ok(v) => redact(&tool.parameters, &v).to_string(),
            Err(_) => REDACTED.to_string(),
        }
    }

    /// The Realtime API's `tools` list.
    pub fn to_view(&self) -> Value {
        Value::Array(self.iter().map(FunctionTool::to_view).collect())
    }
}

/// Reads one definition, in either shape; also returns where the function's fields are
/// (`".function"` in the Chat Completions shape).
fn parse_one(def: &Value, param: &str) -> Result<(FunctionTool, &'static str), ToolError> {
    let bad = |at: &str, message: String| ToolError::InvalidTool {
        param: format!("{param}{at}"),
        message,
    };
    let obj = def
        .as_object()
        .ok_or_else(|| bad("", "must be an object".into()))?;
    match obj.get("type").and_then(Value::as_str) {
        Some("function") | None => {}
        Some(other) => {
            return Err(bad(
                ".type",
                format!("`{other}` tools are not supported (only \"function\")"),
            ))
        }
    }
    // Chat Completions nests the function.
    let (f, at): (&Map<String, Value>, &str) = match obj.get("function") {
        Some(Value::Object(inner)) => (inner, ".function"),
        Some(_) => return Err(bad(".function", "must be an object".into())),
        None => (obj, ""),
    };
    let name = f
        .get("name")
        .and_then(Value::as_str)
        .ok_or_else(|| bad(&format!("{at}.name"), "is required (a string)".into()))?;
    let valid_name = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if !valid_name {
        return Err(bad(
            &format!("{at}.name"),
            "must be 1-64 letters, digits, underscores or dashes".into(),
        ));
    }
    let description = match f.get("description") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) if s.len() <= MAX_DESCRIPTION_BYTES && !s.contains('\0') => {
            s.clone()
        }
        Some(Value::String(_)) => {
            return Err(bad(
                &format!("{at}.description"),
                format!("must be at most {MAX_DESCRIPTION_BYTES} bytes, without NUL characters"),
            ))
        }
        Some(_) => return Err(bad(&format!("{at}.description"), "must be a string".into())),
    };
    let parameters = match f.get("parameters") {
        None | Some(Value::Null) => json!({"type": "object", "properties": {}}),
        Some(p) => p.clone(),
    };
    let strict = f.get("strict").and_then(Value::as_bool).unwrap_or(false);
    Ok((
        FunctionTool {
            name: name.to_string(),
            description,
            parameters,
            strict,
        },
        at,
    ))
}

/// Checks a `parameters` schema and compiles its validator.
fn compile(schema: &Value, param: &str) -> Result<jsonschema::Validator, ToolError> {
    let bad = |message: String| ToolError::InvalidTool {
        param: param.to_string(),
        message,
    };
    let obj = schema
        .as_object()
        .ok_or_else(|| bad("must be a JSON Schema object".into()))?;
    let size = schema.to_string().len();
    if size > MAX_SCHEMA_BYTES {
        return Err(bad(format!(
            "is {size} bytes; the limit is {MAX_SCHEMA_BYTES}"
        )));
    }
    match obj.get("type") {
        Some(Value::String(t)) if t == "object" => {}
        None if obj.contains_key("properties") => {}
        _ => return Err(bad(
            "must describe an object (\"type\": \"object\"): a call's arguments are a JSON object"
                .into(),
        )),
    }
    if let Err(e) = jsonschema::meta::validate(schema) {
        return Err(bad(format!("is not a valid JSON Schema: {e}")));
    }
    jsonschema::validator_for(schema).map_err(|e| {
        bad(format!(
            "cannot be compiled: {e} (references must be local)"
        ))
    })
}

fn is_sensitive(schema: &Value) -> bool {
    schema.get("x-sensitive").and_then(Value::as_bool) == Some(true)
}

fn has_sensitive(schema: &Value) -> bool {
    match schema {
        Value::Object(o) => is_sensitive(schema) || o.values().any(has_sensitive),
        Value::Array(a) => a.iter().any(has_sensitive),
        _ => false,
    }
}

/// `value` with the parts `schema` marks sensitive replaced.
fn redact(schema: &Value, value: &Value) -> Value {
    if is_sensitive(schema) {
        return Value::String(REDACTED.into());
    }
    match value {
        Value::Object(o) => {
            let props = schema.get("properties");
            let extra = schema.get("additionalProperties");
            Value::Object(
                o.iter()
                    .map(|(k, v)| {
                        let sub = props.and_then(|p| p.get(k)).or(extra);
                        let v = match sub {
                            Some(s) => redact(s, v),
                            None => v.clone(),
                        };
                        (k.clone(), v)
                    })
                    .collect(),
            )
        }
        Value::Array(a) => match schema.get("items") {
            Some(items) => Value::Array(a.iter().map(|v| redact(items, v)).collect()),
            None => value.clone(),
        },
        _ => value.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn booking() -> Value {
        json!([{
            "type": "function",
            "name": "book_table",
            "description": "Books a table.",
            "parameters": {
                "type": "object",
                "properties": {
                    "people": {"type": "integer", "minimum": 1, "maximum": 12},
                    "time": {"type": "string", "pattern": "^[0-2][0-9]:[0-5][0-9]$"},
                    "phone": {"type": "string", "x-sensitive": true}
                },
                "required": ["people", "time"],
                "additionalProperties": false
            }
        }])
    }

    #[test]
    fn arguments_are_checked_against_the_schema() {
        let tools = ToolSet::parse(&booking(), "tools").unwrap();
        let ok = tools
            .validate("book_table", r#"{"people": 4, "time": "19:30"}"#)
            .unwrap();
        assert_eq!(ok["people"], 4);
        for (args, expect) in [
            (r#"{"people": 40, "time": "19:30"}"#, "/people"),
            (r#"{"people": 2}"#, "time"),
            (r#"{"people": 2, "time": "7pm"}"#, "/time"),
            (r#"{"people": 2, "time": "19:30", "x": 1}"#, "x"),
            (r#"[1]"#, "object"),
            (r#"{"people": 2,"#, "not JSON"),
        ] {
            let err = tools.validate("book_table", args).unwrap_err();
            assert_eq!(err.code(), "invalid_tool_arguments");
            assert!(err.to_string().contains(expect), "{args}: {err}");
        }
        assert!(matches!(
            tools.validate("cancel", "{}"),
            Err(ToolError::UnknownTool { .. })
        ));
    }

    #[test]
    fn bad_definitions_are_typed_errors_naming_the_parameter() {
        for (def, param) in [
            (json!({"type": "function"}), "tools[0].name"),
            (
                json!({"type": "function", "name": "has space"}),
                "tools[0].name",
            ),
            (json!({"type": "mcp", "name": "x"}), "tools[0].type"),
            (
                json!({"type": "function", "name": "f", "parameters": {"type": "string"}}),
                "tools[0].parameters",
            ),
            (
                json!({"type": "function", "name": "f", "parameters": {"type": "object", "properties": {"a": {"type": "bogus"}}}}),
                "tools[0].parameters",
            ),
            (
                json!({"type": "function", "name": "f", "parameters": {"type": "object", "properties": {"a": {"$ref": "https://example.com/s.json"}}}}),
                "tools[0].parameters",
            ),
            (
                json!({"type": "function", "name": "f", "parameters": {"type": "object", "properties": {"a": {"type": "string", "pattern": "(("}}}}),
                "tools[0].parameters",
            ),
        ] {
            let err = ToolSet::parse(&json!([def]), "tools").unwrap_err();
            assert_eq!(err.code(), "invalid_tool");
            assert_eq!(err.param(), Some(param), "{err}");
        }
        let twice = json!([{"name": "f"}, {"name": "f"}]);
        assert!(ToolSet::parse(&twice, "tools")
            .unwrap_err()
            .to_string()
            .contains("twice"));
        let many = Value::Array(
            (0..=MAX_TOOLS)
                .map(|i| json!({"name": format!("f{i}")}))
                .collect(),
        );
        assert!(ToolSet::parse(&many, "tools").is_err());
        let big = json!({"type": "object", "description": "x".repeat(60_000)});
        let heavy = Value::Array(
            (0..5)
                .map(|i| json!({"name": format!("f{i}"), "parameters": big}))
                .collect(),
        );
        assert!(ToolSet::parse(&heavy, "tools")
            .unwrap_err()
            .to_string()
            .contains("the limit is"));
    }

    #[test]
    fn chat_completions_definitions_are_read_too() {
        let tools = ToolSet::parse(
            &json!([{"type": "function", "function": {"name": "now", "strict": true}}]),
            "tools",
        )
        .unwrap();
        let now = tools.get("now").unwrap();
        assert!(now.strict);
        assert_eq!(now.parameters["type"], "object");
        assert!(tools.validate("now", "{}").is_ok());
    }

    #[test]
    fn sensitive_parts_are_redacted() {
        let tools = ToolSet::parse(&booking(), "tools").unwrap();
        let shown = tools.redact(
            "book_table",
            r#"{"people": 2, "time": "19:30", "phone": "+1 555 0100"}"#,
        );
        assert!(!shown.contains("555"), "{shown}");
        assert!(shown.contains(REDACTED) && shown.contains("19:30"));
        assert_eq!(tools.redact("book_table", "{not json"), REDACTED);
        // Validation errors never echo the value.
        let err = tools
            .validate(
                "book_table",
                r#"{"people": 2, "time": "19:30", "phone": 5550100}"#,
            )
            .unwrap_err();
        assert!(!err.to_string().contains("5550100"), "{err}");
    }

    #[test]
    fn tool_choice_forms() {
        let tools = ToolSet::parse(&booking(), "tools").unwrap();
        for (v, want) in [
            (json!("auto"), ToolChoice::Auto),
            (json!("none"), ToolChoice::None),
            (json!("required"), ToolChoice::Required),
            (
                json!({"type": "function", "name": "book_table"}),
                ToolChoice::Function("book_table".into()),
            ),
            (
                json!({"type": "function", "function": {"name": "book_table"}}),
                ToolChoice::Function("book_table".into()),
            ),
        ] {
            let c = ToolChoice::parse(&v, "tool_choice").unwrap();
            assert_eq!(c, want);
            c.check(&tools, "tool_choice").unwrap();
        }
        assert!(ToolChoice::parse(&json!("sometimes"), "tool_choice").is_err());
        let missing = ToolChoice::Function("nope".into());
        assert_eq!(
            missing.check(&tools, "tool_choice").unwrap_err().code(),
            "invalid_tool_choice"
        );
        assert!(ToolChoice::Required
            .check(&ToolSet::default(), "tool_choice")
            .is_err());
    }

    use super::super::ToolChoice;
}
