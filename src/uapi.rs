//! The UAPI socket: where `wg` (and `wireguard4netns show`/`set`) talk to the
//! running engine.
//!
//! # Mechanism
//!
//! WireGuard's userspace implementations expose their configuration over a
//! unix stream socket `DIR/IFNAME.sock` that speaks the line-based
//! [cross-platform configuration protocol][xplatform]: a request is
//! `get=1\n\n` or `set=1\n` followed by `key=value\n` lines and an empty line;
//! the answer is `key=value\n` lines ending in `errno=N\n\n`. Several requests
//! may follow each other on one connection. The stock `wg` tool looks for
//! `/var/run/wireguard/IFNAME.sock`, which is why root defaults to that
//! directory (see [`default_dir`]).
//!
//! This module owns the file and the transport. Parsing and formatting of the
//! text protocol are gotatun's (`Request::from_str`, `Response`'s `Display`);
//! the device side is gotatun's [`UapiClient`]/`UapiServer` pair. gotatun ships
//! a socket loop too, but it is private, binds only under `/var/run/wireguard`,
//! deletes whatever file is at the path, and closes the connection without an
//! answer when a request does not parse, which leaves `wg` waiting for a reply
//! that never comes.
//!
//! # Why the lock file
//!
//! Two instances started at the same moment for the same interface would both
//! see "no socket", or both see the same stale socket, and the second `bind`
//! would remove the first one's fresh socket. So [`UapiSocket::bind`] first
//! takes an exclusive, non-blocking `flock(2)` on `DIR/IFNAME.lock` and holds
//! it for the life of the [`UapiSocket`]; whoever cannot get it is told the
//! interface is in use. `flock` locks belong to the open file description, so
//! they survive `fork()` and are released by the kernel when the last copy of
//! the descriptor is closed, also when the process is killed. We use
//! [`std::fs::File::try_lock`] (flock on Linux) rather than
//! `nix::fcntl::Flock`, because `Flock`'s `Drop` calls `LOCK_UN`, which would
//! release the lock for *every* process sharing the description: the
//! foreground parent dropping its copy after `fork()` would unlock the
//! daemon's socket.
//!
//! The lock file is removed on drop, while the lock is still held. That opens
//! a classic hole (a second instance opens the old file, we unlink and unlock
//! it, the second instance locks the now nameless file while a third creates
//! and locks a new one), so after locking, `bind` checks that the path still
//! names the file it locked and starts over if not. `wg show all` lists only
//! `*.sock` files, so a lock file that outlives a crash is harmless; the next
//! instance reuses it.
//!
//! wireguard-go does not take our lock, so before binding, an existing socket
//! is probed with a non-blocking `connect`: if someone accepts, it is live and
//! left alone ([`UapiError::InUse`]); `ECONNREFUSED` means nobody listens
//! (a crashed instance) and the file is replaced. Anything other than a socket
//! at the path is never deleted.
//!
//! # Why the inode check
//!
//! On drop the socket (and lock) file is removed only if the path still names
//! the file we created, compared by device, inode and inode change time (the
//! number of a deleted inode is often given to the very next file created). If
//! an operator removed our socket and started a successor, dropping us must
//! not delete the successor's socket. The price: after a `chmod` of our
//! socket we leave it behind, and the next instance removes it as stale.
//!
//! # Use
//!
//! ```text
//! // Before any runtime thread exists, before fork():
//! let socket = UapiSocket::bind(&dir, "wg0")?;
//! // … fork: the side that will not serve calls socket.forget_in_parent() …
//! // In the runtime:
//! let (client, server) = gotatun::device::uapi::UapiServer::new();
//! let device = gotatun::device::build() /* … */ .with_uapi(server).build().await?;
//! let serving = uapi::serve(&socket, client)?;
//! // … until shutdown; then stop the device, drop `serving` and `socket`
//! // (which removes the file).
//! ```
//!
//! # Permissions
//!
//! The directory is created 0700 when missing. An existing directory must be
//! owned by us or by root and must not be writable by others unless it is
//! sticky (like `/tmp`): otherwise another user could swap our socket for
//! theirs and read the keys `wg set` sends. The socket is created 0600: the
//! mode is set on the socket with `fchmod` *before* `bind` (Linux takes the
//! new file's mode from it, minus the umask), so there is no moment in which
//! another user could connect, then `chmod` fixes up whatever the umask took
//! away (`connect` needs write permission).
//!
//! # Why `errno=22`
//!
//! A request that cannot be parsed is answered with `errno=22\n\n` (EINVAL),
//! what wireguard-go's `device/uapi.go` answers for invalid keys and values
//! (`ipcErrorInvalid`), so `wg` reports "Invalid argument" instead of hanging.
//! The connection stays open when the framing is intact (the whole request up
//! to its empty line was read) and is closed when it is not (a line or request
//! over the size limit, or the peer closed mid-request).
//!
//! # Framing rules
//!
//! * Lines end in `\n`; one trailing `\r` per line is stripped, so CRLF input
//!   (e.g. `socat ...,crlf`) works. `wg` itself sends LF only.
//! * Empty lines before a request are skipped.
//! * A request must be printable ASCII: the protocol only carries hex keys,
//!   numbers and addresses, and gotatun's key parser panics on multi-byte
//!   UTF-8 in a 64-byte value (it slices the string by byte offsets).
//! * A request cut short by end-of-file is not applied: half a `set` with
//!   `replace_peers=true` would leave the device without its peers.
//! * Limits (see [`Limits`]): 64 KiB per line, 1 MiB per request, 30 s to
//!   read a request or write a response, 64 concurrent connections.
//!
//! [xplatform]: https://www.wireguard.com/xplatform/#configuration-protocol

#![forbid(unsafe_code)]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

use std::ffi::OsString;
use std::fs::{self, DirBuilder, File, OpenOptions, TryLockError};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::net::UnixListener;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use gotatun::device::uapi::UapiClient;
use gotatun::device::uapi::command::Request;
use nix::errno::Errno;
use nix::sys::socket::{self, AddressFamily, Backlog, SockFlag, SockType, UnixAddr};
use nix::sys::stat::{Mode, fchmod};
use tokio::io::{
    AsyncBufRead, AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt,
};
use tokio::task::JoinSet;

/// Where root's sockets go: the directory the stock `wg` tool searches.
const ROOT_DIR: &str = "/var/run/wireguard";

/// `sizeof(sockaddr_un.sun_path)` on Linux, including the terminating NUL.
const SUN_PATH_LEN: usize = 108;

/// Linux `IFNAMSIZ`, including the terminating NUL.
const IFNAMSIZ: usize = 16;

/// How often `bind` retries when the lock file it locked was unlinked under it
/// by a previous owner shutting down. More than a couple means something else
/// keeps deleting files in the directory.
const LOCK_ATTEMPTS: usize = 8;

/// Pause after an accept error caused by resource exhaustion (EMFILE, …), so a
/// full fd table does not turn the accept loop into a busy loop.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Errors of the UAPI socket. Each names the path involved and, where the user
/// can do something about it, what.
#[derive(Debug, thiserror::Error)]
pub enum UapiError {
    /// The interface name cannot be used in a socket file name.
    #[error("invalid interface name {name:?}: {reason}")]
    InvalidName {
        /// The rejected name.
        name: String,
        /// Why it was rejected.
        reason: &'static str,
    },

