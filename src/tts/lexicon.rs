//! A pronunciation lexicon: words the voice says wrongly, with a respelling it says right
//! ("Siân = Shahn", "Morvoren = mor VOR en"). The knowledge base's names and rare words are what a
//! general voice mispronounces; an operator lists them in a file (`--tts-lexicon`, `[tts]
//! lexicon`), and every piece of speech is respelled before it reaches the voice, whichever
//! backend speaks it ([`Pronouncing`] wraps any [`Tts`]). What the client reads (the transcript)
//! keeps the written word.
//!
//! The file: one entry per line, `word = respelling`; a word may be several ("Kettle and Crab");
//! matching ignores case and respects word boundaries; blank lines, lines starting with `#` and
//! what follows a `#` after the respelling are skipped.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use futures::future::BoxFuture;
use regex::{Regex, RegexBuilder};

use super::{SpeakRequest, Speech, Tts, TtsError};

/// Most entries read from a lexicon file.
pub const MAX_ENTRIES: usize = 10_000;
/// Longest word or respelling, in characters.
const MAX_ENTRY_CHARS: usize = 200;

/// Why a lexicon file was refused.
#[derive(Debug, thiserror::Error)]
pub enum LexiconError {
    #[error("reading the pronunciation lexicon {path}: {message}")]
    Read { path: String, message: String },
    #[error("pronunciation lexicon {path}, line {line}: {message}")]
    Line {
        path: String,
        line: usize,
        message: String,
    },
}

/// Words and how to say them.
#[derive(Debug, Clone, Default)]
pub struct Lexicon {
    /// Every listed word, longest first, as one case-blind alternation anchored at the start and
    /// followed by the end or a character that is not part of a word.
    words: Option<Regex>,
    /// Respelling by the word's key ([`key`]).
    say: HashMap<String, String>,
}

/// How a listed word or a match of it is looked up: lower case, spaces collapsed.
fn key(word: &str) -> String {
    word.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .to_lowercase()
}

fn is_word_char(c: char) -> bool {
    c.is_alphanumeric()
}

impl Lexicon {
    /// Parses the lexicon's text (`word = respelling` per line); `path` names it in errors.
    pub fn parse(text: &str, path: &str) -> Result<Self, LexiconError> {
        let mut say = HashMap::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bad = |message: &str| LexiconError::Line {
                path: path.to_string(),
                line: n + 1,
                message: message.to_string(),
            };
            let (word, respelled) = line
                .split_once('=')
                .ok_or_else(|| bad("expected `word = respelling`"))?;
            // A `#` after the respelling starts a comment.
            let respelled = respelled.split('#').next().unwrap_or_default();
            let (word, respelled) = (word.trim(), respelled.trim());
            if word.is_empty() || respelled.is_empty() {
                return Err(bad("the word and its respelling must not be empty"));
            }
            if word.chars().count() > MAX_ENTRY_CHARS || respelled.chars().count() > MAX_ENTRY_CHARS
            {
                return Err(bad("an entry is longer than 200 characters"));
            }
            if say.len() == MAX_ENTRIES {
                return Err(bad("more than 10000 entries"));
            }
            say.insert(key(word), respelled.to_string());
        }
        if say.is_empty() {
            return Ok(Lexicon::default());
        }
        // Longer words first, so "Kettle and Crab" wins over "Crab" where both start.
        let mut listed: Vec<&String> = say.keys().collect();
        listed.sort_by_key(|w| (std::cmp::Reverse(w.chars().count()), w.as_str()));
        let alternation = listed
            .iter()
            .map(|w| {
                w.split(' ')
                    .map(regex::escape)
                    .collect::<Vec<_>>()
                    .join(r"\s+")
            })
            .collect::<Vec<_>>()
            .join("|");
        let words = RegexBuilder::new(&format!(r"^({alternation})(?:$|[^\p{{L}}\p{{N}}])"))
            .case_insensitive(true)
            .size_limit(256 << 20)
            .build()
            .map_err(|e| LexiconError::Read {
                path: path.to_string(),
                message: format!("its words do not compile: {e}"),
            })?;
        Ok(Lexicon {
            words: Some(words),
            say,
        })
    }

    /// Reads a lexicon file.
    pub fn read(path: &Path) -> Result<Self, LexiconError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| LexiconError::Read {
            path: shown.clone(),
            message: e.to_string(),
        })?;
        Self::parse(&text, &shown)
    }

    pub fn len(&self) -> usize {
        self.say.len()
    }

    pub fn is_empty(&self) -> bool {
        self.say.is_empty()
    }

    /// `text` with every listed word respelled, in one pass: a respelling is never matched again.
    pub fn respell(&self, text: &str) -> String {
        let Some(words) = &self.words else {
            return text.to_string();
        };
        let mut out = String::with_capacity(text.len());
        let mut at = 0;
        let mut previous: Option<char> = None;
        while at < text.len() {
            let rest = &text[at..];
            let starts_word = !previous.is_some_and(is_word_char);
            if starts_word {
                let found = words.captures(rest).and_then(|c| c.get(1));
                if let Some(m) = found {
                    if let Some(respelled) = self.say.get(&key(m.as_str())) {
                        out.push_str(respelled);
                        previous = m.as_str().chars().last();
                        at += m.end();
                        continue;
                    }
                }
            }
            let Some(c) = rest.chars().next() else { break };
            out.push(c);
            previous = Some(c);
            at += c.len_utf8();
        }
        out
    }
}

