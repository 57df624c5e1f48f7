//! `POST /v1/audio/speech`, compatible with OpenAI's speech API: `model`, `input`, `voice`,
//! `response_format` (`wav` or `pcm`: 24 kHz 16-bit mono) and `speed`.
//!
//! The response streams: the input is cut into sentences ([`crate::tts::text::Splitter`]), the
//! first is synthesised before the response starts (so its errors are HTTP errors), and each
//! later one is sent as soon as it is ready. A streamed WAV has no length in its header (as
//! OpenAI's), which players and decoders read to the end of the stream.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use serde::Deserialize;

use super::error::ApiError;
use super::AppState;
use crate::protocol::InputFormat;
use crate::realtime::speaker;
use crate::tts::{self, text, SpeakRequest, Speech, Tts, TtsError, MAX_INPUT_CHARS};

/// The rate of every response format.
pub const OUTPUT_RATE: u32 = 24_000;

#[derive(Debug, Deserialize)]
struct Request {
    model: Option<String>,
    input: Option<String>,
    voice: Option<String>,
    response_format: Option<String>,
    speed: Option<f32>,
    /// For `gpt-4o-mini-tts`; a Piper voice has no style control, so it is ignored.
    #[allow(dead_code)]
    instructions: Option<String>,
    stream_format: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Format {
    Wav,
    Pcm,
}

impl From<TtsError> for ApiError {
    fn from(e: TtsError) -> Self {
        match &e {
            TtsError::UnknownVoice { .. } => {
                ApiError::bad_request("invalid_voice", e.to_string()).with_param("voice")
            }
            TtsError::InvalidSpeed(_) => {
                ApiError::bad_request("invalid_speed", e.to_string()).with_param("speed")
            }
            TtsError::TooLong { .. } => {
                ApiError::bad_request("string_above_max_length", e.to_string()).with_param("input")
            }
            TtsError::Empty => {
                ApiError::bad_request("invalid_value", "`input` has no words to speak")
                    .with_param("input")
            }
            TtsError::Busy { .. } => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "tts_busy", e.to_string())
            }
            TtsError::ShuttingDown => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "shutting_down",
                e.to_string(),
            ),
            TtsError::Load(_) | TtsError::Phonemes(_) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "tts_unavailable",
                e.to_string(),
            ),
            TtsError::Engine(_) | TtsError::Remote(_) => ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "tts_failed",
                e.to_string(),
            ),
        }
    }
}

/// `POST /v1/audio/speech`.
pub async fn speech(State(state): State<Arc<AppState>>, body: Bytes) -> Result<Response, ApiError> {
    let req: Request = serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad_request(
            "invalid_json",
            format!("the request body is not valid: {e}"),
        )
    })?;
    let tts = state.tts()?;
    let Checked {
        input,
        voice,
        speed,
        format,
    } = check(req, tts.as_ref())?;

    let mut splitter = text::Splitter::new();
    let mut pieces = splitter.push(&input);
    pieces.extend(splitter.finish());
    let mut pieces: std::collections::VecDeque<String> = pieces
        .into_iter()
        .filter(|p| !text::speakable(p).is_empty())
        .collect();
    let first = pieces.pop_front().ok_or(TtsError::Empty)?;
    let speak = move |tts: Arc<dyn Tts>, text: String, urgent: bool, voice: String| async move {
        let speech = tts
            .speak(SpeakRequest {
                text,
                voice,
                speed,
                urgent,
            })
            .await?;
        pcm16_at(&speech, OUTPUT_RATE)
    };
    let mut head = speak(tts.clone(), first, false, voice.clone()).await?;
    if format == Format::Wav {
        // The length is not known yet: "to the end of the stream".
        let mut wav = crate::wav::header(OUTPUT_RATE, u32::MAX).to_vec();
        wav.extend_from_slice(&head);
        head = wav;
    }
    // The audio's clock: it plays from the first byte on, at 2 bytes a sample.
    let started = std::time::Instant::now();
    let sent_ms = (head.len() / 48) as u64;
    let rest = futures::stream::unfold(
        (pieces, tts, voice, sent_ms),
        move |(mut pieces, tts, voice, mut sent_ms)| async move {
            let piece = pieces.pop_front()?;
            // A stream about to run dry goes before new work (as a spoken answer's next piece);
            // one well ahead of real time (a client saving a file) waits its turn.
            let ahead = sent_ms.saturating_sub(started.elapsed().as_millis() as u64);
            let urgent = ahead < speaker::URGENT_LEAD.as_millis() as u64;
            let item = match speak(tts.clone(), piece, urgent, voice.clone()).await {
                Ok(bytes) => {
                    sent_ms += (bytes.len() / 48) as u64;
                    Ok(Bytes::from(bytes))
                }
                Err(e) => {
                    // The status is sent: the stream ends early, which the client sees.
                    tracing::warn!(error = %e, "speech stream ended early");
                    pieces.clear();
                    Err(std::io::Error::other(e.to_string()))
                }
            };
            Some((item, (pieces, tts, voice, sent_ms)))
        },
    );
    let body = futures::stream::once(async move { Ok::<_, std::io::Error>(Bytes::from(head)) })
        .chain(rest);
    let content_type = match format {
        Format::Wav => "audio/wav",
        Format::Pcm => "audio/pcm",
    };
    Ok((
        [(header::CONTENT_TYPE, content_type)],
        Body::from_stream(body),
    )
        .into_response())
}

