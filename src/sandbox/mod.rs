//! The engine's confinement: once the tunnel exists, the process that parses
//! datagrams from the Internet for as long as the tunnel lives gives up what it
//! no longer needs, so a bug in that parsing is worth as little as possible.
//!
//! # Theory of operation
//!
//! Modelled on passt's `isolation.c`. Everything that needs the filesystem,
//! the target's namespaces or new processes happens first, while the process
//! is single-threaded: config and endpoint resolution, the UAPI socket bind
//! and lock, the janitor fork, the TUN helper fork (attach) or the namespace
//! child (run). Then, in two steps:
//!
//! 1. [`Sandbox::before_threads`], right before `lifecycle::engine_runtime`
//!    builds tokio's runtime. Capabilities, Landlock domains and
//!    `no_new_privs` belong to a *thread* and are inherited by the threads it
//!    starts, so doing it in the last moment the process has one thread covers
//!    every engine thread without a per-thread dance:
//!    - `PR_SET_NO_NEW_PRIVS`: no `execve` can ever give this process (or a
//!      child) more privilege than it has, setuid bits and file capabilities
//!      included. Also what lets an unprivileged process install seccomp
//!      filters and Landlock rulesets.
//!    - capabilities ([`caps`]): every set emptied (effective, permitted,
//!      inheritable, ambient, and the bounding set when we hold
//!      `CAP_SETPCAP`, as root does), keeping only `CAP_NET_ADMIN` when the
//!      config has `FwMark` (`SO_MARK` on the UDP sockets, set again whenever
//!      gotatun re-binds) and `CAP_NET_BIND_SERVICE` when `ListenPort` is
//!      below 1024 (gotatun re-binds on a port or key change). Only matters
//!      when started as root, e.g. with the default `/var/run/wireguard`;
//!      an unprivileged engine holds none anyway.
//!    - Landlock ([`landlock`]), where the kernel has it: the filesystem
//!      shrinks to removing files in the socket directory (our socket, lock
//!      and `run`'s resolv.conf at exit; `lstat` is not an access Landlock
//!      governs), nothing else. Landlock also confines ptrace-mode access to
//!      processes inside the domain, which would blind the UAPI peer check,
//!      so that check moves into a process forked just before
//!      ([`crate::inspector`]; [`Sandbox::before_threads`] returns it).
//!      Every other open, create, rename, link, truncate and device ioctl
//!      through a path is refused, and so is every TCP bind and connect (the
//!      engine speaks UDP only). Best effort: each kernel enforces what its
//!      Landlock ABI knows; a kernel without Landlock is logged at info.
//! 2. [`Sandbox::tunnel_up`], once the engine runs and the UAPI socket is
//!    served, before anyone is told the tunnel is up: a seccomp allow-list
//!    ([`seccomp`]) installed on every thread at once (`SECCOMP_FILTER_FLAG_TSYNC`,
//!    so tokio's workers and its blocking pool are covered too). It comes
//!    second because starting the engine uses calls the running engine does
//!    not (`TUNGETIFF`/`TUNSETOFFLOAD` on the TUN, creating the worker
//!    threads, `epoll_create1`, `signalfd4`…), and the list is smaller for
//!    it.
//!
//! A call outside the list kills the whole process
//! (`SECCOMP_RET_KILL_PROCESS`), as passt and firecracker do, rather than
//! failing with `EPERM`: an engine whose error paths are exercised by an
//! attacker's crafted input is exactly what we do not want to keep running,
//! the death is visible (SIGSYS, the kernel's audit log names the call) where
//! an `EPERM` deep in gotatun would surface as an odd half-working tunnel,
//! and a dead engine fails closed (the namespace has no route around the
//! TUN). The janitor, forked before, removes the socket files.
//!
//! `--no-sandbox` skips all of it and says so at warn level, for debugging
//! (e.g. to run the engine under `strace` or `gdb`, which seccomp refuses).
//! If the kernel cannot install the seccomp filter, the engine refuses to
//! run: unconfined is a choice the user makes with that flag, not a fallback.
//!
//! The process is already non-dumpable (`main` sets `PR_SET_DUMPABLE` 0), so
//! whoever shares its uid cannot ptrace it or read its memory either.

#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod caps;
pub mod landlock;
pub mod seccomp;

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::path::{Path, PathBuf};

