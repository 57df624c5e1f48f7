//! Client audio on its way in: decoding an append's bytes (PCM16, G.711) and handing the
//! samples to the audio stage in bounded chunks.

use tokio::sync::mpsc;

use super::audio_stage::AudioInput;
use crate::audio::g711::Law;
use crate::protocol::{InputFormat, ProtocolError};

/// Most samples in one message to the audio stage: a large append is split, so the bounded
/// queue to the stage holds at most 64 of these (4 MiB) per session.
const AUDIO_CHUNK: usize = 16_384;

/// The error for an append (JSON or binary) over the byte limit.
pub(super) fn too_large(limit: usize, event_id: Option<String>) -> ProtocolError {
    ProtocolError::new(
        "audio_too_large",
        format!("one append may carry at most {limit} bytes of audio"),
    )
    .param("audio")
    .event(event_id)
}

/// Sends samples to the audio stage in chunks of at most [`AUDIO_CHUNK`], waiting while its
/// queue is full; false once the stage has gone.
pub(super) async fn send_audio(audio_tx: &mpsc::Sender<AudioInput>, samples: Vec<f32>) -> bool {
    if samples.len() <= AUDIO_CHUNK {
        return samples.is_empty() || audio_tx.send(AudioInput::Audio(samples)).await.is_ok();
    }
    for chunk in samples.chunks(AUDIO_CHUNK) {
        if audio_tx
            .send(AudioInput::Audio(chunk.to_vec()))
            .await
            .is_err()
        {
            return false;
        }
    }
    true
}

/// Decodes raw audio bytes in the session's input format (PCM16 little-endian, G.711 μ-law or
/// A-law) to samples in [-1, 1].
pub fn decode_audio(bytes: &[u8], format: InputFormat) -> Result<Vec<f32>, ProtocolError> {
    crate::metrics::global()
        .audio_bytes_in
        .add(bytes.len() as u64);
    match format {
        InputFormat::Pcm16 { .. } => {
            if !bytes.len().is_multiple_of(2) {
                return Err(ProtocolError::new(
                    "invalid_audio_length",
                    format!(
                        "PCM16 audio needs an even number of bytes, got {}",
                        bytes.len()
                    ),
                )
                .param("audio"));
            }
            Ok(bytes
                .chunks_exact(2)
                .map(|b| i16::from_le_bytes([b[0], b[1]]) as f32 / 32768.0)
                .collect())
        }
        InputFormat::Pcmu | InputFormat::Pcma => {
            let law = if format == InputFormat::Pcmu {
                Law::Mu
            } else {
                Law::A
            };
            let mut out = Vec::with_capacity(bytes.len());
            law.decode_into(bytes, &mut out);
            Ok(out)
        }
    }
}
