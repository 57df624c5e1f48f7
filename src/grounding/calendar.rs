//! Months and weekdays in questions and in the ranges sentences give them: "from March to
//! October", "Monday to Friday", "between November and February". A yes/no question about a
//! month or a day ("Are the gardens open in December?") is settled by a sentence whose range
//! holds it, or leaves it out ([`super::yes_no`]).

/// What a calendar word names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    Month,
    Day,
}

const MONTHS: [&str; 12] = [
    "january",
    "february",
    "march",
    "april",
    "may",
    "june",
    "july",
    "august",
    "september",
    "october",
    "november",
    "december",
];
const DAYS: [&str; 7] = [
    "monday",
    "tuesday",
    "wednesday",
    "thursday",
    "friday",
    "saturday",
    "sunday",
];

/// The month or weekday a word names ("December", "mondays"), with its place in the year or
/// week. "May" counts only when written with its capital (it is also a verb).
pub fn named(word: &str) -> Option<(Unit, usize)> {
    let w: String = word.chars().filter(|c| c.is_alphabetic()).collect();
    let lower = w.to_lowercase();
    let singular = lower.strip_suffix('s').unwrap_or(&lower);
    if let Some(i) = DAYS.iter().position(|d| *d == lower || *d == singular) {
        return Some((Unit::Day, i));
    }
    let i = MONTHS.iter().position(|m| *m == lower)?;
    (lower != "may" || w == "May").then_some((Unit::Month, i))
}

/// The first month or weekday `text` names.
pub fn first_named(text: &str) -> Option<(Unit, usize)> {
    text.split_whitespace().find_map(named)
}

/// The ranges `text` states: "from A to B", "A to B", "A until B", "A through B", "A-B",
/// "between A and B", each as (unit, first, last).
pub fn ranges(text: &str) -> Vec<(Unit, usize, usize)> {
    let words: Vec<&str> = text
        .split(|c: char| c.is_whitespace() || c == '-' || c == '–')
        .filter(|w| !w.is_empty())
        .collect();
    let mut out = Vec::new();
    for (i, w) in words.iter().enumerate() {
        let Some((unit, first)) = named(w) else {
            continue;
        };
        let joined = |j: usize| words.get(j).map(|w| w.to_lowercase());
        // "A to B" (or "A-B": the dash splits the words, so the next word is B).
        let to = joined(i + 1);
        let last = match to.as_deref() {
            Some("to" | "until" | "till" | "through" | "thru" | "and") => {
                words.get(i + 2).and_then(|w| named(w))
            }
            _ if text.contains(&format!("{w}-")) || text.contains(&format!("{w}–")) => {
                words.get(i + 1).and_then(|w| named(w))
            }
            _ => None,
        };
        if let Some((u, last)) = last.filter(|(u, _)| *u == unit) {
            // "and" makes a range only after "between".
            let between = i > 0 && words[i - 1].eq_ignore_ascii_case("between");
            if to.as_deref() != Some("and") || between {
                out.push((u, first, last));
            }
        }
    }
    out
}

/// Whether `x` is in the range from `first` to `last`, which may wrap past the end of the year
/// or week ("November to February").
pub fn within(first: usize, last: usize, x: usize) -> bool {
    if first <= last {
        (first..=last).contains(&x)
    } else {
        x >= first || x <= last
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn months_and_days_are_named_in_any_case_and_number() {
        assert_eq!(named("December?"), Some((Unit::Month, 11)));
        assert_eq!(named("mondays"), Some((Unit::Day, 0)));
        assert_eq!(named("may"), None);
        assert_eq!(named("May"), Some((Unit::Month, 4)));
        assert_eq!(named("harbour"), None);
    }

    #[test]
    fn ranges_are_read_in_their_common_forms() {
        assert_eq!(
            ranges("They open at 10 am every day from March to October."),
            [(Unit::Month, 2, 9)]
        );
        assert_eq!(
            ranges("They are closed from November to February."),
            [(Unit::Month, 10, 1)]
        );
        assert_eq!(ranges("Open Monday-Friday."), [(Unit::Day, 0, 4)]);
        assert_eq!(ranges("between April and September"), [(Unit::Month, 3, 8)]);
        // Two days named side by side are not a range.
        assert!(ranges("It is closed on Monday and Tuesday.").is_empty());
        assert!(within(10, 1, 11) && within(10, 1, 0) && !within(10, 1, 5));
        assert!(within(2, 9, 6) && !within(2, 9, 11));
    }
}
