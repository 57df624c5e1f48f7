//! Constrained decoding for the embedded model's tool calls: at each step, the tokens that
//! cannot continue a valid call are masked out before sampling, so even a 135M model writes only
//! calls whose arguments satisfy the tool's JSON Schema.
//!
//! The grammars are built by `llguidance` from JSON Schemas, over the model's own vocabulary
//! (each token's bytes, read from the GGUF byte-level BPE vocabulary). A call is written in the
//! `<tool_call>` convention ([`crate::llm::tool_prompt`]) in two constrained phases, with the text
//! between them forced:
//!
//! ```text
//! <tool_call>\n{"name": "book_table", "arguments": {"people": 4, "time": "19:30"}
//! └──forced──────────┘└─phase 1: one of the tools' names─┘└forced─┘└─phase 2: the tool's schema─┘
//! ```
//!
//! With a named `tool_choice` the name is forced too. Each phase's schema is the root of its
//! own grammar, so local references (`#/$defs/…`) in a tool's schema resolve as written. A
//! schema the grammar compiler cannot handle is decoded without a mask; the arguments are then
//! checked (and retried) like a remote model's ([`crate::llm::checked`]).

use std::sync::Arc;

use llguidance::api::TopLevelGrammar;
use llguidance::toktrie::{TokEnv, TokRxInfo, TokTrie, TokenId, TokenizerEnv};
use llguidance::{Matcher, ParserFactory};
use serde_json::{json, Value};

use crate::llm::tool_prompt::{call_prefix, ARGUMENTS_KEY};
use crate::tools::{ToolChoice, ToolSet};

/// GPT-2's byte-level alphabet: the character each byte is written as in the vocabulary.
fn byte_of_char() -> std::collections::HashMap<char, u8> {
    let printable =
        |b: u8| matches!(b, b'!'..=b'~') || matches!(b, 0xA1..=0xAC) || matches!(b, 0xAE..=0xFF);
    let mut map = std::collections::HashMap::with_capacity(256);
    let mut next = 256u32;
    for b in 0..=255u8 {
        if printable(b) {
            map.insert(b as char, b);
        } else {
            if let Some(c) = char::from_u32(next) {
                map.insert(c, b);
            }
            next += 1;
        }
    }
    map
}

/// The bytes of each token of a byte-level BPE vocabulary; control tokens are marked special
/// (they never appear inside a call).
pub fn token_bytes(tokens: &[String], control: &[bool]) -> Vec<Vec<u8>> {
    let map = byte_of_char();
    tokens
        .iter()
        .enumerate()
        .map(|(i, t)| {
            if control.get(i).copied().unwrap_or(false) {
                let mut b = vec![TokTrie::SPECIAL_TOKEN_MARKER];
                b.extend_from_slice(t.as_bytes());
                return b;
            }
            let bytes: Option<Vec<u8>> = t.chars().map(|c| map.get(&c).copied()).collect();
            bytes.unwrap_or_else(|| {
                // Not byte-level text: a special marker keeps it out of every grammar.
                let mut b = vec![TokTrie::SPECIAL_TOKEN_MARKER];
                b.extend_from_slice(t.as_bytes());
                b
            })
        })
        .collect()
}

/// The vocabulary as llguidance sees it.
struct Vocabulary {
    trie: TokTrie,
    tokenizer: tokenizers::Tokenizer,
}

impl TokenizerEnv for Vocabulary {
    fn tok_trie(&self) -> &TokTrie {
        &self.trie
    }

    fn tokenize_bytes(&self, s: &[u8]) -> Vec<TokenId> {
        self.trie.tokenize_with_greedy_fallback(s, |text| {
            self.tokenizer
                .encode_fast(text, false)
                .map(|e| e.get_ids().to_vec())
                .unwrap_or_default()
        })
    }
}

/// Grammars over one model's vocabulary (built once per model: ~0.1 s for 49k tokens).
pub struct Grammars {
    factory: ParserFactory,
    eos: Vec<TokenId>,
}

/// What a masked step found.
pub enum Step {
    /// Sample from the masked logits.
    Sample,
    /// The phase's text is complete.
    Complete,
}

