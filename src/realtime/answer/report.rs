//! The last step of an answer: report it. Its status, the span's and the metrics' figures, the
//! timing extension, and the `response` object sent in `response.created` and `response.done`.

use std::time::Instant;

use serde_json::{json, Value};

use super::{Answer, ResponseParams, Stop};
use crate::grounding;
use crate::llm::{FinishReason, LlmError, Usage};
use crate::protocol::{ErrorBody, Item};
use crate::rag::SearchResults;

/// The response's status and `status_details` for how its work ended.
pub(super) fn status(outcome: &Result<(), Stop>, finish: FinishReason) -> (&'static str, Value) {
    match outcome {
        // Cut by max_output_tokens.
        Ok(()) if finish == FinishReason::Length => (
            "incomplete",
            json!({ "type": "incomplete", "reason": "max_output_tokens" }),
        ),
        Ok(()) => ("completed", Value::Null),
        Err(Stop::Cancelled(reason)) => (
            "cancelled",
            json!({ "type": "cancelled", "reason": reason }),
        ),
        // Fail closed: the answer says so rather than answer from the model's own memory.
        Err(Stop::Ungrounded) => (
            "failed",
            json!({ "type": "failed", "error": { "type": "server_error", "code": "retrieval_failed", "message": "the knowledge base could not be searched, so no answer was generated" } }),
        ),
        Err(Stop::Failed(e)) => (
            "failed",
            json!({ "type": "failed", "error": { "type": "server_error", "code": e.code(), "message": e.public_message() } }),
        ),
    }
}

fn ms(a: Instant, b: Instant) -> f64 {
    (b - a).as_secs_f64() * 1e3
}

/// When the response began, and when the person stopped talking.
pub(super) struct Clock {
    pub started: Instant,
    pub speech_stopped_at: Option<Instant>,
}

/// Records the finished answer on the `response` span and in the metrics; returns how much of
/// it its passages hold (the same measure `voxd eval` reports).
pub(super) fn record(answer: &Answer, status: &'static str, clock: &Clock) -> Option<f64> {
    let (usage, made, results) = (&answer.usage, answer.made, &answer.results);
    // The outcome on the `response` span (logs and OTLP traces).
    let span = tracing::Span::current();
    span.record("status", status);
    if let Some(f) = answer.first_delta {
        span.record("first_token_ms", ms(clock.started, f));
    }
    // Signed: OTLP has no unsigned integers (a u64 would be exported as a string).
    span.record("prompt_tokens", usage.prompt_tokens as i64);
    span.record("cached_tokens", usage.cached_tokens as i64);
    span.record("output_tokens", usage.completion_tokens as i64);
    let m = crate::metrics::global();
    m.responses.inc(status);
    if let Some(made) = made {
        m.answers.inc(made);
    }
    if results.as_ref().is_some_and(|r| !r.grounded) {
        m.uncited.inc();
    }
    let groundedness = results
        .as_ref()
        .filter(|r| r.grounded && !answer.text.trim().is_empty() && made != Some("refused"))
        .map(|r| {
            let passages: Vec<&str> = r.passages.iter().map(|p| p.text.as_str()).collect();
            grounding::support::groundedness(&answer.text, &passages)
        });
    if let Some(g) = groundedness {
        m.groundedness.observe(g);
    }
    if results.is_some() {
        m.retrieval.observe_ms(answer.retrieval_ms);
    }
    // The LLM's own figures, when it was asked.
    let by_model = !matches!(made, Some("extractive" | "refused"));
    if let (Some(f), true) = (answer.first_delta, by_model) {
        m.llm_queue_wait.observe_ms(usage.queue_ms);
        m.llm_first_token.observe_ms(ms(clock.started, f));
        m.llm_tokens_per_second.observe(usage.tokens_per_second);
    }
    if let (Some(f), Some(s)) = (answer.first_delta, clock.speech_stopped_at) {
        m.stopped_to_first_token.observe_ms(ms(s, f));
    }
    if let (Some(s), Some(a)) = (clock.speech_stopped_at, answer.first_audio) {
        m.stopped_to_first_audio.observe_ms(ms(s, a));
    }
    if let (Some(s), "completed") = (clock.speech_stopped_at, status) {
        m.stopped_to_done.observe_duration(s.elapsed());
    }
    groundedness
}

