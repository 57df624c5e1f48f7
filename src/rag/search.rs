//! Hybrid retrieval: the request and result types, the keyword query built from a spoken
//! question, and reciprocal rank fusion of the vector and keyword rankings.
//!
//! RRF scores each passage `Σ 1 / (60 + rank)` over the rankings it appears in, so a passage
//! near the top of both wins, and neither ranking's raw scores need calibrating against the
//! other. The relevance floor is on cosine similarity, which is comparable across queries, and is
//! [`KEYWORD_FLOOR_RELIEF`] lower for passages the keyword search found too.

use serde::{Deserialize, Serialize};

use super::KbError;

/// The RRF constant (the usual 60: rank differences deep in a list matter little).
pub const RRF_K: f32 = 60.0;

/// How much lower the similarity floor is for a passage the keyword search found too: two
/// independent signals agreeing are worth more than one weak one. (On the fixture knowledge base
/// answerable questions whose best passage has cosine 0.26–0.27 also match it by keyword, while
/// off-topic questions peak at 0.24 without a keyword match.)
pub const KEYWORD_FLOOR_RELIEF: f32 = 0.1;

/// Most passages one search may return.
pub const MAX_TOP_K: usize = 50;

/// Longest query, in characters.
pub const MAX_QUERY_CHARS: usize = 2000;

/// Optional restrictions on what a search may return.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Filter {
    /// Only documents of these sources.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sources: Option<Vec<String>>,
    /// Only these documents.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub document_ids: Option<Vec<String>>,
    /// Only versions that took effect at or after this date / RFC 3339 time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_after: Option<String>,
    /// Also search older versions of a source (default: only the newest).
    #[serde(default)]
    pub include_superseded: bool,
}

/// A search.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SearchRequest {
    pub query: String,
    #[serde(default)]
    pub top_k: Option<usize>,
    #[serde(default)]
    pub filter: Option<Filter>,
    /// Override the relevance floor (cosine similarity, -1..1) for this search.
    #[serde(default)]
    pub min_score: Option<f32>,
}

impl SearchRequest {
    pub fn new(query: impl Into<String>) -> Self {
        SearchRequest {
            query: query.into(),
            top_k: None,
            filter: None,
            min_score: None,
        }
    }
}

/// Where a passage comes from: enough to link to it and to quote it exactly.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Citation {
    pub document_id: String,
    pub title: String,
    pub uri: Option<String>,
    pub source: String,
    pub chunk_id: i64,
    pub heading: String,
    /// Span of the passage in the document's text, in characters.
    pub char_start: usize,
    pub char_end: usize,
}

/// One retrieved passage.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Passage {
    pub text: String,
    /// Fused rank score (reciprocal rank fusion).
    pub score: f32,
    /// Cosine similarity between the question and the passage.
    pub similarity: f32,
    /// 1-based rank in the vector ranking, if it was in it.
    pub vector_rank: Option<usize>,
    /// 1-based rank in the keyword (BM25) ranking, if it was in it.
    pub keyword_rank: Option<usize>,
    pub citation: Citation,
}

/// What a search found.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SearchResults {
    /// False when no passage reached the relevance floor: the answer should say the knowledge
    /// base does not cover the question.
    pub grounded: bool,
    pub passages: Vec<Passage>,
    /// Time to embed the query, in milliseconds.
    pub embed_ms: f64,
    /// Time to search (vector scan, keyword query, fusion, fetching passages), in milliseconds.
    pub search_ms: f64,
}

/// Words too common to help a keyword search.
const STOPWORDS: &[&str] = &[
    "a", "about", "am", "an", "and", "any", "are", "as", "at", "be", "been", "but", "by", "can",
    "could", "did", "do", "does", "for", "from", "get", "got", "had", "has", "have", "how", "i",
    "if", "in", "into", "is", "it", "its", "just", "let", "me", "my", "of", "on", "or", "our",
    "please", "so", "than", "that", "the", "their", "them", "then", "there", "these", "they",
    "this", "those", "to", "us", "was", "we", "were", "what", "when", "where", "which", "who",
    "whom", "why", "will", "with", "would", "you", "your", "tell", "know", "like", "um", "uh",
    "okay", "ok", "hi", "hello", "hey", "there's", "what's", "i'm", "it's",
];

/// The distinctive words of a free-text question, lowercased, without stop words or
/// apostrophes (at most 32): only letters and digits, so no word is read as query syntax by
/// either store's full-text engine.
pub fn keywords(question: &str) -> Vec<String> {
    let mut words: Vec<String> = Vec::new();
    for raw in question.split(|c: char| !(c.is_alphanumeric() || c == '\'')) {
        let w = raw.trim_matches('\'').to_lowercase();
        if w.chars().count() < 2 || STOPWORDS.contains(&w.as_str()) {
            continue;
        }
        let w = w.replace('\'', "");
        if !words.contains(&w) {
            words.push(w);
        }
        if words.len() == 32 {
            break;
        }
    }
    words
}

/// An FTS5 query for a free-text question: its [`keywords`], each quoted, joined with OR.
/// Empty when the question has no such word.
pub fn keyword_query(question: &str) -> String {
    fts5_query(&keywords(question))
}

/// An FTS5 query matching any of `words`.
pub fn fts5_query(words: &[String]) -> String {
    words
        .iter()
        .map(|w| format!("\"{w}\""))
        .collect::<Vec<_>>()
        .join(" OR ")
}

/// Fuses rankings (each a list of ids, best first) into `(id, score, rank in each list)`,
/// best first.
pub fn fuse<const N: usize>(rankings: [&[i64]; N]) -> Vec<(i64, f32, [Option<usize>; N])> {
    let mut acc: Vec<(i64, f32, [Option<usize>; N])> = Vec::new();
    for (list, ranking) in rankings.iter().enumerate() {
        for (rank, &id) in ranking.iter().enumerate() {
            let add = 1.0 / (RRF_K + rank as f32 + 1.0);
            match acc.iter_mut().find(|e| e.0 == id) {
                Some(e) => {
                    e.1 += add;
                    e.2[list] = Some(rank + 1);
                }
                None => {
                    let mut ranks = [None; N];
                    ranks[list] = Some(rank + 1);
                    acc.push((id, add, ranks));
                }
            }
        }
    }
    acc.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    acc
}

/// Checks `top_k` (1..=50, default `default`).
pub fn check_top_k(top_k: Option<usize>, default: usize) -> Result<usize, KbError> {
    let k = top_k.unwrap_or(default);
    if !(1..=MAX_TOP_K).contains(&k) {
        return Err(KbError::invalid(
            "invalid_top_k",
            format!("top_k must be between 1 and {MAX_TOP_K} (got {k})"),
        ));
    }
    Ok(k)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyword_query_keeps_distinctive_words_and_quotes_them() {
        assert_eq!(
            keyword_query("Hey, what time does the shop open on Sundays?"),
            "\"time\" OR \"shop\" OR \"open\" OR \"sundays\""
        );
        // FTS syntax in a question is just words.
        assert_eq!(keyword_query("NEAR(a b) AND \"x\" OR *"), "\"near\"");
        assert_eq!(keyword_query("what is it?"), "");
    }

    #[test]
    fn fusion_rewards_agreement() {
        let fused = fuse([&[1, 2, 3][..], &[3, 1][..]]);
        assert_eq!(fused[0].0, 1, "top of one list and second of the other");
        assert_eq!(fused[0].2, [Some(1), Some(2)]);
        assert_eq!(fused[1].0, 3);
        assert_eq!(fused[2].0, 2);
        assert_eq!(fused[2].2, [Some(2), None]);
    }
}
