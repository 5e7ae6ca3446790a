//! The socket file and its directory: creating and checking the directory,
//! the lock file, the stale-socket probe, binding, and removing our files
//! (and only ours) when done. See the parent module for why each piece is
//! there.

#![forbid(unsafe_code)]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

use std::ffi::OsString;
use std::fs::{self, DirBuilder, File, TryLockError};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, open, openat};
use nix::sys::socket::{self, AddressFamily, Backlog, SockFlag, SockType, UnixAddr};
use nix::sys::stat::{FchmodatFlags, FileStat, Mode, SFlag, fchmod, fchmodat, fstat, fstatat};
use nix::unistd::{UnlinkatFlags, unlinkat};

use super::UapiError;

/// Where root's sockets go: the directory the stock `wg` tool searches.
pub(super) const ROOT_DIR: &str = "/var/run/wireguard";

/// `sizeof(sockaddr_un.sun_path)` on Linux, including the terminating NUL.
pub(super) const SUN_PATH_LEN: usize = 108;

/// Linux `IFNAMSIZ`, including the terminating NUL.
const IFNAMSIZ: usize = 16;

/// How often `bind` retries when the lock file it locked was unlinked under it
/// by a previous owner shutting down. More than a couple means something else
/// keeps deleting files in the directory.
const LOCK_ATTEMPTS: usize = 8;

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

/// The socket directory, opened once and checked; everything in it is
/// reached through this descriptor, so a directory renamed or replaced by a
/// symlink after the check cannot redirect us.
#[derive(Debug)]
struct Dir {
    fd: OwnedFd,
    path: PathBuf,
}

impl Dir {
    /// A path that reaches `name` through the descriptor, for the calls that
    /// take no directory descriptor (`bind`, `connect`): the kernel resolves
    /// `/proc/self/fd/N` to the directory we opened, not to whatever the
    /// original path names now. It is also short, whatever the directory's
    /// path.
    fn via_fd(&self, name: &str) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}/{name}", self.fd.as_raw_fd()))
    }

    /// `lstat` of `name` in the directory.
    fn stat(&self, name: &str) -> Result<FileStat, Errno> {
        fstatat(&self.fd, name, AtFlags::AT_SYMLINK_NOFOLLOW)
    }
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
    /// Creates `dir` if needed, checks it, and binds `dir/IFNAME.sock`
    /// (mode 0600).
    ///
    /// Synchronous and thread-free, so it can run before the tokio runtime
    /// exists and before `fork()`. The listener is left blocking;
    /// [`UapiSocket::tokio_listener`] switches it when serving.
    ///
    /// # Errors
    ///
    /// [`UapiError::InUse`] when another wireguard4netns holds the lock or a
    /// live server answers on the socket (the socket is left untouched),
    /// [`UapiError::UnsafeDir`] for a directory that is a symlink, not ours or
    /// writable by others, and the other variants for an unusable name,
    /// directory or path.
    pub fn bind(dir: &Path, ifname: &str) -> Result<UapiSocket, UapiError> {
        validate_ifname(ifname)?;
        let path = socket_path(dir, ifname);
        let len = path.as_os_str().len();
        if len >= SUN_PATH_LEN {
            return Err(UapiError::PathTooLong { path, len });
        }
        let dir = Arc::new(prepare_dir(dir)?);

        // On every error return below, dropping it unlinks the lock file
        // (while still holding the lock) and then releases the lock.
        let lock = acquire_lock(&dir, ifname)?;

        let name = format!("{ifname}.sock");
        remove_if_stale(&dir, &name, &path, ifname)?;

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
        let addr = UnixAddr::new(&dir.via_fd(&name)).map_err(|e| bind_err(e.into()))?;
        socket::bind(fd.as_raw_fd(), &addr).map_err(|e| bind_err(e.into()))?;

        // From here on the file exists and is ours: the guard removes it on
        // any error return.
        let stat = match dir.stat(&name) {
            Ok(stat) => stat,
            Err(e) => {
                let _ = unlinkat(&dir.fd, name.as_str(), UnlinkatFlags::NoRemoveDir);
                return Err(bind_err(e.into()));
            }
        };
        let mut socket_file = OwnedPath::new(Arc::clone(&dir), name, path.clone(), &stat);

        // The umask may have taken bits the owner needs (connect() needs w).
        fchmodat(
            &dir.fd,
            socket_file.name.as_str(),
            Mode::from_bits_truncate(0o600),
            FchmodatFlags::FollowSymlink,
        )
        .map_err(|e| bind_err(e.into()))?;
        // chmod() moved the ctime we recognise the file by.
        socket_file.id = FileId::of(
            &dir.stat(&socket_file.name)
                .map_err(|e| bind_err(e.into()))?,
        );
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

    /// The descriptors this socket holds (listener, lock and the socket
    /// directory), for a forked process that must keep them while closing
    /// everything else.
    pub fn raw_fds(&self) -> [RawFd; 3] {
        [
            self.listener.as_raw_fd(),
            self.lock.file.as_raw_fd(),
            self.socket_file.dir.fd.as_raw_fd(),
        ]
    }

    /// The socket directory, as the descriptor every file operation after
    /// the check goes through.
    pub fn dir_fd(&self) -> BorrowedFd<'_> {
        self.socket_file.dir.fd.as_fd()
    }

    /// Remove `name` from the socket directory, through its descriptor (for
    /// `run`'s resolv.conf; the confined engine may unlink nowhere else). A
    /// file already gone is fine.
    pub fn remove_in_dir(&self, name: &str) {
        match unlinkat(&self.socket_file.dir.fd, name, UnlinkatFlags::NoRemoveDir) {
            Ok(()) | Err(Errno::ENOENT) => {}
            Err(e) => tracing::warn!("cannot remove {name} in the socket directory: {e}"),
        }
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
    fn of(stat: &FileStat) -> Self {
        Self {
            dev: stat.st_dev,
            ino: stat.st_ino,
            ctime: (stat.st_ctime, stat.st_ctime_nsec),
        }
    }
}

