//! A small synchronous UAPI client: connect to `DIR/IFNAME.sock`, send one
//! request, read the answer up to its empty line.
//!
//! It does what `wg` does in `ipc-uapi-unix.h`, with two differences. Every
//! step has a deadline ([`TIMEOUT`]): a stuck server gets an error naming its
//! socket, not a tool that hangs. And a socket nobody listens on
//! (`ECONNREFUSED`) is reported and skipped, not deleted as `wg` deletes it:
//! its owner (see `uapi`'s lock file) cleans up after itself, and the next
//! instance replaces a stale one.
//!
//! Before it sends anything (a `set` may carry keys), it makes sure the
//! other end is the caller's or root's: the socket file must be owned by the
//! caller or root, and so must the process that listens on it
//! (`SO_PEERCRED` on the connected socket, which the kernel took from the
//! listener when it called `listen`). A socket of another user is refused
//! with [`ClientError::ForeignSocket`]: whoever placed it could read the
//! keys `set` sends or answer `show` with a forged configuration.
//!
//! Our own uid is not enough either: the attach target's root (and `run
//! --map-root`'s command) *is* our uid, shares our filesystem, and could put
//! a socket of its own at the path. So the listening process is placed the
//! way the server places its clients ([`crate::peer`], `SO_PEERPIDFD` on the
//! connected socket names the process that called `listen`): one inside a
//! user namespace nested in ours is refused ([`ClientError::InsideServer`]),
//! and so is a socket whose listening process has exited, since where it ran
//! can no longer be checked ([`ClientError::ServerGone`]). We can inspect
//! every process nested in our user namespace (we own those namespaces), so
//! an uninspectable server, such as our non-dumpable engine, is not one of
//! them.
//!
//! `connect(2)` on a unix stream socket blocks only while the listener's
//! backlog is full; done non-blocking it fails with `EAGAIN` then, and we
//! retry until the deadline.

use std::fs;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::socket::{self, AddressFamily, SockFlag, SockType, UnixAddr};

use super::proto::{self, Device, ProtoError, SetRequest};
use crate::peer::{self, Relation, UserNs};
use crate::uapi::socket_path;

/// How long connecting, and then each read or write, may take.
pub const TIMEOUT: Duration = Duration::from_secs(5);

/// An answer larger than this is refused: 64 MiB is some 200 000 peers.
const MAX_ANSWER: usize = 64 << 20;

/// Pause between attempts to connect to a listener whose backlog is full.
const CONNECT_RETRY: Duration = Duration::from_millis(10);

/// Why talking to a tunnel failed. Each message names the socket (or the
/// directory and interface) and says what to do.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("invalid interface name {name:?}: {reason}")]
    InvalidName { name: String, reason: &'static str },

    #[error(
        "no tunnel named {ifname} in {} (is wireguard4netns running? use --tmpdir if it was started with one)",
        dir.display()
    )]
    NoTunnel { ifname: String, dir: PathBuf },

    #[error(
        "{} is not a socket, so it is no tunnel's (hint: check --tmpdir)",
        path.display()
    )]
    NotASocket { path: PathBuf },

    #[error(
        "tunnel {ifname} is not running: nobody answers on {} (a leftover of a killed process; starting the tunnel again replaces it)",
        path.display()
    )]
    NotRunning { ifname: String, path: PathBuf },

    #[error(
        "cannot connect to {}: permission denied (the tunnel belongs to another user; run this as that user or as root)",
        path.display()
    )]
    PermissionDenied { path: PathBuf },

    #[error("cannot connect to {}: {error}", path.display())]
    Connect { path: PathBuf, error: io::Error },

    #[error(
        "{} {what} uid {uid}, not you (uid {euid}) or root; refusing to talk to it, a request may carry keys (hint: check --tmpdir; remove the socket if it should be yours)",
        path.display()
    )]
    ForeignSocket {
        path: PathBuf,
        what: &'static str,
        uid: u32,
        euid: u32,
    },

    #[error(
        "{} is served by process {pid}, which runs inside a tunnel's namespaces, not by a tunnel; refusing to talk to it, a request may carry keys (hint: a program in the namespace replaced the socket: stop the tunnel, and start it again with a --tmpdir the namespace cannot reach)",
        path.display()
    )]
    InsideServer { path: PathBuf, pid: i32 },

    #[error(
        "{} is served by a socket whose creator has exited, so where it runs cannot be checked; refusing to talk to it, a request may carry keys (hint: wireguard-go started without -f does this; use wg for it)",
        path.display()
    )]
    ServerGone { path: PathBuf },

    #[error("cannot check who serves {}: {error}", path.display())]
    CheckServer {
        path: PathBuf,
        error: crate::peer::PeerError,
    },

    #[error(
        "no answer from {} within {} s (is the tunnel's process stopped or stuck?)",
        path.display(),
        TIMEOUT.as_secs()
    )]
    Timeout { path: PathBuf },

    #[error(
        "{} closed the connection without an answer (has the tunnel stopped? see its log)",
        path.display()
    )]
    Closed { path: PathBuf },

    #[error("cannot talk to {}: {error}", path.display())]
    Io { path: PathBuf, error: io::Error },

    #[error("{} sent an answer larger than {} MiB; refusing it", path.display(), MAX_ANSWER >> 20)]
    TooLarge { path: PathBuf },

    #[error("{} sent an answer that is not the WireGuard UAPI protocol: {error}", path.display())]
    Protocol { path: PathBuf, error: ProtoError },

    #[error("the tunnel at {} refused the {request} request: {} (errno {errno})", path.display(), Errno::from_raw(*errno).desc())]
    Refused {
        path: PathBuf,
        request: &'static str,
        errno: i32,
    },

    #[error("cannot list the tunnels in {}: {error}", dir.display())]
    List { dir: PathBuf, error: io::Error },
}

