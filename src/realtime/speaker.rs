//! The voice of one response: speaks the answer while the model is still writing it.
//!
//! The response task feeds the model's text deltas in; the speaker cuts them into pieces
//! ([`Splitter`]: the first clause early, then sentences), synthesises each on the TTS workers,
//! and sends for each piece its transcript delta and then its audio deltas in the session's
//! output format. A later piece is urgent (ahead of other sessions' new work) when less than
//! [`URGENT_LEAD`] of its answer's audio is left to play.
//!
//! It keeps the timeline of what it sent: each piece's text with where it starts and ends in the
//! answer's audio. `conversation.item.truncate` uses it to cut the transcript at the word that
//! was playing, and the hub's history then holds only what was heard.
//!
//! It never runs far ahead of playback: once [`MAX_LEAD`] of audio is unplayed, it waits, so an
//! interrupted answer wastes little compute and busy workers serve other sessions first.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::out::Out;
use crate::audio::encode::encode;
use crate::protocol::{InputFormat, ServerEvent};
use crate::tts::text::Splitter;
use crate::tts::{SpeakRequest, Tts, TtsError};

/// How far synthesis may run ahead of real-time playback.
pub const MAX_LEAD: Duration = Duration::from_secs(8);
/// Below this much unplayed audio, the next piece is urgent: it goes before other sessions'
/// new work on the voice's queue, so playback does not run dry. Above it, a new answer's first
/// piece may go first.
pub const URGENT_LEAD: Duration = Duration::from_secs(3);
/// How often a piece that defers to opening work looks again.
const OPENING_POLL: Duration = Duration::from_millis(20);
/// Audio per `response.output_audio.delta`.
const DELTA_MS: u64 = 500;

/// How a response is spoken.
#[derive(Debug, Clone, PartialEq)]
pub struct SpeechParams {
    pub format: InputFormat,
    /// One of the voice's names (already resolved).
    pub voice: String,
    pub speed: f32,
    /// Send the audio as binary frames (the `voxd.binary_audio_out` extension).
    pub binary: bool,
}

/// One spoken piece of an answer and where it lies in the answer's audio.
#[derive(Debug, Clone, PartialEq)]
pub struct Spoken {
    pub text: String,
    pub start_ms: u64,
    pub end_ms: u64,
}

/// What the speaker did, readable while it runs and after it was stopped.
#[derive(Debug, Default)]
pub struct Timeline {
    pub pieces: Vec<Spoken>,
    /// When the first audio delta was sent.
    pub first_audio: Option<Instant>,
    /// The first synthesis error (the rest of the answer was sent as transcript only).
    pub error: Option<TtsError>,
}

impl Timeline {
    /// The transcript of what was sent: the pieces, joined.
    pub fn transcript(&self) -> String {
        self.pieces
            .iter()
            .map(|p| p.text.as_str())
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// Length of the audio sent.
    pub fn audio_ms(&self) -> u64 {
        self.pieces.last().map_or(0, |p| p.end_ms)
    }
}

/// A running speaker.
pub struct Speaker {
    text: Option<mpsc::UnboundedSender<String>>,
    task: JoinHandle<()>,
    pub timeline: Arc<Mutex<Timeline>>,
}

/// The ids of the events a speaker sends.
#[derive(Clone)]
pub struct Target {
    pub response_id: String,
    pub item_id: String,
    /// Set by a cancel (a barge-in) before the cancel itself: nothing is sent once it is.
    pub silence: Arc<AtomicBool>,
    /// The message's output index (set when the message opens; MCP items may come first).
    pub output_index: Arc<std::sync::atomic::AtomicU32>,
}

impl Speaker {
    /// Starts speaking for `target`.
    pub(crate) fn start(tts: Arc<dyn Tts>, params: SpeechParams, out: Out, target: Target) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let timeline = Arc::new(Mutex::new(Timeline::default()));
        let task = tokio::spawn(run(tts, params, out, target, rx, timeline.clone()));
        Speaker {
            text: Some(tx),
            task,
            timeline,
        }
    }

    /// More of the answer's text.
    pub fn push(&self, delta: &str) {
        if let Some(tx) = &self.text {
            let _ = tx.send(delta.to_string());
        }
    }

    /// The text is complete: speak the rest, and return once everything is sent.
    pub async fn finish(&mut self) {
        self.text = None;
        let _ = (&mut self.task).await;
    }

    /// Stops at once: nothing more is synthesised or sent.
    pub fn stop(&self) {
        self.task.abort();
    }

