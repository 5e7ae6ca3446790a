//! `--publish [HOSTADDR:]HOSTPORT:PORT[/tcp|/udp]`: a listener on the host
//! whose connections reach PORT on the namespace's loopback, while nothing
//! inside gains a way out.
//!
//! Two processes, one on each side, and a `SOCK_SEQPACKET` pair between them:
//! - the **forwarder** lives in the caller's network namespace. It holds the
//!   listeners, bound by `run`/`up` before anything else starts (so a port in
//!   use is a one-line error that leaves nothing behind), accepts, and copies.
//!   It is forked from the engine before any thread exists and execs this
//!   binary afresh (so it holds no key), keeps only the listeners and its
//!   end of the pair, has no new privileges and no capability, is
//!   non-dumpable, and dies with the engine (parent-death signal). Landlock
//!   takes the filesystem, TCP `bind`/`connect`, abstract unix sockets and
//!   signals from it (`sandbox::landlock::forwarder`): it can accept and copy,
//!   not open a connection of its own. It is not the engine: accepting,
//!   `splice` and pipes are syscalls the confined engine has no use for, and
//!   a bug in copying bytes for the host's clients should not be a bug in the
//!   process that holds the keys' sockets and the TUN.
//! - the **connector** lives in the namespace (a fresh exec of this binary,
//!   so it holds no key): for `up` it is the holder itself
//!   (`named::holder`), for `run` a process started next to the command. For
//!   each question "tcp/udp PORT" it makes a socket in the namespace,
//!   connects it (non-blocking) to 127.0.0.1:PORT and hands it back over the
//!   pair (`SCM_RIGHTS`). It never holds a socket of the host's: connections
//!   go host → inside only, and the namespace's loopback is all it reaches.
//!
//! TCP is copied with `splice(2)` through a pipe per direction (no copy to
//! user space), and an end-of-file in one direction becomes `shutdown(WR)`
//! on the other (half-close), so request/response protocols that close their
//! sending side work. UDP keeps one inner socket per host source address
//! (so replies find their way back), dropped after [`UDP_IDLE`] without
//! traffic; at most [`UDP_FLOWS`] at once per published port.

#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

use std::collections::HashMap;
use std::ffi::{CString, OsString};
use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::fcntl::{FcntlArg, OFlag, SpliceFFlags, fcntl, splice};
use nix::sys::socket::{
    AddressFamily, Shutdown, SockFlag, SockType, SockaddrIn, connect, shutdown, socket,
};
use tokio::io::Interest;
use tokio::net::{TcpListener, TcpStream, UdpSocket};

use crate::fdpass::Channel;
use crate::lifecycle;
use crate::sidecar::Asker;

/// The first argument that makes this binary `run`'s connector.
pub const ARG: &str = "__publish-connect";
/// The first argument that makes this binary the forwarder.
pub const FORWARD_ARG: &str = "__publish-forward";
/// A UDP mapping without traffic in either direction for this long ends.
pub const UDP_IDLE: Duration = Duration::from_secs(60);
/// At most this many UDP source addresses per published port at once; a
/// datagram from a new one beyond that is dropped.
pub const UDP_FLOWS: usize = 1024;
/// At most this many TCP connections at once per published port; more wait
/// in the listener's backlog (each costs two sockets and two pipes).
pub const TCP_CONNECTIONS: usize = 1024;
/// How long the forwarder waits for the connector to answer.
const ASK_TIMEOUT: Duration = Duration::from_secs(5);
/// Pipe size for `splice`: fewer round trips than the default 64 KiB, and
/// within the unprivileged limit (`/proc/sys/fs/pipe-max-size`, 1 MiB).
const PIPE_SIZE: usize = 1 << 20;

const ANSWER_OK: &[u8] = b"ok";

