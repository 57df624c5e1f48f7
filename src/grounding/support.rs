//! How far an answer is supported by the passages it rests on: its content words (numbers,
//! names, other words that carry facts) and the share of them the passages hold. The answer
//! stage checks answers with it before they are sent, and `voxd eval` scores them with it.

use std::collections::HashSet;

/// Words that carry no fact of their own (left out of groundedness).
const STOPWORDS: &[&str] = &[
    "a",
    "about",
    "after",
    "all",
    "also",
    "am",
    "an",
    "and",
    "any",
    "are",
    "as",
    "at",
    "be",
    "because",
    "been",
    "but",
    "by",
    "can",
    "could",
    "do",
    "does",
    "for",
    "from",
    "get",
    "got",
    "had",
    "has",
    "have",
    "he",
    "her",
    "here",
    "him",
    "his",
    "how",
    "i",
    "if",
    "in",
    "into",
    "is",
    "it",
    "its",
    "just",
    "let",
    "like",
    "may",
    "me",
    "more",
    "most",
    "my",
    "no",
    "not",
    "of",
    "on",
    "one",
    "or",
    "our",
    "out",
    "please",
    "should",
    "so",
    "some",
    "than",
    "that",
    "the",
    "their",
    "them",
    "then",
    "there",
    "these",
    "they",
    "this",
    "those",
    "to",
    "up",
    "us",
    "very",
    "was",
    "we",
    "were",
    "what",
    "when",
    "where",
    "which",
    "who",
    "will",
    "with",
    "would",
    "yes",
    "you",
    "your",
    "sure",
    "help",
    "happy",
    "great",
    "thanks",
    "thank",
    "know",
    "need",
    "want",
    "find",
    "information",
    "anything",
    "else",
    "ask",
    "sorry",
    "i'm",
    "it's",
    "we're",
    "you're",
    "don't",
    "can't",
    "there's",
    "that's",
    "per",
    "only",
    "each",
    "every",
    "other",
    "time",
];

/// Lower-case words (letters, digits, apostrophes; `£120` and `6:30` stay whole).
pub fn words(text: &str) -> Vec<String> {
    text.to_lowercase()
        .split(|c: char| !(c.is_alphanumeric() || c == '\'' || c == '£' || c == ':' || c == '.'))
        .map(|w| w.trim_matches(|c: char| c == '\'' || c == '.' || c == ':'))
        .filter(|w| !w.is_empty())
        .map(|w| w.replace(',', ""))
        .collect()
}

/// Whether a word (from [`words`]) carries facts: a number, or a word of three letters or more
/// that is not a stop word.
pub fn is_content_word(w: &str) -> bool {
    w.chars().any(|c| c.is_ascii_digit()) || (w.chars().count() >= 3 && !STOPWORDS.contains(&w))
}

/// The content words of a text: numbers, names and other words that carry facts.
pub fn content_words(text: &str) -> Vec<String> {
    words(text)
        .into_iter()
        .filter(|w| is_content_word(w))
        .collect()
}

/// How much of the answer's content the passages support: the share of its content words
/// (numbers, names, other words that carry facts) found in the passages, 1 when it has none.
/// `1 - groundedness` is a hallucination score. Words match on a shared stem of 5 letters, so
/// "opens" is supported by "open" and "services" by "service".
pub fn groundedness(answer: &str, passages: &[&str]) -> f64 {
    let claimed = content_words(answer);
    if claimed.is_empty() {
        return 1.0;
    }
    let source: HashSet<String> = passages.iter().flat_map(|p| words(p)).collect();
    let stems: HashSet<String> = source.iter().map(|w| stem(w)).collect();
    let supported = claimed
        .iter()
        .filter(|w| source.contains(*w) || stems.contains(&stem(w)))
        .count();
    supported as f64 / claimed.len() as f64
}

