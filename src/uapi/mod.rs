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
//! The directory is created 0700 when missing (its parents as `mkdir -p`
//! does). It is then opened with `O_DIRECTORY | O_NOFOLLOW` and judged by
//! `fstat` of that descriptor: it must be owned by us (the effective uid) and
//! not writable by group or others, sticky or not. Otherwise someone else
//! could swap our socket for theirs and read the keys `wg set` sends: the
//! owner of a directory can always rename entries in it, and a sticky
//! directory still lets others plant names we have not created yet. Root's
//! `/var/run/wireguard` is root's; an unprivileged user's default directory
//! is their own. A symlink as the last component is refused (it could be
//! pointed elsewhere later), and from the check on, everything happens
//! through the descriptor: the lock file with `openat`, the stale-socket
//! probe, `stat` and `unlink` with the `*at` calls, and `bind`/`connect`
//! through `/proc/self/fd/N/NAME`, so a directory renamed or swapped after
//! the check cannot redirect us. The socket is created 0600: the
//! mode is set on the socket with `fchmod` *before* `bind` (Linux takes the
//! new file's mode from it, minus the umask), so there is no moment in which
//! another user could connect, then `chmod` fixes up whatever the umask took
//! away (`connect` needs write permission).
//!
//! # Why `errno=-22`
//!
//! A request that cannot be parsed is answered with `errno=-22\n\n` (EINVAL,
//! negated), what wireguard-go's `device/uapi.go` answers for invalid keys and
//! values (`ipcErrorInvalid = -EINVAL`), so `wg` reports "Invalid argument"
//! instead of hanging: `wg set` takes the number as `-errno` (a positive 22
//! became "Unknown error -22"). gotatun's own answers are negated the same way
//! (see `vendor/gotatun/WIREGUARD4NETNS.md`).
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
//!   read a request or write a response, 5 s for a new connection to start
//!   its first request, 64 concurrent connections (the one idle longest
//!   makes room for a new one; see `server`).
//!
//! [xplatform]: https://www.wireguard.com/xplatform/#configuration-protocol
//!
//! # Layers
//!
//! * [`socket`]: the file, its directory, the lock and the stale-socket
//!   probe;
//! * [`frame`]: reading one request off a stream, the limits, the error
//!   answer;
//! * `server`: the accept loop, one task per connection, [`Serving`].

#![forbid(unsafe_code)]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

use std::io;
use std::path::PathBuf;

pub mod frame;
mod server;
pub mod socket;

pub use frame::{FrameError, Limits, error_response, read_request};
pub use server::{Serving, serve, serve_listener};
pub use socket::{UapiSocket, default_dir, socket_path};

use socket::SUN_PATH_LEN;

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
