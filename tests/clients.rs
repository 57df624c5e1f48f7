//! Clients other than voxd's own Rust code, each against a real `voxd serve` process (default
//! models, the fixture knowledge base, an API key): the JavaScript SDK (Node's test runner), the
//! web demo in headless Chromium (playwright-core), the official OpenAI Python and Node SDKs, the
//! OpenAI Agents SDK, the conformance of every server event to openai-python's types, and the
//! Rust client example built with only the `client` feature.
//!
//! They need Node.js with `tests/js/node_modules`, Chromium, and Python 3 with venv: `bash
//! scripts/deps --test` installs them (scripts/test runs it). A missing tool fails the test with
//! that hint rather than skipping it.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

const API_KEY: &str = "sk-voxd-clients-test";

/// One test at a time: each runs a server and a model-heavy client.
static SERIAL: Mutex<()> = Mutex::new(());

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The fixture knowledge base, ingested once per test binary with `voxd kb add`.
fn kb_file() -> &'static Path {
    static KB: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    &KB.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let path = common::kb_added_by_cli(dir.path());
        (dir, path)
    })
    .1
}

/// `voxd serve` with the fixture knowledge base and an API key, ready to answer.
struct Server {
    process: common::ServeProcess,
    base: String,
}

impl Server {
    fn start() -> Server {
        Self::start_with(&[])
    }

    /// [`Server::start`] with more `voxd serve` flags.
    fn start_with(more: &[&str]) -> Server {
        let mut args: Vec<&std::ffi::OsStr> = vec![
            "--api-key".as_ref(),
            API_KEY.as_ref(),
            "--kb".as_ref(),
            kb_file().as_os_str(),
        ];
        args.extend(more.iter().map(std::ffi::OsStr::new));
        let process = common::ServeProcess::start(&args);
        let server = Server {
            base: format!("http://{}", process.addr),
            process,
        };
        server.wait_ready();
        server
    }

