//! Step three of an answer: the model writes it. In the checked mode each sentence is sent once
//! the passages support it (else the passage's own sentence, or the answer ends). The model may
//! call functions: the client's go out as items, the server's run here and their results go back
//! to the model for another round (at most [`MAX_SERVER_ROUNDS`]).

use std::sync::Arc;
use std::time::Instant;

use futures::StreamExt;
use serde_json::json;
use tracing::Instrument;

use super::audit::Auditor;
use super::choose::{answer_mode, messages, request};
use super::mcp;
use super::{Answer, Cancel, Ctx, Stop, MAX_SERVER_ROUNDS};
use crate::grounding::repeat::{Guarded, RepeatGuard};
use crate::grounding::{AnswerMode, Check, Focus, Verdict};
use crate::llm::{LlmError, LlmEvent, Usage};
use crate::prompt::ChatMessage;
use crate::protocol::{ErrorBody, ServerEvent};
use crate::tools::{ToolCall, ToolChoice};

/// How one round of the model's stream ended.
enum Round {
    /// The answer is complete (or was ended by the check).
    Done,
    /// The model asked for server tools: run them and ask again.
    ServerCalls(Vec<ToolCall>),
}

/// The model's part of one answer, across its rounds.
struct Generation<'c, 'a> {
    ctx: &'c Ctx<'a>,
    /// In the checked mode: the check each sentence passes before it is sent.
    check: Option<Check>,
    /// Otherwise: a sentence the answer already said is not said again.
    guard: RepeatGuard,
    /// Open from the request to the last token (queue wait, prefill and decoding).
    span: tracing::Span,
    generating: Instant,
    model_started: bool,
    audit: Auditor,
    rounds: usize,
}

/// Writes the answer with the model, through rounds of server tools.
pub(super) async fn generate(
    ctx: &Ctx<'_>,
    answer: &mut Answer,
    cancel: &mut Cancel,
) -> Result<(), Stop> {
    let (answering, params) = (ctx.answering, ctx.params);
    let mode = answer_mode(answering, params, &answer.results, &answer.focus, ctx.user);
    let mut check = (mode == AnswerMode::Checked).then(|| {
        let sources: Vec<String> = answer.focus.texts().into_iter().map(String::from).collect();
        let titles = answer
            .results
            .as_ref()
            .map(|r| {
                r.passages
                    .iter()
                    .map(|p| p.citation.title.clone())
                    .collect()
            })
            .unwrap_or_default();
        Check::new(sources, titles, answering.settings.min_support)
    });
    let mut msgs = messages(
        answering,
        params,
        &answer.results,
        &answer.focus,
        ctx.history,
        ctx.user,
    );
    msgs.extend(ctx.after.iter().cloned());
    let mut req = request(answering, params, msgs);
    let audit = Auditor::new(answering, params, ctx.response_id);
    // Calls the client approved (or declined) since the user's words come first.
    mcp::run_approved(
        ctx.writer,
        &audit,
        params,
        &mut answer.call_items,
        &mut req.messages,
        cancel,
    )
    .await?;
    // A small model answering from tool results is held to them, as to passages.
    if check.is_none() && params.follows_results && answering.llm.needs_tool_routing() {
        check = check_by_results(&req.messages, ctx.user, answering, answer);
    }
    // A small model left to choose answers in words: the router picks the tool the person
    // asked for, if one clearly fits, and fixes the values they said.
    if matches!(req.tool_choice, ToolChoice::Auto | ToolChoice::Required)
        && !params.follows_results
        && !req.tools.is_empty()
        && answering.llm.needs_tool_routing()
    {
        let embedder = answering.kb.as_ref().map(|kb| kb.embedder().clone());
        if let Some(r) = crate::tools::route::route(&req.tools, ctx.user, embedder.as_ref()).await {
            tracing::info!(tool = %r.name, score = r.score, known = r.known.len(), "tool routed");
            r.apply(&mut req);
        }
    }
    let mut gen = Generation {
        ctx,
        check,
        guard: RepeatGuard::new(),
        span: tracing::info_span!("llm", first_token_ms = tracing::field::Empty),
        generating: Instant::now(),
        model_started: false,
        audit,
        rounds: 0,
    };
    let checks = gen.checks();
    loop {
        let generating =
            crate::llm::checked::generate_with(answering.llm.clone(), req.clone(), checks.clone())
                .instrument(gen.span.clone());
        let stream = cancel.or(generating).await?.map_err(Stop::Failed)?;
        let server_calls = match gen.stream(stream, answer, cancel).await? {
            Round::Done => return Ok(()),
            Round::ServerCalls(calls) => calls,
        };
        // The calls of one round run together (a remote model may make several at once).
        for (call, output) in gen.run_calls(server_calls, answer, cancel).await? {
            req.messages
                .push(ChatMessage::calls("", vec![call.clone()]));
            req.messages
                .push(ChatMessage::tool_result(call.id.clone(), output));
        }
        // A call waits for the client's approval: the answer comes after it.
        if answer.awaiting_approval {
            return Ok(());
        }
        gen.rounds += 1;
        // After a few rounds of server tools, the model must answer.
        req.tool_choice = if gen.rounds >= MAX_SERVER_ROUNDS {
            ToolChoice::None
        } else {
            ToolChoice::Auto
        };
    }
}

