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

/// The loaded model, shared by the workers (each rebuilds its state from it after a panic).
struct Model {
    ctx: Arc<WhisperContext>,
    n_audio_ctx: i32,
    multilingual: bool,
}

/// What a worker takes from the queues.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Finals,
    Partials,
}

fn worker(
    shared: Arc<Shared>,
    mut state: WhisperState,
    cfg: WhisperConfig,
    model: Model,
    role: Role,
) {
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    loop {
        let (job, threads) = {
            let mut q = shared.queues.lock().unwrap_or_else(|e| e.into_inner());
            loop {
                if q.shutdown {
                    if role == Role::Finals {
                        shared.alive.fetch_sub(1, Ordering::SeqCst);
                    }
                    return;
                }
                let final_job = match role {
                    Role::Finals => q.finals.pop_front(),
                    Role::Partials => None,
                };
                if let Some(j) = final_job {
                    // A long final with the recogniser otherwise idle takes every core: it is
                    // what the person waits for. (Not beside other transcriptions, even a
                    // partial that would give way: that means other sessions are talking, and
                    // with the LLM busy too, more threads than cores make whisper.cpp's spinning
                    // threads wait on each other; measured 2x slower.)
                    // A short one keeps its own thread: the decoder dominates it, so a second
                    // thread gains little (tiny.en Q8_0, 2.9 s: 205 against 225 ms), and the
                    // end-of-turn model and the LLM run beside it in the pause (measured: 2
                    // threads next to Smart Turn took 276–388 ms).
                    let wide = q.busy == 0
                        && !q.partial_busy
                        && q.finals.is_empty()
                        && q.partials.is_empty()
                        && cores > cfg.threads
                        && j.request.samples.len() >= WIDE_MIN_SAMPLES;
                    let threads = if wide {
                        q.wide_finals += 1;
                        cores
                    } else {
                        cfg.threads
                    };
                    q.busy += 1;
                    shared.update_preempt(&q);
                    break (j, threads);
                }
                if role == Role::Finals {
                    q = shared.ready.wait(q).unwrap_or_else(|e| e.into_inner());
                    continue;
                }
                // A partial lets opening work elsewhere (a final, a new question's prefill, an
                // end-of-turn check) have the cores first: it is what a person is waiting for,
                // and a partial is only a preview. It waits at most PARTIAL_YIELD_MAX.
                if let Some(j) = q.partials.front() {
                    if crate::workers::opening_work_pending()
                        && j.enqueued.elapsed() < PARTIAL_YIELD_MAX
                    {
                        q = shared
                            .ready
                            .wait_timeout(q, OPENING_POLL)
                            .unwrap_or_else(|e| e.into_inner())
                            .0;
                        continue;
                    }
                }
                if let Some(j) = q.partials.pop_front() {
                    q.partial_busy = true;
                    break (j, cfg.threads);
                }
                q = shared.ready.wait(q).unwrap_or_else(|e| e.into_inner());
            }
        };
        let is_final = job.request.priority == Priority::Final;
        let wide = is_final && threads > cfg.threads;
        let outcome = run_job(&mut state, &shared, &cfg, job, threads, &model);
        let mut q = shared.queues.lock().unwrap_or_else(|e| e.into_inner());
        if is_final {
            q.busy -= 1;
        } else {
            q.partial_busy = false;
        }
        if wide {
            q.wide_finals -= 1;
        }
        shared.update_preempt(&q);
        drop(q);
        if outcome == JobOutcome::Panicked {
            // whisper.cpp's state may be half-updated: start again from a fresh one.
            match model.ctx.create_state() {
                Ok(fresh) => {
                    state = fresh;
                    warn!("a transcription panicked; the worker continues with a fresh state");
                }
                Err(e) => {
                    tracing::error!(error = %e, "a whisper worker could not rebuild its state and stops");
                    if role == Role::Finals {
                        shared.alive.fetch_sub(1, Ordering::SeqCst);
                    }
                    return;
                }
            }
        }
    }
}

