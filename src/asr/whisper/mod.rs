//! The embedded Whisper backend: one whisper.cpp model shared by a fixed pool of worker threads,
//! each owning its own decoding state.
//!
//! Work arrives on two queues (finals, partials) guarded by one mutex. `pool_size` workers take
//! finals; one more worker, at a lower scheduling priority ([`PARTIAL_NICE`] on Linux), takes
//! partials. The compute runs on these dedicated threads, never on the async executor; callers
//! await a oneshot reply. Partials are served first come, first served across sessions (each
//! session keeps at most one queued), are skipped once they have waited [`PARTIAL_MAX_WAIT`] (a
//! newer one of the same speech is coming) and, beyond `max_queue`, the oldest is dropped. Finals
//! are never skipped; beyond `max_queue` waiting finals, new ones get [`AsrError::Busy`]. A final
//! of 6.4 s or more that starts while the recogniser is otherwise idle uses every core instead of
//! `threads`.
//!
//! Partials are previews; finals, prefills and the voice are what people wait for. So partials
//! only get the CPU the rest leaves: their worker runs at a lower priority, so the kernel gives
//! the cores to the other stages first and under load the previews thin out (they wait, go
//! stale and are skipped) instead of slowing the answers down. Measured at 8 sessions, partials
//! at the same priority took half of the recogniser's CPU and a third of it was thrown away by
//! aborts. While a final runs on every core, a running partial is aborted (whisper.cpp's abort
//! callback, checked between graph nodes and decoder steps) and answered with
//! [`AsrError::Superseded`]. A partial also waits (up to [`PARTIAL_YIELD_MAX`]) before it starts
//! while other opening work is pending anywhere in the server ([`crate::workers::OpeningWork`]:
//! a final, a new question's prefill, an end-of-turn check).

use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use tokio::sync::oneshot;
use tracing::{debug, info, warn};
use whisper_rs::{
    FullParams, SamplingStrategy, WhisperContext, WhisperContextParameters, WhisperState,
};

use super::{Asr, AsrError, Priority, Request, Segment, Transcript};
use crate::models::ggml;
pub use crate::protocol::session::MAX_PROMPT_BYTES;

mod bias;
mod decode;
mod worker;

use decode::*;
pub use decode::{check_language, check_prompt};
use worker::*;

/// How much of Whisper's 30 s encoder window to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AudioCtx {
    /// Trim the window to the audio's length (plus a margin) when it is shorter than 30 s.
    Auto,
    /// Always the full window.
    Full,
    /// A fixed number of encoder positions (50 per second of audio).
    Fixed(u32),
}

impl std::str::FromStr for AudioCtx {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(AudioCtx::Auto),
            "full" | "0" => Ok(AudioCtx::Full),
            n => n
                .parse::<u32>()
                .ok()
                .filter(|&n| (1..=1500).contains(&n))
                .map(AudioCtx::Fixed)
                .ok_or_else(|| format!("`{s}` is not an audio_ctx: use auto, full or 1..1500")),
        }
    }
}

/// Settings of the whisper pool.
#[derive(Debug, Clone)]
pub struct WhisperConfig {
    pub model_path: PathBuf,
    /// Concurrent transcriptions (each has its own state).
    pub pool_size: usize,
    /// CPU threads per transcription.
    pub threads: usize,
    /// Default language code.
    pub language: String,
    /// Default initial prompt.
    pub prompt: Option<String>,
    pub audio_ctx: AudioCtx,
    /// Beam width; 1 = greedy decoding (the default).
    pub beam_size: usize,
    /// Final requests allowed to wait before new ones are refused.
    pub max_queue: usize,
    /// Bias decoding towards a request's hints ([`bias`]).
    pub hints: bool,
}

impl WhisperConfig {
    pub fn new(model_path: PathBuf) -> Self {
        let cores = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2);
        WhisperConfig {
            model_path,
            pool_size: cores,
            threads: 1,
            language: "en".into(),
            prompt: None,
            audio_ctx: AudioCtx::Auto,
            beam_size: 1,
            max_queue: 64,
            hints: true,
        }
    }
}

/// Encoder positions per second of audio (100 mel frames/s, halved by the conv stride).
const CTX_PER_SECOND: f64 = 50.0;
/// Extra positions beyond the audio, so the last word is not cut.
const CTX_MARGIN: i32 = 64;
/// The smallest trimmed window. Below about 220 positions (4.4 s) tiny.en falls into repetition
/// loops on short clips (measured on LDC93S1: 210 loops, 224 does not); 320 leaves a margin.
const CTX_FLOOR: i32 = 320;
/// Audio from which a final with the pool idle runs on every core (6.4 s: beyond it the encoder's
/// window grows past its floor and the encoder dominates).
const WIDE_MIN_SAMPLES: usize = 16_000 * 64 / 10;
/// A partial that waited longer than this is stale: skipped with [`AsrError::Superseded`].
pub const PARTIAL_MAX_WAIT: Duration = Duration::from_millis(1500);

