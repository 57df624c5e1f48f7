//! A bounded pool of OS threads for heavy model compute (embeddings, LLM), so that candle never
//! runs on the async executor's threads.
//!
//! Each worker owns one `S` (a model handle, a KV cache…). A job is a closure over `&mut S`; the
//! caller awaits its result. The queue is bounded: when `capacity` jobs are already waiting, new
//! jobs are refused with [`PoolError::Busy`] instead of piling up. A job that panics is reported
//! as [`PoolError::Panicked`] and its worker keeps serving.

use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use tokio::sync::oneshot;

type Job<S> = Box<dyn FnOnce(&mut S) + Send>;

/// Why a job did not run to completion.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PoolError {
    #[error("the {pool} workers are busy ({queued} jobs queued); try again shortly")]
    Busy { pool: &'static str, queued: usize },
    #[error("the {pool} workers have shut down")]
    ShutDown { pool: &'static str },
    #[error("a {pool} job failed unexpectedly: {message}")]
    Panicked { pool: &'static str, message: String },
}

/// How soon a job runs: every waiting `First` job before any `Urgent` one, every `Urgent` job
/// before any `Normal` one; in order of arrival within each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lane {
    First = 0,
    Urgent = 1,
    Normal = 2,
}

/// The jobs waiting for a worker, one queue per [`Lane`].
struct Queue<S> {
    lanes: [VecDeque<Job<S>>; 3],
    open: bool,
}

struct Shared<S> {
    queue: Mutex<Queue<S>>,
    ready: Condvar,
}

impl<S> Shared<S> {
    fn close(&self) {
        let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        q.open = false;
        self.ready.notify_all();
    }
}

/// A fixed set of worker threads, each owning one `S`.
pub struct WorkerPool<S> {
    name: &'static str,
    shared: Arc<Shared<S>>,
    queued: Arc<AtomicUsize>,
    capacity: usize,
    workers: usize,
}

impl<S: Send + 'static> WorkerPool<S> {
    /// Starts one thread per element of `states`; at most `capacity` jobs wait in the queue.
    pub fn start(name: &'static str, states: Vec<S>, capacity: usize) -> Self {
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue {
                lanes: [VecDeque::new(), VecDeque::new(), VecDeque::new()],
                open: true,
            }),
            ready: Condvar::new(),
        });
        let queued = Arc::new(AtomicUsize::new(0));
        let workers = states.len();
        for (i, mut state) in states.into_iter().enumerate() {
            let shared = shared.clone();
            let queued = queued.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("{name}-{i}"))
                .spawn(move || loop {
                    let job = {
                        let mut q = shared.queue.lock().unwrap_or_else(|p| p.into_inner());
                        loop {
                            if let Some(job) = q.lanes.iter_mut().find_map(VecDeque::pop_front) {
                                break job;
                            }
                            if !q.open {
                                return;
                            }
                            q = shared.ready.wait(q).unwrap_or_else(|p| p.into_inner());
                        }
                    };
                    queued.fetch_sub(1, Ordering::SeqCst);
                    job(&mut state);
                });
            if let Err(e) = spawned {
                tracing::error!(pool = name, error = %e, "could not start a worker thread");
            }
        }
        WorkerPool {
            name,
            shared,
            queued,
            capacity: capacity.max(1),
            workers,
        }
    }

    /// Number of worker threads.
    pub fn workers(&self) -> usize {
        self.workers
    }

    /// Jobs waiting for a worker.
    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::SeqCst)
    }

    /// Queues `f` in `lane` and returns a receiver for its result.
    fn submit<R, F>(
        &self,
        f: F,
        lane: Lane,
    ) -> Result<oneshot::Receiver<Result<R, PoolError>>, PoolError>
    where
        R: Send + 'static,
        F: FnOnce(&mut S) -> R + Send + 'static,
    {
        let name = self.name;
        let queued = self.queued.fetch_add(1, Ordering::SeqCst);
        if queued >= self.capacity {
            self.queued.fetch_sub(1, Ordering::SeqCst);
            return Err(PoolError::Busy { pool: name, queued });
        }
        let (done_tx, done_rx) = oneshot::channel();
        let job: Job<S> = Box::new(move |state: &mut S| {
            let result = catch_unwind(AssertUnwindSafe(|| f(state))).map_err(|panic| {
                let message = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "panic".into());
                tracing::error!(pool = name, %message, "worker job panicked");
                PoolError::Panicked {
                    pool: name,
                    message,
                }
            });
            let _ = done_tx.send(result);
        });
        let mut q = self.shared.queue.lock().unwrap_or_else(|p| p.into_inner());
        if !q.open {
            self.queued.fetch_sub(1, Ordering::SeqCst);
            return Err(PoolError::ShutDown { pool: name });
        }
        q.lanes[lane as usize].push_back(job);
        self.shared.ready.notify_one();
        Ok(done_rx)
    }

    /// Runs `f` on a worker and awaits its result.
    pub async fn run<R, F>(&self, f: F) -> Result<R, PoolError>
    where
        R: Send + 'static,
        F: FnOnce(&mut S) -> R + Send + 'static,
    {
        self.run_in(Lane::Normal, f).await
    }

    /// Like [`WorkerPool::run`], but ahead of every job queued with `run`: for work that
    /// something already in progress waits on (the next sentence of an answer being played).
    pub async fn run_urgent<R, F>(&self, f: F) -> Result<R, PoolError>
    where
        R: Send + 'static,
        F: FnOnce(&mut S) -> R + Send + 'static,
    {
        self.run_in(Lane::Urgent, f).await
    }

    /// Like [`WorkerPool::run_urgent`], but ahead of urgent jobs too: for the start of work that
    /// someone waits on with nothing yet (a new question's first token), which goes before the
    /// next slice of work already under way.
    pub async fn run_first<R, F>(&self, f: F) -> Result<R, PoolError>
    where
        R: Send + 'static,
        F: FnOnce(&mut S) -> R + Send + 'static,
    {
        self.run_in(Lane::First, f).await
    }

    /// Queues `f` in `lane` and awaits its result.
    async fn run_in<R, F>(&self, lane: Lane, f: F) -> Result<R, PoolError>
    where
        R: Send + 'static,
        F: FnOnce(&mut S) -> R + Send + 'static,
    {
        let rx = self.submit(f, lane)?;
        rx.await
            .unwrap_or(Err(PoolError::ShutDown { pool: self.name }))
    }

    /// Runs `f` on a worker and blocks the calling (non-async) thread until it is done.
    pub fn run_blocking<R, F>(&self, f: F) -> Result<R, PoolError>
    where
        R: Send + 'static,
        F: FnOnce(&mut S) -> R + Send + 'static,
    {
        let rx = self.submit(f, Lane::Normal)?;
        rx.blocking_recv()
            .unwrap_or(Err(PoolError::ShutDown { pool: self.name }))
    }

    /// Stops accepting jobs; workers exit once the queue is drained.
    pub fn shutdown(&self) {
        self.shared.close();
    }
}

