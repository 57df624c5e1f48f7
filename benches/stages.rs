//! Microbenchmarks of the pipeline stages built so far.
//!
//! - `resample/20ms/<rate>`: one 20 ms frame through the streaming resampler to 16 kHz.
//! - `vad/<frame>`: webrtc-vad on one 10, 20 or 30 ms frame at 16 kHz (speech).
//! - `whisper/<length>/<window>`: one transcription of the first 2, 5 or 10 s of jfk.wav with
//!   tiny.en (1 worker, 2 threads), with the full 30 s encoder window and with `auto` trimming.
//!   Needs the default models (`voxd models pull`).
//!
//! Run: `cargo bench --bench stages` (add `-- resample` to run only the resampler).

use std::hint::black_box;
use std::path::PathBuf;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use voxd::asr::{Asr, AudioCtx, Request, WhisperConfig, WhisperPool};
use voxd::audio::{self, ChannelSelect, StreamResampler};
use voxd::models::{Manifest, ModelStore, Role};

fn resample(c: &mut Criterion) {
    let mut group = c.benchmark_group("resample/20ms");
    for rate in [8_000u32, 24_000, 44_100, 48_000] {
        let frame: Vec<f32> = (0..rate as usize / 50)
            .map(|i| (i as f32 * 0.05).sin() * 0.3)
            .collect();
        let mut r = StreamResampler::new(rate, 16_000).unwrap();
        let mut out = Vec::with_capacity(4096);
        group.bench_with_input(BenchmarkId::from_parameter(rate), &frame, |b, frame| {
            b.iter(|| {
                out.clear();
                r.push(black_box(frame), &mut out);
                black_box(out.len())
            })
        });
    }
    group.finish();
}

fn vad(c: &mut Criterion) {
    let data = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/jfk.wav");
    let speech: Vec<i16> = audio::decode_file(&data, ChannelSelect::Mix)
        .unwrap()
        .samples
        .iter()
        .skip(16_000)
        .map(|s| (s * 32767.0) as i16)
        .collect();
    let mut group = c.benchmark_group("vad");
    for ms in [10usize, 20, 30] {
        let frame = &speech[..16 * ms];
        let mut vad = webrtc_vad::Vad::new_with_rate_and_mode(
            webrtc_vad::SampleRate::Rate16kHz,
            webrtc_vad::VadMode::Aggressive,
        );
        group.bench_with_input(
            BenchmarkId::from_parameter(format!("{ms}ms")),
            frame,
            |b, f| b.iter(|| vad.is_voice_segment(black_box(f)).unwrap()),
        );
    }
    group.finish();
}

fn whisper(c: &mut Criterion) {
    let home = std::env::var_os("VOXD_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(voxd::config::default_home);
    let model = ModelStore::new(&home, Manifest::builtin())
        .resolve(Role::Asr, None)
        .expect("run `voxd models pull` before this benchmark");
    let data = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let mut group = c.benchmark_group("whisper");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(20));
    let jfk = audio::decode_file(&data.join("jfk.wav"), ChannelSelect::Mix)
        .unwrap()
        .samples;
    for seconds in [2usize, 5, 10] {
        let clip = format!("{seconds}s");
        let samples = jfk[..seconds * 16_000].to_vec();
        for (name, ctx) in [("full", AudioCtx::Full), ("auto", AudioCtx::Auto)] {
            let pool = WhisperPool::load(WhisperConfig {
                pool_size: 1,
                threads: 2,
                audio_ctx: ctx,
                ..WhisperConfig::new(model.clone())
            })
            .unwrap();
            group.bench_function(BenchmarkId::new(&clip, name), |b| {
                b.iter(|| {
                    runtime
                        .block_on(pool.transcribe(Request::new(samples.clone())))
                        .unwrap()
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, resample, vad, whisper);
criterion_main!(benches);