/// A partial waits at most this long for opening work (a final transcript, a new question's
/// prefill) to clear before it starts anyway.
const PARTIAL_YIELD_MAX: Duration = Duration::from_millis(700);
/// How often a deferred partial checks whether the opening work has cleared.
const OPENING_POLL: Duration = Duration::from_millis(20);
/// The partial worker's nice value (Linux): against a busy thread of normal priority it gets
/// about a tenth of a core (CFS weights 110 against 1024), and all of an idle one.
pub const PARTIAL_NICE: i32 = 10;

/// whisper.cpp skips inputs shorter than one second: pad up to this many samples.
const MIN_SAMPLES: usize = 16_000 + 1_600;

/// The `audio_ctx` to use for `n` samples at 16 kHz (0 = the model's full window).
pub fn audio_ctx_for(policy: AudioCtx, n_samples: usize, model_ctx: i32) -> i32 {
    match policy {
        AudioCtx::Full => 0,
        AudioCtx::Fixed(n) => (n as i32).min(model_ctx),
        AudioCtx::Auto => {
            let needed = ((n_samples as f64 / 16_000.0 * CTX_PER_SECOND).ceil() as i32
                + CTX_MARGIN)
                .max(CTX_FLOOR);
            if needed >= model_ctx {
                0
            } else {
                needed
            }
        }
    }
}

struct Job {
    request: Request,
    reply: oneshot::Sender<Result<Transcript, AsrError>>,
    enqueued: Instant,
    /// Fault injection for tests: the job panics on its worker.
    panic: bool,
}

#[derive(Default)]
struct Queues {
    finals: VecDeque<Job>,
    partials: VecDeque<Job>,
    /// Final workers running a job.
    busy: usize,
    /// The partial worker is running a job.
    partial_busy: bool,
    /// Finals running with every core.
    wide_finals: usize,
    shutdown: bool,
}

struct Shared {
    queues: Mutex<Queues>,
    ready: Condvar,
    /// Final workers able to take jobs (a worker whose state could not be rebuilt after a panic
    /// exits).
    alive: AtomicUsize,
    /// Set when the pool stops: running transcriptions are aborted.
    stopping: AtomicBool,
    /// Running partials should stop: set (under the queue lock) while a final runs on every
    /// core; read by whisper.cpp's abort callback.
    preempt_partials: Arc<AtomicBool>,
}

impl Shared {
    /// Recomputes [`Shared::preempt_partials`]; call with the queue lock held, after a change.
    fn update_preempt(&self, q: &Queues) {
        let preempt = q.wide_finals > 0;
        self.preempt_partials.store(preempt, Ordering::Release);
    }
}

/// A pool of whisper.cpp workers sharing one loaded model.
pub struct WhisperPool {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
    config: WhisperConfig,
    description: String,
}

impl WhisperPool {
    /// Checks and loads the model, and starts `pool_size` final workers and the partial
    /// worker. Blocking: call it from a blocking context.
    pub fn load(config: WhisperConfig) -> Result<Self, AsrError> {
        // whisper.cpp trusts its input; check the file first so a bad one is an error, not a crash.
        let summary = ggml::validate_whisper(&config.model_path)?;
        whisper_rs::install_logging_hooks();
        let started = Instant::now();
        let path = config
            .model_path
            .to_str()
            .ok_or_else(|| AsrError::Load {
                path: config.model_path.clone(),
                reason: "the path is not valid UTF-8".into(),
            })?
            .to_owned();
        let ctx = WhisperContext::new_with_params(&path, WhisperContextParameters::default())
            .map_err(|e| AsrError::Load {
                path: config.model_path.clone(),
                reason: e.to_string(),
            })?;
        let model_ctx = summary.hparams.n_audio_ctx;
        let multilingual = summary.hparams.n_vocab >= 51865;
        let shared = Arc::new(Shared {
            queues: Mutex::new(Queues::default()),
            ready: Condvar::new(),
            alive: AtomicUsize::new(0),
            stopping: AtomicBool::new(false),
            preempt_partials: Arc::new(AtomicBool::new(false)),
        });
        let ctx = Arc::new(ctx);
        let pool_size = config.pool_size.max(1);
        let mut workers = Vec::with_capacity(pool_size + 1);
        for i in 0..=pool_size {
            let role = if i < pool_size {
                Role::Finals
            } else {
                Role::Partials
            };
            let state = ctx.create_state().map_err(|e| AsrError::Load {
                path: config.model_path.clone(),
                reason: format!("creating decoder state: {e}"),
            })?;
            let shared = shared.clone();
            let cfg = config.clone();
            let model = Model {
                ctx: ctx.clone(),
                n_audio_ctx: model_ctx,
                multilingual,
            };
            if role == Role::Finals {
                shared.alive.fetch_add(1, Ordering::SeqCst);
            }
            let name = match role {
                Role::Finals => format!("voxd-asr-{i}"),
                Role::Partials => "voxd-asr-part".to_string(),
            };
            let handle = std::thread::Builder::new()
                .name(name)
                .spawn(move || {
                    if role == Role::Partials {
                        crate::workers::lower_thread_priority(PARTIAL_NICE);
                    }
                    worker(shared, state, cfg, model, role)
                })
                .map_err(|e| AsrError::Engine(format!("cannot start worker thread: {e}")))?;
            workers.push(handle);
        }
        let name = config
            .model_path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        crate::metrics::model_memory("asr", crate::metrics::file_bytes(&config.model_path));
        info!(model = %config.model_path.display(), workers = pool_size, threads = config.threads,
              load_ms = started.elapsed().as_millis() as u64, "whisper model loaded");
        Ok(WhisperPool {
            shared,
            workers,
            description: format!(
                "whisper.cpp {name} ({pool_size} workers x {} threads, 1 for partials)",
                config.threads
            ),
            config,
        })
    }

