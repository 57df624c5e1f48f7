//! voxd: a self-hosted, real-time voice assistant server.
//!
//! A session is a pipeline of stages joined by bounded channels:
//!
//! ```text
//! transport (HTTP / WebSocket) ─▶ audio (decode, resample to 16 kHz) ─▶ turn detection (VAD)
//!     ─▶ ASR (whisper pool) ─▶ RAG (retrieve passages) ─▶ LLM ─▶ protocol events out
//! ```
//!
//! Each stage is a module with a small interface, swappable behind a trait (local model or
//! remote endpoint). Heavy model compute runs on dedicated worker threads, never on the async
//! executor. The modules, in pipeline order:
//!
//! - [`models`]: fetch, verify, convert and cache the default models; resolve a user's own files.
//! - [`audio`]: decode files and uploads, stream-resample any rate to 16 kHz.
//! - [`vad`]: turn detection (webrtc-vad frames → turns, with pause/resume for speculation).
//! - [`asr`]: the speech recogniser trait and the embedded whisper.cpp worker pool.
//! - [`rag`]: the knowledge base: embeddings, SQLite store, chunking, hybrid retrieval.
//! - [`llm`]: the language-model trait: SmolLM2 in-process (candle) or an OpenAI-compatible endpoint.
//! - [`grounding`]: the sentences of the passages that bear on the question (the prompt's grounding
//!   and the extractive answer), and the check of an answer against them.
//! - [`prompt`]: the grounded prompt (instructions, delimited passages, history) and ChatML.
//! - [`tools`]: function calling: tool definitions, JSON Schema validation, the call format.
//! - [`tts`]: speech synthesis: the Piper voice on ONNX Runtime, or an OpenAI-compatible endpoint.
//! - [`onnx`]: ONNX Runtime, loaded at run time; the engine of the voice and turn-taking models.
//! - [`protocol`]: the OpenAI Realtime API events and session configuration.
//! - [`realtime`]: one realtime session wiring audio, VAD, ASR and events over a WebSocket.
//! - [`server`]: the HTTP routes (health, readiness, OpenAI-compatible transcription).
//! - [`client`]: the Rust client for the realtime API (used by `voxd client`).
//! - [`openai_http`]: the client for OpenAI-compatible endpoints used by the remote backends.
//! - [`config`]: flags, environment and TOML file merged into one validated configuration.
//! - [`telemetry`]: logging setup.
//! - [`metrics`]: stage latencies, counters and gauges for `GET /metrics` (Prometheus).
//! - [`bench`]: `voxd bench`, the load and latency tool (true end of speech to each stage).
//! - [`wer`]: word error rate, for tests and benchmarks.
//! - [`workers`]: the bounded worker-thread pool for model compute.
//!
//! With `default-features = false, features = ["client"]`, only [`client`], [`protocol`]'s
//! events and [`wer`] are built: an application can talk to voxd without compiling the models.

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
