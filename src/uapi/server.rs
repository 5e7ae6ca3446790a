//! The server: accept connections, check who is calling, run the protocol
//! on each admitted connection in its own task, hand requests to the device
//! through gotatun's [`UapiClient`].
//!
//! # Who is served
//!
//! Every accepted connection is checked before a byte is read (see
//! [`crate::peer`] for how the peer's user namespace is found; a confined
//! engine asks its inspector process, see [`crate::inspector`]):
//!
//! | peer's user namespace                       | answer  |
//! |---------------------------------------------|---------|
//! | ours                                        | served  |
//! | an ancestor, or beside our subtree          | served  |
//! | nested in ours (`run`'s command, the attach target, anything below them) | refused |
//! | not inspectable (`EACCES`), uid 0, and we are not root of the initial user namespace | served  |
//! | not inspectable, any other uid              | refused |
//! | gone, or its PID now names another process  | refused |
//!
//! Root of the initial user namespace (or its inspector, which keeps
//! `CAP_SYS_PTRACE`) can inspect every process, so there "not inspectable"
//! means an LSM hides the process, and it is refused whatever its uid.
//!
//! The socket's mode (0600) already keeps other users out; the check is for
//! the owner's own uid seen from inside the tunnel's namespaces, where the
//! target's root *is* the owner. A non-root engine can inspect every inside
//! process (it holds `CAP_SYS_PTRACE` over everything inside), and a root
//! engine can inspect every process; so "uninspectable" is a process above
//! us, which got past the mode by being our uid or root. Of those only uid 0
//! gets through: root's `wg` at an unprivileged engine's socket via a
//! `/var/run/wireguard` symlink, or the owner's shell at an engine in the
//! owner's rootless container (where the owner is uid 0). Requiring uid 0
//! also covers an LSM that hides an inside process from us: inside uids are
//! the owner's, never 0, for a non-root engine. The price: root outside a
//! container whose namespace does not map it reads as uid 65534 and is
//! refused.
//! A refused connection is closed at once, nothing read or written, and
//! logged with its PID, at most [`REFUSAL_LOG_BURST`] times per
//! [`REFUSAL_LOG_WINDOW`] so a flood of them does not flood the log.
//!
//! # Slots
//!
//! At most [`Limits::max_connections`] connections are served at once, and
//! idle ones must not lock the owner's `show`/`wg` out: when every slot is
//! taken, the connection that has waited longest for its next request is
//! closed to make room. Only when every slot is in the middle of a request is
//! the new connection closed. A connection that has not started its first
//! request within [`Limits::first_request_timeout`] is closed: `wg` and our
//! own client write their request right after `connect`, so a silent one is
//! a leak or a probe, and holding its descriptor for the full
//! [`Limits::idle_timeout`] buys nothing.

#![forbid(unsafe_code)]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

use std::collections::HashMap;
use std::io;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use gotatun::device::uapi::UapiClient;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::task::{AbortHandle, JoinSet};

use crate::inspector::PeerCheck;
use crate::peer::{Peer, Relation};

use super::UapiError;
use super::frame::{FrameError, Limits, error_response, parse_request, read_request};
use super::socket::UapiSocket;

/// Pause after an accept error caused by resource exhaustion (EMFILE, …), so a
/// full fd table does not turn the accept loop into a busy loop.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// How many refused connections are logged per [`REFUSAL_LOG_WINDOW`].
const REFUSAL_LOG_BURST: u32 = 5;

/// See [`REFUSAL_LOG_BURST`].
const REFUSAL_LOG_WINDOW: Duration = Duration::from_secs(10);

/// Whether the process at the other end may use the socket; see the module
/// documentation for the table. `sees_everyone`: we inspect as root of the
/// initial user namespace, so an uninspectable peer is one an LSM hides.
fn admitted(peer: &Peer, sees_everyone: bool) -> bool {
    match peer.relation {
        Relation::Same | Relation::Outside => true,
        Relation::Uninspectable => peer.uid == 0 && !sees_everyone,
        Relation::Inside | Relation::Gone => false,
    }
}

/// Logs refused connections, a few per window, and how many went unlogged.
#[derive(Debug)]
struct RefusalLog {
    window_start: Instant,
    logged: u32,
    suppressed: u64,
}

impl RefusalLog {
    fn new() -> Self {
        Self {
            window_start: Instant::now(),
            logged: 0,
            suppressed: 0,
        }
    }