    /// [`Server::start`] serving HTTPS and WSS with a certificate from `ca`.
    fn start_tls(ca: &common::TestCa) -> Server {
        let process = common::ServeProcess::start(&[
            "--api-key".as_ref(),
            API_KEY.as_ref(),
            "--kb".as_ref(),
            kb_file().as_os_str(),
            "--tls-cert".as_ref(),
            ca.cert.as_os_str(),
            "--tls-key".as_ref(),
            ca.key.as_os_str(),
        ]);
        let server = Server {
            base: format!("https://{}", process.addr),
            process,
        };
        let client = ca.client();
        let ready = tokio::runtime::Runtime::new().unwrap().block_on(async {
            let deadline = Instant::now() + Duration::from_secs(300);
            while Instant::now() < deadline {
                let r = client.get(format!("{}/readyz", server.base)).send().await;
                if r.is_ok_and(|r| r.status() == 200) {
                    return true;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            false
        });
        assert!(
            ready,
            "voxd serve (TLS) never became ready:\n{}",
            server.log_tail()
        );
        server
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(300);
        while Instant::now() < deadline {
            if http_status(&self.base, "/readyz") == Some(200) {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!("voxd serve never became ready:\n{}", self.log_tail());
    }

    fn log_tail(&self) -> String {
        self.process.log_tail()
    }

    /// Runs a client command with the server's addresses in its environment; panics with its
    /// output (and the server's log) unless it succeeds.
    fn run(&self, what: &str, mut cmd: Command) -> String {
        let out = cmd
            .env("VOXD_URL", &self.base)
            .env(
                "VOXD_WS_URL",
                format!("ws{}/v1/realtime", self.base.trim_start_matches("http")),
            )
            .env("VOXD_API_KEY", API_KEY)
            .env("VOXD_AUDIO_DIR", common::data(""))
            .env("VOXD_ARTIFACTS", artifacts())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {what}: {e}\n{HINT}"));
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "{what} failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}\n--- server log (tail)\n{}",
            out.status,
            self.log_tail()
        );
        eprintln!("{stdout}{stderr}");
        stdout
    }
}

/// The status of `GET path` (a plain HTTP/1.1 request over loopback).
fn http_status(base: &str, path: &str) -> Option<u16> {
    use std::io::{Read, Write};
    let addr = base.strip_prefix("http://")?;
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut head = [0u8; 12];
    s.read_exact(&mut head).ok()?;
    std::str::from_utf8(&head[9..12]).ok()?.parse().ok()
}

const HINT: &str =
    "run `bash scripts/deps --test` to install Node.js packages, Chromium and Python venv";

/// Where tests leave files for people to look at (the demo's screenshot).
fn artifacts() -> PathBuf {
    let dir = root().join("target/test-artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn node(test_file: &str) -> Command {
    let js = root().join("tests/js");
    assert!(
        js.join("node_modules/playwright-core").exists() && js.join("node_modules/openai").exists(),
        "tests/js/node_modules is missing: {HINT}"
    );
    let mut c = Command::new("node");
    // Node 20 has its WebSocket behind a flag (22+ has it by default).
    c.current_dir(&js)
        .args(["--experimental-websocket", "--test", "--test-reporter=spec"])
        .arg(test_file);
    c
}

/// How many tests Node's runner reports as passed (its exit status already says none failed).
fn node_passed(out: &str) -> usize {
    out.lines()
        .find_map(|l| l.trim_start_matches(['ℹ', '#', ' ']).strip_prefix("pass "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

#[test]
fn javascript_sdk_against_voxd_serve() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let server = Server::start();
    let out = server.run("node --test sdk.test.mjs", node("sdk.test.mjs"));
    assert!(node_passed(&out) >= 8, "{out}");
}

#[test]
fn web_demo_in_headless_chromium() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    assert!(
        Path::new("/usr/bin/chromium").exists(),
        "Chromium is missing: {HINT}"
    );
    // The fake microphone plays JFK once, then silence, so the turn ends and is answered.
    let wav = artifacts().join("jfk-for-browser.wav");
    let jfk = voxd::client::wav::read(common::data("jfk.wav")).unwrap();
    let pad = |seconds: f32| vec![0.0; (seconds * jfk.sample_rate as f32) as usize];
    let samples = [pad(0.5), jfk.samples.clone(), pad(4.0)].concat();
    write_wav(&wav, &samples, jfk.sample_rate);
    let server = Server::start();
    let out = server.run("node --test demo.test.mjs", {
        let mut c = node("demo.test.mjs");
        c.env("VOXD_FAKE_AUDIO", &wav);
        c
    });
    assert!(node_passed(&out) >= 5, "{out}");
    assert!(artifacts().join("web-demo.png").exists());
}

/// The demo on a server with a key and `--demo-client-secrets`: no key is typed; the page gets a
/// client secret for its session, and the server's key never reaches the browser.
#[test]
fn web_demo_with_a_client_secret_in_headless_chromium() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let server = Server::start_with(&["--demo-client-secrets"]);
    let out = server.run(
        "node --test demo-secret.test.mjs",
        node("demo-secret.test.mjs"),
    );
    assert!(node_passed(&out) >= 2, "{out}");
}

/// The demo over WebRTC in Chromium: the browser's own WebRTC stack calls voxd, the fake
/// microphone's question is answered, and the answer's audio arrives on the call's track.
#[test]
fn web_demo_over_webrtc_in_headless_chromium() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let question = "What time do you open on Sunday?";
    let dir = tempfile::tempdir().unwrap();
    let speech = common::speak(dir.path(), question, 16_000);
    let pad = |seconds: f32| vec![0.0; (seconds * 16_000.0) as usize];
    let wav = artifacts().join("question-for-webrtc.wav");
    write_wav(&wav, &[pad(1.0), speech, pad(6.0)].concat(), 16_000);
    let server = Server::start();
    let out = server.run("node --test demo-webrtc.test.mjs", {
        let mut c = node("demo-webrtc.test.mjs");
        c.env("VOXD_FAKE_AUDIO", &wav)
            .env("VOXD_QUESTION_TEXT", question);
        c
    });
    assert!(node_passed(&out) >= 1, "{out}");
}

/// The official Agents SDK for the browser (`@openai/agents-realtime`) in Chromium with its
/// WebRTC transport: a page on another origin with only a client secret calls voxd, its fake
/// microphone's question is answered aloud over the call, and `interrupt()` stops the answer.
#[test]
fn openai_agents_sdk_over_webrtc_in_headless_chromium() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let question = "What time do you open on Sunday?";
    let dir = tempfile::tempdir().unwrap();
    let speech = common::speak(dir.path(), question, 16_000);
    let pad = |seconds: f32| vec![0.0; (seconds * 16_000.0) as usize];
    let wav = artifacts().join("question-for-agents-sdk.wav");
    write_wav(&wav, &[pad(2.0), speech, pad(30.0)].concat(), 16_000);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let app = format!("http://localhost:{port}");
    let server = Server::start_with(&["--allowed-origins", &app]);
    let out = server.run("node --test agents-webrtc.test.mjs", {
        let mut c = node("agents-webrtc.test.mjs");
        c.env("VOXD_FAKE_AUDIO", &wav)
            .env("VOXD_QUESTION_TEXT", question)
            .env("VOXD_APP_ORIGIN", &app);
        c
    });
    assert!(node_passed(&out) >= 1, "{out}");
    // What Chromium decoded from the call is the answer, spoken.
    hear_answer(&out, "agents-sdk-answer.wav");
}

/// Checks a WebRTC client's report: its `answer: ` line names Sunday's opening time, and the
/// audio it received (`wav` in the artifacts) is that answer, heard back by voxd's recogniser.
fn hear_answer(out: &str, wav: &str) {
    let answer = out
        .lines()
        .find_map(|l| l.strip_prefix("answer: "))
        .unwrap_or_else(|| panic!("no answer in:\n{out}"));
    assert!(answer.contains("10"), "the Sunday opening time: {answer}");
    let audio = voxd::client::wav::read(artifacts().join(wav)).unwrap();
    let at16 =
        voxd::audio::resample::resample_all(&audio.samples, audio.sample_rate, 16_000).unwrap();
    let heard = tokio::runtime::Runtime::new().unwrap().block_on(async {
        use voxd::asr::Asr;
        common::pool()
            .transcribe(voxd::asr::Request::new(at16))
            .await
            .unwrap()
            .text
    });
    let e = voxd::wer::wer(answer, &heard);
    assert!(e <= 0.35, "WER {e:.2}: said {answer:?}, heard {heard:?}");
}

#[test]
fn official_openai_node_sdk() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let server = Server::start();
    let out = server.run(
        "node --test openai-node.test.mjs",
        node("openai-node.test.mjs"),
    );
    assert!(node_passed(&out) >= 1, "{out}");
}

/// The official Python and Node SDKs over `wss://`, trusting a test certificate authority the
/// way their users would (`SSL_CERT_FILE`, `NODE_EXTRA_CA_CERTS`).
#[test]
fn official_sdks_over_tls() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let python = openai_python();
    let dir = tempfile::tempdir().unwrap();
    let ca = common::TestCa::new(dir.path(), "sdk");
    let server = Server::start_tls(&ca);
    assert!(server.base.starts_with("https://127.0.0.1:"));
    let mut cmd = Command::new(python);
    cmd.arg(root().join("tests/python/openai_realtime.py"))
        .env("SSL_CERT_FILE", &ca.ca);
    let out = server.run("the OpenAI Python SDK script over TLS", cmd);
    assert!(out.contains("ok: "), "{out}");
    let mut cmd = node("openai-node.test.mjs");
    cmd.env("NODE_EXTRA_CA_CERTS", &ca.ca);
    let out = server.run("node --test openai-node.test.mjs over TLS", cmd);
    assert!(node_passed(&out) >= 1, "{out}");
}

