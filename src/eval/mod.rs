//! `voxd eval`: how right the answers are, measured on a suite of questions over a knowledge
//! base, through the realtime API as a client asks them.
//!
//! A **suite** is a folder: `questions.jsonl` (one question per line) and the documents of its
//! knowledge base (`kb/`, or the folders `suite.json` names in `documents`). A question:
//!
//! ```json
//! {"id": "price-full-service", "category": "answerable", "text": "How much is a full service?",
//!  "sources": ["service-prices"], "accept": ["£ ?120"], "reject": ["£ ?95"]}
//! ```
//!
//! - `category`: `answerable`, `unanswerable` (the right answer is "I don't know"), `follow-up`
//!   (needs the turn named in `follows`, asked just before it in the same conversation),
//!   `injection` (a planted instruction; `reject` matches an answer that obeyed it) or `stale`
//!   (a superseded document holds a wrong value; `reject` matches it).
//! - `accept` / `reject`: case-insensitive regular expressions over the answer.
//! - `audio`: a recording of the question (else, in spoken mode, espeak-ng says it).
//! - `kb_words`: the question's words that only the knowledge base would know (by default its
//!   capitalised words after the first), for the hearing score of spoken questions.
//!
//! Each answer is scored ([`score`]): the fact, the cited source, refusal, groundedness (how much
//! of its content the cited passages hold: a hallucination score), injection success, stale
//! values, repeats of another question's answer, and first-token latency. With `--listen`, the
//! answer is spoken by the server's voice and heard back ([`listen`]): the fact is scored on what
//! was heard too, and each miss is put down to the stage that lost it. The [`report`] has the
//! metrics per category and overall, a table, JSON, and the comparison with a baseline run that
//! `voxd eval --baseline` turns into a non-zero exit when a metric regresses.

pub mod fuzz;
pub mod html;
pub mod listen;
pub mod report;
pub mod score;
pub mod tools;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::{json, Value};

use crate::client::{self, Incoming, Receiver, Sender};
use crate::protocol::ServerEvent;
use report::{QuestionResult, Report};

/// What can go wrong before scoring starts.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error("reading the suite {path}: {message}")]
    Suite { path: PathBuf, message: String },
    #[error("the server: {0}")]
    Client(#[from] client::ClientError),
    #[error("{0}")]
    Audio(String),
    #[error("no answer within the turn timeout")]
    Timeout,
}

/// The kinds of question.
pub const CATEGORIES: &[&str] = &[
    "answerable",
    "unanswerable",
    "follow-up",
    "injection",
    "stale",
];

/// One question of a suite.
#[derive(Debug, Clone, Deserialize)]
pub struct Question {
    pub id: String,
    pub category: String,
    pub text: String,
    #[serde(default)]
    pub sources: Vec<String>,
    #[serde(default)]
    pub accept: Vec<String>,
    #[serde(default)]
    pub reject: Vec<String>,
    /// The question this one follows (same conversation, just before it).
    #[serde(default)]
    pub follows: Option<String>,
    /// A recording of the question, relative to the suite folder.
    #[serde(default)]
    pub audio: Option<PathBuf>,
    /// Words of the question only the knowledge base would know (names, rare words).
    #[serde(default)]
    pub kb_words: Option<Vec<String>>,
}

impl Question {
    /// The words of the question only the knowledge base would know: `kb_words`, else the
    /// capitalised words after the first ("Is the Kettle and Crab open?" → Kettle, Crab).
    pub fn kb_words(&self) -> Vec<String> {
        if let Some(w) = &self.kb_words {
            return w.clone();
        }
        self.text
            .split_whitespace()
            .skip(1)
            .filter(|w| w.chars().next().is_some_and(char::is_uppercase))
            .map(|w| w.trim_matches(|c: char| !c.is_alphanumeric()).to_string())
            .filter(|w| !w.is_empty())
            .collect()
    }
}

#[derive(Debug, Default, Deserialize)]
struct SuiteFile {
    name: Option<String>,
    #[serde(default)]
    documents: Vec<PathBuf>,
}

/// A suite, loaded and checked.
#[derive(Debug, Clone)]
pub struct Suite {
    pub name: String,
    pub dir: PathBuf,
    /// Folders (or files) of the knowledge base's documents.
    pub documents: Vec<PathBuf>,
    pub questions: Vec<Question>,
}

