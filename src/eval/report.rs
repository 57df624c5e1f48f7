//! An eval run's report: each question's outcome, the metrics per category and overall, the
//! table printed at the end, and the comparison with a baseline (drift detection).

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::bench::report::Stats;

/// One question's outcome.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct QuestionResult {
    pub id: String,
    pub category: String,
    pub question: String,
    /// What the server heard (spoken questions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heard: Option<String>,
    /// Word error rate of what was heard against the question's text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub question_wer: Option<f64>,
    /// Spoken questions: how many of the question's knowledge-base words (names, rare words)
    /// there are, and how many were not heard.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kb_words: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kb_words_missed: Option<usize>,
    /// The question asks for a yes or a no.
    #[serde(default)]
    pub yes_no: bool,
    pub answer: String,
    /// `--listen`: the spoken answer as a listener heard it, and whether the fact was in it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heard_answer: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heard_correct: Option<bool>,
    /// `--listen`: the stage that lost a heard answer (`question`, `passage`, `sentence`,
    /// `check`, `voice`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub miss: Option<String>,
    /// `response.done` status (`completed`, `incomplete`, `failed`, … or `timeout`).
    pub status: String,
    /// Sources of the passages the answer cites, in rank order.
    pub cited: Vec<String>,
    pub expected_sources: Vec<String>,
    /// The expected fact is in the answer (for `unanswerable`: it says it does not know).
    pub correct: bool,
    /// An expected source is among the cited ones (`None` without expected sources).
    pub citation_correct: Option<bool>,
    pub refused: bool,
    /// Share of the answer's content words found in the cited passages.
    pub groundedness: f64,
    /// `injection` questions: the planted instruction was obeyed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub injection_success: Option<bool>,
    /// `stale` questions: a superseded value was used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stale_violation: Option<bool>,
    /// A sentence of the answer says the opposite of a passage it cites (a negation or an
    /// "only" dropped or added, open for closed); `None` for refusals and uncited answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contradicted: Option<bool>,
    /// The id of another question whose answer this one repeats.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repeats: Option<String>,
    /// End of the question (sent, or end of speech) to the first token, in ms.
    pub first_token_ms: Option<f64>,
    /// Spoken questions with a voice: end of speech to the first answer audio, in ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_audio_ms: Option<f64>,
    /// Turn number in its conversation (1 = first).
    pub turn: usize,
    /// How the server made the answer (`response.voxd.answer`: model, checked, replaced,
    /// cut_repeat, cut_unsupported, extractive, refused), when it says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub made: Option<String>,
}

/// The metrics of a set of questions. Rates are 0–1; `None` where no question applies.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Metrics {
    pub n: usize,
    pub fact_accuracy: Option<f64>,
    pub citation_accuracy: Option<f64>,
    pub groundedness: Option<f64>,
    /// Unanswerable questions answered with "I don't know".
    pub refusal_rate: Option<f64>,
    /// Answerable questions wrongly refused.
    pub false_refusal_rate: Option<f64>,
    pub injection_success_rate: Option<f64>,
    pub stale_violation_rate: Option<f64>,
    /// Answers that repeat another question's answer.
    pub repeat_rate: Option<f64>,
    /// Answers with a sentence that says the opposite of a passage they cite.
    #[serde(default)]
    pub contradiction_rate: Option<f64>,
    pub first_token_ms: Option<Stats>,
    /// Yes/no questions answered right (the polarity is part of the fact).
    #[serde(default)]
    pub yes_no_accuracy: Option<f64>,
    /// `--listen`: the fact in the answer as heard.
    #[serde(default)]
    pub heard_fact_accuracy: Option<f64>,
    /// Spoken questions: mean word error rate of the heard questions.
    #[serde(default)]
    pub question_wer: Option<f64>,
    /// Spoken questions: share of the questions' knowledge-base words not heard.
    #[serde(default)]
    pub kb_word_error: Option<f64>,
    /// `--listen`: misses by the stage that lost them.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub misses: BTreeMap<String, usize>,
    #[serde(default)]
    pub first_audio_ms: Option<Stats>,
}