/// Reads the configuration and state of tunnel `ifname` in `dir`.
///
/// # Errors
/// [`ClientError`] when there is no such tunnel, it does not answer in time,
/// the answer is not the protocol, or it carries a non-zero `errno`.
pub fn get(dir: &Path, ifname: &str) -> Result<Device, ClientError> {
    let (path, answer) = exchange(dir, ifname, "get=1\n\n")?;
    let device = proto::parse_get_response(&answer).map_err(|error| ClientError::Protocol {
        path: path.clone(),
        error,
    })?;
    if device.errno != 0 {
        return Err(ClientError::Refused {
            path,
            request: "get",
            errno: device.errno,
        });
    }
    Ok(device)
}

/// Applies `request` to tunnel `ifname` in `dir`.
///
/// # Errors
/// As [`get`]; [`ClientError::Refused`] when the tunnel answers with a
/// non-zero `errno`.
pub fn set(dir: &Path, ifname: &str, request: &SetRequest) -> Result<(), ClientError> {
    let (path, answer) = exchange(dir, ifname, &request.to_string())?;
    let errno = proto::parse_set_response(&answer).map_err(|error| ClientError::Protocol {
        path: path.clone(),
        error,
    })?;
    if errno != 0 {
        return Err(ClientError::Refused {
            path,
            request: "set",
            errno,
        });
    }
    Ok(())
}

/// The interfaces with a live socket in `dir`, sorted by name: every
/// `NAME.sock` that is a socket (symlinks followed, as `wg` does) and on which
/// a connection is not refused. A missing `dir` has none.
///
/// # Errors
/// [`ClientError::List`] when `dir` exists but cannot be read.
pub fn list_interfaces(dir: &Path) -> Result<Vec<String>, ClientError> {
    let list_err = |error| ClientError::List {
        dir: dir.to_owned(),
        error,
    };
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(list_err(e)),
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(list_err)?;
        let file_name = entry.file_name();
        let Some(name) = file_name.to_str().and_then(|n| n.strip_suffix(".sock")) else {
            continue;
        };
        if name.is_empty() {
            continue;
        }
        let path = entry.path();
        let is_socket = fs::metadata(&path).is_ok_and(|m| m.file_type().is_socket());
        if !is_socket {
            continue;
        }
        match connect(&path, Instant::now() + TIMEOUT) {
            Err(Errno::ECONNREFUSED) => continue,
            _ => names.push(name.to_owned()),
        }
    }
    names.sort();
    Ok(names)
}

