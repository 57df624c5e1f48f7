//! The knowledge base's vocabulary: the names and words a recogniser should listen for when a
//! person asks about it ("Polwenna", "the Kettle and Crab", "stargazy pie").
//!
//! A general speech model guesses common words well and the knowledge base's own words badly: a
//! place name comes back as an everyday phrase, and then retrieval finds nothing. The terms here
//! are what the speech recogniser is biased towards ([`crate::asr::Request::hints`]) and what a
//! misheard transcript is repaired against before retrieval ([`crate::grounding::repair`]).
//!
//! Terms, most telling first: document titles and headings; names (runs of capitalised words
//! inside sentences, "Kettle and Crab", "Siân Trevithick", and each of their words); then the
//! other words of four letters or more, most frequent first. Which of them a recogniser
//! already knows is its own business (Whisper keeps those it spells with two or more tokens).

use std::collections::HashMap;

/// Most terms kept.
pub const MAX_TERMS: usize = 2000;

/// Words that join the parts of a name ("Kettle and Crab", "Isle of Man").
const NAME_JOINERS: &[&str] = &["and", "of", "the", "de", "la", "von", "van", "&"];

/// Short common words never worth listening for.
const STOPWORDS: &[&str] = &[
    "about", "above", "after", "again", "also", "always", "among", "been", "before", "being",
    "below", "between", "both", "cannot", "could", "does", "doing", "down", "during", "each",
    "every", "from", "have", "having", "here", "into", "just", "more", "most", "must", "never",
    "only", "other", "over", "same", "should", "some", "such", "than", "that", "their", "them",
    "then", "there", "these", "they", "this", "those", "through", "under", "until", "very", "were",
    "what", "when", "where", "which", "while", "will", "with", "within", "would", "your",
];

/// One chunk of text and where it sits.
pub struct Text<'a> {
    pub title: &'a str,
    pub heading: &'a str,
    pub text: &'a str,
}

/// The vocabulary of `texts`, most telling first, at most [`MAX_TERMS`].
pub fn terms(texts: &[Text<'_>]) -> Vec<String> {
    let mut headings: Vec<String> = Vec::new();
    let mut names: HashMap<String, usize> = HashMap::new();
    let mut words: HashMap<String, usize> = HashMap::new();
    for t in texts {
        for h in std::iter::once(t.title).chain(t.heading.split(" › ")) {
            let h = strip_article(h.trim());
            if !h.is_empty() && h.split_whitespace().count() <= 6 {
                push_unique(&mut headings, h.to_string());
            }
        }
        for line in t.text.lines() {
            let line = line.trim().trim_start_matches('#').trim();
            for sentence in line.split(['.', '!', '?', ':', ';', '|']) {
                scan(sentence, &mut names, &mut words);
            }
        }
    }
    let by_count = |m: HashMap<String, usize>| {
        let mut v: Vec<(String, usize)> = m.into_iter().collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        v.into_iter().map(|(w, _)| w)
    };
    let mut out = headings;
    for n in by_count(names) {
        push_unique(&mut out, n);
    }
    for w in by_count(words) {
        push_unique(&mut out, w);
    }
    out.truncate(MAX_TERMS);
    out
}

fn push_unique(v: &mut Vec<String>, s: String) {
    if !v.contains(&s) {
        v.push(s);
    }
}

fn strip_article(s: &str) -> &str {
    for a in ["The ", "A ", "An "] {
        if let Some(rest) = s.strip_prefix(a) {
            return rest;
        }
    }
    s
}

/// A word as it stands in text, without the punctuation around it.
fn bare(w: &str) -> &str {
    w.trim_matches(|c: char| !(c.is_alphanumeric() || c == '\'' || c == '’' || c == '&'))
        .trim_end_matches("'s")
        .trim_end_matches("’s")
}

fn capitalised(w: &str) -> bool {
    w.chars().next().is_some_and(char::is_uppercase)
}

/// Collects the names (capitalised runs) and other words of one sentence.
fn scan(sentence: &str, names: &mut HashMap<String, usize>, words: &mut HashMap<String, usize>) {
    let ws: Vec<&str> = sentence.split_whitespace().map(bare).collect();
    let mut i = 0;
    while i < ws.len() {
        let w = ws[i];
        if w.is_empty() {
            i += 1;
            continue;
        }
        if !capitalised(w) {
            let lower = w.to_lowercase();
            if lower.chars().count() >= 4
                && lower.chars().all(char::is_alphabetic)
                && !STOPWORDS.contains(&lower.as_str())
            {
                *words.entry(lower).or_default() += 1;
            }
            i += 1;
            continue;
        }
        // A run of capitalised words, joined by "and", "of", …
        let mut end = i + 1;
        let mut last_cap = i;
        while end < ws.len() {
            if capitalised(ws[end]) {
                last_cap = end;
            } else if !NAME_JOINERS.contains(&ws[end]) {
                break;
            }
            end += 1;
        }
        let run: Vec<&str> = ws[i..=last_cap].to_vec();
        let at_start = i == 0;
        let caps: Vec<&str> = run.iter().copied().filter(|w| capitalised(w)).collect();
        // One capitalised word opening a sentence is an ordinary word ("Entry is £9.50").
        if !(at_start && caps.len() == 1) {
            let skip = usize::from(["The", "A", "An"].contains(&run[0]) && run.len() > 1);
            let name = run[skip..].join(" ");
            if run.len() - skip > 1 {
                *names.entry(name).or_default() += 1;
            }
            for c in caps.iter().skip(skip) {
                if c.chars().count() >= 2 {
                    *names.entry(c.to_string()).or_default() += 1;
                }
            }
        }
        i = last_cap + 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn titles_names_and_words_are_found_in_that_order() {
        let text = "The Kettle and Crab is a café on Fore Street, run by Jago Penrose.\n\nIts best-known dish is stargazy pie. It is served on Fridays only. The skipper is Siân Trevithick. Entry is £9.50 for adults. The N9 night bus leaves at 11:40.";
        let t = terms(&[Text {
            title: "The Kettle and Crab",
            heading: "Food › Stargazy pie",
            text,
        }]);
        let at = |s: &str| {
            t.iter()
                .position(|x| x == s)
                .unwrap_or_else(|| panic!("{s}: {t:?}"))
        };
        assert_eq!(&t[..3], ["Kettle and Crab", "Food", "Stargazy pie"]);
        for name in [
            "Fore Street",
            "Jago Penrose",
            "Siân Trevithick",
            "Trevithick",
            "N9",
            "Fridays",
        ] {
            assert!(at(name) > 2);
        }
        assert!(at("stargazy") > at("Jago Penrose"));
        // Sentence openers and short or common words are not names or terms.
        for not in ["Entry", "Its", "It", "The", "is", "only", "with"] {
            assert!(!t.contains(&not.to_string()), "{not}: {t:?}");
        }
    }
}
