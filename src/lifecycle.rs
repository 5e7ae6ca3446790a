//! How the engine process runs and ends: forking before threads, the tokio
//! runtime, signals, the `--ready-fd`/`--exit-fd` descriptors and the pidfd
//! watch on the target. (Daemonizing and the janitor are in `daemon`.)
//!
//! Every fork happens before any thread exists ([`fork_before_threads`]
//! checks), and [`engine_runtime`] blocks the stop signals before tokio starts
//! its threads, so that they are read from a signalfd and not taken the
//! default way by whichever thread the kernel picks.
//!
//! The target is watched with a pidfd (Linux 5.3+): it becomes readable the
//! moment the process exits, even before its parent reaps it, and unlike a PID it
//! cannot be recycled under us.
//!
//! A `--netns-type=path` target has no process to watch, and the TUN descriptor
//! keeps its namespace alive after the path is gone, so [`NsPathWatch`] polls
//! the path: `stat` every 500 ms, compared with the (device, inode) of the nsfs
//! file opened at start. inotify cannot do it: an unmount (what `ip netns del`
//! and `umount` do) is no event on the mount point, and the sandbox allows no
//! new descriptor after setup anyway. `stat` is not governed by Landlock and is
//! on the seccomp list; one call every 500 ms costs nothing measurable.

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::unistd::{ForkResult, fork};
use tokio::io::unix::AsyncFd;

/// Make this process non-dumpable (`PR_SET_DUMPABLE` 0), the first thing
/// `main` does for the engine forms (attach and `run`), before any key is
/// read. The tools (`show`, `set`) stay dumpable: the UAPI server must be able
/// to inspect them (see `uapi::server`).
///
/// Who may ptrace a process, read its `/proc/PID/mem` and `environ` or take
/// its descriptors with `pidfd_getfd` (`ptrace_may_access`): a process with
/// the same uid in the same user namespace, or one with `CAP_SYS_PTRACE` in
/// the target's user namespace; and if the target is non-dumpable, only one
/// with `CAP_SYS_PTRACE` in the user namespace its memory was created in (the
/// caller's). `run`'s command and an attach target's root live in user
/// namespaces below ours and already fail the first test; non-dumpable keeps
/// out the caller's other processes (a config handed over a pipe is in no
/// file they could read), and above all it protects the processes we fork
/// that cross into a namespace we serve (the TUN helper, `run`'s child), whose
/// credentials then belong to that namespace and whose memory is a copy of
/// ours. The flag survives `fork` and is reset by `execve`; it makes our
/// `/proc/self` files belong to root, which only `run`'s id-map writes mind.
pub fn make_undumpable() -> io::Result<()> {
    set_dumpable(false)
}

/// `PR_SET_DUMPABLE`, for the few steps that need to be dumpable for a moment.
pub fn set_dumpable(dumpable: bool) -> io::Result<()> {
    Ok(nix::sys::prctl::set_dumpable(dumpable)?)
}

/// `PR_GET_DUMPABLE`.
pub fn is_dumpable() -> io::Result<bool> {
    Ok(nix::sys::prctl::get_dumpable()?)
}

/// Is this process single-threaded? (`/proc/self/task` has one entry per thread.)
pub fn single_threaded() -> bool {
    std::fs::read_dir("/proc/self/task")
        .map(|dir| dir.count() == 1)
        .unwrap_or(false)
}

/// `fork()`, refused unless the process is single-threaded, so the child is a
/// consistent copy that may allocate and take locks.
pub fn fork_before_threads() -> io::Result<ForkResult> {
    if !single_threaded() {
        return Err(io::Error::other(
            "internal error: fork after threads were started",
        ));
    }
    // SAFETY: the process is single-threaded (checked above), so no lock can be
    // held by a thread that does not exist in the child.
    Ok(unsafe { fork() }?)
}

/// In a forked child: be killed (SIGKILL) when `parent` dies, and end at once
/// (status 1) if it already has. A credential change clears the parent-death
/// signal: call it again after one.
pub fn die_with(parent: nix::unistd::Pid) {
    let _ = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL);
    if nix::unistd::getppid() != parent {
        exit_now(1);
    }
}

/// End a forked child at once, without running destructors or atexit handlers
/// that belong to the parent's objects.
pub fn exit_now(code: i32) -> ! {
    // SAFETY: `_exit` is async-signal-safe and touches no Rust state.
    unsafe { libc::_exit(code) }
}