/// The errors of `--publish`.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error(
        "cannot publish {spec:?}: {why} (hint: [HOSTADDR:]HOSTPORT:PORT[/tcp|/udp], e.g. 8080:80 or 127.0.0.1:5353:53/udp)"
    )]
    Parse { spec: String, why: String },

    #[error(
        "cannot publish {spec}: cannot listen on {addr}/{proto}: {error}{}",
        hint(error)
    )]
    Bind {
        spec: String,
        addr: SocketAddr,
        proto: Proto,
        error: io::Error,
    },

    #[error("cannot start the --publish forwarder: {0}")]
    Spawn(io::Error),
}

fn hint(error: &io::Error) -> &'static str {
    match error.kind() {
        io::ErrorKind::AddrInUse => {
            " (hint: something listens there already; choose another HOSTPORT)"
        }
        io::ErrorKind::AddrNotAvailable => " (hint: HOSTADDR must be an address of this host)",
        io::ErrorKind::PermissionDenied => {
            " (hint: ports below 1024 need privilege; choose a HOSTPORT above 1023)"
        }
        _ => "",
    }
}

/// TCP or UDP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    Tcp,
    Udp,
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        })
    }
}

/// One `--publish` argument.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spec {
    /// Where the host listens.
    pub host: SocketAddr,
    /// The port on the namespace's loopback.
    pub port: u16,
    pub proto: Proto,
}

impl fmt::Display for Spec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}/{}", self.host, self.port, self.proto)
    }
}

impl FromStr for Spec {
    type Err = PublishError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let fail = |why: &str| PublishError::Parse {
            spec: text.to_owned(),
            why: why.to_owned(),
        };
        let (rest, proto) = match text.rsplit_once('/') {
            Some((rest, "tcp")) => (rest, Proto::Tcp),
            Some((rest, "udp")) => (rest, Proto::Udp),
            Some((_, other)) => {
                return Err(fail(&format!("unknown protocol {other:?}, not tcp or udp")));
            }
            None => (text, Proto::Tcp),
        };
        let (rest, port) = rest
            .rsplit_once(':')
            .ok_or_else(|| fail("it needs HOSTPORT:PORT"))?;
        let port = parse_port(port).map_err(|why| fail(&format!("PORT {why}")))?;
        let (addr, host_port) = match rest.rsplit_once(':') {
            Some((addr, host_port)) => (parse_addr(addr).map_err(|why| fail(&why))?, host_port),
            None => (IpAddr::V4(Ipv4Addr::LOCALHOST), rest),
        };
        let host_port = parse_port(host_port).map_err(|why| fail(&format!("HOSTPORT {why}")))?;
        Ok(Spec {
            host: SocketAddr::new(addr, host_port),
            port,
            proto,
        })
    }
}

fn parse_port(text: &str) -> Result<u16, String> {
    match text.parse::<u16>() {
        Ok(0) => Err("0 is no port".to_owned()),
        Ok(port) => Ok(port),
        Err(_) => Err(format!("{text:?} is not a port number (1-65535)")),
    }
}

/// An IPv4 address, or an IPv6 one in brackets.
fn parse_addr(text: &str) -> Result<IpAddr, String> {
    let bare = text
        .strip_prefix('[')
        .and_then(|t| t.strip_suffix(']'))
        .unwrap_or(text);
    let addr: IpAddr = bare
        .parse()
        .map_err(|_| format!("HOSTADDR {text:?} is not an IP address"))?;
    if addr.is_ipv6() && bare.len() == text.len() {
        return Err(format!(
            "HOSTADDR {text:?}: write an IPv6 address in brackets"
        ));
    }
    Ok(addr)
}

/// Parse every `--publish` argument.
pub fn parse_all(specs: &[String]) -> Result<Vec<Spec>, PublishError> {
    specs.iter().map(|s| s.parse()).collect()
}

/// A host listener, bound.
#[derive(Debug)]
pub enum Listener {
    Tcp(std::net::TcpListener),
    Udp(std::net::UdpSocket),
}

impl Listener {
    fn raw_fd(&self) -> RawFd {
        match self {
            Listener::Tcp(l) => l.as_raw_fd(),
            Listener::Udp(s) => s.as_raw_fd(),
        }
    }
}