/// A voice that says the lexicon's words as respelled.
pub struct Pronouncing {
    inner: Arc<dyn Tts>,
    lexicon: Lexicon,
}

impl Pronouncing {
    pub fn new(inner: Arc<dyn Tts>, lexicon: Lexicon) -> Self {
        Pronouncing { inner, lexicon }
    }
}

impl Tts for Pronouncing {
    fn speak(&self, mut request: SpeakRequest) -> BoxFuture<'_, Result<Speech, TtsError>> {
        request.text = self.lexicon.respell(&request.text);
        self.inner.speak(request)
    }

    fn voices(&self) -> Vec<String> {
        self.inner.voices()
    }

    fn describe(&self) -> String {
        format!(
            "{} (pronunciation lexicon: {} words)",
            self.inner.describe(),
            self.lexicon.len()
        )
    }

    fn queue_depth(&self) -> Option<usize> {
        self.inner.queue_depth()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listed_words_are_respelled_whole_and_in_any_case() {
        let lex = Lexicon::parse(
            "# names of the harbour\nSiân = Shahn   # heard \"Shawn\"\nMorvoren = mor VOR en\n\nKettle and Crab = Kettle an Crab\ncrab = krab\n",
            "test",
        )
        .unwrap();
        assert_eq!(lex.len(), 4);
        assert_eq!(
            lex.respell("The skipper is Siân Trevithick; the gig is the Morvoren."),
            "The skipper is Shahn Trevithick; the gig is the mor VOR en."
        );
        assert_eq!(lex.respell("the KETTLE AND CRAB"), "the Kettle an Crab");
        assert_eq!(
            lex.respell("the Kettle\n and Crab, a crab"),
            "the Kettle an Crab, a krab"
        );
        // Inside another word: left alone.
        assert_eq!(lex.respell("crabapple Crabs"), "crabapple Crabs");
        assert_eq!(lex.respell("a crab."), "a krab.");
        assert_eq!(lex.respell("crab crab"), "krab krab");
        assert_eq!(lex.respell("Kettle and Crabs"), "Kettle and Crabs");
        assert_eq!(lex.respell("Siân's gig"), "Shahn's gig");
    }

    #[test]
    fn a_bad_line_is_refused_with_its_number() {
        let e = Lexicon::parse("ok = fine\nno equals sign\n", "lex.txt").unwrap_err();
        assert!(e.to_string().contains("lex.txt, line 2"), "{e}");
        assert!(Lexicon::parse("= nothing\n", "x").is_err());
        assert!(Lexicon::parse(&format!("{} = x", "a".repeat(300)), "x").is_err());
    }
}
