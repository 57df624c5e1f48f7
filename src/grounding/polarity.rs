//! Whether a sentence says the opposite of the source sentence that seems to support it. Word
//! overlap alone passes "The café takes cash." against "The café accepts cards only, no cash.":
//! here a sentence contradicts its source when it states without a negation what the source
//! negates ("no cash" → "cash"), drops an "only" ("cards only" → "cards"), negates what the
//! source states ("opens at 9" → "does not open at 9"), or calls open what the source calls
//! closed (and the reverse).

use super::support::{is_content_word, words};

/// Words that turn what follows them (and, for "only", what comes before) into a restriction.
const NEGATORS: &[&str] = &[
    "no", "not", "never", "without", "except", "only", "none", "nor", "nothing", "cannot",
];

/// How many words after a negator it bears on ("not open", "no credit cards").
const REACH: usize = 2;

fn is_negator(w: &str) -> bool {
    NEGATORS.contains(&w) || w.ends_with("n't")
}

/// The same word, or one with an added "s" ("opens" and "open").
fn same_word(a: &str, b: &str) -> bool {
    a == b || a.strip_suffix('s') == Some(b) || b.strip_suffix('s') == Some(a)
}

/// The content words that a negator in `tokens` bears on.
fn negated(tokens: &[String]) -> Vec<&str> {
    let mut out = Vec::new();
    for (k, t) in tokens.iter().enumerate() {
        // "No, …" opening an answer is the answer to a yes/no question, not a negation.
        if !is_negator(t) || (k == 0 && t == "no") {
            continue;
        }
        let after = tokens[k + 1..].iter().take(REACH);
        let before = (t == "only").then(|| k.checked_sub(1).map(|i| &tokens[i]));
        for w in after.chain(before.flatten()) {
            if is_content_word(w) && !is_negator(w) {
                out.push(w.as_str());
            }
        }
    }
    out
}

/// The content words that a negation in `text` denies ("no cash", "does not sail"): as
/// [`contradicts`] reads negations, except "only", which restricts rather than denies.
pub fn denied(text: &str) -> Vec<String> {
    let tokens: Vec<String> = words(text);
    let mut out = Vec::new();
    for (k, t) in tokens.iter().enumerate() {
        if !is_negator(t) || t == "only" || (k == 0 && t == "no") {
            continue;
        }
        for w in tokens[k + 1..].iter().take(REACH) {
            if is_content_word(w) && !is_negator(w) {
                out.push(w.clone());
            }
        }
    }
    out
}

/// Whether a negator bears on the word at `i` (up to [`REACH`] words before it, or "only"
/// right after it).
fn negated_at(tokens: &[String], i: usize) -> bool {
    let before = tokens[i.saturating_sub(REACH)..i]
        .iter()
        .any(|t| is_negator(t));
    let only_after = tokens.get(i + 1).is_some_and(|t| t == "only");
    before || only_after
}

/// Whether `tokens` states `word` without a negation bearing on it.
fn states(tokens: &[String], word: &str) -> bool {
    tokens
        .iter()
        .enumerate()
        .any(|(i, t)| same_word(t, word) && !negated_at(tokens, i))
}

fn mentions(tokens: &[String], word: &str) -> bool {
    tokens.iter().any(|t| same_word(t, word))
}

/// Whether `sentence` contradicts `source` (see the module's doc).
pub fn contradicts(sentence: &str, source: &str) -> bool {
    let said = words(sentence);
    let src = words(source);
    let negated_in_source = negated(&src);
    if negated_in_source.iter().any(|w| states(&said, w)) {
        return true;
    }
    if negated(&said)
        .iter()
        .any(|w| states(&src, w) && !negated_in_source.iter().any(|n| same_word(n, w)))
    {
        return true;
    }
    // Open against closed.
    for (a, b) in [("open", "closed"), ("closed", "open")] {
        if states(&said, a) && mentions(&src, b) && !mentions(&src, a) {
            return true;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dropped_or_added_negation_is_a_contradiction() {
        let source = "The Harbour Café accepts cards only, no cash.";
        for said in [
            "The Harbour Café takes cash.",
            "The Harbour Café accepts cash.",
            "The Harbour Café accepts cards.",
        ] {
            assert!(contradicts(said, source), "{said}");
        }
        for said in [
            "The Harbour Café accepts cards only, no cash.",
            "The Harbour Café does not take cash.",
            "No, the Harbour Café takes no cash: cards only.",
        ] {
            assert!(!contradicts(said, source), "{said}");
        }
        let source = "The shop opens at 9 and closes at 6.";
        assert!(contradicts("The shop does not open at 9.", source));
        assert!(!contradicts("The shop opens at 9.", source));
        assert!(!contradicts("It closes at 6, not 7.", source));
    }

    #[test]
    fn open_against_closed_is_a_contradiction() {
        let source = "The museum is closed on Mondays.";
        assert!(contradicts("The museum is open on Mondays.", source));
        assert!(!contradicts("The museum is closed on Mondays.", source));
        assert!(!contradicts(
            "It is open from 10.",
            "Open from 10 to 5, closed on Mondays."
        ));
    }

    #[test]
    fn unrelated_words_near_a_negation_are_not_a_contradiction() {
        let source = "There is no parking at the shop; park on Mill Road.";
        assert!(!contradicts("Park on Mill Road.", source));
        assert!(!contradicts(
            "Repairs take two days.",
            "Repairs take two days, never more."
        ));
    }
}
