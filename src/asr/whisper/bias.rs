//! Contextual biasing: listening for the words a request's hints name (the knowledge base's
//! names and rare words) while Whisper decodes, without a prompt.
//!
//! A prompt conditions the decoder too, but tiny.en pays for it twice: every decode reads the
//! prompt's tokens (+130–360 ms a turn, measured on the spoken suite with 60 names), and a long
//! list of names talks it into strange spellings of ordinary speech. Biasing instead adds to the
//! logits at each decoder step (shallow fusion with a list of token sequences):
//!
//! - the first token of a name (a capitalised term) gets a small boost ([`FIRST_BOOST`]), and
//!   only where the model already has it within that much of its best guess: it tips a near
//!   tie, it never puts a name where nothing like it was said;
//! - once the decoded text ends with the first tokens of a term, its next token gets a large
//!   boost ([`NEXT_BOOST`]): "Pen" then "hall" then "ow" rather than "pennant", "hev" then
//!   "va". (Not gated: the model never finds those pieces plausible; that is the point.)
//!
//! A word that Whisper writes as one token is no hint worth giving, unless it is a name: only
//! terms of two or more tokens, or capitalised, are kept ([`Bias::new`]).
//!
//! Measured on the spoken suite (docs/voice.md): knowledge-base words missed 38 % → 15 %, WER
//! 29.7 % → 27.2 %. On the same questions with another knowledge base's hints (speech that is
//! not about it) the WER moves 30.2 % → 30.8 % (three of 35 transcripts change, none for the
//! worse in meaning); boosting every term's first token without the near-tie gate put that
//! base's names into ordinary speech ("Which maya okaformed", WER 33.5 %).

use std::os::raw::{c_int, c_void};

use whisper_rs::WhisperContext;

/// Logit added to the first token of a name, where it is already within this much of the best.
pub const FIRST_BOOST: f32 = 1.0;
/// Logit added to the next token of a term whose first tokens were just decoded.
pub const NEXT_BOOST: f32 = 5.0;
/// Most token sequences kept (two spellings of up to half this many terms).
pub const MAX_SEQUENCES: usize = 1024;
/// Longest term, in tokens.
const MAX_TERM_TOKENS: usize = 12;

/// The token sequences to listen for, built from a request's hints.
#[derive(Debug, Clone, PartialEq)]
struct Term {
    tokens: Vec<i32>,
    /// A name: its first token gets [`FIRST_BOOST`].
    lead: bool,
}

#[derive(Debug, Default)]
pub(super) struct Bias {
    sequences: Vec<Term>,
    /// Token ids from here on are timestamps (a boundary between words).
    token_beg: i32,
    n_vocab: i32,
}

impl Bias {
    /// The sequences for `hints`: each term with a leading space (as Whisper writes a word), as
    /// given and, for a lowercase word, capitalised (at the start of a sentence). Terms of one
    /// common token are dropped.
    pub(super) fn new(ctx: &WhisperContext, hints: &[String]) -> Bias {
        let mut sequences: Vec<Term> = Vec::new();
        for term in hints {
            let term = term.trim();
            if term.is_empty() || term.len() > 80 || term.contains('\0') {
                continue;
            }
            // As written; a word also capitalised (opening a sentence), a name also in lower
            // case (tiny.en often writes "the kettle and crab").
            let mut spellings = vec![term.to_string()];
            let mut chars = term.chars();
            match chars.next() {
                Some(first) if first.is_lowercase() => {
                    spellings.push(first.to_uppercase().chain(chars).collect())
                }
                Some(_) => spellings.push(term.to_lowercase()),
                None => {}
            }
            for s in spellings {
                let name = s.chars().next().is_some_and(char::is_uppercase);
                let Ok(tokens) = ctx.tokenize(&format!(" {s}"), MAX_TERM_TOKENS * 4) else {
                    continue;
                };
                let common = tokens.len() < 2 && !name;
                if tokens.is_empty() || tokens.len() > MAX_TERM_TOKENS || common {
                    continue;
                }
                let term = Term { tokens, lead: name };
                if !sequences.contains(&term) {
                    sequences.push(term);
                }
            }
            if sequences.len() >= MAX_SEQUENCES {
                break;
            }
        }
        Bias {
            sequences,
            token_beg: ctx.token_beg(),
            n_vocab: ctx.n_vocab(),
        }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.sequences.is_empty()
    }

