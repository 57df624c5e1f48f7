//! `response.create`, read and checked: what a response answers (the conversation, or its own
//! `input`), its instructions, limits, metadata, modality, voice and tools; each mistake is a
//! typed `invalid_response_config` error naming the field.

use serde_json::{Map, Value};

use super::super::conversation::{self, parse_item};
use super::super::options::SessionOptions;
use super::super::speaker::SpeechParams;
use crate::prompt::ChatMessage;
use crate::protocol::session::{check_model_text, tool_error, MAX_INSTRUCTIONS_BYTES};
use crate::protocol::ProtocolError;
use crate::tools::{ToolChoice, ToolSet};

/// `metadata`: at most 16 pairs, keys up to 64 characters, values up to 512 (as OpenAI).
const MAX_METADATA_PAIRS: usize = 16;

/// A `response.create`, read and checked.
#[derive(Debug, Clone, Default)]
pub(super) struct ResponseRequest {
    pub event_id: Option<String>,
    /// `conversation: "none"`: the answer stays out of the conversation.
    pub out_of_band: bool,
    /// `input`: the context to answer instead of the conversation.
    pub input: Option<Vec<InputItem>>,
    pub metadata: Option<Map<String, Value>>,
    pub instructions: Option<String>,
    pub max_tokens: Option<usize>,
    /// Ask whether the person is still there (the idle timeout), rather than answer.
    pub nudge: bool,
    /// `output_modalities`: `Some(true)` to speak, `Some(false)` for text.
    pub speak: Option<bool>,
    /// `audio.output.voice`.
    pub voice: Option<String>,
    /// `audio.output.format`.
    pub output_format: Option<crate::protocol::InputFormat>,
    /// `tools`: this response's own (instead of the session's).
    pub tools: Option<ToolSet>,
    /// `tool_choice`: this response's own.
    pub tool_choice: Option<ToolChoice>,
    /// With its own `tools`: the MCP servers (of those attached to the session) it offers.
    pub mcp_labels: Option<Vec<String>>,
}

/// How a response is spoken: the session's settings with the response's own over them; `None`
/// for text (asked for, or the server has no voice).
pub(super) fn speech_of(opts: &SessionOptions, r: &ResponseRequest) -> Option<SpeechParams> {
    let speak = r.speak.unwrap_or(opts.speech.is_some()) && !opts.voices.is_empty();
    if !speak {
        return None;
    }
    let mut params = opts.speech.clone().unwrap_or(SpeechParams {
        format: crate::protocol::InputFormat::Pcm16 { rate: 24_000 },
        voice: opts.voices[0].clone(),
        speed: 1.0,
        binary: false,
    });
    if let Some(v) = &r.voice {
        params.voice = v.clone();
    }
    if let Some(f) = r.output_format {
        params.format = f;
    }
    Some(params)
}

/// One item of a response's `input`.
#[derive(Debug, Clone)]
pub(super) enum InputItem {
    Message(ChatMessage),
    /// An item of the conversation, by id.
    Reference(String),
}

fn bad(param: &str, message: impl Into<String>, event_id: &Option<String>) -> ProtocolError {
    ProtocolError::new("invalid_response_config", message)
        .param(param)
        .event(event_id.clone())
}

impl ResponseRequest {
    /// Reads the `response` object of a `response.create` (absent: all defaults).
    pub(super) fn parse(
        response: Option<&Value>,
        event_id: Option<String>,
        voices: &[String],
    ) -> Result<Self, ProtocolError> {
        let mut r = ResponseRequest {
            event_id: event_id.clone(),
            ..Default::default()
        };
        let Some(v) = response else { return Ok(r) };
        let obj = v
            .as_object()
            .ok_or_else(|| bad("response", "`response` must be an object", &event_id))?;
        r.read_conversation(obj)?;
        r.read_instructions(obj)?;
        r.read_max_tokens(obj)?;
        r.read_metadata(obj)?;
        r.read_input(obj)?;
        r.read_output(obj, voices)?;
        r.read_tools(obj)?;
        Ok(r)
    }

    /// `conversation`: `auto`, or `none` for an out-of-band answer.
    fn read_conversation(&mut self, obj: &Map<String, Value>) -> Result<(), ProtocolError> {
        match obj.get("conversation") {
            None | Some(Value::Null) => {}
            Some(Value::String(c)) if c == "auto" => {}
            Some(Value::String(c)) if c == "none" => self.out_of_band = true,
            Some(_) => {
                return Err(bad(
                    "response.conversation",
                    "must be \"auto\" or \"none\"",
                    &self.event_id,
                ))
            }
        }
        Ok(())
    }

    /// `instructions` for this response.
    fn read_instructions(&mut self, obj: &Map<String, Value>) -> Result<(), ProtocolError> {
        if let Some(text) = obj.get("instructions").filter(|v| !v.is_null()) {
            let text = text
                .as_str()
                .ok_or_else(|| bad("response.instructions", "must be a string", &self.event_id))?;
            check_model_text(text, MAX_INSTRUCTIONS_BYTES, "response.instructions")
                .map_err(|e| e.event(self.event_id.clone()))?;
            if !text.trim().is_empty() {
                self.instructions = Some(text.to_string());
            }
        }
        Ok(())
    }

