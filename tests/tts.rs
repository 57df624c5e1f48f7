//! The speech synthesiser on its own: the default Piper voice on ONNX Runtime, heard back by
//! voxd's own Whisper.

mod common;

use voxd::asr::{Asr, Request};
use voxd::tts::{SpeakRequest, Tts, TtsError};
use voxd::wer::wer;

async fn hear(samples: &[f32], rate: u32) -> String {
    let at16 = voxd::audio::resample::resample_all(samples, rate, 16_000).unwrap();
    common::pool()
        .transcribe(Request::new(at16))
        .await
        .unwrap()
        .text
}

fn say(text: &str, speed: f32) -> SpeakRequest {
    SpeakRequest {
        text: text.into(),
        voice: "joe".into(),
        speed,
        urgent: false,
    }
}

#[tokio::test]
async fn the_default_voice_says_what_it_is_given() {
    let tts = common::tts();
    assert_eq!(tts.voices(), vec!["joe".to_string()]);
    let text = "The library opens at 9 in the morning, and closes at 6 on weekdays.";
    let speech = tts.speak(say(text, 1.0)).await.unwrap();
    assert_eq!(speech.sample_rate, 22_050);
    let secs = speech.duration().as_secs_f64();
    assert!((2.5..8.0).contains(&secs), "{secs} s of speech");
    let peak = speech.samples.iter().fold(0f32, |m, s| m.max(s.abs()));
    assert!(peak > 0.1, "nearly silent: peak {peak}");
    let heard = hear(&speech.samples, speech.sample_rate).await;
    let e = wer(text, &heard);
    assert!(e <= 0.15, "WER {e:.2}: heard {heard:?}");

    // Faster speech is shorter, and still intelligible.
    let fast = tts.speak(say(text, 1.5)).await.unwrap();
    let ratio = fast.duration().as_secs_f64() / secs;
    assert!(
        (0.5..0.8).contains(&ratio),
        "1.5x speed gave {ratio:.2} of the length"
    );
}

#[tokio::test]
async fn text_without_words_is_a_typed_error_and_markers_are_not_read() {
    let tts = common::tts();
    assert!(matches!(
        tts.speak(say(" ** [1] ", 1.0)).await.unwrap_err(),
        TtsError::Empty
    ));
    let speech = tts
        .speak(say("Tickets cost twelve euros [1].", 1.0))
        .await
        .unwrap();
    let heard = hear(&speech.samples, speech.sample_rate).await;
    // The marker is not read: no "one" (nor a lone "1"). The voice samples its noise afresh on
    // every call (VITS), so a word of four may come out unclear now and then ("Take its cost 12
    // euros." once in many runs): the rest of the sentence is allowed one slip in each direction.
    let words = voxd::wer::normalize(&heard);
    assert!(
        !words.iter().any(|w| w == "one" || w == "1"),
        "the citation marker was read: {heard:?}"
    );
    assert!(wer("Tickets cost 12 euros.", &heard) <= 0.5, "{heard:?}");
}

#[tokio::test]
async fn any_piper_voice_file_loads_and_a_foreign_one_is_a_typed_error() {
    use voxd::models::{Manifest, ModelStore, Role};
    let (voice, runtime) = common::voice_files();
    let dir = tempfile::tempdir().unwrap();
    // A user's own voice: any Piper file with its JSON beside it; its name comes from the file.
    let own = dir.path().join("en_GB-tester-low.onnx");
    std::fs::copy(&voice, &own).unwrap();
    std::fs::copy(
        format!("{}.json", voice.display()),
        format!("{}.json", own.display()),
    )
    .unwrap();
    let store = ModelStore::new(&common::home(), Manifest::builtin());
    let resolved = store.resolve(Role::Tts, own.to_str()).unwrap();
    assert_eq!(resolved, own);
    let tts = voxd::tts::PiperTts::load(&runtime, &resolved, 1, 1).unwrap();
    assert_eq!(tts.voices(), vec!["tester".to_string()]);

    // Without its JSON, or not a voice at all: a typed error naming the file, no crash.
    let lonely = dir.path().join("lonely.onnx");
    std::fs::copy(&voice, &lonely).unwrap();
    let err = voxd::tts::PiperTts::load(&runtime, &lonely, 1, 1)
        .err()
        .unwrap();
    assert!(
        matches!(err, TtsError::Load(ref m) if m.contains("lonely.onnx.json")),
        "{err}"
    );
    let junk = dir.path().join("junk.onnx");
    std::fs::write(&junk, b"not a model").unwrap();
    std::fs::copy(
        format!("{}.json", voice.display()),
        format!("{}.json", junk.display()),
    )
    .unwrap();
    let err = voxd::tts::PiperTts::load(&runtime, &junk, 1, 1)
        .err()
        .unwrap();
    assert!(
        matches!(err, TtsError::Load(ref m) if m.contains("junk.onnx")),
        "{err}"
    );
    // A second, different runtime library in a process that has loaded one.
    let err = voxd::tts::PiperTts::load(&junk, &voice, 1, 1)
        .err()
        .unwrap();
    assert!(
        matches!(err, TtsError::Load(ref m) if m.contains("already loaded")),
        "{err}"
    );
}

