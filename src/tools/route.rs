//! Tool routing for a small model: the embedded 135M model writes valid calls under its grammar,
//! but left to choose (`tool_choice: auto`) it answers in words and never calls. Before it
//! answers, the router reads what the person said against the tools offered: the tool whose
//! description is nearest in meaning (the knowledge base's sentence embedder), with a nudge for a
//! tool whose required argument the words already hold (an order id matching its pattern). When
//! one clears the bar, the model is made to call it, and the argument values the person said
//! ([`slots`]: a value matching a field's pattern, an enum value or its described meaning, the one
//! number in range) are fixed in that call's grammar, so the model only writes the rest.

use std::sync::Arc;

use serde_json::{Map, Value};

use super::{FunctionTool, ToolChoice, ToolSet};
use crate::llm::GenerateRequest;
use crate::rag::embed::Embedder;

/// The least similarity (cosine, plus nudges) for a tool to be called. On the fixture tool
/// suite, requests score 0.35-0.84 for their tool and small talk at most 0.17.
const MIN_SCORE: f32 = 0.3;
/// The bar for a tool none of whose required arguments the words hold ("What are your opening
/// hours?" is near a booking tool in meaning, but gives it nothing to book).
const MIN_SCORE_EMPTY: f32 = 0.55;
/// Added when the words hold a value for one of the tool's required, patterned arguments.
const PATTERN_NUDGE: f32 = 0.15;
/// Added for each required argument whose value the words hold (so "email me about AB1234"
/// goes to the tool that also takes the channel, not only the one that takes the order id).
const KNOWN_NUDGE: f32 = 0.1;
/// Added when the words name one of the tool's enum options ("email me": the channel).
const ENUM_NUDGE: f32 = 0.15;
/// String fields that take a name the person says (a capitalised word, copied as said).
const NAME_FIELDS: [&str; 6] = ["city", "town", "place", "location", "country", "name"];

/// The tool to call and the argument values the person gave.
#[derive(Debug, Clone, PartialEq)]
pub struct Routed {
    pub name: String,
    pub known: Map<String, Value>,
    pub score: f32,
}

impl Routed {
    /// Makes `req` call the tool, with the known values fixed in its schema.
    pub fn apply(&self, req: &mut GenerateRequest) {
        let tools: Vec<FunctionTool> = req
            .tools
            .iter()
            .map(|t| {
                if t.name != self.name || self.known.is_empty() {
                    return t.clone();
                }
                let mut t = t.clone();
                for (k, v) in &self.known {
                    // A value the person gave is written, even for an optional field.
                    let required = t.parameters["required"]
                        .as_array()
                        .cloned()
                        .unwrap_or_default();
                    if !required.iter().any(|r| r == k)
                        && t.parameters["properties"].get(k).is_some()
                    {
                        let mut required = required;
                        required.push(Value::String(k.clone()));
                        t.parameters["required"] = Value::Array(required);
                    }
                    if let Some(p) = t.parameters["properties"].get_mut(k) {
                        p["enum"] = Value::Array(vec![v.clone()]);
                        if let Some(obj) = p.as_object_mut() {
                            obj.remove("pattern");
                        }
                    }
                }
                t
            })
            .collect();
        if let Ok(set) = ToolSet::new(tools, "tools") {
            req.tools = set;
        }
        req.tool_choice = ToolChoice::Function(self.name.clone());
    }
}

/// What a tool is about, for comparing with what was said.
fn about(t: &FunctionTool) -> String {
    let mut text = format!("{}. {}", t.name.replace(['_', '-'], " "), t.description);
    if let Some(props) = t.parameters["properties"].as_object() {
        for (name, p) in props {
            text.push_str(&format!(" {}", name.replace('_', " ")));
            if let Some(d) = p["description"].as_str() {
                text.push_str(&format!(" ({d})"));
            }
        }
    }
    text
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
    let nb: f32 = b.iter().map(|x| x * x).sum::<f32>().sqrt();
    if na == 0.0 || nb == 0.0 {
        0.0
    } else {
        dot / (na * nb)
    }
}