/// What stops a running transcription early, read by whisper.cpp's abort callback.
struct AbortWhen<'a> {
    /// Partials only: a final is waiting (see [`Shared::preempt_partials`]).
    preempt: Option<&'a AtomicBool>,
    /// The pool is stopping.
    stopping: &'a AtomicBool,
    /// The caller went away (its reply channel closed).
    reply: &'a oneshot::Sender<Result<Transcript, AsrError>>,
}

impl AbortWhen<'_> {
    fn now(&self) -> bool {
        self.preempt.is_some_and(|p| p.load(Ordering::Acquire))
            || self.stopping.load(Ordering::Acquire)
            || self.reply.is_closed()
    }
}

/// whisper.cpp's abort callback: `data` points at an [`AbortWhen`].
#[allow(unsafe_code)]
unsafe extern "C" fn should_abort(data: *mut std::ffi::c_void) -> bool {
    // SAFETY: `run` sets `data` to an `AbortWhen` on its own stack that outlives the
    // transcription (`full` returns before it is dropped); the callback only reads it.
    unsafe { (*(data as *const AbortWhen)).now() }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum JobOutcome {
    Done,
    Panicked,
}

fn run_job(
    state: &mut WhisperState,
    shared: &Shared,
    cfg: &WhisperConfig,
    job: Job,
    threads: usize,
    model: &Model,
) -> JobOutcome {
    if job.reply.is_closed() {
        debug!("skipping a transcription nobody waits for");
        return JobOutcome::Done;
    }
    let queue_wait = job.enqueued.elapsed();
    let is_final = job.request.priority == Priority::Final;
    if !is_final && queue_wait > PARTIAL_MAX_WAIT {
        let _ = job.reply.send(Err(AsrError::Superseded));
        return JobOutcome::Done;
    }
    let abort = AbortWhen {
        preempt: (!is_final).then_some(&*shared.preempt_partials),
        stopping: &shared.stopping,
        reply: &job.reply,
    };
    if abort.now() {
        let _ = job.reply.send(Err(AsrError::Superseded));
        return JobOutcome::Done;
    }
    // A panic in one transcription (a bug in whisper-rs or here) fails that request only: the
    // worker survives it and rebuilds its state.
    let result = std::panic::catch_unwind(AssertUnwindSafe(|| {
        if job.panic {
            panic!("injected fault");
        }
        run(state, &job.request, cfg, threads, &abort, model)
    }));
    let (result, outcome) = match result {
        Ok(r) => (r, JobOutcome::Done),
        Err(panic) => {
            let message = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "panic".into());
            tracing::error!(%message, "a transcription panicked");
            (Err(AsrError::Internal), JobOutcome::Panicked)
        }
    };
    let result = result.map(|mut t| {
        t.queue_wait = queue_wait;
        t
    });
    debug!(
        kind = if is_final { "final" } else { "partial" },
        audio_ms = job.request.samples.len() / 16,
        threads,
        queue_ms = queue_wait.as_millis() as u64,
        run_ms = (job.enqueued.elapsed() - queue_wait).as_millis() as u64,
        ok = result.is_ok(),
        "transcription done"
    );
    match &result {
        Err(AsrError::Superseded) | Err(AsrError::Internal) | Ok(_) => {}
        Err(e) => warn!(error = %e, "transcription failed"),
    }
    let _ = job.reply.send(result);
    outcome
}

/// Checks a prompt before it reaches whisper.cpp: no NUL bytes (C strings), at most
/// [`MAX_PROMPT_BYTES`].
pub fn check_prompt(prompt: &str) -> Result<(), String> {
    if prompt.contains('\0') {
        return Err("the prompt contains a NUL character".into());
    }
    if prompt.len() > MAX_PROMPT_BYTES {
        return Err(format!(
            "the prompt is {} bytes long; the limit is {MAX_PROMPT_BYTES}",
            prompt.len()
        ));
    }
    Ok(())
}

