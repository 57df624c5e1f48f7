//! Process-wide metrics, rendered in the Prometheus text format at `GET /metrics`.
//!
//! The stages are the ones `voxd bench` measures from the client side: from `speech_stopped` to
//! the transcript, to the first answer token and to the end of the answer; plus ASR compute and
//! queue wait, retrieval, LLM queue wait, time to first token and decode speed. Counters: sessions,
//! turns, responses by status, errors by code (realtime `error` events and HTTP errors alike),
//! audio bytes received. Gauges (live sessions, process memory and CPU) are read at scrape time.
//!
//! A small registry of its own (a mutex per histogram, atomics for counters): a scrape or an
//! observation costs well under a microsecond, and no dependency is needed for the text format.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

/// Latency buckets, in seconds: 10 ms to 30 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.01, 0.025, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0,
];
/// Decode-speed buckets, in tokens per second.
const RATE_BUCKETS: &[f64] = &[1.0, 2.0, 5.0, 10.0, 15.0, 20.0, 30.0, 50.0, 100.0, 200.0];
/// Buckets for shares (0..1), such as an answer's groundedness.
const SHARE_BUCKETS: &[f64] = &[0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0];

/// A monotonically increasing count.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn inc(&self) {
        self.add(1);
    }

    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Counts by one label value.
#[derive(Debug, Default)]
pub struct LabelledCounter(Mutex<BTreeMap<String, u64>>);

impl LabelledCounter {
    pub fn inc(&self, label: &str) {
        *self
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(label.to_string())
            .or_default() += 1;
    }

    /// Adds `n` to one label value's count.
    pub fn add(&self, label: &str, n: u64) {
        *self
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(label.to_string())
            .or_default() += n;
    }

    /// Counts by two label values. Names come from clients (tool names), so at most
    /// [`MAX_SERIES`] pairs are kept; further ones count under `other`.
    pub fn inc_pair(&self, a: &str, b: &str) {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let mut key = format!("{a}\u{1f}{b}");
        if !map.contains_key(&key) && map.len() >= MAX_SERIES {
            key = format!("other\u{1f}{b}");
        }
        *map.entry(key).or_default() += 1;
    }

    fn snapshot(&self) -> BTreeMap<String, u64> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The count for one label value.
    pub fn get(&self, label: &str) -> u64 {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(label)
            .copied()
            .unwrap_or(0)
    }
}

/// Values by one label (set, not counted).
#[derive(Debug, Default)]
pub struct LabelledGauge(Mutex<BTreeMap<String, f64>>);

impl LabelledGauge {
    pub fn set(&self, label: &str, value: f64) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(label.to_string(), value);
    }

    fn snapshot(&self) -> BTreeMap<String, f64> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// Records the bytes of weights a loaded model holds (`voxd_model_memory_bytes{model=role}`).
pub fn model_memory(role: &str, bytes: u64) {
    global().model_memory.set(role, bytes as f64);
}

/// The size of a model file (its weights are read whole into memory), 0 if it cannot be read.
pub fn file_bytes(path: &std::path::Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

/// Hands memory freed after a model load back to the system. Loading parses whole model files
/// into buffers that are freed once the weights are in place, but glibc keeps freed heap memory
/// for reuse: without this the idle server kept ~50 MB it no longer used (measured with every
/// default model). A no-op off glibc.
#[allow(unsafe_code)]
pub fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        extern "C" {
            fn malloc_trim(pad: usize) -> std::os::raw::c_int;
        }
        // SAFETY: malloc_trim only returns free heap pages to the kernel; it is thread-safe.
        unsafe {
            malloc_trim(0);
        }
    }
}

/// Most label pairs one counter keeps.
pub const MAX_SERIES: usize = 1000;

