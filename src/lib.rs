//! voxd: a self-hosted, real-time voice assistant server.
//!
//! A session is a pipeline of stages joined by bounded channels, one session per connection:
//!
//! ```text
//! transport (WebSocket / HTTP) ─▶ audio (decode, resample to 16 kHz) ─▶ turn detection (VAD,
//!   end-of-turn model) ─▶ ASR (whisper pool or remote) ─▶ RAG (retrieve passages, rank their
//!   sentences) ─▶ answer (extractive, or the LLM checked against the passages, with tool calls)
//!   ─▶ voice (TTS) ─▶ protocol events out
//! ```
//!
//! Each stage is a module with a small interface, swappable behind a trait (local model or
//! remote endpoint), and owns its configuration (`<stage>/config.rs`). Heavy model compute runs on
//! bounded worker pools, never on the async executor. Imports point one way: `server` →
//! `realtime` → the stages → `protocol` and the shared vocabulary ([`ids`], [`setting`]). The
//! modules, in pipeline order:
//!
//! - [`models`]: fetch, verify, convert and cache the default models; resolve a user's own files.
//! - [`audio`]: decode files and uploads, stream-resample any rate to 16 kHz, encode answers.
//! - [`vad`]: turn detection: webrtc-vad or Silero frames into turns; Smart Turn for `semantic_vad`.
//! - [`asr`]: the speech recogniser trait, the embedded whisper.cpp pool, a remote engine.
//! - [`rag`]: the knowledge base: embeddings, the SQLite or PostgreSQL + pgvector store, chunking,
//!   hybrid retrieval.
//! - [`grounding`]: the sentences of the passages that bear on the question (the prompt's grounding
//!   and the extractive answer), and the check of an answer against them.
//! - [`prompt`]: the grounded prompt (instructions, delimited passages, history) and ChatML.
//! - [`llm`]: the language-model trait: SmolLM2 in-process or an OpenAI-compatible endpoint; the
//!   model's side of tool calling (the call format, the checked generation).
//! - [`tools`]: tool definitions, JSON Schema validation, server tools, roles, the audit trail.
//! - [`tts`]: speech synthesis: the Piper voice on ONNX Runtime, or an OpenAI-compatible endpoint.
//! - [`onnx`]: ONNX Runtime, loaded at run time; the engine of the voice and turn-taking models.
//! - [`protocol`]: the OpenAI Realtime API events and session configuration.
//! - [`realtime`]: one realtime session: audio stage, turns, conversation, responses, and
//!   `realtime::answer` (an answer as steps: ground → choose → generate → speak → report).
//! - [`server`]: the HTTP routes (realtime, transcription, speech, knowledge base, chat, audit,
//!   health, the web demo) and the guard in front of them.
//! - [`eval`]: `voxd eval`, answer quality on a suite of questions.
//! - [`bench`]: `voxd bench`, the load and latency tool (true end of speech to each stage).
//! - [`client`]: the Rust client for the realtime API (used by `voxd client`).
//! - [`openai_http`]: the client for OpenAI-compatible endpoints used by the remote backends.
//! - [`config`]: the common flags and the file, assembled with each stage's own settings.
//! - [`setting`]: what every stage's configuration shares (the error, the range check).
//! - [`telemetry`]: logging and trace export.
//! - [`metrics`]: stage latencies, counters and gauges for `GET /metrics` (Prometheus).
//! - [`workers`]: the bounded worker-thread pool for model compute.
//! - [`ids`], [`wav`], [`wer`]: ids, WAV files, word error rate.
//!
//! With `default-features = false, features = ["client"]`, only [`client`], [`protocol`]'s
//! events, [`ids`], [`wav`] and [`wer`] are built: an application can talk to voxd without
//! compiling the models.

// No unsafe code, except the one reviewed FFI callback in `asr::whisper` (allowed there by name).
#![deny(unsafe_code)]

#[cfg(feature = "server")]
pub mod asr;
#[cfg(feature = "server")]
pub mod audio;
#[cfg(feature = "server")]
pub mod bench;
#[cfg(feature = "client")]
pub mod client;
#[cfg(feature = "server")]
pub mod config;
#[cfg(feature = "server")]
pub mod eval;
#[cfg(feature = "server")]
pub mod grounding;
pub mod ids;
#[cfg(feature = "server")]
pub mod llm;
#[cfg(feature = "server")]
pub mod metrics;
#[cfg(feature = "server")]
pub mod models;
#[cfg(feature = "server")]
pub mod onnx;
#[cfg(feature = "server")]
pub mod openai_http;
#[cfg(feature = "server")]
pub mod prompt;
pub mod protocol;
#[cfg(feature = "server")]
pub mod rag;
#[cfg(feature = "server")]
pub mod realtime;
#[cfg(feature = "server")]
pub mod rtc;
#[cfg(feature = "server")]
pub mod server;
#[cfg(feature = "server")]
pub mod setting;
#[cfg(feature = "server")]
pub mod telemetry;
#[cfg(feature = "server")]
pub mod tools;
#[cfg(feature = "server")]
pub mod tts;
#[cfg(feature = "server")]
pub mod vad;
pub mod wav;
pub mod wer;
#[cfg(feature = "server")]
pub mod workers;