    /// The socket directory (or one of its parents) could not be created or
    /// inspected.
    #[error(
        "cannot create socket directory {}: {error} (hint: choose another --tmpdir)",
        path.display()
    )]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// What the OS said.
        error: io::Error,
    },

    /// Something other than a directory is where the socket directory should be.
    #[error(
        "socket directory {} exists but is not a directory (hint: choose another --tmpdir)",
        path.display()
    )]
    NotADirectory {
        /// The path.
        path: PathBuf,
    },

    /// The socket directory could let another user replace our socket.
    #[error("socket directory {} is unsafe: {reason} (hint: choose another --tmpdir)", path.display())]
    UnsafeDir {
        /// The directory.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },

    /// We may not create files in the socket directory.
    #[error(
        "socket directory {} is not writable: {error} (hint: choose another --tmpdir)",
        path.display()
    )]
    DirNotWritable {
        /// The directory.
        path: PathBuf,
        /// What the OS said.
        error: io::Error,
    },

    /// The socket path does not fit into `sockaddr_un`.
    #[error(
        "socket path {} is {len} bytes long, unix sockets allow at most {max} (hint: choose a shorter --tmpdir)",
        path.display(),
        max = SUN_PATH_LEN - 1
    )]
    PathTooLong {
        /// The socket path.
        path: PathBuf,
        /// Its length in bytes.
        len: usize,
    },

    /// Another process serves this interface.
    #[error(
        "another WireGuard process (wireguard4netns or wireguard-go) is already serving {ifname} at {}; stop it, or pick another interface name or --tmpdir",
        path.display()
    )]
    InUse {
        /// The interface name.
        ifname: String,
        /// The socket (or lock file) that is in use.
        path: PathBuf,
    },

    /// The socket path is taken by something that is not a socket.
    #[error(
        "{} exists and is not a socket; refusing to remove it (hint: move it away, or pick another interface name or --tmpdir)",
        path.display()
    )]
    NotASocket {
        /// The path.
        path: PathBuf,
    },

    /// An existing socket could not be checked for a live server.
    #[error(
        "cannot check whether the existing socket {} is in use: {error} (hint: stop the process that owns it, or pick another --tmpdir)",
        path.display()
    )]
    Probe {
        /// The socket path.
        path: PathBuf,
        /// What the OS said.
        error: io::Error,
    },

    /// A stale socket (nobody listening) could not be removed.
    #[error(
        "cannot remove stale socket {}: {error} (hint: remove it yourself, or pick another --tmpdir)",
        path.display()
    )]
    RemoveStale {
        /// The socket path.
        path: PathBuf,
        /// What the OS said.
        error: io::Error,
    },

    /// The lock file could not be opened or locked.
    #[error("cannot lock {}: {error} (hint: choose another --tmpdir)", path.display())]
    Lock {
        /// The lock file.
        path: PathBuf,
        /// What the OS said.
        error: io::Error,
    },

    /// Creating, binding or setting up the listening socket failed.
    #[error("cannot create UAPI socket {}: {error}", path.display())]
    Bind {
        /// The socket path.
        path: PathBuf,
        /// What the OS said.
        error: io::Error,
    },

    /// The listening socket cannot be served (no tokio runtime, or `accept`
    /// failed for good).
    #[error("cannot serve UAPI socket {}: {error}", path.display())]
    Serve {
        /// The socket path.
        path: PathBuf,
        /// What went wrong.
        error: io::Error,
    },
}

/// The default socket directory:
///
/// * `/var/run/wireguard` when the effective uid is 0, so the stock `wg` tool
///   finds the socket;
/// * else `$XDG_RUNTIME_DIR/wireguard4netns` when `XDG_RUNTIME_DIR` is set to
///   an absolute path (a per-user tmpfs, removed at logout);
/// * else `/tmp/wireguard4netns-UID`. [`UapiSocket::bind`] refuses it if
///   another user created it first.
pub fn default_dir() -> PathBuf {
    default_dir_for(
        nix::unistd::geteuid().as_raw(),
        std::env::var_os("XDG_RUNTIME_DIR"),
    )
}

/// [`default_dir`] with its inputs made explicit, for tests.
fn default_dir_for(euid: u32, xdg_runtime_dir: Option<OsString>) -> PathBuf {
    if euid == 0 {
        return PathBuf::from(ROOT_DIR);
    }
    match xdg_runtime_dir.map(PathBuf::from) {
        Some(dir) if dir.is_absolute() => dir.join("wireguard4netns"),
        _ => PathBuf::from(format!("/tmp/wireguard4netns-{euid}")),
    }
}

/// The socket of interface `ifname` in `dir`: `dir/IFNAME.sock`.
pub fn socket_path(dir: &Path, ifname: &str) -> PathBuf {
    dir.join(format!("{ifname}.sock"))
}

/// The lock file that guards `dir/IFNAME.sock`.
fn lock_path(dir: &Path, ifname: &str) -> PathBuf {
    dir.join(format!("{ifname}.lock"))
}

/// A bound, listening UAPI socket, the lock that makes it ours, and the duty
/// to remove both files.
///
/// Dropping it removes `IFNAME.sock` and `IFNAME.lock` (each only if the path
/// still names the file we created) and closes the descriptors, which releases
/// the lock. After `fork()`, the process that does *not* serve must get rid of
/// its copy with [`UapiSocket::forget_in_parent`] instead.
#[derive(Debug)]
pub struct UapiSocket {
    // Field order is drop order, and it matters: the socket file goes first,
    // and the lock (which unlinks its file before closing) last. A successor
    // that gets the lock therefore never sees our leftovers.
    socket_file: OwnedPath,
    listener: UnixListener,
    ifname: String,
    lock: LockFile,
}

impl UapiSocket {
    /// Creates `dir` if needed and binds `dir/IFNAME.sock` (mode 0600).
    ///
    /// Synchronous and thread-free, so it can run before the tokio runtime
    /// exists and before `fork()`. The listener is left blocking;
    /// [`UapiSocket::tokio_listener`] switches it when serving.
    ///
    /// # Errors
    ///
    /// [`UapiError::InUse`] when another wireguard4netns holds the lock or a
    /// live server answers on the socket (the socket is left untouched), and
    /// the other variants for an unusable name, directory or path.
    pub fn bind(dir: &Path, ifname: &str) -> Result<UapiSocket, UapiError> {
        validate_ifname(ifname)?;
        let path = socket_path(dir, ifname);
        let len = path.as_os_str().len();
        if len >= SUN_PATH_LEN {
            return Err(UapiError::PathTooLong { path, len });
        }
        prepare_dir(dir)?;

        // On every error return below, dropping it unlinks the lock file
        // (while still holding the lock) and then releases the lock.
        let lock = acquire_lock(dir, ifname)?;

        remove_if_stale(&path, ifname)?;

        let bind_err = |error: io::Error| UapiError::Bind {
            path: path.clone(),
            error,
        };
        let fd = socket::socket(
            AddressFamily::Unix,
            SockType::Stream,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
        .map_err(|e| bind_err(e.into()))?;
        // Linux gives the file that bind() creates the socket inode's mode
        // minus the umask; setting it first closes the window between bind()
        // and chmod() in which others could connect.
        fchmod(&fd, Mode::from_bits_truncate(0o600)).map_err(|e| bind_err(e.into()))?;
        let addr = UnixAddr::new(&path).map_err(|e| bind_err(e.into()))?;
        socket::bind(fd.as_raw_fd(), &addr).map_err(|e| bind_err(e.into()))?;

        // From here on the file exists and is ours: the guard removes it on
        // any error return.
        let meta = match fs::symlink_metadata(&path) {
            Ok(meta) => meta,
            Err(e) => {
                let _ = fs::remove_file(&path);
                return Err(bind_err(e));
            }
        };
        let mut socket_file = OwnedPath::new(path.clone(), &meta);

        // The umask may have taken bits the owner needs (connect() needs w).
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).map_err(bind_err)?;
        // chmod() moved the ctime we recognise the file by.
        socket_file.id = FileId::of(&fs::symlink_metadata(&path).map_err(bind_err)?);
        socket::listen(&fd, Backlog::MAXCONN).map_err(|e| bind_err(e.into()))?;
        let listener = UnixListener::from(fd);

        tracing::debug!(path = %path.display(), "UAPI socket bound");
        Ok(UapiSocket {
            socket_file,
            listener,
            ifname: ifname.to_owned(),
            lock,
        })
    }

    /// The socket's path, `DIR/IFNAME.sock`.
    pub fn path(&self) -> &Path {
        &self.socket_file.path
    }

    /// Remove the socket and lock files now, each only if the path still names
    /// the file we created; the descriptors stay open. For a forked janitor
    /// that cleans up after a process that died without dropping its socket.
    pub fn remove_files(&self) {
        self.socket_file.remove_if_ours();
        self.lock.path.remove_if_ours();
    }

    /// The descriptors this socket holds (listener and lock), for a forked
    /// process that must keep them while closing everything else.
    pub fn raw_fds(&self) -> [std::os::fd::RawFd; 2] {
        [self.listener.as_raw_fd(), self.lock.file.as_raw_fd()]
    }

    /// The interface name the socket serves.
    pub fn ifname(&self) -> &str {
        &self.ifname
    }

    /// Closes this process's descriptors without removing any file.
    ///
    /// For the process that keeps running after `fork()` while its child
    /// serves the socket: the child's copies of the descriptors keep the
    /// socket listening and the lock held, and the child removes the files
    /// when it drops its `UapiSocket`.
    pub fn forget_in_parent(mut self) {
        self.socket_file.armed = false;
        self.lock.path.armed = false;
    }