    fn refused(&mut self, peer: &Peer) {
        let now = Instant::now();
        if now.duration_since(self.window_start) >= REFUSAL_LOG_WINDOW {
            if self.suppressed > 0 {
                tracing::warn!(
                    "{} more UAPI connections refused in the last {REFUSAL_LOG_WINDOW:?} (not logged one by one)",
                    self.suppressed
                );
            }
            *self = Self::new();
        }
        if self.logged < REFUSAL_LOG_BURST {
            self.logged += 1;
            let why = match peer.relation {
                Relation::Inside => "it runs inside the tunnel's namespaces",
                Relation::Gone => "it exited before it could be identified",
                _ => {
                    "its namespace cannot be inspected (another user's process, or a non-dumpable one) and it is not root's"
                }
            };
            tracing::warn!(
                pid = peer.pid,
                uid = peer.uid,
                "refused a UAPI connection from PID {}: {why}",
                peer.pid
            );
        } else {
            self.suppressed += 1;
        }
    }
}

/// Whether a connection is waiting for its next request, and since when;
/// shared between its task and the accept loop that may evict it.
#[derive(Debug)]
struct Activity {
    idle_since: Mutex<Option<Instant>>,
}

impl Activity {
    /// A new connection waits for its first request from the start, before
    /// its task first runs: in a burst of accepts, tasks not yet polled must
    /// not look busy, or they would fill every slot and lock the owner out.
    fn new() -> Self {
        Self {
            idle_since: Mutex::new(Some(Instant::now())),
        }
    }

    fn set_idle(&self, idle: bool) {
        *self
            .idle_since
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = idle.then(Instant::now);
    }

