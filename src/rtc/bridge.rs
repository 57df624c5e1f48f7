//! Between a WebRTC peer and a realtime session: the `oai-events` data channel carries the same
//! JSON events as the WebSocket, except the answer's audio, which goes out on the audio track
//! (Opus, or G.711 when that is what the peer speaks; 20 ms packets, paced in real time) instead
//! of `response.output_audio.delta` events. Audio from the peer's track is decoded (in whichever
//! negotiated codec each packet comes) and handed to the session as its input.
//!
//! The server owns playback here, so it also says what the peer hears:
//! `output_audio_buffer.started` when an answer's audio starts, `.stopped` when it has all been
//! sent, `.cleared` when it is cut (the person talks over it, or the client sends
//! `output_audio_buffer.clear`), and then truncates the answer in the conversation at what was
//! actually played (`conversation.item.truncate`), which a WebSocket client has to report itself.

use std::collections::VecDeque;

use axum::extract::ws::Message;
use base64::Engine;
use serde_json::{json, Value};

use super::codec::{TrackCodec, TrackDecoder, TrackEncoder};
use crate::audio::opus::OpusError;
use crate::audio::resample::StreamResampler;

/// The session's audio rates over WebRTC: PCM16 at 24 kHz both ways (its default; a client's
/// `session.update` cannot change the formats, which the audio track fixes).
pub const SESSION_RATE: u32 = 24_000;
/// Most answer audio queued for playback, in seconds; beyond, the oldest is dropped.
const MAX_QUEUED_S: usize = 60;

/// What the bridge wants done on the peer's side.
#[derive(Debug, PartialEq)]
pub enum ToPeer {
    /// A JSON event for the data channel.
    Event(String),
    /// One 20 ms packet for the audio track, in the outgoing codec.
    Audio(Vec<u8>),
}

/// The translation state of one call.
pub struct Bridge {
    decoder: TrackDecoder,
    encoder: TrackEncoder,
    /// Peer audio, the incoming codec's rate → the session's rate.
    down: StreamResampler,
    /// Answer audio, the session's rate → the outgoing codec's rate.
    up: StreamResampler,
    /// Answer audio waiting to be played, at the outgoing codec's rate.
    queue: VecDeque<f32>,
    /// The answer being played: its response and item, and how much of it was sent.
    playing: Option<Playing>,
}

struct Playing {
    response_id: String,
    item_id: String,
    sent_samples: usize,
    /// The session said the answer's audio is complete.
    done: bool,
}

fn resampler(from: u32, to: u32) -> Result<StreamResampler, OpusError> {
    StreamResampler::new(from, to).map_err(|e| OpusError::Codec(e.to_string()))
}

impl Bridge {
    /// A bridge that speaks Opus both ways until told otherwise.
    pub fn new() -> Result<Self, OpusError> {
        let codec = TrackCodec::Opus;
        Ok(Bridge {
            decoder: TrackDecoder::new(codec)?,
            encoder: TrackEncoder::new(codec)?,
            down: resampler(codec.rate(), SESSION_RATE)?,
            up: resampler(SESSION_RATE, codec.rate())?,
            queue: VecDeque::new(),
            playing: None,
        })
    }

    /// The codec the answer's audio goes out in (what the connection negotiated).
    pub fn output_codec(&self) -> TrackCodec {
        self.encoder.codec()
    }

    /// Sends the answer's audio in `codec` from now on (set once the track is negotiated, before
    /// any audio has gone out).
    pub fn set_output_codec(&mut self, codec: TrackCodec) -> Result<(), OpusError> {
        if codec != self.encoder.codec() {
            self.encoder = TrackEncoder::new(codec)?;
            self.up = resampler(SESSION_RATE, codec.rate())?;
            self.queue.clear();
        }
        Ok(())
    }

