//! Who is at the other end of a unix socket, and which user namespace it is
//! in, relative to ours.
//!
//! # Theory of operation
//!
//! The UAPI socket hands out the private key and takes orders, so the server
//! must know whether a connecting process sits *inside* the tunnel's
//! namespaces (`run`'s command, the attach target, anything nested in them)
//! or on the owner's side. Unix socket credentials (`SO_PEERCRED`) are not
//! enough: the target's root maps to the owner's uid. The user namespace is
//! what tells them apart, and it is reached through the peer's process:
//!
//! 1. **Which process.** `SO_PEERPIDFD` (Linux 6.5) gives a pidfd of the
//!    process that called `connect`, taken by the kernel at connect time, so
//!    it cannot name another process after a PID is reused. On older kernels
//!    we fall back to `SO_PEERCRED`'s PID and `pidfd_open(2)`, and refuse
//!    the peer when `/proc/PID/stat` says that process started after we
//!    began looking. The residual race of the fallback: the connecting
//!    process exits *and* its PID is handed to a new process between its
//!    `connect` and our check (a full PID wrap-around within microseconds,
//!    or a deliberate PID-recycling attack racing the accept loop). The new
//!    process is then judged instead of the old one; the start-time check
//!    narrows the window to the clock tick (10 ms) before we looked.
//! 2. **Which user namespace.** `ioctl(pidfd, PIDFD_GET_USER_NAMESPACE)`
//!    (Linux 6.11) returns it from the pidfd directly. On older kernels we
//!    open `/proc/PID/ns/user` and then poll the pidfd: a process that is
//!    still alive after the open still owns its PID, so the PID named it.
//! 3. **Where it is.** Namespaces are compared by the device and inode of
//!    their nsfs files. Equal to ours: [`Relation::Same`]. Otherwise we walk
//!    up with `ioctl(NS_GET_PARENT)`: reaching ours means the peer is nested
//!    in it ([`Relation::Inside`]). The kernel answers `EPERM` when the
//!    parent lies outside our namespace's subtree, so a chain that ends in
//!    `EPERM` without passing ours is not below us: an ancestor (root's `wg`
//!    in the initial namespace while we run in a container) or a stranger
//!    ([`Relation::Outside`]). User namespaces nest at most 32 deep, which
//!    bounds the walk.
//!
//! # Who can be inspected
//!
//! Reading another process's namespace (the `/proc` link or the pidfd
//! ioctl) needs `PTRACE_MODE_READ` over it, and for a process in another
//! user namespace commoncap adds: `CAP_SYS_PTRACE` in *that* namespace
//! (`cap_ptrace_access_check`). Two consequences:
//!
//! * A non-root engine can always inspect every inside process: whoever
//!   made the inside user namespace (the engine's own `run` child, or the
//!   owner's `unshare` for attach: we can only attach to namespaces we have
//!   `CAP_SYS_ADMIN` over, that is, user namespaces our uid owns) is our
//!   uid, so the engine holds every capability, `CAP_SYS_PTRACE` included,
//!   in that namespace and in everything nested in it; that also overrides a
//!   non-dumpable target. Yama's `ptrace_scope` only restricts attaching,
//!   not reading. Only an LSM policy (AppArmor, SELinux) denying the read
//!   could make an inside process [`Relation::Uninspectable`]; its uid then
//!   is the owner's (or a subordinate uid), never 0.
//! * A process in an *ancestor* namespace is never inspectable from below:
//!   we hold no capability there. So in practice an ancestor comes out
//!   [`Relation::Uninspectable`], not [`Relation::Outside`] (which remains
//!   the answer for a namespace we can read that is not below ours). Typical
//!   cases: root's `wg` reaching an unprivileged engine's socket through a
//!   `/var/run/wireguard` symlink, or the owner's shell reaching an engine
//!   that runs in the owner's rootless container.
//!
//! A root engine holds `CAP_SYS_PTRACE` in the initial namespace, so it can
//! inspect everything (barring an LSM) and every peer gets a real answer.
//! The caller decides what to do with an uninspectable peer; `SO_PEERCRED`'s
//! uid, which [`Peer::uid`] carries, is translated into our namespace (an
//! unmapped uid reads as the overflow uid, 65534).
//!
//! The descriptors this module opens are all close-on-exec (pidfds and
//! nsfs descriptors always are, `/proc` files are opened with `O_CLOEXEC`).