#[derive(Debug)]
struct HistogramState {
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

/// A distribution over fixed buckets.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    state: Mutex<HistogramState>,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Histogram {
            bounds,
            state: Mutex::new(HistogramState {
                counts: vec![0; bounds.len()],
                sum: 0.0,
                count: 0,
            }),
        }
    }

    /// Records one value (non-finite values are ignored).
    pub fn observe(&self, value: f64) {
        if !value.is_finite() {
            return;
        }
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(i) = self.bounds.iter().position(|&b| value <= b) {
            s.counts[i] += 1;
        }
        s.sum += value;
        s.count += 1;
    }

    /// Records a duration in seconds.
    pub fn observe_duration(&self, d: Duration) {
        self.observe(d.as_secs_f64());
    }

    /// Records milliseconds as seconds.
    pub fn observe_ms(&self, ms: f64) {
        self.observe(ms / 1e3);
    }

    pub fn count(&self) -> u64 {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).count
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (bound, n) in self.bounds.iter().zip(&s.counts) {
            cumulative += n;
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
        }
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", s.count);
        let _ = writeln!(out, "{name}_sum {}", s.sum);
        let _ = writeln!(out, "{name}_count {}", s.count);
    }
}

/// Every metric voxd keeps.
#[derive(Debug)]
pub struct Metrics {
    pub sessions: Counter,
    pub turns: Counter,
    pub responses: LabelledCounter,
    /// Factual questions answered "I don't know" because no passage supports an answer.
    pub refusals: Counter,
    /// Questions that found nothing as heard and were answered once read with the knowledge
    /// base's words they sounded like.
    pub repaired_questions: Counter,
    /// Answers to questions by how they were made: `model`, `checked` (every sentence
    /// supported), `replaced` (the model's first sentence was not, so the extractive answer was
    /// said), `cut_repeat` / `cut_unsupported` (a later sentence was dropped and the answer ended),
    /// `extractive`, `refused`.
    pub answers: LabelledCounter,
    /// Responses that the knowledge base was asked for but that rest on no passage.
    pub uncited: Counter,
    /// Each grounded answer's groundedness: the share of its content words its passages hold.
    pub groundedness: Histogram,
    pub errors: LabelledCounter,
    pub audio_bytes_in: Counter,
    pub stopped_to_transcript: Histogram,
    pub stopped_to_first_token: Histogram,
    /// From the end of speech to the first audio of the spoken answer.
    pub stopped_to_first_audio: Histogram,
    pub stopped_to_done: Histogram,
    pub asr: Histogram,
    pub asr_queue_wait: Histogram,
    pub retrieval: Histogram,
    pub llm_queue_wait: Histogram,
    pub llm_first_token: Histogram,
    pub llm_tokens_per_second: Histogram,
    /// Synthesis compute per piece of speech.
    pub tts: Histogram,
    /// End-of-turn model compute per check (features and inference).
    pub turn_model: Histogram,
    /// End-of-turn checks by verdict (`complete`, `incomplete`, `error`).
    pub turn_checks: LabelledCounter,
    /// Tool calls by tool and outcome (`ok`, `invalid_retried`, `invalid_arguments`,
    /// `refused`, `error`, `timeout`…).
    pub tool_calls: LabelledCounter,
    /// Server tools' execution time.
    pub tool_seconds: Histogram,
    /// Requests to clients' MCP servers by server label and outcome (`list_ok`, `list_failed`,
    /// `ok`, `error`, `timeout`, `approval_requested`, `declined`).
    pub mcp_requests: LabelledCounter,
    /// Answers drafted while the person paused (`made`) and drafts an answer used (`used`).
    pub llm_drafts: LabelledCounter,
    /// Requests and sessions refused by a key's quota, by key id and limit (`sessions`,
    /// `requests`, `audio`).
    pub quota_rejections: LabelledCounter,
    /// Audio heard per API key id, in milliseconds.
    pub key_audio_ms: LabelledCounter,
    /// Bytes of weights each loaded model holds in memory, by role (`llm`, `asr`, `embeddings`,
    /// `voice`, `turn`, `vad`).
    pub model_memory: LabelledGauge,
}

