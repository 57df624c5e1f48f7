//! "Yes" or "No" first, when the chosen sentence settles a yes/no question: "Is the museum open
//! on Mondays?" → "No — it is closed on Mondays." A listener hears the answer in its first word;
//! the sentence after it says why.
//!
//! A sentence settles the question when it covers every word the question asks about (its
//! content words, except those of the document's title, which every sentence of it is about;
//! "open" and "closed" cover each other), counting the sentence a pronoun-led one refers to.
//! The answer is "No" when a negation in the sentence bears on a word of the question ("no
//! cash", "does not sail"; [`super::polarity::denied`]) or it says closed for open, else "Yes";
//! a denial settles the question even when one other word of it is put differently ("can I pay
//! cash?" by "cards only, no cash"). A month or weekday is settled by a range that holds it or
//! leaves it out ("open from March to October": no to December; [`super::calendar`]). A sentence
//! that does not settle the question is said as it is.

use std::collections::HashSet;

use super::support::{content_words, stem};
use super::{calendar, polarity};

/// Auxiliaries that open a yes/no question.
const OPENERS: &[&str] = &[
    "is", "are", "was", "were", "can", "could", "do", "does", "did", "will", "would", "should",
    "has", "have", "may", "must", "shall", "isn't", "aren't", "can't", "don't", "doesn't",
];

/// Words that make an auxiliary-led sentence ask for more than a yes or a no ("Can you tell me
/// what time…", "Do you know where…").
const OPEN_QUESTION: &[&str] = &["what", "when", "where", "which", "who", "why", "how"];

/// Whether `question` asks for a yes or a no.
pub fn is_yes_no(question: &str) -> bool {
    let lower = question.trim().to_lowercase().replace('’', "'");
    let words: Vec<&str> = lower
        .split(|c: char| !(c.is_alphanumeric() || c == '\''))
        .filter(|w| !w.is_empty())
        .collect();
    words.first().is_some_and(|w| OPENERS.contains(w))
        && !words.iter().any(|w| OPEN_QUESTION.contains(w))
}

/// "Yes" or "No" for `question` by `sentence` (with the sentence it refers to and its document's
/// title), or `None` when the sentence does not settle it.
pub fn verdict(
    question: &str,
    sentence: &str,
    referent: Option<&str>,
    title: &str,
) -> Option<&'static str> {
    if !is_yes_no(question) {
        return None;
    }
    let stems = |t: &str| -> HashSet<String> { content_words(t).iter().map(|w| stem(w)).collect() };
    let topic = stems(title);
    let mut said = stems(sentence);
    said.extend(referent.map(stems).unwrap_or_default());
    let (open, closed) = (stem("open"), stem("closed"));
    if said.contains(&open) || said.contains(&closed) {
        said.insert(open);
        said.insert(closed);
    }
    let asked: Vec<String> = stems(question)
        .into_iter()
        .filter(|w| !topic.contains(w))
        .collect();
    let no = says_no(question, sentence);
    if let Some(answer) = by_calendar(question, sentence, referent, &asked, &said, no) {
        return Some(answer);
    }
    let missing = asked.iter().filter(|w| !said.contains(*w)).count();
    // A denial of what was asked ("no cash" for "can I pay cash?") settles it even when one
    // other word is put differently ("pay" as "takes"); a yes needs every word.
    let settled = !asked.is_empty() && (missing == 0 || (no && missing == 1 && asked.len() >= 2));
    settled.then_some(if no { "No" } else { "Yes" })
}

/// A question about a month or weekday settled by a range the sentence (or the one it refers
/// to) gives for it: in the range, the sentence's own answer; outside it, the opposite ("open
/// from March to October" says no to December; "closed from November to February" says yes to
/// June). Every other word of the question must be covered.
fn by_calendar(
    question: &str,
    sentence: &str,
    referent: Option<&str>,
    asked: &[String],
    said: &HashSet<String>,
    no: bool,
) -> Option<&'static str> {
    let (unit, when) = calendar::first_named(question)?;
    let text = format!("{} {sentence}", referent.unwrap_or(""));
    let (_, first, last) = calendar::ranges(&text)
        .into_iter()
        .find(|(u, _, _)| *u == unit)?;
    let calendar_words: HashSet<String> = content_words(question)
        .iter()
        .filter(|w| calendar::named(w).is_some_and(|(u, _)| u == unit))
        .map(|w| stem(w))
        .collect();
    if asked
        .iter()
        .any(|w| !calendar_words.contains(w) && !said.contains(w))
    {
        return None;
    }
    let yes = calendar::within(first, last, when) != no;
    Some(if yes { "Yes" } else { "No" })
}

/// Whether `sentence` denies what `question` asks: a negation bearing on one of its words ("no
/// cash", "does not sail"), or closed for open (and the reverse).
fn says_no(question: &str, sentence: &str) -> bool {
    let asked: HashSet<String> = content_words(question).iter().map(|w| stem(w)).collect();
    if polarity::denied(sentence)
        .iter()
        .any(|w| asked.contains(&stem(w)))
    {
        return true;
    }
    let q = content_words(question);
    let s = content_words(sentence);
    let has = |ws: &[String], w: &str| ws.iter().any(|x| stem(x) == stem(w));
    (has(&q, "open") && has(&s, "closed") && !has(&s, "open"))
        || (has(&q, "closed") && has(&s, "open") && !has(&s, "closed"))
}

