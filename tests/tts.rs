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
    assert!(
        wer("Tickets cost twelve euros.", &heard) <= 0.25,
        "{heard:?}"
    );
}