/// Checks a name the way `wg` does (no `/`), plus what makes it unusable in a
/// file name.
pub fn validate_ifname(name: &str) -> Result<(), ClientError> {
    let reason = if name.is_empty() {
        "it is empty"
    } else if name.contains('/') {
        "it contains '/'"
    } else if name.contains('\0') {
        "it contains a NUL byte"
    } else {
        return Ok(());
    };
    Err(ClientError::InvalidName {
        name: name.to_owned(),
        reason,
    })
}

/// Sends `request` to `dir/IFNAME.sock` and returns the socket path and the
/// answer up to and including its empty line.
fn exchange(dir: &Path, ifname: &str, request: &str) -> Result<(PathBuf, String), ClientError> {
    validate_ifname(ifname)?;
    let path = socket_path(dir, ifname);
    let deadline = Instant::now() + TIMEOUT;
    let meta = fs::metadata(&path).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => ClientError::NoTunnel {
            ifname: ifname.to_owned(),
            dir: dir.to_owned(),
        },
        io::ErrorKind::PermissionDenied => ClientError::PermissionDenied { path: path.clone() },
        _ => ClientError::Connect {
            path: path.clone(),
            error: e,
        },
    })?;
    if !meta.file_type().is_socket() {
        return Err(ClientError::NotASocket { path });
    }
    trusted(&path, "is owned by", meta.uid())?;
    let stream = connect(&path, deadline).map_err(|errno| match errno {
        Errno::ECONNREFUSED => ClientError::NotRunning {
            ifname: ifname.to_owned(),
            path: path.clone(),
        },
        Errno::EACCES | Errno::EPERM => ClientError::PermissionDenied { path: path.clone() },
        Errno::ENOENT => ClientError::NoTunnel {
            ifname: ifname.to_owned(),
            dir: dir.to_owned(),
        },
        Errno::ETIMEDOUT => ClientError::Timeout { path: path.clone() },
        other => ClientError::Connect {
            path: path.clone(),
            error: other.into(),
        },
    })?;
    let server = socket::getsockopt(&stream, socket::sockopt::PeerCredentials).map_err(|e| {
        ClientError::Connect {
            path: path.clone(),
            error: e.into(),
        }
    })?;
    trusted(&path, "is served by a process of", server.uid())?;
    outside_server(&path, &stream)?;
    let answer = talk(stream, request).map_err(|e| match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
            ClientError::Timeout { path: path.clone() }
        }
        io::ErrorKind::OutOfMemory => ClientError::TooLarge { path: path.clone() },
        io::ErrorKind::UnexpectedEof | io::ErrorKind::ConnectionReset => {
            ClientError::Closed { path: path.clone() }
        }
        _ => ClientError::Io {
            path: path.clone(),
            error: e,
        },
    })?;
    Ok((path, answer))
}

/// Whether `uid` (of the socket file or its server) may receive requests.
fn trusted(path: &Path, what: &'static str, uid: u32) -> Result<(), ClientError> {
    let euid = nix::unistd::geteuid().as_raw();
    if uid == euid || uid == 0 {
        return Ok(());
    }
    Err(ClientError::ForeignSocket {
        path: path.to_owned(),
        what,
        uid,
        euid,
    })
}

/// The process listening at the other end of `stream` must not live inside
/// a user namespace nested in ours (see the module documentation).
fn outside_server(path: &Path, stream: &UnixStream) -> Result<(), ClientError> {
    let check_err = |error| ClientError::CheckServer {
        path: path.to_owned(),
        error,
    };
    let ours = UserNs::current().map_err(check_err)?;
    let server = peer::inspect(stream.as_fd(), ours).map_err(check_err)?;
    match server.relation {
        Relation::Same | Relation::Outside | Relation::Uninspectable => Ok(()),
        Relation::Inside => Err(ClientError::InsideServer {
            path: path.to_owned(),
            pid: server.pid,
        }),
        Relation::Gone => Err(ClientError::ServerGone {
            path: path.to_owned(),
        }),
    }
}

/// A connected, blocking stream; `ETIMEDOUT` when the backlog stays full
/// until `deadline`.
fn connect(path: &Path, deadline: Instant) -> Result<UnixStream, Errno> {
    let addr = UnixAddr::new(path)?;
    loop {
        let fd: OwnedFd = socket::socket(
            AddressFamily::Unix,
            SockType::Stream,
            SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
            None,
        )?;
        match socket::connect(fd.as_raw_fd(), &addr) {
            Ok(()) => {
                let stream = UnixStream::from(fd);
                stream.set_nonblocking(false).map_err(io_errno)?;
                return Ok(stream);
            }
            Err(Errno::EAGAIN | Errno::EINTR) if Instant::now() < deadline => {
                std::thread::sleep(CONNECT_RETRY);
            }
            Err(Errno::EAGAIN) => return Err(Errno::ETIMEDOUT),
            Err(e) => return Err(e),
        }
    }
}

