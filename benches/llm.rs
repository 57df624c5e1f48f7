//! The embedded LLM (SmolLM2-135M-Instruct Q4_1, voxd's kernels, this machine's cores):
//!
//! - `llm/first_token/300`: time to the first token for a ~300-token prompt, nothing cached.
//! - `llm/first_token/300_prefix_cached`: the same prompt when everything but the question is in
//!   the prefix cache (what early prefill achieves at the end of a spoken turn).
//! - `llm/first_token/300_instructions_cached`: only the instructions cached (what every turn
//!   gets without early prefill).
//! - `llm/decode/32`: 32 tokens after the first (tokens/s = 31 / time).
//! - `q8/matmul_1536x576/{1,354}` and `q4_1/…`: voxd's kernel alone on the model's widest layer,
//!   with Q8_0 and with Q4_1 weights, for one token and for a 354-token prompt.
//!
//! Needs the default models (`voxd models pull`). Run: `cargo bench --bench llm`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use voxd::llm::{complete, GenerateRequest, Llm, LocalLlm, LocalLlmConfig};
use voxd::models::{Manifest, ModelStore, Role};
use voxd::prompt::{ChatMessage, Role as R};

fn llm() -> Arc<LocalLlm> {
    let home = std::env::var_os("VOXD_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(voxd::config::default_home);
    let path = ModelStore::new(&home, Manifest::builtin())
        .resolve(Role::Llm, None)
        .expect("run `voxd models pull` before this benchmark");
    Arc::new(
        LocalLlm::load(LocalLlmConfig {
            path,
            name: "smollm2-135m-instruct".into(),
            cache_entries: 8,
        })
        .unwrap(),
    )
}

const INSTRUCTIONS: &str = "You are the voice assistant of Brightwater Bikes, a worker-owned bicycle shop, \
repair workshop and rental service in Larkhaven. Answer in one to three short sentences of plain text.";

/// Instructions, ~220 tokens of passages, a question: ~300 tokens.
fn messages(question: &str) -> Vec<ChatMessage> {
    let passages = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/kb/service-prices-2026.md"),
    )
    .unwrap()
        + &std::fs::read_to_string(
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/kb/repair-turnaround.md"),
        )
        .unwrap();
    vec![
        ChatMessage::new(R::System, INSTRUCTIONS),
        ChatMessage::new(R::System, format!("Reference passages:\n{passages}")),
        ChatMessage::new(R::User, question),
    ]
}

fn bench(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let llm = llm();
    let one = |msgs: Vec<ChatMessage>, max: usize, points: Vec<usize>| {
        let mut r = GenerateRequest::new(msgs);
        r.max_tokens = max;
        r.cache_points = points;
        r
    };
    // Report the prompt size and what each arrangement costs, from the model's own usage figures.
    let (_, _, u) = runtime
        .block_on(complete(
            llm.as_ref(),
            one(messages("How much is a full service?"), 33, vec![]),
        ))
        .unwrap();
    eprintln!(
        "prompt {} tokens: first token {:.0} ms (prefill {:.0} ms), decode {:.1} tokens/s",
        u.prompt_tokens, u.first_token_ms, u.prefill_ms, u.tokens_per_second
    );

    let mut group = c.benchmark_group("llm");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(20));
    let mut n = 0u64;
    group.bench_function("first_token/300", |b| {
        b.to_async(&runtime).iter(|| {
            // A different question each time, and no cache points: nothing reused.
            n += 1;
            let req = one(
                messages(&format!("Question {n}: how much is a full service?")),
                1,
                vec![],
            );
            let llm = llm.clone();
            async move { complete(llm.as_ref(), req).await.unwrap() }
        })
    });
    // Warm the cache for the two prefixes.
    runtime
        .block_on(llm.prefill(messages("x")[..2].to_vec()))
        .unwrap();
    group.bench_function("first_token/300_prefix_cached", |b| {
        b.to_async(&runtime).iter(|| {
            n += 1;
            let req = one(
                messages(&format!("Question {n}: how much is a full service?")),
                1,
                vec![],
            );
            let llm = llm.clone();
            async move {
                let (_, _, u) = complete(llm.as_ref(), req).await.unwrap();
                assert!(u.cached_tokens > 200);
                u
            }
        })
    });
    let instructions_only = |q: &str| {
        let mut m = messages(q);
        m[1].content = format!("{} {q}", m[1].content); // passages differ per question
        m
    };
    runtime
        .block_on(llm.prefill(messages("x")[..1].to_vec()))
        .unwrap();
    group.bench_function("first_token/300_instructions_cached", |b| {
        b.to_async(&runtime).iter(|| {
            n += 1;
            let req = one(instructions_only(&format!("Question {n}?")), 1, vec![]);
            let llm = llm.clone();
            async move { complete(llm.as_ref(), req).await.unwrap() }
        })
    });
    group.bench_function("decode/32", |b| {
        b.to_async(&runtime).iter(|| {
            let req = one(messages("Tell me about the workshop."), 33, vec![2]);
            let llm = llm.clone();
            async move { complete(llm.as_ref(), req).await.unwrap() }
        })
    });
    group.finish();
}

/// voxd's kernels alone, on SmolLM2's widest layer (1536 × 576), with Q8_0 weights and with Q4_1
/// weights (the format SmolLM2's GGUF ships): one token (decoding) and a 354-token prompt
/// (prefill). Time per block product = time / (rows × tokens × 18 blocks).
fn kernel(c: &mut Criterion) {
    let (rows, cols) = (1536, 576);
    let values = |n: usize, seed: usize| -> Vec<f32> {
        (0..n)
            .map(|i| ((i * seed) % 1000) as f32 / 1000.0 - 0.5)
            .collect()
    };
    let w = voxd_q8::Matrix::quantize(rows, cols, &values(rows * cols, 7919)).unwrap();
    // Q4_1 blocks: scale 0.01, minimum −0.08, nibbles cycling through 0–15.
    let q4: Vec<u8> = (0..rows * cols / 32)
        .flat_map(|i| {
            let mut b = Vec::with_capacity(20);
            b.extend(half::f16::from_f32(0.01).to_le_bytes());
            b.extend(half::f16::from_f32(-0.08).to_le_bytes());
            b.extend((0..16).map(|j| (((i + j) % 16) | (((i + 3 * j) % 16) << 4)) as u8));
            b
        })
        .collect();
    let w4 = voxd_q8::Matrix::from_gguf_q4_1_bytes(rows, cols, &q4).unwrap();
    for (name, w) in [("q8", &w), ("q4_1", &w4)] {
        let mut group = c.benchmark_group(name);
        for m in [1usize, 354] {
            let x = values(m * cols, 104_729);
            let mut out = vec![0f32; m * rows];
            group.bench_function(format!("matmul_1536x576/{m}"), |b| {
                b.iter(|| w.matmul(&x, m, &mut out).unwrap())
            });
        }
        group.finish();
    }
}

criterion_group!(benches, bench, kernel);
criterion_main!(benches);
