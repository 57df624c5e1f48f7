//! `voxd eval` on a **tool suite**: are the model's function calls right, not only valid? A tool
//! suite is a folder with `tools.json` (the functions offered, as a session's `tools`) and
//! `cases.jsonl`, one case a line:
//!
//! ```json
//! {"id": "email-me", "say": "Email me when order AB1234 ships.",
//!  "call": {"name": "notify", "arguments": {"order_id": "AB1234", "channel": "email"}}}
//! {"id": "thanks", "say": "Thanks, that's all.", "call": null}
//! {"id": "where", "say": "Where is order CD5678?", "call": {"name": "order_status",
//!  "arguments": {"order_id": "CD5678"}}, "result": {"status": "shipped", "eta": "Friday"},
//!  "answer_accepts": ["friday"]}
//! ```
//!
//! Each case is said in a fresh text session offered the suite's tools (`tool_choice: auto`). It
//! scores: the **right tool** (the expected one, or none when `call` is null); **every argument
//! right** (each expected argument equal, strings compared without case); **no extra arguments**
//! (none the case does not name); and, with a `result`, the **answer uses it**: voxd is given the
//! result as the call's output, and the answer that follows must match every `answer_accepts`
//! (case-insensitive regular expressions) and must not be JSON (it is spoken).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use super::EvalError;
use crate::client::{self, Incoming, Receiver, Sender};
use crate::protocol::ServerEvent;

/// One case of a tool suite.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToolCase {
    pub id: String,
    /// What the person says (typed).
    pub say: String,
    /// The call that is right; `null`: no call is.
    pub call: Option<ExpectedCall>,
    /// The tool's result to give back, when the answer after it is scored.
    #[serde(default)]
    pub result: Option<Value>,
    #[serde(default)]
    pub answer_accepts: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExpectedCall {
    pub name: String,
    #[serde(default)]
    pub arguments: Map<String, Value>,
}

/// A tool suite, loaded.
#[derive(Debug, Clone)]
pub struct ToolSuite {
    pub name: String,
    pub tools: Value,
    pub cases: Vec<ToolCase>,
}

impl ToolSuite {
    /// Whether `dir` holds a tool suite (a `cases.jsonl`).
    pub fn is_tool_suite(dir: &Path) -> bool {
        dir.join("cases.jsonl").exists()
    }

    pub fn load(dir: &Path) -> Result<ToolSuite, EvalError> {
        let bad = |path: PathBuf, message: String| EvalError::Suite { path, message };
        let tools_path = dir.join("tools.json");
        let tools: Value = std::fs::read_to_string(&tools_path)
            .map_err(|e| bad(tools_path.clone(), e.to_string()))
            .and_then(|t| {
                serde_json::from_str(&t).map_err(|e| bad(tools_path.clone(), e.to_string()))
            })?;
        crate::tools::ToolSet::parse(&tools, "tools")
            .map_err(|e| bad(tools_path.clone(), e.to_string()))?;
        let cases_path = dir.join("cases.jsonl");
        let text = std::fs::read_to_string(&cases_path)
            .map_err(|e| bad(cases_path.clone(), e.to_string()))?;
        let mut cases = Vec::new();
        for (i, line) in text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
        {
            let case: ToolCase = serde_json::from_str(line)
                .map_err(|e| bad(cases_path.clone(), format!("line {}: {e}", i + 1)))?;
            for re in &case.answer_accepts {
                regex::Regex::new(re)
                    .map_err(|e| bad(cases_path.clone(), format!("{}: {e}", case.id)))?;
            }
            cases.push(case);
        }
        if cases.is_empty() {
            return Err(bad(cases_path, "no cases".into()));
        }
        Ok(ToolSuite {
            name: dir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "tools".into()),
            tools,
            cases,
        })
    }
}

/// How one case went.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ToolCaseResult {
    pub id: String,
    /// The call the model made (`null`: none).
    pub called: Option<Value>,
    pub right_tool: bool,
    /// Every expected argument right (only counted when the tool is right and has arguments).
    pub arguments_right: Option<bool>,
    /// Arguments the case does not name.
    pub extra_arguments: Vec<String>,
    /// With a result: whether the answer after it matched.
    pub answer_uses_result: Option<bool>,
    pub answer: String,
}

