//! A small, bounded pool of threads for password hashing.
//!
//! argon2id costs tens of milliseconds of CPU per call. Running it on tokio's workers would stall
//! every other call (Authenticate above all) during a login storm, so it runs here instead: a
//! fixed number of threads, at a lower scheduling priority than the async workers, fed through a
//! bounded queue (a full queue refuses at once rather than letting waits grow without end). A
//! job whose caller has gone away (timeout, cancelled call) is skipped, not hashed.

use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;

use tokio::sync::oneshot;

type Job = Box<dyn FnOnce() + Send + 'static>;

/// Handle to the pool; cheap to clone.
#[derive(Clone)]
pub struct HashPool {
    queue: mpsc::SyncSender<Job>,
}

/// Jobs each worker may have waiting: about a second of argon2id work.
const QUEUE_PER_WORKER: usize = 64;

/// Most threads the default gives: each keeps ~19 MiB of argon2 memory, so a 32-core node
/// must not size a replica's memory by its core count.
pub const MAX_DEFAULT_WORKERS: usize = 4;

/// One thread per CPU the process may use — the standard library reads the container's cgroup
/// CPU quota, so a pod limited to 2 CPUs gets 2 — capped at [`MAX_DEFAULT_WORKERS`].
pub fn default_workers() -> usize {
    thread::available_parallelism()
        .map_or(2, |n| n.get())
        .min(MAX_DEFAULT_WORKERS)
}

/// Why a job did not run.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("password hashing queue is full")]
    Busy,
    #[error("password hashing pool is gone")]
    Gone,
}

impl HashPool {
    /// Starts `workers` threads (0: [`default_workers`]).
    pub fn new(workers: usize) -> Self {
        let workers = if workers == 0 {
            default_workers()
        } else {
            workers
        };
        let (queue, jobs) = mpsc::sync_channel::<Job>(workers * QUEUE_PER_WORKER);
        let jobs = Arc::new(Mutex::new(jobs));
        for i in 0..workers {
            let jobs = Arc::clone(&jobs);
            thread::Builder::new()
                .name(format!("keyward-hash-{i}"))
                .spawn(move || {
                    lower_priority();
                    crate::metrics::hash_workers(1.0);
                    loop {
                        let job = match jobs.lock() {
                            Ok(rx) => rx.recv(),
                            Err(_) => break,
                        };
                        match job {
                            Ok(job) => {
                                crate::metrics::hash_job_dequeued();
                                let started = std::time::Instant::now();
                                job();
                                crate::metrics::hash_job_done(started.elapsed());
                            }
                            Err(_) => break,
                        }
                    }
                    crate::metrics::hash_workers(-1.0);
                })
                .expect("spawning a hashing thread");
        }
        Self { queue }
    }

    /// Runs `f` on the pool and waits for its result without blocking the async worker.
    pub async fn run<T, F>(&self, f: F) -> Result<T, PoolError>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move || {
            if !tx.is_closed() {
                let _ = tx.send(f());
            }
        });
        // Counted as queued before it is sent, so a worker taking it at once never takes the
        // gauge below zero.
        crate::metrics::hash_job_queued();
        self.queue.try_send(job).map_err(|e| {
            crate::metrics::hash_job_dequeued();
            match e {
                mpsc::TrySendError::Full(_) => {
                    crate::metrics::hash_job_refused();
                    PoolError::Busy
                }
                mpsc::TrySendError::Disconnected(_) => PoolError::Gone,
            }
        })?;
        rx.await.map_err(|_| PoolError::Gone)
    }
}

/// Makes the calling thread yield to the async workers when the CPU is contended (nice +10).
fn lower_priority() {
    #[cfg(target_os = "linux")]
    // SAFETY: plain syscalls on the calling thread; failure only leaves the priority unchanged.
    unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, tid, 10);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn runs_jobs_off_the_async_workers() {
        let pool = HashPool::new(2);
        let caller = thread::current().id();
        let (name, other) = pool
            .run(move || {
                (
                    thread::current().name().map(String::from),
                    thread::current().id() != caller,
                )
            })
            .await
            .unwrap();
        assert!(name.unwrap().starts_with("keyward-hash-"));
        assert!(other);
        let sum: u32 = futures::future::join_all((0..10u32).map(|i| pool.run(move || i)))
            .await
            .into_iter()
            .map(Result::unwrap)
            .sum();
        assert_eq!(sum, 45);
    }
}