    /// A packet from the peer in `codec` (`None`: one that was lost): PCM16 for the session.
    pub fn peer_audio(&mut self, codec: TrackCodec, packet: Option<&[u8]>) -> Option<Message> {
        if codec != self.decoder.codec() {
            match TrackDecoder::new(codec)
                .and_then(|d| Ok((d, resampler(codec.rate(), SESSION_RATE)?)))
            {
                Ok((decoder, down)) => {
                    self.decoder = decoder;
                    self.down = down;
                }
                Err(e) => {
                    tracing::debug!(error = %e, "no decoder for the peer's codec");
                    return None;
                }
            }
        }
        let samples = match self.decoder.decode(packet) {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(error = %e, "an undecodable audio packet from the peer");
                return None;
            }
        };
        let mut at = Vec::with_capacity(samples.len() / 2 + 16);
        self.down.push(&samples, &mut at);
        if at.is_empty() {
            return None;
        }
        let bytes: Vec<u8> = at
            .iter()
            .flat_map(|s| ((s.clamp(-1.0, 1.0) * 32767.0).round() as i16).to_le_bytes())
            .collect();
        Some(Message::Binary(bytes.into()))
    }

    /// A client event from the data channel: what to pass to the session (if anything) and what
    /// to send back to the peer.
    pub fn peer_event(&mut self, text: &str) -> (Option<Message>, Vec<ToPeer>) {
        let Ok(mut event) = serde_json::from_str::<Value>(text) else {
            // Not JSON: the session answers it with its own typed error.
            return (Some(Message::Text(text.to_string().into())), Vec::new());
        };
        match event["type"].as_str() {
            Some("output_audio_buffer.clear") => {
                let (to_session, to_peer) = self.clear();
                (to_session, to_peer)
            }
            Some("session.update") => {
                // The audio track fixes the formats.
                // (`get_mut`: indexing a missing key would insert a null.)
                for side in ["input", "output"] {
                    if let Some(audio) = event
                        .get_mut("session")
                        .and_then(|s| s.get_mut("audio"))
                        .and_then(|a| a.get_mut(side))
                        .and_then(Value::as_object_mut)
                    {
                        audio.remove("format");
                    }
                }
                (Some(Message::Text(event.to_string().into())), Vec::new())
            }
            _ => (Some(Message::Text(text.to_string().into())), Vec::new()),
        }
    }

    /// A message from the session: what to send to the peer, and what to tell the session back
    /// (a truncation when the answer was cut).
    pub fn session_message(&mut self, message: Message) -> (Vec<ToPeer>, Option<Message>) {
        let text = match message {
            Message::Text(t) => t,
            // Binary answer audio (a session that asked for it): PCM16 at the session's rate.
            Message::Binary(bytes) => {
                self.queue_pcm16(&bytes);
                return (Vec::new(), None);
            }
            _ => return (Vec::new(), None),
        };
        let Ok(event) = serde_json::from_str::<Value>(text.as_str()) else {
            return (vec![ToPeer::Event(text.to_string())], None);
        };
        match event["type"].as_str() {
            Some("response.output_audio.delta") => {
                let mut out = Vec::new();
                if self.playing.is_none() {
                    let response_id = event["response_id"].as_str().unwrap_or("").to_string();
                    out.push(ToPeer::Event(
                        json!({"type": "output_audio_buffer.started", "response_id": response_id})
                            .to_string(),
                    ));
                    self.playing = Some(Playing {
                        response_id,
                        item_id: event["item_id"].as_str().unwrap_or("").to_string(),
                        sent_samples: 0,
                        done: false,
                    });
                }
                if let Some(delta) = event["delta"].as_str() {
                    if let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(delta) {
                        self.queue_pcm16(&bytes);
                    }
                }
                (out, None)
            }
            Some("response.output_audio.done") => {
                let mut rest = Vec::new();
                self.up.flush(&mut rest);
                self.queue.extend(rest);
                if let Some(p) = self.playing.as_mut() {
                    p.done = true;
                }
                (vec![ToPeer::Event(text.to_string())], None)
            }
            Some("input_audio_buffer.speech_started") => {
                // The person talks over the answer: it stops at once.
                let (truncate, mut cleared) = self.clear();
                cleared.insert(0, ToPeer::Event(text.to_string()));
                (cleared, truncate)
            }
            _ => (vec![ToPeer::Event(text.to_string())], None),
        }
    }

    /// The next 20 ms of answer audio, encoded, when there is some; `.stopped` once an answer
    /// has all been sent.
    pub fn next_frame(&mut self) -> Vec<ToPeer> {
        let Some(playing) = self.playing.as_mut() else {
            return Vec::new();
        };
        let frame_len = self.encoder.codec().frame();
        if self.queue.len() < frame_len && !playing.done {
            // Waiting for more of the answer (underrun): send nothing rather than a gap.
            return Vec::new();
        }
        if self.queue.is_empty() {
            let id = std::mem::take(&mut playing.response_id);
            self.playing = None;
            return vec![ToPeer::Event(
                json!({"type": "output_audio_buffer.stopped", "response_id": id}).to_string(),
            )];
        }
        let n = self.queue.len().min(frame_len);
        let mut frame: Vec<f32> = self.queue.drain(..n).collect();
        frame.resize(frame_len, 0.0);
        playing.sent_samples += n;
        match self.encoder.encode(&frame) {
            Ok(packet) => vec![ToPeer::Audio(packet)],
            Err(e) => {
                tracing::warn!(error = %e, "encoding the answer's audio failed");
                Vec::new()
            }
        }
    }

    fn queue_pcm16(&mut self, bytes: &[u8]) {
        let samples: Vec<f32> = bytes
            .chunks_exact(2)
            .map(|b| i16::from_le_bytes([b[0], b[1]]) as f32 / 32768.0)
            .collect();
        let mut at = Vec::with_capacity(samples.len() * 2 + 16);
        self.up.push(&samples, &mut at);
        self.queue.extend(at);
        let most = MAX_QUEUED_S * self.encoder.codec().rate() as usize;
        let over = self.queue.len().saturating_sub(most);
        self.queue.drain(..over);
    }

    /// Stops the answer being played: `.cleared` for the peer and, for the session, the
    /// truncation of the answer at what was played.
    fn clear(&mut self) -> (Option<Message>, Vec<ToPeer>) {
        self.queue.clear();
        let mut rest = Vec::new();
        self.up.flush(&mut rest);
        let Some(p) = self.playing.take() else {
            return (None, Vec::new());
        };
        let played_ms = p.sent_samples as u64 * 1000 / self.encoder.codec().rate() as u64;
        let truncate = (!p.item_id.is_empty()).then(|| {
            Message::Text(
                json!({"type": "conversation.item.truncate", "item_id": p.item_id,
                       "content_index": 0, "audio_end_ms": played_ms})
                .to_string()
                .into(),
            )
        });
        let cleared = json!({"type": "output_audio_buffer.cleared", "response_id": p.response_id});
        (truncate, vec![ToPeer::Event(cleared.to_string())])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delta(samples: usize) -> Message {
        let pcm = vec![0u8; samples * 2];
        Message::Text(
            json!({"type": "response.output_audio.delta", "response_id": "resp_1",
                   "item_id": "item_1", "output_index": 0, "content_index": 0,
                   "delta": base64::engine::general_purpose::STANDARD.encode(pcm)})
            .to_string()
            .into(),
        )
    }

    fn kinds(out: &[ToPeer]) -> Vec<String> {
        out.iter()
            .map(|o| match o {
                ToPeer::Event(e) => serde_json::from_str::<Value>(e).unwrap()["type"]
                    .as_str()
                    .unwrap()
                    .to_string(),
                ToPeer::Audio(_) => "audio".into(),
            })
            .collect()
    }

    #[test]
    fn answer_audio_goes_to_the_track_in_frames_between_started_and_stopped() {
        let mut b = Bridge::new().unwrap();
        let (out, _) = b.session_message(delta(SESSION_RATE as usize / 10));
        assert_eq!(kinds(&out), ["output_audio_buffer.started"]);
        let mut frames = 0;
        let done = Message::Text(
            json!({"type": "response.output_audio.done", "response_id": "resp_1"})
                .to_string()
                .into(),
        );
        let (out, _) = b.session_message(done);
        assert_eq!(kinds(&out), ["response.output_audio.done"]);
        loop {
            let out = b.next_frame();
            match kinds(&out).as_slice() {
                [a] if a == "audio" => frames += 1,
                [s] if s == "output_audio_buffer.stopped" => break,
                other => panic!("{other:?}"),
            }
        }
        // 100 ms of answer: five 20 ms frames (the last padded).
        assert!((5..=6).contains(&frames), "{frames} frames");
        assert!(b.next_frame().is_empty());
    }

    #[test]
    fn speech_over_the_answer_clears_it_and_truncates_at_what_was_played() {
        let mut b = Bridge::new().unwrap();
        b.session_message(delta(SESSION_RATE as usize));
        for _ in 0..10 {
            b.next_frame();
        }
        let started = Message::Text(
            json!({"type": "input_audio_buffer.speech_started", "audio_start_ms": 0, "item_id": "item_2"})
                .to_string()
                .into(),
        );
        let (out, truncate) = b.session_message(started);
        assert_eq!(
            kinds(&out),
            [
                "input_audio_buffer.speech_started",
                "output_audio_buffer.cleared"
            ]
        );
        let Some(Message::Text(t)) = truncate else {
            panic!("no truncate")
        };
        let t: Value = serde_json::from_str(t.as_str()).unwrap();
        assert_eq!(t["item_id"], "item_1");
        let ms = t["audio_end_ms"].as_u64().unwrap();
        assert!((150..=220).contains(&ms), "{ms} ms played");
        assert!(b.next_frame().is_empty());
    }

    #[test]
    fn a_clients_format_change_is_left_out_and_other_events_pass() {
        let mut b = Bridge::new().unwrap();
        let (to_session, _) = b.peer_event(
            r#"{"type":"session.update","session":{"instructions":"x","audio":{"input":{"format":{"type":"audio/pcmu"},"turn_detection":null}}}}"#,
        );
        let Some(Message::Text(t)) = to_session else {
            panic!()
        };
        let v: Value = serde_json::from_str(t.as_str()).unwrap();
        assert!(
            v["session"]["audio"]["input"].get("format").is_none(),
            "{v}"
        );
        assert_eq!(v["session"]["instructions"], "x");
        let (to_session, _) = b.peer_event("not json");
        assert!(matches!(to_session, Some(Message::Text(_))));
        // Nothing playing: a clear has nothing to truncate.
        let (to_session, to_peer) = b.peer_event(r#"{"type":"output_audio_buffer.clear"}"#);
        assert!(to_session.is_none() && to_peer.is_empty());
    }
}