impl Generation<'_, '_> {
    /// How calls are checked: server tools this caller may not use are refused (not retried),
    /// and invalid calls are audited.
    fn checks(&self) -> crate::llm::checked::Checks {
        let params = self.ctx.params;
        let audit = self.audit.clone();
        crate::llm::checked::Checks {
            refused: self
                .ctx
                .answering
                .server_tools
                .as_ref()
                .map(|s| {
                    s.definitions()
                        .iter()
                        .filter(|t| params.tools.get(&t.name).is_none())
                        .map(|t| t.name.clone())
                        .collect()
                })
                .unwrap_or_default(),
            on_invalid: Some(Arc::new(
                move |call: &ToolCall, e: &crate::tools::ToolError, retried: bool| {
                    let validation = if retried {
                        "invalid_retried"
                    } else {
                        "invalid"
                    };
                    audit.record(
                        call,
                        "client",
                        validation,
                        "rejected",
                        0.0,
                        Some(e.to_string()),
                    );
                },
            )),
        }
    }

    /// Runs a round's server and MCP calls concurrently; returns each call with what the model
    /// is told.
    async fn run_calls(
        &self,
        calls: Vec<ToolCall>,
        answer: &mut Answer,
        cancel: &mut Cancel,
    ) -> Result<Vec<(ToolCall, String)>, Stop> {
        enum Ran {
            Mcp(Box<(u32, crate::protocol::Item)>, String),
            Server(crate::tools::server::Outcome),
        }
        let (answering, params) = (self.ctx.answering, self.ctx.params);
        let runs = calls.iter().map(|call| async move {
            if let Some(offer) = params.mcp.get(&call.name) {
                let (item, ran) =
                    mcp::run_call(self.ctx.writer, &self.audit, offer, call, None).await;
                Some(Ran::Mcp(Box::new(item), ran.output))
            } else {
                let server = answering.server_tools.as_ref()?;
                let outcome = server
                    .call(call, &answering.caller, answering.kb.as_ref())
                    .await;
                Some(Ran::Server(outcome))
            }
        });
        let done = cancel.or(futures::future::join_all(runs)).await?;
        let mut told = Vec::new();
        for (call, ran) in calls.into_iter().zip(done) {
            match ran {
                Some(Ran::Mcp(item, output)) => {
                    answer.call_items.push(*item);
                    told.push((call, output));
                }
                Some(Ran::Server(outcome)) => {
                    self.record_server_call(&call, &outcome, answer);
                    told.push((call, outcome.output));
                }
                None => {}
            }
        }
        Ok(told)
    }

    /// Whether `name` is a server tool (and not one of the client's own).
    fn is_server_call(&self, name: &str) -> bool {
        self.ctx.params.client_tools.get(name).is_none()
            && self
                .ctx
                .answering
                .server_tools
                .as_ref()
                .is_some_and(|s| s.contains(name))
    }

    fn first_token(&mut self) {
        self.span.record(
            "first_token_ms",
            self.generating.elapsed().as_secs_f64() * 1e3,
        );
    }

