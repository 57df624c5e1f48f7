//! Word error rate, for comparing transcripts in tests and benchmarks.
//!
//! Transcripts are compared after normalising case and punctuation, never as raw strings:
//! "And so, my fellow Americans" and "and so my fellow americans" are the same words.

/// Lower-cases, turns punctuation into spaces (keeping apostrophes inside words, as in
/// "don't"), writes dotted initials as one word ("a.m." is "am") and a number's unit apart
/// ("10am" is "10 am"), and splits into words.
pub fn normalize(text: &str) -> Vec<String> {
    let mut cleaned = String::with_capacity(text.len());
    let chars: Vec<char> = text.chars().collect();
    for (i, &c) in chars.iter().enumerate() {
        let inner_apostrophe = (c == '\'' || c == '’')
            && i > 0
            && chars[i - 1].is_alphanumeric()
            && chars.get(i + 1).is_some_and(|n| n.is_alphanumeric());
        // The dot after a lone letter: "a.m.", "U.S.".
        let initial_dot = c == '.'
            && i > 0
            && chars[i - 1].is_alphabetic()
            && (i < 2 || chars[i - 2].is_whitespace() || chars[i - 2] == '.');
        if initial_dot {
            continue;
        }
        if c.is_alphabetic() && i > 0 && chars[i - 1].is_ascii_digit() {
            cleaned.push(' ');
        }
        if c.is_alphanumeric() {
            cleaned.extend(c.to_lowercase());
        } else if inner_apostrophe {
            cleaned.push('\'');
        } else {
            cleaned.push(' ');
        }
    }
    cleaned
        .split_whitespace()
        .map(|w| number_word(w).map_or_else(|| w.to_owned(), |n| n.to_string()))
        .collect()
}

/// A number from zero to twenty, or a ten up to ninety, written as a word: Whisper writes a
/// spoken "twelve" as "12" one time and "twelve" the next, and a synthetic voice says "12"
/// either way, so numbers count as the same word in both forms.
pub(crate) fn number_word(word: &str) -> Option<u32> {
    const UNITS: [&str; 21] = [
        "zero",
        "one",
        "two",
        "three",
        "four",
        "five",
        "six",
        "seven",
        "eight",
        "nine",
        "ten",
        "eleven",
        "twelve",
        "thirteen",
        "fourteen",
        "fifteen",
        "sixteen",
        "seventeen",
        "eighteen",
        "nineteen",
        "twenty",
    ];
    const TENS: [&str; 7] = [
        "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety",
    ];
    if let Some(n) = UNITS.iter().position(|&u| u == word) {
        return Some(n as u32);
    }
    TENS.iter()
        .position(|&t| t == word)
        .map(|i| 30 + 10 * i as u32)
}

/// Word error rate of `hypothesis` against `reference`: (substitutions + deletions +
/// insertions) / reference words. An empty reference gives 0 for an empty hypothesis, else 1.
pub fn wer(reference: &str, hypothesis: &str) -> f64 {
    let r = normalize(reference);
    let h = normalize(hypothesis);
    if r.is_empty() {
        return if h.is_empty() { 0.0 } else { 1.0 };
    }
    // Levenshtein distance over words, one row at a time.
    let mut prev: Vec<usize> = (0..=h.len()).collect();
    let mut cur = vec![0; h.len() + 1];
    for (i, rw) in r.iter().enumerate() {
        cur[0] = i + 1;
        for (j, hw) in h.iter().enumerate() {
            let sub = prev[j] + usize::from(rw != hw);
            cur[j + 1] = sub.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[h.len()] as f64 / r.len() as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalisation_ignores_case_and_punctuation() {
        assert_eq!(
            normalize("And so, my fellow Americans!"),
            ["and", "so", "my", "fellow", "americans"]
        );
        assert_eq!(
            normalize("Don't 'quote' me—please."),
            ["don't", "quote", "me", "please"]
        );
        assert_eq!(
            wer(
                "Ask not what your country can do.",
                "ask not what your country can do"
            ),
            0.0
        );
    }

    #[test]
    fn initials_and_units_are_written_one_way() {
        assert_eq!(
            normalize("10am to 5 p.m. in the U.S."),
            normalize("10 am to 5 pm in the US")
        );
        assert_eq!(normalize("Plan A. Then"), ["plan", "a", "then"]);
    }

    #[test]
    fn numbers_count_the_same_in_digits_and_words() {
        assert_eq!(
            normalize("Tickets cost Twelve euros, from ten until 6."),
            ["tickets", "cost", "12", "euros", "from", "10", "until", "6"]
        );
        assert_eq!(
            wer(
                "The museum is open from 10 until 6. Tickets cost 12 euros.",
                "The museum is open, from ten until six, tickets cost twelve euros."
            ),
            0.0
        );
        // Other words that contain a number are left alone.
        assert_eq!(normalize("someone often"), ["someone", "often"]);
    }

    #[test]
    fn counts_substitutions_insertions_and_deletions() {
        assert_eq!(wer("a b c d", "a x c d"), 0.25);
        assert_eq!(wer("a b c d", "a b c d e"), 0.25);
        assert_eq!(wer("a b c d", "a c d"), 0.25);
        assert_eq!(wer("a b", ""), 1.0);
        assert_eq!(wer("", ""), 0.0);
        assert_eq!(wer("", "hello"), 1.0);
    }
}
