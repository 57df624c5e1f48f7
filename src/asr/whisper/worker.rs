//! A worker thread: its own decoding state over the shared model, taking jobs of its role
//! (finals or partials) from the queues, and the abort checks that let a partial give way.

use super::*;

/// The loaded model, shared by the workers (each rebuilds its state from it after a panic).
pub(super) struct Model {
    pub(super) ctx: Arc<WhisperContext>,
    pub(super) n_audio_ctx: i32,
    pub(super) multilingual: bool,
}

/// What a worker takes from the queues.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Role {
    Finals,
    Partials,
}

pub(super) fn worker(
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
pub(super) struct AbortWhen<'a> {
    /// Partials only: a final is waiting (see [`Shared::preempt_partials`]).
    pub(super) preempt: Option<&'a AtomicBool>,
    /// The pool is stopping.
    pub(super) stopping: &'a AtomicBool,
    /// The caller went away (its reply channel closed).
    pub(super) reply: &'a oneshot::Sender<Result<Transcript, AsrError>>,
}

impl AbortWhen<'_> {
    pub(super) fn now(&self) -> bool {
        self.preempt.is_some_and(|p| p.load(Ordering::Acquire))
            || self.stopping.load(Ordering::Acquire)
            || self.reply.is_closed()
    }
}

/// whisper.cpp's abort callback: `data` points at an [`AbortWhen`].
#[allow(unsafe_code)]
pub(super) unsafe extern "C" fn should_abort(data: *mut std::ffi::c_void) -> bool {
    // SAFETY: `run` sets `data` to an `AbortWhen` on its own stack that outlives the
    // transcription (`full` returns before it is dropped); the callback only reads it.
    unsafe { (*(data as *const AbortWhen)).now() }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum JobOutcome {
    Done,
    Panicked,
}

pub(super) fn run_job(
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