/// `sentence` with the verdict first: "No — it is closed on Mondays." (a first word that is not
/// a name is lower-cased).
pub fn with_verdict(verdict: &str, sentence: &str) -> String {
    const COMMON_OPENERS: &[&str] = &[
        "It", "Its", "It's", "They", "Their", "There", "The", "A", "An", "This", "These", "That",
        "Those", "We", "Our", "You", "Your", "She", "He", "Her", "His", "Every", "Each", "All",
        "No", "In", "On", "At", "From", "For", "During", "After", "Before", "When", "If", "Only",
        "Entry", "Dogs", "Children", "Buses", "Bicycles", "Bikes", "Picnics",
    ];
    let first = sentence.split_whitespace().next().unwrap_or("");
    let rest = if COMMON_OPENERS.contains(&first) || is_plain_word(first) {
        let mut chars = sentence.chars();
        chars
            .next()
            .map(|c| c.to_lowercase().chain(chars).collect())
            .unwrap_or_default()
    } else {
        sentence.to_string()
    };
    format!("{verdict} — {rest}")
}

/// A capitalised word that is an ordinary word opening a sentence: it is also written in lower
/// case in common English (a short list: the openers of knowledge-base sentences).
fn is_plain_word(word: &str) -> bool {
    const PLAIN: &[&str] = &[
        "Open",
        "Opening",
        "Closed",
        "Tickets",
        "Prices",
        "Parking",
        "Admission",
        "Booking",
        "Bookings",
        "Visitors",
        "Members",
        "Customers",
        "Everyone",
        "Nobody",
        "Payment",
        "Payments",
        "Cash",
        "Cards",
    ];
    PLAIN.contains(&word)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yes_no_questions_are_recognised() {
        assert!(is_yes_no("Is the museum open on Mondays?"));
        assert!(is_yes_no("can I pay cash at the Kettle and Crab"));
        assert!(!is_yes_no("When does the night bus leave?"));
        assert!(!is_yes_no("Can you tell me what time the café closes?"));
    }

    #[test]
    fn a_sentence_that_settles_the_question_gives_its_answer_first() {
        let museum = "Polwenna Maritime Museum";
        assert_eq!(
            verdict(
                "Is the museum open on Mondays?",
                "It is closed on Mondays.",
                None,
                museum
            ),
            Some("No")
        );
        assert_eq!(
            verdict(
                "Can I pay cash at the Kettle and Crab?",
                "The café takes cards only, no cash.",
                None,
                "The Kettle and Crab"
            ),
            Some("No")
        );
        assert_eq!(
            verdict(
                "Does the ferry sail in strong winds?",
                "In strong easterly winds the ferry does not sail.",
                None,
                "The St Piran's Island ferry"
            ),
            Some("No")
        );
        assert_eq!(
            verdict(
                "Does the café bake hevva cake?",
                "The café also bakes hevva cake and saffron buns every morning.",
                None,
                "The Kettle and Crab"
            ),
            Some("Yes")
        );
        assert_eq!(
            verdict(
                "Is it served on Fridays?",
                "It is served on Fridays only.",
                Some("Its best-known dish is stargazy pie."),
                "The Kettle and Crab"
            ),
            Some("Yes")
        );
    }

    #[test]
    fn a_range_of_months_or_days_settles_a_question_about_one() {
        let gardens = "Penhallow Gardens";
        let q = "Are the gardens open in December?";
        let open = "They open at 10 am every day from March to October.";
        let closed = "They are closed from November to February.";
        assert_eq!(verdict(q, open, None, gardens), Some("No"));
        assert_eq!(verdict(q, closed, None, gardens), Some("No"));
        let june = "Are the gardens open in June?";
        assert_eq!(verdict(june, open, None, gardens), Some("Yes"));
        assert_eq!(verdict(june, closed, None, gardens), Some("Yes"));
        assert_eq!(
            verdict(
                "Does the ferry run on Saturdays?",
                "The ferry runs Monday to Friday.",
                None,
                "The ferry"
            ),
            Some("No")
        );
        // A range that is not about what was asked settles nothing.
        assert_eq!(
            verdict(
                "Are dogs allowed in December?",
                "They open from March to October.",
                None,
                gardens
            ),
            None
        );
    }

    #[test]
    fn a_sentence_that_does_not_settle_it_gets_no_verdict() {
        // December is not in the sentence, nor in a range it gives.
        assert_eq!(
            verdict(
                "Are the gardens open in December?",
                "Entry is £9.50 for adults.",
                None,
                "Penhallow Gardens"
            ),
            None
        );
        // "No experience" is not the answer to "do I need to swim".
        assert_eq!(
            verdict(
                "Do I need to be able to swim to try gig rowing?",
                "No experience is needed, but everyone must be able to swim.",
                None,
                "Gig rowing"
            ),
            None
        );
        assert_eq!(
            verdict("When does it open?", "It opens at 10 am.", None, "Museum"),
            None
        );
    }

    #[test]
    fn the_verdict_leads_the_sentence() {
        assert_eq!(
            with_verdict("No", "It is closed on Mondays."),
            "No — it is closed on Mondays."
        );
        assert_eq!(
            with_verdict("Yes", "Polwenna Museum opens at 10."),
            "Yes — Polwenna Museum opens at 10."
        );
    }
}
