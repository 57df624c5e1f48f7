//! A bounded pool of OS threads for heavy model compute (embeddings, LLM), so that candle never
//! runs on the async executor's threads.
//!
//! Each worker owns one `S` (a model handle, a KV cache…). A job is a closure over `&mut S`; the
//! caller awaits its result. The queue is bounded: when `capacity` jobs are already waiting, new
//! jobs are refused with [`PoolError::Busy`] instead of piling up. A job that panics is reported
//! as [`PoolError::Panicked`] and its worker keeps serving.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

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

/// A fixed set of worker threads, each owning one `S`.
pub struct WorkerPool<S> {
    name: &'static str,
    tx: Mutex<Option<mpsc::Sender<Job<S>>>>,
    queued: Arc<AtomicUsize>,
    capacity: usize,
    workers: usize,
}

impl<S: Send + 'static> WorkerPool<S> {
    /// Starts one thread per element of `states`; at most `capacity` jobs wait in the queue.
    pub fn start(name: &'static str, states: Vec<S>, capacity: usize) -> Self {
        let (tx, rx) = mpsc::channel::<Job<S>>();
        let rx = Arc::new(Mutex::new(rx));
        let queued = Arc::new(AtomicUsize::new(0));
        let workers = states.len();
        for (i, mut state) in states.into_iter().enumerate() {
            let rx = rx.clone();
            let queued = queued.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("{name}-{i}"))
                .spawn(move || loop {
                    let job = {
                        let Ok(guard) = rx.lock() else { return };
                        match guard.recv() {
                            Ok(job) => job,
                            Err(_) => return,
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
            tx: Mutex::new(Some(tx)),
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

    /// Queues `f` and returns a receiver for its result.
    fn submit<R, F>(&self, f: F) -> Result<oneshot::Receiver<Result<R, PoolError>>, PoolError>
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
        let sent = match self.tx.lock() {
            Ok(guard) => guard.as_ref().map(|tx| tx.send(job).is_ok()),
            Err(_) => None,
        };
        if sent != Some(true) {
            self.queued.fetch_sub(1, Ordering::SeqCst);
            return Err(PoolError::ShutDown { pool: name });
        }
        Ok(done_rx)
    }

    /// Runs `f` on a worker and awaits its result.
    pub async fn run<R, F>(&self, f: F) -> Result<R, PoolError>
    where
        R: Send + 'static,
        F: FnOnce(&mut S) -> R + Send + 'static,
    {
        let rx = self.submit(f)?;
        rx.await
            .unwrap_or(Err(PoolError::ShutDown { pool: self.name }))
    }

    /// Runs `f` on a worker and blocks the calling (non-async) thread until it is done.
    pub fn run_blocking<R, F>(&self, f: F) -> Result<R, PoolError>
    where
        R: Send + 'static,
        F: FnOnce(&mut S) -> R + Send + 'static,
    {
        let rx = self.submit(f)?;
        rx.blocking_recv()
            .unwrap_or(Err(PoolError::ShutDown { pool: self.name }))
    }

    /// Stops accepting jobs; workers exit once the queue is drained.
    pub fn shutdown(&self) {
        if let Ok(mut guard) = self.tx.lock() {
            guard.take();
        }
    }
}

impl<S> Drop for WorkerPool<S> {
    fn drop(&mut self) {
        if let Ok(mut guard) = self.tx.lock() {
            guard.take();
        }
    }
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

    #[tokio::test]
    async fn a_full_queue_refuses_new_jobs() {
        let pool = WorkerPool::start("busy", vec![()], 1);
        let (hold_tx, hold_rx) = std::sync::mpsc::channel::<()>();
        let (started_tx, started_rx) = std::sync::mpsc::channel::<()>();
        // Occupy the only worker.
        let first = pool
            .submit(move |_| {
                started_tx.send(()).unwrap();
                hold_rx.recv().unwrap();
            })
            .unwrap();
        started_rx.recv().unwrap();
        // One job may wait…
        let second = pool.submit(|_| 2).unwrap();
        // …the next is refused.
        assert!(matches!(
            pool.submit(|_| 3).unwrap_err(),
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
}
