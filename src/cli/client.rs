//! `voxd client`: streams a file to a realtime endpoint; prints events and, per turn, the time
//! from the end of speech in the file (found offline with the same VAD) to the final transcript
//! and to the answer's first token.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use voxd::audio::{self, ChannelSelect};
use voxd::client::Incoming;
use voxd::config::CommonArgs;
use voxd::protocol::ServerEvent;

/// `voxd client` options.
#[derive(clap::Args)]
pub struct ClientArgs {
    /// The audio file to stream (WAV, FLAC, MP3, Ogg/Vorbis).
    file: PathBuf,
    /// Realtime endpoint.
    #[arg(long, default_value = "ws://127.0.0.1:8080/v1/realtime")]
    url: String,
    /// Pace the audio in real time, as a microphone would (default: as fast as possible).
    #[arg(long)]
    realtime: bool,
    /// Session sample rate the file is converted to.
    #[arg(long, default_value_t = 24_000)]
    rate: u32,
    /// Send raw PCM16 binary frames instead of base64 `append` events.
    #[arg(long)]
    binary: bool,
    /// Channel of the file: mix, left, right or a number.
    #[arg(long, default_value = "mix")]
    channel: ChannelSelect,
    /// Silence (ms) that ends a turn.
    #[arg(long, default_value_t = 500)]
    silence_ms: u64,
    /// Turn speculative finalisation off (wait for the whole silence window).
    #[arg(long)]
    no_speculative: bool,
    /// No server VAD: commit once at the end of the file.
    #[arg(long)]
    manual: bool,
    /// Ask for spoken answers too (a `realtime` session): print each answer as it streams and the
    /// time from the true end of speech to its first token.
    #[arg(long)]
    answer: bool,
    /// With --answer: ask for spoken answers and write their audio (16-bit PCM, 24 kHz) to this
    /// WAV file (without it, answers are asked for as text).
    #[arg(long, requires = "answer")]
    audio_out: Option<PathBuf>,
    /// Silence appended after the file, in ms.
    #[arg(long, default_value_t = 1500)]
    tail_ms: u64,
    /// Print every server event as a JSON line.
    #[arg(long)]
    json: bool,
    /// API key (Authorization: Bearer).
    #[arg(long, env = "VOXD_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
}

pub fn run(common: &CommonArgs, args: ClientArgs) -> Result<()> {
    super::common_config(common)?;
    tokio::runtime::Runtime::new()?.block_on(client(args))
}

/// What the client has seen so far, and the latencies it measured.
struct Tally<'a> {
    args: &'a ClientArgs,
    /// True ends of speech in the file (ms from the start of streaming).
    speech_ends: Vec<u64>,
    start: tokio::time::Instant,
    /// Turns transcribed (or failed).
    done: usize,
    /// Answers finished.
    answered: usize,
    answer_started: bool,
    latencies: Vec<i64>,
    first_token_latencies: Vec<i64>,
    audio_out: Vec<u8>,
}

impl Tally<'_> {
    /// Milliseconds from the end of speech of turn `turn` to now, when that can be known (the
    /// audio was paced in real time and turns ended by the server's VAD).
    fn since_end_of_speech(&self, turn: usize) -> Option<i64> {
        let now_ms = self.start.elapsed().as_millis() as i64;
        self.speech_ends
            .get(turn)
            .filter(|_| self.args.realtime && !self.args.manual)
            .map(|&end| now_ms - end as i64)
    }

    fn on_event(&mut self, event: &ServerEvent) -> Result<()> {
        let quiet = self.args.json;
        match event {
            ServerEvent::TranscriptionDelta { delta, .. } if !quiet => {
                print!("{delta}");
                std::io::stdout().flush()?;
            }
            ServerEvent::TranscriptionCompleted {
                transcript,
                voxd_timing,
                ..
            } => {
                let latency = self.since_end_of_speech(self.done);
                self.latencies.extend(latency);
                if !quiet {
                    println!();
                    let timing = voxd_timing
                        .as_ref()
                        .map(|t| {
                            let kind = if t.speculative { ", speculative" } else { "" };
                            format!(" (asr {} ms{kind})", t.asr_ms)
                        })
                        .unwrap_or_default();
                    match latency {
                        Some(l) => println!(
                            "[final] {transcript}\n        end of speech -> final: {l} ms{timing}"
                        ),
                        None => println!("[final] {transcript}{timing}"),
                    }
                }
                self.done += 1;
            }
            ServerEvent::TranscriptionFailed { error, .. } => {
                // A turn that could not be transcribed is finished too.
                if !quiet {
                    eprintln!("\n[transcription failed] {}", error.message);
                }
                self.done += 1;
            }
            ServerEvent::OutputAudioDelta { delta, .. } => {
                use base64::Engine;
                match base64::engine::general_purpose::STANDARD.decode(delta) {
                    Ok(bytes) => self.audio_out.extend_from_slice(&bytes),
                    Err(e) => eprintln!("error: bad audio delta: {e}"),
                }
            }
            ServerEvent::OutputTextDelta { delta, .. }
            | ServerEvent::OutputAudioTranscriptDelta { delta, .. } => {
                self.on_answer_delta(delta)?
            }
            ServerEvent::ResponseDone { response } => {
                self.answered += 1;
                self.answer_started = false;
                if !quiet {
                    print_response_done(response);
                }
            }
            ServerEvent::Error { error } => eprintln!(
                "error: {} ({})",
                error.message,
                error.code.as_deref().unwrap_or("")
            ),
            _ => {}
        }
        Ok(())
    }

    fn on_answer_delta(&mut self, delta: &str) -> Result<()> {
        if !self.answer_started {
            self.answer_started = true;
            let latency = self.since_end_of_speech(self.answered);
            self.first_token_latencies.extend(latency);
            if !self.args.json {
                match latency {
                    Some(l) => print!("[answer, first token {l} ms after the end of speech] "),
                    None => print!("[answer] "),
                }
            }
        }
        if !self.args.json {
            print!("{delta}");
            std::io::stdout().flush()?;
        }
        Ok(())
    }

    /// Prints the medians and writes the spoken answers' audio.
    fn finish(mut self) -> Result<()> {
        if !self.args.json {
            print_median("final", &mut self.latencies);
            print_median("first answer token", &mut self.first_token_latencies);
        }
        if let Some(path) = &self.args.audio_out {
            voxd::client::wav::write_pcm16(path, 24_000, &self.audio_out)?;
            if !self.args.json {
                println!(
                    "wrote {:.1} s of spoken answers to {}",
                    self.audio_out.len() as f64 / 48_000.0,
                    path.display()
                );
            }
        }
        Ok(())
    }
}