#[tokio::test]
async fn a_pronunciation_lexicon_changes_how_the_voice_says_a_word() {
    use voxd::tts::lexicon::{Lexicon, Pronouncing};
    // A made-up name the voice cannot know, respelled as words it says clearly.
    let lexicon = Lexicon::parse("Zqorvath = good morning\n", "test").unwrap();
    let plain: std::sync::Arc<dyn Tts> = common::tts();
    let pronouncing = Pronouncing::new(plain.clone(), lexicon);
    let text = "Zqorvath, everyone.";
    let said = pronouncing.speak(say(text, 1.0)).await.unwrap();
    let heard = hear(&said.samples, said.sample_rate).await;
    assert!(
        wer("good morning everyone", &heard) <= 0.34,
        "with the lexicon, heard {heard:?}"
    );
    let unlisted = plain.speak(say(text, 1.0)).await.unwrap();
    let heard = hear(&unlisted.samples, unlisted.sample_rate).await;
    assert!(
        !voxd::wer::normalize(&heard).iter().any(|w| w == "morning"),
        "without it, heard {heard:?}"
    );
    assert!(pronouncing.describe().contains("1 words"));
}

#[test]
fn a_missing_or_malformed_lexicon_stops_the_voice_with_the_files_name() {
    use voxd::models::{Manifest, ModelStore};
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("names.lex");
    std::fs::write(&bad, "Siân = Shahn\nMorvoren\n").unwrap();
    let store = ModelStore::new(&common::home(), Manifest::builtin());
    for (path, expect) in [
        (dir.path().join("absent.lex"), "absent.lex"),
        (bad, "names.lex, line 2"),
    ] {
        let cfg = voxd::tts::TtsConfig {
            enabled: true,
            model: None,
            url: None,
            api_key: None,
            voice: "joe".into(),
            workers: 1,
            threads: 1,
            onnxruntime: None,
            lexicon: Some(path),
        };
        let err = voxd::tts::open::open(&cfg, &store).err().unwrap();
        assert!(err.to_string().contains(expect), "{err}");
    }
}

/// `voxd kb pronounce` as an operator runs it: its output is a lexicon `--tts-lexicon` reads.
#[test]
fn kb_pronounce_prints_a_lexicon_of_the_words_that_do_not_come_back() {
    let dir = tempfile::tempdir().unwrap();
    let kb = dir.path().join("kb.sqlite");
    let kb = kb.to_str().unwrap();
    let voxd = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_voxd"))
            .args(args)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "voxd {args:?}: {stdout}{stderr}");
        stdout
    };
    let spoken_kb = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/spoken/kb");
    voxd(&["kb", "add", "--kb", kb, spoken_kb.to_str().unwrap()]);
    let text = voxd(&["kb", "--kb", kb, "pronounce", "--limit", "12"]);
    let lexicon = voxd::tts::lexicon::Lexicon::parse(&text, "stdout").unwrap();
    let header = text.lines().next().unwrap();
    let wrong: usize = header
        .strip_prefix("# voxd kb pronounce: ")
        .and_then(|h| h.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("header: {header}"));
    assert!(header.contains(" of 12 words"), "{text}");
    // The harbour town's Cornish names do not come back from a US English voice; its common
    // words do; every suggestion given is a line of the lexicon.
    assert!((1..=9).contains(&wrong), "{text}");
    let suggested = text.lines().filter(|l| !l.starts_with('#')).count();
    assert_eq!(lexicon.len(), suggested, "{text}");
}