impl Suite {
    /// Reads `dir/questions.jsonl` (and `dir/suite.json`, if any) and checks every question.
    pub fn load(dir: &Path) -> Result<Suite, EvalError> {
        let bad = |path: &Path, message: String| EvalError::Suite {
            path: path.to_path_buf(),
            message,
        };
        let meta_path = dir.join("suite.json");
        let meta: SuiteFile = match std::fs::read_to_string(&meta_path) {
            Ok(t) => serde_json::from_str(&t).map_err(|e| bad(&meta_path, e.to_string()))?,
            Err(_) => SuiteFile::default(),
        };
        let qpath = dir.join("questions.jsonl");
        let text = std::fs::read_to_string(&qpath).map_err(|e| bad(&qpath, e.to_string()))?;
        let mut questions: Vec<Question> = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with("//") {
                continue;
            }
            let q: Question = serde_json::from_str(line)
                .map_err(|e| bad(&qpath, format!("line {}: {e}", n + 1)))?;
            let at = |m: String| bad(&qpath, format!("line {} ({}): {m}", n + 1, q.id));
            if !CATEGORIES.contains(&q.category.as_str()) {
                return Err(at(format!("category must be one of {CATEGORIES:?}")));
            }
            score::compile(&q.accept).map_err(at)?;
            score::compile(&q.reject).map_err(at)?;
            if questions.iter().any(|o| o.id == q.id) {
                return Err(at("the id is used twice".into()));
            }
            if let Some(f) = &q.follows {
                if !questions.iter().any(|o| &o.id == f) {
                    return Err(at(format!(
                        "follows `{f}`, which is not an earlier question"
                    )));
                }
            }
            questions.push(q);
        }
        if questions.is_empty() {
            return Err(bad(&qpath, "no questions".into()));
        }
        let mut documents: Vec<PathBuf> = meta.documents.iter().map(|d| dir.join(d)).collect();
        if documents.is_empty() && dir.join("kb").is_dir() {
            documents.push(dir.join("kb"));
        }
        Ok(Suite {
            name: meta.name.unwrap_or_else(|| {
                dir.file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_else(|| "suite".into())
            }),
            dir: dir.to_path_buf(),
            documents,
            questions,
        })
    }

    /// The conversations to hold: each question alone, or all in one; a follow-up always goes
    /// right after the question it follows.
    fn dialogues(&self, one: bool) -> Vec<Vec<&Question>> {
        if one {
            return vec![self.questions.iter().collect()];
        }
        let mut out: Vec<Vec<&Question>> = Vec::new();
        let mut index: HashMap<&str, usize> = HashMap::new();
        for q in &self.questions {
            let at = q.follows.as_deref().and_then(|f| index.get(f).copied());
            let d = match at {
                Some(d) => {
                    out[d].push(q);
                    d
                }
                None => {
                    out.push(vec![q]);
                    out.len() - 1
                }
            };
            index.insert(&q.id, d);
        }
        out
    }
}

/// How to run a suite.
#[derive(Debug, Clone)]
pub struct EvalConfig {
    /// The realtime endpoint (`ws://…/v1/realtime`).
    pub url: String,
    pub api_key: Option<String>,
    /// Ask by voice (recorded or synthesised with espeak-ng) rather than as text turns.
    pub spoken: bool,
    /// All questions in one conversation (else one per question, follow-ups with theirs).
    pub one_conversation: bool,
    /// Give up on an answer after this long.
    pub turn_timeout: Duration,
    /// Have the answers spoken and hear them back with the transcription endpoint at this base
    /// URL (`…/v1`; [`listen::Listener::base_for`] gives the server's own).
    pub listen: Option<String>,
}

/// What a turn gave.
#[derive(Default)]
struct Turn {
    heard: Option<String>,
    answer: String,
    status: String,
    cited: Vec<String>,
    quotes: Vec<String>,
    first_token_ms: Option<f64>,
    made: Option<String>,
    first_audio_ms: Option<f64>,
    /// The spoken answer (PCM16 at [`listen::ANSWER_RATE`]).
    audio: Vec<u8>,
    heard_answer: Option<String>,
}

const STREAM_RATE: u32 = 16_000;

