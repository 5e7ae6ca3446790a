//! Small processes that do for a confined engine what it may no longer do
//! itself, forked while it is still single-threaded and unconfined, and asked
//! over a `SOCK_SEQPACKET` pair.
//!
//! Two jobs need this: placing a UAPI client in the user-namespace tree, which
//! Landlock blinds ([`crate::inspector`]), and looking up a peer's endpoint
//! name again, which needs files and DNS sockets the engine gave up
//! ([`crate::resolver`]). Both follow the same pattern, kept here once:
//!
//! * the sidecar holds nothing but its end of the pair (every other descriptor
//!   is closed, stdio points at `/dev/null`), has `no_new_privs`, no
//!   capability but the ones its job needs, and dies with the engine
//!   (parent-death signal, and end-of-file on the pair);
//! * each question carries a sequence number, which the answer repeats: a
//!   question that timed out gets its answer late, and that answer is
//!   recognised and skipped instead of being taken for the next one's;
//! * the engine waits for an answer on the runtime without blocking a thread,
//!   and at most as long as the caller allows: a stopped or stuck sidecar
//!   costs one question an error, not the engine a hang.
//!
//! What a question and an answer mean is the job's business; here they are
//! bytes and an optional descriptor.

#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::time::Duration;

use nix::fcntl::{FcntlArg, OFlag, fcntl};
use nix::unistd::{ForkResult, Pid};
use tokio::io::unix::AsyncFd;

use crate::fdpass::{self, Channel, Received};
use crate::lifecycle;
use crate::sandbox::caps;

/// The engine's side of a sidecar process.
#[derive(Debug)]
pub struct Sidecar {
    asker: Asker,
    pid: Pid,
}

impl Sidecar {
    /// Fork the sidecar. The child confines itself as the module documentation
    /// says, keeping the capabilities in `keep`, then runs `job` with its end
    /// of the pair, and exits when `job` returns. Must be called while the
    /// process is single-threaded.
    ///
    /// # Errors
    ///
    /// When the socketpair or the fork fails.
    pub fn spawn(keep: caps::Keep, job: impl FnOnce(Channel)) -> io::Result<Self> {
        let (ours, theirs) = fdpass::channel_pair()?;
        let kept = theirs.as_raw_fd();
        // In the parent the closure, and with it `theirs`, is dropped here.
        let pid = spawn_keeping(&[kept], keep, move || job(theirs))?;
        Ok(Self {
            asker: Asker::new(ours)?,
            pid,
        })
    }

    /// The sidecar's process ID, for messages.
    pub fn pid(&self) -> Pid {
        self.pid
    }

    /// [`Asker::ask`], for the answer's bytes.
    ///
    /// # Errors
    ///
    /// As [`Asker::ask`].
    pub async fn ask(
        &mut self,
        question: &[u8],
        fd: Option<BorrowedFd<'_>>,
        timeout: Duration,
    ) -> io::Result<Vec<u8>> {
        Ok(self.asker.ask(question, fd, timeout).await?.data)
    }
}

/// The asking end of a pair: one question at a time, each with a sequence
/// number that its answer repeats (see the module documentation). Used for
/// sidecars, and by `--publish`'s forwarder to ask the connector inside for
/// sockets ([`crate::publish`]).
#[derive(Debug)]
pub struct Asker {
    /// The channel, non-blocking; registered with the runtime at the first
    /// question (sidecars are forked before the runtime exists).
    channel: Option<Channel>,
    registered: Option<AsyncFd<Channel>>,
    seq: u32,
}

impl Asker {
    /// Ask over `channel` (made non-blocking here).
    ///
    /// # Errors
    ///
    /// When the channel cannot be made non-blocking.
    pub fn new(channel: Channel) -> io::Result<Self> {
        fcntl(&channel, FcntlArg::F_SETFL(OFlag::O_NONBLOCK))?;
        Ok(Self {
            channel: Some(channel),
            registered: None,
            seq: 0,
        })
    }

