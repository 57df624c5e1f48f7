//! Retrieval benchmarks: one query embedding, and hybrid search over the fixture knowledge base
//! padded with synthetic chunks to 1k, 10k and 100k chunks. Before each size's timing it prints
//! the retrieval quality on the fixture questions at that size (recall@1, recall@3, MRR).
//!
//! - `embed/query`: one short question through all-MiniLM-L6-v2 on the embedder's worker thread.
//! - `search/<chunks>/total`: `KnowledgeBase::search` end to end (embed + vector scan + BM25 +
//!   fusion + fetching passages).
//! - `search/<chunks>/scan`: the exact vector scan alone (top 20 of every chunk).
//! - `search/<chunks>/pgvector-total` and `search/<chunks>/pgvector-probe`: the same search on the
//!   PostgreSQL + pgvector store (HNSW), end to end and the database's part alone (vector and
//!   keyword rankings in one read-only transaction). Before each size it prints the recall@3 of
//!   the HNSW vector ranking against the exact scan over the fixture questions.
//!
//! The filler chunks have random unit vectors and text drawn from a word list, so they weigh on
//! the scan and the keyword index like real chunks but rarely compete for the answer: the quality
//! figures show what scale costs in speed more than in accuracy.
//!
//! Needs the default models (`voxd models pull`) and PostgreSQL + pgvector from `bash scripts/deps
//! --test` (started here on a free loopback port). Run: `cargo bench --bench rag`.

use std::hint::black_box;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use voxd::models::{Manifest, ModelStore, Role};
use voxd::rag::embed::{Embedder, LocalEmbedder};
use voxd::rag::store::{
    Eligibility, EmbeddingModel, NewChunk, NewDocument, PgStore, Probe, SqliteStore, Store,
};

#[allow(dead_code)]
#[path = "../tests/common/pg.rs"]
mod pg;
use voxd::rag::{KbSettings, KnowledgeBase, SearchRequest};

fn data(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name)
}

fn embedder() -> Arc<LocalEmbedder> {
    let home = std::env::var_os("VOXD_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(voxd::config::default_home);
    let path = ModelStore::new(&home, Manifest::builtin())
        .resolve(Role::Embeddings, None)
        .expect("run `voxd models pull` before this benchmark");
    Arc::new(LocalEmbedder::load(path.parent().unwrap(), "all-minilm-l6-v2", 1).unwrap())
}

/// A small deterministic generator (xorshift64*), so runs are comparable.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn unit(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    }
}

const WORDS: &[&str] = &[
    "harbour", "invoice", "schedule", "meeting", "river", "garden", "copper", "lantern", "signal",
    "market", "window", "bridge", "ledger", "orchard", "engine", "canvas", "timber", "quarry",
    "pepper", "violet", "saddle", "kettle", "marble", "thunder", "pocket", "ribbon", "castle",
    "meadow", "anchor", "velvet", "compass", "pillow", "summit", "falcon", "basket", "cinder",
];

/// Adds filler documents of 100 chunks each until the store holds `target` chunks.
fn pad(store: &dyn Store, model: &EmbeddingModel, have: &mut usize, target: usize, rng: &mut Rng) {
    while *have < target {
        let n = (target - *have).min(100);
        let mut chunks = Vec::with_capacity(n);
        let mut vectors = Vec::with_capacity(n);
        let mut content = String::new();
        for _ in 0..n {
            let text: Vec<&str> = (0..60)
                .map(|_| WORDS[(rng.next() % WORDS.len() as u64) as usize])
                .collect();
            let text = text.join(" ");
            let start = content.chars().count();
            content.push_str(&text);
            content.push('\n');
            chunks.push(NewChunk {
                heading: String::new(),
                char_start: start,
                char_end: start + text.chars().count(),
                text,
            });
            let mut v: Vec<f32> = (0..model.dimensions).map(|_| rng.unit()).collect();
            voxd::rag::embed::normalize(&mut v);
            vectors.push(v);
        }
        let id = *have;
        let doc = NewDocument {
            key: format!("filler-{id}"),
            source: format!("filler-{id}"),
            title: format!("Filler {id}"),
            uri: None,
            content,
            content_hash: format!("{id}"),
            version_at: 0,
            expires_at: None,
            metadata: serde_json::json!({}),
        };
        store.upsert(&doc, &chunks, &vectors, model).unwrap();
        *have += n;
    }
}

fn questions() -> Vec<(String, String)> {
    std::fs::read_to_string(data("kb_questions.tsv"))
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| l.split_once('\t'))
        .filter(|(_, s)| *s != "-")
        .map(|(q, s)| (q.to_string(), s.to_string()))
        .collect()
}

