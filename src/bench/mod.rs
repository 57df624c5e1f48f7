//! `voxd bench`: the load and latency tool.
//!
//! N simulated users each open a realtime session and stream real recordings at real-time pace
//! (20 ms frames, as a microphone delivers them), turn after turn, over WebSockets or WebRTC
//! calls ([`link`]; both in one run, level by level, to compare them). Each
//! utterance's true end of speech is known ([`speech`]), so every latency starts when the person
//! really stopped: to `speech_stopped`, to the final transcript, to the first answer token, to
//! `response.done`. Levels of concurrency run one after the other; the server's CPU and memory
//! come from its `/metrics`. Results: a table, JSON ([`report::Report`]) and an SVG plot.

pub mod link;
pub mod report;
pub mod speech;

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::time::sleep_until;

use crate::client::{ClientError, Incoming};
use crate::protocol::ServerEvent;
use link::{LinkReceiver, LinkSender, Transport};
use report::{Level, Report, ServerUsage, Snapshot, TurnRecord};
use speech::Recording;

/// Bench failures.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("cannot read {path}: {message}")]
    Audio { path: String, message: String },
    #[error("no speech found in {0}")]
    NoSpeech(String),
    #[error("{path}: {message}")]
    Io { path: String, message: String },
    #[error("realtime session: {0}")]
    Client(#[from] ClientError),
    #[error("{0}")]
    Config(String),
}

/// What to run.
#[derive(Debug, Clone)]
pub struct BenchConfig {
    /// `ws://HOST/v1/realtime`.
    pub url: String,
    pub api_key: Option<String>,
    /// Concurrency levels, run in order.
    pub sessions: Vec<usize>,
    /// Transports, each run at every level (WebSocket, then WebRTC, at one level before the
    /// next).
    pub transports: Vec<Transport>,
    /// Turns (recordings streamed) per session per level.
    pub turns: usize,
    /// With a duration, each session keeps starting turns until it has passed (at least one).
    pub duration: Option<Duration>,
    /// Ask for answers (a `realtime` session) or only transcripts (`transcription`).
    pub answers: bool,
    /// `server_vad`'s silence window.
    pub silence_ms: u64,
    /// `semantic_vad` with this eagerness instead of `server_vad` (`low`, `medium`, `high`,
    /// `auto`).
    pub semantic: Option<String>,
    /// The voice detector: `webrtc` or `silero`.
    pub vad: String,
    /// Longest wait for a turn's events after its audio ended.
    pub turn_timeout: Duration,
    pub progress: bool,
}

impl BenchConfig {
    /// The session's `turn_detection`.
    fn turn_detection(&self) -> serde_json::Value {
        match &self.semantic {
            Some(e) => json!({"type": "semantic_vad", "eagerness": e}),
            None => json!({"type": "server_vad", "silence_duration_ms": self.silence_ms}),
        }
    }

    /// How the report names the turn detection.
    fn turn_detection_name(&self) -> String {
        match &self.semantic {
            Some(e) => format!("semantic_vad ({e}), {}", self.vad),
            None => format!("server_vad {} ms, {}", self.silence_ms, self.vad),
        }
    }

    /// The utterance a `speech_stopped` at `audio_end_ms` (of the recording) ends: with
    /// `server_vad`, the one whose end plus the window is nearest; with `semantic_vad`, the last
    /// one to end before it (the model's wait varies from 200 ms to the eagerness's longest).
    fn match_stop(&self, segments: &[(u64, u64)], audio_end_ms: i64) -> Option<usize> {
        match &self.semantic {
            None => {
                let end = audio_end_ms - self.silence_ms as i64;
                segments
                    .iter()
                    .enumerate()
                    .map(|(i, &(_, e))| (i, (e as i64 - end).abs()))
                    .min_by_key(|&(_, d)| d)
                    .filter(|&(_, d)| d <= MATCH_TOLERANCE_MS)
                    .map(|(i, _)| i)
            }
            Some(e) => {
                let longest = match e.as_str() {
                    "low" => 8_000,
                    "high" => 2_000,
                    _ => 4_000,
                };
                segments
                    .iter()
                    .enumerate()
                    .filter(|&(_, &(_, end))| {
                        let waited = audio_end_ms - end as i64;
                        (-MATCH_TOLERANCE_MS..=longest + MATCH_TOLERANCE_MS).contains(&waited)
                    })
                    .map(|(i, _)| i)
                    .next_back()
            }
        }
    }
}

