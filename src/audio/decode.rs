//! Decoding WAV, FLAC, MP3 and Ogg/Vorbis with symphonia into mono `f32` samples.
//!
//! Uploads are untrusted: decoding runs under `catch_unwind` so a malformed file that trips a
//! decoder bug becomes an [`AudioError::Decode`] rather than a crashed worker.

use std::io::Cursor;
use std::path::Path;
use std::str::FromStr;

use symphonia::core::audio::SampleBuffer;
use symphonia::core::codecs::{DecoderOptions, CODEC_TYPE_NULL};
use symphonia::core::errors::Error as SymError;
use symphonia::core::formats::FormatOptions;
use symphonia::core::io::MediaSourceStream;
use symphonia::core::meta::MetadataOptions;
use symphonia::core::probe::Hint;
use tracing::debug;

use super::AudioError;

/// Which channel(s) of multi-channel audio to keep.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ChannelSelect {
    /// Average all channels (the default).
    #[default]
    Mix,
    /// Keep one channel (0 = left, 1 = right).
    Index(usize),
}

impl FromStr for ChannelSelect {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "mix" | "mono" | "downmix" => Ok(ChannelSelect::Mix),
            "left" | "l" => Ok(ChannelSelect::Index(0)),
            "right" | "r" => Ok(ChannelSelect::Index(1)),
            n => n
                .parse::<usize>()
                .map(ChannelSelect::Index)
                .map_err(|_| format!("`{s}` is not a channel: use mix, left, right or a number")),
        }
    }
}

/// Mono audio and where it came from.
#[derive(Debug, Clone)]
pub struct DecodedAudio {
    /// Mono samples in [-1, 1].
    pub samples: Vec<f32>,
    pub sample_rate: u32,
    /// Channels in the source.
    pub source_channels: usize,
}

impl DecodedAudio {
    pub fn duration_s(&self) -> f64 {
        self.samples.len() as f64 / self.sample_rate as f64
    }
}

