//! Microbenchmarks of turn-taking: Smart Turn's features and a whole end-of-turn check, and
//! Silero VAD per 32 ms window.
//!
//! - `turns/features/8s`: the log-mel features of an 8 s window (what every check computes).
//! - `turns/smart_turn/check`: one check on 3 s of speech: features and the model, on one
//!   worker of one thread (as `voxd serve` runs it).
//! - `turns/silero/32ms`: one Silero window (512 samples) with its recurrent state.
//!
//! Needs the default models (`voxd models pull`). Run: `cargo bench --bench turns`.

use std::hint::black_box;
use std::path::PathBuf;

use criterion::{criterion_group, criterion_main, Criterion};
use voxd::audio::{self, ChannelSelect};
use voxd::models::{Manifest, ModelStore, Role};
use voxd::vad::features::MelFeatures;
use voxd::vad::{EndOfTurn, SileroModel, SileroVad, SmartTurn};

fn turns(c: &mut Criterion) {
    let home = std::env::var_os("VOXD_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(voxd::config::default_home);
    let store = ModelStore::new(&home, Manifest::builtin());
    let resolve = |role| {
        store
            .resolve(role, None)
            .expect("run `voxd models pull` before this benchmark")
    };
    let (runtime, turn, vad) = (
        resolve(Role::Runtime),
        resolve(Role::Turn),
        resolve(Role::Vad),
    );
    let data = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/jfk.wav");
    let jfk = audio::decode_file(&data, ChannelSelect::Mix)
        .unwrap()
        .samples;
    let mut group = c.benchmark_group("turns");

    let mel = MelFeatures::new();
    let eight = jfk[..8 * 16_000].to_vec();
    group.bench_function("features/8s", |b| b.iter(|| mel.compute(black_box(&eight))));

    let smart = SmartTurn::load(&runtime, &turn, 1).unwrap();
    let three = jfk[..3 * 16_000].to_vec();
    group.sample_size(30);
    group.bench_function("smart_turn/check", |b| {
        b.iter(|| smart.check_blocking(black_box(three.clone())).unwrap())
    });

    let silero = SileroModel::load(&runtime, &vad).unwrap();
    let mut stream = SileroVad::new(silero);
    let window = &jfk[16_000..16_000 + 512];
    group.sample_size(100);
    group.bench_function("silero/32ms", |b| {
        b.iter(|| {
            stream.push(black_box(window));
            stream.probability()
        })
    });
    group.finish();
}

criterion_group!(benches, turns);
criterion_main!(benches);