/// A WebRTC call from aiortc (tests/python/aiortc_call.py): a spoken question on the microphone
/// track, the events on `oai-events`, the spoken answer back on the audio track, heard back by
/// voxd's recogniser; hung up, the session is gone; a call in G.711 (PCMU) works the same; a peer
/// that vanishes is let go too.
#[test]
fn a_webrtc_call_from_aiortc() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let python = openai_python();
    let dir = tempfile::tempdir().unwrap();
    let question = "What time do you open on Sunday?";
    let wav = dir.path().join("question.wav");
    write_wav(&wav, &common::speak(dir.path(), question, 16_000), 16_000);
    let server = Server::start();
    let mut cmd = Command::new(python);
    cmd.arg(root().join("tests/python/aiortc_call.py"))
        .env("VOXD_QUESTION", &wav)
        .env("VOXD_QUESTION_TEXT", question);
    let out = server.run("the aiortc call", cmd);
    assert!(out.contains("ok: "), "{out}");
    // What the peer received on its audio track is the answer, spoken.
    hear_answer(&out, "webrtc-answer.wav");
    // Hung up: no session is left.
    wait_for_no_sessions(&server, Duration::from_secs(10));
    // A peer that offers only G.711 μ-law (as a telephone gateway does) gets it, both ways.
    let mut cmd = Command::new(openai_python());
    cmd.arg(root().join("tests/python/aiortc_call.py"))
        .env("VOXD_QUESTION", &wav)
        .env("VOXD_QUESTION_TEXT", question)
        .env("VOXD_CODEC", "PCMU");
    let out = server.run("the aiortc call in PCMU", cmd);
    assert!(out.contains("ok: "), "{out}");
    hear_answer(&out, "webrtc-answer-pcmu.wav");
    wait_for_no_sessions(&server, Duration::from_secs(10));
    // A peer that vanishes mid-call (no hang-up, no close, no more packets) is noticed by its
    // missing connectivity checks, and its session and port are let go.
    let python = openai_python();
    let mut cmd = Command::new(python);
    cmd.arg(root().join("tests/python/aiortc_call.py"))
        .env("VOXD_QUESTION", &wav)
        .env("VOXD_QUESTION_TEXT", question)
        .env("VOXD_VANISH", "1");
    let out = server.run("the aiortc call that vanishes", cmd);
    assert!(out.contains("ok: vanished"), "{out}");
    wait_for_no_sessions(&server, Duration::from_secs(60));
}

