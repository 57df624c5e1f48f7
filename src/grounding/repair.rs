//! Repairing a misheard question against the knowledge base's vocabulary, before retrieval: a
//! word that is not in the knowledge base but sounds like one of its words is read as that word
//! ("Which month does the very run?" → "… the ferry run?", "a single fair" → "a single fare").
//!
//! Sound is compared with a phonetic key (a small Metaphone: consonants by how they sound, voiced
//! and unvoiced pairs together, vowels dropped after the first letter) and spelling with the
//! edit distance. The repaired question is used for retrieval and ranking only, and only when
//! the question as heard found nothing (see `realtime::answer::ground`): the client sees what
//! was heard, and a question that was heard well is never changed.

use std::collections::{HashMap, HashSet};

use super::support;

/// The phonetic key of a lower-case word.
pub fn key(word: &str) -> String {
    let w: Vec<char> = word
        .chars()
        .filter(|c| c.is_ascii_alphabetic())
        .map(|c| c.to_ascii_lowercase())
        .collect();
    let mut i = 0;
    // Silent first letters: "knight", "gnome", "pneumatic", "write".
    if w.len() > 1
        && matches!(
            (w[0], w[1]),
            ('k', 'n') | ('g', 'n') | ('p', 'n') | ('w', 'r')
        )
    {
        i = 1;
    }
    let mut out = String::new();
    let at = |j: usize| w.get(j).copied().unwrap_or(' ');
    let soft = |c: char| matches!(c, 'e' | 'i' | 'y');
    while i < w.len() {
        let c = w[i];
        let next = at(i + 1);
        let (sound, skip) = match c {
            'a' | 'e' | 'i' | 'o' | 'u' | 'y' => (if out.is_empty() { "A" } else { "" }, 0),
            'b' | 'p' if next == 'h' => ("F", 1),
            'b' | 'p' => ("P", 0),
            'd' | 't' if next == 'h' => ("T", 1),
            't' if next == 'i' && matches!(at(i + 2), 'o' | 'a') => ("X", 0),
            'd' | 't' => ("T", 0),
            'c' if next == 'h' => ("X", 1),
            'c' if soft(next) => ("S", 0),
            'c' | 'k' | 'q' => ("K", 0),
            'g' if next == 'h' => ("", 1),
            'g' if soft(next) => ("J", 0),
            'g' => ("K", 0),
            'j' => ("J", 0),
            's' if next == 'h' => ("X", 1),
            's' if next == 'i' && matches!(at(i + 2), 'o' | 'a') => ("X", 0),
            's' | 'z' => ("S", 0),
            'f' | 'v' => ("F", 0),
            'x' => ("KS", 0),
            'h' | 'w' => ("", 0),
            'm' => ("M", 0),
            'n' => ("N", 0),
            'l' => ("L", 0),
            'r' => ("R", 0),
            _ => ("", 0),
        };
        if !sound.is_empty() && !out.ends_with(sound) {
            out.push_str(sound);
        }
        i += 1 + skip;
    }
    out
}

/// The edit distance between two words.
pub fn distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.iter().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let here = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != cb)).min(row[j] + 1).min(here + 1);
            prev = here;
        }
    }
    row[b.len()]
}

/// Words that carry the question's grammar, never read as another word.
const FUNCTION_WORDS: &[&str] = &[
    "the", "and", "are", "can", "for", "you", "your", "does", "did", "what", "when", "where",
    "which", "who", "how", "why", "there", "their", "they", "this", "that", "with", "from", "have",
    "has", "was", "were", "will", "would", "could", "should", "about", "any", "our",
];

/// The knowledge base's words, by phonetic key.
pub struct Lexicon {
    words: HashSet<String>,
    by_key: HashMap<String, Vec<String>>,
}

impl Lexicon {
    /// The words of the vocabulary's terms (names split into their words), lower-cased.
    pub fn new(terms: &[String]) -> Self {
        let mut words = HashSet::new();
        for t in terms {
            for w in support::words(t) {
                if w.chars().count() >= 3 && w.chars().all(|c| c.is_alphabetic()) {
                    words.insert(w);
                }
            }
        }
        let mut by_key: HashMap<String, Vec<String>> = HashMap::new();
        for w in &words {
            by_key.entry(key(w)).or_default().push(w.clone());
        }
        for v in by_key.values_mut() {
            v.sort();
        }
        Lexicon { words, by_key }
    }