/// The sample rate the bench streams at (OpenAI's default input rate, so the server resamples).
pub const STREAM_RATE: u32 = 24_000;
const FRAME_MS: u64 = 20;

/// `http://HOST` for `ws://HOST/v1/realtime`.
fn http_base(url: &str) -> String {
    let rest = url
        .strip_prefix("ws://")
        .map(|r| format!("http://{r}"))
        .or_else(|| url.strip_prefix("wss://").map(|r| format!("https://{r}")))
        .unwrap_or_else(|| url.to_string());
    match rest.find("/v1/") {
        Some(i) => rest[..i].to_string(),
        None => rest,
    }
}

/// The server's `/metrics` text.
async fn metrics_text(http: &reqwest::Client, base: &str, key: Option<&str>) -> Option<String> {
    let mut req = http.get(format!("{base}/metrics"));
    if let Some(k) = key {
        req = req.bearer_auth(k);
    }
    req.send().await.ok()?.text().await.ok()
}

/// The value of an unlabelled metric, or the sum of a labelled one's series.
fn metric(text: &str, name: &str) -> Option<f64> {
    let mut found = None;
    for l in text.lines().filter(|l| !l.starts_with('#')) {
        let Some(rest) = l.strip_prefix(name) else {
            continue;
        };
        let value = if let Some(v) = rest.strip_prefix(' ') {
            v
        } else if rest.starts_with('{') {
            rest.rsplit_once(' ').map(|(_, v)| v).unwrap_or("")
        } else {
            continue;
        };
        if let Ok(v) = value.trim().parse::<f64>() {
            found = Some(found.unwrap_or(0.0) + v);
        }
    }
    found
}

/// Reads `process_cpu_seconds_total` and `process_resident_memory_bytes` from `/metrics`.
async fn server_usage(http: &reqwest::Client, base: &str, key: Option<&str>) -> Option<(f64, f64)> {
    let text = metrics_text(http, base, key).await?;
    Some((
        metric(&text, "process_cpu_seconds_total")?,
        metric(&text, "process_resident_memory_bytes")?,
    ))
}

/// The server's memory, file descriptors, threads, live sessions and error count.
async fn snapshot(http: &reqwest::Client, base: &str, key: Option<&str>) -> Option<Snapshot> {
    let text = metrics_text(http, base, key).await?;
    Some(Snapshot {
        rss_mb: metric(&text, "process_resident_memory_bytes")? / 1e6,
        open_fds: metric(&text, "process_open_fds").unwrap_or(0.0),
        threads: metric(&text, "process_threads").unwrap_or(0.0),
        live_sessions: metric(&text, "voxd_live_sessions").unwrap_or(0.0),
        errors: metric(&text, "voxd_errors_total").unwrap_or(0.0),
    })
}