/// Give SIGPIPE its default action again, in a child about to exec a command:
/// the Rust runtime ignores it in our process, and an ignored signal stays
/// ignored across `execve` (a handled one does not).
pub fn default_sigpipe() {
    use nix::sys::signal::{SigHandler, signal};
    // SAFETY: SIG_DFL installs no handler code, so nothing can run in signal
    // context; the process is single-threaded (a forked child about to exec).
    let _ = unsafe { signal(Signal::SIGPIPE, SigHandler::SigDfl) };
}

/// Take ownership of descriptor `fd` that the caller handed us with `flag`
/// (e.g. `--ready-fd 5`): check that it is open and make it close-on-exec, so
/// the command of `run` does not inherit it.
fn take_fd(fd: RawFd, flag: &str) -> io::Result<OwnedFd> {
    let not_open = || {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{flag} {fd} is not an open file descriptor"),
        )
    };
    if fd < 0 {
        return Err(not_open());
    }
    // SAFETY: F_GETFD only reads the descriptor flags; an unused number gives
    // EBADF, which is the check.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        return Err(not_open());
    }
    // SAFETY: as above; sets FD_CLOEXEC on a descriptor that is open.
    unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    // SAFETY: the descriptor is open and the caller handed it to us to own;
    // nothing else in this process refers to it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Refuse descriptor numbers that `--ready-fd`/`--exit-fd` cannot own, before
/// anything is opened: stdio (0-2: in background mode they point at
/// `/dev/null`, and in the foreground closing them would let the next file we
/// open take the number of stderr), and one number given twice (one
/// descriptor with two owners, closed twice). `fds` pairs each flag with its
/// number, if given.
pub fn check_handed_fds(fds: &[(&str, Option<RawFd>)]) -> io::Result<()> {
    let given: Vec<(&str, RawFd)> = fds
        .iter()
        .filter_map(|&(flag, fd)| Some((flag, fd?)))
        .collect();
    for &(flag, fd) in &given {
        if (0..=2).contains(&fd) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "{flag} {fd} is a standard stream (0-2), which the engine does not own (hint: hand it a descriptor of its own, 3 or above, e.g. `{flag} 3 3>FILE`)"
                ),
            ));
        }
    }
    for (i, &(flag, fd)) in given.iter().enumerate() {
        if let Some(&(other, _)) = given[i + 1..].iter().find(|&&(_, o)| o == fd) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "{flag} and {other} are both {fd}: one descriptor cannot serve both (hint: give each its own, e.g. `{flag} 3 {other} 4`)"
                ),
            ));
        }
    }
    Ok(())
}

/// `--ready-fd N`: written "1" once when the tunnel is up, then closed
/// (slirp4netns' convention).
#[derive(Debug)]
pub struct ReadyFd {
    file: File,
}

impl ReadyFd {
    /// Take descriptor `fd`; `flag` names it in errors.
    pub fn take(fd: RawFd, flag: &str) -> io::Result<Self> {
        Ok(Self {
            file: File::from(take_fd(fd, flag)?),
        })
    }

    /// Its number, for the daemon to keep it open (`daemon::daemonize`).
    pub fn raw(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    /// Write "1" and close.
    pub fn notify(mut self) {
        if let Err(e) = self.file.write_all(b"1") {
            tracing::warn!("cannot write to the ready fd: {e}");
        }
    }
}

/// `--exit-fd N`: we stop when it becomes readable, i.e. when the caller writes
/// to it or closes the other end (slirp4netns' convention).
#[derive(Debug)]
pub struct ExitFd {
    fd: OwnedFd,
}

impl ExitFd {
    /// Take descriptor `fd`; `flag` names it in errors.
    pub fn take(fd: RawFd, flag: &str) -> io::Result<Self> {
        Ok(Self {
            fd: take_fd(fd, flag)?,
        })
    }

