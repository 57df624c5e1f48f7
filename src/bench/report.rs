//! The bench's results: per-turn records, percentiles per stage and concurrency level, the text
//! table, the comparison with an earlier run, and the SVG plot (plotters).

use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::BenchError;

/// The stages, in pipeline order, each measured from the true end of speech.
pub const STAGES: &[(&str, &str)] = &[
    ("speech_stopped", "end of speech -> speech_stopped"),
    ("transcript", "end of speech -> transcript"),
    ("first_token", "end of speech -> first token"),
    ("first_audio", "end of speech -> first audio byte"),
    ("done", "end of speech -> response.done"),
];

/// One turn, as the client saw it (ms from the true end of speech).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TurnRecord {
    pub sessions: usize,
    /// `websocket` or `webrtc`.
    #[serde(default)]
    pub transport: String,
    pub session: usize,
    pub recording: String,
    pub segment: usize,
    pub speech_stopped: Option<f64>,
    pub transcript: Option<f64>,
    pub first_token: Option<f64>,
    /// For a spoken answer: the first audio delta (over WebRTC, the first packet on the track).
    #[serde(default)]
    pub first_audio: Option<f64>,
    pub done: Option<f64>,
    /// ASR compute / audio length, from the server's timing extension.
    pub asr_rtf: Option<f64>,
    pub speculative: Option<bool>,
    /// Tokens of the answer drafted while the person paused (sent at once), from the server's
    /// timing extension.
    #[serde(default)]
    pub drafted_tokens: Option<u64>,
    /// `completed`, `cancelled`, `failed`; `timeout` when the turn never finished; `merged` when
    /// the server heard this utterance as part of another turn.
    pub status: String,
    pub transcript_text: String,
}

/// Distribution of one stage.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
pub struct Stats {
    pub n: usize,
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
    pub mean: f64,
    pub max: f64,
}

impl Stats {
    /// Nearest-rank percentiles; `None` without values.
    pub fn of(values: &[f64]) -> Option<Stats> {
        if values.is_empty() {
            return None;
        }
        let mut v = values.to_vec();
        v.sort_by(f64::total_cmp);
        let rank =
            |p: f64| v[(((p / 100.0) * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1];
        Some(Stats {
            n: v.len(),
            p50: rank(50.0),
            p95: rank(95.0),
            p99: rank(99.0),
            mean: v.iter().sum::<f64>() / v.len() as f64,
            max: v[v.len() - 1],
        })
    }
}

/// Server figures over one level, from its `/metrics`.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct ServerUsage {
    /// Average CPU cores busy (CPU seconds / wall seconds).
    pub cpu_cores: f64,
    /// Largest resident memory seen, MB.
    pub rss_max_mb: f64,
    /// The server before the level's clients connected.
    #[serde(default)]
    pub start: Option<Snapshot>,
    /// The server after they all left (soak: what did not come back down leaks).
    #[serde(default)]
    pub end: Option<Snapshot>,
}

/// The server's resources at one moment, from its `/metrics`.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct Snapshot {
    pub rss_mb: f64,
    pub open_fds: f64,
    pub threads: f64,
    pub live_sessions: f64,
    /// `voxd_errors_total`, all codes.
    pub errors: f64,
}

/// One concurrency level.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Level {
    pub sessions: usize,
    /// `websocket` or `webrtc`.
    #[serde(default)]
    pub transport: String,
    pub turns: usize,
    pub completed: usize,
    pub cancelled: usize,
    pub failed: usize,
    /// Completed answers that began from a draft made in the pause.
    #[serde(default)]
    pub drafted: usize,
    pub wall_s: f64,
    /// Stage name -> distribution (ms), plus `asr_rtf`.
    pub stages: BTreeMap<String, Stats>,
    pub server: Option<ServerUsage>,
}

/// A whole run, as written to JSON.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Report {
    pub voxd_version: String,
    pub url: String,
    pub answers: bool,
    pub silence_ms: u64,
    /// How turns ended: `server_vad 500 ms, webrtc`, `semantic_vad (auto), silero`…
    #[serde(default)]
    pub turn_detection: String,
    pub recordings: Vec<String>,
    pub levels: Vec<Level>,
    pub turns: Vec<TurnRecord>,
}

