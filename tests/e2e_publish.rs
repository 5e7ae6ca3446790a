//! End-to-end tests of `--publish`: host listeners whose connections reach
//! the namespace's loopback. Our binary runs as uid 65534 against a real
//! `wireguard-go` peer (see `common/mod.rs`); the tests need root for the
//! peer's namespace and skip without it (or fail when `CI=true`).

#![forbid(unsafe_code)]

mod common;

use std::ffi::OsString;
use std::fs;
use std::net::{TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::*;

/// How long `up` and short commands may take.
const TIMEOUT: Duration = Duration::from_secs(20);
/// The bound on the parallel and bulk transfers (with the bare baseline).
const TRANSFER_TIMEOUT: Duration = Duration::from_secs(180);
/// The bulk transfer: 1 GiB.
const BULK: u64 = 1 << 30;

/// The server inside (and, for the baseline, on the host): a first line
/// `echo` echoes until end-of-file, then shuts its sending side (so the
/// client's half-close must arrive); `send N` sends N bytes of a fixed 1 MiB
/// block repeated.
fn server_script(port: u16) -> String {
    format!(
        r#"import hashlib, socket, threading
BLOCK = hashlib.sha256(b"w4n").digest() * 32768
def handle(c):
    with c:
        line = b""
        while not line.endswith(b"\n"):
            d = c.recv(1)
            if not d:
                return
            line += d
        cmd = line.split()
        if cmd[0] == b"echo":
            while True:
                d = c.recv(1 << 20)
                if not d:
                    break
                c.sendall(d)
            c.shutdown(socket.SHUT_WR)
        elif cmd[0] == b"send":
            n = int(cmd[1])
            view = memoryview(BLOCK)
            while n > 0:
                k = min(n, len(BLOCK))
                c.sendall(view[:k])
                n -= k
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", {port}))
s.listen(256)
print("listening", flush=True)
while True:
    c, _ = s.accept()
    threading.Thread(target=handle, args=(c,), daemon=True).start()
"#
    )
}

/// The host's client: waits (bounded) until an echo comes back through
/// `port`, then 100 parallel echo connections with half-close, each
/// sha256-checked, then a 1 GiB download, sha256-checked and timed. Prints
/// `parallel ok N` and `bulk ok SECONDS`.
fn client_script(port: u16, bulk: u64) -> String {
    format!(
        r#"import hashlib, os, socket, threading, time
PORT = {port}
def echo(payload):
    c = socket.create_connection(("127.0.0.1", PORT), timeout=60)
    got = []
    def reader():
        while True:
            d = c.recv(1 << 20)
            if not d:
                break
            got.append(d)
    t = threading.Thread(target=reader)
    t.start()
    c.sendall(b"echo\n" + payload)
    c.shutdown(socket.SHUT_WR)
    t.join()
    c.close()
    return b"".join(got)
for _ in range(80):
    try:
        if echo(b"ping") == b"ping":
            break
    except OSError:
        pass
    time.sleep(0.25)
else:
    raise SystemExit("the server never answered through the published port")
results = []
def one():
    payload = os.urandom(256 * 1024)
    try:
        back = echo(payload)
    except OSError as e:
        results.append(str(e))
        return
    results.append(hashlib.sha256(back).digest() == hashlib.sha256(payload).digest())
threads = [threading.Thread(target=one) for _ in range(100)]
for t in threads:
    t.start()
for t in threads:
    t.join()
good = sum(1 for r in results if r is True)
print("parallel ok", good, flush=True)
if good != 100:
    raise SystemExit("parallel: " + repr([r for r in results if r is not True][:5]))
BLOCK = hashlib.sha256(b"w4n").digest() * 32768
want = hashlib.sha256()
for _ in range({bulk} // len(BLOCK)):
    want.update(BLOCK)
c = socket.create_connection(("127.0.0.1", PORT), timeout=60)
start = time.monotonic()
c.sendall(b"send {bulk}\n")
got = hashlib.sha256()
n = 0
buf = bytearray(1 << 20)
while True:
    k = c.recv_into(buf)
    if not k:
        break
    got.update(memoryview(buf)[:k])
    n += k
took = time.monotonic() - start
if n != {bulk} or got.digest() != want.digest():
    raise SystemExit(f"bulk: {{n}} bytes, sha256 {{got.hexdigest()}} != {{want.hexdigest()}}")
print("bulk ok", round(took, 3), flush=True)
"#
    )
}

fn named_cmd(subcommand: &str, dir: &Path, args: &[&str]) -> Command {
    let mut all: Vec<OsString> = vec![subcommand.into(), "--tmpdir".into(), dir.into()];
    all.extend(args.iter().map(OsString::from));
    as_user(binary(), all)
}

fn named(subcommand: &str, dir: &Path, args: &[&str]) -> Output {
    run_timeout(&mut named_cmd(subcommand, dir, args), None, TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}"))
}

/// The network namespace of `pid`, as the link `/proc/PID/ns/net` reads.
fn netns_of(pid: u32) -> Option<PathBuf> {
    fs::read_link(format!("/proc/{pid}/ns/net")).ok()
}

/// Every process in the network namespace `ns`.
fn processes_in(ns: &Path) -> Vec<(u32, String)> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| netns_of(pid).as_deref() == Some(ns))
        .map(|pid| (pid, status_field(pid, "Name").unwrap_or_default()))
        .collect()
}