    /// Adds the boosts to `logits` after the decoded `tokens`.
    pub(super) fn apply(&self, tokens: &[i32], logits: &mut [f32]) {
        // The text decoded since the last timestamp (a term never spans one).
        let start = tokens
            .iter()
            .rposition(|&t| t >= self.token_beg)
            .map_or(0, |i| i + 1);
        let text = &tokens[start..];
        let best = logits
            .iter()
            .copied()
            .filter(|l| l.is_finite())
            .fold(f32::NEG_INFINITY, f32::max);
        // Boosts are decided on the model's own logits, then added (one term's boost does not
        // make another's first token a near tie).
        let mut add: Vec<(usize, f32)> = Vec::new();
        let mut boost = |token: i32, by: f32| {
            if logits.get(token as usize).is_some_and(|l| l.is_finite()) {
                add.push((token as usize, by));
            }
        };
        for term in &self.sequences {
            let seq = &term.tokens;
            let near_tie = logits
                .get(seq[0] as usize)
                .is_some_and(|&l| l >= best - FIRST_BOOST);
            if term.lead && near_tie {
                boost(seq[0], FIRST_BOOST);
            }
            // The longest prefix of the term that the decoded text ends with.
            if let Some(k) = (1..seq.len())
                .rev()
                .find(|&k| text.len() >= k && text[text.len() - k..] == seq[..k])
            {
                boost(seq[k], NEXT_BOOST);
            }
        }
        for (token, by) in add {
            logits[token] += by;
        }
    }

    /// The callback whisper.cpp calls at each decoder step (`user_data` is a `&Bias`).
    ///
    /// # Safety
    /// `user_data` points to a live `Bias`; `tokens` to `n_tokens` token data; `logits` to the
    /// vocabulary's logits (whisper.cpp's contract for the filter callback). Nothing here can
    /// panic (a panic may not unwind into C).
    #[allow(unsafe_code)]
    pub(super) unsafe extern "C" fn filter(
        _ctx: *mut whisper_rs::WhisperSysContext,
        _state: *mut whisper_rs::WhisperSysState,
        tokens: *const whisper_rs::WhisperTokenData,
        n_tokens: c_int,
        logits: *mut f32,
        user_data: *mut c_void,
    ) {
        if user_data.is_null() || logits.is_null() {
            return;
        }
        // SAFETY: see the function's contract.
        let bias = unsafe { &*(user_data as *const Bias) };
        let data = if tokens.is_null() || n_tokens <= 0 {
            &[][..]
        } else {
            // SAFETY: whisper.cpp passes the decoder's `n_tokens` tokens.
            unsafe { std::slice::from_raw_parts(tokens, n_tokens as usize) }
        };
        let ids: Vec<i32> = data.iter().map(|t| t.id).collect();
        // SAFETY: whisper.cpp's logits hold `n_vocab` values.
        let logits =
            unsafe { std::slice::from_raw_parts_mut(logits, bias.n_vocab.max(0) as usize) };
        bias.apply(&ids, logits);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bias(sequences: Vec<Vec<i32>>) -> Bias {
        Bias {
            sequences: sequences
                .into_iter()
                .map(|tokens| Term { tokens, lead: true })
                .collect(),
            token_beg: 100,
            n_vocab: 120,
        }
    }

    #[test]
    fn the_first_token_gets_a_little_and_the_next_of_a_started_term_a_lot() {
        let b = bias(vec![vec![5, 6, 7]]);
        let mut logits = vec![0.0; 120];
        b.apply(&[1, 2], &mut logits);
        assert_eq!(logits[5], FIRST_BOOST);
        assert_eq!(logits[6], 0.0);
        let mut logits = vec![0.0; 120];
        b.apply(&[1, 5], &mut logits);
        assert_eq!(logits[6], NEXT_BOOST);
        let mut logits = vec![0.0; 120];
        b.apply(&[5, 6], &mut logits);
        assert_eq!(logits[7], NEXT_BOOST);
        assert_eq!(logits[6], 0.0);
    }

    #[test]
    fn a_name_is_only_tipped_over_a_near_tie() {
        let b = bias(vec![vec![5, 6]]);
        let mut logits = vec![0.0; 120];
        logits[5] = -FIRST_BOOST - 0.5;
        b.apply(&[1], &mut logits);
        assert_eq!(logits[5], -FIRST_BOOST - 0.5, "not a near tie");
        // Once started, the term goes on however unlikely its next piece is to the model.
        let mut logits = vec![0.0; 120];
        logits[6] = -20.0;
        b.apply(&[5], &mut logits);
        assert_eq!(logits[6], -20.0 + NEXT_BOOST);
    }

    #[test]
    fn a_timestamp_ends_a_term_and_suppressed_tokens_stay_suppressed() {
        let b = bias(vec![vec![5, 6]]);
        let mut logits = vec![0.0; 120];
        // "5", then a timestamp: the term cannot go on across it.
        b.apply(&[5, 101], &mut logits);
        assert_eq!(logits[6], 0.0);
        let mut logits = vec![f32::NEG_INFINITY; 120];
        b.apply(&[5], &mut logits);
        assert_eq!(logits[6], f32::NEG_INFINITY);
        assert_eq!(logits[5], f32::NEG_INFINITY);
    }
}