#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

use std::fs;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;

use nix::errno::Errno;
use nix::fcntl::{OFlag, open};
use nix::sys::socket::{getsockopt, sockopt};
use nix::sys::stat::{Mode, fstat};
use nix::time::{ClockId, clock_gettime};

use crate::lifecycle::PidFd;

/// `SO_PEERPIDFD` (Linux 6.5, `include/uapi/asm-generic/socket.h`).
const SO_PEERPIDFD: libc::c_int = 77;

/// `PIDFD_GET_USER_NAMESPACE` = `_IO(PIDFS_IOCTL_MAGIC, 9)` (Linux 6.11,
/// `include/uapi/linux/pidfd.h`; number 11 is `PIDFD_GET_INFO`).
pub(crate) const PIDFD_GET_USER_NAMESPACE: libc::c_ulong =
    nix::request_code_none!(0xFF, 9) as libc::c_ulong;

/// `NS_GET_PARENT` = `_IO(NSIO, 0x2)` (Linux 4.9, `include/uapi/linux/nsfs.h`).
const NS_GET_PARENT: libc::c_ulong = nix::request_code_none!(0xb7, 2) as libc::c_ulong;

/// How deep user namespaces nest (`MAX_USER_NS_LEVEL` in
/// `kernel/user_namespace.c`), plus one for the start.
const MAX_WALK: usize = 33;

/// Errors while inspecting a peer that are not an answer about it.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    /// A system call failed in a way that says nothing about the peer.
    #[error("cannot inspect the process at the other end of the socket: {call}: {errno}")]
    Inspect {
        /// What we were doing.
        call: &'static str,
        /// What the kernel said.
        errno: Errno,
    },
    /// The inspector process (see [`crate::inspector`]) could not answer, or
    /// answered with this error.
    #[error("{0}")]
    Delegated(String),
    /// Our own user namespace could not be identified.
    #[error(
        "cannot identify our own user namespace through /proc/self/ns/user: {0} (hint: is /proc mounted?)"
    )]
    OwnNamespace(Errno),
}

fn inspect_err(call: &'static str) -> impl FnOnce(Errno) -> PeerError {
    move |errno| PeerError::Inspect { call, errno }
}

/// A user namespace, by the device and inode of its nsfs file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UserNs {
    dev: u64,
    ino: u64,
}

impl UserNs {
    /// Our own user namespace.
    ///
    /// # Errors
    ///
    /// [`PeerError::OwnNamespace`] when `/proc/self/ns/user` cannot be read.
    pub fn current() -> Result<Self, PeerError> {
        fs::metadata("/proc/self/ns/user")
            .map(|m| Self {
                dev: m.dev(),
                ino: m.ino(),
            })
            .map_err(|e| PeerError::OwnNamespace(Errno::from_raw(e.raw_os_error().unwrap_or(0))))
    }

    fn of(fd: &OwnedFd) -> Result<Self, Errno> {
        let st = fstat(fd)?;
        Ok(Self {
            dev: st.st_dev,
            ino: st.st_ino,
        })
    }
}

/// Are we root in the initial user namespace, and so able to inspect every
/// process (barring an LSM)? The initial namespace is the one whose uid map
/// is the identity over the whole range (`0 0 4294967295`), as systemd also
/// tells it. Read before any Landlock ruleset, which would refuse `/proc`.
pub fn root_in_initial_user_ns() -> bool {
    if !nix::unistd::geteuid().is_root() {
        return false;
    }
    let Ok(map) = fs::read_to_string("/proc/self/uid_map") else {
        return false;
    };
    let fields: Vec<&str> = map.split_whitespace().collect();
    fields == ["0", "0", "4294967295"]
}

/// Where the peer's user namespace is, seen from ours.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Relation {
    /// Our own user namespace.
    Same,
    /// Nested in ours: a descendant.
    Inside,
    /// Not below ours: an ancestor, or a namespace beside our subtree.
    Outside,
    /// We may not look at the process (`EACCES`/`EPERM`): see the module
    /// documentation for who that can be.
    Uninspectable,
    /// The process is gone, or its PID names a younger process now.
    Gone,
}

