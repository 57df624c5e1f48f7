//! Encoding audio for a client: samples at any rate to a wire format (16-bit PCM at its rate, or
//! G.711 μ-law / A-law at 8 kHz), for spoken answers and `/v1/audio/speech`.

use super::g711::Law;
use super::resample::resample_all;
use super::AudioError;
use crate::protocol::InputFormat;

/// Mono `samples` (-1..1) at `rate`, resampled and encoded as `format`.
pub fn encode(samples: &[f32], rate: u32, format: InputFormat) -> Result<Vec<u8>, AudioError> {
    let at = resample_all(samples, rate, format.rate())?;
    let pcm = at
        .iter()
        .map(|s| (s.clamp(-1.0, 1.0) * 32767.0).round() as i16);
    Ok(match format {
        InputFormat::Pcm16 { .. } => pcm.flat_map(i16::to_le_bytes).collect(),
        InputFormat::Pcmu => pcm.map(|s| Law::Mu.encode(s)).collect(),
        InputFormat::Pcma => pcm.map(|s| Law::A.encode(s)).collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn g711_is_one_byte_a_sample_at_8k_and_pcm_two_at_its_rate() {
        let tone: Vec<f32> = (0..22_050).map(|i| (i as f32 * 0.05).sin() * 0.5).collect();
        let ulaw = encode(&tone, 22_050, InputFormat::Pcmu).unwrap();
        assert!((7_990..=8_010).contains(&ulaw.len()), "{}", ulaw.len());
        let pcm = encode(&tone, 22_050, InputFormat::Pcm16 { rate: 24_000 }).unwrap();
        assert!((47_980..=48_020).contains(&pcm.len()), "{}", pcm.len());
        // μ-law decodes back to the tone, within its quantisation.
        let mut back = Vec::new();
        Law::Mu.decode_into(&ulaw, &mut back);
        let peak = back.iter().fold(0f32, |m, s| m.max(s.abs()));
        assert!((0.45..0.55).contains(&peak), "{peak}");
    }
}