/// Runs every level and returns the report. `on_turn` is called after each turn (progress).
pub async fn run(
    cfg: &BenchConfig,
    recordings: Vec<Recording>,
    on_turn: Arc<dyn Fn(&TurnRecord) + Send + Sync>,
) -> Result<Report, BenchError> {
    if recordings.is_empty()
        || cfg.sessions.is_empty()
        || cfg.sessions.contains(&0)
        || cfg.transports.is_empty()
    {
        return Err(BenchError::Config(
            "give at least one recording and session counts of 1 or more".into(),
        ));
    }
    let recordings = Arc::new(recordings);
    let http = reqwest::Client::new();
    let base = http_base(&cfg.url);
    let mut report = Report {
        voxd_version: env!("CARGO_PKG_VERSION").into(),
        url: cfg.url.clone(),
        answers: cfg.answers,
        silence_ms: cfg.silence_ms,
        turn_detection: cfg.turn_detection_name(),
        recordings: recordings.iter().map(|r| r.name.clone()).collect(),
        ..Default::default()
    };
    let levels: Vec<(usize, Transport)> = cfg
        .sessions
        .iter()
        .flat_map(|&n| cfg.transports.iter().map(move |&t| (n, t)))
        .collect();
    for (n, transport) in levels {
        tracing::info!(sessions = n, transport = transport.name(), "bench level");
        let start = snapshot(&http, &base, cfg.api_key.as_deref()).await;
        let before = server_usage(&http, &base, cfg.api_key.as_deref()).await;
        // Sample the server's memory while the level runs.
        let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
        let sampler = {
            let (http, base, key) = (http.clone(), base.clone(), cfg.api_key.clone());
            tokio::spawn(async move {
                let mut max_rss: f64 = 0.0;
                loop {
                    if let Some((_, rss)) = server_usage(&http, &base, key.as_deref()).await {
                        max_rss = max_rss.max(rss);
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                        _ = stop_rx.changed() => return max_rss,
                    }
                }
            })
        };
        let started = Instant::now();
        let mut tasks = Vec::new();
        for s in 0..n {
            let (cfg, recs, on_turn) = (cfg.clone(), recordings.clone(), on_turn.clone());
            // Stagger the starts over one second so sessions do not speak in lockstep.
            let offset = Duration::from_millis(1000 * s as u64 / n as u64);
            tasks.push(tokio::spawn(async move {
                tokio::time::sleep(offset).await;
                user(&cfg, transport, n, s, &recs, on_turn.as_ref()).await
            }));
        }
        let mut turns = Vec::new();
        for t in tasks {
            match t.await {
                Ok(Ok(mut records)) => turns.append(&mut records),
                Ok(Err(e)) => return Err(e),
                Err(e) => return Err(BenchError::Config(format!("a session task failed: {e}"))),
            }
        }
        let wall = started.elapsed().as_secs_f64();
        let _ = stop_tx.send(true);
        let max_rss = sampler.await.unwrap_or(0.0);
        let after = server_usage(&http, &base, cfg.api_key.as_deref()).await;
        // The clients have closed their sockets: give the server a moment to tear the sessions
        // down, then see what is left (a soak's leak check).
        let mut end = None;
        for _ in 0..50 {
            end = snapshot(&http, &base, cfg.api_key.as_deref()).await;
            if end.is_none_or(|e| e.live_sessions == 0.0) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let mut level = Level::from_turns(n, transport.name(), &turns, wall);
        if let (Some((cpu0, _)), Some((cpu1, rss1))) = (before, after) {
            level.server = Some(ServerUsage {
                cpu_cores: (cpu1 - cpu0) / wall,
                rss_max_mb: max_rss.max(rss1) / 1e6,
                start,
                end,
            });
        }
        report.levels.push(level);
        report.turns.append(&mut turns);
    }
    Ok(report)
}

/// One simulated user: a session, turns until done.
async fn user(
    cfg: &BenchConfig,
    transport: Transport,
    level: usize,
    index: usize,
    recordings: &[Recording],
    on_turn: &(dyn Fn(&TurnRecord) + Send + Sync),
) -> Result<Vec<TurnRecord>, BenchError> {
    let (mut tx, mut rx) = link::open(
        transport,
        &cfg.url,
        &http_base(&cfg.url),
        cfg.api_key.as_deref(),
        STREAM_RATE,
    )
    .await?;
    tx.update_session(json!({
        "type": if cfg.answers { "realtime" } else { "transcription" },
        "audio": {"input": {
            "format": {"type": "audio/pcm", "rate": STREAM_RATE},
            "turn_detection": cfg.turn_detection(),
        }},
        "voxd": {"vad": cfg.vad},
    }))
    .await?;
    let started = Instant::now();
    let mut records = Vec::new();
    let mut turn = 0;
    // The session's audio clock: samples sent so far (the server's `audio_end_ms` counts them).
    let mut sent_samples = 0u64;
    loop {
        let more = match cfg.duration {
            Some(d) => turn == 0 || started.elapsed() < d,
            None => turn < cfg.turns,
        };
        if !more {
            break;
        }
        // Each user starts at a different recording.
        let rec = &recordings[(index + turn) % recordings.len()];
        let offset_ms = sent_samples * 1000 / STREAM_RATE as u64;
        let (mut out, sent) = stream_turn(cfg, &mut tx, &mut rx, rec, offset_ms).await?;
        sent_samples += sent;
        for r in &mut out {
            r.sessions = level;
            r.transport = transport.name().to_string();
            r.session = index;
            on_turn(r);
        }
        records.append(&mut out);
        turn += 1;
    }
    tx.close().await;
    Ok(records)
}

/// What arrived for one utterance (Instants).
#[derive(Default)]
struct Arrivals {
    stopped: Option<Instant>,
    completed: Option<Instant>,
    text: String,
    asr_rtf: Option<f64>,
    speculative: Option<bool>,
    drafted_tokens: Option<u64>,
    response: Option<String>,
    first_token: Option<Instant>,
    first_audio: Option<Instant>,
    created: Option<Instant>,
    done: Option<(Instant, String)>,
}

/// How far (ms) a server turn's end may be from an utterance's known end to be that utterance.
const MATCH_TOLERANCE_MS: i64 = 400;

/// Streams one recording at real-time pace, then silence until its turns are answered (or the
/// timeout); returns one record per utterance and the number of samples sent. `offset_ms` is the
/// session's audio time when the recording starts: each `speech_stopped` is matched to the
/// utterance whose end (plus the silence window) is nearest its `audio_end_ms`, so a turn the
/// server split or merged differently from the offline pass is not misattributed.
async fn stream_turn(
    cfg: &BenchConfig,
    tx: &mut LinkSender,
    rx: &mut LinkReceiver,
    rec: &Recording,
    offset_ms: u64,
) -> Result<(Vec<TurnRecord>, u64), BenchError> {
    let frame = (rec.rate as u64 * FRAME_MS / 1000) as usize;
    let silence = vec![0.0f32; frame];
    let mut tracker = Tracker::new(cfg, &rec.speech.segments, offset_ms);
    tracker.audio_after_done = matches!(rx, LinkReceiver::Rtc(_));
    let mut sent_samples = 0u64;
    let t0 = Instant::now();
    let audio_frames = rec.samples.len().div_ceil(frame);
    let deadline = t0 + Duration::from_millis(rec.speech.duration_ms) + cfg.turn_timeout;
    let mut next_frame = 0usize;
    while !tracker.finished() && Instant::now() < deadline {
        // A frame is sent when a microphone would have delivered it: at the end of its 20 ms.
        let due = t0 + Duration::from_millis((next_frame as u64 + 1) * FRAME_MS);
        tokio::select! {
            biased;
            msg = rx.next() => {
                let now = Instant::now();
                let event = match msg {
                    Some(Ok(Incoming::Event(e))) => e,
                    Some(Ok(Incoming::Audio(_))) => {
                        tracker.on_audio(now);
                        continue;
                    }
                    Some(Ok(Incoming::Other(_))) => continue,
                    Some(Ok(Incoming::Closed { code, reason })) => {
                        return Err(BenchError::Config(format!("the server closed the session: {code} {reason}")));
                    }
                    Some(Err(e)) => return Err(e),
                    None => return Err(BenchError::Config("the session ended".into())),
                };
                tracker.on_event(event, now);
            }
            _ = sleep_until(due.into()) => {
                let chunk = if next_frame < audio_frames {
                    let end = ((next_frame + 1) * frame).min(rec.samples.len());
                    &rec.samples[next_frame * frame..end]
                } else {
                    &silence[..]
                };
                tx.send_audio(chunk).await?;
                sent_samples += chunk.len() as u64;
                next_frame += 1;
            }
        }
    }
    Ok((tracker.records(&rec.name, t0), sent_samples))
}

/// What has arrived for each utterance of one recording streamed once.
struct Tracker<'a> {
    cfg: &'a BenchConfig,
    segments: &'a [(u64, u64)],
    offset_ms: u64,
    arrivals: Vec<Arrivals>,
    /// Turns the server ended, and turns it transcribed.
    n_stopped: usize,
    n_completed: usize,
    /// Which utterance each server turn (item) is.
    item_segment: std::collections::HashMap<String, usize>,
    last_completed: Option<usize>,
    /// Answer audio may come after `response.done` (a WebRTC call's track is paced in real
    /// time): a completed answer is finished only once its first audio has arrived.
    audio_after_done: bool,
}