    /// A tokio listener on a duplicate of the socket's descriptor.
    ///
    /// Puts the (shared) descriptor in non-blocking mode. Must be called from
    /// within a tokio runtime with I/O enabled. The `UapiSocket` still owns
    /// the file: keep it alive while the listener is served.
    ///
    /// # Errors
    ///
    /// [`UapiError::Serve`] when there is no runtime or the descriptor cannot
    /// be duplicated.
    pub fn tokio_listener(&self) -> Result<tokio::net::UnixListener, UapiError> {
        let serve_err = |error: io::Error| UapiError::Serve {
            path: self.path().to_owned(),
            error,
        };
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(serve_err(io::Error::other(
                "not called from within a tokio runtime",
            )));
        }
        let listener = self.listener.try_clone().map_err(serve_err)?;
        listener.set_nonblocking(true).map_err(serve_err)?;
        tokio::net::UnixListener::from_std(listener).map_err(serve_err)
    }
}

/// What "the same file" means when a path may have been re-created: device
/// and inode, plus the inode change time because a deleted file's inode
/// number is often handed straight to the next file created.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileId {
    dev: u64,
    ino: u64,
    ctime: (i64, i64),
}

impl FileId {
    fn of(meta: &fs::Metadata) -> Self {
        Self {
            dev: meta.dev(),
            ino: meta.ino(),
            ctime: (meta.ctime(), meta.ctime_nsec()),
        }
    }
}

/// A path we created, removed on drop if it still names that file.
#[derive(Debug)]
struct OwnedPath {
    path: PathBuf,
    id: FileId,
    armed: bool,
}

impl OwnedPath {
    fn new(path: PathBuf, meta: &fs::Metadata) -> Self {
        Self {
            path,
            id: FileId::of(meta),
            armed: true,
        }
    }
}

impl Drop for OwnedPath {
    fn drop(&mut self) {
        if self.armed {
            self.remove_if_ours();
        }
    }
}

impl OwnedPath {
    /// Remove the file if the path still names the one we created.
    fn remove_if_ours(&self) {
        let path = self.path.display();
        match fs::symlink_metadata(&self.path) {
            Ok(meta) if FileId::of(&meta) == self.id => match fs::remove_file(&self.path) {
                Ok(()) => tracing::debug!(%path, "removed"),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => tracing::warn!(%path, "cannot remove: {e}"),
            },
            // Someone else's file now: a successor's socket must survive us.
            Ok(_) => tracing::debug!(%path, "replaced by another process; leaving it"),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(%path, "cannot check before removing: {e}"),
        }
    }
}

/// The held `flock` on `DIR/IFNAME.lock`.
#[derive(Debug)]
struct LockFile {
    // Drop order: unlink the file while the lock is held, then close the
    // descriptor, which releases the lock once no other process (a forked
    // child) shares it.
    path: OwnedPath,
    file: File,
}

/// Accepts what Linux accepts as an interface name (`dev_valid_name` in
/// net/core/dev.c), which also keeps the name from escaping the directory.
fn validate_ifname(ifname: &str) -> Result<(), UapiError> {
    let reason = if ifname.is_empty() {
        Some("it is empty")
    } else if ifname.len() >= IFNAMSIZ {
        Some("it is longer than 15 bytes")
    } else if ifname == "." || ifname == ".." {
        Some("it is \".\" or \"..\"")
    } else if ifname
        .bytes()
        .any(|b| b == b'/' || b == b':' || b == 0 || b.is_ascii_whitespace())
    {
        Some("it contains '/', ':', NUL or whitespace")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(UapiError::InvalidName {
            name: ifname.to_owned(),
            reason,
        }),
        None => Ok(()),
    }
}

/// Creates `dir` (0700) if it is missing, else checks it is a safe directory.
fn prepare_dir(dir: &Path) -> Result<(), UapiError> {
    let create_err = |path: &Path, error: io::Error| UapiError::CreateDir {
        path: path.to_owned(),
        error,
    };
    match fs::metadata(dir) {
        Ok(meta) => return check_dir(dir, &meta),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(create_err(dir, e)),
    }
    if let Some(parent) = dir.parent()
        && !parent.as_os_str().is_empty()
    {
        fs::create_dir_all(parent).map_err(|e| create_err(parent, e))?;
    }
    match DirBuilder::new().mode(0o700).create(dir) {
        // Exactly 0700 whatever the umask: we are its only user.
        Ok(()) => fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
            .map_err(|e| create_err(dir, e)),
        // Lost a race with another instance creating it: judge what is there.
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            let meta = fs::metadata(dir).map_err(|e| create_err(dir, e))?;
            check_dir(dir, &meta)
        }
        Err(e) => Err(create_err(dir, e)),
    }
}

/// A directory is safe for our socket when no other user can rename or
/// delete entries in it: owned by us or root, and not writable by group or
/// others unless sticky.
fn check_dir(dir: &Path, meta: &fs::Metadata) -> Result<(), UapiError> {
    if !meta.is_dir() {
        return Err(UapiError::NotADirectory {
            path: dir.to_owned(),
        });
    }
    let euid = nix::unistd::geteuid().as_raw();
    if meta.uid() != euid && meta.uid() != 0 {
        return Err(UapiError::UnsafeDir {
            path: dir.to_owned(),
            reason: format!(
                "it is owned by uid {}, not by you (uid {euid}) or root",
                meta.uid()
            ),
        });
    }
    let mode = meta.mode();
    if mode & 0o022 != 0 && mode & 0o1000 == 0 {
        return Err(UapiError::UnsafeDir {
            path: dir.to_owned(),
            reason: format!("it is writable by other users (mode {:o})", mode & 0o7777),
        });
    }
    Ok(())
}

/// Opens (creating it 0600 if needed) and exclusively locks
/// `dir/IFNAME.lock`, making sure the locked file is the one the path names.
fn acquire_lock(dir: &Path, ifname: &str) -> Result<LockFile, UapiError> {
    let path = lock_path(dir, ifname);
    let lock_err = |error: io::Error| UapiError::Lock {
        path: path.clone(),
        error,
    };
    for _ in 0..LOCK_ATTEMPTS {
        // std opens with O_CLOEXEC; O_NOFOLLOW keeps a planted symlink from
        // making us create or lock a file elsewhere.
        let file = match OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
        {
            Ok(file) => file,
            Err(e) if is_permission_error(&e) => {
                return Err(UapiError::DirNotWritable {
                    path: dir.to_owned(),
                    error: e,
                });
            }
            Err(e) => return Err(lock_err(e)),
        };
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                return Err(UapiError::InUse {
                    ifname: ifname.to_owned(),
                    path: socket_path(dir, ifname),
                });
            }
            Err(TryLockError::Error(e)) => return Err(lock_err(e)),
        }
        let locked = file.metadata().map_err(lock_err)?;
        match fs::symlink_metadata(&path) {
            Ok(named) if FileId::of(&named) == FileId::of(&locked) => {
                return Ok(LockFile {
                    path: OwnedPath::new(path, &locked),
                    file,
                });
            }
            // The previous owner unlinked it between our open and our lock.
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(lock_err(e)),
        }
    }
    Err(lock_err(io::Error::other(
        "the lock file keeps being removed or replaced by another process",
    )))
}

fn is_permission_error(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::PermissionDenied || e.raw_os_error() == Some(libc::EROFS)
}

/// Deals with whatever is at the socket path: nothing is fine, a socket
/// nobody listens on is removed, a live socket or anything else is an error.
fn remove_if_stale(path: &Path, ifname: &str) -> Result<(), UapiError> {
    let meta = match fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(error) => {
            return Err(UapiError::Probe {
                path: path.to_owned(),
                error,
            });
        }
    };
    if !meta.file_type().is_socket() {
        return Err(UapiError::NotASocket {
            path: path.to_owned(),
        });
    }
    match probe(path) {
        Ok(()) => Err(UapiError::InUse {
            ifname: ifname.to_owned(),
            path: path.to_owned(),
        }),
        // Nobody listening: a crashed instance left it behind.
        Err(Errno::ECONNREFUSED) => {
            tracing::info!(path = %path.display(), "removing stale UAPI socket");
            match fs::remove_file(path) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
                Err(error) => Err(UapiError::RemoveStale {
                    path: path.to_owned(),
                    error,
                }),
            }
        }
        // Listening, with a full backlog: busy, but alive.
        Err(Errno::EAGAIN) => Err(UapiError::InUse {
            ifname: ifname.to_owned(),
            path: path.to_owned(),
        }),
        // Vanished since the stat: nothing to do.
        Err(Errno::ENOENT) => Ok(()),
        Err(errno) => Err(UapiError::Probe {
            path: path.to_owned(),
            error: errno.into(),
        }),
    }
}

/// Connects to `path` without blocking and hangs up at once.
fn probe(path: &Path) -> Result<(), Errno> {
    let fd = socket::socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )?;
    let addr = UnixAddr::new(path)?;
    socket::connect(fd.as_raw_fd(), &addr)
}