/// The host's side of `--publish`, bound and waiting for its forwarder.
#[derive(Debug)]
pub struct Bound {
    listeners: Vec<(Spec, Listener)>,
}

impl Bound {
    /// Bind every spec's listener on the host (close-on-exec, as std makes
    /// them), so that a port in use fails before anything starts.
    pub fn bind(specs: &[Spec]) -> Result<Self, PublishError> {
        let mut listeners = Vec::with_capacity(specs.len());
        for spec in specs {
            let bound = match spec.proto {
                Proto::Tcp => std::net::TcpListener::bind(spec.host).map(Listener::Tcp),
                Proto::Udp => std::net::UdpSocket::bind(spec.host).map(Listener::Udp),
            };
            let listener = bound.map_err(|error| PublishError::Bind {
                spec: spec.to_string(),
                addr: spec.host,
                proto: spec.proto,
                error,
            })?;
            listeners.push((spec.clone(), listener));
        }
        Ok(Self { listeners })
    }

    /// Nothing to publish.
    pub fn is_empty(&self) -> bool {
        self.listeners.is_empty()
    }

    /// Fork the forwarder with the listeners and `channel` (the host's end of
    /// the pair whose other end the connector gets); it execs this binary
    /// afresh (so it holds no key) with them. Must be called while the
    /// process is single-threaded; our copies are closed on return.
    pub fn spawn_forwarder(self, channel: Channel) -> Result<nix::unistd::Pid, PublishError> {
        let keep: Vec<RawFd> = self
            .listeners
            .iter()
            .map(|(_, l)| l.raw_fd())
            .chain([channel.as_raw_fd()])
            .collect();
        let mut argv = vec![
            c"wireguard4netns".to_owned(),
            CString::from(c"__publish-forward"),
        ];
        argv.extend(CString::new(channel.as_raw_fd().to_string()));
        for (spec, listener) in &self.listeners {
            let arg = format!("{}:{}:{}", listener.raw_fd(), spec.port, spec.proto);
            argv.extend(CString::new(arg));
        }
        let unset = keep.clone();
        crate::sidecar::spawn_keeping(&keep, crate::sandbox::caps::Keep::default(), move || {
            for &fd in &unset {
                // SAFETY: every descriptor in `keep` is open (we own them:
                // the listeners and the channel); clearing close-on-exec
                // changes no ownership.
                let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
                if fcntl(fd, FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty())).is_err() {
                    return;
                }
            }
            let _ = nix::unistd::execv(c"/proc/self/exe", &argv);
        })
        .map_err(PublishError::Spawn)
    }
}

/// The forwarder, exec'd: take over the channel and the listeners named by
/// `args` (`CHANNEL LISTENER:PORT:PROTO…`), confine, serve. Returns only on
/// a bad command line or a failed confinement.
fn forwarder_from_args(mut args: impl Iterator<Item = OsString>) -> u8 {
    let number = |arg: &str| arg.parse::<RawFd>().ok();
    let Some(channel_fd) = args.next().and_then(|a| number(a.to_str()?)) else {
        return 2;
    };
    // SAFETY: handed over by the process that exec'd us; nothing in this
    // fresh process owns it (checked to be a SOCK_SEQPACKET socket).
    let Ok(channel) = (unsafe { Channel::inherited(channel_fd) }) else {
        return 1;
    };
    let mut listeners = Vec::new();
    for arg in args {
        let Some(listener) = arg.to_str().and_then(inherited_listener) else {
            return 2;
        };
        listeners.push(listener);
    }
    if crate::lifecycle::make_undumpable().is_err()
        || crate::sandbox::landlock::forwarder().is_err()
    {
        return 1;
    }
    forwarder_main(listeners, channel);
    0
}