/// Reads one latency out of a turn.
type Column = fn(&TurnRecord) -> Option<f64>;

/// A level's transport as the table names it (reports from before transports were recorded ran
/// over the WebSocket).
fn transport_name(t: &str) -> &str {
    if t.is_empty() {
        "websocket"
    } else {
        t
    }
}

impl Level {
    /// Summarises the turns of one level.
    pub fn from_turns(
        sessions: usize,
        transport: &str,
        turns: &[TurnRecord],
        wall_s: f64,
    ) -> Level {
        let mut stages = BTreeMap::new();
        let pick = |f: Column| -> Vec<f64> { turns.iter().filter_map(f).collect() };
        let columns: [(&str, Column); 6] = [
            ("speech_stopped", |t| t.speech_stopped),
            ("transcript", |t| t.transcript),
            ("first_token", |t| t.first_token),
            ("first_audio", |t| t.first_audio),
            ("done", |t| t.done),
            ("asr_rtf", |t| t.asr_rtf),
        ];
        for (name, f) in columns {
            if let Some(s) = Stats::of(&pick(f)) {
                stages.insert(name.to_string(), s);
            }
        }
        let count = |s: &str| turns.iter().filter(|t| t.status == s).count();
        Level {
            sessions,
            transport: transport.to_string(),
            turns: turns.len(),
            completed: count("completed"),
            cancelled: count("cancelled"),
            failed: turns.len() - count("completed") - count("cancelled"),
            drafted: turns
                .iter()
                .filter(|t| t.status == "completed" && t.drafted_tokens.unwrap_or(0) > 0)
                .count(),
            wall_s,
            stages,
            server: None,
        }
    }
}