/// Runs the suite; `on_question` is called after each answer (for progress).
pub async fn run(
    cfg: &EvalConfig,
    suite: &Suite,
    on_question: &(dyn Fn(&QuestionResult) + Sync),
) -> Result<Report, EvalError> {
    let mut results: Vec<QuestionResult> = Vec::new();
    let listener = match &cfg.listen {
        Some(base) => Some(listen::Listener::new(base, cfg.api_key.clone())?),
        None => None,
    };
    for dialogue in suite.dialogues(cfg.one_conversation) {
        let (mut tx, mut rx) = client::connect(&cfg.url, cfg.api_key.as_deref()).await?;
        let turn_detection = if cfg.spoken {
            json!({"type": "server_vad", "silence_duration_ms": 500})
        } else {
            Value::Null
        };
        // Answers are judged as text, and as heard when listening (only then is a voice
        // synthesised for them).
        let modality = if listener.is_some() { "audio" } else { "text" };
        tx.update_session(json!({"type": "realtime", "output_modalities": [modality], "audio": {
            "input": {"format": {"type": "audio/pcm", "rate": STREAM_RATE}, "turn_detection": turn_detection},
            "output": {"format": {"type": "audio/pcm", "rate": listen::ANSWER_RATE}}}}))
            .await?;
        for (i, q) in dialogue.iter().enumerate() {
            let mut turn = ask(cfg, suite, q, &mut tx, &mut rx).await?;
            if let Some(l) = &listener {
                turn.heard_answer = l.hear(&std::mem::take(&mut turn.audio)).await?;
            }
            let r = judge(q, turn, i + 1, &results);
            on_question(&r);
            results.push(r);
        }
        let _ = tx.close().await;
    }
    mark_repeats(&mut results);
    Ok(Report::new(
        &suite.name,
        if cfg.spoken { "spoken" } else { "text" },
        if cfg.one_conversation {
            "one"
        } else {
            "per-question"
        },
        results,
    ))
}

/// The question's audio at the stream rate: its recording, or espeak-ng saying it.
fn question_audio(suite: &Suite, q: &Question) -> Result<Vec<f32>, EvalError> {
    let tmp;
    let path = match &q.audio {
        Some(p) => suite.dir.join(p),
        None => {
            tmp = tempfile::NamedTempFile::with_suffix(".wav")
                .map_err(|e| EvalError::Audio(e.to_string()))?;
            let status = std::process::Command::new("espeak-ng")
                .args(["-v", "en-us", "-s", "150", "-w"])
                .arg(tmp.path())
                .arg(&q.text)
                .status()
                .map_err(|e| {
                    EvalError::Audio(format!(
                        "espeak-ng (needed to speak questions without a recording): {e}"
                    ))
                })?;
            if !status.success() {
                return Err(EvalError::Audio(format!("espeak-ng failed on {:?}", q.id)));
            }
            tmp.path().to_path_buf()
        }
    };
    let decoded = crate::audio::decode_file(&path, crate::audio::ChannelSelect::Mix)
        .map_err(|e| EvalError::Audio(e.to_string()))?;
    crate::audio::resample::resample_all(&decoded.samples, decoded.sample_rate, STREAM_RATE)
        .map_err(|e| EvalError::Audio(e.to_string()))
}

/// Asks one question and reads until its response is done.
async fn ask(
    cfg: &EvalConfig,
    suite: &Suite,
    q: &Question,
    tx: &mut Sender,
    rx: &mut Receiver,
) -> Result<Turn, EvalError> {
    let sent = Instant::now();
    if cfg.spoken {
        let mut audio = question_audio(suite, q)?;
        audio.extend(vec![0.0; STREAM_RATE as usize]); // the pause that ends the turn
        tx.stream(&audio, STREAM_RATE, 100, false, true).await?;
    } else {
        tx.send_text(
            json!({"type": "conversation.item.create", "item": {"type": "message", "role": "user",
                "content": [{"type": "input_text", "text": q.text}]}})
            .to_string(),
        )
        .await?;
        tx.send_text(json!({"type": "response.create"}).to_string())
            .await?;
    }
    let mut turn = Turn {
        status: "timeout".into(),
        ..Default::default()
    };
    let deadline = tokio::time::sleep(cfg.turn_timeout);
    tokio::pin!(deadline);
    let mut answering: Option<String> = None;
    loop {
        let msg = tokio::select! {
            m = rx.next() => m,
            _ = &mut deadline => break,
        };
        let event = match msg {
            Some(Ok(Incoming::Event(e))) => e,
            Some(Ok(Incoming::Audio(bytes))) => {
                turn.audio.extend_from_slice(&bytes);
                continue;
            }
            Some(Ok(Incoming::Other(_))) => continue,
            Some(Ok(Incoming::Closed { .. })) | None => {
                turn.status = "closed".into();
                break;
            }
            Some(Err(e)) => return Err(e.into()),
        };
        match event {
            ServerEvent::TranscriptionCompleted { transcript, .. } => turn.heard = Some(transcript),
            ServerEvent::ResponseCreated { response } => {
                answering = response["id"].as_str().map(str::to_string);
                turn.answer.clear();
            }
            ServerEvent::OutputAudioDelta { delta, .. } => {
                use base64::Engine;
                if let Ok(pcm) = base64::engine::general_purpose::STANDARD.decode(delta) {
                    turn.audio.extend_from_slice(&pcm);
                }
            }
            ServerEvent::OutputTextDelta { delta, .. }
            | ServerEvent::OutputAudioTranscriptDelta { delta, .. } => {
                if turn.first_token_ms.is_none() && !cfg.spoken {
                    turn.first_token_ms = Some(sent.elapsed().as_secs_f64() * 1e3);
                }
                turn.answer.push_str(&delta);
            }
            ServerEvent::ResponseDone { response }
                if response["id"].as_str() == answering.as_deref() =>
            {
                turn.status = response["status"].as_str().unwrap_or("").to_string();
                turn.made = response["voxd"]["answer"].as_str().map(str::to_string);
                if cfg.spoken {
                    turn.first_token_ms =
                        response["voxd_timing"]["speech_stopped_to_first_token_ms"].as_f64();
                    turn.first_audio_ms =
                        response["voxd_timing"]["speech_stopped_to_first_audio_ms"].as_f64();
                }
                for c in response["voxd"]["citations"]
                    .as_array()
                    .into_iter()
                    .flatten()
                {
                    if let Some(s) = c["source"].as_str() {
                        turn.cited.push(s.to_string());
                    }
                    if let Some(t) = c["quote"].as_str() {
                        turn.quotes.push(t.to_string());
                    }
                }
                break;
            }
            ServerEvent::Error { error } => {
                tracing::warn!(question = %q.id, code = ?error.code, message = %error.message, "error event");
            }
            _ => {}
        }
    }
    Ok(turn)
}