/// What we know about the process at the other end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    /// Its PID in our PID namespace (0 when it has none there), from
    /// `SO_PEERCRED`.
    pub pid: i32,
    /// Its effective uid at connect time, in our user namespace.
    pub uid: u32,
    /// Where its user namespace is.
    pub relation: Relation,
}

/// Identifies the process at the other end of the connected unix socket
/// `sock` and places its user namespace relative to `ours`.
///
/// # Errors
///
/// [`PeerError::Inspect`] when a system call fails for a reason other than
/// the peer being gone or out of our reach.
pub fn inspect(sock: BorrowedFd<'_>, ours: UserNs) -> Result<Peer, PeerError> {
    inspect_with(sock, ours, Kernel::AS_IS)
}

/// Which of the newer interfaces to try; tests turn them off to exercise the
/// fallbacks on a kernel that has them.
#[derive(Debug, Clone, Copy)]
struct Kernel {
    peerpidfd: bool,
    pidfd_user_ns: bool,
}

impl Kernel {
    const AS_IS: Kernel = Kernel {
        peerpidfd: true,
        pidfd_user_ns: true,
    };
}

fn inspect_with(sock: BorrowedFd<'_>, ours: UserNs, kernel: Kernel) -> Result<Peer, PeerError> {
    let cred = getsockopt(&sock, sockopt::PeerCredentials).map_err(inspect_err("SO_PEERCRED"))?;
    let (pid, uid) = (cred.pid(), cred.uid());
    let relation = match peer_pidfd(sock, pid, kernel)? {
        PeerPidFd::Exact(pidfd) => user_ns(&pidfd, pid, kernel)?,
        PeerPidFd::Checked { pidfd, since } => match started_after(pid, since)? {
            Some(true) | None => Located::Known(Relation::Gone),
            Some(false) => user_ns(&pidfd, pid, kernel)?,
        },
        PeerPidFd::Missing(relation) => relation,
    };
    let relation = match relation {
        Located::Ns(ns) => walk(ns, ours)?,
        Located::Known(relation) => relation,
    };
    Ok(Peer { pid, uid, relation })
}

/// A pidfd of the peer, and how much it can be trusted to be the peer.
enum PeerPidFd {
    /// From `SO_PEERPIDFD`: the connecting process itself.
    Exact(PidFd),
    /// From `pidfd_open(pid)`: the process that had the PID at `since`
    /// (clock ticks of `CLOCK_BOOTTIME`, as in `/proc/PID/stat`).
    Checked { pidfd: PidFd, since: u64 },
    /// No pidfd: the answer is already known.
    Missing(Located),
}

/// A peer's user namespace, or why there is none to look at.
enum Located {
    Ns(OwnedFd),
    Known(Relation),
}

fn peer_pidfd(sock: BorrowedFd<'_>, pid: i32, kernel: Kernel) -> Result<PeerPidFd, PeerError> {
    let pidfd = if kernel.peerpidfd {
        so_peerpidfd(sock)
    } else {
        Err(Errno::ENOPROTOOPT)
    };
    match pidfd {
        Ok(pidfd) => return Ok(PeerPidFd::Exact(PidFd::from_owned(pid, pidfd))),
        // Gone already (the kernel cannot make a pidfd of a reaped task).
        Err(Errno::EINVAL | Errno::ESRCH) => {
            return Ok(PeerPidFd::Missing(Located::Known(Relation::Gone)));
        }
        Err(Errno::ENOPROTOOPT) => {}
        Err(errno) => {
            return Err(PeerError::Inspect {
                call: "getsockopt(SO_PEERPIDFD)",
                errno,
            });
        }
    }
    // Older kernel. A PID of 0: the peer has no PID in our PID namespace (it
    // lives above it), so there is nothing to open.
    if pid <= 0 {
        return Ok(PeerPidFd::Missing(Located::Known(Relation::Uninspectable)));
    }
    let since = boottime_ticks()?;
    match PidFd::open(pid) {
        Ok(pidfd) => Ok(PeerPidFd::Checked { pidfd, since }),
        Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {
            Ok(PeerPidFd::Missing(Located::Known(Relation::Gone)))
        }
        Err(e) => Err(PeerError::Inspect {
            call: "pidfd_open",
            errno: Errno::from_raw(e.raw_os_error().unwrap_or(0)),
        }),
    }
}