    pub fn config(&self) -> &WhisperConfig {
        &self.config
    }

    /// Requests waiting for a worker (finals, partials).
    pub fn queue_depth(&self) -> (usize, usize) {
        let q = self.shared.queues.lock().unwrap_or_else(|e| e.into_inner());
        (q.finals.len(), q.partials.len())
    }

    /// Fault injection for tests: queues a final transcription that panics on its worker, as a
    /// bug in whisper.cpp's bindings would. The pool must answer it with [`AsrError::Internal`]
    /// and go on serving.
    #[doc(hidden)]
    pub async fn transcribe_with_injected_panic(
        &self,
        request: Request,
    ) -> Result<Transcript, AsrError> {
        let rx = self.submit_job(request, true);
        rx.await.unwrap_or(Err(AsrError::ShuttingDown))
    }

    fn submit(&self, request: Request) -> oneshot::Receiver<Result<Transcript, AsrError>> {
        self.submit_job(request, false)
    }

    fn submit_job(
        &self,
        request: Request,
        panic: bool,
    ) -> oneshot::Receiver<Result<Transcript, AsrError>> {
        let (tx, rx) = oneshot::channel();
        let job = Job {
            request,
            reply: tx,
            enqueued: Instant::now(),
            panic,
        };
        let mut q = self.shared.queues.lock().unwrap_or_else(|e| e.into_inner());
        if q.shutdown {
            let _ = job.reply.send(Err(AsrError::ShuttingDown));
            return rx;
        }
        match job.request.priority {
            Priority::Final => {
                if q.finals.len() >= self.config.max_queue {
                    let queued = q.finals.len();
                    let _ = job.reply.send(Err(AsrError::Busy { queued }));
                    return rx;
                }
                q.finals.push_back(job);
                self.shared.update_preempt(&q);
            }
            Priority::Partial => {
                if q.partials.len() >= self.config.max_queue {
                    if let Some(old) = q.partials.pop_front() {
                        let _ = old.reply.send(Err(AsrError::Superseded));
                    }
                }
                q.partials.push_back(job);
            }
        }
        drop(q);
        // Finals and partials have their own workers: wake them all, the right one takes it.
        self.shared.ready.notify_all();
        rx
    }
}

impl Asr for WhisperPool {
    fn transcribe(&self, request: Request) -> BoxFuture<'_, Result<Transcript, AsrError>> {
        if request.samples.is_empty() {
            return Box::pin(async { Err(AsrError::NoAudio) });
        }
        // A final transcript is what a turn's answer waits for (partials are not).
        let opening =
            (request.priority == Priority::Final).then(crate::workers::OpeningWork::begin);
        let rx = self.submit(request);
        Box::pin(async move {
            let result = rx.await.unwrap_or(Err(AsrError::ShuttingDown));
            drop(opening);
            result
        })
    }

    fn describe(&self) -> String {
        self.description.clone()
    }

    fn queue_depth(&self) -> Option<(usize, usize)> {
        Some(WhisperPool::queue_depth(self))
    }

    fn check_ready(&self) -> Result<(), String> {
        if self.shared.alive.load(Ordering::SeqCst) == 0 {
            Err("no speech-recognition worker is running".into())
        } else {
            Ok(())
        }
    }

    fn stop(&self) {
        self.shared.stopping.store(true, Ordering::Release);
        {
            let mut guard = self.shared.queues.lock().unwrap_or_else(|e| e.into_inner());
            let q = &mut *guard;
            q.shutdown = true;
            for job in q.finals.drain(..).chain(q.partials.drain(..)) {
                let _ = job.reply.send(Err(AsrError::ShuttingDown));
            }
        }
        self.shared.ready.notify_all();
    }
}

impl Drop for WhisperPool {
    fn drop(&mut self) {
        self.stop();
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}