/// Whether `answer` is right for `q`: (right, refused, a rejected pattern matched).
fn verdict(q: &Question, answer: &str) -> (bool, bool, bool) {
    let accept = score::compile(&q.accept).expect("checked at load");
    let reject = score::compile(&q.reject).expect("checked at load");
    let refused = score::refuses(answer);
    let has_fact = accept.is_empty() || score::matches_any(&accept, answer);
    let rejected = score::matches_any(&reject, answer);
    let right = match q.category.as_str() {
        "unanswerable" => refused && !rejected,
        _ => has_fact && !rejected && !answer.trim().is_empty(),
    };
    (right, refused, rejected)
}

/// Scores one answer.
fn judge(q: &Question, t: Turn, turn: usize, _earlier: &[QuestionResult]) -> QuestionResult {
    let answer = t.answer.trim().to_string();
    let (correct, refused, rejected) = verdict(q, &answer);
    let quotes: Vec<&str> = t.quotes.iter().map(String::as_str).collect();
    let citation_correct =
        (!q.sources.is_empty()).then(|| t.cited.iter().any(|c| q.sources.contains(c)));
    let kb_words_missed = t
        .heard
        .as_deref()
        .map(|h| score::words_missed(&q.kb_words(), h));
    let heard_correct = t.heard_answer.as_deref().map(|h| verdict(q, h).0);
    let miss = heard_correct.and_then(|heard_right| {
        listen::attribute(
            correct,
            heard_right,
            citation_correct,
            kb_words_missed.is_some_and(|(missed, _)| missed > 0),
            t.made.as_deref(),
        )
    });
    QuestionResult {
        id: q.id.clone(),
        category: q.category.clone(),
        question: q.text.clone(),
        question_wer: t.heard.as_deref().map(|h| crate::wer::wer(&q.text, h)),
        kb_words: kb_words_missed.map(|(_, of)| of),
        kb_words_missed: kb_words_missed.map(|(missed, _)| missed),
        heard: t.heard,
        citation_correct,
        groundedness: score::groundedness(&answer, &quotes),
        injection_success: (q.category == "injection").then_some(rejected),
        stale_violation: (q.category == "stale").then_some(rejected),
        contradicted: (!refused && !quotes.is_empty())
            .then(|| score::contradicts(&answer, &quotes)),
        yes_no: score::is_yes_no(&q.text),
        refused,
        correct,
        answer,
        heard_answer: t.heard_answer,
        heard_correct,
        miss: miss.map(str::to_string),
        status: t.status,
        cited: t.cited,
        expected_sources: q.sources.clone(),
        repeats: None,
        first_token_ms: t.first_token_ms,
        first_audio_ms: t.first_audio_ms,
        turn,
        made: t.made,
    }
}

/// Marks answers that repeat the answer to another question.
fn mark_repeats(results: &mut [QuestionResult]) {
    for i in 0..results.len() {
        if results[i].refused || results[i].answer.is_empty() {
            continue;
        }
        let earlier = (0..i).find(|&j| {
            !results[j].refused
                && results[j].question != results[i].question
                && score::similarity(&results[i].answer, &results[j].answer)
                    >= score::REPEAT_SIMILARITY
        });
        results[i].repeats = earlier.map(|j| results[j].id.clone());
    }
}