impl Grammars {
    /// `stop_ids`: the tokens that end a message (the first is the EOS).
    pub fn new(
        bytes: Vec<Vec<u8>>,
        stop_ids: &[u32],
        tokenizer: tokenizers::Tokenizer,
    ) -> Result<Self, String> {
        let eos = *stop_ids
            .first()
            .ok_or("the model has no end-of-text token")?;
        let info = TokRxInfo::new(bytes.len() as u32, eos);
        let mut trie = TokTrie::from(&info, &bytes);
        if stop_ids.len() > 1 {
            trie = trie.with_eos_tokens(stop_ids);
        }
        let env: TokEnv = Arc::new(Vocabulary { trie, tokenizer });
        let mut factory = ParserFactory::new_simple(&env).map_err(|e| e.to_string())?;
        factory.quiet();
        Ok(Grammars {
            factory,
            eos: stop_ids.to_vec(),
        })
    }

    fn matcher(&self, schema: Value) -> Result<Matcher, String> {
        let parser = self
            .factory
            .create_parser(TopLevelGrammar::from_json_schema(schema))
            .map_err(|e| e.to_string())?;
        let m = Matcher::new(Ok(parser));
        match m.get_error() {
            Some(e) => Err(e),
            None => Ok(m),
        }
    }

    /// A matcher for one value of `schema`, written as compact JSON with a space after `:` and
    /// `,` (how chat models are trained to write it).
    pub fn json(&self, schema: &Value) -> Result<Matcher, String> {
        let mut s = schema.clone();
        if let Value::Object(o) = &mut s {
            o.insert(
                "x-guidance".into(),
                json!({
                    "whitespace_flexible": false,
                    "item_separator": ", ",
                    "key_separator": ": ",
                    "lenient": true,
                }),
            );
        }
        self.matcher(s)
    }

    /// Masks `logits` to what `matcher` allows next; `Complete` when it allows only the end.
    pub fn mask(&self, matcher: &mut Matcher, logits: &mut [f32]) -> Result<Step, String> {
        if matcher.is_stopped() {
            return Ok(Step::Complete);
        }
        let mask = matcher.compute_mask().map_err(|e| e.to_string())?;
        let others = mask.num_set() - self.eos.iter().filter(|&&t| mask.is_allowed(t)).count();
        if others == 0 {
            return if matcher.is_accepting().unwrap_or(false) {
                Ok(Step::Complete)
            } else {
                Err("the grammar allows no token".into())
            };
        }
        for (i, l) in logits.iter_mut().enumerate() {
            if i >= mask.len() || !mask.is_allowed(i as TokenId) || self.eos.contains(&(i as u32)) {
                *l = f32::NEG_INFINITY;
            }
        }
        Ok(Step::Sample)
    }

    pub fn is_end(&self, token: u32) -> bool {
        self.eos.contains(&token)
    }
}

/// Where a call being written stands.
enum Phase {
    /// Writing the function's name (a JSON string, one of the offered names).
    Name(Matcher),
    /// Writing the arguments: under the schema's grammar, or (`None`) freely, ended by the
    /// closing brace of the object.
    Arguments {
        name: String,
        matcher: Option<Matcher>,
    },
}

/// One call written under constraints.
pub struct CallWriter {
    phase: Phase,
    tools: ToolSet,
    /// The bytes written in the current phase.
    written: Vec<u8>,
}

/// What the decoder does when a phase is complete.
pub enum Next {
    /// Feed this text to the model, then go on sampling.
    Force(String),
    /// The call is written.
    Call { name: String, arguments: String },
}

impl CallWriter {
    /// Starts a call for `choice` among `tools`; returns the writer and the text that opens the
    /// call (forced: it ends the prompt).
    pub fn start(
        grammars: &Grammars,
        tools: &ToolSet,
        choice: &ToolChoice,
    ) -> Result<(Self, String), String> {
        let names: Vec<&str> = match choice {
            ToolChoice::Function(n) => vec![n.as_str()],
            _ => tools.iter().map(|t| t.name.as_str()).collect(),
        };
        if names.is_empty() {
            return Err("no tool to call".into());
        }
        if names.len() == 1 {
            let name = names[0].to_string();
            let phase = Self::arguments(grammars, tools, &name);
            return Ok((
                CallWriter {
                    phase,
                    tools: tools.clone(),
                    written: Vec::new(),
                },
                call_prefix(Some(&name)),
            ));
        }
        let matcher = grammars.json(&json!({ "type": "string", "enum": names }))?;
        Ok((
            CallWriter {
                phase: Phase::Name(matcher),
                tools: tools.clone(),
                written: Vec::new(),
            },
            call_prefix(None),
        ))
    }

