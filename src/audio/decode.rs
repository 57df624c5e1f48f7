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

use super::{AudioError, StreamResampler};

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

/// Bounds on one decode, for untrusted input.
#[derive(Clone, Default)]
pub struct DecodeLimits {
    /// Longest audio accepted, in seconds. Checked against the container's declared length
    /// before decoding, and again before each packet's samples are kept.
    pub max_seconds: Option<f64>,
    /// Checked between packets: when it returns true the decode stops with
    /// [`AudioError::Cancelled`] (the client went away, the server stops).
    pub cancelled: Option<std::sync::Arc<dyn Fn() -> bool + Send + Sync>>,
}

impl DecodeLimits {
    /// At most `seconds` of audio.
    pub fn max_seconds(seconds: f64) -> Self {
        DecodeLimits {
            max_seconds: Some(seconds),
            cancelled: None,
        }
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

/// Decodes audio held in memory at its own sample rate. `max_seconds` bounds the decoded length.
pub fn decode_bytes(
    bytes: Vec<u8>,
    ext_hint: Option<&str>,
    channel: ChannelSelect,
    max_seconds: Option<f64>,
) -> Result<DecodedAudio, AudioError> {
    let limits = DecodeLimits {
        max_seconds,
        cancelled: None,
    };
    decode_guarded(bytes, ext_hint, channel, None, &limits)
}

/// Decodes audio held in memory straight to `rate` Hz, resampling packet by packet, so memory
/// grows with the audio's length at `rate`, never at the source's rate.
pub fn decode_bytes_at(
    bytes: Vec<u8>,
    ext_hint: Option<&str>,
    channel: ChannelSelect,
    rate: u32,
    limits: &DecodeLimits,
) -> Result<DecodedAudio, AudioError> {
    decode_guarded(bytes, ext_hint, channel, Some(rate), limits)
}

fn decode_guarded(
    bytes: Vec<u8>,
    ext_hint: Option<&str>,
    channel: ChannelSelect,
    out_rate: Option<u32>,
    limits: &DecodeLimits,
) -> Result<DecodedAudio, AudioError> {
    let ext = ext_hint.map(str::to_owned);
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
        decode_inner(bytes, ext.as_deref(), channel, out_rate, limits)
    }))
    .unwrap_or_else(|_| {
        Err(AudioError::Decode(
            "the decoder failed on malformed data".into(),
        ))
    })
}

/// Turns one channel layout into mono samples, then into the output rate.
struct Sink {
    out_rate: Option<u32>,
    resampler: Option<StreamResampler>,
    mono: Vec<f32>,
    out: Vec<f32>,
    /// The decoder's packets, interleaved.
    buf: Option<SampleBuffer<f32>>,
    /// Output samples so far, counted at the output rate (fractional across rate changes).
    out_samples: f64,
}

impl Sink {
    /// Takes one decoded packet: checks its rate, channels and the length limit (before its
    /// samples are kept), then keeps the selected channel or the mix. Returns the packet's rate
    /// and channel count.
    fn take(
        &mut self,
        decoded: symphonia::core::audio::AudioBufferRef<'_>,
        channel: ChannelSelect,
        limits: &DecodeLimits,
    ) -> Result<(u32, usize), AudioError> {
        let spec = *decoded.spec();
        let rate = spec.rate;
        let channels = spec.channels.count();
        if !(8_000..=192_000).contains(&rate) {
            return Err(AudioError::BadRate(rate));
        }
        if channels == 0 {
            return Err(AudioError::Decode("a packet has no channels".into()));
        }
        if let ChannelSelect::Index(i) = channel {
            if i >= channels {
                return Err(AudioError::ChannelOutOfRange {
                    requested: i,
                    available: channels,
                });
            }
        }
        self.out_samples += self.out_len(decoded.frames(), rate);
        if let Some(max) = limits.max_seconds {
            let out_hz = self.out_rate.unwrap_or(rate) as f64;
            if self.out_samples > max * out_hz {
                return Err(too_long(max));
            }
        }
        let needed = decoded.capacity() as u64;
        if self
            .buf
            .as_ref()
            .is_none_or(|b| b.capacity() < needed as usize)
        {
            self.buf = Some(SampleBuffer::new(needed, spec));
        }
        let b = self.buf.as_mut().expect("just set");
        b.copy_interleaved_ref(decoded);
        let interleaved = b.samples();
        match channel {
            ChannelSelect::Mix => {
                let scale = 1.0 / channels as f32;
                self.mono.extend(
                    interleaved
                        .chunks_exact(channels)
                        .map(|frame| frame.iter().sum::<f32>() * scale),
                );
            }
            ChannelSelect::Index(i) => self
                .mono
                .extend(interleaved.chunks_exact(channels).map(|f| f[i])),
        }
        self.push(rate)?;
        Ok((rate, channels))
    }

