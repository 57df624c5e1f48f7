//! Chunking: split a document on its headings and paragraphs, then pack sentences into passages
//! of a target size (in the embedding model's tokens) with a little overlap, keeping each
//! passage's exact byte span in the source so citations can point back into it.
//!
//! A passage crosses a heading only when the sections on both sides together fit the target (a
//! short introduction joins what follows). A section longer than the limit is cut preferably at a
//! paragraph end once the target is reached, and the next passage repeats the last sentences
//! (up to `overlap` tokens) so a fact split across the cut is still found whole in one of them.

/// Sizes, in tokens of the embedding model.
#[derive(Debug, Clone, Copy)]
pub struct ChunkParams {
    /// Passages grow to at least this size when the section is long enough.
    pub target: usize,
    /// No passage exceeds this (a single sentence longer than it is cut at words).
    pub max: usize,
    /// Tokens repeated from the end of one passage at the start of the next.
    pub overlap: usize,
}

impl ChunkParams {
    /// Sizes for a model that reads `max_tokens` tokens, leaving `reserve` for the title and
    /// heading prepended when the passage is embedded: target ~85 % of the room (at most 300),
    /// overlap ~15 % of the target.
    pub fn for_model(max_tokens: usize, reserve: usize) -> Self {
        let max = max_tokens.saturating_sub(reserve).clamp(32, 350);
        let target = (max * 85 / 100).min(300);
        ChunkParams {
            target,
            max,
            overlap: target * 15 / 100,
        }
    }
}

/// One passage: a byte range of the source text and the headings above it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    /// Heading path, outermost first, joined with " › " (empty before the first heading).
    pub heading: String,
    pub start: usize,
    pub end: usize,
}

/// A sentence or line: the smallest piece that is never split (unless over `max`).
#[derive(Debug, Clone)]
struct Unit {
    start: usize,
    end: usize,
    tokens: usize,
    /// A blank line (or a heading) comes before it.
    paragraph_start: bool,
}

#[derive(Default)]
struct Section {
    heading: String,
    units: Vec<Unit>,
    /// Holds more than heading lines.
    has_body: bool,
}

/// Splits `text` into passages. `markdown` enables `#` headings; `count` gives a text's length in
/// tokens.
pub fn chunk(
    text: &str,
    markdown: bool,
    params: ChunkParams,
    count: &dyn Fn(&str) -> usize,
) -> Vec<Chunk> {
    let mut chunks = Vec::new();
    for section in merge_small(sections(text, markdown, params, count), params) {
        pack(&section, params, &mut chunks);
    }
    chunks
}

/// Joins neighbouring sections while together they fit the target, so a short introduction or a
/// two-line section travels with its neighbour instead of becoming a passage too small to be
/// found. The joined section keeps the first one's heading.
fn merge_small(sections: Vec<Section>, params: ChunkParams) -> Vec<Section> {
    let size = |s: &Section| s.units.iter().map(|u| u.tokens).sum::<usize>();
    let mut out: Vec<Section> = Vec::new();
    for section in sections {
        match out.last_mut() {
            Some(last) if size(last) + size(&section) <= params.target => {
                last.units.extend(section.units);
                last.has_body |= section.has_body;
            }
            _ => out.push(section),
        }
    }
    out
}

/// Byte ranges of the lines of `text`, without their line ending.
fn lines(text: &str) -> impl Iterator<Item = (usize, usize)> + '_ {
    let mut pos = 0;
    text.split_inclusive('\n').map(move |line| {
        let start = pos;
        pos += line.len();
        let trimmed = line.trim_end_matches(['\n', '\r']);
        (start, start + trimmed.len())
    })
}

/// The level and title of a markdown ATX heading line (`## Prices` → (2, "Prices")).
fn heading_of(line: &str) -> Option<(usize, &str)> {
    let trimmed = line.trim_start();
    if line.len() - trimmed.len() > 3 {
        return None;
    }
    let level = trimmed.chars().take_while(|&c| c == '#').count();
    if !(1..=6).contains(&level) {
        return None;
    }
    let rest = &trimmed[level..];
    if !rest.is_empty() && !rest.starts_with([' ', '\t']) {
        return None;
    }
    Some((level, rest.trim().trim_end_matches('#').trim()))
}

