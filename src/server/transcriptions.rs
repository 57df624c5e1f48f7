//! `POST /v1/audio/transcriptions`, compatible with OpenAI's endpoint: multipart fields `file`,
//! `model` (accepted, the loaded model answers), `language`, `prompt` and `response_format`
//! (`json`, `text`, `verbose_json`, `srt`, `vtt`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use axum::extract::multipart::{Multipart, MultipartRejection};
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;
use tracing::info;

use super::error::ApiError;
use super::AppState;
use crate::asr::{Priority, Request, Transcript};
use crate::audio::{self, ChannelSelect, DecodeLimits};

/// Sets its flag when dropped.
struct SetOnDrop(Arc<AtomicBool>);

impl Drop for SetOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Json,
    Text,
    VerboseJson,
    Srt,
    Vtt,
}

impl Format {
    fn parse(s: &str) -> Result<Self, ApiError> {
        Ok(match s {
            "json" => Format::Json,
            "text" => Format::Text,
            "verbose_json" => Format::VerboseJson,
            "srt" => Format::Srt,
            "vtt" => Format::Vtt,
            other => {
                return Err(ApiError::bad_request(
                    "invalid_response_format",
                    format!(
                    "response_format `{other}` is not one of json, text, verbose_json, srt, vtt"
                ),
                )
                .with_param("response_format"))
            }
        })
    }
}

pub async fn transcribe(
    State(state): State<Arc<AppState>>,
    caller: Option<axum::Extension<crate::tools::Caller>>,
    multipart: Result<Multipart, MultipartRejection>,
) -> Result<Response, ApiError> {
    let key_id = caller.map_or_else(|| "anonymous".to_string(), |axum::Extension(c)| c.key_id);
    if let Err(e) = state.quotas().audio_left(&key_id) {
        return Ok(super::quotas::refused(&e, &key_id));
    }
    let mut multipart = multipart?;
    let mut file: Option<(Vec<u8>, Option<String>)> = None;
    let mut language = None;
    let mut prompt = None;
    let mut format = Format::Json;
    let mut channel = ChannelSelect::Mix;
    while let Some(field) = multipart.next_field().await? {
        let name = field.name().unwrap_or_default().to_string();
        match name.as_str() {
            "file" => {
                let ext = field
                    .file_name()
                    .and_then(|n| n.rsplit_once('.').map(|(_, e)| e.to_ascii_lowercase()));
                file = Some((field.bytes().await?.to_vec(), ext));
            }
            "language" => language = Some(field.text().await?).filter(|l| !l.is_empty()),
            "prompt" => prompt = Some(field.text().await?).filter(|p| !p.is_empty()),
            "response_format" => format = Format::parse(field.text().await?.trim())?,
            "channel" => {
                channel = field.text().await?.trim().parse().map_err(|e: String| {
                    ApiError::bad_request("invalid_channel", e).with_param("channel")
                })?
            }
            // model, temperature, timestamp_granularities[] and others are accepted and ignored.
            _ => {
                field.bytes().await?;
            }
        }
    }
    let (bytes, ext) = file.ok_or_else(|| {
        ApiError::bad_request("missing_file", "the multipart body has no `file` field")
            .with_param("file")
    })?;
    if let Some(l) = &language {
        crate::asr::check_language(l)
            .map_err(|m| ApiError::bad_request("invalid_language", m).with_param("language"))?;
    }
    if let Some(p) = &prompt {
        crate::protocol::session::check_model_text(p, crate::asr::MAX_PROMPT_BYTES, "prompt")
            .map_err(|e| ApiError::bad_request("invalid_prompt", e.message).with_param("prompt"))?;
    }
    let asr = state.asr()?;
    // At most `--max-transcriptions` uploads are decoded or transcribed at once: each holds its
    // decoded audio (up to `--max-audio-minutes` at 16 kHz) until it is done.
    let _permit = state.transcriptions.clone().try_acquire_owned().map_err(|_| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "server_busy",
            "the server is transcribing as many uploads as it allows (--max-transcriptions); try again shortly",
        )
    })?;

    let started = Instant::now();
    let upload_bytes = bytes.len();
    // The decode stops between packets when this request is dropped (the client went away) or
    // the server stops.
    let gone = Arc::new(AtomicBool::new(false));
    let _gone_on_drop = SetOnDrop(gone.clone());
    let stopping = state.stopping();
    let limits = DecodeLimits {
        max_seconds: Some(state.max_audio_seconds),
        cancelled: Some(Arc::new(move || {
            gone.load(Ordering::Relaxed) || stopping.load(Ordering::Relaxed)
        })),
    };
    let decoded = tokio::task::spawn_blocking(move || {
        audio::load_16k(bytes, ext.as_deref(), channel, &limits)
    })
    .await
    .map_err(|_| ApiError::bad_request("invalid_audio", "the audio could not be decoded"))??;
    let decode_ms = started.elapsed().as_millis() as u64;
    // Counted once decoded: the upload that crosses the day's line is still transcribed.
    let _ = state
        .quotas()
        .add_audio(&key_id, decoded.samples.len() as f64 / 16_000.0);

    let request = Request {
        samples: decoded.samples,
        language,
        prompt,
        // An upload is heard as it is: the knowledge base's words bias live sessions only.
        hints: None,
        priority: Priority::Final,
    };
    let transcript = asr.transcribe(request).await?;
    info!(
        bytes = upload_bytes,
        audio_s = transcript.audio.as_secs_f64(),
        decode_ms,
        queue_ms = transcript.queue_wait.as_millis() as u64,
        asr_ms = transcript.compute.as_millis() as u64,
        "transcribed upload"
    );
    let timing = format!(
        "decode;dur={decode_ms}, queue;dur={}, asr;dur={}",
        transcript.queue_wait.as_millis(),
        transcript.compute.as_millis()
    );
    let mut resp = render(format, &transcript);
    if let Ok(v) = timing.parse() {
        resp.headers_mut().insert("server-timing", v);
    }
    Ok(resp)
}