    fn idle_since(&self) -> Option<Instant> {
        *self
            .idle_since
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// The connections being served, by task.
#[derive(Debug, Default)]
struct Slots {
    taken: HashMap<tokio::task::Id, (Arc<Activity>, AbortHandle)>,
}

impl Slots {
    /// Makes room for one more connection under `max`: `false` when every
    /// slot is busy mid-request. Evicts the connection idle the longest.
    fn make_room(&mut self, max: usize) -> bool {
        if self.taken.len() < max {
            return true;
        }
        let oldest = self
            .taken
            .iter()
            .filter_map(|(id, (activity, _))| activity.idle_since().map(|t| (t, *id)))
            .min();
        let Some((since, id)) = oldest else {
            return false;
        };
        if let Some((_, handle)) = self.taken.remove(&id) {
            tracing::debug!(
                "all {max} UAPI slots taken; closing the connection idle for {:?}",
                since.elapsed()
            );
            handle.abort();
        }
        true
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
    activity: &Activity,
) -> ConnectionEnd {
    // BufReader passes writes through to the stream.
    let mut conn = tokio::io::BufReader::new(stream);
    let mut wait = limits.first_request_timeout;
    loop {
        // Idle (evictable) until the next request's first byte arrives.
        activity.set_idle(true);
        match tokio::time::timeout(wait, conn.fill_buf()).await {
            Err(_) => {
                tracing::debug!("UAPI connection sent nothing for {wait:?}; closing");
                return ConnectionEnd::Closed;
            }
            Ok(Ok([])) => {
                tracing::debug!("UAPI connection closed by the client");
                return ConnectionEnd::Closed;
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                tracing::debug!("UAPI connection read failed: {e}");
                return ConnectionEnd::Closed;
            }
        }
        activity.set_idle(false);
        wait = limits.idle_timeout;
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
pub fn serve(
    socket: &UapiSocket,
    client: UapiClient,
    check: PeerCheck,
) -> Result<Serving, UapiError> {
    let listener = socket.tokio_listener()?;
    let task = tokio::spawn(serve_checked(listener, client, Limits::default(), check));
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
    match PeerCheck::in_process() {
        Ok(check) => serve_checked(listener, client, limits, check).await,
        Err(e) => Err(UapiError::Serve {
            path: listener_path(&listener),
            error: io::Error::other(e),
        }),
    }
}

fn listener_path(listener: &tokio::net::UnixListener) -> PathBuf {
    listener
        .local_addr()
        .ok()
        .and_then(|a| a.as_pathname().map(Path::to_owned))
        .unwrap_or_default()
}

/// [`serve_listener`], placing clients with `check`.
async fn serve_checked(
    listener: tokio::net::UnixListener,
    client: UapiClient,
    limits: Limits,
    mut check: PeerCheck,
) -> Result<(), UapiError> {
    let serve_err = |error: io::Error| UapiError::Serve {
        path: listener_path(&listener),
        error,
    };
    let mut refusals = RefusalLog::new();
    let mut connections = JoinSet::new();
    let mut slots = Slots::default();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    match check.inspect(stream.as_fd()).await {
                        Ok(peer) if admitted(&peer, check.sees_everyone()) => {
                            tracing::debug!(pid = peer.pid, uid = peer.uid, "UAPI connection accepted");
                        }
                        Ok(peer) => {
                            refusals.refused(&peer);
                            continue;
                        }
                        Err(e) => {
                            tracing::warn!("refused a UAPI connection: {e}");
                            continue;
                        }
                    }
                    if !slots.make_room(limits.max_connections) {
                        tracing::warn!(
                            "all {} UAPI connections are busy with a request; closing the new one",
                            limits.max_connections
                        );
                        continue;
                    }
                    let client = client.clone();
                    let activity = Arc::new(Activity::new());
                    let handle = connections.spawn({
                        let activity = Arc::clone(&activity);
                        async move { handle_connection(stream, &client, &limits, &activity).await }
                    });
                    slots.taken.insert(handle.id(), (activity, handle));
                }
                Err(e) if is_transient_accept_error(&e) => {
                    tracing::warn!("accepting a UAPI connection failed: {e}");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
                Err(error) => return Err(serve_err(error)),
            },
            Some(joined) = connections.join_next_with_id(), if !connections.is_empty() => match joined {
                Ok((id, ConnectionEnd::Closed)) => {
                    slots.taken.remove(&id);
                }
                Ok((_, ConnectionEnd::DeviceGone)) => {
                    tracing::debug!("device stopped; closing all UAPI connections");
                    return Ok(());
                }
                Err(e) => {
                    slots.taken.remove(&e.id());
                    if e.is_panic() {
                        tracing::warn!("a UAPI connection task panicked");
                    }
                }
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
    use std::fs;
    use std::net::{Ipv4Addr, Ipv6Addr};
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
    use tokio::net::UnixStream;

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
        assert_eq!(ask(&mut conn, b"hello\n\n").await, "errno=-22\n");
        assert_eq!(
            ask(&mut conn, b"set=1\nbogus_key=1\n\n").await,
            "errno=-22\n"
        );
        assert_eq!(ask(&mut conn, b"get=1\nextra=1\n\n").await, "errno=-22\n");
        let panicky = format!("set=1\nprivate_key={}\u{e9}a\n\n", "a".repeat(61));
        assert_eq!(ask(&mut conn, panicky.as_bytes()).await, "errno=-22\n");
        assert_eq!(
            ask(&mut conn, b"set=1\nlisten_port=\xff\n\n").await,
            "errno=-22\n"
        );
        // gotatun's own validation travels back as its errno.
        let dup = format!(
            "set=1\npublic_key={k}\npublic_key={k}\n\n",
            k = public_hex(NEW_PEER_KEY)
        );
        assert_eq!(ask(&mut conn, dup.as_bytes()).await, "errno=-22\n");
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
        assert_eq!(ask(&mut conn, long.as_bytes()).await, "errno=-22\n");
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
        assert_eq!(rest, "errno=-22\n\n");
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

    async fn serving_with(limits: Limits) -> (tempfile::TempDir, UapiSocket, impl Sized) {
        let tmp = tempfile::tempdir().unwrap();
        let sock = UapiSocket::bind(tmp.path(), "wg0").unwrap();
        let (client, server) = UapiServer::new();
        let device = device(server).await;
        let serving = tokio::spawn(serve_listener(
            sock.tokio_listener().unwrap(),
            client,
            limits,
        ));
        (tmp, sock, (device, AbortOnDrop(serving)))
    }

    struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

    impl<T> Drop for AbortOnDrop<T> {
        fn drop(&mut self) {
            self.0.abort();
        }
    }

    #[tokio::test]
    async fn the_connection_idle_longest_makes_room() {
        let limits = Limits {
            max_connections: 2,
            ..Limits::default()
        };
        let (_tmp, sock, _serving) = serving_with(limits).await;
        let mut oldest = connect(sock.path()).await;
        assert!(ask(&mut oldest, b"get=1\n\n").await.ends_with("errno=0\n"));
        tokio::time::sleep(Duration::from_millis(20)).await;
        let mut younger = connect(sock.path()).await;
        assert!(ask(&mut younger, b"get=1\n\n").await.ends_with("errno=0\n"));
        // Both slots idle: the third connection is served, the oldest goes.
        let mut third = connect(sock.path()).await;
        assert!(ask(&mut third, b"get=1\n\n").await.ends_with("errno=0\n"));
        expect_closed(&mut oldest).await;
        assert!(ask(&mut younger, b"get=1\n\n").await.ends_with("errno=0\n"));
    }

    #[tokio::test]
    async fn many_idle_connections_never_lock_the_owner_out() {
        let (_tmp, sock, _serving) = serving_with(Limits::default()).await;
        let mut idle = Vec::new();
        for _ in 0..300 {
            idle.push(connect(sock.path()).await);
        }
        let mut conn = connect(sock.path()).await;
        assert!(ask(&mut conn, b"get=1\n\n").await.ends_with("errno=0\n"));
    }

    #[tokio::test]
    async fn a_new_connection_is_closed_only_when_every_slot_is_mid_request() {
        let limits = Limits {
            max_connections: 1,
            ..Limits::default()
        };
        let (_tmp, sock, _serving) = serving_with(limits).await;
        let mut busy = connect(sock.path()).await;
        busy.get_mut().write_all(b"get=1\n").await.unwrap();
        // Let the server see the first byte.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut second = connect(sock.path()).await;
        expect_closed(&mut second).await;
        assert!(ask(&mut busy, b"\n").await.ends_with("errno=0\n"));
    }

    #[tokio::test]
    async fn a_silent_new_connection_is_closed_early() {
        let limits = Limits {
            first_request_timeout: Duration::from_millis(100),
            ..Limits::default()
        };
        let (_tmp, sock, _serving) = serving_with(limits).await;
        let mut silent = connect(sock.path()).await;
        let started = Instant::now();
        expect_closed(&mut silent).await;
        assert!(started.elapsed() < Duration::from_secs(5));
        // After a first request the longer idle timeout applies.
        let mut talker = connect(sock.path()).await;
        assert!(ask(&mut talker, b"get=1\n\n").await.ends_with("errno=0\n"));
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(ask(&mut talker, b"get=1\n\n").await.ends_with("errno=0\n"));
    }

    #[test]
    fn refusals_are_logged_a_few_per_window() {
        let mut log = RefusalLog::new();
        let peer = Peer {
            pid: 7,
            uid: 1000,
            relation: Relation::Inside,
        };
        for _ in 0..1000 {
            log.refused(&peer);
        }
        assert_eq!(log.logged, REFUSAL_LOG_BURST);
        assert_eq!(log.suppressed, 1000 - u64::from(REFUSAL_LOG_BURST));
        // A new window starts over (and reports what it suppressed).
        log.window_start -= REFUSAL_LOG_WINDOW;
        log.refused(&peer);
        assert_eq!((log.logged, log.suppressed), (1, 0));
    }

    #[test]
    fn the_decision_rule() {
        let peer = |relation, uid| Peer {
            pid: 1,
            uid,
            relation,
        };
        assert!(admitted(&peer(Relation::Same, 1000), false));
        assert!(admitted(&peer(Relation::Outside, 1000), false));
        assert!(admitted(&peer(Relation::Uninspectable, 0), false));
        assert!(!admitted(&peer(Relation::Uninspectable, 1000), false));
        assert!(!admitted(&peer(Relation::Inside, 0), false));
        assert!(!admitted(&peer(Relation::Inside, 1000), false));
        assert!(!admitted(&peer(Relation::Gone, 0), false));
        // A root inspector in the initial namespace sees every process: an
        // uninspectable one is hidden by an LSM and gets no benefit of the
        // doubt, whatever its uid.
        assert!(!admitted(&peer(Relation::Uninspectable, 0), true));
        assert!(admitted(&peer(Relation::Same, 0), true));
    }

    /// A process in a user namespace nested in ours is closed on at once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_process_inside_is_refused() {
        let (_tmp, sock, _serving) = serving_with(Limits::default()).await;
        let path = sock.path().to_owned();
        // The child reports a failure, which fails this test.
        tokio::task::spawn_blocking(move || {
            crate::testns::in_namespace(
                "a_process_inside_is_refused",
                crate::testns::Isolation::ForeignNetns,
                move || {
                    use std::io::{Read, Write};
                    let mut conn = std::os::unix::net::UnixStream::connect(&path)?;
                    // Written into the socket buffer, never read.
                    let _ = conn.write_all(b"get=1\n\n");
                    let mut got = Vec::new();
                    let _ = conn.read_to_end(&mut got);
                    crate::testns::ensure(got.is_empty(), || {
                        format!("got {:?}", String::from_utf8_lossy(&got))
                    })
                },
            );
        })
        .await
        .unwrap();
        // And the owner still is served.
        let mut conn = connect(sock.path()).await;
        assert!(ask(&mut conn, b"get=1\n\n").await.ends_with("errno=0\n"));
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
        let serving = serve(&sock, client, PeerCheck::in_process().unwrap()).unwrap();
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
        let mut serving = serve(&sock, client, PeerCheck::in_process().unwrap()).unwrap();
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
        let dir = Path::new(crate::uapi::socket::ROOT_DIR);
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