impl<'a> Tracker<'a> {
    fn new(cfg: &'a BenchConfig, segments: &'a [(u64, u64)], offset_ms: u64) -> Self {
        Tracker {
            cfg,
            segments,
            offset_ms,
            arrivals: (0..segments.len()).map(|_| Arrivals::default()).collect(),
            n_stopped: 0,
            n_completed: 0,
            item_segment: Default::default(),
            last_completed: None,
            audio_after_done: false,
        }
    }

    /// Done when every server turn is transcribed and the last utterance is (and is answered).
    fn finished(&self) -> bool {
        let answered = |l: &Arrivals| match &l.done {
            None => false,
            Some((_, status)) => {
                !self.audio_after_done || status != "completed" || l.first_audio.is_some()
            }
        };
        self.n_stopped == self.n_completed
            && self
                .arrivals
                .last()
                .is_some_and(|l| l.completed.is_some() && (!self.cfg.answers || answered(l)))
    }

    /// Answer audio that is not an event (a packet on a WebRTC call's track): the first audio of
    /// the latest answer that has none yet.
    fn on_audio(&mut self, now: Instant) {
        if let Some(a) = self
            .arrivals
            .iter_mut()
            .rev()
            .find(|a| a.created.is_some())
            .filter(|a| a.first_audio.is_none())
        {
            a.first_audio = Some(now);
        }
    }

