//! Living in the background: daemonizing, and the janitor that cleans up after
//! us if we are killed.
//!
//! Background mode forks *before* any thread exists (the namespace helper is
//! forked later, from the daemon, and tokio starts after that). The foreground
//! process keeps only the read end of a pipe: the daemon writes `ready` or
//! `error:<message>` into it, and the foreground process prints the error or
//! nothing and exits with the matching status. The daemon `setsid`s and points its
//! stdio at `/dev/null`, so `out=$(wireguard4netns …)` returns as soon as the
//! tunnel is up, as with wireguard-go. It also moves to `/` and closes every
//! descriptor it inherited but the ones it was handed (`--ready-fd`,
//! `--exit-fd`, and `--log-file`, where its log goes instead of nowhere), so it
//! holds nothing of its caller's for the tunnel's lifetime.
//! If the foreground process dies before the answer, the pipe loses its reader
//! (`POLLERR`, then `EPIPE` on "ready") and the daemon stops: a start nobody
//! waits for is abandoned, not served.
//!
//! The janitor is a second fork that outlives nothing: it waits for end-of-file
//! on a pipe only we write to, which our death (SIGKILL included) delivers, and
//! then removes our socket files. Like every process we fork that is not meant
//! to hold our resources (the TUN helper too), it closes every inherited
//! descriptor it does not need (`keep_only`). It also removes the
//! `--pid-file` however we end, which the confined engine itself may not.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};

use nix::fcntl::OFlag;
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::{ForkResult, Pid, dup2_stderr, dup2_stdin, dup2_stdout, fork, pipe2, setsid};

const READY: &[u8] = b"ready";
const ERROR: &[u8] = b"error:";

/// Tells whoever waits for us that the tunnel is up, or why it is not.
#[derive(Debug, Default)]
pub struct Notifier {
    /// The pipe to the waiting foreground process (background mode only).
    pipe: Option<File>,
}

impl Notifier {
    /// A notifier for foreground mode: nobody is waiting.
    pub fn foreground() -> Self {
        Self::default()
    }

    /// The tunnel is configured: release the foreground process. An error
    /// means it is gone (killed before we were ready: `EPIPE`, SIGPIPE being
    /// ignored, as Rust programs do), and with it whoever wanted the tunnel:
    /// the caller stops instead of serving it.
    pub fn ready(&mut self) -> io::Result<()> {
        match self.pipe.take() {
            Some(mut pipe) => pipe.write_all(READY).map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("the process that started us ended before the tunnel was ready ({e})"),
                )
            }),
            None => Ok(()),
        }
    }

    /// Has the foreground process gone while we were starting? A pipe's
    /// write end polls `POLLERR` once its last reader is closed; checked
    /// between the steps of the start, so an abandoned start stops early
    /// rather than only at [`Notifier::ready`].
    pub fn abandoned(&self) -> bool {
        let Some(pipe) = &self.pipe else {
            return false;
        };
        let mut pfd = libc::pollfd {
            fd: pipe.as_raw_fd(),
            events: 0,
            revents: 0,
        };
        // SAFETY: `pfd` is one valid pollfd that lives across the call; the
        // descriptor is open (owned by `self`); timeout 0 never blocks.
        let n = unsafe { libc::poll(&mut pfd, 1, 0) };
        n > 0 && pfd.revents & libc::POLLERR != 0
    }

    /// Starting failed: hand the message to the foreground process to print.
    pub fn fail(&mut self, message: &str) {
        if let Some(mut pipe) = self.pipe.take() {
            let mut msg = ERROR.to_vec();
            msg.extend_from_slice(message.as_bytes());
            let _ = pipe.write_all(&msg);
        }
    }

    /// Is a foreground process waiting for our answer?
    pub fn is_background(&self) -> bool {
        self.pipe.is_some()
    }
}

/// The answer the foreground process got from its daemon.
#[derive(Debug, PartialEq, Eq)]
pub enum DaemonOutcome {
    Ready,
    Failed(String),
}

/// Which side of [`daemonize`] we are on.
#[derive(Debug)]
pub enum Daemonized {
    /// The background process: carry on, and report through the notifier.
    Daemon(Notifier),
    /// The original process, with the daemon's answer: print it and exit.
    Original(DaemonOutcome),
}

