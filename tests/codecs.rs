//! Opus as WebRTC carries it (48 kHz, 20 ms packets) with the system's libopus: speech survives
//! the round trip (heard back by voxd's Whisper), lost packets are concealed, and bad packets or
//! frame sizes are typed errors after which the codec goes on.

mod common;

use voxd::asr::{Asr, Request};
use voxd::audio::opus::{self, Decoder, Encoder, OpusError, FRAME};
use voxd::audio::resample::resample_all;

/// JFK through Opus at 32 kbit/s, 20 ms frames; every `lose`-th packet lost (0: none).
fn round_trip(lose: usize) -> (Vec<f32>, usize) {
    let speech = common::audio_at("jfk.wav", opus::RATE);
    let mut encoder = Encoder::new(32_000).unwrap();
    let mut decoder = Decoder::new().unwrap();
    let (mut out, mut bytes) = (Vec::new(), 0);
    for (i, frame) in speech.chunks_exact(FRAME).enumerate() {
        let packet = encoder.encode(frame).unwrap();
        bytes += packet.len();
        let lost = lose > 0 && i % lose == lose - 1;
        out.extend(decoder.decode((!lost).then_some(&packet[..])).unwrap());
    }
    (out, bytes)
}

async fn heard(samples: &[f32]) -> String {
    let at16 = resample_all(samples, opus::RATE, 16_000).unwrap();
    common::pool()
        .transcribe(Request::new(at16))
        .await
        .unwrap()
        .text
}

#[tokio::test]
async fn speech_survives_opus_and_lost_packets_are_concealed() {
    assert!(opus::version().unwrap().starts_with("libopus"));
    let reference = common::reference("jfk.wav", "");
    let (clean, bytes) = round_trip(0);
    // 11 s of speech at about 32 kbit/s: far less than its 1 MB of 48 kHz PCM16.
    assert!((20_000..70_000).contains(&bytes), "{bytes} bytes");
    let original = common::audio_at("jfk.wav", opus::RATE);
    assert_eq!(clean.len(), original.len() / FRAME * FRAME);
    let e = voxd::wer::wer(&reference, &heard(&clean).await);
    assert!(e <= 0.1, "WER {e:.2} after Opus");
    // One packet in ten lost: concealed, each with a frame of audio, and still understood.
    let (concealed, _) = round_trip(10);
    assert_eq!(concealed.len(), clean.len());
    let e = voxd::wer::wer(&reference, &heard(&concealed).await);
    assert!(e <= 0.25, "WER {e:.2} with 10 % loss");
}

#[test]
fn bad_packets_and_frame_sizes_are_errors_and_the_codec_goes_on() {
    let mut decoder = Decoder::new().unwrap();
    let mut encoder = Encoder::new(24_000).unwrap();
    assert!(matches!(
        encoder.encode(&[0.0; 1000]),
        Err(OpusError::FrameSize(1000))
    ));
    // Garbage of every length a hostile peer might send, including none and too much.
    for len in [0usize, 1, 3, 17, 200, 1275, 5000] {
        let junk: Vec<u8> = (0..len).map(|i| (i * 37 + 11) as u8).collect();
        let _ = decoder.decode(Some(&junk));
    }
    assert!(decoder.decode(Some(&[0u8; 5000])).is_err());
    let packet = encoder.encode(&[0.1; FRAME]).unwrap();
    assert_eq!(decoder.decode(Some(&packet)).unwrap().len(), FRAME);
}