/// The process's metrics.
pub fn global() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(|| Metrics {
        sessions: Counter::default(),
        turns: Counter::default(),
        responses: LabelledCounter::default(),
        refusals: Counter::default(),
        repaired_questions: Counter::default(),
        answers: LabelledCounter::default(),
        uncited: Counter::default(),
        groundedness: Histogram::new(SHARE_BUCKETS),
        errors: LabelledCounter::default(),
        audio_bytes_in: Counter::default(),
        stopped_to_transcript: Histogram::new(LATENCY_BUCKETS),
        stopped_to_first_token: Histogram::new(LATENCY_BUCKETS),
        stopped_to_first_audio: Histogram::new(LATENCY_BUCKETS),
        stopped_to_done: Histogram::new(LATENCY_BUCKETS),
        asr: Histogram::new(LATENCY_BUCKETS),
        asr_queue_wait: Histogram::new(LATENCY_BUCKETS),
        retrieval: Histogram::new(LATENCY_BUCKETS),
        llm_queue_wait: Histogram::new(LATENCY_BUCKETS),
        llm_first_token: Histogram::new(LATENCY_BUCKETS),
        llm_tokens_per_second: Histogram::new(RATE_BUCKETS),
        tts: Histogram::new(LATENCY_BUCKETS),
        turn_model: Histogram::new(LATENCY_BUCKETS),
        turn_checks: LabelledCounter::default(),
        tool_calls: LabelledCounter::default(),
        tool_seconds: Histogram::new(LATENCY_BUCKETS),
        mcp_requests: LabelledCounter::default(),
        llm_drafts: LabelledCounter::default(),
        quota_rejections: LabelledCounter::default(),
        key_audio_ms: LabelledCounter::default(),
        model_memory: LabelledGauge::default(),
    })
}

/// Values read at scrape time.
#[derive(Debug, Clone, Copy, Default)]
pub struct Gauges {
    pub live_sessions: usize,
    pub max_sessions: usize,
    /// Transcriptions waiting for a worker (finals, partials), if the ASR backend queues locally.
    pub asr_queue: Option<(usize, usize)>,
    /// Jobs waiting for the embedded LLM.
    pub llm_queue: Option<usize>,
    /// Pieces of speech waiting for a voice worker.
    pub tts_queue: Option<usize>,
}

fn counter(out: &mut String, name: &str, help: &str, value: f64) {
    let _ = writeln!(
        out,
        "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
    );
}

fn gauge(out: &mut String, name: &str, help: &str, value: f64) {
    let _ = writeln!(
        out,
        "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
    );
}

fn labelled(out: &mut String, name: &str, help: &str, label: &str, c: &LabelledCounter) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
    for (value, n) in c.snapshot() {
        let value = value.replace('\\', "\\\\").replace('"', "\\\"");
        let _ = writeln!(out, "{name}{{{label}=\"{value}\"}} {n}");
    }
}

fn labelled_pairs(
    out: &mut String,
    name: &str,
    help: &str,
    labels: [&str; 2],
    c: &LabelledCounter,
) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
    let esc = |v: &str| v.replace('\\', "\\\\").replace('"', "\\\"");
    for (key, n) in c.snapshot() {
        let (a, b) = key.split_once('\u{1f}').unwrap_or((&key, ""));
        let _ = writeln!(
            out,
            "{name}{{{}=\"{}\",{}=\"{}\"}} {n}",
            labels[0],
            esc(a),
            labels[1],
            esc(b)
        );
    }
}

/// Resident memory and CPU time of this process, from /proc (None elsewhere).
pub fn process_usage() -> Option<(u64, f64)> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let rss_kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which may hold spaces) start at state (field 3);
    // utime and stime are fields 14 and 15, in clock ticks (100 a second on Linux).
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some((rss_kb * 1024, ticks as f64 / 100.0))
}

/// Open file descriptors and threads of this process, from /proc (None elsewhere).
pub fn process_handles() -> Option<(usize, usize)> {
    let fds = std::fs::read_dir("/proc/self/fd").ok()?.count();
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let threads = status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))?
        .trim()
        .parse()
        .ok()?;
    Some((fds, threads))
}

impl Metrics {
    /// The Prometheus text exposition (format 0.0.4).
    pub fn render(&self, gauges: Gauges) -> String {
        let mut out = String::with_capacity(8 * 1024);
        self.render_sessions(&mut out, &gauges);
        self.render_counters(&mut out);
        self.render_histograms(&mut out);
        render_process(&mut out);
        out
    }

