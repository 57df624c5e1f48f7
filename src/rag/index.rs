//! The in-memory vector index: every chunk's vector in one contiguous `Vec<f32>`, scanned exactly
//! (a dot product per chunk; 100k chunks × 384 floats is ~40 M multiply-adds, a few ms).
//!
//! Which chunks a search may return is decided per document: expired documents and documents
//! superseded by a newer version of the same source are skipped, as are documents a filter
//! excludes.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};

use super::embed::dot;
use super::store::{DocMeta, EmbeddingModel, Snapshot};

/// A loaded snapshot of the store's vectors.
pub struct VectorIndex {
    revision: i64,
    model: Option<EmbeddingModel>,
    dim: usize,
    docs: Vec<DocMeta>,
    /// Per document: no other document of its source has a newer `version_at`.
    newest: Vec<bool>,
    chunk_ids: Vec<i64>,
    chunk_doc: Vec<u32>,
    vectors: Vec<f32>,
    row_of: HashMap<i64, usize>,
}

/// Which documents a search may use.
#[derive(Debug, Clone, Default)]
pub struct Eligibility {
    /// Only these sources (any when `None`).
    pub sources: Option<Vec<String>>,
    /// Only these documents (any when `None`).
    pub document_ids: Option<Vec<String>>,
    /// Only versions that took effect at or after this time (Unix seconds).
    pub updated_after: Option<i64>,
    /// Also older versions of a source (default: only the newest).
    pub include_superseded: bool,
    /// "Now", for expiry.
    pub now: i64,
}

#[derive(PartialEq)]
struct Scored(f32, usize);
impl Eq for Scored {}
impl PartialOrd for Scored {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Scored {
    // Reversed, so the heap's top is the worst kept score.
    fn cmp(&self, other: &Self) -> Ordering {
        other.0.total_cmp(&self.0).then(other.1.cmp(&self.1))
    }
}

impl VectorIndex {
    pub fn new(snap: Snapshot) -> Self {
        let dim = snap.model.as_ref().map(|m| m.dimensions).unwrap_or(0).max(
            if snap.chunk_ids.is_empty() {
                0
            } else {
                snap.vectors.len() / snap.chunk_ids.len()
            },
        );
        let mut best: HashMap<&str, (i64, &str)> = HashMap::new();
        for d in &snap.docs {
            let entry = best.entry(&d.source).or_insert((d.version_at, &d.id));
            if (d.version_at, d.id.as_str()) > (entry.0, entry.1) {
                *entry = (d.version_at, &d.id);
            }
        }
        let newest = snap
            .docs
            .iter()
            .map(|d| best.get(d.source.as_str()).is_some_and(|b| b.1 == d.id))
            .collect();
        let row_of = snap
            .chunk_ids
            .iter()
            .enumerate()
            .map(|(i, &id)| (id, i))
            .collect();
        VectorIndex {
            revision: snap.revision,
            model: snap.model,
            dim,
            docs: snap.docs,
            newest,
            chunk_ids: snap.chunk_ids,
            chunk_doc: snap.chunk_doc,
            vectors: snap.vectors,
            row_of,
        }
    }

    /// The store revision this index reflects.
    pub fn revision(&self) -> i64 {
        self.revision
    }

    /// The model the vectors were made with.
    pub fn model(&self) -> Option<&EmbeddingModel> {
        self.model.as_ref()
    }

    /// Number of chunks.
    pub fn len(&self) -> usize {
        self.chunk_ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.chunk_ids.is_empty()
    }

    /// Per document: may a search use it?
    pub fn eligible(&self, e: &Eligibility) -> Vec<bool> {
        self.docs
            .iter()
            .zip(&self.newest)
            .map(|(d, &newest)| {
                (newest || e.include_superseded)
                    && d.expires_at.is_none_or(|t| t > e.now)
                    && e.updated_after.is_none_or(|t| d.version_at >= t)
                    && e.sources.as_ref().is_none_or(|s| s.contains(&d.source))
                    && e.document_ids
                        .as_ref()
                        .is_none_or(|ids| ids.contains(&d.id))
            })
            .collect()
    }

    /// The `k` rows most similar to `query` among eligible documents, best first.
    pub fn top_k(&self, query: &[f32], k: usize, eligible: &[bool]) -> Vec<(usize, f32)> {
        if self.dim == 0 || query.len() != self.dim || k == 0 {
            return Vec::new();
        }
        let mut heap = BinaryHeap::with_capacity(k + 1);
        for (row, v) in self.vectors.chunks_exact(self.dim).enumerate() {
            if !eligible[self.chunk_doc[row] as usize] {
                continue;
            }
            let s = dot(query, v);
            if heap.len() < k {
                heap.push(Scored(s, row));
            } else if heap.peek().is_some_and(|worst| s > worst.0) {
                heap.pop();
                heap.push(Scored(s, row));
            }
        }
        let mut out: Vec<(usize, f32)> = heap.into_iter().map(|Scored(s, r)| (r, s)).collect();
        out.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        out
    }

    /// The row of a chunk id.
    pub fn row(&self, chunk_id: i64) -> Option<usize> {
        self.row_of.get(&chunk_id).copied()
    }

    /// Is this row's document eligible?
    pub fn row_eligible(&self, row: usize, eligible: &[bool]) -> bool {
        eligible[self.chunk_doc[row] as usize]
    }

    /// Cosine similarity of a row to `query`.
    pub fn similarity(&self, row: usize, query: &[f32]) -> f32 {
        if query.len() != self.dim {
            return 0.0;
        }
        dot(query, &self.vectors[row * self.dim..(row + 1) * self.dim])
    }

    pub fn chunk_id(&self, row: usize) -> i64 {
        self.chunk_ids[row]
    }

    /// The document of a row.
    pub fn doc(&self, row: usize) -> &DocMeta {
        &self.docs[self.chunk_doc[row] as usize]
    }
}
