//! Test support: run a test body in namespaces of its own, in a forked child.
//!
//! The kernel tests of `tun` and `netlink` need a network namespace they may
//! change (and, for the privilege checks, one they may not). A user namespace
//! is how an unprivileged user gets one, and `unshare(CLONE_NEWUSER)` fails
//! with `EINVAL` in a multi-threaded process (`unshare(2)`), which the test
//! harness always is. So [`in_namespace`] forks: the child has a single thread,
//! makes its namespaces, runs the body and leaves with `_exit`, never returning
//! into the harness; the harness's own namespaces stay untouched. The child
//! cannot fail the test by panicking (its unwinding would never reach the
//! harness), so it writes a report to a pipe — `pass`, `skip` and why, or
//! `fail` and why, with a panic's message caught and sent as a failure — and
//! the parent turns it into the test's result. A test that cannot run here
//! (no user namespaces, no TUN) is a [`Stop::Skip`]: a note on stderr, but a
//! failure when `CI=true`, where every test is meant to run.

use std::fs::File;
use std::io::{self, Read, Write};
use std::panic::{AssertUnwindSafe, catch_unwind};

use nix::fcntl::{FcntlArg, OFlag, fcntl};
use nix::sched::{CloneFlags, unshare};
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::{ForkResult, Gid, Uid, fork, pipe2};

/// Why a test body stopped early.
#[derive(Debug)]
pub(crate) enum Stop {
    /// The machine cannot run it (no namespaces, no TUN): a failure when
    /// `CI=true`, else a note on stderr.
    Skip(String),
    Fail(String),
}

impl From<String> for Stop {
    fn from(message: String) -> Self {
        Self::Fail(message)
    }
}

impl From<io::Error> for Stop {
    fn from(error: io::Error) -> Self {
        Self::Fail(format!("unexpected I/O error: {error}"))
    }
}

/// `assert!` for the child: it must report, not panic.
pub(crate) fn ensure(condition: bool, message: impl FnOnce() -> String) -> Result<(), Stop> {
    if condition {
        Ok(())
    } else {
        Err(Stop::Fail(message()))
    }
}

/// Which namespaces the child makes for itself.
#[derive(Clone, Copy)]
pub(crate) enum Isolation {
    /// New user and network namespace (network only as root, if user
    /// namespaces are refused): the child owns the network namespace.
    OwnNetns,
    /// Only a new user namespace: the child stays in the test's network
    /// namespace, over which it has no privilege.
    ForeignNetns,
}

/// Runs `body` in a forked child in its own namespaces, and asserts it
/// passed. A child that cannot run says why: a failure when `CI=true`, else a
/// note on stderr.
pub(crate) fn in_namespace(
    test: &str,
    isolation: Isolation,
    body: impl FnOnce() -> Result<(), Stop>,
) {
    let (read_end, write_end) = pipe2(OFlag::O_CLOEXEC).expect("pipe2");
    // SAFETY: the child only makes system calls, allocates (glibc's malloc is
    // usable after fork), may start its own threads and leaves with `_exit`,
    // never returning into the test harness or touching its locks.
    match unsafe { fork() }.expect("fork") {
        ForkResult::Child => {
            drop(read_end);
            // Straight to fd 2: the harness's output capture would keep the
            // message in this child, where nobody reads it.
            std::panic::set_hook(Box::new(|info| {
                let _ = writeln!(io::stderr(), "kernel test child: {info}");
            }));
            let report = match catch_unwind(AssertUnwindSafe(|| child(isolation, body))) {
                Ok(Ok(())) => "pass\n".to_owned(),
                Ok(Err(Stop::Skip(reason))) => format!("skip\n{reason}"),
                Ok(Err(Stop::Fail(message))) => format!("fail\n{message}"),
                Err(panic) => {
                    let what = panic
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                        .unwrap_or_default();
                    format!("fail\nthe child panicked: {what}")
                }
            };
            let _ = File::from(write_end).write_all(report.as_bytes());
            // SAFETY: `_exit` ends the child at once, without running the
            // parent's atexit handlers or unwinding into the harness.
            unsafe { libc::_exit(0) }
        }
        ForkResult::Parent { child } => {
            drop(write_end);
            let status = waitpid(child, None).expect("waitpid");
            assert_eq!(status, WaitStatus::Exited(child, 0), "{test}: child died");
            // The child is gone, so its report is in the pipe; read it without
            // waiting for EOF, which a sibling test's child that inherited our
            // write end could delay.
            fcntl(&read_end, FcntlArg::F_SETFL(OFlag::O_NONBLOCK)).expect("O_NONBLOCK");
            let mut report = Vec::new();
            let _ = File::from(read_end).read_to_end(&mut report);
            let report = String::from_utf8_lossy(&report);
            match report.split_once('\n') {
                Some(("pass", _)) => {}
                Some(("skip", reason)) => {
                    if std::env::var("CI").as_deref() == Ok("true") {
                        panic!("{test} cannot run (CI=true): {reason}");
                    }
                    // Straight to fd 2: libtest would swallow `eprintln!` of a
                    // passing test.
                    let _ = writeln!(io::stderr(), "SKIPPED {test}: {reason}");
                }
                Some(("fail", message)) => panic!("{test}: {message}"),
                _ => panic!("{test}: the child sent no report ({report:?})"),
            }
        }
    }
}

/// The child's part: make the namespaces `isolation` asks for, then run `body`.
fn child(isolation: Isolation, body: impl FnOnce() -> Result<(), Stop>) -> Result<(), Stop> {
    let (uid, gid) = (Uid::current(), Gid::current());
    match isolation {
        Isolation::OwnNetns => {
            match unshare(CloneFlags::CLONE_NEWUSER | CloneFlags::CLONE_NEWNET) {
                Ok(()) => map_ids(uid, gid)?,
                // Root may be refused user namespaces (seccomp, sysctl) and
                // still have a network namespace of its own.
                Err(_) if uid.is_root() => unshare(CloneFlags::CLONE_NEWNET)
                    .map_err(|error| Stop::Skip(format!("unshare(CLONE_NEWNET): {error}")))?,
                Err(error) => {
                    return Err(Stop::Skip(format!(
                        "user namespaces are unavailable: \
                         unshare(CLONE_NEWUSER | CLONE_NEWNET): {error}"
                    )));
                }
            }
        }
        Isolation::ForeignNetns => {
            // Never fall back here: the body must not act on the test
            // machine's namespace with real privileges.
            unshare(CloneFlags::CLONE_NEWUSER).map_err(|error| {
                Stop::Skip(format!(
                    "user namespaces are unavailable: unshare(CLONE_NEWUSER): {error}"
                ))
            })?;
            map_ids(uid, gid)?;
        }
    }
    body()
}

/// Maps our uid and gid to root in the new user namespace.
fn map_ids(uid: Uid, gid: Gid) -> Result<(), Stop> {
    let write = |path: &str, text: String| {
        std::fs::write(path, &text)
            .map_err(|error| Stop::Skip(format!("cannot write {text:?} to {path}: {error}")))
    };
    write("/proc/self/uid_map", format!("0 {uid} 1"))?;
    write("/proc/self/setgroups", "deny".to_owned())?;
    write("/proc/self/gid_map", format!("0 {gid} 1"))
}