    /// Reads one round of the model's stream to its end.
    async fn stream(
        &mut self,
        mut stream: crate::llm::LlmStream,
        answer: &mut Answer,
        cancel: &mut Cancel,
    ) -> Result<Round, Stop> {
        let mut server_calls = Vec::new();
        loop {
            let event = match cancel.or(stream.next()).await? {
                Some(Ok(event)) => event,
                Some(Err(e)) => return Err(Stop::Failed(e)),
                None => {
                    return Err(Stop::Failed(LlmError::Compute(
                        "the generation ended without finishing".into(),
                    )))
                }
            };
            match event {
                LlmEvent::Delta(d) => {
                    if !self.model_started {
                        self.model_started = true;
                        self.first_token();
                    }
                    let verdicts = match self.check.as_mut() {
                        None => verdicts(self.guard.push(&d)),
                        Some(c) => c.push(&d),
                    };
                    for v in verdicts {
                        if self.apply(v, answer) {
                            return Ok(Round::Done);
                        }
                    }
                }
                LlmEvent::ToolCall(call) if self.ctx.params.mcp.get(&call.name).is_some() => {
                    let offer = self.ctx.params.mcp.get(&call.name).expect("checked");
                    if offer.approval {
                        let item =
                            mcp::request_approval(self.ctx.writer, &self.audit, offer, &call);
                        answer.call_items.push(item);
                        answer.awaiting_approval = true;
                    } else {
                        server_calls.push(call);
                    }
                }
                LlmEvent::ToolCall(call) if self.is_server_call(&call.name) => {
                    server_calls.push(call)
                }
                LlmEvent::ToolCall(call) => self.call_for_client(call, answer),
                LlmEvent::Done { usage, finish } => {
                    add_usage(&mut answer.usage, &usage, self.rounds == 0);
                    answer.finish = finish;
                    let last = match self.check.as_mut() {
                        Some(c) => c.finish().into_iter().collect(),
                        None => verdicts(self.guard.finish()),
                    };
                    for v in last {
                        if self.apply(v, answer) {
                            return Ok(Round::Done);
                        }
                    }
                    if answer.calls.is_empty() && answer.made.is_none() && !answer.text.is_empty() {
                        answer.made = Some(if self.check.is_some() {
                            "checked"
                        } else {
                            "model"
                        });
                    }
                    if server_calls.is_empty() {
                        return Ok(Round::Done);
                    }
                    return Ok(Round::ServerCalls(server_calls));
                }
            }
        }
    }

    /// Acts on a checked sentence; true when the answer must stop here.
    fn apply(&self, verdict: Verdict, answer: &mut Answer) -> bool {
        let writer = self.ctx.writer;
        match apply_verdict(
            verdict,
            &answer.focus,
            &mut answer.text,
            &mut answer.first_delta,
            |t| writer.emit(t),
        ) {
            Some(made) => {
                answer.made = Some(made);
                true
            }
            None => false,
        }
    }

    /// A function call for the client: sent as its own item, after the message or the calls
    /// before it.
    fn call_for_client(&mut self, call: ToolCall, answer: &mut Answer) {
        if answer.first_delta.is_none() {
            answer.first_delta = Some(Instant::now());
            self.first_token();
        }
        let writer = self.ctx.writer;
        tracing::info!(tool = %call.name, call_id = %call.id, arguments = %self.audit.redact(&call), "function call for the client");
        crate::metrics::global()
            .tool_calls
            .inc_pair(&call.name, "sent");
        self.audit
            .record(&call, "client", "valid", "sent", 0.0, None);
        let (id, index, item) = writer.send_call(&call);
        answer.call_items.push((index, item));
        answer.calls.push((id, call));
    }