use crate::config::Config;
use crate::inspector::PeerCheck;
use crate::resolver::Resolver;

/// Errors confining the engine.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error(
        "cannot set no_new_privs: {0} (hint: run with --no-sandbox to start without confinement)"
    )]
    NoNewPrivs(#[source] io::Error),
    #[error(
        "cannot drop capabilities ({action}): {error} (hint: run with --no-sandbox to keep them)"
    )]
    Capabilities {
        action: &'static str,
        #[source]
        error: io::Error,
    },
    #[error(
        "cannot restrict the filesystem to {} with Landlock: {error} (hint: run with --no-sandbox to start without confinement)",
        dir.display()
    )]
    Landlock {
        dir: PathBuf,
        #[source]
        error: ::landlock::RulesetError,
    },
    #[error("cannot start the UAPI peer check: {0}")]
    PeerCheck(#[source] io::Error),
    #[error("cannot start the endpoint resolver: {0}")]
    Resolver(#[source] io::Error),
    #[error("cannot build the seccomp filter: {0}")]
    SeccompBuild(#[source] seccompiler::BackendError),
    #[error(
        "cannot install the seccomp filter: {0} (hint: the kernel needs CONFIG_SECCOMP_FILTER; run with --no-sandbox to start without it)"
    )]
    SeccompInstall(#[source] seccompiler::Error),
}

/// What the engine keeps, decided from the arguments and the config before
/// anything is dropped.
#[derive(Debug, Clone)]
pub struct Sandbox {
    enabled: bool,
    socket_dir: PathBuf,
    keep: caps::Keep,
    /// The one process the running engine may signal: `run`'s command.
    signal_target: Option<u32>,
    /// Some peer's Endpoint is a name, to be looked up again while it runs.
    names: bool,
}

/// The processes that do for the confined engine what it may not do itself.
#[derive(Debug)]
pub struct Sidecars {
    /// Places UAPI clients.
    pub peer_check: PeerCheck,
    /// Looks endpoint names up again; only when some peer has one.
    pub resolver: Option<Resolver>,
}

impl Sandbox {
    /// The confinement for an engine serving `socket_dir` with `config`;
    /// `enabled` is false with `--no-sandbox`.
    pub fn new(enabled: bool, socket_dir: &Path, config: &Config) -> Self {
        let iface = &config.interface;
        Self {
            enabled,
            socket_dir: socket_dir.to_owned(),
            keep: caps::Keep {
                net_admin: iface.fwmark.is_some(),
                net_bind_service: iface.listen_port.is_some_and(|p| p != 0 && p < 1024),
                sys_ptrace: false,
            },
            signal_target: None,
            names: !crate::resolver::named_peers(config).is_empty(),
        }
    }

    /// The running engine may signal `pid` (`run`'s command, to forward
    /// signals to it), and no other process.
    pub fn signalling(mut self, pid: u32) -> Self {
        self.signal_target = Some(pid);
        self
    }

    /// Step 1: `no_new_privs`, capabilities, Landlock. Call while the process
    /// is single-threaded, right before the runtime is built. Returns the
    /// sidecars for what the confined engine may no longer do: placing UAPI
    /// clients outside its Landlock domain ([`crate::inspector`]) and looking
    /// endpoint names up ([`crate::resolver`]), forked first. Without the
    /// sandbox the engine does both itself.
    pub fn before_threads(&self) -> Result<Sidecars, SandboxError> {
        if !self.enabled {
            tracing::warn!(
                "--no-sandbox: the engine runs unconfined (no seccomp filter, no Landlock, no capability drop)"
            );
            return Ok(Sidecars {
                peer_check: PeerCheck::in_process()
                    .map_err(|e| SandboxError::PeerCheck(io::Error::other(e)))?,
                resolver: self.names.then_some(Resolver::InProcess),
            });
        }
        let sidecars = Sidecars {
            peer_check: PeerCheck::spawn_inspector().map_err(SandboxError::PeerCheck)?,
            resolver: self
                .names
                .then(Resolver::spawn)
                .transpose()
                .map_err(SandboxError::Resolver)?,
        };
        set_no_new_privs().map_err(SandboxError::NoNewPrivs)?;
        caps::drop_all_but(self.keep)?;
        landlock::restrict(&self.socket_dir)?;
        Ok(sidecars)
    }

    /// Step 2: the seccomp allow-list on every thread. Call once the engine
    /// runs and the UAPI socket is served, before reporting ready.
    /// `socket_dir` is the only directory the engine may remove files from
    /// (by descriptor, `unlinkat`) from then on.
    pub fn tunnel_up(&self, socket_dir: BorrowedFd<'_>) -> Result<(), SandboxError> {
        if !self.enabled {
            return Ok(());
        }
        quiet_panics();
        seccomp::install(self.signal_target, Some(socket_dir.as_raw_fd()))?;
        tracing::debug!("seccomp filter installed on every thread");
        Ok(())
    }
}

/// Report a panic in one line, without a backtrace. The default hook, with
/// `RUST_BACKTRACE` set, opens files to symbolize the backtrace, which the
/// seccomp list does not allow: a panic that tokio would have contained in
/// its task (a UAPI connection, say) would kill the engine with SIGSYS.
pub fn quiet_panics() {
    std::panic::set_hook(Box::new(|info| {
        use std::io::Write;
        let _ = writeln!(std::io::stderr(), "wireguard4netns: internal error: {info}");
    }));
}

/// `prctl(PR_SET_NO_NEW_PRIVS, 1)`, for this thread and those it starts.
pub fn set_no_new_privs() -> io::Result<()> {
    // SAFETY: PR_SET_NO_NEW_PRIVS takes plain integers and touches no memory
    // of ours.
    let rc = unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod testing {
    //! A fork scaffold for the sandbox tests: the body runs in a child (so
    //! the filter or ruleset it installs never reaches the test harness) and
    //! the parent sees how the child ended; and a runtime for such a child.

    use nix::sys::wait::{WaitStatus, waitpid};
    use nix::unistd::{ForkResult, fork};

    /// Run `body` in a forked child and return how it ended; the child exits
    /// with `body`'s return value.
    pub(crate) fn in_child(body: impl FnOnce() -> i32) -> WaitStatus {
        // SAFETY: the child runs `body`, which only makes system calls (and
        // may allocate: glibc's malloc is usable after fork), then leaves
        // with `_exit`, never returning into the test harness.
        match unsafe { fork() }.expect("fork") {
            ForkResult::Child => {
                let code =
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(body)).unwrap_or(101);
                // SAFETY: `_exit` ends the child without running the
                // harness's destructors.
                unsafe { libc::_exit(code) }
            }
            ForkResult::Parent { child } => waitpid(child, None).expect("waitpid"),
        }
    }

    /// Run `f` on a current-thread runtime: a test that forks (sidecars,
    /// [`in_child`]) may not have started other threads.
    pub(crate) fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a current-thread runtime")
            .block_on(f)
    }
}