fn sections(
    text: &str,
    markdown: bool,
    params: ChunkParams,
    count: &dyn Fn(&str) -> usize,
) -> Vec<Section> {
    let mut out: Vec<Section> = Vec::new();
    let mut path: Vec<(usize, String)> = Vec::new();
    let mut current = Section::default();
    let mut blank_before = true;
    for (start, end) in lines(text) {
        let line = &text[start..end];
        if line.trim().is_empty() {
            blank_before = true;
            continue;
        }
        if let Some((level, title)) = markdown.then(|| heading_of(line)).flatten() {
            // A heading closes the section before it; a heading with nothing under it yet
            // (`# Guide` right above `## Prices`) stays attached to what follows.
            if current.has_body {
                out.push(std::mem::take(&mut current));
            }
            path.retain(|(l, _)| *l < level);
            path.push((level, title.to_string()));
            current.heading = path
                .iter()
                .map(|(_, t)| t.as_str())
                .collect::<Vec<_>>()
                .join(" › ");
            current.units.push(Unit {
                start,
                end,
                tokens: count(line),
                paragraph_start: true,
            });
            blank_before = true;
            continue;
        }
        let mut first = true;
        for (s, e) in sentences(text, start, end) {
            for (s, e) in split_long(text, s, e, params.max, count) {
                current.units.push(Unit {
                    start: s,
                    end: e,
                    tokens: count(&text[s..e]),
                    paragraph_start: first && blank_before,
                });
                current.has_body = true;
                first = false;
            }
        }
        blank_before = false;
    }
    if !current.units.is_empty() {
        out.push(current);
    }
    out
}

/// Sentence ranges within `text[start..end]` (one line): cut after `.`, `!` or `?` followed by a
/// space.
fn sentences(text: &str, start: usize, end: usize) -> Vec<(usize, usize)> {
    let line = &text[start..end];
    let mut out = Vec::new();
    let mut from = 0;
    let bytes = line.as_bytes();
    for i in 0..bytes.len() {
        if matches!(bytes[i], b'.' | b'!' | b'?')
            && bytes.get(i + 1).is_some_and(|b| *b == b' ')
            && i + 1 - from > 1
        {
            out.push((start + from, start + i + 1));
            from = i + 1;
            while from < bytes.len() && bytes[from] == b' ' {
                from += 1;
            }
        }
    }
    if from < bytes.len() {
        out.push((start + from, end));
    }
    out
}

/// Cuts a range longer than `max` tokens at word boundaries.
fn split_long(
    text: &str,
    start: usize,
    end: usize,
    max: usize,
    count: &dyn Fn(&str) -> usize,
) -> Vec<(usize, usize)> {
    if count(&text[start..end]) <= max {
        return vec![(start, end)];
    }
    let mut out = Vec::new();
    let mut piece_start = start;
    let mut last_ok = start;
    let mut pos = start;
    for word in text[start..end].split_inclusive(' ') {
        let next = pos + word.len();
        if count(&text[piece_start..next]) > max && last_ok > piece_start {
            out.push((piece_start, last_ok));
            piece_start = last_ok;
        }
        last_ok = next;
        pos = next;
    }
    if piece_start < end {
        out.push((piece_start, end));
    }
    out
}