    /// Notes when an event of an utterance's turn arrived.
    fn on_event(&mut self, event: ServerEvent, now: Instant) {
        match event {
            ServerEvent::SpeechStopped {
                audio_end_ms,
                item_id,
            } => {
                self.n_stopped += 1;
                let at = audio_end_ms as i64 - self.offset_ms as i64;
                if let Some(i) = self.cfg.match_stop(self.segments, at) {
                    self.arrivals[i].stopped = Some(now);
                    self.item_segment.insert(item_id, i);
                }
            }
            ServerEvent::TranscriptionCompleted {
                item_id,
                transcript,
                voxd_timing,
                ..
            } => {
                self.n_completed += 1;
                self.last_completed = self.item_segment.get(&item_id).copied();
                if let Some(a) = self.last_completed.and_then(|i| self.arrivals.get_mut(i)) {
                    a.completed = Some(now);
                    a.text = transcript;
                    if let Some(t) = voxd_timing {
                        a.asr_rtf = Some(t.asr_ms as f64 / t.audio_ms.max(1) as f64);
                        a.speculative = Some(t.speculative);
                    }
                }
            }
            ServerEvent::ResponseCreated { response } => {
                // A response answers the turn transcribed last.
                if let Some(a) = self.last_completed.and_then(|i| self.arrivals.get_mut(i)) {
                    a.response = response["id"].as_str().map(str::to_string);
                    a.created = Some(now);
                }
            }
            ServerEvent::OutputTextDelta { response_id, .. } => {
                if let Some(a) = self
                    .arrivals
                    .iter_mut()
                    .find(|a| a.response.as_deref() == Some(&response_id))
                {
                    a.first_token.get_or_insert(now);
                }
            }
            ServerEvent::OutputAudioDelta { response_id, .. } => {
                if let Some(a) = self
                    .arrivals
                    .iter_mut()
                    .find(|a| a.response.as_deref() == Some(&response_id))
                {
                    a.first_audio.get_or_insert(now);
                }
            }
            ServerEvent::ResponseDone { response } => {
                let id = response["id"].as_str().unwrap_or_default();
                if let Some(a) = self
                    .arrivals
                    .iter_mut()
                    .find(|a| a.response.as_deref() == Some(id))
                {
                    a.done = Some((now, response["status"].as_str().unwrap_or("").to_string()));
                    a.drafted_tokens = response["voxd_timing"]["drafted_tokens"].as_u64();
                    // A spoken answer sends no text deltas: its first token is when the
                    // server saw it, counted from response.created.
                    if a.first_token.is_none() {
                        if let (Some(c), Some(ms)) = (
                            a.created,
                            response["voxd_timing"]["first_token_ms"].as_f64(),
                        ) {
                            a.first_token = Some(c + Duration::from_secs_f64(ms / 1e3));
                        }
                    }
                }
            }
            _ => {}
        }
    }