/// Fork into the background. The daemon gets a [`Notifier`] to report through;
/// the original process waits for the daemon's answer.
///
/// The daemon leaves the caller's working directory (`chdir("/")`, so it
/// keeps no file system busy and resolves no relative path against it: the
/// caller makes every path absolute first) and closes every inherited
/// descriptor above stderr but `keep` (the `--ready-fd`/`--exit-fd` it was
/// handed, the `--log-file` its log goes to) and its notifier pipe: a descriptor the caller forgot to mark
/// close-on-exec (a lock file, the write end of somebody's pipe) must not live
/// as long as the tunnel.
///
/// Must be called while the process is single-threaded, and while nothing in
/// it owns a descriptor above 2 but those in `keep`.
pub fn daemonize(keep: &[RawFd]) -> io::Result<Daemonized> {
    let (read_end, write_end) = pipe2(OFlag::O_CLOEXEC)?;
    // SAFETY: called before any thread is started (the caller's contract; main
    // forks before it builds the tokio runtime), so the child is a complete,
    // consistent copy of the process.
    match unsafe { fork() }? {
        ForkResult::Parent { child } => {
            drop(write_end);
            let mut answer = Vec::new();
            // A read error is treated like an empty answer: the daemon is gone.
            let _ = File::from(read_end).read_to_end(&mut answer);
            let outcome = if answer == READY {
                DaemonOutcome::Ready
            } else if let Some(msg) = answer.strip_prefix(ERROR) {
                // The daemon exits right after failing; reap it so it never
                // lingers as a zombie of ours.
                let _ = waitpid(child, None);
                DaemonOutcome::Failed(String::from_utf8_lossy(msg).into_owned())
            } else {
                let status = match waitpid(child, None) {
                    Ok(WaitStatus::Exited(_, code)) => format!("exit status {code}"),
                    Ok(WaitStatus::Signaled(_, sig, _)) => format!("killed by {sig}"),
                    Ok(other) => format!("{other:?}"),
                    Err(e) => format!("wait failed: {e}"),
                };
                DaemonOutcome::Failed(format!(
                    "the background process ended before the tunnel was ready ({status})"
                ))
            };
            Ok(Daemonized::Original(outcome))
        }
        ForkResult::Child => {
            drop(read_end);
            setsid()?;
            let null = File::options().read(true).write(true).open("/dev/null")?;
            dup2_stdin(&null)?;
            dup2_stdout(&null)?;
            dup2_stderr(&null)?;
            drop(null);
            nix::unistd::chdir("/")?;
            let mut keep = keep.to_vec();
            keep.push(write_end.as_raw_fd());
            // SAFETY: nothing in this process owns a descriptor above 2 but
            // those in `keep` (the caller's contract; `null` is closed above),
            // so none is closed behind its owner's back.
            unsafe { close_all_except(&keep) }?;
            Ok(Daemonized::Daemon(Notifier {
                pipe: Some(File::from(write_end)),
            }))
        }
    }
}

/// A forked process that cleans up after us if we die without doing it
/// ourselves (SIGKILL, a crash): it holds the read end of a pipe whose only
/// writer is us, so our death, however it happens, is an end-of-file there.
///
/// It closes every inherited descriptor except the ones its cleanup needs, so it
/// never keeps a pipe, a terminal or the TUN open on our behalf, and it ignores
/// the signals a terminal sends to the whole process group: it lives exactly as
/// long as we do.
#[derive(Debug)]
pub struct Janitor {
    pipe: Option<File>,
    pid: Pid,
}

const DISMISS: &[u8] = b"d";

impl Janitor {
    /// Fork the janitor. `cleanup` runs in it if we die without calling
    /// [`Janitor::dismiss`]; `keep` lists the descriptors `cleanup` uses.
    ///
    /// Must be called while the process is single-threaded.
    pub fn spawn(keep: &[RawFd], cleanup: impl FnOnce()) -> io::Result<Self> {
        Self::spawn_with(keep, cleanup, || {})
    }

    /// [`Janitor::spawn`], plus `at_end`, which runs in the janitor however
    /// we end, dismissed or dead: the cleanup the confined engine cannot do
    /// itself (the pid file, outside the one directory Landlock lets it
    /// remove files in). [`Janitor::dismiss`] waits for it.
    pub fn spawn_with(
        keep: &[RawFd],
        cleanup: impl FnOnce(),
        at_end: impl FnOnce(),
    ) -> io::Result<Self> {
        let (read_end, write_end) = pipe2(OFlag::O_CLOEXEC)?;
        // SAFETY: called before any thread exists (the callers fork before the
        // tokio runtime starts), so the child is a consistent copy; it never
        // returns into the caller and ends in `_exit`.
        match unsafe { fork() }? {
            ForkResult::Parent { child } => Ok(Self {
                pipe: Some(File::from(write_end)),
                pid: child,
            }),
            ForkResult::Child => {
                drop(write_end);
                let mut keep = keep.to_vec();
                keep.push(read_end.as_raw_fd());
                janitor_main(File::from(read_end), &keep, cleanup, at_end)
            }
        }
    }

