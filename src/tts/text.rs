//! Text for speech: cutting a streamed answer into pieces worth synthesising, and removing what
//! should not be read aloud.
//!
//! Synthesis starts as soon as the first clause of an answer is complete, not when the whole
//! answer is. The first piece may end at a comma (so the first audio comes early); later pieces
//! end at sentence ends, which gives the voice whole sentences to phrase. A piece that grows too
//! long without punctuation is cut at a space.

/// The first piece may end at a clause break once it has this many characters.
const FIRST_CLAUSE_CHARS: usize = 12;
/// The first piece may also end before a word that opens a phrase ("in", "and", "because"…) once
/// it has this many words, so a long first sentence without a comma starts sounding after its
/// first phrase (synthesis time grows with the text: ~230 ms for 6 words, ~400 ms for 12).
const FIRST_PHRASE_WORDS: usize = 4;
/// Words before which a sentence can pause without sounding cut: conjunctions, relative words and
/// prepositions that open a phrase ("to", "of" and "that" are left out: they bind to what comes
/// before as often as not).
const PHRASE_OPENERS: &[&str] = &[
    "and", "but", "or", "so", "because", "which", "who", "when", "where", "while", "if", "in",
    "on", "at", "for", "with", "from", "by", "about", "after", "before", "during", "until",
];
/// A later piece ends at a clause break only past this length (else at a sentence end).
const CLAUSE_CHARS: usize = 120;
/// No piece is longer than this: it is cut at the last space.
pub const MAX_PIECE_CHARS: usize = 300;

/// Cuts streamed text into speakable pieces.
#[derive(Debug, Default)]
pub struct Splitter {
    buf: String,
    emitted: usize,
}

impl Splitter {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds streamed text; returns the pieces it completed.
    pub fn push(&mut self, text: &str) -> Vec<String> {
        self.buf.push_str(text);
        let mut out = Vec::new();
        while let Some(end) = self.cut() {
            let piece: String = self.buf.drain(..end).collect();
            let piece = piece.trim();
            if !piece.is_empty() {
                out.push(piece.to_string());
                self.emitted += 1;
            }
        }
        out
    }

    /// The rest of the text, at the end of the stream.
    pub fn finish(&mut self) -> Option<String> {
        let rest = std::mem::take(&mut self.buf);
        let rest = rest.trim();
        (!rest.is_empty()).then(|| rest.to_string())
    }