/// Bounds on what one connection may cost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Longest line, without its `\n`.
    pub max_line: usize,
    /// Largest request, counting every byte read for it.
    pub max_request: usize,
    /// Time allowed to read one request (or to write one response); an idle
    /// connection is closed after it.
    pub idle_timeout: Duration,
    /// Connections served at once; more are closed on accept.
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_line: 64 * 1024,
            max_request: 1024 * 1024,
            idle_timeout: Duration::from_secs(30),
            max_connections: 64,
        }
    }
}

/// Why a request could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// Reading from the connection failed.
    #[error("read failed: {0}")]
    Io(#[from] io::Error),
    /// A line exceeded [`Limits::max_line`].
    #[error("line longer than {0} bytes")]
    LineTooLong(usize),
    /// A request exceeded [`Limits::max_request`].
    #[error("request larger than {0} bytes")]
    RequestTooLarge(usize),
    /// The connection ended in the middle of a request.
    #[error("connection closed in the middle of a request")]
    Truncated,
    /// The request contains bytes other than printable ASCII.
    #[error("request contains bytes other than printable ASCII")]
    NotAscii,
}

impl FrameError {
    /// Whether the stream can still be read after this error: only when the
    /// whole request, up to its empty line, was consumed.
    pub fn framing_intact(&self) -> bool {
        matches!(self, FrameError::NotAscii)
    }
}

/// Reads one request: lines up to an empty line, returned with each line
/// ending in `\n` and without the empty line, the form gotatun's
/// `Request::from_str` expects (`"get=1\n"`, `"set=1\nkey=value\n…"`).
///
/// `Ok(None)` means the connection ended cleanly between requests.
///
/// # Errors
///
/// See [`FrameError`]; [`FrameError::framing_intact`] tells whether the next
/// request can still be read.
pub async fn read_request<R: AsyncBufRead + Unpin>(
    r: &mut R,
    limits: &Limits,
) -> Result<Option<String>, FrameError> {
    let mut request = Vec::new();
    let mut line = Vec::new();
    let mut consumed = 0usize;
    // Room for the longest line, an optional '\r', the '\n', and one byte
    // more to tell "too long" from "exactly at the limit".
    let line_budget = u64::try_from(limits.max_line.saturating_add(2)).unwrap_or(u64::MAX);
    loop {
        line.clear();
        let n = (&mut *r)
            .take(line_budget)
            .read_until(b'\n', &mut line)
            .await?;
        consumed = consumed.saturating_add(n);
        if line.last() != Some(&b'\n') {
            if n == 0 && request.is_empty() {
                return Ok(None);
            }
            if n as u64 == line_budget {
                return Err(FrameError::LineTooLong(limits.max_line));
            }
            return Err(FrameError::Truncated);
        }
        line.pop();
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        if line.len() > limits.max_line {
            return Err(FrameError::LineTooLong(limits.max_line));
        }
        // Leading empty lines count too, so a stream of them cannot keep a
        // connection busy forever.
        if consumed > limits.max_request {
            return Err(FrameError::RequestTooLarge(limits.max_request));
        }
        if line.is_empty() {
            if request.is_empty() {
                continue;
            }
            break;
        }
        request.extend_from_slice(&line);
        request.push(b'\n');
    }
    if !request
        .iter()
        .all(|&b| b == b'\n' || b == b' ' || b.is_ascii_graphic())
    {
        return Err(FrameError::NotAscii);
    }
    String::from_utf8(request)
        .map(Some)
        .map_err(|_| FrameError::NotAscii)
}

/// The answer to a request that failed before reaching the device.
pub fn error_response(errno: i32) -> String {
    format!("errno={errno}\n\n")
}

/// Parses a framed request with gotatun's parser, never unwinding: the
/// framing already rejects the input known to make it panic, and a panic on
/// anything else must cost one `errno=22`, not the connection.
fn parse_request(text: &str) -> Result<Request, String> {
    // gotatun's "unknown command" error quotes the whole request, which may
    // hold keys: don't let it reach the log.
    let op = text.split('\n').next().unwrap_or_default();
    if op != "get=1" && op != "set=1" {
        let shown: String = op.chars().take(32).collect();
        return Err(format!("unknown operation {shown:?}"));
    }
    match catch_unwind(AssertUnwindSafe(|| Request::from_str(text))) {
        Ok(Ok(request)) => Ok(request),
        Ok(Err(e)) => Err(format!("{e:#}")),
        Err(_) => Err("the parser panicked".to_owned()),
    }
}

/// How a connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ConnectionEnd {
    /// The peer left, misbehaved or idled out.
    Closed,
    /// The device's UAPI channel is closed: the device has stopped.
    DeviceGone,
}

/// Runs the protocol on one connection until it ends.
async fn handle_connection<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    client: &UapiClient,
    limits: &Limits,
) -> ConnectionEnd {
    // BufReader passes writes through to the stream.
    let mut conn = tokio::io::BufReader::new(stream);
    loop {
        let framed = tokio::time::timeout(limits.idle_timeout, read_request(&mut conn, limits));
        let answer = match framed.await {
            Err(_) => {
                tracing::debug!(
                    "UAPI connection idle for {:?}; closing",
                    limits.idle_timeout
                );
                return ConnectionEnd::Closed;
            }
            Ok(Ok(None)) => {
                tracing::debug!("UAPI connection closed by the client");
                return ConnectionEnd::Closed;
            }
            Ok(Err(FrameError::Io(e))) => {
                tracing::debug!("UAPI connection read failed: {e}");
                return ConnectionEnd::Closed;
            }
            Ok(Err(e)) => {
                tracing::warn!("invalid UAPI request: {e}");
                let intact = e.framing_intact();
                if !write_answer(&mut conn, &error_response(libc::EINVAL), limits).await || !intact
                {
                    return ConnectionEnd::Closed;
                }
                continue;
            }
            Ok(Ok(Some(text))) => match parse_request(&text) {
                Err(reason) => {
                    tracing::warn!("invalid UAPI request: {reason}");
                    error_response(libc::EINVAL)
                }
                Ok(request) => match client.send(request).await {
                    Ok(response) => format!("{response}\n"),
                    Err(_) => {
                        tracing::debug!("device stopped; closing UAPI connection");
                        return ConnectionEnd::DeviceGone;
                    }
                },
            },
        };
        if !write_answer(&mut conn, &answer, limits).await {
            return ConnectionEnd::Closed;
        }
    }
}

/// Writes one answer; `false` when the connection is unusable.
async fn write_answer<W: AsyncWrite + Unpin>(w: &mut W, answer: &str, limits: &Limits) -> bool {
    let write = async {
        w.write_all(answer.as_bytes()).await?;
        w.flush().await
    };
    match tokio::time::timeout(limits.idle_timeout, write).await {
        Ok(Ok(())) => true,
        Ok(Err(e)) => {
            tracing::debug!("UAPI connection write failed: {e}");
            false
        }
        Err(_) => {
            tracing::debug!(
                "UAPI client did not read its answer for {:?}",
                limits.idle_timeout
            );
            false
        }
    }
}

/// Starts serving `socket` for the device behind `client`, with the default
/// [`Limits`], in a task of the current tokio runtime.
///
/// Serving stops when the returned [`Serving`] is dropped (which closes every
/// connection) or when the device stops. The socket file stays until
/// `socket` is dropped; keep `socket` alive at least as long as serving
/// should be reachable.
///
/// # Errors
///
/// See [`UapiSocket::tokio_listener`]: in particular, it must be called from
/// within a tokio runtime.
pub fn serve(socket: &UapiSocket, client: UapiClient) -> Result<Serving, UapiError> {
    let listener = socket.tokio_listener()?;
    let task = tokio::spawn(serve_listener(listener, client, Limits::default()));
    Ok(Serving {
        task,
        path: socket.path().to_owned(),
        ended: false,
    })
}

/// A running UAPI server (see [`serve`]); dropping it stops the server and
/// closes its connections.
#[derive(Debug)]
#[must_use = "dropping it stops serving at once"]
pub struct Serving {
    task: tokio::task::JoinHandle<Result<(), UapiError>>,
    path: PathBuf,
    ended: bool,
}

