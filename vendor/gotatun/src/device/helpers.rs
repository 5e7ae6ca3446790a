// This Source Code Form is subject to the terms of the Mozilla Public
// License, v. 2.0. If a copy of the MPL was not distributed with this
// file, You can obtain one at https://mozilla.org/MPL/2.0/.

//! wireguard4netns: a connection's helper threads (not part of upstream gotatun; see
//! `datapath.rs` for the rounds they run and when).
//!
//! A helper is a plain OS thread that runs one future, a direction's helper loop, on the
//! device's tokio runtime ([`Handle::block_on`]: the runtime's workers drive the sockets'
//! readiness; the helper only waits on tokio's locks and notifications and polls its
//! source once per round). The threads live as long as the connection:
//! [`Helpers::shutdown`] (and `Drop`) cancels their futures at their next await, lets each
//! finish the crypto it is in (at most one read's worth), and joins them, so a
//! reconfiguration or a stop leaves no thread behind. Created after the engine confined
//! itself (a reconfiguration): `clone` of a thread and its stack's `mmap`/`mprotect` are
//! on its seccomp list.

use std::io;
use std::sync::Arc;
use std::thread::JoinHandle;

use parking_lot::Mutex;
use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;

/// Stack of a helper thread: its future (a round's state) is on it, and the handshake and
/// AEAD code it calls need a few KiB; only the pages touched count as resident.
const HELPER_STACK: usize = 256 * 1024;

/// The helper threads of a connection.
pub(crate) struct Helpers {
    stop: CancellationToken,
    threads: Mutex<Vec<JoinHandle<()>>>,
    /// Held by every thread until it ends (for tests: a `Weak` of it tells that they did).
    running: Arc<()>,
}

impl Helpers {
    pub(crate) fn new() -> Self {
        Helpers {
            stop: CancellationToken::new(),
            threads: Mutex::new(Vec::new()),
            running: Arc::new(()),
        }
    }

    /// Start a thread `name` that runs `helper` on `runtime` until it ends or the helpers
    /// are shut down.
    pub(crate) fn spawn(
        &self,
        name: String,
        runtime: &Handle,
        helper: impl Future<Output = ()> + Send + 'static,
    ) -> io::Result<()> {
        let stop = self.stop.clone();
        let runtime = runtime.clone();
        let running = Arc::clone(&self.running);
        let thread = std::thread::Builder::new()
            .name(name)
            .stack_size(HELPER_STACK)
            .spawn(move || {
                let _running = running;
                // Unconstrained: tokio's budget would make a read fail as if there were
                // nothing to read after every 128 operations (a helper polls its source
                // once and goes to sleep when it gets nothing); it is there to make a task
                // yield its worker to others, and a helper has its thread to itself.
                runtime.block_on(tokio::task::unconstrained(async move {
                    tokio::select! {
                        biased;
                        () = stop.cancelled() => {}
                        () = helper => {}
                    }
                }));
            })?;
        self.threads.lock().push(thread);
        Ok(())
    }

    /// Stop and join the threads.
    pub(crate) fn shutdown(&self) {
        self.stop.cancel();
        for thread in self.threads.lock().drain(..) {
            if thread.join().is_err() {
                tracing::error!("a data path helper thread panicked");
            }
        }
    }

    /// Whether the threads are still running, for tests.
    #[cfg(test)]
    pub(crate) fn running(&self) -> std::sync::Weak<()> {
        Arc::downgrade(&self.running)
    }
}

impl Drop for Helpers {
    fn drop(&mut self) {
        self.shutdown();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// A helper runs on its thread; `shutdown` cancels it where it waits and joins it.
    #[tokio::test]
    async fn helpers_run_and_shutdown_joins_them() {
        let helpers = Helpers::new();
        let (started, mut seen) = tokio::sync::mpsc::unbounded_channel();
        for i in 0..3 {
            let started = started.clone();
            helpers
                .spawn(format!("wg-test-{i}"), &Handle::current(), async move {
                    let name = std::thread::current().name().map(str::to_owned);
                    let _ = started.send(name);
                    std::future::pending::<()>().await;
                })
                .expect("thread");
        }
        for _ in 0..3 {
            let name = tokio::time::timeout(Duration::from_secs(5), seen.recv())
                .await
                .expect("in time")
                .flatten();
            assert!(name.is_some_and(|n| n.starts_with("wg-test-")));
        }
        let running = helpers.running();
        drop(helpers);
        assert!(running.upgrade().is_none(), "a helper thread lives on");
    }

    /// A helper's reads of a source that has data are never refused by tokio's budget (a
    /// refusal would make it stop helping, taking it for an empty source).
    #[tokio::test]
    async fn a_helper_reads_what_is_there_without_limit() {
        const ITEMS: usize = 1000;
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        for i in 0..ITEMS {
            tx.send(i).expect("queued");
        }
        let (done, result) = tokio::sync::oneshot::channel();
        let helpers = Helpers::new();
        helpers
            .spawn("wg-test-budget".into(), &Handle::current(), async move {
                let mut read = 0;
                while read < ITEMS {
                    let once = std::future::poll_fn(|cx| std::task::Poll::Ready(rx.poll_recv(cx)));
                    match once.await {
                        std::task::Poll::Ready(Some(_)) => read += 1,
                        _ => break,
                    }
                }
                let _ = done.send(read);
            })
            .expect("thread");
        let read = tokio::time::timeout(Duration::from_secs(5), result)
            .await
            .expect("in time")
            .expect("result");
        assert_eq!(read, ITEMS, "a read was refused with data there");
    }
}