    fn arguments(grammars: &Grammars, tools: &ToolSet, name: &str) -> Phase {
        let matcher = tools
            .get(name)
            .map(|t| grammars.json(&t.parameters))
            .transpose()
            .unwrap_or_else(|e| {
                tracing::warn!(tool = name, error = %e, "no grammar for this tool's schema; its arguments are checked after decoding");
                None
            });
        Phase::Arguments {
            name: name.to_string(),
            matcher,
        }
    }

    /// Masks the next token's logits; `Complete` when the phase is done.
    pub fn mask(&mut self, grammars: &Grammars, logits: &mut [f32]) -> Result<Step, String> {
        match &mut self.phase {
            Phase::Name(m)
            | Phase::Arguments {
                matcher: Some(m), ..
            } => grammars.mask(m, logits),
            Phase::Arguments { matcher: None, .. } => Ok(if object_closed(&self.written) {
                Step::Complete
            } else {
                Step::Sample
            }),
        }
    }

    /// Takes the sampled token; `Complete` when it ends the phase (an end-of-text token where
    /// the grammar may end).
    pub fn accept(
        &mut self,
        grammars: &Grammars,
        token: u32,
        bytes: &[u8],
    ) -> Result<Step, String> {
        if grammars.is_end(token) {
            return Ok(Step::Complete);
        }
        if let Phase::Name(m)
        | Phase::Arguments {
            matcher: Some(m), ..
        } = &mut self.phase
        {
            m.consume_token(token).map_err(|e| e.to_string())?;
        }
        self.written.extend_from_slice(bytes);
        Ok(Step::Sample)
    }

    /// Moves on from a complete phase.
    pub fn next(&mut self, grammars: &Grammars) -> Result<Next, String> {
        let written = String::from_utf8_lossy(&std::mem::take(&mut self.written)).into_owned();
        match &self.phase {
            Phase::Name(_) => {
                let name: String = serde_json::from_str(written.trim())
                    .map_err(|e| format!("the function name is not a JSON string: {e}"))?;
                self.phase = Self::arguments(grammars, &self.tools, &name);
                Ok(Next::Force(ARGUMENTS_KEY.to_string()))
            }
            Phase::Arguments { name, .. } => Ok(Next::Call {
                name: name.clone(),
                arguments: written.trim().to_string(),
            }),
        }
    }
}

/// Whether `text` holds a whole JSON object (its first `{` closed), strings and escapes
/// respected.
fn object_closed(text: &[u8]) -> bool {
    let (mut depth, mut opened, mut in_str, mut escaped) = (0i32, false, false, false);
    for &b in text {
        if in_str {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_str = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_str = true,
            b'{' | b'[' => {
                depth += 1;
                opened = true;
            }
            b'}' | b']' => depth -= 1,
            _ => {}
        }
        if opened && depth <= 0 {
            return true;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_level_tokens_map_back_to_their_bytes() {
        let toks = vec![
            "Ġthe".to_string(),
            "Ċ".to_string(),
            "<|im_end|>".to_string(),
            "{\"".to_string(),
        ];
        let b = token_bytes(&toks, &[false, false, true, false]);
        assert_eq!(b[0], b" the");
        assert_eq!(b[1], b"\n");
        assert_eq!(b[2][0], TokTrie::SPECIAL_TOKEN_MARKER);
        assert_eq!(b[3], b"{\"");
    }

    #[test]
    fn an_object_is_closed_only_at_its_own_brace() {
        assert!(!object_closed(br#"{"a": "}"#));
        assert!(!object_closed(br#"{"a": {"b": 1}"#));
        assert!(object_closed(br#"{"a": {"b": 1}}"#));
        assert!(object_closed(br#"{"a": "\"}"}"#));
    }
}
