//! Partial transcripts that never need retracting.
//!
//! While a person speaks, the growing turn is re-transcribed every few hundred ms. A word is
//! *stable* once [`AGREEMENT`] consecutive hypotheses agree on it and everything before it
//! (compared without case and punctuation); only newly stable words are sent as a delta. The
//! last word of a hypothesis is never stable (it may be cut mid-word). Two agreeing hypotheses
//! were measured to lock in early mistakes on 8 kHz audio ("and so am I fellow" for "and so my
//! fellow"); three do not. When the turn ends, [`Partials::finish`]
//! sends the final transcript's words after those already sent, so the concatenated deltas are the
//! final text except where an early stable word was later heard differently.

/// Consecutive hypotheses that must agree on a word before it is sent.
pub const AGREEMENT: usize = 3;

/// The partial-transcript state of one turn.
#[derive(Debug, Default)]
pub struct Partials {
    /// The last `AGREEMENT - 1` hypotheses, oldest first.
    previous: std::collections::VecDeque<Vec<String>>,
    emitted: usize,
}

fn norm(word: &str) -> String {
    word.chars()
        .filter(|c| c.is_alphanumeric() || *c == '\'')
        .flat_map(char::to_lowercase)
        .collect()
}

fn join(words: &[&str], leading_space: bool) -> String {
    let mut s = String::new();
    if leading_space {
        s.push(' ');
    }
    s.push_str(&words.join(" "));
    s
}

impl Partials {
    /// Takes a new hypothesis; returns the delta of newly stable words, if any.
    pub fn update(&mut self, hypothesis: &str) -> Option<String> {
        let words: Vec<&str> = hypothesis.split_whitespace().collect();
        let agree = if self.previous.len() + 1 < AGREEMENT {
            0
        } else {
            self.previous
                .iter()
                .map(|prev| {
                    prev.iter()
                        .zip(&words)
                        .take_while(|(a, b)| norm(a) == norm(b))
                        .count()
                })
                .min()
                .unwrap_or(0)
        };
        let stable = agree.min(words.len().saturating_sub(1));
        self.previous
            .push_back(words.iter().map(|w| w.to_string()).collect());
        while self.previous.len() >= AGREEMENT {
            self.previous.pop_front();
        }
        if stable > self.emitted {
            let delta = join(&words[self.emitted..stable], self.emitted > 0);
            self.emitted = stable;
            Some(delta)
        } else {
            None
        }
    }

    /// Words sent so far.
    pub fn emitted_words(&self) -> usize {
        self.emitted
    }

    /// Ends the turn with the final transcript; returns the delta still to send, if any, and
    /// resets for the next turn.
    pub fn finish(&mut self, final_text: &str) -> Option<String> {
        let words: Vec<&str> = final_text.split_whitespace().collect();
        let delta =
            (words.len() > self.emitted).then(|| join(&words[self.emitted..], self.emitted > 0));
        *self = Partials::default();
        delta
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_agreed_words_are_sent_and_deltas_rebuild_the_final() {
        let mut p = Partials::default();
        let mut sent = String::new();
        for h in [
            "And so",
            "And so my fell",
            "And so, my fellow Americans",
            "And so my fellow Americans ask",
            "And so my fellow Americans ask not",
            "And so my fellow Americans, ask not what your",
        ] {
            if let Some(d) = p.update(h) {
                sent.push_str(&d);
            }
        }
        // Each word is sent as the hypothesis that confirmed it spelled it.
        assert_eq!(sent, "And so, my fellow Americans ask");
        sent.push_str(
            &p.finish("And so my fellow Americans, ask not what your country can do for you.")
                .unwrap(),
        );
        assert_eq!(
            sent,
            "And so, my fellow Americans ask not what your country can do for you."
        );
        assert_eq!(p.emitted_words(), 0, "reset for the next turn");
    }

    #[test]
    fn a_changed_word_is_not_sent_until_three_hypotheses_agree() {
        let mut p = Partials::default();
        assert_eq!(p.update("she had your dog"), None);
        assert_eq!(
            p.update("she had your dog suit"),
            None,
            "only two hypotheses so far"
        );
        assert_eq!(
            p.update("she had your dark suit").as_deref(),
            Some("she had your")
        );
        assert_eq!(
            p.update("she had your dark suit in"),
            None,
            "`dark` agreed only twice"
        );
        assert_eq!(
            p.update("she had your dark suit in greasy"),
            Some(" dark suit".to_string())
        );
        assert_eq!(
            p.finish("She had your dark suit in greasy wash water.")
                .as_deref(),
            Some(" in greasy wash water.")
        );
        assert_eq!(p.finish(""), None);
    }
}