/// The tool `utterance` asks for, if one clearly does.
pub async fn route(
    tools: &ToolSet,
    utterance: &str,
    embedder: Option<&Arc<dyn Embedder>>,
) -> Option<Routed> {
    let embedder = embedder?;
    if tools.is_empty() || utterance.trim().is_empty() {
        return None;
    }
    let mut texts = vec![utterance.to_string()];
    texts.extend(tools.iter().map(about));
    let vectors = embedder.embed(texts).await.ok()?;
    let (said, rest) = vectors.split_first()?;
    let mut best: Option<Routed> = None;
    for (t, v) in tools.iter().zip(rest) {
        let known = slots(t, utterance);
        let required: Vec<&str> = t.parameters["required"]
            .as_array()
            .map(|r| r.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let patterned = required.iter().any(|r| {
            known.contains_key(*r) && t.parameters["properties"][*r].get("pattern").is_some()
        });
        let held = required.iter().filter(|r| known.contains_key(**r)).count();
        let named_option = known
            .keys()
            .any(|k| t.parameters["properties"][k].get("enum").is_some());
        let score = cosine(said, v)
            + if patterned { PATTERN_NUDGE } else { 0.0 }
            + KNOWN_NUDGE * held as f32
            + if named_option { ENUM_NUDGE } else { 0.0 };
        tracing::debug!(tool = %t.name, score, "tool route score");
        let bar = if held == 0 && !required.is_empty() {
            MIN_SCORE_EMPTY
        } else {
            MIN_SCORE
        };
        if score >= bar && best.as_ref().is_none_or(|b| score > b.score) {
            best = Some(Routed {
                name: t.name.clone(),
                known,
                score,
            });
        }
    }
    best
}

/// Lower-case words of `text` (letters, digits, `:` inside a time).
fn words(text: &str) -> Vec<String> {
    text.split(|c: char| !(c.is_alphanumeric() || c == ':' || c == '\''))
        .map(|w| {
            w.trim_matches(|c: char| c == ':' || c == '\'')
                .to_lowercase()
        })
        .filter(|w| !w.is_empty())
        .collect()
}

/// The numbers said (digits, or words up to ninety), leaving out those inside a time (19:30).
fn numbers(text: &str) -> Vec<i64> {
    words(text)
        .iter()
        .filter(|w| !w.contains(':'))
        .filter_map(|w| {
            w.parse::<i64>()
                .ok()
                .or_else(|| crate::wer::number_word(w).map(i64::from))
        })
        .collect()
}

/// The argument values `utterance` gives for `tool`'s parameters: a word matching a string
/// field's pattern, an enum value said (or the words its description gives it: `sms: a text
/// message`), the one number in an integer field's range.
pub fn slots(tool: &FunctionTool, utterance: &str) -> Map<String, Value> {
    let mut known = Map::new();
    let Some(props) = tool.parameters["properties"].as_object() else {
        return known;
    };
    let said = words(utterance);
    let raw: Vec<&str> = utterance
        .split(|c: char| c.is_whitespace() || matches!(c, ',' | '?' | '!' | ';'))
        .map(|w| w.trim_end_matches('.'))
        .filter(|w| !w.is_empty())
        .collect();
    let integers: usize = props
        .values()
        .filter(|p| p["type"] == "integer" || p["type"] == "number")
        .count();
    for (name, p) in props {
        if let Some(values) = p["enum"].as_array() {
            if let Some(v) = enum_said(values, p["description"].as_str().unwrap_or(""), &said) {
                known.insert(name.clone(), v);
            }
        } else if let Some(pattern) = p["pattern"].as_str() {
            let Ok(re) = regex::Regex::new(pattern) else {
                continue;
            };
            let found: Vec<&&str> = raw.iter().filter(|w| re.is_match(w)).collect();
            if let [one] = found.as_slice() {
                known.insert(name.clone(), Value::String(one.to_string()));
            }
        } else if p["type"] == "string" && NAME_FIELDS.contains(&name.as_str()) {
            // A name said mid-sentence: the one capitalised word after the first.
            let names: Vec<&str> = raw
                .iter()
                .skip(1)
                .filter(|w| w.chars().next().is_some_and(char::is_uppercase))
                .filter(|w| w.chars().all(|c| c.is_alphabetic() || c == '-'))
                .copied()
                .collect();
            if let [one] = names.as_slice() {
                known.insert(name.clone(), Value::String(one.to_string()));
            }
        } else if p["type"] == "string" && is_id_field(name) {
            // An id said as a token mixing letters and digits (AB1234), or a long number.
            let ids: Vec<&str> = raw
                .iter()
                .map(|w| w.trim_matches(|c: char| !c.is_alphanumeric()))
                .filter(|w| {
                    let digits = w.chars().filter(char::is_ascii_digit).count();
                    w.chars().all(|c| c.is_alphanumeric() || c == '-')
                        && (digits > 0 && digits < w.len() || digits >= 3)
                })
                .collect();
            if let [one] = ids.as_slice() {
                known.insert(name.clone(), Value::String(one.to_string()));
            }
        } else if p["type"] == "integer" && integers == 1 {
            let lo = p["minimum"].as_i64().unwrap_or(i64::MIN);
            let hi = p["maximum"].as_i64().unwrap_or(i64::MAX);
            let fit: Vec<i64> = numbers(utterance)
                .into_iter()
                .filter(|n| (lo..=hi).contains(n))
                .collect();
            if let [one] = fit.as_slice() {
                known.insert(name.clone(), Value::from(*one));
            }
        }
    }
    known
}

/// Whether a field takes an identifier (`order_id`, `id`, `tracking_number`, `code`).
fn is_id_field(name: &str) -> bool {
    let n = name.to_lowercase();
    n == "id"
        || n.ends_with("_id")
        || name.ends_with("Id")
        || ["number", "code", "reference"]
            .iter()
            .any(|k| n.contains(k))
}

/// The one enum value the words name: the value itself, or a word its description gives it
/// (`call: a phone call` → "phone").
fn enum_said(values: &[Value], description: &str, said: &[String]) -> Option<Value> {
    let mut hits: Vec<&Value> = Vec::new();
    for v in values {
        let Some(name) = v.as_str() else { continue };
        let name_l = name.to_lowercase();
        let mut terms: Vec<String> = vec![name_l.clone()];
        // "sms: a text message; email; call: a phone call; …"
        for clause in description.split([';', '.', ',']) {
            if let Some((head, meaning)) = clause.split_once(':') {
                if head.trim().eq_ignore_ascii_case(name) {
                    terms.extend(words(meaning).into_iter().filter(|w| {
                        w.len() > 3 && !["with", "from", "your"].contains(&w.as_str())
                    }));
                }
            }
        }
        if terms.iter().any(|t| said.contains(t)) {
            hits.push(v);
        }
    }
    match hits.as_slice() {
        [one] => Some((*one).clone()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn tool(parameters: Value) -> FunctionTool {
        FunctionTool {
            name: "t".into(),
            description: String::new(),
            parameters,
            strict: true,
        }
    }

    #[test]
    fn values_said_fill_their_fields() {
        let notify = tool(json!({"type": "object", "properties": {
            "order_id": {"type": "string", "pattern": "^[A-Z]{2}[0-9]{4}$"},
            "channel": {"type": "string", "enum": ["sms", "email", "call", "push"],
                        "description": "sms: a text message; email; call: a phone call; push: an app notification."}}}));
        let k = slots(&notify, "Email me when order AB1234 ships.");
        assert_eq!(
            Value::Object(k),
            json!({"order_id": "AB1234", "channel": "email"})
        );
        let k = slots(
            &notify,
            "Send me a text message when order EF9012 is ready.",
        );
        assert_eq!(k["channel"], "sms");
        let k = slots(&notify, "Please call me about order CD5678.");
        assert_eq!(k["channel"], "call");
        // Two channels named: neither is assumed.
        assert!(slots(&notify, "Email or call me about AB1234")
            .get("channel")
            .is_none());
        let booking = tool(json!({"type": "object", "properties": {
            "people": {"type": "integer", "minimum": 1, "maximum": 12},
            "time": {"type": "string", "pattern": "^([01][0-9]|2[0-3]):[0-5][0-9]$"},
            "area": {"type": "string", "enum": ["inside", "terrace", "bar"]}}}));
        let k = slots(&booking, "A table for two on the terrace at 20:00, please.");
        assert_eq!(
            Value::Object(k),
            json!({"people": 2, "time": "20:00", "area": "terrace"})
        );
        let timer = tool(
            json!({"type": "object", "properties": {"minutes": {"type": "integer", "minimum": 1, "maximum": 120}}}),
        );
        assert_eq!(slots(&timer, "Start a 45 minute timer.")["minutes"], 45);
        assert_eq!(slots(&timer, "Set a timer for ten minutes.")["minutes"], 10);
        assert!(slots(&timer, "Set a timer for 5 or 10 minutes.").is_empty());
        let weather = tool(json!({"type": "object", "properties": {"city": {"type": "string"}}}));
        assert_eq!(slots(&weather, "Is it raining in Leeds?")["city"], "Leeds");
        assert!(slots(&weather, "Is it raining in Leeds or York?").is_empty());
        assert!(slots(&weather, "Is it raining?").is_empty());
        // An id field without a pattern (as MCP servers' schemas often are) takes the one
        // token that mixes letters and digits.
        let status =
            tool(json!({"type": "object", "properties": {"order_id": {"type": "string"}}}));
        assert_eq!(
            slots(&status, "Where is my order AB1234?")["order_id"],
            "AB1234"
        );
        assert!(slots(&status, "Where is my order?").is_empty());
        assert!(slots(&status, "Is it AB1234 or CD5678?").is_empty());
    }

    #[test]
    fn a_routed_call_fixes_the_known_values() {
        let tools = ToolSet::parse(
            &json!([{"type": "function", "name": "notify", "parameters": {"type": "object",
                "properties": {"channel": {"type": "string", "enum": ["sms", "email"]}},
                "required": ["channel"], "additionalProperties": false}}]),
            "tools",
        )
        .unwrap();
        let mut req = GenerateRequest::new(vec![]);
        req.tools = tools;
        let mut known = Map::new();
        known.insert("channel".into(), json!("email"));
        Routed {
            name: "notify".into(),
            known,
            score: 1.0,
        }
        .apply(&mut req);
        assert_eq!(req.tool_choice, ToolChoice::Function("notify".into()));
        assert_eq!(
            req.tools.get("notify").unwrap().parameters["properties"]["channel"]["enum"],
            json!(["email"])
        );
    }
}