fn print_median(what: &str, latencies: &mut [i64]) {
    if latencies.is_empty() {
        return;
    }
    latencies.sort_unstable();
    println!(
        "median end of speech -> {what}: {} ms over {} turn(s)",
        latencies[latencies.len() / 2],
        latencies.len()
    );
}

fn print_response_done(response: &serde_json::Value) {
    println!();
    let status = response["status"].as_str().unwrap_or("");
    let sources: Vec<String> = response["voxd"]["citations"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| x["title"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    let sources = if sources.is_empty() {
        "none".into()
    } else {
        sources.join(", ")
    };
    println!("        ({status}; sources: {sources})");
}

/// The session configuration the client asks for.
fn session_config(args: &ClientArgs) -> serde_json::Value {
    let turn_detection = if args.manual {
        serde_json::Value::Null
    } else {
        serde_json::json!({"type": "server_vad", "silence_duration_ms": args.silence_ms})
    };
    let speculative = if args.no_speculative {
        serde_json::Value::Null
    } else {
        serde_json::json!(100)
    };
    let mut session = serde_json::json!({
        "type": if args.answer { "realtime" } else { "transcription" },
        "audio": {"input": {"format": {"type": "audio/pcm", "rate": args.rate}, "turn_detection": turn_detection}},
        "voxd": {"speculative_after_ms": speculative}
    });
    if args.answer {
        let modality = if args.audio_out.is_some() {
            "audio"
        } else {
            "text"
        };
        session["output_modalities"] = serde_json::json!([modality]);
    }
    session
}

async fn client(args: ClientArgs) -> Result<()> {
    let decoded = audio::decode_file(&args.file, args.channel)
        .with_context(|| format!("reading {}", args.file.display()))?;
    let at_16k = audio::to_model_rate(decoded.clone())?.samples;
    let mut samples =
        audio::resample::resample_all(&decoded.samples, decoded.sample_rate, args.rate)?;
    samples.extend(vec![0.0; (args.rate as u64 * args.tail_ms / 1000) as usize]);
    // True ends of speech in the file, for latency figures.
    let vad = voxd::vad::VadParams {
        silence_duration_ms: args.silence_ms,
        ..Default::default()
    };
    let speech_ends: Vec<u64> = voxd::vad::segment(&at_16k, vad)
        .into_iter()
        .map(|(_, end)| end)
        .collect();

    let (mut tx, mut rx) = voxd::client::connect(&args.url, args.api_key.as_deref()).await?;
    tx.update_session(session_config(&args)).await?;

    let (rate, realtime, binary, manual) = (args.rate, args.realtime, args.binary, args.manual);
    let mut tally = Tally {
        args: &args,
        speech_ends,
        start: tokio::time::Instant::now(),
        done: 0,
        answered: 0,
        answer_started: false,
        latencies: Vec::new(),
        first_token_latencies: Vec::new(),
        audio_out: Vec::new(),
    };
    let sender = tokio::spawn(async move {
        tx.stream(&samples, rate, 20, realtime, binary).await?;
        if manual {
            tx.commit().await?;
        }
        Ok::<_, voxd::client::ClientError>(tx)
    });

    let expected_turns = if args.manual {
        1
    } else {
        tally.speech_ends.len().max(1)
    };
    let mut streaming_done = false;
    let mut sender = Some(sender);
    // An answer, or a transcript from a remote engine, may take a while on a busy CPU.
    let idle_limit = std::time::Duration::from_secs(if args.answer { 60 } else { 30 });
    while tally.done < expected_turns || (args.answer && tally.answered < tally.done) {
        let msg = tokio::select! {
            m = rx.next() => m,
            r = async { sender.as_mut().expect("checked").await }, if sender.is_some() => {
                sender = None;
                r??;
                streaming_done = true;
                continue;
            }
            _ = tokio::time::sleep(idle_limit), if streaming_done => {
                eprintln!("no more turns after the audio ended ({} of {expected_turns} transcribed)", tally.done);
                break;
            }
        };
        let Some(msg) = msg else { break };
        let event = match msg? {
            Incoming::Event(e) => e,
            Incoming::Other(v) => {
                if args.json {
                    println!("{v}");
                }
                continue;
            }
            Incoming::Audio(bytes) => {
                tally.audio_out.extend_from_slice(&bytes);
                continue;
            }
            Incoming::Closed { code, reason } => {
                bail!("the server closed the session ({code} {reason})")
            }
        };
        if args.json {
            println!("{}", serde_json::to_string(&event)?);
        }
        tally.on_event(&event)?;
    }
    tally.finish()
}