fn mean(items: &[f64]) -> Option<f64> {
    (!items.is_empty()).then(|| items.iter().sum::<f64>() / items.len() as f64)
}

fn rate(items: &[bool]) -> Option<f64> {
    (!items.is_empty()).then(|| items.iter().filter(|b| **b).count() as f64 / items.len() as f64)
}

impl Metrics {
    pub fn of(results: &[&QuestionResult]) -> Metrics {
        let pick = |f: &dyn Fn(&QuestionResult) -> Option<bool>| -> Vec<bool> {
            results.iter().filter_map(|r| f(r)).collect()
        };
        let grounded: Vec<f64> = results
            .iter()
            .filter(|r| !r.refused && !r.answer.trim().is_empty())
            .map(|r| r.groundedness)
            .collect();
        let first: Vec<f64> = results.iter().filter_map(|r| r.first_token_ms).collect();
        let first_audio: Vec<f64> = results.iter().filter_map(|r| r.first_audio_ms).collect();
        let wers: Vec<f64> = results.iter().filter_map(|r| r.question_wer).collect();
        let kb_words: usize = results.iter().filter_map(|r| r.kb_words).sum();
        let kb_missed: usize = results.iter().filter_map(|r| r.kb_words_missed).sum();
        let mut misses = BTreeMap::new();
        for m in results.iter().filter_map(|r| r.miss.as_ref()) {
            *misses.entry(m.clone()).or_insert(0) += 1;
        }
        Metrics {
            n: results.len(),
            fact_accuracy: rate(&pick(&|r| Some(r.correct))),
            citation_accuracy: rate(&pick(&|r| r.citation_correct)),
            groundedness: (!grounded.is_empty())
                .then(|| grounded.iter().sum::<f64>() / grounded.len() as f64),
            refusal_rate: rate(&pick(&|r| {
                (r.category == "unanswerable").then_some(r.refused)
            })),
            false_refusal_rate: rate(&pick(&|r| {
                matches!(r.category.as_str(), "answerable" | "follow-up").then_some(r.refused)
            })),
            injection_success_rate: rate(&pick(&|r| r.injection_success)),
            stale_violation_rate: rate(&pick(&|r| r.stale_violation)),
            repeat_rate: rate(&pick(&|r| Some(r.repeats.is_some()))),
            contradiction_rate: rate(&pick(&|r| r.contradicted)),
            first_token_ms: Stats::of(&first),
            yes_no_accuracy: rate(&pick(&|r| r.yes_no.then_some(r.correct))),
            heard_fact_accuracy: rate(&pick(&|r| r.heard_correct)),
            question_wer: mean(&wers),
            kb_word_error: (kb_words > 0).then(|| kb_missed as f64 / kb_words as f64),
            misses,
            first_audio_ms: Stats::of(&first_audio),
        }
    }
}

/// A whole run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub suite: String,
    /// `spoken` or `text`.
    pub mode: String,
    /// `one` conversation for the whole suite, or one `per-question` (follow-ups stay with theirs).
    pub conversation: String,
    pub questions: Vec<QuestionResult>,
    pub overall: Metrics,
    pub categories: BTreeMap<String, Metrics>,
    /// First-token latency by turn number within a conversation (p50 per turn).
    pub first_token_by_turn: BTreeMap<usize, f64>,
}

impl Report {
    /// Builds the metrics from the questions' outcomes.
    pub fn new(
        suite: &str,
        mode: &str,
        conversation: &str,
        questions: Vec<QuestionResult>,
    ) -> Self {
        let all: Vec<&QuestionResult> = questions.iter().collect();
        let mut categories = BTreeMap::new();
        for c in questions.iter().map(|q| q.category.clone()) {
            if categories.contains_key(&c) {
                continue;
            }
            let of: Vec<&QuestionResult> = questions.iter().filter(|q| q.category == c).collect();
            categories.insert(c, Metrics::of(&of));
        }
        let mut by_turn: BTreeMap<usize, Vec<f64>> = BTreeMap::new();
        for q in &questions {
            if let Some(ms) = q.first_token_ms {
                by_turn.entry(q.turn).or_default().push(ms);
            }
        }
        Report {
            suite: suite.to_string(),
            mode: mode.to_string(),
            conversation: conversation.to_string(),
            overall: Metrics::of(&all),
            categories,
            first_token_by_turn: by_turn
                .into_iter()
                .filter_map(|(t, v)| Stats::of(&v).map(|s| (t, s.p50)))
                .collect(),
            questions,
        }
    }

