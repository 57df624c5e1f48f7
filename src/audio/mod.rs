//! Audio in: decoding files and uploads to samples ([`decode`], [`g711`] for telephone audio)
//! and converting any sample rate to the 16 kHz that the speech models use ([`resample`]).
//!
//! Everything downstream of this module sees mono `f32` samples at [`MODEL_RATE`].

pub mod decode;
pub mod encode;
pub mod g711;
pub mod opus;
pub mod resample;

pub use decode::{
    decode_bytes, decode_bytes_at, decode_file, ChannelSelect, DecodeLimits, DecodedAudio,
};
pub use resample::StreamResampler;

/// The sample rate of everything after the audio stage.
pub const MODEL_RATE: u32 = 16_000;

/// Errors of the audio stage; each names what was wrong with the input.
#[derive(Debug, thiserror::Error)]
pub enum AudioError {
    #[error("unsupported or unrecognised audio format: {0}")]
    Unsupported(String),
    #[error("the audio could not be decoded: {0}")]
    Decode(String),
    #[error("the file has no audio track")]
    NoAudioTrack,
    #[error("channel {requested} was asked for but the audio has {available} channel(s)")]
    ChannelOutOfRange { requested: usize, available: usize },
    #[error("the audio contains no samples")]
    Empty,
    #[error("the audio is longer than the limit of {limit_s} s")]
    TooLong { limit_s: u64 },
    #[error("decoding was cancelled")]
    Cancelled,
    #[error("sample rate {0} Hz is not supported (8000 to 192000 Hz)")]
    BadRate(u32),
    #[error("{path}: {source}")]
    Io {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Decodes `bytes` (any supported container) to mono 16 kHz within `limits`: memory grows with
/// the audio's length at 16 kHz whatever the source's rate.
pub fn load_16k(
    bytes: Vec<u8>,
    ext_hint: Option<&str>,
    channel: ChannelSelect,
    limits: &DecodeLimits,
) -> Result<DecodedAudio, AudioError> {
    decode_bytes_at(bytes, ext_hint, channel, MODEL_RATE, limits)
}

/// Resamples decoded audio to [`MODEL_RATE`] (a no-op if it already is).
pub fn to_model_rate(decoded: DecodedAudio) -> Result<DecodedAudio, AudioError> {
    if decoded.sample_rate == MODEL_RATE {
        return Ok(decoded);
    }
    let samples = resample::resample_all(&decoded.samples, decoded.sample_rate, MODEL_RATE)?;
    Ok(DecodedAudio {
        samples,
        sample_rate: MODEL_RATE,
        ..decoded
    })
}