    /// Its number, for the daemon to keep it open (`daemon::daemonize`).
    pub fn raw(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Wait until the descriptor is readable (data, end-of-file or error). We
    /// never read it, so its blocking mode does not matter. Needs a runtime.
    pub async fn closed(self) -> io::Result<()> {
        // SAFETY: an `OwnedFd` is a valid open descriptor whose `as_raw_fd()`
        // never changes, and the `AsyncFd` owns it until it is dropped.
        let fd = unsafe {
            AsyncFd::register_with_interest(
                self.fd,
                tokio::io::Interest::READABLE | tokio::io::Interest::ERROR,
            )
        }?;
        let _guard = fd
            .ready(tokio::io::Interest::READABLE | tokio::io::Interest::ERROR)
            .await?;
        Ok(())
    }
}

/// A pidfd: a handle on one process that becomes readable when it exits.
#[derive(Debug)]
pub struct PidFd {
    pid: i32,
    fd: OwnedFd,
}

impl AsFd for PidFd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl PidFd {
    /// `pidfd_open(pid, 0)`. `ESRCH` means there is no such process.
    pub fn open(pid: i32) -> io::Result<Self> {
        // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or
        // -1; it reads no memory of ours.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let fd = i32::try_from(fd).map_err(|_| io::Error::other("pidfd out of range"))?;
        // SAFETY: the syscall returned a fresh descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Self { pid, fd })
    }

    /// A pidfd the kernel handed us some other way (`SO_PEERPIDFD`), of the
    /// process `pid` names in our PID namespace (0 when it has none there).
    pub fn from_owned(pid: i32, fd: OwnedFd) -> Self {
        Self { pid, fd }
    }

    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Send `signal` to this very process (`pidfd_send_signal`), never to one
    /// that took its PID since. `ESRCH` means it has exited.
    pub fn signal(&self, signal: nix::sys::signal::Signal) -> io::Result<()> {
        // SAFETY: the descriptor is an open pidfd owned by `self`; a null
        // siginfo asks the kernel to fill one in as kill(2) would, so the
        // call reads no memory of ours.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.fd.as_raw_fd(),
                signal as libc::c_int,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Wait up to `timeout` for the process to exit; whether it did.
    pub fn wait_exited(&self, timeout: std::time::Duration) -> bool {
        use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let ms = u16::try_from(left.as_millis()).unwrap_or(u16::MAX);
            let mut fds = [PollFd::new(self.fd.as_fd(), PollFlags::POLLIN)];
            match poll(&mut fds, PollTimeout::from(ms)) {
                Ok(n) if n > 0 => return true,
                Err(nix::errno::Errno::EINTR) => {}
                Ok(_) if left.is_zero() => return false,
                Ok(_) => {}
                Err(_) => return false,
            }
        }
    }

    /// Has the process exited (without waiting)? A failed poll reads as "no".
    pub fn has_exited(&self) -> bool {
        self.poll_exited().unwrap_or(false)
    }

    /// Has the process exited (without waiting), or why the poll failed.
    pub fn poll_exited(&self) -> nix::Result<bool> {
        use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
        let mut fds = [PollFd::new(self.fd.as_fd(), PollFlags::POLLIN)];
        let n = poll(&mut fds, PollTimeout::ZERO)?;
        Ok(n > 0
            && fds[0]
                .revents()
                .is_some_and(|r| r.contains(PollFlags::POLLIN)))
    }

    /// Wait until the process exits. Needs a tokio runtime.
    pub async fn exited(self) -> io::Result<()> {
        // SAFETY: an `OwnedFd` is a valid open descriptor whose `as_raw_fd()`
        // never changes, and the `AsyncFd` owns it until it is dropped.
        let fd =
            unsafe { AsyncFd::register_with_interest(self.fd, tokio::io::Interest::READABLE) }?;
        let _guard = fd.readable().await?;
        Ok(())
    }
}

/// The watch on a namespace path: resolves once the path no longer names the
/// namespace it named at start (removed, unmounted, or another one mounted there).
#[derive(Debug)]
pub struct NsPathWatch {
    path: PathBuf,
    dev: u64,
    ino: u64,
}

impl NsPathWatch {
    /// How often the path is looked at: a stop within 2 s with room to spare.
    pub const INTERVAL: Duration = Duration::from_millis(500);

