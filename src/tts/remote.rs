//! Speech from any OpenAI-compatible `/v1/audio/speech` endpoint (OpenAI, or a local engine
//! that speaks the same API), asked for raw 24 kHz PCM16.

use std::time::{Duration, Instant};

use futures::future::BoxFuture;

use super::{SpeakRequest, Speech, Tts, TtsError, OPENAI_VOICES};

/// The rate of the `pcm` response format.
const PCM_RATE: u32 = 24_000;

/// A remote speech endpoint.
pub struct RemoteTts {
    http: reqwest::Client,
    url: String,
    api_key: Option<String>,
    model: String,
    voice: String,
}

impl RemoteTts {
    /// `base_url` includes `/v1`; `model` and `voice` are the remote's names.
    pub fn new(
        base_url: &str,
        api_key: Option<String>,
        model: &str,
        voice: &str,
        timeout: Duration,
    ) -> Result<Self, TtsError> {
        let http = crate::openai_http::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(timeout)
            .build()
            .map_err(|e| TtsError::Load(e.to_string()))?;
        Ok(RemoteTts {
            http,
            url: format!("{}/audio/speech", base_url.trim_end_matches('/')),
            api_key,
            model: model.to_string(),
            voice: voice.to_string(),
        })
    }
}

impl Tts for RemoteTts {
    fn speak(&self, request: SpeakRequest) -> BoxFuture<'_, Result<Speech, TtsError>> {
        Box::pin(async move {
            let started = Instant::now();
            let body = serde_json::json!({
                "model": self.model,
                "input": super::text::speakable(&request.text),
                "voice": request.voice,
                "response_format": "pcm",
                "speed": request.speed,
            });
            let mut req = self
                .http
                .post(&self.url)
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body.to_string());
            if let Some(key) = &self.api_key {
                req = req.bearer_auth(key);
            }
            let resp = req
                .send()
                .await
                .map_err(|e| TtsError::Remote(e.to_string()))?;
            let status = resp.status();
            let bytes = resp
                .bytes()
                .await
                .map_err(|e| TtsError::Remote(e.to_string()))?;
            if !status.is_success() {
                let detail: String = String::from_utf8_lossy(&bytes).chars().take(300).collect();
                return Err(TtsError::Remote(format!("{status}: {detail}")));
            }
            let samples = bytes
                .chunks_exact(2)
                .map(|b| i16::from_le_bytes([b[0], b[1]]) as f32 / 32768.0)
                .collect();
            let compute = started.elapsed();
            crate::metrics::global().tts.observe_duration(compute);
            Ok(Speech {
                samples,
                sample_rate: PCM_RATE,
                compute,
            })
        })
    }

    fn voices(&self) -> Vec<String> {
        std::iter::once(self.voice.clone())
            .chain(
                OPENAI_VOICES
                    .iter()
                    .filter(|v| **v != self.voice)
                    .map(|v| v.to_string()),
            )
            .collect()
    }

    fn describe(&self) -> String {
        format!("remote {} at {}", self.model, self.url)
    }
}