/// Checks a language code: 2 to 8 ASCII letters (`en`, `yue`), or `auto`.
pub fn check_language(language: &str) -> Result<(), String> {
    if (2..=8).contains(&language.len()) && language.chars().all(|c| c.is_ascii_alphabetic()) {
        Ok(())
    } else {
        Err(format!(
            "`{}` is not a language code",
            language.escape_debug()
        ))
    }
}

/// The prompt's tokens, at most the last `n_text_ctx / 2` as whisper.cpp keeps them.
fn prompt_tokens(ctx: &WhisperContext, prompt: &str) -> Result<Vec<i32>, AsrError> {
    check_prompt(prompt).map_err(AsrError::InvalidPrompt)?;
    // A token covers at least one byte, so this bound always holds them all (whisper-rs reads a
    // negative count, which whisper.cpp returns when the buffer is too small, as a length).
    let mut tokens = ctx
        .tokenize(prompt, prompt.len() + 16)
        .map_err(|e| AsrError::InvalidPrompt(format!("the prompt cannot be tokenized: {e}")))?;
    let keep = (ctx.n_text_ctx().max(2) / 2) as usize;
    if tokens.len() > keep {
        tokens.drain(..tokens.len() - keep);
    }
    Ok(tokens)
}

fn run(
    state: &mut WhisperState,
    req: &Request,
    cfg: &WhisperConfig,
    threads: usize,
    abort: &AbortWhen,
    model: &Model,
) -> Result<Transcript, AsrError> {
    let started = Instant::now();
    let audio = Duration::from_secs_f64(req.samples.len() as f64 / 16_000.0);
    let padded;
    let samples: &[f32] = if req.samples.len() < MIN_SAMPLES {
        let mut p = req.samples.clone();
        p.resize(MIN_SAMPLES, 0.0);
        padded = p;
        &padded
    } else {
        &req.samples
    };

    let language = req.language.clone().unwrap_or_else(|| cfg.language.clone());
    let language = if model.multilingual {
        language
    } else {
        "en".to_string()
    };
    check_language(&language).map_err(AsrError::InvalidLanguage)?;
    let prompt = req.prompt.as_deref().or(cfg.prompt.as_deref());
    let tokens = match prompt.filter(|p| !p.is_empty()) {
        Some(p) => prompt_tokens(&model.ctx, p)?,
        None => Vec::new(),
    };
    let strategy = if cfg.beam_size > 1 {
        SamplingStrategy::BeamSearch {
            beam_size: cfg.beam_size as i32,
            patience: -1.0,
        }
    } else {
        SamplingStrategy::Greedy { best_of: 1 }
    };
    let mut params = FullParams::new(strategy);
    params.set_n_threads(threads.max(1) as i32);
    // whisper-rs leaks the C string of every language it is given (and whisper.cpp's default is
    // already English), so only other languages are set.
    if language != "en" {
        params.set_language(Some(&language));
    }
    params.set_translate(false);
    params.set_no_context(true);
    // Always decode with timestamp tokens, even when the caller wants no segments: without them
    // tiny.en loops ("She had your dark suit… She had your dark suit…") on short clips with a
    // trimmed window (measured on LDC93S1); with them it ends the segment cleanly.
    params.set_no_timestamps(false);
    params.set_print_special(false);
    params.set_print_progress(false);
    params.set_print_realtime(false);
    params.set_print_timestamps(false);
    params.set_suppress_blank(true);
    params.set_audio_ctx(audio_ctx_for(
        cfg.audio_ctx,
        samples.len(),
        model.n_audio_ctx,
    ));
    // Speech runs at ~3 words (~4 tokens) a second; far beyond that the decoder is repeating
    // itself. The bound is per segment, so long audio is unaffected.
    params.set_max_tokens((audio.as_secs_f64().min(30.0) * 8.0).ceil() as i32 + 16);
    // Prompt tokens, not `set_initial_prompt`: that one panics on a NUL byte and leaks its C
    // string on every call.
    if !tokens.is_empty() {
        params.set_tokens(&tokens);
    }

    // whisper-rs's `set_abort_callback_safe` hands whisper.cpp a pointer to a boxed `dyn FnMut`
    // but reads it back as the closure type itself; pass our own context directly.
    // SAFETY: the callback only reads the `AbortWhen` through the pointer, and `abort` outlives
    // the call to `full` below.
    #[allow(unsafe_code)]
    unsafe {
        params.set_abort_callback(Some(should_abort));
        params.set_abort_callback_user_data(abort as *const AbortWhen as *mut std::ffi::c_void);
    }
    if let Err(e) = state.full(params, samples) {
        if abort.stopping.load(Ordering::Acquire) {
            return Err(AsrError::ShuttingDown);
        }
        if abort.now() {
            debug!("transcription aborted (a final waits or the caller left)");
            return Err(AsrError::Superseded);
        }
        return Err(AsrError::Engine(e.to_string()));
    }

    let mut segments = Vec::new();
    let mut text = String::new();
    for seg in state.as_iter() {
        let t = seg
            .to_str_lossy()
            .map_err(|e| AsrError::Engine(e.to_string()))?;
        if segments
            .last()
            .is_some_and(|prev: &Segment| is_repeat(&prev.text, &t))
        {
            debug!(text = %t, "dropped a repeated segment");
            continue;
        }
        text.push_str(&t);
        segments.push(Segment {
            start_s: seg.start_timestamp() as f64 / 100.0,
            end_s: (seg.end_timestamp() as f64 / 100.0).min(audio.as_secs_f64().max(0.01)),
            text: t.trim().to_string(),
            no_speech_prob: seg.no_speech_probability(),
        });
    }
    Ok(Transcript {
        text: text.trim().to_string(),
        segments,
        language,
        audio,
        queue_wait: Duration::ZERO,
        compute: started.elapsed(),
    })
}