impl Serving {
    /// Waits until serving ends by itself: `Ok(())` once the device has
    /// stopped, an error when `accept` failed for good. Cancel-safe; after it
    /// has returned once, it never returns again.
    ///
    /// # Errors
    ///
    /// [`UapiError::Serve`].
    pub async fn wait(&mut self) -> Result<(), UapiError> {
        if self.ended {
            return std::future::pending().await;
        }
        let joined = (&mut self.task).await;
        self.ended = true;
        match joined {
            Ok(result) => result,
            Err(e) => Err(UapiError::Serve {
                path: self.path.clone(),
                error: io::Error::other(format!("the UAPI server task ended: {e}")),
            }),
        }
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Accepts connections on `listener` and runs the protocol on each in its own
/// task, forwarding requests to the device through `client`.
///
/// Returns `Ok(())` once a connection finds the device gone (gotatun offers
/// no way to notice earlier), after closing all connections. Dropping the
/// future closes them too.
///
/// # Errors
///
/// [`UapiError::Serve`] when `accept` fails with something other than a
/// transient condition (aborted connection, exhausted fds or memory).
pub async fn serve_listener(
    listener: tokio::net::UnixListener,
    client: UapiClient,
    limits: Limits,
) -> Result<(), UapiError> {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    if connections.len() >= limits.max_connections {
                        tracing::warn!(
                            "more than {} UAPI connections; closing the new one",
                            limits.max_connections
                        );
                        continue;
                    }
                    tracing::debug!("UAPI connection accepted");
                    let client = client.clone();
                    connections.spawn(async move {
                        handle_connection(stream, &client, &limits).await
                    });
                }
                Err(e) if is_transient_accept_error(&e) => {
                    tracing::warn!("accepting a UAPI connection failed: {e}");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
                Err(error) => {
                    let path = listener
                        .local_addr()
                        .ok()
                        .and_then(|a| a.as_pathname().map(Path::to_owned))
                        .unwrap_or_default();
                    return Err(UapiError::Serve { path, error });
                }
            },
            Some(joined) = connections.join_next(), if !connections.is_empty() => match joined {
                Ok(ConnectionEnd::DeviceGone) => {
                    tracing::debug!("device stopped; closing all UAPI connections");
                    return Ok(());
                }
                Ok(ConnectionEnd::Closed) => {}
                Err(e) if e.is_panic() => tracing::warn!("a UAPI connection task panicked"),
                Err(_) => {}
            },
        }
    }
}

