//! A guard against a small model's loops in answers no check reads (small talk, answers from
//! tool results): text streams through as it comes, except while the sentence being written
//! could still be word for word one already said; a finished sentence that says an earlier one
//! again ends the answer. So "I'm just a helpful voice assistant." is never spoken twice, and an
//! answer that starts looping is cut where the loop starts.

use super::sentence_end;
use super::support::{repeats, words};

/// What a piece of the answer gave.
#[derive(Debug, Default, PartialEq)]
pub struct Guarded {
    /// Text to send now.
    pub send: String,
    /// The answer repeats itself from here: end it.
    pub ended: bool,
}

/// Streams an answer's text, holding back and dropping repeated sentences.
#[derive(Debug, Default)]
pub struct RepeatGuard {
    /// Sentences said so far, and each one's words (normalised once, not at every delta).
    said: Vec<String>,
    said_words: Vec<String>,
    /// The sentence being written, and how much of it was sent.
    pending: String,
    sent: usize,
    ended: bool,
}

impl RepeatGuard {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a delta of the answer.
    pub fn push(&mut self, delta: &str) -> Guarded {
        let mut out = Guarded::default();
        if self.ended {
            out.ended = true;
            return out;
        }
        self.pending.push_str(delta);
        while let Some(end) = sentence_end(&self.pending) {
            let sentence = self.pending[..end].to_string();
            if !self.said.is_empty() && repeats(&sentence, &self.said) {
                self.ended = true;
                out.ended = true;
                return out;
            }
            out.send.push_str(&sentence[self.sent.min(end)..]);
            self.said_words.push(words(&sentence).join(" "));
            self.said.push(sentence);
            self.pending.drain(..end);
            self.sent = 0;
        }
        if !self.could_be_a_repeat() {
            out.send.push_str(&self.pending[self.sent..]);
            self.sent = self.pending.len();
        }
        out
    }

    /// The answer ended: what is still held, unless it repeats an earlier sentence.
    pub fn finish(&mut self) -> Guarded {
        let rest = std::mem::take(&mut self.pending);
        let held = rest[self.sent.min(rest.len())..].to_string();
        self.sent = 0;
        if self.ended || (!self.said.is_empty() && repeats(&rest, &self.said)) {
            return Guarded {
                send: String::new(),
                ended: !rest.trim().is_empty(),
            };
        }
        Guarded {
            send: held,
            ended: false,
        }
    }

    /// Whether the sentence being written is, so far, the start of one already said.
    fn could_be_a_repeat(&self) -> bool {
        if self.said_words.is_empty() {
            return false;
        }
        let so_far = words(&self.pending).join(" ");
        !so_far.is_empty() && self.said_words.iter().any(|s| s.starts_with(&so_far))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `deltas` and returns what was sent and whether the answer was ended.
    fn run(deltas: &[&str]) -> (String, bool) {
        let mut g = RepeatGuard::new();
        let mut sent = String::new();
        for d in deltas {
            let out = g.push(d);
            sent.push_str(&out.send);
            if out.ended {
                return (sent, true);
            }
        }
        let out = g.finish();
        sent.push_str(&out.send);
        (sent, out.ended)
    }

    #[test]
    fn a_repeated_sentence_is_never_sent() {
        let (sent, ended) = run(&[
            "Aw, shucks. ",
            "I'm just a helpful",
            " voice assistant. I'm",
            " just a helpful voice",
            " assistant. I'm just",
        ]);
        assert_eq!(sent, "Aw, shucks. I'm just a helpful voice assistant. ");
        assert!(ended);
    }

    #[test]
    fn text_streams_at_once_unless_it_could_be_a_repeat() {
        let mut g = RepeatGuard::new();
        assert_eq!(g.push("The shop").send, "The shop");
        assert_eq!(g.push(" opens at 9. ").send, " opens at 9. ");
        // "The" could start the sentence again: held until it does not.
        assert_eq!(g.push("The").send, "");
        assert_eq!(g.push(" workshop").send, "The workshop");
        assert_eq!(g.push(" closes at 6.").send, " closes at 6.");
        assert_eq!(g.finish(), Guarded::default());
    }

    #[test]
    fn a_held_ending_that_is_not_a_repeat_is_sent_at_the_end() {
        assert_eq!(
            run(&["Yes. ", "Yes, and bring a lock"]),
            ("Yes. Yes, and bring a lock".into(), false)
        );
        assert_eq!(run(&["Hello! ", "Hello!"]), ("Hello! ".into(), true));
        assert_eq!(run(&[]), (String::new(), false));
    }
}