/// Whether `next` repeats `previous` word for word (ignoring case and punctuation). With a trimmed
/// window tiny.en sometimes decodes a short clip twice ("And so my fellow Americans. And so my
/// fellow Americans." for a 3.2 s clip with 0.3 s of silence before it; measured at
/// `audio_ctx` 320, not at 400). A person repeating a whole phrase of two or more words as its own
/// segment is far rarer than that loop, so the repeat is dropped.
fn is_repeat(previous: &str, next: &str) -> bool {
    let next = crate::wer::normalize(next);
    next.len() >= 2 && crate::wer::normalize(previous) == next
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_segments_are_recognised() {
        assert!(is_repeat(
            "And so my fellow Americans.",
            " and so, my fellow Americans"
        ));
        assert!(!is_repeat("And so my fellow Americans.", "Ask not."));
        assert!(!is_repeat("No.", "No."));
    }

    #[test]
    fn audio_ctx_is_trimmed_for_short_audio_only() {
        assert_eq!(
            audio_ctx_for(AudioCtx::Auto, 16_000 * 11, 1500),
            550 + CTX_MARGIN
        );
        assert_eq!(audio_ctx_for(AudioCtx::Auto, 16_000 * 2, 1500), CTX_FLOOR);
        assert_eq!(audio_ctx_for(AudioCtx::Auto, 16_000 * 29, 1500), 0);
        assert_eq!(audio_ctx_for(AudioCtx::Auto, 16_000 * 60, 1500), 0);
        assert_eq!(audio_ctx_for(AudioCtx::Full, 16_000, 1500), 0);
        assert_eq!(audio_ctx_for(AudioCtx::Fixed(3000), 16_000, 1500), 1500);
        assert_eq!("auto".parse::<AudioCtx>().unwrap(), AudioCtx::Auto);
        assert_eq!("768".parse::<AudioCtx>().unwrap(), AudioCtx::Fixed(768));
        assert!("9999".parse::<AudioCtx>().is_err());
    }
}