impl Report {
    /// The table printed at the end of a run.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "latency from the true end of speech, ms (p50 / p95 / p99); turns: {}",
            if self.turn_detection.is_empty() {
                format!("server_vad {} ms", self.silence_ms)
            } else {
                self.turn_detection.clone()
            }
        );
        let _ = write!(out, "{:>8} {:>9} {:>6}", "sessions", "transport", "turns");
        for (name, _) in STAGES {
            let _ = write!(out, " {:>22}", name);
        }
        let _ = writeln!(out, " {:>8} {:>6} {:>7}", "asr rtf", "cpu", "rss MB");
        for l in &self.levels {
            let _ = write!(
                out,
                "{:>8} {:>9} {:>6}",
                l.sessions,
                transport_name(&l.transport),
                l.turns
            );
            for (name, _) in STAGES {
                let cell = match l.stages.get(*name) {
                    Some(s) => format!("{:.0} / {:.0} / {:.0}", s.p50, s.p95, s.p99),
                    None => "-".into(),
                };
                let _ = write!(out, " {cell:>22}");
            }
            let rtf = l
                .stages
                .get("asr_rtf")
                .map(|s| format!("{:.2}", s.p50))
                .unwrap_or_else(|| "-".into());
            let (cpu, rss) = match l.server {
                Some(s) => (
                    format!("{:.2}", s.cpu_cores),
                    format!("{:.0}", s.rss_max_mb),
                ),
                None => ("-".into(), "-".into()),
            };
            let _ = writeln!(out, " {rtf:>8} {cpu:>6} {rss:>7}");
            if let Some((a, b)) = l.server.and_then(|s| s.start.zip(s.end)) {
                let _ = writeln!(
                    out,
                    "{:>15} server before -> after: RSS {:.0} -> {:.0} MB, fds {:.0} -> {:.0}, threads {:.0} -> {:.0}, live sessions {:.0} -> {:.0}, errors +{:.0}",
                    "", a.rss_mb, b.rss_mb, a.open_fds, b.open_fds, a.threads, b.threads,
                    a.live_sessions, b.live_sessions, b.errors - a.errors
                );
            }
            for line in self.by_recording(l) {
                let _ = writeln!(out, "{:>15} {line}", "");
            }
            if l.drafted > 0 {
                let _ = writeln!(
                    out,
                    "{:>15} {} of {} answers began with tokens drafted in the pause",
                    "", l.drafted, l.completed
                );
            }
            if l.failed + l.cancelled > 0 {
                let _ = writeln!(
                    out,
                    "{:>15} {} of {} turns cancelled (barge-in), {} failed, timed out or merged",
                    "", l.cancelled, l.turns, l.failed
                );
            }
        }
        out
    }

    /// With more than one recording, the p50 of each stage per recording at one level: their
    /// ends differ (a clean stop, or a slow fade that one voice detector hears as speech and
    /// another does not), and a median over both can hide either.
    fn by_recording(&self, level: &Level) -> Vec<String> {
        let at_level = |t: &&TurnRecord| {
            t.sessions == level.sessions
                && transport_name(&t.transport) == transport_name(&level.transport)
        };
        let mut names: Vec<&str> = Vec::new();
        for t in self.turns.iter().filter(at_level) {
            if !names.contains(&t.recording.as_str()) {
                names.push(&t.recording);
            }
        }
        if names.len() < 2 {
            return Vec::new();
        }
        names
            .iter()
            .filter_map(|name| {
                let turns: Vec<&TurnRecord> = self
                    .turns
                    .iter()
                    .filter(at_level)
                    .filter(|t| t.recording == *name)
                    .filter(|t| t.status == "completed")
                    .collect();
                let cells: Vec<String> = STAGES
                    .iter()
                    .filter(|(stage, _)| *stage != "done")
                    .filter_map(|(stage, _)| {
                        let values: Vec<f64> = turns
                            .iter()
                            .filter_map(|t| match *stage {
                                "speech_stopped" => t.speech_stopped,
                                "transcript" => t.transcript,
                                "first_token" => t.first_token,
                                _ => t.first_audio,
                            })
                            .collect();
                        Stats::of(&values).map(|s| format!("{stage} {:.0}", s.p50))
                    })
                    .collect();
                (!turns.is_empty()).then(|| {
                    format!(
                        "p50, {name} ({} completed): {}",
                        turns.len(),
                        cells.join(", ")
                    )
                })
            })
            .collect()
    }

    /// This run against an earlier one: new p50/p95 and the ratio new/old (above 1 is slower).
    pub fn compare(&self, old: &Report) -> String {
        let mut out = String::from("compared with the earlier run (new ms, new/old):\n");
        for l in &self.levels {
            let via = transport_name(&l.transport);
            let Some(o) = old
                .levels
                .iter()
                .find(|o| o.sessions == l.sessions && transport_name(&o.transport) == via)
            else {
                let _ = writeln!(
                    out,
                    "{:>3} sessions ({via}): not in the earlier run",
                    l.sessions
                );
                continue;
            };
            let _ = write!(out, "{:>3} sessions ({via}):", l.sessions);
            for (name, _) in STAGES {
                if let (Some(n), Some(p)) = (l.stages.get(*name), o.stages.get(*name)) {
                    let _ = write!(
                        out,
                        "  {name} p50 {:.0} ({:.2}x) p95 {:.0} ({:.2}x)",
                        n.p50,
                        n.p50 / p.p50.max(1e-9),
                        n.p95,
                        n.p95 / p.p95.max(1e-9)
                    );
                }
            }
            out.push('\n');
        }
        out
    }

    /// Reads a report written by an earlier run.
    pub fn read(path: &Path) -> Result<Report, BenchError> {
        let text = std::fs::read_to_string(path).map_err(|e| BenchError::Io {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        serde_json::from_str(&text).map_err(|e| BenchError::Io {
            path: path.display().to_string(),
            message: format!("not a bench report: {e}"),
        })
    }

    /// Draws p50 and p95 of each stage against the number of sessions (of the first transport
    /// run, when there were two).
    pub fn plot(&self, path: &Path) -> Result<(), BenchError> {
        let first = self.levels.first().map(|l| l.transport.clone());
        let levels: Vec<&Level> = self
            .levels
            .iter()
            .filter(|l| Some(&l.transport) == first.as_ref())
            .collect();
        use plotters::prelude::*;
        let err = |e: &dyn std::fmt::Display| BenchError::Io {
            path: path.display().to_string(),
            message: e.to_string(),
        };
        let max_sessions = levels.iter().map(|l| l.sessions).max().unwrap_or(1) as f64;
        let max_ms = levels
            .iter()
            .flat_map(|l| l.stages.iter().filter(|(k, _)| *k != "asr_rtf"))
            .map(|(_, s)| s.p95)
            .fold(100.0f64, f64::max)
            * 1.1;
        let root = SVGBackend::new(path, (900, 560)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(&e))?;
        let mut chart = ChartBuilder::on(&root)
            .caption(
                format!(
                    "voxd: latency from the end of speech vs concurrent sessions ({})",
                    if self.answers {
                        "with answers"
                    } else {
                        "ASR only"
                    }
                ),
                ("sans-serif", 20),
            )
            .margin(16)
            .x_label_area_size(44)
            .y_label_area_size(64)
            .build_cartesian_2d(0.0..max_sessions + 1.0, 0.0..max_ms)
            .map_err(|e| err(&e))?;
        chart
            .configure_mesh()
            .light_line_style(WHITE)
            .x_labels(max_sessions as usize + 2)
            .x_label_formatter(&|x| format!("{x:.0}"))
            .y_label_formatter(&|y| format!("{y:.0}"))
            .x_desc("concurrent sessions")
            .y_desc("ms from the true end of speech")
            .draw()
            .map_err(|e| err(&e))?;
        let colors = [BLUE, GREEN, RED, CYAN, MAGENTA];
        for ((name, _), color) in STAGES.iter().zip(colors) {
            for (pct, dashed) in [("p50", false), ("p95", true)] {
                let points: Vec<(f64, f64)> = levels
                    .iter()
                    .filter_map(|l| {
                        l.stages
                            .get(*name)
                            .map(|s| (l.sessions as f64, if dashed { s.p95 } else { s.p50 }))
                    })
                    .collect();
                if points.is_empty() {
                    continue;
                }
                let style = color.stroke_width(if dashed { 1 } else { 3 });
                let legend = move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], style);
                if dashed {
                    chart
                        .draw_series(DashedLineSeries::new(points.clone(), 6, 4, style))
                        .map_err(|e| err(&e))?
                        .label(format!("{name} {pct}"))
                        .legend(legend);
                } else {
                    chart
                        .draw_series(LineSeries::new(points.clone(), style))
                        .map_err(|e| err(&e))?
                        .label(format!("{name} {pct}"))
                        .legend(legend);
                }
                chart
                    .draw_series(
                        points
                            .into_iter()
                            .map(|p| Circle::new(p, 3, color.filled())),
                    )
                    .map_err(|e| err(&e))?;
            }
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.9))
            .border_style(BLACK)
            .draw()
            .map_err(|e| err(&e))?;
        root.present().map_err(|e| err(&e))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        let s = Stats::of(&v).unwrap();
        assert_eq!((s.p50, s.p95, s.p99, s.max), (50.0, 95.0, 99.0, 100.0));
        assert_eq!(Stats::of(&[7.0]).unwrap().p99, 7.0);
        assert!(Stats::of(&[]).is_none());
    }

    #[test]
    fn the_table_gives_each_recordings_medians_when_there_are_several() {
        let turn = |recording: &str, transcript: f64, status: &str| TurnRecord {
            sessions: 1,
            recording: recording.into(),
            speech_stopped: Some(transcript - 20.0),
            transcript: Some(transcript),
            first_token: Some(transcript + 200.0),
            status: status.into(),
            ..Default::default()
        };
        let turns = vec![
            turn("clean.wav", 340.0, "completed"),
            turn("clean.wav", 420.0, "completed"),
            turn("clean.wav", 330.0, "completed"),
            turn("fade.wav", 0.0, "completed"),
            turn("fade.wav", 0.0, "merged"),
        ];
        let mut report = Report {
            recordings: vec!["clean.wav".into(), "fade.wav".into()],
            levels: vec![Level::from_turns(1, "websocket", &turns, 10.0)],
            turns,
            ..Default::default()
        };
        let table = report.table();
        assert!(
            table.contains(
                "p50, clean.wav (3 completed): speech_stopped 320, transcript 340, first_token 540"
            ),
            "{table}"
        );
        assert!(
            table.contains("p50, fade.wav (1 completed): speech_stopped -20, transcript 0"),
            "{table}"
        );
        // One recording: the level's own medians say it all.
        report.turns.retain(|t| t.recording == "clean.wav");
        assert!(!report.table().contains("p50, "), "{}", report.table());
    }
}
