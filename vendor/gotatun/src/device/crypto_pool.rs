// This Source Code Form is subject to the terms of the Mozilla Public
// License, v. 2.0. If a copy of the MPL was not distributed with this
// file, You can obtain one at https://mozilla.org/MPL/2.0/.

//! wireguard4netns: the crypto worker threads of a connection (not part of upstream
//! gotatun; see `datapath.rs` for how the data path uses them).
//!
//! A job is a whole batch (a TUN read's packets to seal, a `recvmmsg`'s datagrams to open),
//! so a worker wakes once per batch, not per packet. Jobs wait in one FIFO queue under a
//! mutex and condition variable, shared by both directions; whoever submitted a job awaits
//! its result on a oneshot channel, in the order the jobs were submitted, which keeps each
//! direction's packets in order whatever order the workers finish in. The number of jobs
//! in flight is bounded by the submitters (see `datapath.rs`), not here.
//!
//! The threads are plain OS threads with small stacks (the AEAD needs a few KiB): the
//! tokio runtime's two workers keep the sequential stages, these do nothing but crypto.
//! They live as long as the connection: [`CryptoPool::shutdown`] (and `Drop`) wakes them,
//! lets them finish the job at hand, drops the queued ones (their submitters see the
//! oneshot closed) and joins them, so a reconfiguration or a stop leaves no thread behind.
//! Created after the engine confined itself (a reconfiguration): `clone` of a thread and
//! its stack's `mmap`/`mprotect` are on its seccomp list.

use std::collections::VecDeque;
use std::io;
use std::num::NonZeroUsize;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::thread::JoinHandle;

use parking_lot::{Condvar, Mutex};
use std::sync::Arc;
use tokio::sync::oneshot;

/// Stack of a worker thread: the AEAD and the packet bookkeeping need a few KiB, and only
/// the pages touched count as resident.
const WORKER_STACK: usize = 128 * 1024;

type Job = Box<dyn FnOnce() + Send>;

#[derive(Default)]
struct Queue {
    jobs: VecDeque<Job>,
    stop: bool,
}

#[derive(Default)]
struct Shared {
    queue: Mutex<Queue>,
    ready: Condvar,
}

/// `n` worker threads running the jobs given to [`CryptoPool::run`].
pub(crate) struct CryptoPool {
    shared: Arc<Shared>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl CryptoPool {
    /// Start `n` workers. If one cannot be started, those that were are stopped again.
    pub(crate) fn start(n: NonZeroUsize) -> io::Result<Self> {
        let pool = CryptoPool {
            shared: Arc::default(),
            threads: Mutex::new(Vec::with_capacity(n.get())),
        };
        for i in 0..n.get() {
            let shared = Arc::clone(&pool.shared);
            let thread = std::thread::Builder::new()
                .name(format!("wg-crypto-{i}"))
                .stack_size(WORKER_STACK)
                .spawn(move || work(&shared))?;
            pool.threads.lock().push(thread);
        }
        Ok(pool)
    }

    /// Queue `job` for a worker; its result arrives on the returned receiver (which sees
    /// the channel closed if the pool stopped first).
    pub(crate) fn run<R: Send + 'static>(
        &self,
        job: impl FnOnce() -> R + Send + 'static,
    ) -> oneshot::Receiver<R> {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move || {
            let _ = tx.send(job());
        });
        let mut queue = self.shared.queue.lock();
        if !queue.stop {
            queue.jobs.push_back(job);
            drop(queue);
            self.shared.ready.notify_one();
        }
        rx
    }

    /// Stop and join the workers (each finishes its current job; queued ones are dropped).
    pub(crate) fn shutdown(&self) {
        {
            let mut queue = self.shared.queue.lock();
            queue.stop = true;
            queue.jobs.clear();
        }
        self.shared.ready.notify_all();
        for thread in self.threads.lock().drain(..) {
            if thread.join().is_err() {
                tracing::error!("a crypto worker thread panicked");
            }
        }
    }
}

impl Drop for CryptoPool {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// A worker: run jobs until told to stop. A job that panics loses its batch (its
/// submitter sees the channel closed), not the worker.
fn work(shared: &Shared) {
    loop {
        let job = {
            let mut queue = shared.queue.lock();
            loop {
                if queue.stop {
                    return;
                }
                if let Some(job) = queue.jobs.pop_front() {
                    break job;
                }
                shared.ready.wait(&mut queue);
            }
        };
        if catch_unwind(AssertUnwindSafe(job)).is_err() {
            tracing::error!("a crypto job panicked; its batch is dropped");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// Results come back per job, whatever order the workers finish in, and `shutdown`
    /// joins every thread.
    #[tokio::test]
    async fn jobs_run_on_workers_and_shutdown_joins_them() {
        let pool = CryptoPool::start(NonZeroUsize::new(3).expect("3 > 0")).expect("threads");
        let tickets: Vec<_> = (0..12u64)
            .map(|i| {
                pool.run(move || {
                    std::thread::sleep(Duration::from_millis((12 - i) % 4));
                    (i, std::thread::current().name().map(str::to_owned))
                })
            })
            .collect();
        for (i, ticket) in tickets.into_iter().enumerate() {
            let (n, name) = ticket.await.expect("result");
            assert_eq!(n, i as u64);
            assert!(name.is_some_and(|n| n.starts_with("wg-crypto-")));
        }
        let threads = Arc::downgrade(&pool.shared);
        pool.shutdown();
        assert!(pool.threads.lock().is_empty());
        drop(pool);
        assert!(
            threads.upgrade().is_none(),
            "a worker still holds the queue"
        );
    }

    /// After `shutdown`, a job is not run and its receiver reports that.
    #[tokio::test]
    async fn a_stopped_pool_runs_nothing() {
        let pool = CryptoPool::start(NonZeroUsize::MIN).expect("thread");
        pool.shutdown();
        assert!(pool.run(|| 1).await.is_err());
    }
}
