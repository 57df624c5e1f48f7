//! The self-contained HTML report of an eval run: the metrics per category as a table and as
//! inline SVG bars, first-token latency by turn, and every question with its answer. One file,
//! no scripts, no external styles or fonts, so it can be attached to a review or archived.

use std::fmt::Write;

use super::report::{Metrics, Report};

/// Escapes text for HTML element content and attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn pct(v: Option<f64>) -> String {
    v.map(|v| format!("{:.0} %", v * 100.0))
        .unwrap_or_else(|| "–".into())
}

/// The rates drawn as bars, with their colours; for the last three lower is better.
const BARS: &[(&str, &str)] = &[
    ("fact", "#2b7bb9"),
    ("cited", "#5aa469"),
    ("grounded", "#8e6cc2"),
    ("refusal", "#d49a2a"),
    ("injection", "#c0392b"),
    ("stale", "#e67e22"),
    ("repeat", "#7f8c8d"),
];

fn rates(m: &Metrics) -> [Option<f64>; 7] {
    [
        m.fact_accuracy,
        m.citation_accuracy,
        m.groundedness,
        m.refusal_rate,
        m.injection_success_rate,
        m.stale_violation_rate,
        m.repeat_rate,
    ]
}

/// Horizontal bars: one group per category (and overall), one bar per rate.
fn bars_svg(rows: &[(&str, &Metrics)]) -> String {
    let (label_w, bar_w, bar_h, gap) = (110.0, 360.0, 9.0, 14.0);
    let group_h = BARS.len() as f64 * bar_h + gap;
    let height = rows.len() as f64 * group_h + 40.0;
    let width = label_w + bar_w + 150.0;
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11" role="img" aria-label="rates per category">"#
    );
    for (i, (name, m)) in rows.iter().enumerate() {
        let top = i as f64 * group_h + 10.0;
        let _ = write!(
            s,
            r#"<text x="0" y="{:.1}" font-weight="bold">{}</text>"#,
            top + bar_h * BARS.len() as f64 / 2.0,
            escape(name)
        );
        for (j, ((label, colour), v)) in BARS.iter().zip(rates(m)).enumerate() {
            let y = top + j as f64 * bar_h;
            let Some(v) = v else { continue };
            let w = (v.clamp(0.0, 1.0) * bar_w).max(1.0);
            let _ = write!(
                s,
                r#"<rect x="{label_w}" y="{y:.1}" width="{w:.1}" height="{:.1}" fill="{colour}"><title>{label} {:.0} %</title></rect><text x="{:.1}" y="{:.1}">{label} {:.0} %</text>"#,
                bar_h - 1.0,
                v * 100.0,
                label_w + w + 4.0,
                y + bar_h - 1.5,
                v * 100.0
            );
        }
    }
    let _ = write!(
        s,
        r##"<line x1="{label_w}" y1="0" x2="{label_w}" y2="{:.1}" stroke="#333"/></svg>"##,
        height - 25.0
    );
    s
}

/// First-token p50 by turn number, as a line over the turns.
fn turns_svg(by_turn: &[(usize, f64)]) -> String {
    if by_turn.is_empty() {
        return String::new();
    }
    let (w, h, pad) = (520.0, 180.0, 40.0);
    let max_turn = by_turn.iter().map(|(t, _)| *t).max().unwrap_or(1).max(2) as f64;
    let max_ms = by_turn.iter().map(|(_, ms)| *ms).fold(1.0, f64::max) * 1.1;
    let x = |t: usize| pad + (t as f64 - 1.0) / (max_turn - 1.0) * (w - 2.0 * pad);
    let y = |ms: f64| h - pad - ms / max_ms * (h - 2.0 * pad);
    let points: Vec<String> = by_turn
        .iter()
        .map(|(t, ms)| format!("{:.1},{:.1}", x(*t), y(*ms)))
        .collect();
    let mut s = format!(
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="11" role="img" aria-label="first token by turn"><line x1="{pad}" y1="{b}" x2="{r}" y2="{b}" stroke="#333"/><line x1="{pad}" y1="{pad}" x2="{pad}" y2="{b}" stroke="#333"/><text x="{pad}" y="{t}">{max:.0} ms</text><text x="{r}" y="{lb}" text-anchor="end">turn {mt}</text><polyline fill="none" stroke="#2b7bb9" stroke-width="2" points="{p}"/>"##,
        b = h - pad,
        r = w - pad,
        t = pad - 6.0,
        lb = h - pad + 16.0,
        max = max_ms,
        mt = max_turn,
        p = points.join(" ")
    );
    for (t, ms) in by_turn {
        let _ = write!(
            s,
            r##"<circle cx="{:.1}" cy="{:.1}" r="3" fill="#2b7bb9"><title>turn {t}: {ms:.0} ms</title></circle>"##,
            x(*t),
            y(*ms)
        );
    }
    s.push_str("</svg>");
    s
}