/// The `response` object of `response.done`, with voxd's additions: how the answer was made,
/// how much of it its passages hold, the server tools it ran, and its timing. Records the
/// answer's figures on the way.
pub(super) fn finished(
    id: &str,
    (status, details): (&'static str, Value),
    output: Vec<Item>,
    params: &ResponseParams,
    answer: &mut Answer,
    clock: &Clock,
) -> Value {
    let groundedness = record(answer, status, clock);
    let timing = timing(answer, clock);
    let mut response = response_object(
        id,
        status,
        details,
        output,
        params,
        Some((&answer.usage, &answer.results, timing)),
    );
    response["voxd"]["answer"] = json!(answer.made);
    response["voxd"]["groundedness"] = json!(groundedness);
    response["voxd"]["tool_calls"] = Value::Array(std::mem::take(&mut answer.server_log));
    response
}

/// The `voxd_timing` extension of `response.done`.
pub(super) fn timing(answer: &Answer, clock: &Clock) -> Value {
    let usage = &answer.usage;
    let since_stop = |at: Option<Instant>| match (clock.speech_stopped_at, at) {
        (Some(s), Some(a)) => Some(ms(s, a)),
        _ => None,
    };
    json!({
        "retrieval_ms": answer.retrieval_ms,
        "grounded": answer.results.as_ref().map(|r| r.grounded),
        "first_token_ms": answer.first_delta.map(|f| ms(clock.started, f)),
        "speech_stopped_to_first_token_ms": since_stop(answer.first_delta),
        "first_audio_ms": answer.first_audio.map(|a| ms(clock.started, a)),
        "speech_stopped_to_first_audio_ms": since_stop(answer.first_audio),
        "audio_ms": answer.audio.as_ref().and_then(|p| p.last()).map(|p| p.end_ms),
        "total_ms": clock.started.elapsed().as_secs_f64() * 1e3,
        "llm_queue_ms": usage.queue_ms,
        "llm_prefill_ms": usage.prefill_ms,
        "prompt_tokens": usage.prompt_tokens,
        "cached_tokens": usage.cached_tokens,
        "drafted_tokens": usage.drafted_tokens,
        "tokens_per_second": usage.tokens_per_second,
    })
}

pub(super) fn citations_json(results: &Option<SearchResults>) -> Value {
    match results {
        Some(r) => Value::Array(
            r.passages
                .iter()
                .enumerate()
                .map(|(i, p)| {
                    let mut c = serde_json::to_value(&p.citation).unwrap_or(Value::Null);
                    c["index"] = json!(i + 1);
                    c["similarity"] = json!(p.similarity);
                    c["quote"] = json!(p.text);
                    c
                })
                .collect(),
        ),
        None => json!([]),
    }
}

pub(super) fn response_object(
    id: &str,
    status: &str,
    details: Value,
    output: Vec<Item>,
    params: &ResponseParams,
    extra: Option<(&Usage, &Option<SearchResults>, Value)>,
) -> Value {
    let mut r = json!({
        "object": "realtime.response",
        "id": id,
        "status": status,
        "status_details": details,
        "output": output,
        "conversation_id": params.conversation.as_ref().map(|_| "conv_default"),
        "output_modalities": [if params.speech.is_some() { "audio" } else { "text" }],
        "max_output_tokens": params.max_tokens,
        "metadata": params.metadata,
        "usage": null,
    });
    if let Some((usage, results, timing)) = extra {
        // voxd's addition: the passages the answer is grounded in.
        r["voxd"] = json!({
            "citations": citations_json(results),
            "grounded": results.as_ref().map(|r| r.grounded),
        });
        r["usage"] = json!({
            "total_tokens": usage.prompt_tokens + usage.completion_tokens,
            "input_tokens": usage.prompt_tokens,
            "output_tokens": usage.completion_tokens,
            "input_token_details": {
                "text_tokens": usage.prompt_tokens,
                "audio_tokens": 0,
                "cached_tokens": usage.cached_tokens,
            },
            "output_token_details": { "text_tokens": usage.completion_tokens, "audio_tokens": 0 },
        });
        r["voxd_timing"] = timing;
    }
    r
}

pub(super) fn error_body(e: &LlmError) -> ErrorBody {
    ErrorBody {
        kind: "server_error".into(),
        code: Some(e.code().into()),
        message: e.public_message(),
        param: None,
        event_id: None,
    }
}
