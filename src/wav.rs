//! A small WAV reader and writer for client applications (the server decodes every format with
//! symphonia; a client built with only the `client` feature has this): reads PCM 8/16/24/32-bit
//! and 32-bit float, any channel count (averaged to mono), any rate (the session is told the
//! rate); writes 16-bit mono PCM, such as a session's spoken answers.

use std::path::Path;

/// Why a WAV file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum WavError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("not a WAV file: {0}")]
    Format(String),
    #[error("unsupported WAV encoding: {0} (use PCM 8/16/24/32-bit or 32-bit float)")]
    Unsupported(String),
}

/// Mono samples in [-1, 1] and their rate.
#[derive(Debug, Clone)]
pub struct Wav {
    pub samples: Vec<f32>,
    pub sample_rate: u32,
}

/// Reads a WAV file.
pub fn read(path: impl AsRef<Path>) -> Result<Wav, WavError> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|source| WavError::Io {
        path: path.display().to_string(),
        source,
    })?;
    parse(&bytes)
}

/// The 44-byte header of a 16-bit mono PCM WAV at `rate` holding `data_bytes` of samples; a
/// stream whose length is not known yet uses `u32::MAX` ("to the end of the stream").
pub fn header(rate: u32, data_bytes: u32) -> [u8; 44] {
    let mut h = [0u8; 44];
    h[0..4].copy_from_slice(b"RIFF");
    h[4..8].copy_from_slice(&data_bytes.saturating_add(36).to_le_bytes());
    h[8..12].copy_from_slice(b"WAVE");
    h[12..16].copy_from_slice(b"fmt ");
    h[16..20].copy_from_slice(&16u32.to_le_bytes());
    h[20..22].copy_from_slice(&1u16.to_le_bytes());
    h[22..24].copy_from_slice(&1u16.to_le_bytes());
    h[24..28].copy_from_slice(&rate.to_le_bytes());
    h[28..32].copy_from_slice(&(rate * 2).to_le_bytes());
    h[32..34].copy_from_slice(&2u16.to_le_bytes());
    h[34..36].copy_from_slice(&16u16.to_le_bytes());
    h[36..40].copy_from_slice(b"data");
    h[40..44].copy_from_slice(&data_bytes.to_le_bytes());
    h
}