    /// `max_output_tokens` (1-4096, or `inf`).
    fn read_max_tokens(&mut self, obj: &Map<String, Value>) -> Result<(), ProtocolError> {
        match obj
            .get("max_output_tokens")
            .or(obj.get("max_response_output_tokens"))
        {
            None | Some(Value::Null) => {}
            Some(Value::String(s)) if s == "inf" => {}
            Some(v) => match v.as_u64() {
                Some(n @ 1..=4096) => self.max_tokens = Some(n as usize),
                _ => {
                    return Err(bad(
                        "response.max_output_tokens",
                        "must be an integer from 1 to 4096, or \"inf\"",
                        &self.event_id,
                    ))
                }
            },
        }
        Ok(())
    }

    /// `metadata`: at most 16 short string pairs, returned on the response.
    fn read_metadata(&mut self, obj: &Map<String, Value>) -> Result<(), ProtocolError> {
        if let Some(m) = obj.get("metadata").filter(|v| !v.is_null()) {
            let map = m.as_object().ok_or_else(|| {
                bad(
                    "response.metadata",
                    "must be an object of strings",
                    &self.event_id,
                )
            })?;
            if map.len() > MAX_METADATA_PAIRS {
                return Err(bad(
                    "response.metadata",
                    format!("may hold at most {MAX_METADATA_PAIRS} pairs"),
                    &self.event_id,
                ));
            }
            for (k, v) in map {
                let ok =
                    k.chars().count() <= 64 && v.as_str().is_some_and(|s| s.chars().count() <= 512);
                if !ok {
                    return Err(bad(
                        "response.metadata",
                        "keys must be at most 64 characters and values strings of at most 512",
                        &self.event_id,
                    ));
                }
            }
            self.metadata = Some(map.clone());
        }
        Ok(())
    }

    /// `input`: messages and item references to answer instead of the conversation.
    fn read_input(&mut self, obj: &Map<String, Value>) -> Result<(), ProtocolError> {
        if let Some(list) = obj.get("input").filter(|v| !v.is_null()) {
            let list = list.as_array().ok_or_else(|| {
                bad(
                    "response.input",
                    "must be an array of items",
                    &self.event_id,
                )
            })?;
            if list.len() > conversation::MAX_ITEMS {
                return Err(bad(
                    "response.input",
                    format!("may hold at most {} items", conversation::MAX_ITEMS),
                    &self.event_id,
                ));
            }
            let mut items = Vec::with_capacity(list.len());
            for (i, item) in list.iter().enumerate() {
                let param = format!("response.input[{i}]");
                if item.get("type").and_then(Value::as_str) == Some("item_reference") {
                    let id = item.get("id").and_then(Value::as_str).ok_or_else(|| {
                        bad(&param, "an item_reference needs `id`", &self.event_id)
                    })?;
                    items.push(InputItem::Reference(id.to_string()));
                } else {
                    let (message, _) =
                        parse_item(item).map_err(|m| bad(&param, m, &self.event_id))?;
                    items.push(InputItem::Message(message));
                }
            }
            self.input = Some(items);
        }
        Ok(())
    }

    /// `output_modalities`, and the voice and format of `audio.output`.
    fn read_output(
        &mut self,
        obj: &Map<String, Value>,
        voices: &[String],
    ) -> Result<(), ProtocolError> {
        if let Some(m) = obj.get("output_modalities").filter(|v| !v.is_null()) {
            let list = m.as_array().ok_or_else(|| {
                bad(
                    "response.output_modalities",
                    "must be an array",
                    &self.event_id,
                )
            })?;
            let mut speak = false;
            for m in list {
                match m.as_str() {
                    Some("audio") => speak = true,
                    Some("text") => {}
                    _ => {
                        return Err(bad(
                            "response.output_modalities",
                            "may contain only \"text\" and \"audio\"",
                            &self.event_id,
                        ))
                    }
                }
            }
            self.speak = Some(speak);
        }
        if let Some(output) = obj
            .get("audio")
            .and_then(|a| a.get("output"))
            .filter(|v| !v.is_null())
        {
            if let Some(v) = output.get("voice") {
                self.voice = Some(
                    crate::protocol::session::check_voice(v, voices, "response.audio.output.voice")
                        .map_err(|e| e.event(self.event_id.clone()))?,
                );
            }
            if let Some(v) = output.get("format") {
                self.output_format = Some(
                    crate::protocol::session::parse_format(v, "response.audio.output.format")
                        .map_err(|e| e.event(self.event_id.clone()))?,
                );
            }
        }
        Ok(())
    }

    /// `tools` and `tool_choice` for this response.
    fn read_tools(&mut self, obj: &Map<String, Value>) -> Result<(), ProtocolError> {
        if let Some(t) = obj.get("tools").filter(|v| !v.is_null()) {
            let (tools, mcp) = ToolSet::parse_with_mcp(t, "response.tools")
                .map_err(|e| tool_error(e).event(self.event_id.clone()))?;
            self.tools = Some(tools);
            self.mcp_labels = Some(mcp.into_iter().map(|m| m.server_label).collect());
        }
        if let Some(c) = obj.get("tool_choice").filter(|v| !v.is_null()) {
            self.tool_choice = Some(
                ToolChoice::parse(c, "response.tool_choice")
                    .map_err(|e| tool_error(e).event(self.event_id.clone()))?,
            );
        }
        Ok(())
    }
}
