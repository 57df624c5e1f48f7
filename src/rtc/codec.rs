//! The audio codecs of a call's track: Opus at 48 kHz (what browsers send), and G.711 μ-law and
//! A-law at 8 kHz (PCMU/PCMA, which the OpenAI Realtime API also answers with, for gateways and
//! phones that speak only those). 20 ms frames either way; a lost packet is concealed (Opus by its
//! own loss concealment, G.711 by the last frame, fading).

use str0m::format::Codec;

use crate::audio::g711::Law;
use crate::audio::opus::{self, OpusError};

/// Opus bitrate of the answer's audio.
const OPUS_BITRATE: i32 = 32_000;

/// A codec a call's audio track can carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrackCodec {
    Opus,
    Pcmu,
    Pcma,
}

impl TrackCodec {
    /// The codecs voxd answers with, most preferred first.
    pub const PREFERRED: [TrackCodec; 3] = [TrackCodec::Opus, TrackCodec::Pcmu, TrackCodec::Pcma];

    /// The track codec for a negotiated codec, if voxd speaks it.
    pub fn of(codec: Codec) -> Option<Self> {
        match codec {
            Codec::Opus => Some(TrackCodec::Opus),
            Codec::PCMU => Some(TrackCodec::Pcmu),
            Codec::PCMA => Some(TrackCodec::Pcma),
            _ => None,
        }
    }

    /// The codec as the connection names it.
    pub fn codec(self) -> Codec {
        match self {
            TrackCodec::Opus => Codec::Opus,
            TrackCodec::Pcmu => Codec::PCMU,
            TrackCodec::Pcma => Codec::PCMA,
        }
    }

    /// Samples per second on the track (and of its RTP clock).
    pub fn rate(self) -> u32 {
        match self {
            TrackCodec::Opus => opus::RATE,
            TrackCodec::Pcmu | TrackCodec::Pcma => 8_000,
        }
    }

    /// Samples in one 20 ms frame.
    pub fn frame(self) -> usize {
        self.rate() as usize / 50
    }

    fn law(self) -> Option<Law> {
        match self {
            TrackCodec::Opus => None,
            TrackCodec::Pcmu => Some(Law::Mu),
            TrackCodec::Pcma => Some(Law::A),
        }
    }
}

/// Decodes one codec's packets to samples in [-1, 1] at the codec's rate.
pub struct TrackDecoder {
    codec: TrackCodec,
    opus: Option<opus::Decoder>,
    /// G.711: the last frame, for concealing a lost one; and how many were lost in a row.
    last: Vec<f32>,
    lost: u32,
}

impl TrackDecoder {
    pub fn new(codec: TrackCodec) -> Result<Self, OpusError> {
        Ok(TrackDecoder {
            codec,
            opus: match codec {
                TrackCodec::Opus => Some(opus::Decoder::new()?),
                _ => None,
            },
            last: Vec::new(),
            lost: 0,
        })
    }

    pub fn codec(&self) -> TrackCodec {
        self.codec
    }

    /// One packet (`None`: one that was lost).
    pub fn decode(&mut self, packet: Option<&[u8]>) -> Result<Vec<f32>, OpusError> {
        if let Some(decoder) = self.opus.as_mut() {
            return decoder.decode(packet);
        }
        let law = self.codec.law().expect("G.711 has a law");
        match packet {
            Some(bytes) => {
                // At most one second in a packet: a peer cannot make voxd allocate more.
                let bytes = &bytes[..bytes.len().min(self.codec.rate() as usize)];
                let mut out = Vec::with_capacity(bytes.len());
                law.decode_into(bytes, &mut out);
                self.last.clone_from(&out);
                self.lost = 0;
                Ok(out)
            }
            None => {
                // The last frame again, quieter each time; silence after 100 ms of loss.
                self.lost += 1;
                let gain = (1.0 - 0.2 * self.lost as f32).max(0.0);
                let mut out = self.last.clone();
                out.resize(self.codec.frame(), 0.0);
                out.iter_mut().for_each(|s| *s *= gain);
                Ok(out)
            }
        }
    }
}

/// Encodes 20 ms frames at the codec's rate.
pub struct TrackEncoder {
    codec: TrackCodec,
    opus: Option<opus::Encoder>,
}

impl TrackEncoder {
    pub fn new(codec: TrackCodec) -> Result<Self, OpusError> {
        Ok(TrackEncoder {
            codec,
            opus: match codec {
                TrackCodec::Opus => Some(opus::Encoder::new(OPUS_BITRATE)?),
                _ => None,
            },
        })
    }

    pub fn codec(&self) -> TrackCodec {
        self.codec
    }

    /// One frame of [`TrackCodec::frame`] samples.
    pub fn encode(&mut self, frame: &[f32]) -> Result<Vec<u8>, OpusError> {
        if let Some(encoder) = self.opus.as_mut() {
            return encoder.encode(frame);
        }
        let law = self.codec.law().expect("G.711 has a law");
        Ok(frame
            .iter()
            .map(|s| law.encode((s.clamp(-1.0, 1.0) * 32767.0).round() as i16))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tone(rate: u32, n: usize) -> Vec<f32> {
        (0..n)
            .map(|i| 0.5 * (i as f32 * 440.0 * std::f32::consts::TAU / rate as f32).sin())
            .collect()
    }

    #[test]
    fn g711_frames_go_round_the_codec_and_losses_fade_out() {
        for codec in [TrackCodec::Pcmu, TrackCodec::Pcma] {
            let mut enc = TrackEncoder::new(codec).unwrap();
            let mut dec = TrackDecoder::new(codec).unwrap();
            let frame = tone(codec.rate(), codec.frame());
            let packet = enc.encode(&frame).unwrap();
            assert_eq!(packet.len(), 160, "one byte a sample, 20 ms at 8 kHz");
            let back = dec.decode(Some(&packet)).unwrap();
            let err = frame
                .iter()
                .zip(&back)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f32::max);
            assert!(err < 0.02, "{codec:?}: {err}");
            let concealed = dec.decode(None).unwrap();
            assert_eq!(concealed.len(), 160);
            let loud = |x: &[f32]| x.iter().map(|s| s.abs()).fold(0.0, f32::max);
            assert!(loud(&concealed) > 0.3 && loud(&concealed) < loud(&back));
            for _ in 0..5 {
                dec.decode(None).unwrap();
            }
            assert_eq!(
                loud(&dec.decode(None).unwrap()),
                0.0,
                "silence after long loss"
            );
        }
    }
}