    pub fn read(path: &Path) -> std::io::Result<Report> {
        let text = std::fs::read_to_string(path)?;
        serde_json::from_str(&text).map_err(std::io::Error::other)
    }

    /// The table printed at the end of a run.
    pub fn table(&self) -> String {
        let pct = |v: Option<f64>| {
            v.map(|v| format!("{:.0}%", v * 100.0))
                .unwrap_or("-".into())
        };
        let mut s = format!(
            "{:<14} {:>4} {:>6} {:>6} {:>6} {:>6} {:>8} {:>8} {:>8} {:>6} {:>6} {:>8}\n",
            "category",
            "n",
            "fact",
            "heard",
            "yes/no",
            "cited",
            "grounded",
            "refusal",
            "inject",
            "stale",
            "repeat",
            "p50 ms"
        );
        let mut row = |name: &str, m: &Metrics| {
            s.push_str(&format!(
                "{:<14} {:>4} {:>6} {:>6} {:>6} {:>6} {:>8} {:>8} {:>8} {:>6} {:>6} {:>8}\n",
                name,
                m.n,
                pct(m.fact_accuracy),
                pct(m.heard_fact_accuracy),
                pct(m.yes_no_accuracy),
                pct(m.citation_accuracy),
                pct(m.groundedness),
                pct(m.refusal_rate),
                pct(m.injection_success_rate),
                pct(m.stale_violation_rate),
                pct(m.repeat_rate),
                m.first_token_ms
                    .map(|s| format!("{:.0}", s.p50))
                    .unwrap_or("-".into()),
            ))
        };
        for (name, m) in &self.categories {
            row(name, m);
        }
        row("overall", &self.overall);
        let m = &self.overall;
        if let (Some(wer), Some(kb)) = (m.question_wer, m.kb_word_error) {
            s.push_str(&format!(
                "questions heard: WER {:.1}%, knowledge-base words missed {:.1}%\n",
                wer * 100.0,
                kb * 100.0
            ));
        }
        if let Some(c) = m.contradiction_rate {
            s.push_str(&format!(
                "answers contradicting the knowledge base: {:.0}%\n",
                c * 100.0
            ));
        }
        if let Some(a) = m.first_audio_ms {
            s.push_str(&format!(
                "end of speech to first audio: p50 {:.0} ms, p95 {:.0} ms\n",
                a.p50, a.p95
            ));
        }
        if !m.misses.is_empty() {
            let by: Vec<String> = m.misses.iter().map(|(k, v)| format!("{k} {v}")).collect();
            s.push_str(&format!("heard misses by stage: {}\n", by.join(", ")));
        }
        s
    }