/// The peer's user namespace through its pidfd.
fn user_ns(pidfd: &PidFd, pid: i32, kernel: Kernel) -> Result<Located, PeerError> {
    let ns = if kernel.pidfd_user_ns {
        pidfd_user_ns(pidfd)
    } else {
        Err(Errno::ENOTTY)
    };
    match ns {
        Ok(ns) => return Ok(Located::Ns(ns)),
        Err(Errno::EACCES | Errno::EPERM) => return Ok(Located::Known(Relation::Uninspectable)),
        Err(Errno::ESRCH) => return Ok(Located::Known(Relation::Gone)),
        // Before Linux 6.11 the ioctl is unknown.
        Err(Errno::ENOTTY | Errno::EINVAL | Errno::EOPNOTSUPP) => {}
        Err(errno) => {
            return Err(PeerError::Inspect {
                call: "ioctl(PIDFD_GET_USER_NAMESPACE)",
                errno,
            });
        }
    }
    if pid <= 0 {
        return Ok(Located::Known(Relation::Uninspectable));
    }
    let path = format!("/proc/{pid}/ns/user");
    let ns = match open(
        path.as_str(),
        OFlag::O_RDONLY | OFlag::O_CLOEXEC,
        Mode::empty(),
    ) {
        Ok(ns) => ns,
        Err(Errno::EACCES | Errno::EPERM) => return Ok(Located::Known(Relation::Uninspectable)),
        Err(Errno::ENOENT | Errno::ESRCH) => return Ok(Located::Known(Relation::Gone)),
        Err(errno) => {
            return Err(PeerError::Inspect {
                call: "open /proc/PID/ns/user",
                errno,
            });
        }
    };
    // Alive after the open: the PID was still its, so the file was its.
    if pidfd
        .poll_exited()
        .map_err(inspect_err("poll of a pidfd"))?
    {
        return Ok(Located::Known(Relation::Gone));
    }
    Ok(Located::Ns(ns))
}

/// Walks up from `ns` until it reaches `ours` or leaves our subtree.
fn walk(ns: OwnedFd, ours: UserNs) -> Result<Relation, PeerError> {
    let mut current = ns;
    for step in 0..MAX_WALK {
        if UserNs::of(&current).map_err(inspect_err("fstat of a user namespace"))? == ours {
            return Ok(if step == 0 {
                Relation::Same
            } else {
                Relation::Inside
            });
        }
        current = match ns_get_parent(&current) {
            Ok(parent) => parent,
            // The parent is outside our subtree (or there is none): the peer
            // is not below us.
            Err(Errno::EPERM) => return Ok(Relation::Outside),
            Err(errno) => {
                return Err(PeerError::Inspect {
                    call: "ioctl(NS_GET_PARENT)",
                    errno,
                });
            }
        };
    }
    Err(PeerError::Inspect {
        call: "walking up the user namespaces",
        errno: Errno::ELOOP,
    })
}

/// Whether the process named `pid` started after `since` (ticks since
/// boot); `None` when it is gone.
fn started_after(pid: i32, since: u64) -> Result<Option<bool>, PeerError> {
    let stat = match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat,
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ESRCH)) => return Ok(None),
        Err(e) => {
            return Err(PeerError::Inspect {
                call: "read /proc/PID/stat",
                errno: Errno::from_raw(e.raw_os_error().unwrap_or(0)),
            });
        }
    };
    let start = start_time(&stat).ok_or(PeerError::Inspect {
        call: "parse /proc/PID/stat",
        errno: Errno::EPROTO,
    })?;
    Ok(Some(start > since))
}

/// Field 22, `starttime`, of a `/proc/PID/stat` line. The command name
/// (field 2) may hold spaces and parentheses, so counting starts after the
/// last `)`.
fn start_time(stat: &str) -> Option<u64> {
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_ascii_whitespace().nth(19)?.parse().ok()
}