/// A word's stem: its first five letters once a plural ending is off ("dogs" and "dog",
/// "buses" and "bus", "services" and "service" share one). Numbers stay whole.
pub fn stem(w: &str) -> String {
    if w.chars().any(|c| c.is_ascii_digit()) {
        return w.to_string();
    }
    let short = w.chars().count() <= 5;
    let singular = if let Some(s) = w.strip_suffix("ies").filter(|s| s.len() >= 2) {
        format!("{s}y")
    } else if let Some(s) = ["ches", "shes", "sses", "xes"].iter().find_map(|end| {
        w.strip_suffix(end)
            .map(|s| format!("{s}{}", &end[..end.len() - 2]))
    }) {
        s
    } else if let Some(s) = w.strip_suffix("ses").filter(|_| short) {
        format!("{s}s")
    } else if short
        && w.len() > 3
        && w.ends_with('s')
        && !["ss", "us", "is"].iter().any(|e| w.ends_with(e))
    {
        w[..w.len() - 1].to_string()
    } else {
        w.to_string()
    };
    singular.chars().take(5).collect()
}

/// How alike two answers are: the Jaccard overlap of their content words.
pub fn similarity(a: &str, b: &str) -> f64 {
    let a: HashSet<String> = content_words(a).into_iter().collect();
    let b: HashSet<String> = content_words(b).into_iter().collect();
    if a.is_empty() && b.is_empty() {
        return 0.0;
    }
    a.intersection(&b).count() as f64 / a.union(&b).count() as f64
}

/// Two answers to different questions this alike count as a repeat.
pub const REPEAT_SIMILARITY: f64 = 0.8;

/// Whether `text` says the same thing again: a sentence whose content words are mostly those of
/// an earlier sentence in `before` (a small model's loop: "I'm not. I'm not. …").
pub fn repeats(text: &str, before: &[String]) -> bool {
    let words: HashSet<String> = content_words(text).into_iter().collect();
    if words.is_empty() {
        // Only stop words: a loop when it is word for word an earlier sentence.
        let t = normalised(text);
        return !t.is_empty() && before.iter().any(|b| normalised(b) == t);
    }
    before
        .iter()
        .any(|b| similarity(text, b) >= REPEAT_SIMILARITY)
}

fn normalised(text: &str) -> String {
    words(text).join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plurals_share_their_stem() {
        for (a, b) in [
            ("dogs", "dog"),
            ("buses", "bus"),
            ("bikes", "bike"),
            ("ferries", "ferry"),
            ("dishes", "dish"),
            ("services", "service"),
            ("houses", "house"),
            ("opens", "open"),
        ] {
            assert_eq!(stem(a), stem(b), "{a} {b}");
        }
        assert_ne!(stem("bus"), stem("business"));
        assert_eq!(stem("30"), "30");
    }

    #[test]
    fn groundedness_counts_supported_content_words() {
        let passage = "Full service (strip, clean, regrease bearings, true wheels): £120";
        // "full", "service" and "£120" are in the passage; "costs" is not.
        assert_eq!(groundedness("A full service costs £120.", &[passage]), 0.75);
        assert_eq!(groundedness("The full service is £120.", &[passage]), 1.0);
        assert!(groundedness("It costs £95 and takes five days.", &[passage]) < 0.3);
        assert_eq!(groundedness("Yes.", &[passage]), 1.0);
        assert_eq!(groundedness("Services at £120", &["service £120"]), 1.0);
    }

    #[test]
    fn repeats_are_near_identical_answers() {
        let a = "The café is open from 8 am to 4 pm every day.";
        assert!(similarity(a, "The café is open from 8 am to 4 pm each day!") >= REPEAT_SIMILARITY);
        assert!(similarity(a, "A full service costs £120.") < 0.2);
    }

    #[test]
    fn a_loop_is_a_sentence_said_again() {
        let before = vec![
            "I'm not.".to_string(),
            "The shop opens at 8 am.".to_string(),
        ];
        assert!(repeats(" I'm not.", &before));
        assert!(repeats("The shop opens at 8 am!", &before));
        assert!(!repeats("The workshop closes at 6 pm.", &before));
        assert!(!repeats("Yes.", &before));
    }
}