    /// Sessions and the work queues.
    fn render_sessions(&self, out: &mut String, gauges: &Gauges) {
        counter(
            out,
            "voxd_sessions_total",
            "Realtime sessions opened.",
            self.sessions.get() as f64,
        );
        gauge(
            out,
            "voxd_live_sessions",
            "Realtime sessions open now.",
            gauges.live_sessions as f64,
        );
        gauge(
            out,
            "voxd_max_sessions",
            "The session limit (--max-sessions).",
            gauges.max_sessions as f64,
        );
        if let Some((finals, partials)) = gauges.asr_queue {
            let name = "voxd_asr_queue_depth";
            let _ = writeln!(
                out,
                "# HELP {name} Transcriptions waiting for a whisper worker.\n# TYPE {name} gauge\n\
                 {name}{{priority=\"final\"}} {finals}\n{name}{{priority=\"partial\"}} {partials}"
            );
        }
        if let Some(n) = gauges.tts_queue {
            gauge(
                out,
                "voxd_tts_queue_depth",
                "Pieces of speech waiting for a voice worker.",
                n as f64,
            );
        }
        if let Some(n) = gauges.llm_queue {
            gauge(
                out,
                "voxd_llm_queue_depth",
                "Jobs waiting for the embedded LLM (answers, paused answers, early prefills).",
                n as f64,
            );
        }
    }

    /// Turns, responses, answers, errors, checks, drafts, tool calls and audio in.
    fn render_counters(&self, out: &mut String) {
        counter(
            out,
            "voxd_turns_total",
            "Turns transcribed.",
            self.turns.get() as f64,
        );
        labelled(
            out,
            "voxd_responses_total",
            "Responses finished, by status.",
            "status",
            &self.responses,
        );
        counter(
            out,
            "voxd_refusals_total",
            "Factual questions answered \"I don't know\" because no passage of the knowledge base supports an answer.",
            self.refusals.get() as f64,
        );
        counter(
            out,
            "voxd_repaired_questions_total",
            "Questions that found nothing as heard and were answered once read with the knowledge base's words they sounded like.",
            self.repaired_questions.get() as f64,
        );
        labelled(
            out,
            "voxd_answers_total",
            "Answers by how they were made: model, checked (every sentence supported by the passages), replaced (the model's unsupported answer replaced by the passage's own sentence), cut_repeat and cut_unsupported (a later sentence dropped), extractive, refused.",
            "outcome",
            &self.answers,
        );
        counter(
            out,
            "voxd_responses_uncited_total",
            "Responses the knowledge base was searched for that rest on no passage.",
            self.uncited.get() as f64,
        );
        labelled(
            out,
            "voxd_errors_total",
            "Errors sent to clients (realtime error events and HTTP errors), by code.",
            "code",
            &self.errors,
        );
        labelled(
            out,
            "voxd_turn_checks_total",
            "End-of-turn model checks at a pause (semantic_vad), by verdict: complete, incomplete, error.",
            "verdict",
            &self.turn_checks,
        );
        labelled(
            out,
            "voxd_llm_drafts_total",
            "Answers drafted while the person paused (made), drafts a response used (used), and drafts not made because their answer had already begun (late).",
            "outcome",
            &self.llm_drafts,
        );
        labelled_pairs(
            out,
            "voxd_quota_rejections_total",
            "Requests and sessions refused by an API key's quota, by key id and limit (sessions, requests, audio).",
            ["key_id", "limit"],
            &self.quota_rejections,
        );
        let name = "voxd_key_audio_seconds_total";
        let _ = writeln!(out, "# HELP {name} Audio heard (realtime and uploads) per API key id.\n# TYPE {name} counter");
        for (key, ms) in self.key_audio_ms.snapshot() {
            let key = key.replace('\\', "\\\\").replace('"', "\\\"");
            let _ = writeln!(out, "{name}{{key_id=\"{key}\"}} {}", ms as f64 / 1000.0);
        }
        labelled_pairs(
            out,
            "voxd_tool_calls_total",
            "Tool calls by tool and outcome (ok, invalid_retried, invalid_arguments, refused, error, timeout).",
            ["tool", "status"],
            &self.tool_calls,
        );
        labelled_pairs(
            out,
            "voxd_mcp_requests_total",
            "Requests to MCP servers clients attached, by server label and outcome.",
            ["server", "outcome"],
            &self.mcp_requests,
        );
        counter(
            out,
            "voxd_audio_bytes_in_total",
            "Audio bytes received on realtime sessions (decoded from base64).",
            self.audio_bytes_in.get() as f64,
        );
    }