    /// Watch `path`, which `ns` (the namespace descriptor opened from it) names now.
    pub fn new(path: &Path, ns: BorrowedFd<'_>) -> io::Result<Self> {
        let meta = File::from(ns.try_clone_to_owned()?).metadata()?;
        Ok(Self {
            path: path.to_owned(),
            dev: meta.dev(),
            ino: meta.ino(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Does the path still name the namespace? A path we can no longer `stat`
    /// counts as gone, like a pidfd we cannot poll: better to stop than to serve
    /// a namespace nobody can reach by its name.
    pub fn still_there(&self) -> bool {
        std::fs::metadata(&self.path).is_ok_and(|m| m.dev() == self.dev && m.ino() == self.ino)
    }

    /// Wait until the path is gone. Needs a tokio runtime (with timers).
    pub async fn gone(&self) {
        let mut tick = tokio::time::interval(Self::INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if !self.still_there() {
                return;
            }
        }
    }
}

/// The engine's tokio runtime: one worker thread. The data path's two stages
/// (encryption, decryption), its timers and the UAPI run on it, and a
/// direction that falls behind its traffic gets threads of its own
/// (`--threads`; see `vendor/gotatun/src/device/datapath.rs`). A second worker
/// only added wake-ups, the two waking each other for each other's tasks:
/// bench/run measured 1.58 CPU-s per GB sent with two workers (0.81× what
/// wireguard-go spent in the same run) and 1.45 with one (0.67×), at the same
/// throughput. Call it before any other thread exists.
///
/// SIGINT, SIGTERM and SIGHUP are blocked first, so that the runtime's threads
/// inherit the mask: read them from the returned [`BlockedSignals`]. A signal
/// that arrives while the engine starts then waits instead of killing us.
///
/// It also caps glibc's malloc at one arena. By default each thread that
/// allocates gets an arena of its own, and packet buffers allocated on one
/// worker and freed on another leave each arena holding a few MiB that it
/// keeps: `bench/run` measured a peak of 18.5 MiB under load with an arena per
/// thread, 14.7 MiB with one. The hot path allocates rarely (packet buffers
/// come from pools), so the shared arena's lock is not contended.
pub fn engine_runtime() -> io::Result<(tokio::runtime::Runtime, BlockedSignals)> {
    let signals = BlockedSignals::block()?;
    // SAFETY: mallopt only sets an allocator parameter (and is thread-safe in
    // glibc). Its result is ignored: refused, it only costs memory.
    #[cfg(target_env = "gnu")]
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1)
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    Ok((runtime, signals))
}

/// Leave the runtime running until the process exits, instead of shutting it
/// down. Called once our files are cleaned up and we are about to exit: the
/// engine holds nothing that needs flushing (WireGuard has no goodbye message,
/// the TUN goes with our descriptor), while gotatun's stop sequence, and even a
/// runtime shutdown, wakes its tasks in an order in which they log spurious
/// "channel closed" errors at the user.
pub fn abandon_runtime(runtime: tokio::runtime::Runtime) {
    std::mem::forget(runtime);
}

/// Why the engine stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopReason {
    TargetExited(i32),
    InterfaceDeleted,
    NamespacePathGone(PathBuf),
    ExitFd,
    Signal(&'static str),
}

impl std::fmt::Display for StopReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StopReason::TargetExited(pid) => write!(f, "target process {pid} exited"),
            StopReason::InterfaceDeleted => write!(f, "the TUN interface was deleted"),
            StopReason::NamespacePathGone(path) => write!(
                f,
                "the network namespace path {} was removed or unmounted",
                path.display()
            ),
            StopReason::ExitFd => write!(f, "the exit fd was closed or written"),
            StopReason::Signal(name) => write!(f, "received {name}"),
        }
    }
}

/// SIGINT, SIGTERM and SIGHUP, blocked in this thread and those started after
/// it, and readable from a signalfd instead, which also says who sent them.
/// `run` needs that: a terminal sends Ctrl-C to its whole foreground process
/// group, the command included, so forwarding it too would deliver it twice
/// (sudo makes the same distinction).
pub struct BlockedSignals(SignalFd, SigSet);

impl AsFd for BlockedSignals {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

/// A signal read from [`BlockedSignals`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReceivedSignal {
    pub signal: Signal,
    /// Sent by the kernel (a terminal's Ctrl-C, a hangup), not by a process.
    pub from_kernel: bool,
}

impl BlockedSignals {
    /// Block the signals and open the signalfd ([`engine_runtime`] does, before
    /// the runtime starts its threads: a thread that does not block them would
    /// take them the default way). A signal that arrives before
    /// [`SignalWatch::next`] (or [`BlockedSignals::try_next`]) waits.
    ///
    /// A child forked after this inherits the mask, and `execve` keeps it:
    /// the child restores its mask from [`BlockedSignals::previous_mask`].
    pub fn block() -> io::Result<Self> {
        let mut mask = SigSet::empty();
        for signal in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
            mask.add(signal);
        }
        let previous = mask.thread_swap_mask(nix::sys::signal::SigmaskHow::SIG_BLOCK)?;
        let fd = SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)?;
        Ok(Self(fd, previous))
    }