#[cfg(test)]
mod tests {
    use super::testing::in_child;
    use super::*;
    use nix::sys::wait::WaitStatus;

    fn status_field(name: &str) -> Option<String> {
        let status = std::fs::read_to_string("/proc/thread-self/status").ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .map(|v| v.trim().to_owned())
    }

    #[test]
    fn no_new_privs_shows_in_proc_status() {
        let status = in_child(|| {
            if set_no_new_privs().is_err() {
                return 2;
            }
            match status_field("NoNewPrivs").as_deref() {
                Some("1") => 0,
                _ => 3,
            }
        });
        assert!(matches!(status, WaitStatus::Exited(_, 0)), "{status:?}");
    }

    #[test]
    fn disabled_sandbox_installs_nothing() {
        let config = Config::parse(
            "[Interface]\nPrivateKey = yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=\n",
            "test",
        )
        .expect("config");
        let sandbox = Sandbox::new(false, Path::new("/nonexistent"), &config);
        // Compared with the harness's own values: a CI container may run
        // everything under a seccomp filter of its own.
        let before = (status_field("NoNewPrivs"), status_field("Seccomp_filters"));
        let status = in_child(|| {
            let dir = std::fs::File::open("/").expect("open /");
            let dir = std::os::fd::AsFd::as_fd(&dir);
            if sandbox.before_threads().is_err() || sandbox.tunnel_up(dir).is_err() {
                return 2;
            }
            let after = (status_field("NoNewPrivs"), status_field("Seccomp_filters"));
            if after == before { 0 } else { 3 }
        });
        assert!(matches!(status, WaitStatus::Exited(_, 0)), "{status:?}");
    }
}
