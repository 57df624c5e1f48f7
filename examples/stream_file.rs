//! Streams a WAV file to a voxd server at real-time pace, as a microphone would, and prints the
//! transcript of each turn and the answer with its sources. The answer is spoken (the server's
//! default): its transcript is printed and its audio (PCM16, 24 kHz) saved with `--save OUT.wav`.
//!
//! ```sh
//! bash scripts/serve            # in another terminal
//! cargo run --example stream_file --no-default-features --features client -- \
//!     ../shared/audio/jfk.wav ws://127.0.0.1:8080/v1/realtime
//! ```
//!
//! Built with only the `client` feature, it compiles none of the server's models. Set
//! `VOXD_API_KEY` if the server requires a key; `--fast` streams without pacing.

use base64::Engine;

use std::io::Write;
use std::time::Duration;

use futures::StreamExt;
use voxd::client::{self, Incoming, Retry};
use voxd::protocol::ServerEvent;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let fast = args.iter().any(|a| a == "--fast");
    let save = args
        .iter()
        .position(|a| a == "--save")
        .and_then(|i| args.get(i + 1))
        .cloned();
    let positional: Vec<&String> = args
        .iter()
        .enumerate()
        .filter(|(i, a)| !a.starts_with("--") && (*i == 0 || args[i - 1] != "--save"))
        .map(|(_, a)| a)
        .collect();
    let Some(path) = positional.first() else {
        eprintln!(
            "usage: stream_file FILE.wav [ws://127.0.0.1:8080/v1/realtime] [--fast] [--save OUT.wav]"
        );
        std::process::exit(2);
    };
    let url = positional
        .get(1)
        .map(|s| s.as_str())
        .unwrap_or("ws://127.0.0.1:8080/v1/realtime");
    let key = std::env::var("VOXD_API_KEY").ok();

    let wav = client::wav::read(path)?;
    let (mut tx, mut rx) =
        client::connect_with_retry(url, key.as_deref(), &Retry::default()).await?;
    tx.update_session(serde_json::json!({
        "type": "realtime",
        "audio": {"input": {
            "format": {"type": "audio/pcm", "rate": wav.sample_rate},
            "turn_detection": {"type": "server_vad", "silence_duration_ms": 500}
        }}
    }))
    .await?;

    // 20 ms chunks, paced like a microphone, then a second of silence so the last turn ends.
    let frame = (wav.sample_rate / 50) as usize;
    let mut samples = wav.samples;
    samples.extend(std::iter::repeat_n(0.0, wav.sample_rate as usize));
    let chunks: Vec<Vec<f32>> = samples.chunks(frame).map(<[f32]>::to_vec).collect();
    let pace = if fast {
        Duration::ZERO
    } else {
        Duration::from_millis(20)
    };
    let mic = futures::stream::iter(chunks).then(move |c| async move {
        tokio::time::sleep(pace).await;
        c
    });
    let sender = tokio::spawn(async move {
        tx.stream_from(Box::pin(mic), true).await?;
        Ok::<_, client::ClientError>(tx)
    });

    let mut stdout = std::io::stdout();
    let mut audio: Vec<u8> = Vec::new();
    while let Some(message) = tokio::time::timeout(Duration::from_secs(120), rx.next())
        .await
        .map_err(|_| "no event for 120 s")?
    {
        match message? {
            Incoming::Event(ServerEvent::TranscriptionCompleted { transcript, .. }) => {
                writeln!(stdout, "transcript: {}", transcript.trim())?;
            }
            // The answer's words: its transcript when spoken, its text in a text-only session.
            Incoming::Event(
                ServerEvent::OutputAudioTranscriptDelta { delta, .. }
                | ServerEvent::OutputTextDelta { delta, .. },
            ) => {
                write!(stdout, "{delta}")?;
                stdout.flush()?;
            }
            Incoming::Event(ServerEvent::OutputAudioDelta { delta, .. }) => {
                audio.extend(base64::engine::general_purpose::STANDARD.decode(delta)?);
            }
            Incoming::Event(ServerEvent::ResponseDone { response }) => {
                writeln!(stdout)?;
                // voxd's addition to the response: the passages it is grounded in.
                for c in response["voxd"]["citations"]
                    .as_array()
                    .into_iter()
                    .flatten()
                {
                    writeln!(stdout, "source: {}", c["title"].as_str().unwrap_or("?"))?;
                }
                writeln!(stdout, "audio: {:.1} s", audio.len() as f64 / 48_000.0)?;
                if let Some(out) = &save {
                    client::wav::write_pcm16(out, 24_000, &audio)?;
                }
                writeln!(
                    stdout,
                    "status: {}",
                    response["status"].as_str().unwrap_or("?")
                )?;
                break;
            }
            Incoming::Event(ServerEvent::Error { error, .. }) => {
                eprintln!("error: {} ({:?})", error.message, error.code);
            }
            Incoming::Closed { code, reason } => {
                return Err(format!("the server closed the session: {code} {reason}").into());
            }
            _ => {}
        }
    }
    sender.await??;
    Ok(())
}