fn rag(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let embedder = embedder();
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteStore::open(&dir.path().join("kb.sqlite")).unwrap());
    let kb = KnowledgeBase::new(store.clone(), embedder.clone(), KbSettings::default());
    let mut files: Vec<PathBuf> = std::fs::read_dir(data("kb"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    let mut have = 0;
    runtime.block_on(async {
        for f in &files {
            have += kb.add_file(f).await.unwrap().document.chunks;
        }
    });
    // The same knowledge base on PostgreSQL + pgvector.
    let server = pg::Postgres::start();
    let pg_store: Arc<PgStore> = Arc::new(PgStore::open(&server.database("kb")).unwrap());
    let pg_kb = KnowledgeBase::new(pg_store.clone(), embedder.clone(), KbSettings::default());
    let mut pg_have = 0;
    runtime.block_on(async {
        for f in &files {
            pg_have += pg_kb.add_file(f).await.unwrap().document.chunks;
        }
    });

    c.bench_function("embed/query", |b| {
        b.to_async(&runtime).iter(|| async {
            black_box(
                embedder
                    .embed(vec!["what time do you open on sundays".to_string()])
                    .await
                    .unwrap(),
            )
        })
    });

    let model = kb.model();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut pg_rng = Rng(0x9e37_79b9_7f4a_7c15);
    let qs = questions();
    let query_vectors = runtime
        .block_on(embedder.embed(qs.iter().map(|(q, _)| q.clone()).collect()))
        .unwrap();
    let everything = Eligibility {
        now: i64::MAX / 2,
        ..Default::default()
    };
    // The top 3 of a store's vector ranking (depth 20, as a search asks), as chunk texts.
    let top3 = |store: &dyn Store, v: &[f32]| -> Vec<String> {
        let c = store
            .candidates(&Probe {
                vector: v,
                model: &model,
                words: &[],
                depth: 20,
                eligibility: &everything,
            })
            .unwrap();
        let ids: Vec<i64> = c.by_vector.iter().take(3).map(|x| x.0).collect();
        let recs = store.chunks(&ids).unwrap();
        ids.iter()
            .filter_map(|id| recs.iter().find(|r| r.chunk_id == *id))
            .map(|r| format!("{}\n{}", r.title, r.text))
            .collect()
    };
    let mut group = c.benchmark_group("search");
    group
        .sample_size(20)
        .measurement_time(Duration::from_secs(8));
    for target in [1_000usize, 10_000, 100_000] {
        pad(&*store, &model, &mut have, target, &mut rng);
        let t0 = std::time::Instant::now();
        pad(&*pg_store, &model, &mut pg_have, target, &mut pg_rng);
        eprintln!(
            "pgvector: {} chunks written in {:.1} s (HNSW index kept up to date)",
            pg_have,
            t0.elapsed().as_secs_f64()
        );
        // HNSW against the exact scan, on the same vectors.
        let (mut agree, mut total) = (0, 0);
        for v in &query_vectors {
            let exact = top3(&*store, v);
            let approx = top3(&*pg_store, v);
            total += exact.len();
            agree += exact.iter().filter(|t| approx.contains(t)).count();
        }
        eprintln!(
            "pgvector HNSW recall@3 against the exact scan at {pg_have} chunks: {:.3} ({agree} of {total})",
            agree as f64 / total.max(1) as f64
        );
        // Quality at this size (also warms the index).
        let (mut r1, mut r3, mut rr, mut search_ms) = (0, 0, 0.0, Vec::new());
        runtime.block_on(async {
            for (q, source) in &qs {
                let mut req = SearchRequest::new(q.as_str());
                req.top_k = Some(3);
                let res = kb.search(req).await.unwrap();
                search_ms.push(res.search_ms);
                if let Some(r) = res
                    .passages
                    .iter()
                    .position(|p| &p.citation.source == source)
                {
                    r3 += 1;
                    r1 += usize::from(r == 0);
                    rr += 1.0 / (r + 1) as f64;
                }
            }
        });
        search_ms.sort_by(f64::total_cmp);
        let n = qs.len() as f64;
        eprintln!(
            "quality at {have} chunks over {} questions: recall@1 {:.2}, recall@3 {:.2}, MRR {:.2}; search (after embedding) median {:.1} ms, max {:.1} ms",
            qs.len(),
            r1 as f64 / n,
            r3 as f64 / n,
            rr / n,
            search_ms[search_ms.len() / 2],
            search_ms[search_ms.len() - 1]
        );
        group.bench_function(format!("{target}/total"), |b| {
            b.to_async(&runtime).iter(|| async {
                black_box(
                    kb.search(SearchRequest::new("how much does a full service cost"))
                        .await
                        .unwrap(),
                )
            })
        });
        let snapshot = voxd::rag::index::VectorIndex::new(store.snapshot().unwrap());
        let eligible = snapshot.eligible(&voxd::rag::index::Eligibility {
            now: i64::MAX / 2,
            ..Default::default()
        });
        let query = runtime
            .block_on(embedder.embed(vec!["how much does a full service cost".into()]))
            .unwrap()
            .pop()
            .unwrap();
        group.bench_function(format!("{target}/scan"), |b| {
            b.iter(|| black_box(snapshot.top_k(black_box(&query), 20, &eligible)))
        });
        group.bench_function(format!("{target}/pgvector-total"), |b| {
            b.to_async(&runtime).iter(|| async {
                black_box(
                    pg_kb
                        .search(SearchRequest::new("how much does a full service cost"))
                        .await
                        .unwrap(),
                )
            })
        });
        let words = voxd::rag::search::keywords("how much does a full service cost");
        group.bench_function(format!("{target}/pgvector-probe"), |b| {
            b.iter(|| {
                black_box(
                    pg_store
                        .candidates(&Probe {
                            vector: &query,
                            model: &model,
                            words: &words,
                            depth: 20,
                            eligibility: &everything,
                        })
                        .unwrap(),
                )
            })
        });
    }
    group.finish();
}

criterion_group!(benches, rag);
criterion_main!(benches);