/// Now, in the clock ticks `/proc/PID/stat` counts start times in.
fn boottime_ticks() -> Result<u64, PeerError> {
    let now = clock_gettime(ClockId::CLOCK_BOOTTIME).map_err(inspect_err("clock_gettime"))?;
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .and_then(|hz| u64::try_from(hz).ok())
        .unwrap_or(100);
    let secs = u64::try_from(now.tv_sec()).unwrap_or(0);
    let nanos = u64::try_from(now.tv_nsec()).unwrap_or(0);
    Ok(secs.saturating_mul(hz) + nanos.saturating_mul(hz) / 1_000_000_000)
}

// ---- the raw calls ---------------------------------------------------------

/// `getsockopt(SO_PEERPIDFD)`, which nix does not offer.
fn so_peerpidfd(sock: BorrowedFd<'_>) -> Result<OwnedFd, Errno> {
    let mut fd: libc::c_int = -1;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `sock` is a valid descriptor for the call; the kernel writes at
    // most `len` bytes (one int) into `fd`, which lives on our stack.
    let rc = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_PEERPIDFD,
            (&raw mut fd).cast(),
            &raw mut len,
        )
    };
    Errno::result(rc)?;
    owned(fd)
}

fn pidfd_user_ns(pidfd: &PidFd) -> Result<OwnedFd, Errno> {
    // SAFETY: `_IO` ioctl without an argument on a descriptor we own; it
    // returns a new descriptor or -1.
    let rc = unsafe { libc::ioctl(pidfd.as_fd().as_raw_fd(), PIDFD_GET_USER_NAMESPACE as _, 0) };
    owned(Errno::result(rc)?)
}

fn ns_get_parent(ns: &OwnedFd) -> Result<OwnedFd, Errno> {
    // SAFETY: `_IO` ioctl without an argument on a descriptor we own; it
    // returns a new descriptor or -1.
    let rc = unsafe { libc::ioctl(ns.as_raw_fd(), NS_GET_PARENT as _) };
    owned(Errno::result(rc)?)
}

