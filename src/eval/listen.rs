//! `voxd eval --listen`: the spoken answer, heard back. The answer's audio (the voice's PCM16 at
//! 24 kHz, as the session streamed it) is sent to a transcription endpoint (the server's own
//! `POST /v1/audio/transcriptions` by default, or any OpenAI-compatible one), and the fact is
//! scored on what came back: what a person would have heard, not what voxd meant to say.
//!
//! A miss is put down to the first stage that lost it ([`attribute`]).

use std::time::Duration;

use crate::asr::remote::{RemoteAsr, RemoteAsrConfig};
use crate::asr::{Asr, Priority, Request};

use super::EvalError;

/// The rate of the answer audio the eval asks for.
pub const ANSWER_RATE: u32 = 24_000;

/// Hears spoken answers with a transcription endpoint.
pub struct Listener {
    asr: RemoteAsr,
}

impl Listener {
    /// `base_url` ends in `/v1` (the endpoint is `{base_url}/audio/transcriptions`).
    pub fn new(base_url: &str, api_key: Option<String>) -> Result<Self, EvalError> {
        let asr = RemoteAsr::new(RemoteAsrConfig {
            base_url: base_url.to_string(),
            api_key,
            model: "whisper-1".into(),
            timeout: Duration::from_secs(120),
            partials: false,
        })
        .map_err(|e| EvalError::Audio(e.to_string()))?;
        Ok(Listener { asr })
    }

    /// The transcription endpoint's base for a realtime URL (`ws://host:port/v1/realtime` →
    /// `http://host:port/v1`).
    pub fn base_for(realtime_url: &str) -> String {
        let http = if let Some(rest) = realtime_url.strip_prefix("wss://") {
            format!("https://{rest}")
        } else if let Some(rest) = realtime_url.strip_prefix("ws://") {
            format!("http://{rest}")
        } else {
            realtime_url.to_string()
        };
        let path_start = http.find("://").map_or(0, |i| i + 3);
        let host_end = http[path_start..]
            .find(['/', '?'])
            .map_or(http.len(), |i| path_start + i);
        format!("{}/v1", &http[..host_end])
    }

    /// What a listener hears in `pcm` (16-bit little-endian mono at [`ANSWER_RATE`]); `None`
    /// when there was no audio.
    pub async fn hear(&self, pcm: &[u8]) -> Result<Option<String>, EvalError> {
        if pcm.len() < 2 {
            return Ok(None);
        }
        let samples: Vec<f32> = pcm
            .chunks_exact(2)
            .map(|b| i16::from_le_bytes([b[0], b[1]]) as f32 / 32768.0)
            .collect();
        let at16 = crate::audio::resample::resample_all(&samples, ANSWER_RATE, 16_000)
            .map_err(|e| EvalError::Audio(e.to_string()))?;
        let request = Request {
            samples: at16,
            language: Some("en".into()),
            prompt: None,
            hints: None,
            priority: Priority::Final,
        };
        let t = self
            .asr
            .transcribe(request)
            .await
            .map_err(|e| EvalError::Audio(format!("hearing the answer: {e}")))?;
        Ok(Some(t.text.trim().to_string()))
    }
}

/// The stage that lost a question whose heard answer is wrong: `question` (the question was
/// misheard and the wrong passage cited), `passage` (heard well, wrong passage), `sentence`
/// (right passage, wrong words), `check` (the check replaced or cut a right answer), `voice`
/// (the text was right, what was heard was not). `None` when nothing was lost.
pub fn attribute(
    text_right: bool,
    heard_right: bool,
    citation_right: Option<bool>,
    question_misheard: bool,
    made: Option<&str>,
) -> Option<&'static str> {
    if heard_right && text_right {
        return None;
    }
    if text_right {
        return Some("voice");
    }
    if citation_right == Some(false) {
        return Some(if question_misheard {
            "question"
        } else {
            "passage"
        });
    }
    if matches!(made, Some("replaced" | "cut_unsupported")) {
        return Some("check");
    }
    Some("sentence")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_transcription_base_follows_the_realtime_url() {
        assert_eq!(
            Listener::base_for("ws://127.0.0.1:8080/v1/realtime"),
            "http://127.0.0.1:8080/v1"
        );
        assert_eq!(
            Listener::base_for("wss://voice.example/v1/realtime?model=x"),
            "https://voice.example/v1"
        );
    }

    #[test]
    fn a_miss_is_put_down_to_the_first_stage_that_lost_it() {
        assert_eq!(attribute(true, true, Some(true), false, None), None);
        assert_eq!(
            attribute(true, false, Some(true), false, None),
            Some("voice")
        );
        assert_eq!(
            attribute(false, false, Some(false), true, None),
            Some("question")
        );
        assert_eq!(
            attribute(false, false, Some(false), false, None),
            Some("passage")
        );
        assert_eq!(
            attribute(false, false, Some(true), false, Some("replaced")),
            Some("check")
        );
        assert_eq!(
            attribute(false, false, Some(true), false, Some("extractive")),
            Some("sentence")
        );
    }
}