    /// Samples at the output rate that `frames` frames at `rate` become.
    fn out_len(&self, frames: usize, rate: u32) -> f64 {
        match self.out_rate {
            Some(to) => frames as f64 * to as f64 / rate as f64,
            None => frames as f64,
        }
    }

    fn push(&mut self, rate: u32) -> Result<(), AudioError> {
        let Some(to) = self.out_rate else {
            self.out.append(&mut self.mono);
            return Ok(());
        };
        if self
            .resampler
            .as_ref()
            .is_some_and(|r| r.input_rate() != rate)
        {
            // The stream changed rate: finish the old stretch, start a new one.
            if let Some(mut r) = self.resampler.take() {
                r.flush(&mut self.out);
            }
        }
        if self.resampler.is_none() {
            self.resampler = Some(StreamResampler::new(rate, to)?);
        }
        if let Some(r) = self.resampler.as_mut() {
            r.push(&self.mono, &mut self.out);
        }
        self.mono.clear();
        Ok(())
    }

    fn finish(mut self) -> Vec<f32> {
        if let Some(mut r) = self.resampler.take() {
            r.flush(&mut self.out);
        }
        self.out
    }
}

fn too_long(max: f64) -> AudioError {
    AudioError::TooLong {
        limit_s: max as u64,
    }
}

fn decode_inner(
    bytes: Vec<u8>,
    ext_hint: Option<&str>,
    channel: ChannelSelect,
    out_rate: Option<u32>,
    limits: &DecodeLimits,
) -> Result<DecodedAudio, AudioError> {
    if bytes.is_empty() {
        return Err(AudioError::Empty);
    }
    if let Some(r) = out_rate {
        if !(8_000..=192_000).contains(&r) {
            return Err(AudioError::BadRate(r));
        }
    }
    let cancelled = || limits.cancelled.as_ref().is_some_and(|c| c());
    let Opened {
        mut format,
        mut decoder,
        track_id,
        mut rate,
        mut channels,
    } = open(bytes, ext_hint, limits)?;
    let mut sink = Sink {
        out_rate,
        resampler: None,
        mono: Vec::new(),
        out: Vec::new(),
        buf: None,
        out_samples: 0.0,
    };
    let mut bad_packets = 0usize;
    let mut good_packets = 0usize;
    loop {
        if cancelled() {
            return Err(AudioError::Cancelled);
        }
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
        (rate, channels) = sink.take(decoded, channel, limits)?;
    }

    let samples = sink.finish();
    if samples.is_empty() {
        return Err(AudioError::Empty);
    }
    if !(8_000..=192_000).contains(&rate) {
        return Err(AudioError::BadRate(rate));
    }
    Ok(DecodedAudio {
        samples,
        sample_rate: out_rate.unwrap_or(rate),
        source_channels: channels,
    })
}

/// A container opened on its first audio track, with the track's decoder.
struct Opened {
    format: Box<dyn symphonia::core::formats::FormatReader>,
    decoder: Box<dyn symphonia::core::codecs::Decoder>,
    track_id: u32,
    /// The track's declared rate and channels (0 when it declares none).
    rate: u32,
    channels: usize,
}

/// Probes the container and opens its first audio track; a file whose declared length is over
/// the limit is refused before anything is decoded.
fn open(
    bytes: Vec<u8>,
    ext_hint: Option<&str>,
    limits: &DecodeLimits,
) -> Result<Opened, AudioError> {
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
    let format = probed.format;
    let track = format
        .tracks()
        .iter()
        .find(|t| t.codec_params.codec != CODEC_TYPE_NULL)
        .ok_or(AudioError::NoAudioTrack)?;
    let rate = track.codec_params.sample_rate.unwrap_or(0);
    // The container's declared length, where it has one (WAV, FLAC, Ogg).
    if let (Some(max), Some(frames)) = (limits.max_seconds, track.codec_params.n_frames) {
        if rate > 0 && frames as f64 > max * rate as f64 {
            return Err(too_long(max));
        }
    }
    let decoder = symphonia::default::get_codecs()
        .make(&track.codec_params, &DecoderOptions::default())
        .map_err(|e| AudioError::Unsupported(e.to_string()))?;
    Ok(Opened {
        track_id: track.id,
        rate,
        channels: track.codec_params.channels.map(|c| c.count()).unwrap_or(0),
        format,
        decoder,
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