/// A file we created in the socket directory, removed on drop if the name
/// still names that file.
#[derive(Debug)]
struct OwnedPath {
    dir: Arc<Dir>,
    name: String,
    /// The full path, for messages and [`UapiSocket::path`].
    path: PathBuf,
    id: FileId,
    armed: bool,
}

impl OwnedPath {
    fn new(dir: Arc<Dir>, name: String, path: PathBuf, stat: &FileStat) -> Self {
        Self {
            dir,
            name,
            path,
            id: FileId::of(stat),
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
    /// Remove the file if its name still names the one we created.
    fn remove_if_ours(&self) {
        let path = self.path.display();
        match self.dir.stat(&self.name) {
            Ok(stat) if FileId::of(&stat) == self.id => {
                match unlinkat(&self.dir.fd, self.name.as_str(), UnlinkatFlags::NoRemoveDir) {
                    Ok(()) => tracing::debug!(%path, "removed"),
                    Err(Errno::ENOENT) => {}
                    Err(e) => tracing::warn!(%path, "cannot remove: {e}"),
                }
            }
            // Someone else's file now: a successor's socket must survive us.
            Ok(_) => tracing::debug!(%path, "replaced by another process; leaving it"),
            Err(Errno::ENOENT) => {}
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

/// Creates `dir` (0700) if it is missing, opens it without following a
/// symlink in its last component, and checks it is safe.
fn prepare_dir(dir: &Path) -> Result<Dir, UapiError> {
    let create_err = |path: &Path, error: io::Error| UapiError::CreateDir {
        path: path.to_owned(),
        error,
    };
    if let Some(opened) = open_dir(dir)? {
        return check_dir(dir, opened);
    }
    if let Some(parent) = dir.parent()
        && !parent.as_os_str().is_empty()
    {
        fs::create_dir_all(parent).map_err(|e| create_err(parent, e))?;
    }
    let created = match DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => true,
        // Lost a race with another instance creating it: judge what is there.
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => false,
        Err(e) => return Err(create_err(dir, e)),
    };
    let opened = open_dir(dir)?.ok_or_else(|| {
        create_err(
            dir,
            io::Error::other("it was removed right after its creation"),
        )
    })?;
    if created {
        // Exactly 0700 whatever the umask: we are its only user.
        fchmod(&opened.fd, Mode::from_bits_truncate(0o700))
            .map_err(|e| create_err(dir, e.into()))?;
    }
    check_dir(dir, opened)
}

/// `open(dir, O_DIRECTORY | O_NOFOLLOW)`; `None` when it does not exist.
fn open_dir(dir: &Path) -> Result<Option<Dir>, UapiError> {
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    match open(dir, flags, Mode::empty()) {
        Ok(fd) => Ok(Some(Dir {
            fd,
            path: dir.to_owned(),
        })),
        Err(Errno::ENOENT) => Ok(None),
        Err(errno) => Err(classify_open_error(dir, errno)),
    }
}

fn classify_open_error(dir: &Path, errno: Errno) -> UapiError {
    let last = fs::symlink_metadata(dir);
    match (errno, last) {
        // O_NOFOLLOW on a symlink (ELOOP, or ENOTDIR with O_DIRECTORY).
        (_, Ok(meta)) if meta.file_type().is_symlink() => UapiError::UnsafeDir {
            path: dir.to_owned(),
            reason: "it is a symbolic link, which could be pointed elsewhere later; give the directory it points to".to_owned(),
        },
        // The last component exists and is not a directory (ENOTDIR from a
        // parent means the path cannot be created).
        (Errno::ENOTDIR, Ok(_)) => UapiError::NotADirectory {
            path: dir.to_owned(),
        },
        (errno, _) => UapiError::CreateDir {
            path: dir.to_owned(),
            error: errno.into(),
        },
    }
}

/// A directory is safe for our socket when no other user can rename or
/// delete entries in it: owned by us, and not writable by group or others.
/// Root's `/var/run/wireguard` is root's; an unprivileged user's lives in
/// their own runtime directory.
fn check_dir(path: &Path, dir: Dir) -> Result<Dir, UapiError> {
    let stat = fstat(&dir.fd).map_err(|e| UapiError::CreateDir {
        path: path.to_owned(),
        error: e.into(),
    })?;
    let euid = nix::unistd::geteuid().as_raw();
    if stat.st_uid != euid {
        return Err(UapiError::UnsafeDir {
            path: path.to_owned(),
            reason: format!(
                "it is owned by uid {}, not by you (uid {euid}), so its owner could swap the socket for their own",
                stat.st_uid
            ),
        });
    }
    let mode = stat.st_mode & 0o7777;
    if mode & 0o022 != 0 {
        return Err(UapiError::UnsafeDir {
            path: path.to_owned(),
            reason: format!(
                "it is writable by group or others (mode {mode:o}; chmod go-w it, or use a directory of your own)"
            ),
        });
    }
    Ok(dir)
}

/// Opens (creating it 0600 if needed) and exclusively locks
/// `dir/IFNAME.lock`, making sure the locked file is the one the name names.
fn acquire_lock(dir: &Arc<Dir>, ifname: &str) -> Result<LockFile, UapiError> {
    let path = lock_path(&dir.path, ifname);
    let name = format!("{ifname}.lock");
    let lock_err = |error: io::Error| UapiError::Lock {
        path: path.clone(),
        error,
    };
    for _ in 0..LOCK_ATTEMPTS {
        // O_NOFOLLOW keeps a planted symlink from making us create or lock a
        // file elsewhere.
        let flags = OFlag::O_RDWR | OFlag::O_CREAT | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let file = match openat(
            &dir.fd,
            name.as_str(),
            flags,
            Mode::from_bits_truncate(0o600),
        ) {
            Ok(fd) => File::from(fd),
            Err(e @ (Errno::EACCES | Errno::EPERM | Errno::EROFS)) => {
                return Err(UapiError::DirNotWritable {
                    path: dir.path.clone(),
                    error: e.into(),
                });
            }
            Err(e) => return Err(lock_err(e.into())),
        };
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                return Err(UapiError::InUse {
                    ifname: ifname.to_owned(),
                    path: socket_path(&dir.path, ifname),
                });
            }
            Err(TryLockError::Error(e)) => return Err(lock_err(e)),
        }
        let locked = fstat(file.as_fd()).map_err(|e| lock_err(e.into()))?;
        match dir.stat(&name) {
            Ok(named) if FileId::of(&named) == FileId::of(&locked) => {
                return Ok(LockFile {
                    path: OwnedPath::new(Arc::clone(dir), name, path, &locked),
                    file,
                });
            }
            // The previous owner unlinked it between our open and our lock.
            Ok(_) | Err(Errno::ENOENT) => {}
            Err(e) => return Err(lock_err(e.into())),
        }
    }
    Err(lock_err(io::Error::other(
        "the lock file keeps being removed or replaced by another process",
    )))
}

/// Deals with whatever is at `dir/name`: nothing is fine, a socket nobody
/// listens on is removed, a live socket or anything else is an error.
fn remove_if_stale(dir: &Dir, name: &str, path: &Path, ifname: &str) -> Result<(), UapiError> {
    let stat = match dir.stat(name) {
        Ok(stat) => stat,
        Err(Errno::ENOENT) => return Ok(()),
        Err(errno) => {
            return Err(UapiError::Probe {
                path: path.to_owned(),
                error: errno.into(),
            });
        }
    };
    if SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT != SFlag::S_IFSOCK {
        return Err(UapiError::NotASocket {
            path: path.to_owned(),
        });
    }
    match probe(&dir.via_fd(name)) {
        Ok(()) => Err(UapiError::InUse {
            ifname: ifname.to_owned(),
            path: path.to_owned(),
        }),
        // Nobody listening: a crashed instance left it behind.
        Err(Errno::ECONNREFUSED) => {
            tracing::info!(path = %path.display(), "removing stale UAPI socket");
            match unlinkat(&dir.fd, name, UnlinkatFlags::NoRemoveDir) {
                Ok(()) | Err(Errno::ENOENT) => Ok(()),
                Err(errno) => Err(UapiError::RemoveStale {
                    path: path.to_owned(),
                    error: errno.into(),
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
    use std::os::unix::net::UnixStream as StdUnixStream;
    use std::time::Duration;

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

    // ---- binding -----------------------------------------------------------

    fn mode_of(path: &Path) -> u32 {
        fs::symlink_metadata(path).unwrap().mode() & 0o7777
    }

    fn id_of(path: &Path) -> FileId {
        FileId::of(&nix::sys::stat::lstat(path).unwrap())
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
    fn dirs_writable_by_others_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("shared");
        fs::create_dir(&dir).unwrap();
        // Sticky (like /tmp) no longer helps: the directory must be ours alone.
        for mode in [0o777, 0o1777, 0o770, 0o730, 0o702] {
            fs::set_permissions(&dir, fs::Permissions::from_mode(mode)).unwrap();
            let err = UapiSocket::bind(&dir, "wg0").unwrap_err();
            assert!(
                matches!(err, UapiError::UnsafeDir { .. }),
                "{mode:o}: {err}"
            );
            assert!(
                err.to_string().contains("writable by group or others"),
                "{err}"
            );
            assert!(dir_is_empty(&dir));
        }
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        UapiSocket::bind(&dir, "wg0").unwrap();
    }

    #[test]
    fn a_symlinked_dir_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let real = tmp.path().join("real");
        fs::create_dir(&real).unwrap();
        fs::set_permissions(&real, fs::Permissions::from_mode(0o700)).unwrap();
        let link = tmp.path().join("link");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let err = UapiSocket::bind(&link, "wg0").unwrap_err();
        assert!(matches!(err, UapiError::UnsafeDir { .. }), "{err}");
        assert!(err.to_string().contains("symbolic link"), "{err}");
        assert!(dir_is_empty(&real));
        // A dangling one is not created through either.
        let dangling = tmp.path().join("dangling");
        std::os::unix::fs::symlink(tmp.path().join("nowhere"), &dangling).unwrap();
        let err = UapiSocket::bind(&dangling, "wg0").unwrap_err();
        assert!(matches!(err, UapiError::UnsafeDir { .. }), "{err}");
        assert!(!tmp.path().join("nowhere").exists());
        // Symlinks above the last component are followed as before.
        let sock = UapiSocket::bind(&link.join("sub"), "wg0").unwrap();
        assert!(real.join("sub/wg0.sock").exists());
        drop(sock);
    }

    #[test]
    fn a_dir_owned_by_someone_else_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let theirs = tmp.path().join("theirs");
        fs::create_dir(&theirs).unwrap();
        fs::set_permissions(&theirs, fs::Permissions::from_mode(0o755)).unwrap();
        if nix::unistd::geteuid().is_root() {
            std::os::unix::fs::chown(&theirs, Some(12345), None).unwrap();
        } else if nix::unistd::geteuid().as_raw() == fs::metadata("/").unwrap().uid() {
            eprintln!("SKIPPED a_dir_owned_by_someone_else_is_refused: no foreign directory");
            return;
        }
        let theirs = if nix::unistd::geteuid().is_root() {
            theirs
        } else {
            // Root's, which is also not ours any more.
            PathBuf::from("/")
        };
        let err = UapiSocket::bind(&theirs, "wg0").unwrap_err();
        assert!(matches!(err, UapiError::UnsafeDir { .. }), "{err}");
        assert!(err.to_string().contains("is owned by uid"), "{err}");
    }

    /// The directory is used through the descriptor opened for the check:
    /// renaming it away afterwards does not move our files.
    #[test]
    fn files_follow_the_checked_directory_not_its_path() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("d");
        let sock = UapiSocket::bind(&dir, "wg0").unwrap();
        let moved = tmp.path().join("moved");
        fs::rename(&dir, &moved).unwrap();
        fs::create_dir(&dir).unwrap();
        fs::write(dir.join("wg0.sock"), b"decoy").unwrap();
        drop(sock);
        // Our files went with the directory and were removed there; the
        // decoy at the old path is untouched.
        assert!(dir_is_empty(&moved));
        assert_eq!(fs::read(dir.join("wg0.sock")).unwrap(), b"decoy");
    }

    fn dir_is_empty(dir: &Path) -> bool {
        fs::read_dir(dir).unwrap().next().is_none()
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

    /// An operator takes our files away with `clear` and starts another
    /// instance: dropping ours must leave the successor's files alone.
    fn drop_spares_a_successor(clear: impl FnOnce(&Path, &Path)) {
        let tmp = tempfile::tempdir().unwrap();
        let first = UapiSocket::bind(tmp.path(), "wg0").unwrap();
        clear(tmp.path(), first.path());
        let second = UapiSocket::bind(tmp.path(), "wg0").unwrap();
        let sock_id = id_of(second.path());
        let lock_id = id_of(&tmp.path().join("wg0.lock"));
        drop(first);
        assert_eq!(id_of(second.path()), sock_id);
        assert_eq!(id_of(&tmp.path().join("wg0.lock")), lock_id);
        StdUnixStream::connect(second.path()).unwrap();
    }

    #[test]
    fn drop_spares_a_successors_socket() {
        drop_spares_a_successor(|dir, sock| {
            fs::rename(sock, dir.join("old.sock")).unwrap();
            fs::rename(dir.join("wg0.lock"), dir.join("old.lock")).unwrap();
        });
    }

    #[test]
    fn drop_spares_a_successors_socket_on_a_reused_inode() {
        // The successor's files may well get our inode numbers back; only
        // the change time tells them apart. Wait out coarse (jiffy)
        // timestamps.
        drop_spares_a_successor(|dir, sock| {
            fs::remove_file(sock).unwrap();
            fs::remove_file(dir.join("wg0.lock")).unwrap();
            std::thread::sleep(Duration::from_millis(50));
        });
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
}