    /// Each utterance's figures, in ms from its true end of speech (`t0`: streaming began).
    fn records(self, recording: &str, t0: Instant) -> Vec<TurnRecord> {
        let done_in_time = self.finished();
        let ms_since = |end_ms: u64, at: Option<Instant>| {
            at.map(|t| (t - (t0 + Duration::from_millis(end_ms))).as_secs_f64() * 1e3)
        };
        self.arrivals
            .into_iter()
            .zip(self.segments)
            .enumerate()
            .map(|(i, (a, &(_, end)))| {
                let status = match (&a.done, a.completed, self.cfg.answers) {
                    // The server heard this utterance as part of another turn.
                    (_, None, _) if a.stopped.is_none() && done_in_time => "merged".to_string(),
                    (_, None, _) => "timeout".to_string(),
                    (_, Some(_), false) => "completed".to_string(),
                    // An answer cut by the token limit was still delivered.
                    (Some((_, s)), _, true) if s == "incomplete" => "completed".to_string(),
                    (Some((_, s)), _, true) => s.clone(),
                    (None, Some(_), true) => "timeout".to_string(),
                };
                let completed_answer = status == "completed" && self.cfg.answers;
                TurnRecord {
                    recording: recording.to_string(),
                    segment: i,
                    speech_stopped: ms_since(end, a.stopped),
                    transcript: ms_since(end, a.completed),
                    first_token: if completed_answer {
                        ms_since(end, a.first_token)
                    } else {
                        None
                    },
                    first_audio: if completed_answer {
                        ms_since(end, a.first_audio)
                    } else {
                        None
                    },
                    done: if completed_answer {
                        ms_since(end, a.done.as_ref().map(|d| d.0))
                    } else {
                        None
                    },
                    asr_rtf: a.asr_rtf,
                    speculative: a.speculative,
                    drafted_tokens: a.drafted_tokens,
                    status,
                    transcript_text: a.text,
                    ..Default::default()
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn metrics_are_read_plain_or_summed_over_labels() {
        let text = "# HELP x y\nprocess_threads 12\nvoxd_errors_total{code=\"a\"} 2\nvoxd_errors_total{code=\"b\"} 3\nprocess_threads_other 9\n";
        assert_eq!(super::metric(text, "process_threads"), Some(12.0));
        assert_eq!(super::metric(text, "voxd_errors_total"), Some(5.0));
        assert_eq!(super::metric(text, "voxd_live_sessions"), None);
    }

    #[test]
    fn http_base_from_realtime_url() {
        assert_eq!(
            super::http_base("ws://127.0.0.1:8080/v1/realtime"),
            "http://127.0.0.1:8080"
        );
        assert_eq!(super::http_base("wss://h/x/v1/realtime?m=1"), "https://h/x");
    }
}
