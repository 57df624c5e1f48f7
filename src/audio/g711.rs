//! G.711 μ-law and A-law (ITU-T G.711), the 8 kHz telephone codecs the Realtime API accepts as
//! `audio/pcmu` and `audio/pcma`. One byte per sample; decoding is a table lookup.

use std::sync::OnceLock;

fn ulaw_decode(byte: u8) -> i16 {
    let u = !byte;
    let exponent = (u >> 4) & 0x07;
    let mantissa = (u & 0x0F) as i32;
    let magnitude = (((mantissa << 3) + 0x84) << exponent) - 0x84;
    (if u & 0x80 != 0 { -magnitude } else { magnitude }) as i16
}

fn alaw_decode(byte: u8) -> i16 {
    let a = byte ^ 0x55;
    let exponent = (a >> 4) & 0x07;
    let mantissa = (a & 0x0F) as i32;
    let magnitude = if exponent == 0 {
        (mantissa << 4) + 8
    } else {
        ((mantissa << 4) + 0x108) << (exponent - 1)
    };
    // In A-law a set sign bit means positive.
    (if a & 0x80 != 0 { magnitude } else { -magnitude }) as i16
}

fn table(decode: fn(u8) -> i16) -> [i16; 256] {
    let mut t = [0i16; 256];
    for (i, v) in t.iter_mut().enumerate() {
        *v = decode(i as u8);
    }
    t
}

/// The G.711 law of a byte stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Law {
    /// μ-law (`audio/pcmu`, North America and Japan).
    Mu,
    /// A-law (`audio/pcma`, elsewhere).
    A,
}

impl Law {
    fn table(self) -> &'static [i16; 256] {
        static MU: OnceLock<[i16; 256]> = OnceLock::new();
        static A: OnceLock<[i16; 256]> = OnceLock::new();
        match self {
            Law::Mu => MU.get_or_init(|| table(ulaw_decode)),
            Law::A => A.get_or_init(|| table(alaw_decode)),
        }
    }

    /// Decodes bytes to samples in [-1, 1], appending to `out`.
    pub fn decode_into(self, bytes: &[u8], out: &mut Vec<f32>) {
        let t = self.table();
        out.extend(bytes.iter().map(|&b| t[b as usize] as f32 / 32768.0));
    }

    /// Encodes one 16-bit sample (for clients and tests).
    pub fn encode(self, sample: i16) -> u8 {
        match self {
            Law::Mu => ulaw_encode(sample),
            Law::A => alaw_encode(sample),
        }
    }
}

fn segment(magnitude: i32, base: i32) -> u8 {
    let mut seg = 0u8;
    let mut limit = base;
    while seg < 7 && magnitude >= limit {
        seg += 1;
        limit <<= 1;
    }
    seg
}

fn ulaw_encode(sample: i16) -> u8 {
    const BIAS: i32 = 0x84;
    let s = sample as i32;
    let sign = if s < 0 { 0x80 } else { 0 };
    let magnitude = (s.abs().min(32635)) + BIAS;
    let exponent = segment(magnitude, 0x100);
    let mantissa = ((magnitude >> (exponent + 3)) & 0x0F) as u8;
    !(sign | (exponent << 4) | mantissa)
}

fn alaw_encode(sample: i16) -> u8 {
    let s = sample as i32;
    let (sign, magnitude) = if s >= 0 {
        (0x80u8, s)
    } else {
        (0x00u8, -s - 1)
    };
    let magnitude = magnitude.min(32767);
    let exponent = segment(magnitude, 0x100);
    let mantissa = if exponent == 0 {
        ((magnitude >> 4) & 0x0F) as u8
    } else {
        ((magnitude >> (exponent + 3)) & 0x0F) as u8
    };
    (sign | (exponent << 4) | mantissa) ^ 0x55
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_code_points() {
        assert_eq!(ulaw_decode(0xFF), 0);
        assert_eq!(ulaw_decode(0x7F), 0);
        assert_eq!(ulaw_decode(0x00), -32124);
        assert_eq!(ulaw_decode(0x80), 32124);
        assert_eq!(alaw_decode(0xD5), 8);
        assert_eq!(alaw_decode(0x55), -8);
        assert_eq!(alaw_decode(0xAA), 32256);
        assert_eq!(alaw_decode(0x2A), -32256);
    }

    #[test]
    fn encode_then_decode_is_within_the_quantisation_step() {
        for law in [Law::Mu, Law::A] {
            for s in (-32768i32..32767).step_by(7) {
                let mut out = Vec::new();
                law.decode_into(&[law.encode(s as i16)], &mut out);
                let back = (out[0] * 32768.0) as i32;
                // Steps grow with level: 1/16 of the magnitude is a safe bound, plus the floor.
                let tolerance = (s.abs() / 16).max(16);
                assert!((back - s).abs() <= tolerance, "{law:?}: {s} -> {back}");
            }
        }
    }

    #[test]
    fn decodes_what_sox_encoded_close_to_the_original() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data");
        let original =
            crate::audio::decode_file(&dir.join("LDC93S1_pcms16le_1_8000.wav"), Default::default())
                .unwrap()
                .samples;
        for (file, law) in [
            ("LDC93S1_8000.ulaw", Law::Mu),
            ("LDC93S1_8000.alaw", Law::A),
        ] {
            let bytes = std::fs::read(dir.join(file)).unwrap();
            assert_eq!(bytes.len(), original.len());
            let mut decoded = Vec::new();
            law.decode_into(&bytes, &mut decoded);
            let snr_db = |decoded: &[f32]| {
                let signal: f64 = original.iter().map(|&x| (x as f64).powi(2)).sum();
                let noise: f64 = original
                    .iter()
                    .zip(decoded)
                    .map(|(&a, &b)| ((a - b) as f64).powi(2))
                    .sum();
                10.0 * (signal / noise).log10()
            };
            // G.711 gives about 35-38 dB on speech; a wrong law or bit order gives < 0 dB.
            let theirs = snr_db(&decoded);
            assert!(theirs > 30.0, "{file}: SNR {theirs:.1} dB");
            // Our encoder rounds differently from sox in the last step, and is at least as good.
            let mut ours = Vec::new();
            let bytes: Vec<u8> = original
                .iter()
                .map(|&x| law.encode((x * 32768.0) as i16))
                .collect();
            law.decode_into(&bytes, &mut ours);
            let ours = snr_db(&ours);
            assert!(
                ours > theirs - 1.0,
                "{file}: ours {ours:.1} dB, sox {theirs:.1} dB"
            );
        }
    }
}