fn io_errno(e: io::Error) -> Errno {
    e.raw_os_error().map_or(Errno::EIO, Errno::from_raw)
}

/// Writes `request` and reads until the answer's empty line, each step bound
/// by [`TIMEOUT`]. An oversized answer is `OutOfMemory`.
fn talk(mut stream: UnixStream, request: &str) -> io::Result<String> {
    stream.set_write_timeout(Some(TIMEOUT))?;
    stream.set_read_timeout(Some(TIMEOUT))?;
    stream.write_all(request.as_bytes())?;
    let mut answer = Vec::with_capacity(4096);
    let mut chunk = [0u8; 16 * 1024];
    loop {
        let n = match stream.read(&mut chunk) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        let Some(data) = chunk.get(..n) else {
            return Err(io::ErrorKind::InvalidData.into());
        };
        // The empty line may straddle two reads: look from one byte back.
        let from = answer.len().saturating_sub(1);
        answer.extend_from_slice(data);
        if let Some(end) = answer_end(&answer, from) {
            answer.truncate(end);
            return Ok(String::from_utf8_lossy(&answer).into_owned());
        }
        if n == 0 {
            if answer.is_empty() {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            // Closed mid-answer: hand over what came, the parser says what is missing.
            return Ok(String::from_utf8_lossy(&answer).into_owned());
        }
        if answer.len() > MAX_ANSWER {
            return Err(io::ErrorKind::OutOfMemory.into());
        }
    }
}

/// The length of the answer through its empty line, searching from `from`:
/// a `\n` at the very start, or the first `\n\n`.
fn answer_end(answer: &[u8], from: usize) -> Option<usize> {
    if answer.first() == Some(&b'\n') {
        return Some(1);
    }
    answer
        .get(from..)?
        .windows(2)
        .position(|w| w == b"\n\n")
        .map(|i| from + i + 2)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;
    use std::thread;

    fn serve_once(listener: UnixListener, answer: &'static [u8]) -> thread::JoinHandle<String> {
        thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            let mut request = Vec::new();
            let mut byte = [0u8; 1];
            // Read the request through its empty line.
            while !request.ends_with(b"\n\n") {
                if conn.read(&mut byte).unwrap() == 0 {
                    break;
                }
                request.push(byte[0]);
            }
            for piece in answer.chunks(3) {
                // The client may hang up once it has the empty line, before the
                // bytes after it are written: that is what is being tested.
                if conn.write_all(piece).is_err() {
                    break;
                }
            }
            // Keep the connection open a moment: the client must not wait for EOF.
            thread::sleep(Duration::from_millis(200));
            String::from_utf8(request).unwrap()
        })
    }

    /// Needs root to make files and processes of another uid; CI runs as
    /// root, so it runs there.
    fn as_root(test: &str) -> bool {
        if nix::unistd::geteuid().is_root() {
            return true;
        }
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "{test} needs root (CI=true)"
        );
        eprintln!("SKIPPED {test}: needs root to play another user");
        false
    }

    #[test]
    fn a_socket_owned_by_someone_else_gets_nothing() {
        if !as_root("a_socket_owned_by_someone_else_gets_nothing") {
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("wg0.sock");
        let listener = UnixListener::bind(&path).unwrap();
        std::os::unix::fs::chown(&path, Some(12345), None).unwrap();
        let err = set(tmp.path(), "wg0", &SetRequest::default()).unwrap_err();
        assert!(
            matches!(err, ClientError::ForeignSocket { uid: 12345, .. }),
            "{err}"
        );
        let msg = err.to_string();
        assert!(
            msg.contains("is owned by uid 12345") && msg.contains("--tmpdir"),
            "{msg}"
        );
        // Refused before connecting: nothing reached the listener.
        listener.set_nonblocking(true).unwrap();
        assert!(listener.accept().is_err());
    }

    /// A fake server at `path`: `launcher` (a command that ends in running
    /// what it is given) starts python3, which listens, says it is ready, and
    /// prints whatever its first connection sends.
    struct FakeServer {
        child: std::process::Child,
        out: std::process::ChildStdout,
    }

    impl FakeServer {
        fn start(mut launcher: std::process::Command, path: &Path) -> Self {
            let script = "import socket,sys\n\
                          s=socket.socket(socket.AF_UNIX)\n\
                          s.bind(sys.argv[1]); s.listen(8)\n\
                          print('ready', flush=True)\n\
                          c,_=s.accept(); sys.stdout.write(repr(c.recv(100))); sys.stdout.flush()\n";
            let mut child = launcher
                .args(["/usr/bin/python3", "-c", script])
                .arg(path)
                .stdout(std::process::Stdio::piped())
                .spawn()
                .expect("the fake server (apt install python3 util-linux)");
            let mut out = child.stdout.take().unwrap();
            let mut ready = [0u8; 6];
            out.read_exact(&mut ready).unwrap();
            assert_eq!(&ready, b"ready\n");
            Self { child, out }
        }

        /// What the server received on its one connection.
        fn received(mut self) -> String {
            let mut got = String::new();
            self.out.read_to_string(&mut got).unwrap();
            self.child.wait().unwrap();
            got
        }
    }

    #[test]
    fn a_server_of_someone_else_gets_nothing() {
        if !as_root("a_server_of_someone_else_gets_nothing") {
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        // A listener whose credentials (taken at listen()) are uid 12345's,
        // behind a socket file that is then made ours.
        let shared = tmp.path().join("shared");
        fs::create_dir(&shared).unwrap();
        std::os::unix::fs::chown(&shared, Some(12345), None).unwrap();
        let path = shared.join("wg0.sock");
        let mut as_12345 = std::process::Command::new("setpriv");
        as_12345.args(["--reuid=12345", "--regid=12345", "--clear-groups"]);
        let server = FakeServer::start(as_12345, &path);
        std::os::unix::fs::chown(&path, Some(0), None).unwrap();
        let err = set(&shared, "wg0", &SetRequest::default()).unwrap_err();
        assert!(
            matches!(err, ClientError::ForeignSocket { uid: 12345, .. }),
            "{err}"
        );
        assert!(
            err.to_string()
                .contains("is served by a process of uid 12345"),
            "{err}"
        );
        // The server got a connection and nothing on it.
        assert_eq!(server.received(), "b''");
    }

    /// What the attach target's root could do: put a listener of its own
    /// (same uid, same filesystem) at the socket path. The client places the
    /// listening process and sends it nothing.
    #[test]
    fn a_server_inside_a_nested_user_namespace_gets_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("wg0.sock");
        let mut nested = std::process::Command::new("unshare");
        nested.args(["--user", "--map-root-user"]);
        let server = FakeServer::start(nested, &path);
        let err = set(tmp.path(), "wg0", &SetRequest::default()).unwrap_err();
        assert!(matches!(err, ClientError::InsideServer { .. }), "{err}");
        assert!(
            err.to_string()
                .contains("runs inside a tunnel's namespaces"),
            "{err}"
        );
        assert_eq!(server.received(), "b''");
    }

    #[test]
    fn get_reads_up_to_the_empty_line() {
        let dir = tempfile::tempdir().unwrap();
        let listener = UnixListener::bind(dir.path().join("wg0.sock")).unwrap();
        let server = serve_once(listener, b"listen_port=7\nerrno=0\n\nleftover");
        let device = get(dir.path(), "wg0").unwrap();
        assert_eq!(device.listen_port, Some(7));
        assert_eq!(server.join().unwrap(), "get=1\n\n");
    }

    #[test]
    fn set_sends_the_request_and_reports_errno() {
        let dir = tempfile::tempdir().unwrap();
        let listener = UnixListener::bind(dir.path().join("wg0.sock")).unwrap();
        let server = serve_once(listener, b"errno=-22\n\n");
        let request = SetRequest {
            listen_port: Some(1),
            ..SetRequest::default()
        };
        let err = set(dir.path(), "wg0", &request).unwrap_err();
        assert!(
            matches!(err, ClientError::Refused { errno: 22, .. }),
            "{err:?}"
        );
        assert!(err.to_string().contains("Invalid argument"), "{err}");
        assert_eq!(server.join().unwrap(), "set=1\nlisten_port=1\n\n");
    }

    #[test]
    fn no_socket_says_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        let err = get(dir.path(), "wg0").unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "no tunnel named wg0 in {} (is wireguard4netns running? use --tmpdir if it was started with one)",
                dir.path().display()
            )
        );
    }

    #[test]
    fn stale_socket_is_not_running_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wg0.sock");
        drop(UnixListener::bind(&path).unwrap());
        let err = get(dir.path(), "wg0").unwrap_err();
        assert!(matches!(err, ClientError::NotRunning { .. }), "{err:?}");
        assert!(path.exists());
        assert!(list_interfaces(dir.path()).unwrap().is_empty());
    }

    #[test]
    fn a_regular_file_is_not_a_socket() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("wg0.sock"), "").unwrap();
        let err = get(dir.path(), "wg0").unwrap_err();
        assert!(matches!(err, ClientError::NotASocket { .. }), "{err:?}");
        assert!(list_interfaces(dir.path()).unwrap().is_empty());
    }

    #[test]
    fn silent_server_times_out() {
        let dir = tempfile::tempdir().unwrap();
        let _listener = UnixListener::bind(dir.path().join("wg0.sock")).unwrap();
        // The kernel completes the connection from the backlog; nobody answers.
        let start = Instant::now();
        let err = get(dir.path(), "wg0").unwrap_err();
        assert!(matches!(err, ClientError::Timeout { .. }), "{err:?}");
        assert!(start.elapsed() < TIMEOUT + Duration::from_secs(2));
    }

    #[test]
    fn early_close_is_a_protocol_error() {
        let dir = tempfile::tempdir().unwrap();
        let listener = UnixListener::bind(dir.path().join("wg0.sock")).unwrap();
        let server = thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            let mut request = [0u8; 7];
            conn.read_exact(&mut request).unwrap();
            conn.write_all(b"listen_port=1\n").unwrap();
        });
        let err = get(dir.path(), "wg0").unwrap_err();
        assert!(
            matches!(
                err,
                ClientError::Protocol {
                    error: ProtoError::Truncated,
                    ..
                }
            ),
            "{err:?}"
        );
        server.join().unwrap();
    }

    #[test]
    fn closing_without_an_answer_is_reported_as_such() {
        let dir = tempfile::tempdir().unwrap();
        let listener = UnixListener::bind(dir.path().join("wg0.sock")).unwrap();
        let server = thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            let mut request = [0u8; 7];
            conn.read_exact(&mut request).unwrap();
        });
        let err = get(dir.path(), "wg0").unwrap_err();
        assert!(matches!(err, ClientError::Closed { .. }), "{err:?}");
        assert!(err.to_string().contains("without an answer"), "{err}");
        server.join().unwrap();
    }

    #[test]
    fn names_with_a_slash_are_refused() {
        let err = get(Path::new("/tmp"), "../x").unwrap_err();
        assert!(matches!(err, ClientError::InvalidName { .. }), "{err:?}");
        assert!(get(Path::new("/tmp"), "").is_err());
    }

    #[test]
    fn listing_finds_live_sockets_only_sorted() {
        let dir = tempfile::tempdir().unwrap();
        let _b = UnixListener::bind(dir.path().join("b.sock")).unwrap();
        let _a = UnixListener::bind(dir.path().join("a.sock")).unwrap();
        drop(UnixListener::bind(dir.path().join("stale.sock")).unwrap());
        fs::write(dir.path().join("file.sock"), "").unwrap();
        fs::write(dir.path().join("a.lock"), "").unwrap();
        let _bare = UnixListener::bind(dir.path().join(".sock")).unwrap();
        assert_eq!(list_interfaces(dir.path()).unwrap(), ["a", "b"]);
        assert!(
            list_interfaces(&dir.path().join("missing"))
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn answer_end_finds_the_empty_line() {
        assert_eq!(answer_end(b"\n", 0), Some(1));
        assert_eq!(answer_end(b"errno=0\n\nmore", 0), Some(9));
        assert_eq!(answer_end(b"errno=0\n\n", 7), Some(9));
        assert_eq!(answer_end(b"errno=0\n", 0), None);
        assert_eq!(answer_end(b"", 0), None);
    }
}