    /// The signal mask from before [`BlockedSignals::block`].
    pub fn previous_mask(&self) -> SigSet {
        self.1
    }

    /// The next signal if one is pending, without waiting: for a caller that
    /// polls the descriptor itself (`exec`, which runs no tokio).
    pub fn try_next(&self) -> io::Result<Option<ReceivedSignal>> {
        loop {
            let Some(info) = self.0.read_signal()? else {
                return Ok(None);
            };
            if let Ok(signal) = Signal::try_from(info.ssi_signo as i32) {
                return Ok(Some(ReceivedSignal {
                    signal,
                    from_kernel: info.ssi_code == libc::SI_KERNEL,
                }));
            }
        }
    }

    /// Start reading them; needs a tokio runtime.
    pub fn watch(self) -> io::Result<SignalWatch> {
        // SAFETY: the signalfd is a valid open descriptor whose raw fd never
        // changes, and the `AsyncFd` owns it until it is dropped.
        Ok(SignalWatch(unsafe { AsyncFd::register(self.0) }?))
    }
}

/// The reading end of [`BlockedSignals`].
pub struct SignalWatch(AsyncFd<SignalFd>);

impl SignalWatch {
    /// The next signal.
    pub async fn next(&mut self) -> io::Result<ReceivedSignal> {
        loop {
            let mut guard = self.0.readable().await?;
            // nix reads EAGAIN as `None`; try_io must see it as WouldBlock
            // to clear the readiness it waits on.
            let read = guard.try_io(|fd| match fd.get_ref().read_signal() {
                Ok(Some(info)) => Ok(info),
                Ok(None) => Err(io::ErrorKind::WouldBlock.into()),
                Err(e) => Err(e.into()),
            });
            match read {
                Ok(Ok(info)) => {
                    let Ok(signal) = Signal::try_from(info.ssi_signo as i32) else {
                        continue;
                    };
                    return Ok(ReceivedSignal {
                        signal,
                        from_kernel: info.ssi_code == libc::SI_KERNEL,
                    });
                }
                // Nothing to read after all.
                Err(_would_block) => continue,
                Ok(Err(e)) => return Err(e),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handed_fds_refuse_stdio_and_sharing() {
        let err = |fds: &[(&str, Option<RawFd>)]| check_handed_fds(fds).unwrap_err().to_string();
        for fd in 0..=2 {
            let msg = err(&[("--ready-fd", Some(fd)), ("--exit-fd", None)]);
            assert!(
                msg.starts_with(&format!("--ready-fd {fd} is a standard stream")),
                "{msg}"
            );
        }
        let msg = err(&[("--ready-fd", Some(5)), ("--exit-fd", Some(5))]);
        assert!(
            msg.starts_with("--ready-fd and --exit-fd are both 5"),
            "{msg}"
        );
        check_handed_fds(&[("--ready-fd", Some(3)), ("--exit-fd", Some(4))]).unwrap();
        check_handed_fds(&[("--ready-fd", None), ("--exit-fd", None)]).unwrap();
    }

    #[test]
    fn pidfd_of_a_missing_process_is_esrch() {
        let err = PidFd::open(99_999_999).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ESRCH));
    }

    #[tokio::test]
    async fn pidfd_fires_when_the_child_exits_before_it_is_reaped() {
        let mut child = std::process::Command::new("sleep")
            .arg("0.2")
            .spawn()
            .unwrap();
        let pidfd = PidFd::open(child.id() as i32).unwrap();
        assert!(!pidfd.has_exited());
        let start = std::time::Instant::now();
        tokio::time::timeout(std::time::Duration::from_secs(5), pidfd.exited())
            .await
            .expect("pidfd did not fire")
            .unwrap();
        assert!(start.elapsed() < std::time::Duration::from_secs(2));
        child.wait().unwrap();
    }
}