fn wait_for_no_sessions(server: &Server, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let m = server_metrics(&server.base);
        if m.lines().any(|l| l == "voxd_live_sessions 0") {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "a session outlived its call:\n{}",
            server.log_tail()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `/metrics` of a test server (plain HTTP/1.1 over loopback).
fn server_metrics(base: &str) -> String {
    use std::io::{Read, Write};
    let addr = base.strip_prefix("http://").unwrap();
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {API_KEY}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

/// Writes mono PCM16 WAV.
fn write_wav(path: &Path, samples: &[f32], rate: u32) {
    let data: Vec<u8> = samples
        .iter()
        .flat_map(|s| ((s.clamp(-1.0, 1.0) * 32767.0) as i16).to_le_bytes())
        .collect();
    let mut b = Vec::with_capacity(44 + data.len());
    b.extend(b"RIFF");
    b.extend((36 + data.len() as u32).to_le_bytes());
    b.extend(b"WAVEfmt ");
    for field in [16u32, 1 | (1 << 16), rate, rate * 2, 2 | (16 << 16)] {
        b.extend(field.to_le_bytes());
    }
    b.extend(b"data");
    b.extend((data.len() as u32).to_le_bytes());
    b.extend(data);
    std::fs::write(path, b).unwrap();
}

use common::python::openai_python;

#[test]
fn official_openai_python_sdk() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let python = openai_python();
    let server = Server::start();
    let mut cmd = Command::new(python);
    cmd.arg(root().join("tests/python/openai_realtime.py"));
    let out = server.run("the OpenAI Python SDK script", cmd);
    assert!(out.contains("ok: "), "{out}");
}

/// Every server event of a scripted session (spoken and text turns, cancel, truncate,
/// retrieve/delete, out-of-band, incomplete, manual commits, errors, idle timeout, a
/// transcription session) validates as openai-python's `RealtimeServerEvent`.
#[test]
fn every_server_event_validates_against_the_openai_python_types() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let python = openai_python();
    let server = Server::start();
    let mut cmd = Command::new(python);
    cmd.arg(root().join("tests/python/conformance.py"));
    let out = server.run("the conformance script", cmd);
    assert!(out.contains("all valid RealtimeServerEvent"), "{out}");
}

/// The OpenAI Agents SDK's `RealtimeAgent` and `RealtimeRunner`, over its WebSocket transport,
/// complete a spoken and a text turn with no error and no failed validation.
#[test]
fn openai_agents_sdk_realtime_agent() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let python = openai_python();
    let server = Server::start();
    let mut cmd = Command::new(python);
    cmd.arg(root().join("tests/python/agents_realtime.py"));
    let out = server.run("the Agents SDK script", cmd);
    assert!(out.contains("ok: "), "{out}");
}