/// Decodes a file; the extension helps pick the format.
pub fn decode_file(path: &Path, channel: ChannelSelect) -> Result<DecodedAudio, AudioError> {
    let bytes = std::fs::read(path).map_err(|source| AudioError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let ext = path.extension().and_then(|e| e.to_str());
    decode_bytes(bytes, ext, channel, None)
}

/// Decodes audio held in memory. `max_seconds` bounds the decoded length.
pub fn decode_bytes(
    bytes: Vec<u8>,
    ext_hint: Option<&str>,
    channel: ChannelSelect,
    max_seconds: Option<f64>,
) -> Result<DecodedAudio, AudioError> {
    let ext = ext_hint.map(str::to_owned);
    std::panic::catch_unwind(move || decode_inner(bytes, ext.as_deref(), channel, max_seconds))
        .unwrap_or_else(|_| {
            Err(AudioError::Decode(
                "the decoder failed on malformed data".into(),
            ))
        })
}

fn decode_inner(
    bytes: Vec<u8>,
    ext_hint: Option<&str>,
    channel: ChannelSelect,
    max_seconds: Option<f64>,
) -> Result<DecodedAudio, AudioError> {
    if bytes.is_empty() {
        return Err(AudioError::Empty);
    }
    let mss = MediaSourceStream::new(Box::new(Cursor::new(bytes)), Default::default());
    let mut hint = Hint::new();
    if let Some(ext) = ext_hint {
        hint.with_extension(ext);
    }
    let probed = symphonia::default::get_probe()
        .format(
            &hint,
            mss,
            &FormatOptions::default(),
            &MetadataOptions::default(),
        )
        .map_err(|e| AudioError::Unsupported(e.to_string()))?;
    let mut format = probed.format;
    let track = format
        .tracks()
        .iter()
        .find(|t| t.codec_params.codec != CODEC_TYPE_NULL)
        .ok_or(AudioError::NoAudioTrack)?;
    let track_id = track.id;
    let mut decoder = symphonia::default::get_codecs()
        .make(&track.codec_params, &DecoderOptions::default())
        .map_err(|e| AudioError::Unsupported(e.to_string()))?;

    let mut rate = track.codec_params.sample_rate.unwrap_or(0);
    let mut channels = track.codec_params.channels.map(|c| c.count()).unwrap_or(0);
    let mut mono: Vec<f32> = Vec::new();
    let mut buf: Option<SampleBuffer<f32>> = None;
    let mut bad_packets = 0usize;
    let mut good_packets = 0usize;

    loop {
        let packet = match format.next_packet() {
            Ok(p) => p,
            Err(SymError::IoError(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
            Err(SymError::ResetRequired) => break,
            Err(e) => {
                if good_packets == 0 {
                    return Err(AudioError::Decode(e.to_string()));
                }
                debug!(error = %e, "stopping at a damaged container packet");
                break;
            }
        };
        if packet.track_id() != track_id {
            continue;
        }
        let decoded = match decoder.decode(&packet) {
            Ok(d) => d,
            Err(SymError::DecodeError(e)) => {
                bad_packets += 1;
                debug!(error = e, "skipping undecodable packet");
                if bad_packets > 50 && good_packets == 0 {
                    return Err(AudioError::Decode(e.to_string()));
                }
                continue;
            }
            Err(e) => return Err(AudioError::Decode(e.to_string())),
        };
        good_packets += 1;
        let spec = *decoded.spec();
        rate = spec.rate;
        channels = spec.channels.count();
        if let ChannelSelect::Index(i) = channel {
            if i >= channels {
                return Err(AudioError::ChannelOutOfRange {
                    requested: i,
                    available: channels,
                });
            }
        }
        let needed = decoded.capacity() as u64;
        if buf.as_ref().is_none_or(|b| b.capacity() < needed as usize) {
            buf = Some(SampleBuffer::new(needed, spec));
        }
        let b = buf.as_mut().expect("just set");
        b.copy_interleaved_ref(decoded);
        let interleaved = b.samples();
        match channel {
            ChannelSelect::Mix => {
                let scale = 1.0 / channels as f32;
                mono.extend(
                    interleaved
                        .chunks_exact(channels)
                        .map(|frame| frame.iter().sum::<f32>() * scale),
                );
            }
            ChannelSelect::Index(i) => {
                mono.extend(interleaved.chunks_exact(channels).map(|f| f[i]))
            }
        }
        if let Some(max) = max_seconds {
            if rate > 0 && mono.len() as f64 > max * rate as f64 {
                return Err(AudioError::TooLong {
                    limit_s: max as u64,
                });
            }
        }
    }

    if mono.is_empty() {
        return Err(AudioError::Empty);
    }
    if !(8_000..=192_000).contains(&rate) {
        return Err(AudioError::BadRate(rate));
    }
    Ok(DecodedAudio {
        samples: mono,
        sample_rate: rate,
        source_channels: channels,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_names_parse() {
        assert_eq!(
            "left".parse::<ChannelSelect>().unwrap(),
            ChannelSelect::Index(0)
        );
        assert_eq!(
            "RIGHT".parse::<ChannelSelect>().unwrap(),
            ChannelSelect::Index(1)
        );
        assert_eq!(
            "3".parse::<ChannelSelect>().unwrap(),
            ChannelSelect::Index(3)
        );
        assert_eq!("mix".parse::<ChannelSelect>().unwrap(), ChannelSelect::Mix);
        assert!("middle".parse::<ChannelSelect>().is_err());
    }

    #[test]
    fn garbage_and_empty_input_are_typed_errors() {
        let noise: Vec<u8> = (0..4096u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        assert!(matches!(
            decode_bytes(noise, None, ChannelSelect::Mix, None),
            Err(AudioError::Unsupported(_)) | Err(AudioError::Decode(_))
        ));
        assert!(matches!(
            decode_bytes(vec![], None, ChannelSelect::Mix, None),
            Err(AudioError::Empty)
        ));
    }
}