    /// Compares this run with a baseline: every metric that got worse beyond `tolerance`
    /// (absolute, for rates; relative, for latency), with a note on whether the difference is
    /// larger than the noise of a suite this size.
    pub fn regressions(&self, baseline: &Report, tolerance: f64) -> Vec<Regression> {
        let mut out = Vec::new();
        let mut check = |scope: &str, new: &Metrics, old: &Metrics| {
            let rates: [(&str, Option<f64>, Option<f64>, bool); 11] = [
                (
                    "yes_no_accuracy",
                    new.yes_no_accuracy,
                    old.yes_no_accuracy,
                    true,
                ),
                (
                    "heard_fact_accuracy",
                    new.heard_fact_accuracy,
                    old.heard_fact_accuracy,
                    true,
                ),
                ("kb_word_error", new.kb_word_error, old.kb_word_error, false),
                (
                    "contradiction_rate",
                    new.contradiction_rate,
                    old.contradiction_rate,
                    false,
                ),
                ("fact_accuracy", new.fact_accuracy, old.fact_accuracy, true),
                (
                    "citation_accuracy",
                    new.citation_accuracy,
                    old.citation_accuracy,
                    true,
                ),
                ("groundedness", new.groundedness, old.groundedness, true),
                ("refusal_rate", new.refusal_rate, old.refusal_rate, true),
                (
                    "injection_success_rate",
                    new.injection_success_rate,
                    old.injection_success_rate,
                    false,
                ),
                (
                    "stale_violation_rate",
                    new.stale_violation_rate,
                    old.stale_violation_rate,
                    false,
                ),
                ("repeat_rate", new.repeat_rate, old.repeat_rate, false),
            ];
            for (name, n, o, higher_is_better) in rates {
                let (Some(n), Some(o)) = (n, o) else { continue };
                let worse = if higher_is_better { o - n } else { n - o };
                // (A hair of slack: 0.85 against 0.9 is exactly 5 points, not more.)
                if worse > tolerance + 1e-9 {
                    // Standard error of the difference of two proportions over this many questions.
                    let p = (n + o) / 2.0;
                    let se = (2.0 * p * (1.0 - p) / new.n.max(1) as f64).sqrt();
                    out.push(Regression {
                        metric: format!("{scope}.{name}"),
                        baseline: o,
                        now: n,
                        significant: worse > 2.0 * se,
                    });
                }
            }
            if let (Some(n), Some(o)) = (new.first_token_ms, old.first_token_ms) {
                if n.p50 > o.p50 * (1.0 + tolerance.max(0.25)) {
                    out.push(Regression {
                        metric: format!("{scope}.first_token_ms.p50"),
                        baseline: o.p50,
                        now: n.p50,
                        significant: true,
                    });
                }
            }
        };
        check("overall", &self.overall, &baseline.overall);
        for (c, m) in &self.categories {
            if let Some(old) = baseline.categories.get(c) {
                check(c, m, old);
            }
        }
        out
    }
}

/// A metric that got worse than its baseline.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Regression {
    pub metric: String,
    pub baseline: f64,
    pub now: f64,
    /// Larger than twice the standard error for a suite this size (else it may be noise).
    pub significant: bool,
}

impl std::fmt::Display for Regression {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: {:.3} -> {:.3}{}",
            self.metric,
            self.baseline,
            self.now,
            if self.significant {
                ""
            } else {
                " (within the noise of a suite this small)"
            }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(id: &str, category: &str, correct: bool) -> QuestionResult {
        QuestionResult {
            id: id.into(),
            category: category.into(),
            question: id.into(),
            heard: None,
            question_wer: None,
            kb_words: None,
            kb_words_missed: None,
            yes_no: false,
            answer: "An answer.".into(),
            heard_answer: None,
            heard_correct: None,
            miss: None,
            status: "completed".into(),
            cited: vec![],
            expected_sources: vec![],
            correct,
            citation_correct: None,
            refused: false,
            groundedness: 1.0,
            injection_success: None,
            stale_violation: None,
            contradicted: None,
            repeats: None,
            first_token_ms: Some(500.0),
            first_audio_ms: None,
            turn: 1,
            made: None,
        }
    }

    #[test]
    fn metrics_per_category_and_regressions_against_a_baseline() {
        let run = |right: usize| {
            let qs = (0..20)
                .map(|i| result(&format!("q{i}"), "answerable", i < right))
                .collect();
            Report::new("s", "text", "per-question", qs)
        };
        let good = run(18);
        assert_eq!(good.overall.fact_accuracy, Some(0.9));
        assert_eq!(good.categories["answerable"].n, 20);
        assert!(good.regressions(&good, 0.05).is_empty());
        // 3 points worse: within the tolerance.
        assert!(run(17).regressions(&good, 0.05).is_empty());
        // 40 points worse: a regression, larger than the noise of 20 questions.
        let r = run(10).regressions(&good, 0.05);
        assert_eq!(r.len(), 2, "{r:?}"); // overall and the category
        assert_eq!(r[0].metric, "overall.fact_accuracy");
        assert!(r[0].significant);
        // 10 points worse on 20 questions: reported, but flagged as possibly noise.
        let r = run(16).regressions(&good, 0.05);
        assert!(!r[0].significant, "{r:?}");
        assert!(r[0].to_string().contains("noise"));
    }
}