    /// A copy of the timeline so far.
    pub fn snapshot(&self) -> (Vec<Spoken>, Option<Instant>, Option<TtsError>) {
        let t = self.timeline.lock().unwrap_or_else(|p| p.into_inner());
        (t.pieces.clone(), t.first_audio, t.error.clone())
    }
}

impl Drop for Speaker {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn run(
    tts: Arc<dyn Tts>,
    params: SpeechParams,
    out: Out,
    target: Target,
    mut rx: mpsc::UnboundedReceiver<String>,
    timeline: Arc<Mutex<Timeline>>,
) {
    // An OpenAI voice name means the voice's default.
    let voice = crate::tts::resolve_voice(tts.as_ref(), Some(&params.voice))
        .unwrap_or_else(|_| tts.voices().first().cloned().unwrap_or_default());
    let mut speaking = Speaking {
        tts,
        params,
        out,
        target,
        timeline,
        voice,
        sent_ms: 0,
        clock: None,
        count: 0,
    };
    let mut splitter = Splitter::new();
    let mut pending: VecDeque<String> = VecDeque::new();
    let mut open = true;
    loop {
        let piece = match pending.pop_front() {
            Some(p) => p,
            None if open => {
                match rx.recv().await {
                    Some(d) => pending.extend(splitter.push(&d)),
                    None => {
                        open = false;
                        pending.extend(splitter.finish());
                    }
                }
                continue;
            }
            None => break,
        };
        if !speaking.say(piece).await {
            return;
        }
    }
}

/// A spoken answer in progress: where its audio stands against playback.
struct Speaking {
    tts: Arc<dyn Tts>,
    params: SpeechParams,
    out: Out,
    target: Target,
    timeline: Arc<Mutex<Timeline>>,
    voice: String,
    /// Audio sent so far, and when its first audio went out (playback's clock).
    sent_ms: u64,
    clock: Option<Instant>,
    /// Pieces sent.
    count: usize,
}

impl Speaking {
    fn silenced(&self) -> bool {
        self.target.silence.load(Ordering::SeqCst)
    }

    /// Audio sent ahead of playback.
    fn ahead(&self) -> Duration {
        self.clock.map_or(Duration::ZERO, |c| {
            Duration::from_millis(self.sent_ms).saturating_sub(c.elapsed())
        })
    }

    /// Waits until the next piece may be synthesised: within MAX_LEAD of playback, and, with
    /// audio to spare, after other answers' opening work. Returns how far ahead playback is, or
    /// `None` when the answer was silenced meanwhile.
    async fn pace(&self) -> Option<Duration> {
        let mut ahead = self.ahead();
        if ahead > MAX_LEAD {
            tokio::time::sleep(ahead - MAX_LEAD).await;
            ahead = MAX_LEAD;
        }
        // An answer with audio to spare lets the start of another answer go first (its final
        // transcript, its prefill): on two cores that is the difference for the next person's
        // first word, and this one's playback loses nothing.
        if self.count > 0 && self.clock.is_some() {
            while crate::workers::opening_work_pending() && self.ahead() > URGENT_LEAD {
                tokio::time::sleep(OPENING_POLL).await;
                if self.silenced() {
                    return None;
                }
            }
            ahead = self.ahead();
        }
        Some(ahead)
    }

    /// Speaks one piece: its transcript, then its audio in deltas. False when the answer was
    /// silenced (a barge-in).
    async fn say(&mut self, piece: String) -> bool {
        let Some(ahead) = self.pace().await else {
            return false;
        };
        let request = SpeakRequest {
            text: piece.clone(),
            voice: self.voice.clone(),
            speed: self.params.speed,
            // Playback is about to run dry: this piece goes first.
            urgent: self.count > 0 && ahead < URGENT_LEAD,
        };
        let spoken = self.tts.speak(request).await;
        if self.silenced() {
            return false;
        }
        let delta = if self.count == 0 {
            piece.clone()
        } else {
            format!(" {piece}")
        };
        self.count += 1;
        self.out.send(ServerEvent::OutputAudioTranscriptDelta {
            response_id: self.target.response_id.clone(),
            item_id: self.target.item_id.clone(),
            output_index: self.target.output_index.load(Ordering::Relaxed),
            content_index: 0,
            delta,
        });
        let audio = self.encoded(spoken);
        let bytes_per_ms =
            self.params.format.rate() as u64 * self.params.format.sample_bytes() as u64 / 1000;
        let piece_ms = audio.len() as u64 / bytes_per_ms.max(1);
        {
            let mut t = self.timeline.lock().unwrap_or_else(|p| p.into_inner());
            t.pieces.push(Spoken {
                text: piece,
                start_ms: self.sent_ms,
                end_ms: self.sent_ms + piece_ms,
            });
            if !audio.is_empty() && t.first_audio.is_none() {
                t.first_audio = Some(Instant::now());
            }
        }
        if !audio.is_empty() && self.clock.is_none() {
            self.clock = Some(Instant::now());
        }
        self.sent_ms += piece_ms;
        self.send_audio(&audio, (bytes_per_ms * DELTA_MS) as usize)
            .await
    }