/// The Agents SDK with an MCP server attached (one written with the official Python MCP SDK):
/// it offers the server's tool to voxd, runs the call the model makes, and the agent answers.
#[test]
fn openai_agents_sdk_with_an_mcp_server() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let python = openai_python();
    let shop = common::python::shop_mcp();
    let server = Server::start();
    let mut cmd = Command::new(python);
    cmd.arg(root().join("tests/python/agents_mcp.py"))
        .env("VOXD_MCP_URL", &shop.url);
    let out = server.run("the Agents SDK MCP script", cmd);
    assert!(out.contains("ok: "), "{out}");
}

/// `examples/stream_file.rs`, which cargo builds beside the tests, streams JFK and prints the
/// transcript and the answer.
#[test]
fn rust_client_example_streams_a_file() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let example = std::env::current_exe()
        .unwrap()
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("examples/stream_file");
    assert!(example.exists(), "{} was not built", example.display());
    let server = Server::start();
    let dir = tempfile::tempdir().unwrap();
    let wav_out = dir.path().join("answer.wav");
    let mut cmd = Command::new(example);
    cmd.arg(common::data("LDC93S1_pcms16le_2_44100.wav"))
        .arg(format!(
            "{}/v1/realtime",
            server.base.replace("http://", "ws://")
        ))
        .arg("--fast")
        .arg("--save")
        .arg(&wav_out);
    let out = server.run("examples/stream_file", cmd);
    let transcript = out
        .lines()
        .find_map(|l| l.strip_prefix("transcript: "))
        .unwrap_or_else(|| panic!("no transcript in:\n{out}"));
    let wer = voxd::wer::wer(
        &common::reference("LDC93S1_pcms16le_2_44100.wav", ""),
        transcript,
    );
    assert!(wer <= 0.25, "WER {wer:.2}: {transcript}");
    assert!(
        out.lines().any(|l| l == "status: completed"),
        "no completed answer in:\n{out}"
    );
    let answer_lines = out
        .lines()
        .skip_while(|l| !l.starts_with("transcript: "))
        .skip(1)
        .take_while(|l| !l.starts_with("source: ") && !l.starts_with("audio: "))
        .collect::<String>();
    assert!(!answer_lines.trim().is_empty(), "empty answer in:\n{out}");
    // The answer was spoken, and the example saved its audio as a WAV the client can read.
    let saved = voxd::client::wav::read(&wav_out).unwrap();
    assert_eq!(saved.sample_rate, 24_000);
    assert!(
        saved.samples.len() > 24_000,
        "{} samples saved",
        saved.samples.len()
    );
}