impl<S> Drop for WorkerPool<S> {
    fn drop(&mut self) {
        self.shared.close();
    }
}

/// Lowers the calling thread's scheduling priority to `nice`, for threads that only do
/// background work (Linux: nice values are per thread). Elsewhere, or if the kernel refuses, the
/// thread keeps its priority.
pub fn lower_thread_priority(nice: i32) {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: setpriority only reads its integer arguments; `who` 0 is the calling thread.
        #[allow(unsafe_code)]
        let r = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, nice) };
        if r != 0 {
            tracing::warn!(nice, error = %std::io::Error::last_os_error(), "could not lower a thread's priority");
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = nice;
}

/// Work that someone is waiting on for the start of an answer (a turn's final transcript, a new
/// question's prefill), counted while it is queued or running. Background work (synthesis of an
/// answer that has seconds of audio buffered) defers to it: on two cores, what is already playing
/// can wait a moment, and the next person's first word should not.
static OPENING_WORK: AtomicUsize = AtomicUsize::new(0);

/// Counts one piece of opening work while it lives.
pub struct OpeningWork(());

impl OpeningWork {
    pub fn begin() -> Self {
        OPENING_WORK.fetch_add(1, Ordering::AcqRel);
        OpeningWork(())
    }
}

impl Drop for OpeningWork {
    fn drop(&mut self) {
        OPENING_WORK.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Whether opening work is queued or running.
pub fn opening_work_pending() -> bool {
    OPENING_WORK.load(Ordering::Acquire) > 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn jobs_run_on_workers_and_a_panic_is_an_error_not_a_dead_worker() {
        let pool = WorkerPool::start("test", vec![0u32], 8);
        let n = pool
            .run(|s| {
                *s += 1;
                std::thread::current().name().unwrap_or("").to_string()
            })
            .await
            .unwrap();
        assert_eq!(n, "test-0");
        let err = pool.run(|_| -> u32 { panic!("boom") }).await.unwrap_err();
        assert!(matches!(err, PoolError::Panicked { ref message, .. } if message == "boom"));
        // The worker survived and kept its state.
        assert_eq!(pool.run(|s| *s).await.unwrap(), 1);
    }

    /// Occupies the only worker of `pool` until the returned sender sends.
    fn occupy<S: Send + 'static>(
        pool: &WorkerPool<S>,
    ) -> (
        oneshot::Receiver<Result<(), PoolError>>,
        std::sync::mpsc::Sender<()>,
    ) {
        let (hold_tx, hold_rx) = std::sync::mpsc::channel::<()>();
        let (started_tx, started_rx) = std::sync::mpsc::channel::<()>();
        let job = pool
            .submit(
                move |_| {
                    started_tx.send(()).unwrap();
                    hold_rx.recv().unwrap();
                },
                Lane::Normal,
            )
            .unwrap();
        started_rx.recv().unwrap();
        (job, hold_tx)
    }

    #[tokio::test]
    async fn a_full_queue_refuses_new_jobs() {
        let pool = WorkerPool::start("busy", vec![()], 1);
        let (first, hold_tx) = occupy(&pool);
        // One job may wait…
        let second = pool.submit(|_| 2, Lane::Normal).unwrap();
        // …the next is refused.
        assert!(matches!(
            pool.submit(|_| 3, Lane::Normal).unwrap_err(),
            PoolError::Busy { .. }
        ));
        hold_tx.send(()).unwrap();
        first.await.unwrap().unwrap();
        assert_eq!(second.await.unwrap().unwrap(), 2);
        pool.shutdown();
        assert!(matches!(
            pool.run(|_| 4).await.unwrap_err(),
            PoolError::ShutDown { .. }
        ));
    }

    #[tokio::test]
    async fn jobs_run_by_lane_then_by_arrival() {
        let pool = WorkerPool::start("order", vec![Vec::<u32>::new()], 8);
        let (first, hold_tx) = occupy(&pool);
        let mut waiting = Vec::new();
        for (n, lane) in [
            (1, Lane::Normal),
            (2, Lane::Urgent),
            (3, Lane::First),
            (4, Lane::Urgent),
            (5, Lane::First),
            (6, Lane::Normal),
        ] {
            waiting.push(
                pool.submit(move |seen: &mut Vec<u32>| seen.push(n), lane)
                    .unwrap(),
            );
        }
        hold_tx.send(()).unwrap();
        first.await.unwrap().unwrap();
        for rx in waiting {
            rx.await.unwrap().unwrap();
        }
        assert_eq!(
            pool.run(|seen| seen.clone()).await.unwrap(),
            vec![3, 5, 2, 4, 1, 6]
        );
    }
}