    /// Send `question` (with `fd`, when given) and wait at most `timeout` for
    /// its answer: its bytes (without the sequence number) and the descriptor
    /// that came with it. Needs a tokio runtime.
    ///
    /// # Errors
    ///
    /// `TimedOut` when no answer came in time, `UnexpectedEof` when the
    /// other end is gone, `InvalidData` for an answer that does not parse,
    /// and whatever sending the question failed with (a stopped sidecar whose
    /// queue is full fails at once: the channel is non-blocking).
    pub async fn ask(
        &mut self,
        question: &[u8],
        fd: Option<BorrowedFd<'_>>,
        timeout: Duration,
    ) -> io::Result<Received> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        if let Some(channel) = self.channel.take() {
            // SAFETY: the channel owns its descriptor, which stays open and
            // keeps its number for as long as the `AsyncFd` owns the channel.
            self.registered = Some(unsafe { AsyncFd::register(channel) }?);
        }
        let Some(channel) = &self.registered else {
            return Err(io::ErrorKind::NotConnected.into());
        };
        let mut message = seq.to_le_bytes().to_vec();
        message.extend_from_slice(question);
        channel.get_ref().send(&message, fd)?;
        let answer = async {
            loop {
                let mut guard = channel.readable().await?;
                let msg = match guard.try_io(|fd| fd.get_ref().recv()) {
                    Ok(Ok(Some(msg))) => msg,
                    Ok(Ok(None)) => return Err(io::ErrorKind::UnexpectedEof.into()),
                    Ok(Err(e)) => return Err(e),
                    Err(_would_block) => continue,
                };
                match split_seq(&msg.data) {
                    Some((answered, answer)) if answered == seq => {
                        return Ok(Received {
                            data: answer.to_vec(),
                            fd: msg.fd,
                        });
                    }
                    // A late answer to an earlier question that timed out.
                    Some(_) => continue,
                    None => return Err(io::Error::from(io::ErrorKind::InvalidData)),
                }
            }
        };
        tokio::time::timeout(timeout, answer)
            .await
            .unwrap_or_else(|_| Err(io::ErrorKind::TimedOut.into()))
    }
}

/// Fork a process that confines itself as a sidecar does but keeps the
/// descriptors in `keep` (instead of one channel), runs `job` and exits when
/// it returns: for a process the engine never asks, such as `--publish`'s
/// forwarder (see [`crate::publish`]). Must be called while the process is
/// single-threaded.
///
/// # Errors
///
/// When the fork fails.
pub fn spawn_keeping(keep: &[RawFd], caps: caps::Keep, job: impl FnOnce()) -> io::Result<Pid> {
    let parent = nix::unistd::getpid();
    match lifecycle::fork_before_threads()? {
        ForkResult::Child => {
            lifecycle::die_with(parent);
            // SAFETY: this forked child never returns into code that owns
            // descriptors (it exits after `job`), and `job` uses none but
            // those in `keep`, which are kept.
            if unsafe { crate::daemon::keep_only(keep) }.is_err()
                || crate::sandbox::set_no_new_privs().is_err()
                || caps::drop_all_but(caps).is_err()
            {
                lifecycle::exit_now(1);
            }
            job();
            lifecycle::exit_now(0)
        }
        ForkResult::Parent { child } => Ok(child),
    }
}

/// A sidecar's loop: answer every question with `answer` (given its bytes and
/// the descriptor that came with it, it returns the answer's bytes and a
/// descriptor to send along); returns when the asking end goes away.
pub fn serve(
    channel: &Channel,
    mut answer: impl FnMut(&[u8], Option<OwnedFd>) -> (Vec<u8>, Option<OwnedFd>),
) {
    loop {
        let msg = match channel.recv() {
            Ok(Some(msg)) => msg,
            // The asking end is gone (or the channel broke): nothing left to do.
            Ok(None) | Err(_) => return,
        };
        let Some((seq, question)) = split_seq(&msg.data) else {
            continue;
        };
        let mut reply = seq.to_le_bytes().to_vec();
        let (bytes, fd) = answer(question, msg.fd);
        reply.extend(bytes);
        reply.truncate(fdpass::MAX_MESSAGE);
        if channel.send(&reply, fd.as_ref().map(AsFd::as_fd)).is_err() {
            return;
        }
    }
}