fn pack(section: &Section, params: ChunkParams, out: &mut Vec<Chunk>) {
    let units = &section.units;
    let mut i = 0;
    while i < units.len() {
        let mut j = i;
        let mut total = 0;
        while j < units.len() {
            let next = units[j].tokens;
            if j > i && total + next > params.max {
                break;
            }
            if j > i && total >= params.target && units[j].paragraph_start {
                break;
            }
            total += next;
            j += 1;
        }
        out.push(Chunk {
            heading: section.heading.clone(),
            start: units[i].start,
            end: units[j - 1].end,
        });
        if j >= units.len() {
            break;
        }
        // Overlap: start the next passage a few sentences back, never at or before `i`.
        let mut k = j;
        let mut back = 0;
        while k > i + 1 && back + units[k - 1].tokens <= params.overlap {
            back += units[k - 1].tokens;
            k -= 1;
        }
        i = k;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(s: &str) -> usize {
        s.split_whitespace().count()
    }

    const PARAMS: ChunkParams = ChunkParams {
        target: 20,
        max: 30,
        overlap: 8,
    };

    #[test]
    fn sections_follow_headings_and_spans_point_into_the_source() {
        let text = "# Guide\n## Prices\nA tune-up is £55. A full service is £120.\n\n## Hours\nWe open at eight.\n";
        let small = ChunkParams {
            target: 12,
            max: 16,
            overlap: 2,
        };
        let chunks = chunk(text, true, small, &words);
        assert_eq!(chunks.len(), 2, "{chunks:?}");
        assert_eq!(chunks[0].heading, "Guide › Prices");
        assert_eq!(
            &text[chunks[0].start..chunks[0].end],
            "# Guide\n## Prices\nA tune-up is £55. A full service is £120."
        );
        assert_eq!(chunks[1].heading, "Guide › Hours");
        assert_eq!(
            &text[chunks[1].start..chunks[1].end],
            "## Hours\nWe open at eight."
        );
        // Sections that fit the target together make one passage.
        let joined = chunk(text, true, PARAMS, &words);
        assert_eq!(joined.len(), 1, "{joined:?}");
        assert_eq!(&text[joined[0].start..joined[0].end], text.trim_end());
        // Plain text has no headings: `#` lines are just text.
        let plain = chunk(text, false, small, &words);
        assert!(plain.iter().all(|c| c.heading.is_empty()));
    }

    #[test]
    fn long_sections_are_packed_under_the_limit_with_overlap() {
        let sentence = |i: usize| format!("Sentence number {i} has exactly seven words.");
        let para: Vec<String> = (0..20).map(sentence).collect();
        let text = para.join(" ");
        let chunks = chunk(&text, false, PARAMS, &words);
        assert!(chunks.len() > 3);
        for c in &chunks {
            let n = words(&text[c.start..c.end]);
            assert!(n <= PARAMS.max, "{n} words");
            assert!(text.is_char_boundary(c.start) && text.is_char_boundary(c.end));
        }
        for pair in chunks.windows(2) {
            // The next chunk starts inside the previous one (overlap) but moves forward.
            assert!(
                pair[1].start > pair[0].start && pair[1].start < pair[0].end,
                "{pair:?}"
            );
        }
        assert_eq!(
            chunks.last().unwrap().end,
            text.len(),
            "nothing is lost at the end"
        );
        assert_eq!(chunks[0].start, 0);
    }

    #[test]
    fn a_giant_sentence_is_cut_at_words() {
        let text = "word ".repeat(100);
        let text = text.trim_end();
        let chunks = chunk(text, false, PARAMS, &words);
        assert!(chunks.len() >= 4);
        assert!(chunks
            .iter()
            .all(|c| words(&text[c.start..c.end]) <= PARAMS.max));
        assert_eq!(chunks.last().unwrap().end, text.len());
    }

    #[test]
    fn paragraph_ends_are_preferred_cut_points() {
        // Two paragraphs of 21 words: together over the target, so the first passage ends at the
        // blank line (the second may repeat its last sentence as overlap).
        let p = "one two three four five six seven. ".repeat(3);
        let text = format!("{}\n\n{}", p.trim_end(), p.trim_end());
        let chunks = chunk(&text, false, PARAMS, &words);
        assert_eq!(chunks.len(), 2, "{chunks:?}");
        assert_eq!(&text[chunks[0].start..chunks[0].end], p.trim_end());
        assert!(text[chunks[1].start..].ends_with(p.trim_end()));
    }

    #[test]
    fn sizes_for_minilm_leave_room_for_the_title() {
        let p = ChunkParams::for_model(256, 40);
        assert_eq!(p.max, 216);
        assert!(p.target >= 180 && p.target < p.max);
        assert!(p.overlap > 0 && p.overlap < p.target / 4);
    }
}