    /// The knowledge-base word `word` was probably meant as, if it is not one itself: same
    /// phonetic key, at most two edits apart (or, for longer words, a third of their letters);
    /// the closest in spelling, then in length ("fairy" is the ferry, "fair" the fare).
    pub fn meant(&self, word: &str) -> Option<&str> {
        let w = word.to_lowercase();
        if w.chars().count() < 3 || self.words.contains(&w) || FUNCTION_WORDS.contains(&w.as_str())
        {
            return None;
        }
        let limit = 2.max(w.chars().count() / 3);
        self.by_key
            .get(&key(&w))?
            .iter()
            .map(|c| {
                let len_gap = c.chars().count().abs_diff(w.chars().count());
                (distance(&w, c), len_gap, c)
            })
            .filter(|(d, _, _)| *d <= limit)
            .min()
            .map(|(_, _, c)| c.as_str())
    }

    /// `question` with every word the knowledge base probably meant put in, or `None` when no
    /// word changed.
    pub fn repair(&self, question: &str) -> Option<String> {
        let mut changed = false;
        let out: Vec<String> = question
            .split_whitespace()
            .map(|token| {
                let core = token.trim_matches(|c: char| !c.is_alphanumeric());
                match self.meant(core) {
                    Some(m) if !core.is_empty() => {
                        changed = true;
                        token.replacen(core, m, 1)
                    }
                    _ => token.to_string(),
                }
            })
            .collect();
        changed.then(|| out.join(" "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_that_sound_alike_share_a_key() {
        for (a, b) in [
            ("ferry", "fairy"),
            ("ferry", "very"),
            ("fare", "fair"),
            ("kettle", "cattle"),
            ("crab", "grab"),
            ("sessions", "sashans"),
            ("phone", "fone"),
        ] {
            assert_eq!(key(a), key(b), "{a} {b}");
        }
        assert_ne!(key("ferry"), key("bus"));
        assert_eq!(distance("fairy", "ferry"), 2);
        assert_eq!(distance("", "abc"), 3);
    }

    #[test]
    fn a_misheard_word_is_read_as_the_knowledge_base_word_it_sounds_like() {
        let lex = Lexicon::new(&[
            "The St Piran's Island ferry".to_string(),
            "fare".to_string(),
            "Kettle and Crab".to_string(),
            "museum".to_string(),
        ]);
        assert_eq!(
            lex.repair("Which month does the very run?").as_deref(),
            Some("Which month does the ferry run?")
        );
        assert_eq!(
            lex.repair("How much is a single fair on the bus?")
                .as_deref(),
            Some("How much is a single fare on the bus?")
        );
        assert_eq!(
            lex.repair("is the cattle and crab open").as_deref(),
            Some("is the kettle and crab open")
        );
        // Heard right, or nothing like a knowledge-base word: unchanged.
        assert_eq!(lex.repair("Where is the museum?"), None);
        assert_eq!(lex.repair("What will the weather be like?"), None);
    }
}

#[cfg(test)]
mod suite_tests {
    use super::*;
    use crate::rag::vocabulary::{terms, Text};

    /// Questions of the spoken suite as tiny.en heard them, repaired against the vocabulary of
    /// the suite's own documents.
    #[test]
    fn the_spoken_suites_misheard_questions_are_repaired() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/spoken/kb");
        let docs: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap())
            .collect();
        let texts: Vec<Text<'_>> = docs
            .iter()
            .map(|d| Text {
                title: "",
                heading: "",
                text: d,
            })
            .collect();
        let lex = Lexicon::new(&terms(&texts));
        for (heard, meant) in [
            ("Thus my fairy sail in strong winds.", "ferry"),
            ("How much is a single fair around the earth?", "fare"),
            ("Which month does the very run?", "ferry"),
        ] {
            let r = lex.repair(heard);
            assert!(
                r.as_deref().is_some_and(|r| r.contains(meant)),
                "{heard} -> {r:?}"
            );
        }
    }
}