    /// We cleaned up ourselves: tell the janitor to leave without doing
    /// anything, and reap it.
    pub fn dismiss(mut self) {
        if let Some(mut pipe) = self.pipe.take() {
            let _ = pipe.write_all(DISMISS);
        }
        let _ = waitpid(self.pid, None);
    }
}

fn janitor_main(
    mut pipe: File,
    keep: &[RawFd],
    cleanup: impl FnOnce(),
    at_end: impl FnOnce(),
) -> ! {
    use nix::sys::signal::{SigHandler, Signal, signal};
    for sig in [
        Signal::SIGINT,
        Signal::SIGHUP,
        Signal::SIGTERM,
        Signal::SIGQUIT,
        Signal::SIGPIPE,
    ] {
        // SAFETY: SIG_IGN installs no handler code, so nothing can run in
        // signal context.
        let _ = unsafe { signal(sig, SigHandler::SigIgn) };
    }
    // SAFETY: the janitor never returns into code that owns descriptors (it
    // ends in `_exit`), and `cleanup` uses only those in `keep`.
    // Best effort: a janitor that holds more than it should still cleans up.
    let _ = unsafe { keep_only(keep) };
    let mut answer = [0u8; 1];
    let dismissed = loop {
        match pipe.read(&mut answer) {
            Ok(n) => break n == 1 && answer == DISMISS,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => break false,
        }
    };
    if !dismissed {
        cleanup();
    }
    at_end();
    // SAFETY: `_exit` ends the janitor without running destructors of the
    // parent's objects, whose descriptors were closed above.
    unsafe { libc::_exit(0) }
}

/// Make this forked process hold nothing of ours: stdio points at `/dev/null`
/// (or stays as it is, if that cannot be opened, rather than leaving 0-2 free
/// for the next descriptor we open, where a stray message on stderr would
/// land), and every other descriptor but those in `keep` is closed.
///
/// # Safety
/// Only for a forked child that never returns into code owning descriptors
/// (it ends in `_exit`) and uses no descriptor after this but those in `keep`:
/// the others are closed behind their owners' backs.
pub(crate) unsafe fn keep_only(keep: &[RawFd]) -> io::Result<()> {
    if let Ok(null) = File::options().read(true).write(true).open("/dev/null") {
        // A kept descriptor may be 0-2 itself, if we were started with stdio
        // closed; it stays what it is.
        let keeps = |fd: RawFd| keep.contains(&fd);
        if !keeps(0) {
            let _ = dup2_stdin(&null);
        }
        if !keeps(1) {
            let _ = dup2_stdout(&null);
        }
        if !keeps(2) {
            let _ = dup2_stderr(&null);
        }
    }
    // SAFETY: passed on from our caller.
    unsafe { close_all_except(keep) }
}

/// Close every descriptor of this process above stderr that is not in `keep`:
/// `close_range(2)` over the gaps between the kept ones (Linux 5.9+), else
/// one `close` per entry of `/proc/self/fd`.
///
/// # Safety
/// As for [`keep_only`].
unsafe fn close_all_except(keep: &[RawFd]) -> io::Result<()> {
    let mut kept: Vec<u32> = keep
        .iter()
        .filter_map(|&fd| u32::try_from(fd).ok())
        .filter(|&fd| fd > 2)
        .collect();
    kept.sort_unstable();
    kept.dedup();
    let mut first = 3u32;
    let mut ranges = Vec::with_capacity(kept.len() + 1);
    for fd in kept {
        if fd > first {
            ranges.push((first, fd - 1));
        }
        first = fd + 1;
    }
    ranges.push((first, u32::MAX));
    for (first, last) in ranges {
        // SAFETY: close_range only closes descriptors, none of which anybody
        // in this process uses again (our caller's contract).
        let rc = unsafe { libc::syscall(libc::SYS_close_range, first, last, 0u32) };
        if rc != 0 {
            // ENOSYS before Linux 5.9; EINVAL cannot happen (first <= last,
            // no flags). Closing what is left one by one is the same result.
            // SAFETY: passed on from our caller.
            return unsafe { close_listed_except(keep) };
        }
    }
    Ok(())
}