/// A speech request's settings, checked.
struct Checked {
    input: String,
    voice: String,
    speed: f32,
    format: Format,
}

/// Checks a speech request: a model named, input within the limit and speakable, a voice
/// (OpenAI's names map to this server's voice), the speed, and a supported format.
fn check(req: Request, tts: &dyn Tts) -> Result<Checked, ApiError> {
    let missing = |param: &'static str| {
        ApiError::bad_request(
            "missing_required_parameter",
            format!("`{param}` is required"),
        )
        .with_param(param)
    };
    req.model
        .as_deref()
        .filter(|m| !m.trim().is_empty())
        .ok_or_else(|| missing("model"))?;
    let input = req.input.ok_or_else(|| missing("input"))?;
    let chars = input.chars().count();
    if chars > MAX_INPUT_CHARS {
        return Err(TtsError::TooLong {
            len: chars,
            max: MAX_INPUT_CHARS,
        }
        .into());
    }
    if text::speakable(&input).is_empty() {
        return Err(TtsError::Empty.into());
    }
    let voice = req.voice.as_deref().ok_or_else(|| missing("voice"))?;
    let voice = tts::resolve_voice(tts, Some(voice))?;
    let speed = tts::check_speed(req.speed.unwrap_or(1.0))?;
    let format = match req.response_format.as_deref().unwrap_or("wav") {
        "wav" => Format::Wav,
        "pcm" => Format::Pcm,
        other => {
            return Err(ApiError::bad_request(
                "unsupported_response_format",
                format!(
                    "response_format `{}` is not supported; use wav or pcm (24 kHz, 16-bit mono)",
                    other.chars().take(32).collect::<String>()
                ),
            )
            .with_param("response_format"))
        }
    };
    if let Some(sf) = req.stream_format.as_deref().filter(|s| *s != "audio") {
        return Err(ApiError::bad_request(
            "unsupported_stream_format",
            format!(
                "stream_format `{}` is not supported; the audio itself is streamed",
                sf.chars().take(32).collect::<String>()
            ),
        )
        .with_param("stream_format"));
    }
    Ok(Checked {
        input,
        voice,
        speed,
        format,
    })
}

/// `speech` as 16-bit little-endian PCM at `rate`.
fn pcm16_at(speech: &Speech, rate: u32) -> Result<Vec<u8>, TtsError> {
    crate::audio::encode::encode(
        &speech.samples,
        speech.sample_rate,
        InputFormat::Pcm16 { rate },
    )
    .map_err(|e| TtsError::Engine(e.to_string()))
}