/// The forwarder of the tunnel `client` under `dir` (the engine's child
/// `w4n-forward`) runs as uid 65534 in the host's network namespace, with no
/// new privileges, no capability, not dumpable (its `/proc` files are
/// root's), and without the engine's command line.
fn assert_forwarder_confined(dir: &Path) {
    let state = fs::read_to_string(dir.join("client.state")).expect("state file");
    let engine: u32 = state
        .lines()
        .find_map(|l| {
            l.strip_prefix("engine ")?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no engine in {state:?}"));
    let forwarder = children_of(engine)
        .into_iter()
        .find(|(_, comm)| comm == "w4n-forward")
        .map(|(pid, _)| pid)
        .unwrap_or_else(|| panic!("no forwarder among {:?}", children_of(engine)));
    let field = |name| status_field(forwarder, name).unwrap_or_default();
    assert!(field("Uid").starts_with("65534\t"), "{}", field("Uid"));
    assert_eq!(field("NoNewPrivs"), "1");
    assert_eq!(field("CapEff"), "0000000000000000");
    assert_eq!(netns_of(forwarder), netns_of(std::process::id()));
    let meta = fs::metadata(format!("/proc/{forwarder}/environ")).expect("environ");
    assert_eq!(
        std::os::unix::fs::MetadataExt::uid(&meta),
        0,
        "the forwarder is dumpable"
    );
    let cmdline = fs::read(format!("/proc/{forwarder}/cmdline")).expect("cmdline");
    assert!(
        cmdline.starts_with(b"wireguard4netns\0__publish-forward\0"),
        "{}",
        text(&cmdline)
    );
}

/// The bulk figure from the client's output.
fn bulk_seconds(stdout: &str) -> f64 {
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("bulk ok ")?.trim().parse().ok())
        .unwrap_or(f64::NAN)
}

/// `up --publish 127.0.0.1:PORT:80` with a server on port 80 inside (started
/// by `exec`): the host reaches it; 100 parallel connections and 1 GiB arrive
/// sha256-exact; the holder is the connector (`list` counts only the
/// server); from inside, the published port and the host's loopback are not
/// reachable; `down` leaves nothing. The same download from the same server
/// on the bare loopback is the baseline printed beside it.
#[test]
fn up_publishes_a_tcp_port() {
    let Some(id) = require_root_env("up_publishes_a_tcp_port") else {
        return;
    };
    let s = Scenario::new(id, ScenarioOpts::default());
    let config = s.write_config();
    let dir = s.dir.path().join("uapi");
    let port = s.id.port(0);
    let spec = format!("127.0.0.1:{port}:80");
    let out = named(
        "up",
        &dir,
        &["--publish", &spec, config.to_str().expect("utf-8")],
    );
    assert!(out.status.success(), "up: {out:?}");
    assert_forwarder_confined(&dir);
    let mut server = Spawned::start(named_cmd(
        "exec",
        &dir,
        &["client", "--", PYTHON, "-c", &server_script(80)],
    ));
    let client = |port: u16| {
        let mut c = cmd(PYTHON, ["-c", &client_script(port, BULK)]);
        run_timeout(&mut c, None, TRANSFER_TIMEOUT).unwrap_or_else(|e| panic!("{e}"))
    };
    let out = client(port);
    let stdout = text(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("parallel ok 100"),
        "through the published port: {out:?}\n{}",
        server.report()
    );
    let published = bulk_seconds(&stdout);

    let listing = text(&named("list", &dir, &[]).stdout);
    let row = listing
        .lines()
        .find(|l| l.starts_with("client "))
        .unwrap_or_else(|| panic!("client not listed:\n{listing}"));
    assert_eq!(
        row.split_whitespace().nth(1),
        Some("1"),
        "the server alone is inside:\n{listing}"
    );

    // From inside: the published port is the namespace's own (nothing
    // listens there), and the host's loopback is out of reach.
    let host_lo = TcpListener::bind("127.0.0.1:0").expect("host listener");
    let host_port = host_lo.local_addr().expect("port").port();
    let probe = format!(
        "import socket\n\
         for p in [{port}, {host_port}]:\n\
         \x20   s = socket.socket(); s.settimeout(2)\n\
         \x20   try:\n\
         \x20       s.connect(('127.0.0.1', p)); print('REACHED', p)\n\
         \x20   except OSError as e:\n\
         \x20       print('unreachable', p, e.errno)\n"
    );
    let out = named("exec", &dir, &["client", "--", PYTHON, "-c", &probe]);
    let probed = text(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(
        !probed.contains("REACHED"),
        "reached from inside:\n{probed}"
    );
    assert_eq!(probed.matches("unreachable").count(), 2, "{probed}");
    host_lo.set_nonblocking(true).expect("nonblocking");
    assert!(host_lo.accept().is_err(), "the host listener was reached");

    let out = named("down", &dir, &["client"]);
    assert!(out.status.success(), "down: {out:?}");
    assert!(
        wait_for(Duration::from_secs(2), || TcpListener::bind((
            "127.0.0.1",
            port
        ))
        .is_ok()),
        "the published port is still bound after down"
    );
    let _ = server.wait_exit(Duration::from_secs(2));

    // The baseline: the same server and client on the bare loopback.
    let bare_port = s.id.port(1);
    let _bare = Spawned::start(as_user(PYTHON, ["-c", &server_script(bare_port)]));
    let out = client(bare_port);
    assert!(out.status.success(), "bare loopback: {out:?}");
    let bare = bulk_seconds(&text(&out.stdout));
    let gbit = |secs: f64| BULK as f64 * 8.0 / secs / 1e9;
    eprintln!(
        "up_publishes_a_tcp_port: 1 GiB through the published port {published:.2} s ({:.2} Gbit/s), bare loopback {bare:.2} s ({:.2} Gbit/s)",
        gbit(published),
        gbit(bare)
    );
}

/// `run --publish PORT:5353/udp` with a UDP echo server inside: two host
/// sockets (two source addresses) each get their own replies back.
#[test]
fn run_publishes_a_udp_port() {
    let Some(id) = require_root_env("run_publishes_a_udp_port") else {
        return;
    };
    let s = Scenario::new(id, ScenarioOpts::default());
    let config = s.write_config();
    let port = s.id.port(0);
    let echo = "import socket\n\
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
                s.bind(('127.0.0.1', 5353))\n\
                s.settimeout(60)\n\
                while True:\n\
                \x20   d, a = s.recvfrom(65536)\n\
                \x20   s.sendto(b'echo:' + d, a)\n";
    let spec = format!("{port}:5353/udp");
    let mut running = Spawned::start(run_form(
        &config,
        s.dir.path(),
        &["--publish", &spec],
        [PYTHON, "-c", echo],
    ));
    let sockets: Vec<UdpSocket> = (0..2)
        .map(|_| {
            let u = UdpSocket::bind("127.0.0.1:0").expect("udp");
            u.set_read_timeout(Some(Duration::from_millis(250)))
                .expect("timeout");
            u
        })
        .collect();
    let mut buf = [0u8; 256];
    for (i, u) in sockets.iter().enumerate() {
        let message = format!("hello {i}");
        let deadline = Instant::now() + TIMEOUT;
        let got = loop {
            assert!(
                Instant::now() < deadline,
                "no UDP echo through the published port\n{}",
                running.report()
            );
            u.send_to(message.as_bytes(), ("127.0.0.1", port))
                .expect("send");
            if let Ok(n) = u.recv(&mut buf) {
                break text(&buf[..n]);
            }
        };
        assert_eq!(got, format!("echo:{message}"));
    }
    // The command and the connector next to it, which must go with run.
    let command = children_of(running.pid)
        .into_iter()
        .find(|(_, comm)| comm.starts_with("python"))
        .map(|(pid, _)| pid)
        .expect("the command");
    let ns = netns_of(command).expect("the command's namespace");
    let inside = processes_in(&ns);
    assert!(
        inside.iter().any(|(_, name)| name == "w4n-connect"),
        "no connector inside: {inside:?}"
    );
    running.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(
        running.wait_exit(Duration::from_secs(5)).is_some(),
        "run did not end\n{}",
        running.report()
    );
    assert!(
        wait_for(Duration::from_secs(2), || UdpSocket::bind((
            "127.0.0.1",
            port
        ))
        .is_ok()),
        "the published port is still bound after run ended"
    );
    assert!(
        wait_for(Duration::from_secs(2), || processes_in(&ns).is_empty()),
        "left inside after run ended: {:?}",
        processes_in(&ns)
    );
}

/// Specs that do not parse and a port in use: one line, status 1, before
/// anything starts (no socket, lock or state file, the command never ran).
#[test]
fn bad_publish_specs_and_a_port_in_use() {
    let Some(id) = require_root_env("bad_publish_specs_and_a_port_in_use") else {
        return;
    };
    let s = Scenario::new(id, ScenarioOpts::default());
    let config = s.write_config();
    let config = config.to_str().expect("utf-8");
    let dir = s.dir.path().join("uapi");
    let taken = TcpListener::bind("127.0.0.1:0").expect("listener");
    let taken_port = taken.local_addr().expect("port").port();
    let in_use = format!("{taken_port}:80");
    let marker = s.dir.path().join("ran");
    let touch = format!("touch {}", marker.display());
    for (spec, want) in [
        ("8080", "cannot publish \"8080\": it needs HOSTPORT:PORT"),
        ("8080:80/sctp", "unknown protocol \"sctp\""),
        ("localhost:8080:80", "is not an IP address"),
        ("8080:0", "PORT 0 is no port"),
        (in_use.as_str(), "choose another HOSTPORT"),
    ] {
        let mut c = run_form(
            Path::new(config),
            &dir,
            &["--publish", spec],
            ["sh", "-c", &touch],
        );
        let out = run_timeout(&mut c, None, TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
        assert_refused(&out, want, &format!("run --publish {spec}"));
        let out = named("up", &dir, &["--publish", spec, config]);
        assert_refused(&out, want, &format!("up --publish {spec}"));
        assert!(!marker.exists(), "the command ran for {spec}");
        let left = dir_entries(&dir);
        assert!(left.is_empty(), "left behind for {spec}: {left:?}");
    }
    drop(taken);
}