/// The fallback of [`close_all_except`]: close what `/proc/self/fd` lists.
///
/// # Safety
/// As for [`keep_only`].
unsafe fn close_listed_except(keep: &[RawFd]) -> io::Result<()> {
    let fds: Vec<RawFd> = std::fs::read_dir("/proc/self/fd")?
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    for fd in fds {
        if fd > 2 && !keep.contains(&fd) {
            // SAFETY: nobody in this process uses these again (our caller's
            // contract), so closing them cannot cause a double close. The fd
            // of the directory listing itself is already closed and gives
            // EBADF.
            unsafe { libc::close(fd) };
        }
    }
    Ok(())
}

/// `--pid-file PATH`: our PID, for service managers and scripts. Written
/// atomically (a temporary file in the same directory, renamed over PATH), so a
/// reader sees either no file or the whole number, and removed only while it
/// still holds our PID (another instance may have taken the path since).
#[derive(Debug, Clone)]
pub struct PidFile {
    path: PathBuf,
}

impl PidFile {
    /// Check that PATH can be written by us: its directory exists and is
    /// writable, and PATH is not a directory. `path` must be absolute (the
    /// daemon works from `/`).
    pub fn check(path: &Path) -> io::Result<Self> {
        let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
        let (Some(dir), Some(_)) = (dir, path.file_name()) else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("--pid-file {} does not name a file", path.display()),
            ));
        };
        nix::unistd::access(dir, nix::unistd::AccessFlags::W_OK | nix::unistd::AccessFlags::X_OK)
            .map_err(|e| {
                let why = if e == nix::errno::Errno::ENOENT {
                    "does not exist"
                } else {
                    "is not writable by you"
                };
                io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    format!(
                        "cannot write the pid file {}: its directory {} {why} ({e}) (hint: choose a directory of your own, e.g. $XDG_RUNTIME_DIR)",
                        path.display(),
                        dir.display()
                    ),
                )
            })?;
        if path.is_dir() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("--pid-file {} is a directory", path.display()),
            ));
        }
        Ok(Self {
            path: path.to_owned(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn contents(pid: u32) -> String {
        format!("{pid}\n")
    }

    /// Write our PID: into `.NAME.PID.tmp` beside PATH, then rename it over
    /// PATH.
    pub fn write(&self) -> io::Result<()> {
        let pid = std::process::id();
        let mut tmp_name = std::ffi::OsString::from(".");
        tmp_name.push(self.path.file_name().unwrap_or_default());
        tmp_name.push(format!(".{pid}.tmp"));
        let tmp = self.path.with_file_name(tmp_name);
        let written = File::options()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .and_then(|mut file| file.write_all(Self::contents(pid).as_bytes()))
            .and_then(|()| std::fs::rename(&tmp, &self.path));
        if written.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        written
    }

    /// Remove PATH if it still holds our PID. For the janitor, whose PID
    /// differs: `pid` is the engine's.
    pub fn remove_if_ours(&self, pid: u32) {
        if std::fs::read_to_string(&self.path).is_ok_and(|text| text == Self::contents(pid)) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn notifier_with_reader() -> (Notifier, File) {
        let (read_end, write_end) = pipe2(OFlag::O_CLOEXEC).expect("pipe2");
        let notifier = Notifier {
            pipe: Some(File::from(write_end)),
        };
        (notifier, File::from(read_end))
    }

    /// While the foreground process listens, `ready` reaches it.
    #[test]
    fn ready_reaches_a_listening_foreground() {
        let (mut notifier, mut reader) = notifier_with_reader();
        assert!(!notifier.abandoned());
        notifier.ready().expect("ready");
        let mut answer = Vec::new();
        reader.read_to_end(&mut answer).expect("read");
        assert_eq!(answer, READY);
    }

    /// The foreground process killed before "ready": the start sees it
    /// (`abandoned`) and `ready` fails with EPIPE, which the attach form
    /// turns into a stop (`attach::serve`).
    #[test]
    fn a_vanished_foreground_is_seen_and_ready_fails() {
        let (mut notifier, reader) = notifier_with_reader();
        drop(reader);
        assert!(notifier.abandoned());
        let err = notifier.ready().unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::BrokenPipe, "{err}");
        assert!(
            err.to_string()
                .contains("ended before the tunnel was ready"),
            "{err}"
        );
    }

    /// Foreground mode has nobody to tell and is never abandoned.
    #[test]
    fn foreground_mode_is_never_abandoned() {
        let mut notifier = Notifier::foreground();
        assert!(!notifier.abandoned());
        notifier.ready().expect("ready");
    }
}