/// The suite's figures.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ToolReport {
    pub suite: String,
    pub cases: usize,
    pub right_tool: f64,
    pub arguments_right: f64,
    pub no_extra_arguments: f64,
    pub answer_uses_result: f64,
    pub results: Vec<ToolCaseResult>,
}

impl ToolReport {
    fn new(suite: &str, results: Vec<ToolCaseResult>) -> Self {
        let rate = |hits: usize, n: usize| if n == 0 { 1.0 } else { hits as f64 / n as f64 };
        let args: Vec<bool> = results.iter().filter_map(|r| r.arguments_right).collect();
        let called: Vec<&ToolCaseResult> = results.iter().filter(|r| r.called.is_some()).collect();
        let answers: Vec<bool> = results
            .iter()
            .filter_map(|r| r.answer_uses_result)
            .collect();
        ToolReport {
            suite: suite.to_string(),
            cases: results.len(),
            right_tool: rate(
                results.iter().filter(|r| r.right_tool).count(),
                results.len(),
            ),
            arguments_right: rate(args.iter().filter(|b| **b).count(), args.len()),
            no_extra_arguments: rate(
                called
                    .iter()
                    .filter(|r| r.extra_arguments.is_empty())
                    .count(),
                called.len(),
            ),
            answer_uses_result: rate(answers.iter().filter(|b| **b).count(), answers.len()),
            results,
        }
    }

    /// The summary printed at the end of a run.
    pub fn table(&self) -> String {
        let mut out = format!(
            "tool suite {} ({} cases)\n  right tool           {:>5.1} %\n  every argument right {:>5.1} %\n  no extra arguments   {:>5.1} %\n  answer uses result   {:>5.1} %\n",
            self.suite,
            self.cases,
            self.right_tool * 100.0,
            self.arguments_right * 100.0,
            self.no_extra_arguments * 100.0,
            self.answer_uses_result * 100.0
        );
        for r in &self.results {
            let wrong = !r.right_tool
                || r.arguments_right == Some(false)
                || !r.extra_arguments.is_empty()
                || r.answer_uses_result == Some(false);
            if wrong {
                out += &format!(
                    "  miss {}: called {}{}\n",
                    r.id,
                    r.called
                        .as_ref()
                        .map_or("nothing".into(), |c| c.to_string()),
                    if r.answer_uses_result == Some(false) {
                        format!("; answer {:?}", r.answer)
                    } else {
                        String::new()
                    }
                );
            }
        }
        out
    }
}

/// Runs every case against the realtime endpoint `url`.
pub async fn run(
    url: &str,
    api_key: Option<&str>,
    suite: &ToolSuite,
    timeout: Duration,
    on_case: &(dyn Fn(&ToolCaseResult) + Sync),
) -> Result<ToolReport, EvalError> {
    let mut results = Vec::new();
    for case in &suite.cases {
        let (mut tx, mut rx) = client::connect(url, api_key).await?;
        tx.update_session(json!({"type": "realtime", "output_modalities": ["text"],
            "tools": suite.tools, "tool_choice": "auto",
            "audio": {"input": {"turn_detection": null}}}))
            .await?;
        let r = run_case(case, &mut tx, &mut rx, timeout).await?;
        on_case(&r);
        results.push(r);
        let _ = tx.close().await;
    }
    Ok(ToolReport::new(&suite.name, results))
}

async fn run_case(
    case: &ToolCase,
    tx: &mut Sender,
    rx: &mut Receiver,
    timeout: Duration,
) -> Result<ToolCaseResult, EvalError> {
    tx.send_text(
        json!({"type": "conversation.item.create", "item": {"type": "message", "role": "user",
            "content": [{"type": "input_text", "text": case.say}]}})
        .to_string(),
    )
    .await?;
    tx.create_response().await?;
    let first = response_done(rx, timeout).await?;
    let call = first["output"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|o| o["type"] == "function_call")
        .cloned();
    let called = call.as_ref().map(|c| {
        let args: Value = c["arguments"]
            .as_str()
            .and_then(|a| serde_json::from_str(a).ok())
            .unwrap_or(Value::Null);
        json!({"name": c["name"], "arguments": args})
    });
    let mut r = score_call(case, called);
    if let (Some(result), Some(c)) = (&case.result, &call) {
        tx.send_text(
            json!({"type": "conversation.item.create", "item": {"type": "function_call_output",
                "call_id": c["call_id"], "output": result.to_string()}})
            .to_string(),
        )
        .await?;
        tx.create_response().await?;
        let second = response_done(rx, timeout).await?;
        r.answer = answer_text(&second);
        // The answer is spoken: it must say what the result holds, and not as JSON.
        let speakable = !r.answer.contains("{\"") && !r.answer.contains("\":");
        r.answer_uses_result = Some(
            speakable
                && case.answer_accepts.iter().all(|re| {
                    regex::RegexBuilder::new(re)
                        .case_insensitive(true)
                        .build()
                        .is_ok_and(|re| re.is_match(&r.answer))
                }),
        );
    } else if case.result.is_some() {
        r.answer_uses_result = Some(false);
    }
    Ok(r)
}