    /// The piece's audio in the session's format; nothing when it could not be spoken (the
    /// first failure is reported, and the answer goes on as text).
    fn encoded(&self, spoken: Result<crate::tts::Speech, TtsError>) -> Vec<u8> {
        let format = self.params.format;
        match spoken.and_then(|s| {
            encode(&s.samples, s.sample_rate, format).map_err(|e| TtsError::Engine(e.to_string()))
        }) {
            Ok(a) => a,
            Err(TtsError::Empty) => Vec::new(),
            Err(e) => {
                let mut t = self.timeline.lock().unwrap_or_else(|p| p.into_inner());
                if t.error.is_none() {
                    tracing::warn!(error = %e, "speech synthesis failed; the answer goes on as text");
                    self.out.send(ServerEvent::server_error(
                        "tts_failed",
                        format!("the answer could not be spoken: {e}"),
                    ));
                    t.error = Some(e);
                }
                Vec::new()
            }
        }
    }

    /// Sends the audio in deltas of `chunk` bytes; false when silenced between two.
    async fn send_audio(&self, audio: &[u8], chunk: usize) -> bool {
        for part in audio.chunks(chunk.max(2)) {
            if self.silenced() {
                return false;
            }
            if self.params.binary {
                self.out.send_audio(part.to_vec());
            } else {
                self.out.send(ServerEvent::OutputAudioDelta {
                    response_id: self.target.response_id.clone(),
                    item_id: self.target.item_id.clone(),
                    output_index: self.target.output_index.load(Ordering::Relaxed),
                    content_index: 0,
                    delta: base64::engine::general_purpose::STANDARD.encode(part),
                });
            }
            // A point where a barge-in's stop takes effect between deltas.
            tokio::task::yield_now().await;
        }
        true
    }
}

/// The part of an answer heard in its first `audio_end_ms`: whole pieces that ended by then,
/// and of the piece playing, the words whose share of its audio (by letters) had been played.
pub fn heard(pieces: &[Spoken], audio_end_ms: u64) -> String {
    let mut words: Vec<&str> = Vec::new();
    for p in pieces {
        if p.end_ms <= audio_end_ms {
            words.extend(p.text.split_whitespace());
            continue;
        }
        if p.start_ms >= audio_end_ms {
            break;
        }
        // Inside this piece: a word counts as heard once the audio passed its middle.
        let piece_words: Vec<&str> = p.text.split_whitespace().collect();
        let weight =
            |w: &str| w.chars().filter(|c| c.is_alphanumeric()).count().max(1) as f64 + 1.0;
        let total: f64 = piece_words.iter().map(|w| weight(w)).sum();
        let played = (audio_end_ms - p.start_ms) as f64 / (p.end_ms - p.start_ms).max(1) as f64;
        let mut at = 0.0;
        for w in piece_words {
            let mid = (at + weight(w) / 2.0) / total;
            if mid > played {
                break;
            }
            words.push(w);
            at += weight(w);
        }
        break;
    }
    words.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn piece(text: &str, start_ms: u64, end_ms: u64) -> Spoken {
        Spoken {
            text: text.into(),
            start_ms,
            end_ms,
        }
    }

    #[test]
    fn the_heard_part_is_cut_at_the_word_playing() {
        let pieces = [
            piece("The shop opens at nine,", 0, 1500),
            piece("and closes at six on weekdays.", 1500, 4000),
        ];
        assert_eq!(heard(&pieces, 0), "");
        assert_eq!(heard(&pieces, 1500), "The shop opens at nine,");
        assert_eq!(
            heard(&pieces, 60_000),
            "The shop opens at nine, and closes at six on weekdays."
        );
        // A quarter into the second piece: "and closes" have been played.
        assert_eq!(heard(&pieces, 2125), "The shop opens at nine, and closes");
    }
}