    /// Logs, counts and audits a server tool's call; a refused one is also told to the client.
    fn record_server_call(
        &self,
        call: &ToolCall,
        outcome: &crate::tools::server::Outcome,
        answer: &mut Answer,
    ) {
        tracing::info!(tool = %call.name, call_id = %call.id, arguments = %self.audit.redact(call), status = outcome.status, latency_ms = outcome.latency_ms, "server tool call");
        let shown = if outcome.sensitive {
            crate::tools::schema::REDACTED
        } else {
            outcome.output.as_str()
        };
        tracing::debug!(tool = %call.name, output = %shown, "server tool result");
        let m = crate::metrics::global();
        m.tool_calls.inc_pair(&call.name, outcome.status);
        if outcome.status != "refused" {
            m.tool_seconds.observe_ms(outcome.latency_ms);
        }
        let error = (outcome.status != "ok").then(|| outcome.output.clone());
        let validation = if outcome.status == "refused" {
            "not_checked"
        } else {
            "valid"
        };
        self.audit.record(
            call,
            "server",
            validation,
            outcome.status,
            outcome.latency_ms,
            error,
        );
        if outcome.status == "refused" {
            self.ctx.out.send(ServerEvent::Error {
                error: ErrorBody {
                    kind: "invalid_request_error".into(),
                    code: Some("tool_not_allowed".into()),
                    message: format!(
                        "this API key may not use the tool `{}`; the model was told so",
                        call.name
                    ),
                    param: None,
                    event_id: None,
                },
            });
        }
        answer.server_log.push(json!({"call_id": call.id, "name": call.name, "status": outcome.status, "latency_ms": outcome.latency_ms}));
    }
}

/// The check of an answer that follows tool results: each sentence must be supported by a
/// result (the person's words may be repeated beside it); one that is not is replaced by the
/// newest result in plain words (`table: 7, time: 19:30`), so a small model cannot garble what
/// the tool said. `None` when there is no result.
fn check_by_results(
    messages: &[ChatMessage],
    user: &str,
    answering: &super::Answering,
    answer: &mut Answer,
) -> Option<Check> {
    let results: Vec<String> = messages
        .iter()
        .filter(|m| m.role == crate::prompt::Role::Tool)
        .map(|m| crate::llm::tool_prompt::readable_result(m.content.trim()))
        .filter(|r| !r.trim().is_empty())
        .collect();
    let newest = results.last()?.clone();
    answer.focus = Focus {
        sentences: vec![crate::grounding::Sentence {
            text: newest,
            passage: 0,
            position: 0,
            score: 1.0,
            referent: None,
            title: String::new(),
        }],
        question: user.to_string(),
    };
    Some(Check::new(
        results,
        vec![user.to_string()],
        answering.settings.min_support,
    ))
}

/// The verdicts for what the repeat guard let through: the text, then the end of a loop.
fn verdicts(g: Guarded) -> Vec<Verdict> {
    let mut out = Vec::new();
    if !g.send.is_empty() {
        out.push(Verdict::Send(g.send));
    }
    if g.ended {
        out.push(Verdict::End { reason: "repeat" });
    }
    out
}

/// Adds a round's token counts; the first round's timings are the answer's.
fn add_usage(total: &mut Usage, round: &Usage, first: bool) {
    total.prompt_tokens += round.prompt_tokens;
    total.completion_tokens += round.completion_tokens;
    total.cached_tokens += round.cached_tokens;
    if first {
        total.queue_ms = round.queue_ms;
        total.prefill_ms = round.prefill_ms;
        total.first_token_ms = round.first_token_ms;
        total.tokens_per_second = round.tokens_per_second;
        total.drafted_tokens = round.drafted_tokens;
    }
}

/// Acts on a checked sentence: sends it, says the extractive answer instead, or ends the
/// answer. Returns how the answer was made when it must stop here.
fn apply_verdict(
    verdict: Verdict,
    focus: &Focus,
    text: &mut String,
    first: &mut Option<Instant>,
    emit: impl Fn(String),
) -> Option<&'static str> {
    let mut say = |t: String| {
        if t.is_empty() {
            return;
        }
        first.get_or_insert_with(Instant::now);
        text.push_str(&t);
        emit(t);
    };
    match verdict {
        Verdict::Send(t) => {
            say(t);
            None
        }
        Verdict::Replace { unsupported } => {
            tracing::debug!(%unsupported, "the model's answer is not supported by the passages; saying the passage's own sentence");
            say(focus.spoken_best().unwrap_or_default());
            Some("replaced")
        }
        Verdict::End { reason } => {
            tracing::debug!(
                reason,
                "the answer ends before a sentence the passages do not support"
            );
            Some(if reason == "repeat" {
                "cut_repeat"
            } else {
                "cut_unsupported"
            })
        }
    }
}