/// Accept errors that say nothing about the listening socket itself.
fn is_transient_accept_error(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(
            libc::ECONNABORTED
                | libc::EINTR
                | libc::EMFILE
                | libc::ENFILE
                | libc::ENOBUFS
                | libc::ENOMEM
                | libc::EPROTO
        )
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use gotatun::device::uapi::UapiServer;
    use gotatun::tun::MtuWatcher;
    use gotatun::udp::channel::new_udp_tun_channel;
    use gotatun::x25519::{PublicKey, StaticSecret};
    use std::net::{Ipv4Addr, Ipv6Addr};
    use std::os::unix::net::UnixStream as StdUnixStream;
    use tokio::io::BufReader;
    use tokio::net::UnixStream;

    // ---- default_dir, names ------------------------------------------------

    #[test]
    fn default_dir_rules() {
        assert_eq!(
            default_dir_for(0, Some("/run/user/0".into())),
            PathBuf::from("/var/run/wireguard")
        );
        assert_eq!(
            default_dir_for(1000, Some("/run/user/1000".into())),
            PathBuf::from("/run/user/1000/wireguard4netns")
        );
        assert_eq!(
            default_dir_for(1000, Some("relative/dir".into())),
            PathBuf::from("/tmp/wireguard4netns-1000")
        );
        assert_eq!(
            default_dir_for(1000, Some("".into())),
            PathBuf::from("/tmp/wireguard4netns-1000")
        );
        assert_eq!(
            default_dir_for(1000, None),
            PathBuf::from("/tmp/wireguard4netns-1000")
        );
        assert!(default_dir().is_absolute());
    }

    #[test]
    fn socket_path_is_dir_slash_ifname_dot_sock() {
        assert_eq!(
            socket_path(Path::new("/run/x"), "wg0"),
            PathBuf::from("/run/x/wg0.sock")
        );
    }

    #[test]
    fn interface_names_follow_the_kernel() {
        for ok in ["wg0", "a", "x-y_z.1", "fifteen-chars-x"] {
            assert!(validate_ifname(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            ".",
            "..",
            "a/b",
            "../x",
            "a:b",
            "a b",
            "a\tb",
            "sixteen-chars-xx",
            "nul\0",
        ] {
            assert!(
                matches!(validate_ifname(bad), Err(UapiError::InvalidName { .. })),
                "{bad:?}"
            );
        }
    }

    // ---- framing -----------------------------------------------------------

    async fn frame(input: &[u8]) -> Result<Option<String>, FrameError> {
        let mut r = input;
        read_request(&mut r, &Limits::default()).await
    }

    #[tokio::test]
    async fn frames_get() {
        assert_eq!(frame(b"get=1\n\n").await.unwrap().unwrap(), "get=1\n");
    }

    #[tokio::test]
    async fn frames_set_with_many_lines() {
        let mut input = String::from("set=1\nprivate_key=");
        input.push_str(&"ab".repeat(32));
        input.push('\n');
        for i in 0..500 {
            input.push_str(&format!(
                "public_key={:064x}\nallowed_ip=10.{}.{}.0/24\n",
                i,
                i / 256,
                i % 256
            ));
        }
        let expected = input.clone();
        input.push('\n');
        assert_eq!(frame(input.as_bytes()).await.unwrap().unwrap(), expected);
    }

    #[tokio::test]
    async fn frames_consecutive_requests_and_skips_leading_blank_lines() {
        let mut r: &[u8] = b"get=1\n\n\n\nset=1\nlisten_port=1\n\nget=1\n\n";
        let limits = Limits::default();
        assert_eq!(
            read_request(&mut r, &limits).await.unwrap().unwrap(),
            "get=1\n"
        );
        assert_eq!(
            read_request(&mut r, &limits).await.unwrap().unwrap(),
            "set=1\nlisten_port=1\n"
        );
        assert_eq!(
            read_request(&mut r, &limits).await.unwrap().unwrap(),
            "get=1\n"
        );
        assert!(read_request(&mut r, &limits).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn clean_eof_is_none() {
        assert!(frame(b"").await.unwrap().is_none());
        assert!(frame(b"\n\n").await.unwrap().is_none());
    }

    #[tokio::test]
    async fn eof_mid_request_is_truncated() {
        assert!(matches!(
            frame(b"get=1\n").await,
            Err(FrameError::Truncated)
        ));
        assert!(matches!(frame(b"get=1").await, Err(FrameError::Truncated)));
        assert!(matches!(
            frame(b"set=1\nreplace_peers=true\n").await,
            Err(FrameError::Truncated)
        ));
    }

    #[tokio::test]
    async fn strips_one_carriage_return_per_line() {
        assert_eq!(frame(b"get=1\r\n\r\n").await.unwrap().unwrap(), "get=1\n");
        assert_eq!(
            frame(b"set=1\r\nlisten_port=5\r\n\r\n")
                .await
                .unwrap()
                .unwrap(),
            "set=1\nlisten_port=5\n"
        );
        // A second '\r' is content, and not printable.
        assert!(matches!(
            frame(b"get=1\r\r\n\n").await,
            Err(FrameError::NotAscii)
        ));
    }

    #[tokio::test]
    async fn oversize_line_is_rejected() {
        let limits = Limits {
            max_line: 16,
            ..Limits::default()
        };
        let exact = format!("set=1\n{}\n\n", "k".repeat(16));
        let mut r = exact.as_bytes();
        assert!(read_request(&mut r, &limits).await.unwrap().is_some());
        let exact_crlf = format!("set=1\n{}\r\n\n", "k".repeat(16));
        let mut r = exact_crlf.as_bytes();
        assert!(read_request(&mut r, &limits).await.unwrap().is_some());

        let long = format!("set=1\n{}\n\n", "k".repeat(17));
        let mut r = long.as_bytes();
        let err = read_request(&mut r, &limits).await.unwrap_err();
        assert!(matches!(err, FrameError::LineTooLong(16)), "{err:?}");
        assert!(!err.framing_intact());
        let endless = vec![b'x'; 1 << 20];
        let mut r = endless.as_slice();
        assert!(matches!(
            read_request(&mut r, &limits).await,
            Err(FrameError::LineTooLong(16))
        ));
    }

    #[tokio::test]
    async fn oversize_request_is_rejected() {
        let limits = Limits {
            max_request: 100,
            ..Limits::default()
        };
        let big = format!("set=1\n{}\n", "listen_port=1\n".repeat(10));
        let mut r = big.as_bytes();
        let err = read_request(&mut r, &limits).await.unwrap_err();
        assert!(matches!(err, FrameError::RequestTooLarge(100)), "{err:?}");
        assert!(!err.framing_intact());
        let blanks = vec![b'\n'; 1000];
        let mut r = blanks.as_slice();
        assert!(matches!(
            read_request(&mut r, &limits).await,
            Err(FrameError::RequestTooLarge(100))
        ));
    }

    #[tokio::test]
    async fn non_ascii_is_rejected_with_framing_intact() {
        let mut r: &[u8] = b"set=1\nlisten_port=\xff\xfe\n\nget=1\n\n";
        let limits = Limits::default();
        let err = read_request(&mut r, &limits).await.unwrap_err();
        assert!(matches!(err, FrameError::NotAscii));
        assert!(err.framing_intact());
        assert_eq!(
            read_request(&mut r, &limits).await.unwrap().unwrap(),
            "get=1\n"
        );
        // Valid UTF-8 but not ASCII: the input that makes gotatun's key parser
        // panic.
        let key = format!("{}\u{e9}a", "a".repeat(61));
        assert_eq!(key.len(), 64);
        let req = format!("set=1\nprivate_key={key}\n\n");
        assert!(matches!(
            frame(req.as_bytes()).await,
            Err(FrameError::NotAscii)
        ));
        assert!(matches!(
            frame(b"get=1\0\n\n").await,
            Err(FrameError::NotAscii)
        ));
    }

    #[test]
    fn error_response_format() {
        assert_eq!(error_response(22), "errno=22\n\n");
    }

    #[test]
    fn parse_request_never_panics_and_rejects_unknown_operations() {
        assert!(matches!(parse_request("get=1\n"), Ok(Request::Get(_))));
        assert!(matches!(
            parse_request("set=1\nlisten_port=7\n"),
            Ok(Request::Set(_))
        ));
        let err = parse_request(&format!("sett=1\nprivate_key={}\n", "ab".repeat(32))).unwrap_err();
        assert!(!err.contains("abab"), "{err}");
        for bad in [
            "",
            "\n",
            "get=1\nx\n",
            "set=1\nnokey\n",
            "set=1\nlisten_port=99999\n",
        ] {
            assert!(parse_request(bad).is_err(), "{bad:?}");
        }
        // Deterministic garbage through framing + parser: no panic, ever.
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let alphabet = b"get=1set_publickyprivate_allowedip0123456789abcdef=:/.[]\n\r \xff";
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        for _ in 0..2000 {
            let mut input = b"set=1\n".to_vec();
            for _ in 0..(state % 200) {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                input.push(alphabet[(state % alphabet.len() as u64) as usize]);
            }
            input.extend_from_slice(b"\n\n");
            let framed = rt.block_on(async {
                let mut r = input.as_slice();
                read_request(&mut r, &Limits::default()).await
            });
            if let Ok(Some(text)) = framed {
                let _ = parse_request(&text);
            }
        }
    }

    // ---- binding -----------------------------------------------------------

    fn mode_of(path: &Path) -> u32 {
        fs::symlink_metadata(path).unwrap().mode() & 0o7777
    }

    fn id_of(path: &Path) -> FileId {
        FileId::of(&fs::symlink_metadata(path).unwrap())
    }

    #[test]
    fn bind_creates_dir_0700_and_socket_0600() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("parent/wireguard4netns");
        let sock = UapiSocket::bind(&dir, "wg0").unwrap();
        assert_eq!(mode_of(&dir), 0o700);
        assert_eq!(sock.path(), dir.join("wg0.sock"));
        assert_eq!(sock.ifname(), "wg0");
        let meta = fs::symlink_metadata(sock.path()).unwrap();
        assert!(meta.file_type().is_socket());
        assert_eq!(meta.mode() & 0o7777, 0o600);
        assert_eq!(mode_of(&dir.join("wg0.lock")), 0o600);
        // The listener is really listening.
        StdUnixStream::connect(sock.path()).unwrap();
    }

    #[test]
    fn drop_removes_socket_and_lock_file() {
        let tmp = tempfile::tempdir().unwrap();
        let sock = UapiSocket::bind(tmp.path(), "wg0").unwrap();
        let path = sock.path().to_owned();
        drop(sock);
        assert!(!path.exists());
        assert!(!tmp.path().join("wg0.lock").exists());
        // And the name is free again.
        UapiSocket::bind(tmp.path(), "wg0").unwrap();
    }

    #[test]
    fn second_instance_is_in_use() {
        let tmp = tempfile::tempdir().unwrap();
        let first = UapiSocket::bind(tmp.path(), "wg0").unwrap();
        let id = id_of(first.path());
        let err = UapiSocket::bind(tmp.path(), "wg0").unwrap_err();
        assert!(matches!(err, UapiError::InUse { .. }), "{err}");
        let msg = err.to_string();
        assert!(
            msg.contains("wg0") && msg.contains(&first.path().display().to_string()),
            "{msg}"
        );
        assert_eq!(id_of(first.path()), id);
        StdUnixStream::connect(first.path()).unwrap();
        // A different interface in the same directory is fine.
        UapiSocket::bind(tmp.path(), "wg1").unwrap();
    }

    #[test]
    fn live_foreign_socket_is_in_use_and_untouched() {
        let tmp = tempfile::tempdir().unwrap();
        let path = socket_path(tmp.path(), "wg0");
        // Like wireguard-go: listening, but without our lock.
        let foreign = UnixListener::bind(&path).unwrap();
        let id = id_of(&path);
        let err = UapiSocket::bind(tmp.path(), "wg0").unwrap_err();
        assert!(matches!(err, UapiError::InUse { .. }), "{err}");
        assert_eq!(id_of(&path), id);
        drop(foreign);
        assert!(path.exists());
        // Our failed attempt left no lock file behind.
        assert!(!tmp.path().join("wg0.lock").exists());
    }

    #[test]
    fn stale_socket_is_replaced() {
        let tmp = tempfile::tempdir().unwrap();
        let path = socket_path(tmp.path(), "wg0");
        drop(UnixListener::bind(&path).unwrap());
        // Keep the stale inode allocated so the new socket cannot reuse it.
        fs::hard_link(&path, tmp.path().join("keep")).unwrap();
        let stale = id_of(&path).ino;
        let sock = UapiSocket::bind(tmp.path(), "wg0").unwrap();
        assert_ne!(id_of(sock.path()).ino, stale);
        StdUnixStream::connect(sock.path()).unwrap();
    }

    #[test]
    fn stale_lock_file_is_reused() {
        let tmp = tempfile::tempdir().unwrap();
        fs::write(tmp.path().join("wg0.lock"), b"").unwrap();
        let sock = UapiSocket::bind(tmp.path(), "wg0").unwrap();
        drop(sock);
        assert!(!tmp.path().join("wg0.lock").exists());
    }

    #[test]
    fn regular_file_at_socket_path_is_untouched() {
        let tmp = tempfile::tempdir().unwrap();
        let path = socket_path(tmp.path(), "wg0");
        fs::write(&path, b"precious").unwrap();
        let err = UapiSocket::bind(tmp.path(), "wg0").unwrap_err();
        assert!(matches!(err, UapiError::NotASocket { .. }), "{err}");
        assert_eq!(fs::read(&path).unwrap(), b"precious");
        // A directory or a symlink is not a socket either.
        fs::remove_file(&path).unwrap();
        std::os::unix::fs::symlink("/nonexistent", &path).unwrap();
        assert!(matches!(
            UapiSocket::bind(tmp.path(), "wg0"),
            Err(UapiError::NotASocket { .. })
        ));
        assert!(
            fs::symlink_metadata(&path)
                .unwrap()
                .file_type()
                .is_symlink()
        );
    }

    #[test]
    fn socket_dir_that_is_a_file_is_an_error() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("file");
        fs::write(&dir, b"").unwrap();
        let err = UapiSocket::bind(&dir, "wg0").unwrap_err();
        assert!(matches!(err, UapiError::NotADirectory { .. }), "{err}");
        assert!(err.to_string().contains("--tmpdir"));
    }

    #[test]
    fn unwritable_dir() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("ro");
        fs::create_dir(&dir).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o500)).unwrap();
        let result = UapiSocket::bind(&dir, "wg0");
        if nix::unistd::geteuid().is_root() {
            // Root writes anyway (CAP_DAC_OVERRIDE).
            assert!(result.is_ok(), "{result:?}");
        } else {
            let err = result.unwrap_err();
            assert!(matches!(err, UapiError::DirNotWritable { .. }), "{err}");
            assert!(err.to_string().contains(&dir.display().to_string()));
        }
    }

    #[test]
    fn unsafe_dirs_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("shared");
        fs::create_dir(&dir).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o777)).unwrap();
        let err = UapiSocket::bind(&dir, "wg0").unwrap_err();
        assert!(matches!(err, UapiError::UnsafeDir { .. }), "{err}");
        // Sticky, like /tmp: others cannot remove our files.
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o1777)).unwrap();
        UapiSocket::bind(&dir, "wg0").unwrap();

        if nix::unistd::geteuid().is_root() {
            let theirs = tmp.path().join("theirs");
            fs::create_dir(&theirs).unwrap();
            std::os::unix::fs::chown(&theirs, Some(12345), None).unwrap();
            let err = UapiSocket::bind(&theirs, "wg0").unwrap_err();
            assert!(matches!(err, UapiError::UnsafeDir { .. }), "{err}");
            assert!(err.to_string().contains("12345"));
        }
    }

    /// The binary prints an error with its `source()` chain (`{:#}`), so a
    /// message that already holds the OS error must not return it as source:
    /// it would be printed twice.
    #[test]
    fn os_error_is_printed_once() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("file");
        fs::write(&file, "").unwrap();
        let err = UapiSocket::bind(&file.join("sub"), "wg0").unwrap_err();
        assert!(matches!(err, UapiError::CreateDir { .. }), "{err}");
        let mut chain = err.to_string();
        let mut source = std::error::Error::source(&err);
        while let Some(e) = source {
            chain += &format!(": {e}");
            source = e.source();
        }
        let os = io::Error::from_raw_os_error(libc::ENOTDIR).to_string();
        assert_eq!(chain.matches(&os).count(), 1, "{chain}");
        assert!(chain.contains(&file.join("sub").display().to_string()));
        assert!(
            chain.ends_with("(hint: choose another --tmpdir)"),
            "{chain}"
        );
    }

    #[test]
    fn too_long_path_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("d".repeat(100));
        let err = UapiSocket::bind(&dir, "wg0").unwrap_err();
        assert!(matches!(err, UapiError::PathTooLong { .. }), "{err}");
    }

    #[test]
    fn drop_spares_a_successors_socket() {
        let tmp = tempfile::tempdir().unwrap();
        let first = UapiSocket::bind(tmp.path(), "wg0").unwrap();
        // An operator moves our files away and starts another instance.
        fs::rename(first.path(), tmp.path().join("old.sock")).unwrap();
        fs::rename(tmp.path().join("wg0.lock"), tmp.path().join("old.lock")).unwrap();
        let second = UapiSocket::bind(tmp.path(), "wg0").unwrap();
        let sock_id = id_of(second.path());
        let lock_id = id_of(&tmp.path().join("wg0.lock"));
        drop(first);
        assert_eq!(id_of(second.path()), sock_id);
        assert_eq!(id_of(&tmp.path().join("wg0.lock")), lock_id);
        StdUnixStream::connect(second.path()).unwrap();
    }

    #[test]
    fn drop_spares_a_successors_socket_on_a_reused_inode() {
        let tmp = tempfile::tempdir().unwrap();
        let first = UapiSocket::bind(tmp.path(), "wg0").unwrap();
        // An operator deletes our files and starts another instance, whose
        // files may well get our inode numbers back; only the change time
        // tells them apart. Wait out coarse (jiffy) timestamps.
        fs::remove_file(first.path()).unwrap();
        fs::remove_file(tmp.path().join("wg0.lock")).unwrap();
        std::thread::sleep(Duration::from_millis(50));
        let second = UapiSocket::bind(tmp.path(), "wg0").unwrap();
        let sock_id = id_of(second.path());
        let lock_id = id_of(&tmp.path().join("wg0.lock"));
        drop(first);
        assert_eq!(id_of(second.path()), sock_id);
        assert_eq!(id_of(&tmp.path().join("wg0.lock")), lock_id);
        StdUnixStream::connect(second.path()).unwrap();
    }

    #[test]
    fn forget_in_parent_keeps_files_and_closes_descriptors() {
        let tmp = tempfile::tempdir().unwrap();
        let sock = UapiSocket::bind(tmp.path(), "wg0").unwrap();
        let path = sock.path().to_owned();
        sock.forget_in_parent();
        assert!(path.exists());
        assert!(tmp.path().join("wg0.lock").exists());
        // No process holds the descriptors (no fork here), so nobody listens
        // and the lock is free: the next bind sees a stale socket.
        let err = StdUnixStream::connect(&path).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ECONNREFUSED));
        UapiSocket::bind(tmp.path(), "wg0").unwrap();
    }

    #[test]
    fn tokio_listener_needs_a_runtime() {
        let tmp = tempfile::tempdir().unwrap();
        let sock = UapiSocket::bind(tmp.path(), "wg0").unwrap();
        assert!(matches!(
            sock.tokio_listener(),
            Err(UapiError::Serve { .. })
        ));
    }

    // ---- the whole loop, against a real gotatun device ----------------------

    const DEVICE_KEY: [u8; 32] = [0x11; 32];
    const PEER_KEY: [u8; 32] = [0x22; 32];
    const NEW_PEER_KEY: [u8; 32] = [0x33; 32];

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    fn public_hex(secret: [u8; 32]) -> String {
        hex(PublicKey::from(&StaticSecret::from(secret)).as_bytes())
    }

    /// A real device with in-memory TUN and UDP (no privileges needed),
    /// private key, port 51820, one peer.
    async fn device(
        server: UapiServer,
    ) -> gotatun::device::Device<impl gotatun::device::DeviceTransports> {
        let (tun_tx, tun_rx, udp) = new_udp_tun_channel(
            16,
            Ipv4Addr::new(10, 0, 0, 1),
            Ipv6Addr::UNSPECIFIED,
            MtuWatcher::new(1420),
        );
        let peer = gotatun::device::Peer::new(PublicKey::from(&StaticSecret::from(PEER_KEY)));
        gotatun::device::build()
            .with_udp(udp)
            .with_ip_pair(tun_tx, tun_rx)
            .with_private_key(StaticSecret::from(DEVICE_KEY))
            .with_listen_port(51820)
            .with_peer(peer)
            .with_uapi(server)
            .build()
            .await
            .unwrap()
    }

    /// Sends `request` and reads the answer up to its empty line.
    async fn ask(conn: &mut BufReader<UnixStream>, request: &[u8]) -> String {
        conn.get_mut().write_all(request).await.unwrap();
        let mut answer = String::new();
        loop {
            let mut line = String::new();
            let n = tokio::time::timeout(Duration::from_secs(10), conn.read_line(&mut line))
                .await
                .unwrap()
                .unwrap();
            assert!(n > 0, "connection closed after {answer:?}");
            if line == "\n" {
                return answer;
            }
            answer.push_str(&line);
        }
    }

    async fn connect(path: &Path) -> BufReader<UnixStream> {
        BufReader::new(UnixStream::connect(path).await.unwrap())
    }

    async fn expect_closed(conn: &mut BufReader<UnixStream>) {
        let mut rest = Vec::new();
        let n = tokio::time::timeout(Duration::from_secs(10), conn.read_to_end(&mut rest))
            .await
            .unwrap()
            .unwrap_or(0);
        assert_eq!(n, 0, "unexpected {:?}", String::from_utf8_lossy(&rest));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn get_and_set_through_the_socket() {
        let tmp = tempfile::tempdir().unwrap();
        let sock = UapiSocket::bind(tmp.path(), "wg0").unwrap();
        let (client, server) = UapiServer::new();
        let _device = device(server).await;
        let serving = tokio::spawn(serve_listener(
            sock.tokio_listener().unwrap(),
            client,
            Limits::default(),
        ));

        let mut conn = connect(sock.path()).await;
        let got = ask(&mut conn, b"get=1\n\n").await;
        assert!(
            got.contains(&format!("private_key={}\n", hex(&DEVICE_KEY))),
            "{got}"
        );
        assert!(got.contains("listen_port=51820\n"), "{got}");
        assert!(
            got.contains(&format!("public_key={}\n", public_hex(PEER_KEY))),
            "{got}"
        );
        assert!(got.ends_with("errno=0\n"), "{got}");

        // Same connection: add a peer, then see it.
        let set = format!(
            "set=1\npublic_key={}\nendpoint=192.0.2.7:51820\nallowed_ip=10.9.0.0/24\n\n",
            public_hex(NEW_PEER_KEY)
        );
        assert_eq!(ask(&mut conn, set.as_bytes()).await, "errno=0\n");
        let got = ask(&mut conn, b"get=1\n\n").await;
        assert!(
            got.contains(&format!("public_key={}\n", public_hex(NEW_PEER_KEY))),
            "{got}"
        );
        assert!(got.contains("endpoint=192.0.2.7:51820\n"), "{got}");
        assert!(got.contains("allowed_ip=10.9.0.0/24\n"), "{got}");

        // Garbage gets EINVAL, and the connection goes on.
        assert_eq!(ask(&mut conn, b"hello\n\n").await, "errno=22\n");
        assert_eq!(
            ask(&mut conn, b"set=1\nbogus_key=1\n\n").await,
            "errno=22\n"
        );
        assert_eq!(ask(&mut conn, b"get=1\nextra=1\n\n").await, "errno=22\n");
        let panicky = format!("set=1\nprivate_key={}\u{e9}a\n\n", "a".repeat(61));
        assert_eq!(ask(&mut conn, panicky.as_bytes()).await, "errno=22\n");
        assert_eq!(
            ask(&mut conn, b"set=1\nlisten_port=\xff\n\n").await,
            "errno=22\n"
        );
        // gotatun's own validation travels back as its errno.
        let dup = format!(
            "set=1\npublic_key={k}\npublic_key={k}\n\n",
            k = public_hex(NEW_PEER_KEY)
        );
        assert_eq!(ask(&mut conn, dup.as_bytes()).await, "errno=22\n");
        assert!(ask(&mut conn, b"get=1\n\n").await.ends_with("errno=0\n"));

        // Two connections at once.
        let mut other = connect(sock.path()).await;
        assert!(ask(&mut other, b"get=1\n\n").await.ends_with("errno=0\n"));
        assert!(
            ask(&mut conn, b"get=1\r\n\r\n")
                .await
                .ends_with("errno=0\n")
        );

        // A line over the limit: EINVAL, then the connection is closed.
        let long = format!("set=1\n{}\n\n", "x".repeat(70 * 1024));
        assert_eq!(ask(&mut conn, long.as_bytes()).await, "errno=22\n");
        expect_closed(&mut conn).await;

        // Half a request, then EOF: not applied, answered, closed.
        other
            .get_mut()
            .write_all(b"set=1\nreplace_peers=true\n")
            .await
            .unwrap();
        other.get_mut().shutdown().await.unwrap();
        let mut rest = String::new();
        other.read_to_string(&mut rest).await.unwrap();
        assert_eq!(rest, "errno=22\n\n");
        let mut conn = connect(sock.path()).await;
        let got = ask(&mut conn, b"get=1\n\n").await;
        assert!(
            got.contains(&public_hex(PEER_KEY)),
            "peers were replaced: {got}"
        );

        assert!(!serving.is_finished());
        serving.abort();
    }

    #[tokio::test]
    async fn idle_connections_are_closed() {
        let tmp = tempfile::tempdir().unwrap();
        let sock = UapiSocket::bind(tmp.path(), "wg0").unwrap();
        let (client, server) = UapiServer::new();
        let _device = device(server).await;
        let limits = Limits {
            idle_timeout: Duration::from_millis(200),
            ..Limits::default()
        };
        let serving = tokio::spawn(serve_listener(
            sock.tokio_listener().unwrap(),
            client,
            limits,
        ));
        let mut conn = connect(sock.path()).await;
        conn.get_mut().write_all(b"get=1\n").await.unwrap();
        expect_closed(&mut conn).await;
        serving.abort();
    }

    #[tokio::test]
    async fn connections_beyond_the_limit_are_closed() {
        let tmp = tempfile::tempdir().unwrap();
        let sock = UapiSocket::bind(tmp.path(), "wg0").unwrap();
        let (client, server) = UapiServer::new();
        let _device = device(server).await;
        let limits = Limits {
            max_connections: 1,
            ..Limits::default()
        };
        let serving = tokio::spawn(serve_listener(
            sock.tokio_listener().unwrap(),
            client,
            limits,
        ));
        let mut first = connect(sock.path()).await;
        assert!(ask(&mut first, b"get=1\n\n").await.ends_with("errno=0\n"));
        let mut second = connect(sock.path()).await;
        expect_closed(&mut second).await;
        assert!(ask(&mut first, b"get=1\n\n").await.ends_with("errno=0\n"));
        serving.abort();
    }

    #[tokio::test]
    async fn stopped_device_ends_serve_and_closes_connections() {
        let tmp = tempfile::tempdir().unwrap();
        let sock = UapiSocket::bind(tmp.path(), "wg0").unwrap();
        let (client, server) = UapiServer::new();
        let device = device(server).await;
        let serving = tokio::spawn({
            let listener = sock.tokio_listener().unwrap();
            serve_listener(listener, client, Limits::default())
        });
        let mut idle = connect(sock.path()).await;
        let mut conn = connect(sock.path()).await;
        assert!(ask(&mut conn, b"get=1\n\n").await.ends_with("errno=0\n"));

        device.stop().await;
        conn.get_mut().write_all(b"get=1\n\n").await.unwrap();
        expect_closed(&mut conn).await;
        let result = tokio::time::timeout(Duration::from_secs(10), serving)
            .await
            .unwrap()
            .unwrap();
        assert!(result.is_ok(), "{result:?}");
        // The other connection was closed with it.
        expect_closed(&mut idle).await;
    }

    #[tokio::test]
    async fn serving_stops_on_drop_and_socket_drop_removes_the_file() {
        let tmp = tempfile::tempdir().unwrap();
        let sock = UapiSocket::bind(tmp.path(), "wg0").unwrap();
        let (client, server) = UapiServer::new();
        let _device = device(server).await;
        let serving = serve(&sock, client).unwrap();
        let mut conn = connect(sock.path()).await;
        assert!(ask(&mut conn, b"get=1\n\n").await.ends_with("errno=0\n"));
        drop(serving);
        expect_closed(&mut conn).await;
        let path = sock.path().to_owned();
        drop(sock);
        assert!(!path.exists());
    }

    #[tokio::test]
    async fn serving_wait_reports_the_stopped_device() {
        let tmp = tempfile::tempdir().unwrap();
        let sock = UapiSocket::bind(tmp.path(), "wg0").unwrap();
        let (client, server) = UapiServer::new();
        let device = device(server).await;
        let mut serving = serve(&sock, client).unwrap();
        // Still running: wait() does not return.
        assert!(
            tokio::time::timeout(Duration::from_millis(50), serving.wait())
                .await
                .is_err()
        );
        device.stop().await;
        let mut conn = connect(sock.path()).await;
        conn.get_mut().write_all(b"get=1\n\n").await.unwrap();
        expect_closed(&mut conn).await;
        let result = tokio::time::timeout(Duration::from_secs(10), serving.wait())
            .await
            .unwrap();
        assert!(result.is_ok(), "{result:?}");
    }

    /// The stock `wg` tool against our socket. `wg` only looks in
    /// /var/run/wireguard, so this needs root.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn stock_wg_tool_understands_us() {
        let ci = std::env::var("CI").is_ok_and(|v| v == "true");
        let skip = |why: &str| {
            assert!(!ci, "stock wg test cannot run in CI: {why}");
            eprintln!("SKIPPED stock_wg_tool_understands_us: {why}");
        };
        if !Path::new("/usr/bin/wg").exists() {
            return skip("/usr/bin/wg is not installed (apt install wireguard-tools)");
        }
        if !nix::unistd::geteuid().is_root() {
            return skip("wg only searches /var/run/wireguard, which needs root");
        }
        let dir = Path::new(ROOT_DIR);
        let created_dir = !dir.exists();
        let ifname = format!("w4nt{}", std::process::id());
        let sock = UapiSocket::bind(dir, &ifname).unwrap();
        let (client, server) = UapiServer::new();
        let _device = device(server).await;
        let serving = tokio::spawn(serve_listener(
            sock.tokio_listener().unwrap(),
            client,
            Limits::default(),
        ));

        let wg = |args: Vec<String>| async move {
            let out = tokio::task::spawn_blocking(move || {
                std::process::Command::new("/usr/bin/wg")
                    .args(&args)
                    .output()
            })
            .await
            .unwrap()
            .unwrap();
            assert!(
                out.status.success(),
                "wg failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8(out.stdout).unwrap()
        };
        let s = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();

        let dump = wg(s(&["show", &ifname, "dump"])).await;
        let lines: Vec<&str> = dump.lines().collect();
        assert_eq!(lines.len(), 2, "{dump}");
        assert!(lines[0].split('\t').nth(2) == Some("51820"), "{dump}");

        let peer_b64 = wg(s(&["show", &ifname, "peers"])).await;
        let peer_b64 = peer_b64.trim().to_owned();
        wg(s(&[
            "set",
            &ifname,
            "peer",
            &peer_b64,
            "allowed-ips",
            "10.7.0.0/16",
        ]))
        .await;
        let ips = wg(s(&["show", &ifname, "allowed-ips"])).await;
        assert!(ips.contains("10.7.0.0/16"), "{ips}");

        serving.abort();
        let path = sock.path().to_owned();
        drop(sock);
        assert!(!path.exists());
        if created_dir {
            let _ = fs::remove_dir(dir);
        }
    }
}