/// `FD:PORT:PROTO` of an inherited listener, checked to be a socket of that
/// kind before it is taken over.
fn inherited_listener(arg: &str) -> Option<(u16, Listener)> {
    let mut parts = arg.split(':');
    let fd: RawFd = parts.next()?.parse().ok()?;
    let port: u16 = parts.next()?.parse().ok()?;
    let proto = parts.next()?;
    // SAFETY: only borrowed to ask the kernel what it is; an fd that is not
    // open fails `getsockopt` and is not taken.
    let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    let kind = nix::sys::socket::getsockopt(&borrowed, nix::sys::socket::sockopt::SockType).ok()?;
    let want = match proto {
        "tcp" => SockType::Stream,
        "udp" => SockType::Datagram,
        _ => return None,
    };
    if kind != want {
        return None;
    }
    nix::fcntl::fcntl(borrowed, FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC)).ok()?;
    // SAFETY: open and a socket of the expected kind (checked above), handed
    // over by the process that exec'd us: ours alone from here.
    let owned = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    Some((
        port,
        match want {
            SockType::Stream => Listener::Tcp(owned.into()),
            _ => Listener::Udp(owned.into()),
        },
    ))
}

/// The forwarder's life: serve every listener until the engine is gone.
fn forwarder_main(listeners: Vec<(u16, Listener)>, channel: Channel) {
    let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        return;
    };
    runtime.block_on(async move {
        let Ok(inside) = Inside::new(channel) else {
            return;
        };
        let inside = Arc::new(inside);
        let mut tasks = tokio::task::JoinSet::new();
        for (port, listener) in listeners {
            let inside = inside.clone();
            match listener {
                Listener::Tcp(l) => {
                    if l.set_nonblocking(true).is_err() {
                        return;
                    }
                    let Ok(l) = TcpListener::from_std(l) else {
                        return;
                    };
                    tasks.spawn(serve_tcp(l, port, inside));
                }
                Listener::Udp(s) => {
                    if s.set_nonblocking(true).is_err() {
                        return;
                    }
                    let Ok(s) = UdpSocket::from_std(s) else {
                        return;
                    };
                    tasks.spawn(serve_udp(Arc::new(s), port, inside));
                }
            }
        }
        // They run until the engine's death kills us (parent-death signal).
        while tasks.join_next().await.is_some() {}
    });
}

/// The forwarder's end of the pair: one question at a time, each with a
/// sequence number that its answer repeats, so a late answer to a question
/// that timed out is not taken for the next one's ([`Asker`]).
struct Inside {
    asker: tokio::sync::Mutex<Asker>,
}

impl Inside {
    fn new(channel: Channel) -> io::Result<Self> {
        Ok(Self {
            asker: tokio::sync::Mutex::new(Asker::new(channel)?),
        })
    }

    /// A socket in the namespace, connected (or connecting) to
    /// 127.0.0.1:`port`.
    async fn open(&self, proto: Proto, port: u16) -> io::Result<OwnedFd> {
        let kind = match proto {
            Proto::Tcp => b't',
            Proto::Udp => b'u',
        };
        let [lo, hi] = port.to_le_bytes();
        let answer = self
            .asker
            .lock()
            .await
            .ask(&[kind, lo, hi], None, ASK_TIMEOUT)
            .await
            .map_err(|e| match e.kind() {
                io::ErrorKind::UnexpectedEof => io::Error::other("the connector has exited"),
                _ => e,
            })?;
        match answer.fd {
            Some(fd) if answer.data == ANSWER_OK => Ok(fd),
            _ => Err(io::Error::other(
                String::from_utf8_lossy(&answer.data).into_owned(),
            )),
        }
    }
}

/// Accept forever; each connection is relayed in its own task, at most
/// [`TCP_CONNECTIONS`] at once.
async fn serve_tcp(listener: TcpListener, port: u16, inside: Arc<Inside>) {
    let slots = Arc::new(tokio::sync::Semaphore::new(TCP_CONNECTIONS));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let client = match listener.accept().await {
            Ok((client, _)) => client,
            // Out of descriptors, or a connection reset before we took it:
            // wait a little rather than spin.
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let inside = inside.clone();
        tokio::spawn(async move {
            let _ = relay_tcp(client, port, &inside).await;
            drop(slot);
        });
    }
}

