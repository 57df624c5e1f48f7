//! The voice: time to first audio and real-time factor of the default Piper voice on ONNX
//! Runtime, by sentence length (one worker, one thread, as `voxd serve` runs it by default).
//!
//! - `tts/<words>w`: synthesising one sentence of 6, 12, 24 or 48 words. For a spoken answer,
//!   the first sentence's time is the voice's share of "end of speech -> first audio byte".
//!   The throughput line reads "elem/s" as milliseconds of audio per second of compute: divide
//!   by 1000 for the speed-up over real time (its inverse is the real-time factor, printed too).
//!
//! Needs the default models (`voxd models pull`) and libespeak-ng. Run:
//! `cargo bench --bench tts`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use voxd::models::{Manifest, ModelStore, Role};
use voxd::tts::{PiperTts, SpeakRequest, Tts};

const WORDS: &str = "The museum on the old harbour opens at ten in the morning and closes at six \
in the evening, except on public holidays, when the galleries stay closed but the garden and the \
cafe welcome visitors until late in the afternoon, and guided tours of the ships leave every hour \
from the ticket office beside the main entrance of the building";

fn sentence(words: usize) -> String {
    let mut s: String = WORDS
        .split_whitespace()
        .cycle()
        .take(words)
        .collect::<Vec<_>>()
        .join(" ");
    s.push('.');
    s
}

fn tts(c: &mut Criterion) {
    let home = std::env::var_os("VOXD_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(voxd::config::default_home);
    let store = ModelStore::new(&home, Manifest::builtin());
    let voice = store
        .resolve(Role::Tts, None)
        .expect("run `voxd models pull` before this benchmark");
    let runtime_lib = store.resolve(Role::Runtime, None).unwrap();
    let piper = PiperTts::load(&runtime_lib, &voice, 1, 1).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let speak = |text: &str| {
        rt.block_on(piper.speak(SpeakRequest {
            text: text.to_string(),
            voice: "joe".into(),
            speed: 1.0,
            urgent: false,
        }))
        .unwrap()
    };
    let mut group = c.benchmark_group("tts");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(15));
    for words in [6usize, 12, 24, 48] {
        let text = sentence(words);
        let t = Instant::now();
        let speech = speak(&text);
        let compute = t.elapsed();
        let audio = speech.duration();
        eprintln!(
            "tts/{words}w: {:.2} s of audio in {:.0} ms, real-time factor {:.3}",
            audio.as_secs_f64(),
            compute.as_secs_f64() * 1e3,
            compute.as_secs_f64() / audio.as_secs_f64()
        );
        group.throughput(Throughput::Elements(audio.as_millis() as u64));
        group.bench_with_input(
            BenchmarkId::from_parameter(format!("{words}w")),
            &text,
            |b, text| b.iter(|| speak(text)),
        );
    }
    group.finish();
}

criterion_group!(benches, tts);
criterion_main!(benches);
