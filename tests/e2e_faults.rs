//! End-to-end fault tests: what a real network does to a running tunnel. Our
//! binary runs as uid 65534 attached to a target namespace; the peer is
//! Debian's wireguard-go in a namespace of the test's own. Each test breaks
//! something (the peer restarts, a side changes address or port) while a
//! `ping -D` runs inside the target, and measures the gap in the replies
//! from ping's own timestamps. See `common/mod.rs` for the harness. They need
//! root; without it they skip (or fail when `CI=true`).

#![forbid(unsafe_code)]

mod common;

use std::ffi::OsString;
use std::net::IpAddr;
use std::process::Output;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::*;

/// Our binary as uid 65534: `SUBCOMMAND --tmpdir DIR ARGS…`, which must
/// succeed; its stdout.
fn ours_ok(s: &Scenario, subcommand: &str, args: &[&str]) -> String {
    let mut all: Vec<OsString> = vec![subcommand.into(), "--tmpdir".into(), s.dir.path().into()];
    all.extend(args.iter().map(OsString::from));
    let out: Output = run(&mut as_user(binary(), all));
    assert!(
        out.status.success(),
        "wireguard4netns {subcommand} {args:?} failed ({})\n{}{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// Seconds since the epoch, as `ping -D` prints them.
fn now_s() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// The peer spec [`Peer::server`] used for this scenario, with the peer's
/// own keys and `listen_port`: what a restarted peer is configured with.
fn server_spec(s: &Scenario, listen_port: u16) -> PeerSpec {
    PeerSpec {
        keys: s.peer.keys.clone(),
        slot: 0,
        uplink: None,
        tunnel_host: 1,
        listen_port: Some(listen_port),
        peers: vec![WgPeerSpec {
            public_key: s.client_keys.public.clone(),
            allowed_ips: vec![
                format!("{}/32", s.id.tunnel_v4(2)),
                format!("{}/128", s.id.tunnel_v6(2)),
            ],
            ..WgPeerSpec::default()
        }],
    }
}

/// `ping -D` from `place` to `addr`, 0.2 s apart, for at most `secs`.
struct Pinger {
    ping: Spawned,
    addr: IpAddr,
}

impl Pinger {
    fn start(place: &Place, addr: IpAddr, secs: u32) -> Self {
        let args = [
            "-n".to_owned(),
            "-D".to_owned(),
            "-i".to_owned(),
            "0.2".to_owned(),
            "-W".to_owned(),
            "1".to_owned(),
            "-w".to_owned(),
            secs.to_string(),
            addr.to_string(),
        ];
        Self {
            ping: Spawned::start(place.cmd("ping", args)),
            addr,
        }
    }

    /// Timestamps (`ping -D`) of the replies so far.
    fn replies(&self) -> Vec<f64> {
        let from = format!("bytes from {}", self.addr);
        self.ping
            .stdout()
            .lines()
            .filter(|l| l.contains(&from))
            .filter_map(|l| {
                let stamp = l.strip_prefix('[')?.split(']').next()?;
                stamp.parse().ok()
            })
            .collect()
    }

    /// Wait up to `timeout` for `n` replies stamped after `after`.
    fn wait_replies_after(&self, after: f64, n: usize, timeout: Duration) -> bool {
        wait_for(timeout, || {
            self.replies().iter().filter(|&&t| t > after).count() >= n
        })
    }

    /// Stop it (SIGINT by PID, so it prints its summary) and wait for it.
    fn stop(&mut self) {
        self.ping.signal(nix::sys::signal::Signal::SIGINT);
        self.ping.wait_exit(Duration::from_secs(3));
    }

    fn report(&self) -> String {
        self.ping.report()
    }
}

/// The first reply stamped after `t`, and the last one at or before it.
fn around(replies: &[f64], t: f64) -> (Option<f64>, Option<f64>) {
    let before = replies.iter().copied().rfind(|&r| r <= t);
    let after = replies.iter().copied().find(|&r| r > t);
    (before, after)
}

/// A scenario with our binary attached (`--configure`) and the tunnel up.
fn tunnel(test: &str, listen_port: Option<u16>) -> Option<Scenario> {
    let id = require_root_env(test)?;
    let mut s = Scenario::new(id, ScenarioOpts::default());
    s.config.listen_port = listen_port;
    s.attach(&["--configure"]);
    s.expect_ping(s.peer_v4(), 2);
    Some(s)
}

/// wireguard-go restarted on the same port with the same key has no session:
/// our side keeps sending on the old one until, with no reply for
/// keepalive-timeout + rekey-timeout (10 s + 5 s), it shakes hands again.
/// wireguard-go in our place takes 15.3 s; we must be back within 16 s.
#[test]
fn peer_restart_on_the_same_port_is_back_within_16_s() {
    let Some(mut s) = tunnel("peer_restart_on_the_same_port_is_back_within_16_s", None) else {
        return;
    };
    let mut ping = Pinger::start(&s.target.place(), s.peer_v4(), 30);
    assert!(
        ping.wait_replies_after(0.0, 3, Duration::from_secs(5)),
        "no replies before the restart\n{}",
        ping.report()
    );
    let spec = server_spec(&s, s.id.port(0));
    let restart = now_s();
    s.peer.restart(&spec);
    let back = ping.wait_replies_after(restart, 3, Duration::from_secs(20));
    ping.stop();
    let (before, after) = around(&ping.replies(), restart);
    assert!(
        back,
        "no replies within 20 s of the peer's restart\n{}\n{}",
        ping.report(),
        s.diagnostics()
    );
    let before = before.expect("replies before the restart");
    let after = after.expect("replies after the restart");
    let gap = after - before;
    eprintln!(
        "peer restart, same port: reply gap {gap:.2} s, first reply {:.2} s after the restart began",
        after - restart
    );
    assert!(
        gap < 16.0,
        "reply gap {gap:.2} s after the peer's restart (limit 16 s)\n{}",
        ping.report()
    );
}

/// wireguard-go restarted on another port, then `set wg0 peer KEY endpoint
/// NEW` through our tool: the tunnel is back within 1 s of the `set`.
#[test]
fn peer_restart_on_a_new_port_is_back_within_1_s_of_set_endpoint() {
    let Some(mut s) = tunnel(
        "peer_restart_on_a_new_port_is_back_within_1_s_of_set_endpoint",
        None,
    ) else {
        return;
    };
    let mut ping = Pinger::start(&s.target.place(), s.peer_v4(), 20);
    assert!(
        ping.wait_replies_after(0.0, 3, Duration::from_secs(5)),
        "no replies before the restart\n{}",
        ping.report()
    );
    let restart = now_s();
    s.peer.restart(&server_spec(&s, s.id.port(1)));
    thread::sleep(Duration::from_secs(2));
    let set = now_s();
    ours_ok(
        &s,
        "set",
        &[
            &s.ifname,
            "peer",
            &s.peer.keys.public,
            "endpoint",
            &s.peer.endpoint(),
        ],
    );
    let back = ping.wait_replies_after(set, 3, Duration::from_secs(10));
    ping.stop();
    let replies = ping.replies();
    assert!(
        back,
        "no replies within 10 s of `set … endpoint {}`\n{}\n{}",
        s.peer.endpoint(),
        ping.report(),
        s.diagnostics()
    );
    let stale: Vec<f64> = replies
        .iter()
        .copied()
        .filter(|&t| t > restart + 1.0 && t <= set)
        .collect();
    assert!(
        stale.is_empty(),
        "replies while our side still had the old port: {stale:?}"
    );
    let after = around(&replies, set).1.expect("a reply after the set");
    eprintln!(
        "peer restart, new port: first reply {:.2} s after `set … endpoint` began",
        after - set
    );
    assert!(
        after - set < 1.0,
        "first reply {:.2} s after `set … endpoint` (limit 1 s)\n{}",
        after - set,
        ping.report()
    );
}

/// The first reply stamped after `t`, in seconds after `t`, or panic with the
/// pinger's output.
fn first_reply_after(ping: &Pinger, t: f64, what: &str) -> f64 {
    around(&ping.replies(), t)
        .1
        .map(|r| r - t)
        .unwrap_or_else(|| panic!("no reply after {what}\n{}", ping.report()))
}

/// Roaming on our side: `set wg0 listen-port NEW` moves our UDP socket; the
/// tunnel is back within 1 s and the peer follows us to the new port.
#[test]
fn our_listen_port_change_is_followed_within_1_s() {
    let Some(s) = tunnel("our_listen_port_change_is_followed_within_1_s", None) else {
        return;
    };
    let mut ping = Pinger::start(&s.target.place(), s.peer_v4(), 12);
    assert!(
        ping.wait_replies_after(0.0, 3, Duration::from_secs(5)),
        "no replies before the port change\n{}",
        ping.report()
    );
    let port = s.id.port(1);
    let set = now_s();
    ours_ok(&s, "set", &[&s.ifname, "listen-port", &port.to_string()]);
    let back = ping.wait_replies_after(set, 3, Duration::from_secs(5));
    let ours = format!("{}:{port}", s.peer.netns.outer_addr);
    let mut seen = String::new();
    let followed = wait_for(Duration::from_secs(2), || {
        seen = s
            .peer
            .dump()
            .peer(&s.client_keys.public)
            .map(|p| p.endpoint.clone())
            .unwrap_or_default();
        seen == ours
    });
    ping.stop();
    assert!(
        back,
        "no replies within 5 s of `set listen-port {port}`\n{}\n{}",
        ping.report(),
        s.diagnostics()
    );
    let gap = first_reply_after(&ping, set, "the port change");
    eprintln!("our listen port changed: first reply {gap:.2} s after `set listen-port` began");
    assert!(
        gap < 1.0,
        "first reply {gap:.2} s after `set listen-port` (limit 1 s)\n{}",
        ping.report()
    );
    assert!(
        followed,
        "the peer has our endpoint as {seen}, not {ours}\n{}",
        s.peer.diagnostics()
    );
}

/// Roaming on the peer's side: its address moves to the test's other /30
/// (on the same link) and its listen port changes while it pings into our
/// namespace (it has our endpoint, so it sends first). We follow its new
/// endpoint within 1 s, and traffic works both ways.
///
/// The port changes too because wireguard-go (Debian's 0.0.20220316) keeps a
/// peer's source address sticky: after an address move alone it goes on
/// sending from the address it no longer has ("network is unreachable") until
/// its socket is rebound.
#[test]
fn peer_address_change_is_followed_within_1_s() {
    let Some(s) = tunnel("peer_address_change_is_followed_within_1_s", None) else {
        return;
    };
    let net = &s.peer.netns;
    let (new_outer, new_inner) = s.id.veth_addrs(1);
    let port = s.id.port(1);
    let mut ping = Pinger::start(&s.peer.place(), s.client_v4().into(), 12);
    assert!(
        ping.wait_replies_after(0.0, 3, Duration::from_secs(5)),
        "the peer gets no replies before the move\n{}",
        ping.report()
    );
    Place::Root.ip_ok([
        "addr",
        "add",
        &format!("{new_outer}/30"),
        "dev",
        &net.outer_if,
    ]);
    let moved = now_s();
    let inner = s.peer.place();
    inner.ip_ok([
        "addr",
        "del",
        &format!("{}/30", net.inner_addr),
        "dev",
        &net.inner_if,
    ]);
    inner.ip_ok([
        "addr",
        "add",
        &format!("{new_inner}/30"),
        "dev",
        &net.inner_if,
    ]);
    // Our endpoint (the old /30's outer end) stays reachable on the link.
    inner.ip_ok([
        "route",
        "add",
        &format!("{}/32", net.outer_addr),
        "dev",
        &net.inner_if,
        "src",
        &new_inner.to_string(),
    ]);
    run_ok(&mut cmd(
        "wg",
        ["set", &s.peer.ifname, "listen-port", &port.to_string()],
    ));
    let back = ping.wait_replies_after(moved, 3, Duration::from_secs(5));
    let theirs = format!("{new_inner}:{port}");
    let mut seen = String::new();
    let followed = wait_for(Duration::from_secs(2), || {
        seen = ours_ok(&s, "show", &[&s.ifname, "endpoints"]);
        seen.contains(&theirs)
    });
    ping.stop();
    assert!(
        back,
        "the peer gets no replies within 5 s of its move to {new_inner}\n{}\n{}",
        ping.report(),
        s.diagnostics()
    );
    let gap = first_reply_after(&ping, moved, "the move");
    eprintln!("peer address changed: first reply {gap:.2} s after the move began");
    assert!(
        gap < 1.0,
        "first reply {gap:.2} s after the peer's move (limit 1 s)\n{}",
        ping.report()
    );
    assert!(followed, "`show wg0 endpoints` says {seen:?}, not {theirs}");
    let started = Instant::now();
    ping_ok(s.target.pid(), s.peer_v4(), 3, Duration::from_secs(1))
        .unwrap_or_else(|e| panic!("{e}\n{}", s.diagnostics()));
    eprintln!(
        "peer address changed: our side reached it in {:.2} s",
        started.elapsed().as_secs_f64()
    );
}