async fn relay_tcp(client: TcpStream, port: u16, inside: &Inside) -> io::Result<()> {
    let fd = inside.open(Proto::Tcp, port).await?;
    let server = TcpStream::from_std(std::net::TcpStream::from(fd))?;
    // The connector's connect was non-blocking: its outcome is known once
    // the socket is writable.
    server.writable().await?;
    if let Some(error) = server.take_error()? {
        return Err(error);
    }
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    tokio::try_join!(pump(&client, &server), pump(&server, &client))?;
    Ok(())
}

/// Copy `from` → `to` with `splice` through a pipe until end-of-file, then
/// shut `to`'s sending side (half-close). Returns the bytes copied.
async fn pump(from: &TcpStream, to: &TcpStream) -> io::Result<u64> {
    let (pipe_r, pipe_w) = nix::unistd::pipe2(OFlag::O_NONBLOCK | OFlag::O_CLOEXEC)?;
    let size = i32::try_from(PIPE_SIZE).unwrap_or(i32::MAX);
    let capacity = fcntl(&pipe_w, FcntlArg::F_SETPIPE_SZ(size))
        .ok()
        .and_then(|c| usize::try_from(c).ok())
        .unwrap_or(1 << 16);
    let flags = SpliceFFlags::SPLICE_F_MOVE | SpliceFFlags::SPLICE_F_NONBLOCK;
    let mut total = 0u64;
    loop {
        let filled = from
            .async_io(Interest::READABLE, || {
                Ok(splice(from, None, &pipe_w, None, capacity, flags)?)
            })
            .await?;
        if filled == 0 {
            shutdown(to.as_raw_fd(), Shutdown::Write)?;
            return Ok(total);
        }
        let mut left = filled;
        while left > 0 {
            left -= to
                .async_io(Interest::WRITABLE, || {
                    Ok(splice(&pipe_r, None, to, None, left, flags)?)
                })
                .await?;
        }
        total += filled as u64;
    }
}

/// One host source's mapping to a socket inside.
struct Flow {
    socket: UdpSocket,
    /// Milliseconds since `epoch` of the latest datagram either way.
    last: std::sync::atomic::AtomicU64,
}

type Flows = Arc<Mutex<HashMap<SocketAddr, Arc<Flow>>>>;

/// Receive datagrams on the host listener and send each through its source's
/// flow, opening one for a new source.
async fn serve_udp(host: Arc<UdpSocket>, port: u16, inside: Arc<Inside>) {
    serve_udp_flows(host, port, inside, Flows::default(), UDP_IDLE).await;
}

/// [`serve_udp`] with its table of flows and idle timeout given (tests).
async fn serve_udp_flows(
    host: Arc<UdpSocket>,
    port: u16,
    inside: Arc<Inside>,
    flows: Flows,
    idle_timeout: Duration,
) {
    let epoch = Instant::now();
    let mut buf = vec![0u8; 65536];
    loop {
        let Ok((len, source)) = host.recv_from(&mut buf).await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let known = flows.lock().ok().and_then(|f| f.get(&source).cloned());
        let flow = match known {
            Some(flow) => flow,
            None => {
                if flows.lock().map_or(true, |f| f.len() >= UDP_FLOWS) {
                    continue;
                }
                let Ok(flow) = open_flow(&inside, port).await else {
                    continue;
                };
                if let Ok(mut f) = flows.lock() {
                    f.insert(source, flow.clone());
                }
                let reply = Reply {
                    host: host.clone(),
                    source,
                    flows: flows.clone(),
                    epoch,
                    idle_timeout,
                };
                tokio::spawn(udp_replies(flow.clone(), reply));
                flow
            }
        };
        touch(&flow, epoch);
        // Awaited: a fresh socket's readiness is not known yet, so `try_send`
        // would drop the first datagram of every flow.
        let _ = flow.socket.send(&buf[..len]).await;
    }
}

async fn open_flow(inside: &Inside, port: u16) -> io::Result<Arc<Flow>> {
    let fd = inside.open(Proto::Udp, port).await?;
    let socket = UdpSocket::from_std(std::net::UdpSocket::from(fd))?;
    Ok(Arc::new(Flow {
        socket,
        last: std::sync::atomic::AtomicU64::new(0),
    }))
}