/// Writes 16-bit little-endian mono PCM `bytes` at `rate` as a WAV file.
pub fn write_pcm16(path: impl AsRef<Path>, rate: u32, bytes: &[u8]) -> Result<(), WavError> {
    let path = path.as_ref();
    let len = u32::try_from(bytes.len())
        .map_err(|_| WavError::Unsupported("more than 4 GiB of audio".into()))?;
    let mut out = header(rate, len).to_vec();
    out.extend_from_slice(bytes);
    std::fs::write(path, out).map_err(|source| WavError::Io {
        path: path.display().to_string(),
        source,
    })
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Parses WAV bytes (RIFF/WAVE with `fmt ` and `data` chunks; WAVE_FORMAT_EXTENSIBLE accepted).
pub fn parse(b: &[u8]) -> Result<Wav, WavError> {
    if b.len() < 12 || &b[0..4] != b"RIFF" || &b[8..12] != b"WAVE" {
        return Err(WavError::Format("missing RIFF/WAVE header".into()));
    }
    let mut at = 12;
    let mut fmt: Option<(u16, u16, u32, u16)> = None;
    while at + 8 <= b.len() {
        let id = &b[at..at + 4];
        let len = u32_at(b, at + 4) as usize;
        let body = at + 8;
        let end = body.saturating_add(len).min(b.len());
        if id == b"fmt " {
            if end - body < 16 {
                return Err(WavError::Format("fmt chunk too short".into()));
            }
            let mut tag = u16_at(b, body);
            if tag == 0xFFFE && end - body >= 26 {
                tag = u16_at(b, body + 24); // the sub-format GUID starts with the real tag
            }
            fmt = Some((
                tag,
                u16_at(b, body + 2),
                u32_at(b, body + 4),
                u16_at(b, body + 14),
            ));
        } else if id == b"data" {
            let (tag, channels, rate, bits) =
                fmt.ok_or_else(|| WavError::Format("data before fmt".into()))?;
            return decode(&b[body..end], tag, channels, rate, bits);
        }
        at = body + len + (len & 1);
    }
    Err(WavError::Format("no data chunk".into()))
}

fn decode(data: &[u8], tag: u16, channels: u16, rate: u32, bits: u16) -> Result<Wav, WavError> {
    if channels == 0 || rate == 0 {
        return Err(WavError::Format("zero channels or rate".into()));
    }
    let sample: fn(&[u8]) -> f32 = match (tag, bits) {
        (1, 8) => |s| (s[0] as f32 - 128.0) / 128.0,
        (1, 16) => |s| i16::from_le_bytes([s[0], s[1]]) as f32 / 32768.0,
        (1, 24) => |s| (i32::from_le_bytes([0, s[0], s[1], s[2]]) >> 8) as f32 / 8_388_608.0,
        (1, 32) => |s| i32::from_le_bytes([s[0], s[1], s[2], s[3]]) as f32 / 2_147_483_648.0,
        (3, 32) => |s| f32::from_le_bytes([s[0], s[1], s[2], s[3]]),
        _ => return Err(WavError::Unsupported(format!("format {tag}, {bits} bits"))),
    };
    let width = bits as usize / 8;
    let frame = width * channels as usize;
    let samples = data
        .chunks_exact(frame)
        .map(|f| {
            let sum: f32 = f.chunks_exact(width).map(sample).sum();
            (sum / channels as f32).clamp(-1.0, 1.0)
        })
        .collect();
    Ok(Wav {
        samples,
        sample_rate: rate,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wav(tag: u16, channels: u16, bits: u16, data: &[u8]) -> Vec<u8> {
        let mut b = b"RIFF\0\0\0\0WAVEfmt ".to_vec();
        b.extend(16u32.to_le_bytes());
        b.extend(tag.to_le_bytes());
        b.extend(channels.to_le_bytes());
        b.extend(8000u32.to_le_bytes());
        b.extend((8000 * channels as u32 * bits as u32 / 8).to_le_bytes());
        b.extend((channels * bits / 8).to_le_bytes());
        b.extend(bits.to_le_bytes());
        b.extend(b"LIST");
        b.extend(3u32.to_le_bytes());
        b.extend([1, 2, 3, 0]); // odd-sized chunk with its pad byte
        b.extend(b"data");
        b.extend((data.len() as u32).to_le_bytes());
        b.extend(data);
        b
    }

    #[test]
    fn reads_pcm16_stereo_as_mono() {
        let mut data = Vec::new();
        for (l, r) in [(16384i16, 0i16), (-32768, -32768)] {
            data.extend(l.to_le_bytes());
            data.extend(r.to_le_bytes());
        }
        let w = parse(&wav(1, 2, 16, &data)).unwrap();
        assert_eq!(w.sample_rate, 8000);
        assert_eq!(w.samples, vec![0.25, -1.0]);
    }

    #[test]
    fn reads_float_and_24_bit() {
        let w = parse(&wav(3, 1, 32, &0.5f32.to_le_bytes())).unwrap();
        assert_eq!(w.samples, vec![0.5]);
        let w = parse(&wav(1, 1, 24, &[0, 0, 0xC0])).unwrap();
        assert_eq!(w.samples, vec![-0.5]);
    }

    #[test]
    fn rejects_what_it_cannot_read() {
        assert!(matches!(parse(b"OggS...."), Err(WavError::Format(_))));
        assert!(matches!(
            parse(&wav(2, 1, 4, &[0])),
            Err(WavError::Unsupported(_))
        ));
    }
}