    /// The latency and quality histograms, and each model's memory.
    fn render_histograms(&self, out: &mut String) {
        let hists: [(&Histogram, &str, &str); 14] = [
            (
                &self.groundedness,
                "voxd_answer_groundedness",
                "Share of each grounded answer's content words (numbers, names, facts) that its passages hold; 1 - this is a hallucination score.",
            ),
            (
                &self.tool_seconds,
                "voxd_tool_call_seconds",
                "Server tools' execution time per call.",
            ),
            (
                &self.stopped_to_transcript,
                "voxd_speech_stopped_to_transcript_seconds",
                "From speech_stopped to the final transcript.",
            ),
            (
                &self.stopped_to_first_token,
                "voxd_speech_stopped_to_first_token_seconds",
                "From speech_stopped to the first answer token.",
            ),
            (
                &self.stopped_to_first_audio,
                "voxd_speech_stopped_to_first_audio_seconds",
                "From speech_stopped to the first audio of the spoken answer.",
            ),
            (
                &self.stopped_to_done,
                "voxd_speech_stopped_to_response_done_seconds",
                "From speech_stopped to response.done.",
            ),
            (
                &self.asr,
                "voxd_asr_seconds",
                "ASR compute per final transcript.",
            ),
            (
                &self.asr_queue_wait,
                "voxd_asr_queue_wait_seconds",
                "Wait for a free ASR worker per final transcript.",
            ),
            (
                &self.tts,
                "voxd_tts_seconds",
                "Speech synthesis compute per piece (a clause or sentence).",
            ),
            (
                &self.turn_model,
                "voxd_turn_model_seconds",
                "End-of-turn model compute per check (semantic_vad).",
            ),
            (
                &self.retrieval,
                "voxd_retrieval_seconds",
                "Knowledge-base retrieval per response.",
            ),
            (
                &self.llm_queue_wait,
                "voxd_llm_queue_wait_seconds",
                "Wait for the LLM per response.",
            ),
            (
                &self.llm_first_token,
                "voxd_llm_time_to_first_token_seconds",
                "From the start of a response to its first token.",
            ),
            (
                &self.llm_tokens_per_second,
                "voxd_llm_tokens_per_second",
                "Decode speed per response.",
            ),
        ];
        for (h, name, help) in hists {
            h.render(out, name, help);
        }
        let models = self.model_memory.snapshot();
        if !models.is_empty() {
            let name = "voxd_model_memory_bytes";
            let _ = writeln!(
                out,
                "# HELP {name} Bytes of weights each loaded model holds (working buffers not included).\n# TYPE {name} gauge"
            );
            for (model, bytes) in models {
                let _ = writeln!(out, "{name}{{model=\"{model}\"}} {bytes}");
            }
        }
    }
}

/// The process's memory, CPU, file descriptors and threads.
fn render_process(out: &mut String) {
    if let Some((rss, cpu)) = process_usage() {
        gauge(
            out,
            "process_resident_memory_bytes",
            "Resident memory size in bytes.",
            rss as f64,
        );
        counter(
            out,
            "process_cpu_seconds_total",
            "User and system CPU time spent in seconds.",
            cpu,
        );
    }
    if let Some((fds, threads)) = process_handles() {
        gauge(
            out,
            "process_open_fds",
            "Number of open file descriptors.",
            fds as f64,
        );
        gauge(
            out,
            "process_threads",
            "Number of OS threads.",
            threads as f64,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_render_cumulative_buckets() {
        let h = Histogram::new(&[0.1, 1.0]);
        for v in [0.05, 0.5, 0.7, 3.0, f64::NAN] {
            h.observe(v);
        }
        let mut out = String::new();
        h.render(&mut out, "x_seconds", "X.");
        assert!(out.contains("x_seconds_bucket{le=\"0.1\"} 1\n"));
        assert!(out.contains("x_seconds_bucket{le=\"1\"} 3\n"));
        assert!(out.contains("x_seconds_bucket{le=\"+Inf\"} 4\n"));
        assert!(out.contains("x_seconds_count 4\n"));
        assert!(out.contains("x_seconds_sum 4.25\n"));
    }

    #[test]
    fn labels_are_escaped_and_process_usage_is_read() {
        let c = LabelledCounter::default();
        c.inc("a\"b");
        let mut out = String::new();
        labelled(&mut out, "e_total", "E.", "code", &c);
        assert!(out.contains("e_total{code=\"a\\\"b\"} 1"));
        let (rss, cpu) = process_usage().expect("Linux /proc");
        assert!(rss > 1 << 20 && cpu >= 0.0);
    }
}