fn touch(flow: &Flow, epoch: Instant) {
    let now = u64::try_from(epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
    flow.last.store(now, std::sync::atomic::Ordering::Relaxed);
}

/// Where a flow's replies go, and when it ends.
struct Reply {
    host: Arc<UdpSocket>,
    source: SocketAddr,
    flows: Flows,
    epoch: Instant,
    idle_timeout: Duration,
}

/// Send what comes back from inside to the flow's source, until its idle
/// timeout ([`UDP_IDLE`]) passes without traffic either way; then forget
/// the flow.
async fn udp_replies(flow: Arc<Flow>, reply: Reply) {
    let Reply {
        host,
        source,
        flows,
        epoch,
        idle_timeout,
    } = reply;
    let mut buf = vec![0u8; 65536];
    loop {
        let last = Duration::from_millis(flow.last.load(std::sync::atomic::Ordering::Relaxed));
        let idle = epoch.elapsed().saturating_sub(last);
        if idle >= idle_timeout {
            break;
        }
        match tokio::time::timeout(idle_timeout - idle, flow.socket.recv(&mut buf)).await {
            Ok(Ok(len)) => {
                touch(&flow, epoch);
                let _ = host.send_to(&buf[..len], source).await;
            }
            // ECONNREFUSED (nothing listens inside yet) and the like: the
            // flow stays until it is idle.
            Ok(Err(_)) => tokio::time::sleep(Duration::from_millis(10)).await,
            Err(_elapsed) => {}
        }
    }
    if let Ok(mut f) = flows.lock() {
        f.remove(&source);
    }
}

/// The connector's command line: this binary again, [`ARG`] and the
/// channel's descriptor (which must survive the exec).
fn connector_command(fd: RawFd) -> Vec<CString> {
    [
        c"wireguard4netns".to_owned(),
        CString::from(c"__publish-connect"),
    ]
    .into_iter()
    .chain(CString::new(fd.to_string()).ok())
    .collect()
}

/// In `run`'s namespace child, just before it execs the command: start the
/// connector, a fresh exec of this binary serving `channel`, as a grandchild
/// (so the command does not find a child it never started) that ends when
/// the forwarder does (end-of-file on the pair).
pub fn start_connector(channel: &Channel) -> Result<(), String> {
    channel
        .keep_across_exec()
        .map_err(|e| format!("cannot hand the --publish channel on: {e}"))?;
    let argv = connector_command(channel.as_raw_fd());
    match lifecycle::fork_before_threads().map_err(|e| format!("cannot fork the connector: {e}"))? {
        nix::unistd::ForkResult::Child => {
            if let Ok(nix::unistd::ForkResult::Parent { .. }) = lifecycle::fork_before_threads() {
                lifecycle::exit_now(0);
            }
            let _ = nix::unistd::execv(c"/proc/self/exe", &argv);
            lifecycle::exit_now(1)
        }
        nix::unistd::ForkResult::Parent { child } => {
            let _ = nix::sys::wait::waitpid(child, None);
            Ok(())
        }
    }
}

/// If this process was started as `run`'s connector or as the forwarder,
/// serve and return the exit status; `None` for every other command line.
pub fn main_if_asked() -> Option<u8> {
    let mut args = std::env::args_os().skip(1);
    match args.next() {
        Some(arg) if arg == FORWARD_ARG => {
            if let Ok(comm) = CString::new("w4n-forward") {
                let _ = nix::sys::prctl::set_name(&comm);
            }
            return Some(forwarder_from_args(args));
        }
        Some(arg) if arg == ARG => {}
        _ => return None,
    }
    if let Ok(comm) = CString::new("w4n-connect") {
        let _ = nix::sys::prctl::set_name(&comm);
    }
    Some(serve_inherited(args.next()))
}

/// Serve the connector's channel inherited as descriptor `fd` (an argument)
/// until the forwarder goes away; for `run`'s connector and `up`'s holder.
pub fn serve_inherited(fd: Option<OsString>) -> u8 {
    let Some(fd) = fd.and_then(|a| a.to_str()?.parse::<RawFd>().ok()) else {
        return 2;
    };
    // SAFETY: the descriptor was handed over by the process that exec'd us;
    // nothing in this fresh process owns it.
    let Ok(channel) = (unsafe { Channel::inherited(fd) }) else {
        return 1;
    };
    // Stdio is the command's (its terminal): not ours to keep open.
    if let Ok(null) = std::fs::File::options()
        .read(true)
        .write(true)
        .open("/dev/null")
    {
        for stdio in [
            nix::unistd::dup2_stdin,
            nix::unistd::dup2_stdout,
            nix::unistd::dup2_stderr,
        ] {
            let _ = stdio(&null);
        }
    }
    serve(&channel);
    0
}

/// Answer each question with a socket, until end-of-file.
fn serve(channel: &Channel) {
    crate::sidecar::serve(channel, |question, _| match open_inside(question) {
        Ok(socket) => (ANSWER_OK.to_vec(), Some(socket)),
        Err(e) => (format!("cannot connect inside: {e}").into_bytes(), None),
    })
}

/// A question's socket: `t`/`u` and a port (little-endian) make a TCP or UDP
/// socket connected, or connecting, to 127.0.0.1:PORT.
fn open_inside(question: &[u8]) -> io::Result<OwnedFd> {
    let &[kind, lo, hi] = question else {
        return Err(io::ErrorKind::InvalidData.into());
    };
    let kind = match kind {
        b't' => SockType::Stream,
        b'u' => SockType::Datagram,
        _ => return Err(io::ErrorKind::InvalidData.into()),
    };
    let port = u16::from_le_bytes([lo, hi]);
    let fd = socket(
        AddressFamily::Inet,
        kind,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    let [a, b, c, d] = Ipv4Addr::LOCALHOST.octets();
    match connect(fd.as_raw_fd(), &SockaddrIn::new(a, b, c, d, port)) {
        Ok(()) | Err(nix::errno::Errno::EINPROGRESS) => Ok(fd),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(text: &str) -> Spec {
        text.parse().unwrap()
    }

    #[test]
    fn specs_parse() {
        let local = |port| SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        assert_eq!(
            spec("8080:80"),
            Spec {
                host: local(8080),
                port: 80,
                proto: Proto::Tcp
            }
        );
        assert_eq!(spec("127.0.0.1:8080:80/tcp"), spec("8080:80"));
        assert_eq!(spec("5353:53/udp").proto, Proto::Udp);
        assert_eq!(
            spec("0.0.0.0:1:2").host,
            SocketAddr::from(([0, 0, 0, 0], 1))
        );
        assert_eq!(spec("[::1]:8080:80").host, "[::1]:8080".parse().unwrap());
    }

    #[test]
    fn bad_specs_say_why() {
        for (text, why) in [
            ("8080", "it needs HOSTPORT:PORT"),
            ("8080:80/sctp", "unknown protocol \"sctp\""),
            ("8080:0", "PORT 0 is no port"),
            ("x:80", "HOSTPORT \"x\" is not a port number"),
            ("8080:70000", "PORT \"70000\" is not a port number"),
            ("host:8080:80", "HOSTADDR \"host\" is not an IP address"),
            (
                "::1:8080:80",
                "HOSTADDR \"::1\": write an IPv6 address in brackets",
            ),
        ] {
            let err = text.parse::<Spec>().unwrap_err().to_string();
            assert!(
                err.starts_with(&format!("cannot publish {text:?}: {why}")),
                "{text}: {err}"
            );
            assert!(!err.contains('\n'), "{err}");
        }
    }

    #[test]
    fn a_port_in_use_is_refused() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = taken.local_addr().unwrap().port();
        let err = Bound::bind(&[spec(&format!("{port}:80"))])
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with(&format!(
                "cannot publish 127.0.0.1:{port}:80/tcp: cannot listen on 127.0.0.1:{port}/tcp: "
            )) && err.contains("choose another HOSTPORT"),
            "{err}"
        );
    }

    /// The forwarder's side against a connector serving in a thread of this
    /// process (so "inside" is this network namespace): a TCP relay passes
    /// a half-close on both ways, a refused inner port closes the client, and
    /// a UDP flow answers its source and is forgotten once idle.
    #[test]
    fn the_forwarder_relays_and_forgets_idle_flows() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (host_end, inner_end) = crate::fdpass::channel_pair().unwrap();
        std::thread::spawn(move || serve(&inner_end));
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let inside = Arc::new(Inside::new(host_end).unwrap());
            // TCP: an inner server that answers after the client's EOF.
            let inner = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let inner_port = inner.local_addr().unwrap().port();
            tokio::spawn(async move {
                let (mut c, _) = inner.accept().await.unwrap();
                let mut got = Vec::new();
                c.read_to_end(&mut got).await.unwrap();
                c.write_all(&[got.as_slice(), b" back"].concat())
                    .await
                    .unwrap();
            });
            let front = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let front_addr = front.local_addr().unwrap();
            tokio::spawn(serve_tcp(front, inner_port, inside.clone()));
            let mut client = TcpStream::connect(front_addr).await.unwrap();
            client.write_all(b"there").await.unwrap();
            client.shutdown().await.unwrap();
            let mut answer = Vec::new();
            client.read_to_end(&mut answer).await.unwrap();
            assert_eq!(answer, b"there back");

            // Nothing listens inside: the client sees its connection end.
            let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let closed_port = closed.local_addr().unwrap().port();
            drop(closed);
            let front = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let front_addr = front.local_addr().unwrap();
            tokio::spawn(serve_tcp(front, closed_port, inside.clone()));
            let mut client = TcpStream::connect(front_addr).await.unwrap();
            let mut rest = Vec::new();
            let read = tokio::time::timeout(Duration::from_secs(5), client.read_to_end(&mut rest));
            assert!(matches!(read.await, Ok(Ok(0)) | Ok(Err(_))));

            // UDP: an echo inside, a flow per source, gone when idle.
            let echo = UdpSocket::bind("127.0.0.1:0").await.unwrap();
            let echo_port = echo.local_addr().unwrap().port();
            tokio::spawn(async move {
                let mut buf = [0u8; 64];
                while let Ok((n, from)) = echo.recv_from(&mut buf).await {
                    let _ = echo.send_to(&buf[..n], from).await;
                }
            });
            let host = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
            let host_addr = host.local_addr().unwrap();
            let flows = Flows::default();
            let idle = Duration::from_millis(300);
            tokio::spawn(serve_udp_flows(
                host,
                echo_port,
                inside,
                flows.clone(),
                idle,
            ));
            let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
            client.send_to(b"ping", host_addr).await.unwrap();
            let mut buf = [0u8; 64];
            let n = tokio::time::timeout(Duration::from_secs(5), client.recv(&mut buf))
                .await
                .unwrap()
                .unwrap();
            assert_eq!(&buf[..n], b"ping");
            assert_eq!(flows.lock().unwrap().len(), 1);
            tokio::time::sleep(idle * 3).await;
            assert_eq!(
                flows.lock().unwrap().len(),
                0,
                "the idle flow is still there"
            );
        });
    }

    #[test]
    fn the_connector_answers_with_connected_sockets() {
        let server = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = server.local_addr().unwrap().port();
        let fd = open_inside(&[b't', port.to_le_bytes()[0], port.to_le_bytes()[1]]).unwrap();
        let (mut accepted, _) = server.accept().unwrap();
        let mut stream = std::net::TcpStream::from(fd);
        stream.set_nonblocking(false).unwrap();
        use std::io::{Read, Write};
        stream.write_all(b"hi").unwrap();
        let mut got = [0; 2];
        accepted.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"hi");
        assert!(open_inside(b"x\0\0").is_err());
        assert!(open_inside(b"t").is_err());
    }
}
