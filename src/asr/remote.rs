//! Transcription on an OpenAI-compatible engine (`POST {base}/audio/transcriptions`): another
//! voxd, speaches, or a vLLM Whisper. Each request's audio goes as a 16 kHz 16-bit mono WAV file;
//! the answer's `text` (and, when given, its `language` and `segments`) come back. Voice
//! detection, partials and turn logic stay in the session that asked.
//!
//! Partial transcriptions are sent only when configured: by default they are refused at once
//! ([`AsrError::Superseded`], which a session drops quietly), so a remote engine sees one request
//! per turn.

use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use serde::Deserialize;

use super::{check_language, check_prompt, Asr, AsrError, Priority, Request, Segment, Transcript};

/// Where and how to transcribe remotely.
#[derive(Debug, Clone)]
pub struct RemoteAsrConfig {
    /// Base URL with `/v1`.
    pub base_url: String,
    pub api_key: Option<String>,
    /// The `model` form field.
    pub model: String,
    /// Longest wait for one transcription.
    pub timeout: Duration,
    /// Also send partials.
    pub partials: bool,
}

/// The remote engine.
pub struct RemoteAsr {
    config: RemoteAsrConfig,
    url: String,
    http: reqwest::Client,
}

#[derive(Deserialize)]
struct Answer {
    text: String,
    #[serde(default)]
    language: Option<String>,
    #[serde(default)]
    segments: Vec<AnswerSegment>,
}

#[derive(Deserialize)]
struct AnswerSegment {
    #[serde(default)]
    start: f64,
    #[serde(default)]
    end: f64,
    #[serde(default)]
    text: String,
    #[serde(default)]
    no_speech_prob: f32,
}

/// The samples as a 16 kHz 16-bit mono WAV file.
fn wav(samples: &[f32]) -> Vec<u8> {
    let data = samples.len() * 2;
    let mut out = Vec::with_capacity(44 + data);
    out.extend_from_slice(&crate::wav::header(16_000, data as u32));
    for s in samples {
        out.extend_from_slice(&((s.clamp(-1.0, 1.0) * 32767.0) as i16).to_le_bytes());
    }
    out
}

impl RemoteAsr {
    pub fn new(config: RemoteAsrConfig) -> Result<Self, AsrError> {
        let http = crate::openai_http::builder()
            .connect_timeout(Duration::from_secs(5).min(config.timeout))
            .timeout(config.timeout)
            .build()
            .map_err(|e| AsrError::Engine(format!("cannot build the HTTP client: {e}")))?;
        let url = format!(
            "{}/audio/transcriptions",
            config.base_url.trim_end_matches('/')
        );
        Ok(RemoteAsr { config, url, http })
    }

    async fn call(&self, request: Request) -> Result<Transcript, AsrError> {
        if request.priority == Priority::Partial && !self.config.partials {
            return Err(AsrError::Superseded);
        }
        if request.samples.is_empty() {
            return Err(AsrError::NoAudio);
        }
        if let Some(p) = &request.prompt {
            check_prompt(p).map_err(AsrError::InvalidPrompt)?;
        }
        if let Some(l) = &request.language {
            check_language(l).map_err(AsrError::InvalidLanguage)?;
        }
        let audio = Duration::from_secs_f64(request.samples.len() as f64 / 16_000.0);
        let file = reqwest::multipart::Part::bytes(wav(&request.samples))
            .file_name("audio.wav")
            .mime_str("audio/wav")
            .map_err(|e| AsrError::Engine(e.to_string()))?;
        let mut form = reqwest::multipart::Form::new()
            .part("file", file)
            .text("model", self.config.model.clone())
            .text("response_format", "json");
        if let Some(l) = &request.language {
            form = form.text("language", l.clone());
        }
        if let Some(p) = &request.prompt {
            form = form.text("prompt", p.clone());
        }
        let mut req = self.http.post(&self.url).multipart(form);
        if let Some(key) = &self.config.api_key {
            req = req.bearer_auth(key);
        }
        let t0 = Instant::now();
        let fail = |what: String| {
            tracing::warn!(url = %self.url, error = %what, "remote transcription failed");
            AsrError::Remote(what)
        };
        let response = req.send().await.map_err(|e| {
            fail(if e.is_timeout() {
                format!("no answer within {:?}", self.config.timeout)
            } else {
                format!("unreachable ({})", e.without_url())
            })
        })?;
        let status = response.status();
        if status.as_u16() == 429 || status.as_u16() == 503 {
            return Err(AsrError::Busy { queued: 0 });
        }
        if !status.is_success() {
            // The body may hold the engine's detail; it goes to the log, not to clients.
            let body = response.text().await.unwrap_or_default();
            let body: String = body.chars().take(300).collect();
            tracing::warn!(url = %self.url, %status, %body, "remote transcription refused");
            return Err(AsrError::Remote(format!(
                "the engine answered HTTP {status}"
            )));
        }
        let answer: Answer = response
            .json()
            .await
            .map_err(|e| fail(format!("an answer that is not a transcription ({e})")))?;
        let segments = if answer.segments.is_empty() {
            vec![Segment {
                start_s: 0.0,
                end_s: audio.as_secs_f64(),
                text: answer.text.clone(),
                no_speech_prob: 0.0,
            }]
        } else {
            answer
                .segments
                .into_iter()
                .map(|s| Segment {
                    start_s: s.start,
                    end_s: s.end,
                    text: s.text,
                    no_speech_prob: s.no_speech_prob,
                })
                .collect()
        };
        Ok(Transcript {
            text: answer.text.trim().to_string(),
            segments,
            language: answer
                .language
                .or(request.language)
                .unwrap_or_else(|| "en".into()),
            audio,
            queue_wait: Duration::ZERO,
            compute: t0.elapsed(),
        })
    }
}

impl Asr for RemoteAsr {
    fn transcribe(&self, request: Request) -> BoxFuture<'_, Result<Transcript, AsrError>> {
        Box::pin(self.call(request))
    }

    fn describe(&self) -> String {
        format!("remote {} ({})", self.config.model, self.config.base_url)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_audio_goes_as_a_16_khz_wav_file() {
        let w = wav(&[0.0, 0.5, -1.0, 2.0]);
        let parsed = crate::wav::parse(&w).unwrap();
        assert_eq!(parsed.sample_rate, 16_000);
        assert_eq!(w.len(), 44 + 8);
        assert_eq!(i16::from_le_bytes([w[46], w[47]]), 16383);
        assert_eq!(i16::from_le_bytes([w[50], w[51]]), 32767, "clamped");
    }
}