    /// Where the next complete piece ends (a byte index into `buf`), if there is one: at a
    /// sentence end, a clause break, or (the first piece only) before a phrase, whichever comes
    /// first.
    fn cut(&self) -> Option<usize> {
        let at_mark = self.cut_at_mark();
        if self.emitted > 0 {
            return at_mark;
        }
        match (at_mark, self.first_phrase_end()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The end of the first phrase: the space before a complete word from [`PHRASE_OPENERS`]
    /// that follows at least [`FIRST_PHRASE_WORDS`] words.
    fn first_phrase_end(&self) -> Option<usize> {
        let mut words = 0;
        let mut start = None;
        for (i, c) in self.buf.char_indices() {
            match (c.is_whitespace(), start) {
                (false, None) => start = Some(i),
                (true, Some(s)) => {
                    let word = &self.buf[s..i];
                    if words >= FIRST_PHRASE_WORDS
                        && PHRASE_OPENERS.iter().any(|w| word.eq_ignore_ascii_case(w))
                    {
                        return Some(s);
                    }
                    words += 1;
                    start = None;
                }
                _ => {}
            }
        }
        None
    }

    /// Where the next piece ends at punctuation (or at the length limit).
    fn cut_at_mark(&self) -> Option<usize> {
        let clause_min = if self.emitted == 0 {
            FIRST_CLAUSE_CHARS
        } else {
            CLAUSE_CHARS
        };
        let mut chars = self.buf.char_indices().peekable();
        let mut count = 0;
        let mut last_space = None;
        while let Some((i, c)) = chars.next() {
            count += 1;
            let next = chars.peek().map(|&(_, n)| n);
            let at_break = next.is_some_and(char::is_whitespace);
            let end = i + c.len_utf8();
            if c == '\n' && count > 1 {
                return Some(end);
            }
            if at_break && matches!(c, '.' | '!' | '?') && !self.abbreviation(i) {
                return Some(end);
            }
            if at_break && matches!(c, ',' | ';' | ':' | '—') && count >= clause_min {
                return Some(end);
            }
            if c.is_whitespace() {
                last_space = Some(i);
            }
            if count >= MAX_PIECE_CHARS {
                return Some(last_space.map_or(end, |s| s + 1));
            }
        }
        None
    }

    /// Whether the `.` at byte `dot` ends a short abbreviation ("e.g.", "Mr.") or a single
    /// letter, rather than a sentence.
    fn abbreviation(&self, dot: usize) -> bool {
        if self.buf.as_bytes()[dot] != b'.' {
            return false;
        }
        let word = self.buf[..dot]
            .rsplit(|c: char| c.is_whitespace())
            .next()
            .unwrap_or("");
        let lower = word.to_ascii_lowercase();
        matches!(
            lower.as_str(),
            "mr" | "mrs" | "ms" | "dr" | "st" | "vs" | "etc" | "e.g" | "i.e" | "no" | "approx"
        ) || (word.chars().count() == 1 && word.chars().all(char::is_uppercase))
    }
}

/// What of `text` should be spoken: markdown marks, citation markers (`[1]`) and URLs are
/// dropped, runs of whitespace become one space.
pub fn speakable(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(c) = rest.chars().next() {
        // A citation marker: [digits].
        if c == '[' {
            if let Some(close) = rest.find(']') {
                let inner = &rest[1..close];
                if !inner.is_empty() && inner.chars().all(|c| c.is_ascii_digit() || c == ',') {
                    rest = &rest[close + 1..];
                    continue;
                }
            }
        }
        if rest.starts_with("http://") || rest.starts_with("https://") {
            let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
            rest = &rest[end..];
            continue;
        }
        if matches!(c, '*' | '_' | '#' | '`' | '~' | '|' | '>') {
            out.push(' ');
        } else {
            out.push(c);
        }
        rest = &rest[c.len_utf8()..];
    }
    let mut spaced = String::with_capacity(out.len());
    for word in out.split_whitespace() {
        if !spaced.is_empty() && !word.starts_with([',', '.', '!', '?', ';', ':']) {
            spaced.push(' ');
        }
        spaced.push_str(word);
    }
    spaced
}

/// `text` with the forms espeak-ng reads badly spelled out as they are said: clock times
/// (`10:00` is "10", `9:05` is "9 oh 5") and amounts of money (`$12.50` is "12 dollars 50").
pub fn spoken_forms(text: &str) -> String {
    use std::sync::OnceLock;
    static TIME: OnceLock<regex::Regex> = OnceLock::new();
    static MONEY: OnceLock<regex::Regex> = OnceLock::new();
    let time = TIME
        .get_or_init(|| regex::Regex::new(r"\b([0-2]?\d):([0-5]\d)\b").expect("a valid pattern"));
    let money = MONEY.get_or_init(|| {
        regex::Regex::new(r"([$€£])(\d+(?:,\d{3})*)(?:\.(\d{2}))?\b").expect("a valid pattern")
    });
    let text = time.replace_all(text, |c: &regex::Captures| {
        let (h, m) = (&c[1], &c[2]);
        match m.as_bytes() {
            b"00" => h.to_string(),
            [b'0', d] => format!("{h} oh {}", *d as char),
            _ => format!("{h} {m}"),
        }
    });
    money
        .replace_all(&text, |c: &regex::Captures| {
            let amount = &c[2];
            let one = amount == "1";
            let unit = match &c[1] {
                "$" if one => "dollar",
                "$" => "dollars",
                "€" if one => "euro",
                "€" => "euros",
                _ if one => "pound",
                _ => "pounds",
            };
            match c.get(3).map(|m| m.as_str()) {
                None | Some("00") => format!("{amount} {unit}"),
                Some(cents) => format!("{amount} {unit} {}", cents.trim_start_matches('0')),
            }
        })
        .into_owned()
}

/// `text` cut into clauses for phonemes: each with the punctuation that ended it (`,` `.` `?`
/// `!` `;` `:`), which the voice's phoneme map turns into pauses and intonation.
pub fn clauses(text: &str) -> Vec<(&str, Option<char>)> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut iter = text.char_indices().peekable();
    while let Some((i, c)) = iter.next() {
        let at_end = iter.peek().is_none_or(|&(_, n)| n.is_whitespace());
        if matches!(c, ',' | '.' | '?' | '!' | ';' | ':') && at_end {
            let piece = text[start..i].trim();
            if !piece.is_empty() {
                out.push((piece, Some(c)));
            }
            start = i + c.len_utf8();
        }
    }
    let rest = text[start..].trim();
    if !rest.is_empty() {
        out.push((rest, None));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split_all(parts: &[&str]) -> Vec<String> {
        let mut s = Splitter::new();
        let mut out: Vec<String> = parts.iter().flat_map(|p| s.push(p)).collect();
        out.extend(s.finish());
        out
    }

    #[test]
    fn the_first_clause_comes_early_then_whole_sentences() {
        let pieces = split_all(&[
            "The library opens at nine, ",
            "and closes at six on weekdays, ",
            "except holidays. Dr. Smith runs ",
            "the e.g. reading room! Is it open?",
        ]);
        assert_eq!(
            pieces,
            vec![
                "The library opens at nine,",
                "and closes at six on weekdays, except holidays.",
                "Dr. Smith runs the e.g. reading room!",
                "Is it open?",
            ]
        );
    }

    #[test]
    fn a_long_first_sentence_starts_sounding_after_its_first_phrase() {
        assert_eq!(
            split_all(&[
                "She had your dog ",
                "suit in greasy",
                " wash for all year. It is in the car."
            ]),
            vec![
                "She had your dog suit",
                "in greasy wash for all year.",
                "It is in the car."
            ]
        );
        // Not before four words, not inside a word ("inside"), and not at "to".
        assert_eq!(
            split_all(&["It is in the shop and ", "it opens at ten."]),
            vec!["It is in the shop", "and it opens at ten."]
        );
        assert_eq!(
            split_all(&["We would like to go inside the museum."]),
            vec!["We would like to go inside the museum."]
        );
        // A comma that comes first still ends the first piece.
        assert_eq!(
            split_all(&["The library opens at nine, and closes at six."]),
            vec!["The library opens at nine,", "and closes at six."]
        );
        // The phrase opener must be a whole word before the piece is cut: "in" may become "into".
        let mut s = Splitter::new();
        assert!(s.push("She had your dog suit in").is_empty());
        assert_eq!(
            s.push("to the car. "),
            vec!["She had your dog suit into the car."]
        );
    }

    #[test]
    fn numbers_and_long_runs_do_not_break_badly() {
        assert_eq!(
            split_all(&["It costs 3.50 euros."]),
            vec!["It costs 3.50 euros."]
        );
        let long = "word ".repeat(100);
        let pieces = split_all(&[&long]);
        assert!(pieces.len() >= 2, "{pieces:?}");
        assert!(pieces.iter().all(|p| p.chars().count() <= MAX_PIECE_CHARS));
        assert!(pieces.iter().all(|p| !p.contains("wor d")));
    }

    #[test]
    fn markers_markdown_and_urls_are_not_spoken() {
        assert_eq!(
            speakable("**Opening hours** are 9 to 5 [1], see https://x.example/a [2,3]."),
            "Opening hours are 9 to 5, see."
        );
    }

    #[test]
    fn times_and_money_are_spelled_as_said() {
        assert_eq!(
            spoken_forms("Open 10:00 am to 5:30 pm, or 9:05. A ticket is $12.50, €1 or £3.00."),
            "Open 10 am to 5 30 pm, or 9 oh 5. A ticket is 12 dollars 50, 1 euro or 3 pounds."
        );
    }

    #[test]
    fn clauses_keep_their_punctuation() {
        assert_eq!(
            clauses("Hello, world. Is 3.5 big? Yes"),
            vec![
                ("Hello", Some(',')),
                ("world", Some('.')),
                ("Is 3.5 big", Some('?')),
                ("Yes", None)
            ]
        );
    }
}