/// The whole report as one HTML page.
pub fn render(report: &Report) -> String {
    let mut rows: Vec<(&str, &Metrics)> = report
        .categories
        .iter()
        .map(|(c, m)| (c.as_str(), m))
        .collect();
    rows.push(("overall", &report.overall));
    let mut h = String::new();
    let _ = write!(
        h,
        r#"<!doctype html><html lang="en"><head><meta charset="utf-8"><title>voxd eval: {suite}</title><style>
body{{font-family:sans-serif;margin:2em;color:#222}}table{{border-collapse:collapse;margin:1em 0}}
th,td{{border:1px solid #ccc;padding:3px 7px;text-align:left;vertical-align:top;font-size:13px}}
th{{background:#f0f0f0}}td.num{{text-align:right}}tr.wrong td{{background:#fdf0ef}}
</style></head><body><h1>voxd eval: {suite}</h1><p>{n} questions, {mode} turns, {conv} conversation.</p>"#,
        suite = escape(&report.suite),
        n = report.questions.len(),
        mode = escape(&report.mode),
        conv = escape(&report.conversation),
    );
    h.push_str("<h2>By category</h2><table><tr><th>category</th><th>n</th><th>fact</th><th>cited</th><th>grounded</th><th>refusal</th><th>injection</th><th>stale</th><th>repeat</th><th>first token p50</th><th>p95</th></tr>");
    for (name, m) in &rows {
        let [fact, cited, grounded, refusal, injection, stale, repeat] = rates(m);
        let (p50, p95) = m
            .first_token_ms
            .as_ref()
            .map(|s| (format!("{:.0} ms", s.p50), format!("{:.0} ms", s.p95)))
            .unwrap_or_else(|| ("–".into(), "–".into()));
        let _ = write!(
            h,
            "<tr><td>{}</td><td class=num>{}</td><td class=num>{}</td><td class=num>{}</td><td class=num>{}</td><td class=num>{}</td><td class=num>{}</td><td class=num>{}</td><td class=num>{}</td><td class=num>{p50}</td><td class=num>{p95}</td></tr>",
            escape(name),
            m.n,
            pct(fact),
            pct(cited),
            pct(grounded),
            pct(refusal),
            pct(injection),
            pct(stale),
            pct(repeat),
        );
    }
    h.push_str("</table>");
    h.push_str(&bars_svg(&rows));
    let by_turn: Vec<(usize, f64)> = report
        .first_token_by_turn
        .iter()
        .map(|(t, ms)| (*t, *ms))
        .collect();
    if by_turn.len() > 1 {
        h.push_str("<h2>First token by turn</h2>");
        h.push_str(&turns_svg(&by_turn));
    }
    h.push_str("<h2>Questions</h2><table><tr><th>id</th><th>category</th><th>question</th><th>answer</th><th>made</th><th>right</th><th>cited</th><th>grounded</th><th>first token</th></tr>");
    for q in &report.questions {
        let _ = write!(
            h,
            "<tr class=\"{}\"><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class=num>{:.0} %</td><td class=num>{}</td></tr>",
            if q.correct { "right" } else { "wrong" },
            escape(&q.id),
            escape(&q.category),
            escape(&q.question),
            escape(&q.answer),
            escape(q.made.as_deref().unwrap_or("")),
            if q.correct { "yes" } else { "no" },
            escape(&q.cited.join(", ")),
            q.groundedness * 100.0,
            q.first_token_ms
                .map(|ms| format!("{ms:.0} ms"))
                .unwrap_or_else(|| "–".into()),
        );
    }
    h.push_str("</table></body></html>\n");
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_escaped() {
        assert_eq!(
            escape(r#"<script>"a" & 'b'</script>"#),
            "&lt;script&gt;&quot;a&quot; &amp; &#39;b&#39;&lt;/script&gt;"
        );
    }

    #[test]
    fn turns_plot_has_a_point_per_turn() {
        let svg = turns_svg(&[(1, 200.0), (2, 210.0), (3, 190.0)]);
        assert_eq!(svg.matches("<circle").count(), 3);
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>"));
    }
}