/// A message's sequence number and the rest.
fn split_seq(data: &[u8]) -> Option<(u32, &[u8])> {
    let (seq, rest) = data.split_first_chunk::<4>()?;
    Some((u32::from_le_bytes(*seq), rest))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sandbox::testing::block_on;
    use nix::sys::signal::{Signal, kill};
    use nix::sys::wait::WaitStatus;

    fn echo(channel: Channel) {
        serve(&channel, |question, fd| {
            let mut answer = question.to_vec();
            answer.push(if fd.is_some() { b'+' } else { b'-' });
            (answer, fd)
        })
    }

    fn exited_0(status: WaitStatus) {
        assert!(matches!(status, WaitStatus::Exited(_, 0)), "{status:?}");
    }

    #[test]
    fn questions_get_their_own_answers() {
        exited_0(crate::sandbox::testing::in_child(|| {
            let mut sidecar = Sidecar::spawn(caps::Keep::default(), echo).unwrap();
            let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
            let second = Duration::from_secs(1);
            let (answers, handed_back) = block_on(async {
                (
                    (
                        sidecar.ask(b"one", None, second).await.unwrap(),
                        sidecar.ask(b"two", Some(a.as_fd()), second).await.unwrap(),
                    ),
                    // The echo sends the descriptor back with its answer.
                    sidecar
                        .asker
                        .ask(b"three", Some(a.as_fd()), second)
                        .await
                        .unwrap(),
                )
            });
            i32::from(
                answers != (b"one-".to_vec(), b"two+".to_vec())
                    || handed_back.data != b"three+"
                    || handed_back.fd.is_none(),
            )
        }));
    }

    /// A stopped sidecar costs one question a timeout, not a hang; once it
    /// runs again its late answer is skipped and the next question gets its
    /// own.
    #[test]
    fn a_stopped_sidecar_times_out_then_recovers() {
        exited_0(crate::sandbox::testing::in_child(|| {
            let mut sidecar = Sidecar::spawn(caps::Keep::default(), echo).unwrap();
            let pid = sidecar.pid();
            kill(pid, Signal::SIGSTOP).unwrap();
            let timeout = Duration::from_millis(300);
            let (stopped, resumed) = block_on(async {
                let stopped = sidecar.ask(b"late", None, timeout).await;
                kill(pid, Signal::SIGCONT).unwrap();
                (stopped, sidecar.ask(b"next", None, timeout * 10).await)
            });
            match (stopped, resumed) {
                (Err(e), Ok(answer))
                    if e.kind() == io::ErrorKind::TimedOut && answer == b"next-" =>
                {
                    0
                }
                other => {
                    eprintln!("{other:?}");
                    1
                }
            }
        }));
    }

    #[test]
    fn a_dead_sidecar_is_an_error_at_once() {
        exited_0(crate::sandbox::testing::in_child(|| {
            let mut sidecar = Sidecar::spawn(caps::Keep::default(), echo).unwrap();
            kill(sidecar.pid(), Signal::SIGKILL).unwrap();
            let _ = nix::sys::wait::waitpid(sidecar.pid(), None);
            let started = std::time::Instant::now();
            let answer = block_on(sidecar.ask(b"?", None, Duration::from_secs(5)));
            i32::from(answer.is_ok() || started.elapsed() > Duration::from_secs(1))
        }));
    }

    #[test]
    fn split_seq_needs_four_bytes() {
        assert_eq!(split_seq(b"\x07\0\0\0ab"), Some((7, &b"ab"[..])));
        assert_eq!(split_seq(b"\x07\0\0\0"), Some((7, &b""[..])));
        assert_eq!(split_seq(b"\x07\0\0"), None);
    }
}