/// Scores the call made against the case's.
pub fn score_call(case: &ToolCase, called: Option<Value>) -> ToolCaseResult {
    let mut r = ToolCaseResult {
        id: case.id.clone(),
        ..Default::default()
    };
    let made_name = called
        .as_ref()
        .and_then(|c| c["name"].as_str())
        .map(str::to_string);
    r.right_tool = match (&case.call, &made_name) {
        (None, None) => true,
        (Some(e), Some(n)) => &e.name == n,
        _ => false,
    };
    if let (Some(expected), Some(c)) = (&case.call, &called) {
        let args = c["arguments"].as_object().cloned().unwrap_or_default();
        if r.right_tool && !expected.arguments.is_empty() {
            r.arguments_right = Some(
                expected
                    .arguments
                    .iter()
                    .all(|(k, v)| args.get(k).is_some_and(|a| same(a, v))),
            );
        }
        r.extra_arguments = args
            .keys()
            .filter(|k| !expected.arguments.contains_key(*k))
            .cloned()
            .collect();
    }
    r.called = called;
    r
}

/// Equal values (strings without case and surrounding space; numbers by value).
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::String(x), Value::String(y)) => x.trim().eq_ignore_ascii_case(y.trim()),
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        _ => a == b,
    }
}

fn answer_text(response: &Value) -> String {
    response["output"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|o| o["content"].as_array().cloned().unwrap_or_default())
        .filter_map(|c| {
            c["text"]
                .as_str()
                .or_else(|| c["transcript"].as_str())
                .map(str::to_string)
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Reads until `response.done`; its response.
async fn response_done(rx: &mut Receiver, timeout: Duration) -> Result<Value, EvalError> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let msg = tokio::time::timeout(left, rx.next())
            .await
            .map_err(|_| EvalError::Timeout)?;
        match msg {
            Some(Ok(Incoming::Event(ServerEvent::ResponseDone { response }))) => {
                return Ok(response)
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(e.into()),
            None => return Err(EvalError::Timeout),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn case(line: &str) -> ToolCase {
        serde_json::from_str(line).unwrap()
    }

    #[test]
    fn calls_are_scored_by_tool_arguments_and_extras() {
        let c = case(
            r#"{"id": "a", "say": "x", "call": {"name": "notify", "arguments": {"channel": "email", "n": 2}}}"#,
        );
        let right = score_call(
            &c,
            Some(json!({"name": "notify", "arguments": {"channel": "Email", "n": 2.0}})),
        );
        assert!(
            right.right_tool
                && right.arguments_right == Some(true)
                && right.extra_arguments.is_empty()
        );
        let wrong = score_call(
            &c,
            Some(
                json!({"name": "notify", "arguments": {"channel": "sms", "n": 2, "required": "x"}}),
            ),
        );
        assert_eq!(wrong.arguments_right, Some(false));
        assert_eq!(wrong.extra_arguments, ["required"]);
        let other = score_call(&c, Some(json!({"name": "status", "arguments": {}})));
        assert!(!other.right_tool && other.arguments_right.is_none());
        let none = case(r#"{"id": "b", "say": "thanks", "call": null}"#);
        assert!(score_call(&none, None).right_tool);
        assert!(!score_call(&none, Some(json!({"name": "notify", "arguments": {}}))).right_tool);
        let report = ToolReport::new("t", vec![right, wrong, other]);
        assert!((report.right_tool - 2.0 / 3.0).abs() < 1e-9);
        assert!((report.arguments_right - 0.5).abs() < 1e-9);
    }
}