/// Takes ownership of a descriptor a successful system call just returned.
fn owned(fd: libc::c_int) -> Result<OwnedFd, Errno> {
    if fd < 0 {
        return Err(Errno::EBADF);
    }
    // SAFETY: the kernel just gave us this descriptor and nothing else owns
    // it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testns::{Isolation, Stop, ensure, in_namespace};
    use std::io::Read;
    use std::os::unix::net::{UnixListener, UnixStream};

    #[test]
    fn root_of_the_initial_namespace_is_told_apart() {
        let ours = root_in_initial_user_ns();
        if nix::unistd::geteuid().is_root() && UserNs::current().is_ok() {
            // The tests run as root on the host in CI.
            let init = fs::read_to_string("/proc/1/uid_map").unwrap_or_default();
            assert_eq!(
                ours,
                init.split_whitespace().collect::<Vec<_>>() == ["0", "0", "4294967295"]
            );
        } else {
            assert!(!ours);
        }
        // Root of a user namespace of its own is not.
        crate::testns::in_namespace(
            "root_of_the_initial_namespace_is_told_apart",
            crate::testns::Isolation::ForeignNetns,
            || {
                crate::testns::ensure(!root_in_initial_user_ns(), || {
                    "root of a fresh user namespace counted as the initial one".to_owned()
                })
            },
        );
    }

    #[test]
    fn our_own_process_is_same() {
        let (a, _b) = UnixStream::pair().unwrap();
        let ours = UserNs::current().unwrap();
        let peer = inspect(a.as_fd(), ours).unwrap();
        assert_eq!(peer.relation, Relation::Same);
        assert_eq!(peer.pid, std::process::id() as i32);
        assert_eq!(peer.uid, nix::unistd::geteuid().as_raw());
    }

    #[test]
    fn pidfd_ioctl_finds_our_namespace() {
        // The ioctl number is right if it names our own namespace (6.11+).
        let me = PidFd::open(std::process::id() as i32).unwrap();
        match pidfd_user_ns(&me) {
            Ok(ns) => assert_eq!(UserNs::of(&ns).unwrap(), UserNs::current().unwrap()),
            Err(e) => eprintln!("PIDFD_GET_USER_NAMESPACE unavailable here: {e}"),
        }
    }

    #[test]
    fn the_proc_fallback_agrees() {
        let me = PidFd::open(std::process::id() as i32).unwrap();
        let since = boottime_ticks().unwrap();
        assert_eq!(
            started_after(std::process::id() as i32, since).unwrap(),
            Some(false)
        );
        assert!(!me.poll_exited().unwrap());
        let ns = open(
            "/proc/self/ns/user",
            OFlag::O_RDONLY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .unwrap();
        assert_eq!(
            walk(ns, UserNs::current().unwrap()).unwrap(),
            Relation::Same
        );
    }

    #[test]
    fn start_time_is_field_22() {
        let stat = "1234 (a) b) c) S 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 999 19 20\n";
        assert_eq!(start_time(stat), Some(999));
        assert_eq!(start_time("1 (x) S 1"), None);
    }

    const OLD_KERNELS: [Kernel; 3] = [
        Kernel::AS_IS,
        Kernel {
            peerpidfd: false,
            pidfd_user_ns: true,
        },
        Kernel {
            peerpidfd: false,
            pidfd_user_ns: false,
        },
    ];

    #[test]
    fn our_own_process_is_same_on_older_kernels_too() {
        let (a, _b) = UnixStream::pair().unwrap();
        let ours = UserNs::current().unwrap();
        for kernel in OLD_KERNELS {
            let peer = inspect_with(a.as_fd(), ours, kernel).unwrap();
            assert_eq!(peer.relation, Relation::Same, "{kernel:?}");
        }
    }

    /// A process in a user namespace nested in ours connects: inside, on
    /// every path through the fallbacks.
    #[test]
    fn a_child_in_a_fresh_user_namespace_is_inside() {
        for kernel in OLD_KERNELS {
            child_is_inside(kernel);
        }
    }

    fn child_is_inside(kernel: Kernel) {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("s");
        let listener = UnixListener::bind(&path).unwrap();
        let ours = UserNs::current().unwrap();
        let judge = std::thread::spawn(move || {
            let (conn, _) = listener.accept().unwrap();
            let peer = inspect_with(conn.as_fd(), ours, kernel);
            drop(conn);
            peer
        });
        in_namespace(
            "a_child_in_a_fresh_user_namespace_is_inside",
            Isolation::ForeignNetns,
            || {
                let mut conn =
                    UnixStream::connect(&path).map_err(|e| Stop::Fail(format!("connect: {e}")))?;
                // Stay alive until judged: the server hangs up after inspecting.
                let mut rest = Vec::new();
                let _ = conn.read_to_end(&mut rest);
                Ok(())
            },
        );
        let peer = judge.join().unwrap().unwrap();
        assert_eq!(peer.relation, Relation::Inside, "{peer:?} {kernel:?}");
        assert_eq!(peer.uid, nix::unistd::geteuid().as_raw());
    }

    /// Seen from a nested namespace, a process in its parent cannot be
    /// inspected (no capability up there), and its uid is translated into
    /// the nested namespace (the test's uid is 0 there).
    #[test]
    fn a_process_in_an_ancestor_namespace_is_uninspectable() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("s");
        let listener = UnixListener::bind(&path).unwrap();
        // Connected from here (the ancestor); accepted in the child. The
        // kernel records the credentials at connect time.
        let _client = UnixStream::connect(&path).unwrap();
        in_namespace(
            "a_process_in_an_ancestor_namespace_is_uninspectable",
            Isolation::ForeignNetns,
            || {
                let ours = UserNs::current().map_err(|e| Stop::Fail(e.to_string()))?;
                let (conn, _) = listener.accept()?;
                let peer = inspect(conn.as_fd(), ours).map_err(|e| Stop::Fail(e.to_string()))?;
                ensure(
                    peer.relation == Relation::Uninspectable && peer.uid == 0,
                    || format!("{peer:?}"),
                )
            },
        );
    }
}