fn render(format: Format, t: &Transcript) -> Response {
    match format {
        Format::Json => Json(json!({ "text": t.text })).into_response(),
        Format::Text => (
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            format!("{}\n", t.text),
        )
            .into_response(),
        Format::VerboseJson => {
            let segments: Vec<_> = t
                .segments
                .iter()
                .enumerate()
                .map(|(i, s)| {
                    json!({
                        "id": i,
                        "seek": 0,
                        "start": s.start_s,
                        "end": s.end_s,
                        "text": s.text,
                        "tokens": [],
                        "temperature": 0.0,
                        "avg_logprob": 0.0,
                        "compression_ratio": 0.0,
                        "no_speech_prob": s.no_speech_prob,
                    })
                })
                .collect();
            Json(json!({
                "task": "transcribe",
                "language": t.language,
                "duration": t.audio.as_secs_f64(),
                "text": t.text,
                "segments": segments,
            }))
            .into_response()
        }
        Format::Srt => (
            [(header::CONTENT_TYPE, "application/x-subrip")],
            subtitles(t, false),
        )
            .into_response(),
        Format::Vtt => ([(header::CONTENT_TYPE, "text/vtt")], subtitles(t, true)).into_response(),
    }
}

fn timestamp(secs: f64, vtt: bool) -> String {
    let ms = (secs.max(0.0) * 1000.0).round() as u64;
    let (h, m, s, ms) = (ms / 3_600_000, ms / 60_000 % 60, ms / 1000 % 60, ms % 1000);
    let sep = if vtt { '.' } else { ',' };
    format!("{h:02}:{m:02}:{s:02}{sep}{ms:03}")
}

fn subtitles(t: &Transcript, vtt: bool) -> String {
    let mut out = String::new();
    if vtt {
        out.push_str("WEBVTT\n\n");
    }
    for (i, s) in t.segments.iter().enumerate() {
        if !vtt {
            out.push_str(&format!("{}\n", i + 1));
        }
        out.push_str(&format!(
            "{} --> {}\n{}\n\n",
            timestamp(s.start_s, vtt),
            timestamp(s.end_s, vtt),
            s.text
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subtitle_timestamps_are_formatted() {
        assert_eq!(timestamp(3723.456, false), "01:02:03,456");
        assert_eq!(timestamp(0.5, true), "00:00:00.500");
        assert!(Format::parse("xml").is_err());
    }
}
