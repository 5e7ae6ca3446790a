//! End-to-end tests of the attach form
//! (`wireguard4netns [--tmpdir DIR] [--configure] [--foreground] TARGET IFNAME CONFIG`):
//! our binary runs as uid 65534 against a namespace made by `unshare -Urn` as that
//! user, and talks to a real `wireguard-go` peer in a root-owned namespace. See
//! `common/mod.rs` for the harness. They need root; without it they skip (or fail
//! when `CI=true`).

#![forbid(unsafe_code)]

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use common::*;

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

/// The harness without our binary: a peer namespace reachable over its veth, a
/// configured wireguard-go, and a second wireguard-go made the same way that
/// handshakes with it (its veth's outer end lives in the first peer's namespace:
/// the root namespace does not forward between veths).
#[test]
fn harness_peer_works() {
    let Some(id) = require_root_env("harness_peer_works") else {
        return;
    };
    let a_keys = KeyPair::generate();
    let b_keys = KeyPair::generate();
    let a = Peer::start(
        &id,
        PeerSpec {
            keys: a_keys.clone(),
            slot: 0,
            uplink: None,
            tunnel_host: 1,
            listen_port: Some(id.port(0)),
            peers: vec![WgPeerSpec {
                public_key: b_keys.public.clone(),
                allowed_ips: vec![
                    format!("{}/32", id.tunnel_v4(2)),
                    format!("{}/128", id.tunnel_v6(2)),
                ],
                ..WgPeerSpec::default()
            }],
        },
    );
    ping_ok_in(
        &Place::Root,
        a.netns.inner_addr.into(),
        2,
        Duration::from_secs(5),
    )
    .unwrap_or_else(|e| panic!("peer veth not reachable from the root namespace: {e}"));

    let dump = a.dump();
    assert_eq!(dump.public_key, a_keys.public);
    assert_eq!(dump.listen_port, id.port(0));
    let b_on_a = dump
        .peer(&b_keys.public)
        .unwrap_or_else(|| panic!("peer not listed: {dump:?}"));
    assert_eq!(
        sorted(b_on_a.allowed_ips.clone()),
        sorted(vec![
            format!("{}/32", id.tunnel_v4(2)),
            format!("{}/128", id.tunnel_v6(2)),
        ])
    );
    assert_eq!(b_on_a.latest_handshake, 0);

    let (b_outer, b_inner) = id.veth_addrs(1);
    let b = Peer::start(
        &id,
        PeerSpec {
            keys: b_keys.clone(),
            slot: 1,
            uplink: Some(a.netns.name.clone()),
            tunnel_host: 2,
            listen_port: None,
            peers: vec![WgPeerSpec {
                public_key: a_keys.public.clone(),
                allowed_ips: vec![
                    format!("{}/32", id.tunnel_v4(1)),
                    format!("{}/128", id.tunnel_v6(1)),
                ],
                endpoint: Some(format!("{b_outer}:{}", id.port(0))),
                ..WgPeerSpec::default()
            }],
        },
    );
    for addr in [a.tunnel_v4.into(), a.tunnel_v6.into()] {
        ping_ok_in(&b.place(), addr, 2, HANDSHAKE_DEADLINE)
            .unwrap_or_else(|e| panic!("{e}\n{}\n{}", a.diagnostics(), b.diagnostics()));
    }
    let a_on_b = b.dump();
    let a_on_b = a_on_b.peer(&a_keys.public).expect("a listed on b");
    assert!(a_on_b.latest_handshake > 0, "{a_on_b:?}");
    let dump = a.dump();
    let b_on_a = dump.peer(&b_keys.public).expect("b listed on a");
    assert!(b_on_a.latest_handshake > 0, "{b_on_a:?}");
    assert!(
        b_on_a.endpoint.starts_with(&format!("{b_inner}:")),
        "{b_on_a:?}"
    );
}

/// Without `--configure` only the MTU is set; addresses and link state are the
/// user's business, and once they are done by hand the tunnel carries traffic.
#[test]
fn attach_without_configure_then_configure_by_hand() {
    let Some(id) = require_root_env("attach_without_configure_then_configure_by_hand") else {
        return;
    };
    let s = Scenario::new(
        id,
        ScenarioOpts {
            mtu: Some(1380),
            ..ScenarioOpts::default()
        },
    );
    s.attach(&[]);

    let inside = s.target.place();
    assert_eq!(
        link_mtu(&inside, &s.ifname),
        Some(1380),
        "MTU of {} inside the target\n{}",
        s.ifname,
        s.diagnostics()
    );
    let link = text(
        &s.target
            .ip_ok(["-o", "link", "show", "dev", &s.ifname])
            .stdout,
    );
    assert!(
        !link.contains(",UP"),
        "without --configure the link should stay down: {link}"
    );
    let addrs = text(
        &s.target
            .ip_ok(["-o", "addr", "show", "dev", &s.ifname])
            .stdout,
    );
    assert!(
        !addrs.contains("inet"),
        "without --configure Address= must be ignored, found: {addrs}"
    );

    s.target.ip_ok(["link", "set", "lo", "up"]);
    s.target.ip_ok([
        "addr",
        "add",
        &format!("{}/24", s.client_v4()),
        "dev",
        &s.ifname,
    ]);
    s.target.ip_ok(["link", "set", &s.ifname, "up"]);
    let stats = s.expect_ping(s.peer_v4(), 3);
    eprintln!(
        "attach_without_configure_then_configure_by_hand: {stats:?} to {}",
        s.peer_v4()
    );
}

/// `--configure` sets v4 and v6 addresses, routes, link up; both families pass.
/// Prints how long from spawning the command to the first ping reply, and RTTs.
#[test]
fn attach_with_configure_ipv4_and_ipv6() {
    let Some(id) = require_root_env("attach_with_configure_ipv4_and_ipv6") else {
        return;
    };
    let s = Scenario::new(id, ScenarioOpts::default());
    let t0 = Instant::now();
    s.attach(&["--configure"]);
    let attached = t0.elapsed();
    let first = ping_until(s.target.pid(), s.peer_v4(), HANDSHAKE_DEADLINE)
        .unwrap_or_else(|e| panic!("{e}\n{}", s.diagnostics()));
    let first_reply = t0.elapsed();

    let inside = s.target.place();
    assert_eq!(link_mtu(&inside, &s.ifname), Some(1420), "default MTU");
    let addrs = text(
        &s.target
            .ip_ok(["-o", "addr", "show", "dev", &s.ifname])
            .stdout,
    );
    for want in [
        format!("{}/24", s.client_v4()),
        format!("{}/64", s.client_v6()),
    ] {
        assert!(addrs.contains(&want), "{want} not on {}: {addrs}", s.ifname);
    }

    let v4 = s.expect_ping(s.peer_v4(), 5);
    let v6 = s.expect_ping(s.peer_v6(), 5);
    eprintln!(
        "attach_with_configure_ipv4_and_ipv6: command returned after {attached:?}; \
         first ping reply {first_reply:?} after spawning it (that ping's RTT {:?} ms, \
         handshake included); RTT avg v4 {:?} ms, v6 {:?} ms",
        first.avg_ms, v4.avg_ms, v6.avg_ms
    );
}

/// PresharedKey on both sides, and an Endpoint given as a host name, resolved
/// at start through a private /etc/hosts bind-mounted in the program's own
/// mount namespace only (the machine's /etc/hosts is never touched).
#[test]
fn preshared_key_and_hostname_endpoint() {
    let Some(id) = require_root_env("preshared_key_and_hostname_endpoint") else {
        return;
    };
    let mut s = Scenario::new(
        id,
        ScenarioOpts {
            psk: true,
            ..ScenarioOpts::default()
        },
    );
    let host = format!("peerhost-{}", s.id.name(""));
    let port = s.peer.listen_port.expect("peer port");
    s.config.endpoint = format!("{host}:{port}");
    let hosts = s.dir.write(
        "hosts",
        &format!(
            "127.0.0.1 localhost\n::1 localhost\n{} {host}\n",
            s.peer.netns.inner_addr
        ),
        0o644,
    );

    let mut c = cmd(
        "unshare",
        [
            "-m",
            "sh",
            "-c",
            r#"mount --bind "$0" /etc/hosts && exec "$@""#,
        ],
    );
    c.arg(&hosts)
        .arg("setpriv")
        .args(AS_NOBODY)
        .arg(binary())
        .args(s.args(s.target.pid(), &["--configure"]));
    let desc = describe(&c);
    let out = run_timeout(&mut c, None, Duration::from_secs(20)).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        out.status.success(),
        "{desc} failed ({})\n{}\n{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );

    s.expect_ping(s.peer_v4(), 3);

    let link = UapiLink::new(&s.id.link_name(), &s.socket());
    let dump = link.dump();
    let peer = dump.peer(&s.peer.keys.public).expect("peer listed");
    assert_eq!(
        Some(&peer.preshared_key),
        s.psk.as_ref(),
        "preshared key over UAPI"
    );
    assert_eq!(
        peer.endpoint,
        s.peer.endpoint(),
        "{host} resolved to the peer's address"
    );
}

/// The stock `wg` tool, through a symlink in /var/run/wireguard, reads the
/// running tunnel and changes it.
#[test]
fn wg_tool_reads_and_changes_running_tunnel() {
    let Some(id) = require_root_env("wg_tool_reads_and_changes_running_tunnel") else {
        return;
    };
    let s = Scenario::new(id, ScenarioOpts::default());
    s.attach(&["--configure"]);
    s.expect_ping(s.peer_v4(), 2);

    let link = UapiLink::new(&s.id.link_name(), &s.socket());
    let dump = link.dump();
    assert_eq!(dump.public_key, s.client_keys.public, "{dump:?}");
    let peer = dump
        .peer(&s.peer.keys.public)
        .unwrap_or_else(|| panic!("peer not in dump: {dump:?}"));
    assert_eq!(peer.endpoint, s.peer.endpoint());
    assert!(peer.latest_handshake > 0, "no handshake recorded: {peer:?}");
    assert!(peer.rx_bytes > 0 && peer.tx_bytes > 0, "{peer:?}");
    assert_eq!(
        sorted(peer.allowed_ips.clone()),
        sorted(s.config.allowed_ips.clone())
    );
    assert_eq!(peer.persistent_keepalive, None);

    let new_allowed = vec![
        format!("{}/32", s.peer.tunnel_v4),
        format!("{}/128", s.peer.tunnel_v6),
        format!("{}/32", s.id.extra_v4()),
    ];
    run_ok(&mut cmd(
        "wg",
        [
            "set",
            &link.name,
            "peer",
            &s.peer.keys.public,
            "persistent-keepalive",
            "17",
            "allowed-ips",
            &new_allowed.join(","),
        ],
    ));
    let dump = link.dump();
    let peer = dump.peer(&s.peer.keys.public).expect("peer still listed");
    assert_eq!(peer.persistent_keepalive, Some(17), "{peer:?}");
    assert_eq!(sorted(peer.allowed_ips.clone()), sorted(new_allowed));

    s.expect_ping(s.peer_v4(), 2);
    s.expect_ping(s.peer_v6(), 2);
}

/// `wg set` of listen-port, private-key and fwmark (the last refused: the
/// engine has no CAP_NET_ADMIN) replaces gotatun's connection each time, and
/// the old connection's tasks end: that is no task failure, the engine runs on
/// (it used to stop on the first one) and the tunnel works afterwards.
#[test]
fn reconfiguring_sets_do_not_stop_the_engine() {
    let Some(id) = require_root_env("reconfiguring_sets_do_not_stop_the_engine") else {
        return;
    };
    let s = Scenario::new(id, ScenarioOpts::default());
    let mut fg = s.spawn_foreground(s.target.pid(), &["--configure"]);
    fg.wait_socket(&s.socket(), Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("{e}"));
    s.expect_ping(s.peer_v4(), 1);
    let link = UapiLink::new(&s.id.link_name(), &s.socket());
    let original = s.dir.write("original.key", &s.client_keys.private, 0o600);
    let other = s
        .dir
        .write("other.key", &KeyPair::generate().private, 0o600);
    let set = |args: &[&str]| {
        let mut all = vec!["set", link.name.as_str()];
        all.extend_from_slice(args);
        run(&mut cmd("wg", &all))
    };
    for round in 0..3u16 {
        let port = (s.id.port(1) + round).to_string();
        for args in [
            &["listen-port", port.as_str()][..],
            &["private-key", &other.to_string_lossy()],
            &["private-key", &original.to_string_lossy()],
            &["fwmark", "4660"],
            &["fwmark", "off"],
        ] {
            let out = set(args);
            eprintln!("wg set {args:?}: {}", out.status);
        }
        assert!(
            fg.try_exit().is_none(),
            "the engine stopped in round {round}:\n{}",
            fg.log()
        );
    }
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        fg.try_exit().is_none(),
        "the engine stopped after the sets:\n{}",
        fg.log()
    );
    assert!(
        !fg.log().contains("stopped working"),
        "a replaced task was taken for a failure:\n{}",
        fg.log()
    );
    s.expect_ping(s.peer_v4(), 2);
}

/// What ends a `--foreground` instance in [`stops_and_cleans_up`].
enum Stop {
    TargetExits,
    Signal(Signal),
    InterfaceDeleted,
}

/// A `--foreground` instance with a working tunnel is stopped the way `stop`
/// says: it must exit within 2 s and remove its socket; the target survives
/// everything but its own death.
fn stops_and_cleans_up(test: &str, stop: Stop) {
    let Some(id) = require_root_env(test) else {
        return;
    };
    let mut s = Scenario::new(id, ScenarioOpts::default());
    let mut fg = s.spawn_foreground(s.target.pid(), &["--configure"]);
    fg.wait_socket(&s.socket(), Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("{e}"));
    s.expect_ping(s.peer_v4(), 1);
    // Handshakes are logged at info, naming the peer (checked once a second).
    let handshake = format!("handshake with peer {}", s.peer.keys.public);
    assert!(
        wait_for(Duration::from_secs(3), || fg.log().contains(&handshake)),
        "no {handshake:?} in the log:\n{}",
        fg.log()
    );

    let t = Instant::now();
    let what = match stop {
        Stop::TargetExits => {
            s.target.kill();
            "its target exited".to_owned()
        }
        Stop::Signal(sig) => {
            fg.signal(sig);
            format!("{sig}")
        }
        Stop::InterfaceDeleted => {
            s.target.ip_ok(["link", "del", "dev", &s.ifname]);
            "`ip link del`".to_owned()
        }
    };
    let status = fg.wait_exit(EXIT_BUDGET + EXIT_SLACK);
    let took = t.elapsed();
    assert!(
        status.is_some(),
        "still running {took:?} after {what}\n--- its output ---\n{}",
        fg.log()
    );
    assert!(
        gone(&s.socket()),
        "{} left behind after {what} ({status:?})",
        s.socket().display()
    );
    if !matches!(stop, Stop::TargetExits) {
        assert!(s.target.is_alive(), "the target died with our process");
    }
    eprintln!("{test}: exited ({status:?}) {took:?} after {what}");
}

/// When the target exits, our process exits within 2 s and removes its socket.
#[test]
fn exits_when_target_exits() {
    stops_and_cleans_up("exits_when_target_exits", Stop::TargetExits);
}

/// Background mode: the command returns promptly with its stdio released, the
/// tunnel works, and when the target exits the daemon goes within 2 s, socket
/// and all.
#[test]
fn exits_when_target_exits_background() {
    let Some(id) = require_root_env("exits_when_target_exits_background") else {
        return;
    };
    let mut s = Scenario::new(id, ScenarioOpts::default());
    let mut c = s.command(s.target.pid(), &["--configure"]);
    let desc = describe(&c);
    let t0 = Instant::now();
    let out = match run_timeout(&mut c, None, Duration::from_secs(20)) {
        Ok(out) => out,
        Err(e @ RunError::PipesHeld { .. }) => panic!("stdio not detached: {e}"),
        Err(e) => panic!("{e}"),
    };
    let returned = t0.elapsed();
    assert!(
        out.status.success(),
        "{desc} failed ({})\n{}\n{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    assert!(!gone(&s.socket()), "no socket after a successful start");
    s.expect_ping(s.peer_v4(), 1);
    let running = instances(s.dir.path());
    assert!(
        !running.is_empty(),
        "no process executing {} with {} in its command line: the daemon is gone, \
         or /proc scanning is broken",
        binary().display(),
        s.dir.path().display()
    );

    let t = Instant::now();
    s.target.kill();
    let socket = s.socket();
    let done = wait_for(EXIT_BUDGET + EXIT_SLACK, || {
        gone(&socket) && instances(s.dir.path()).is_empty()
    });
    let took = t.elapsed();
    assert!(
        done,
        "{took:?} after the target exited: socket gone: {}, still running: {:?}",
        gone(&socket),
        instances(s.dir.path())
    );
    eprintln!(
        "exits_when_target_exits_background: command returned after {returned:?}; \
         daemon(s) {running:?} gone {took:?} after the target was killed"
    );
}

/// The daemon holds nothing of its caller's: its working directory is `/`
/// (the caller's was the work dir), and a descriptor the caller left open
/// without `FD_CLOEXEC` (fd 7 on a file) is held by none of our processes.
/// `--pid-file`, given relative to the caller's directory, holds the engine's
/// PID while it runs and is gone after SIGTERM; the tunnel works throughout.
#[test]
fn daemon_leaves_cwd_and_inherited_fds_and_keeps_a_pid_file() {
    let Some(id) = require_root_env("daemon_leaves_cwd_and_inherited_fds_and_keeps_a_pid_file")
    else {
        return;
    };
    let s = Scenario::new(id, ScenarioOpts::default());
    let inherited = s.dir.write("inherited", "held by the caller\n", 0o644);
    let pid_file = s.dir.path().join("engine.pid");
    let mut c = cmd("sh", ["-c", r#"exec 7<"$0" && exec "$@""#]);
    c.arg(&inherited)
        .arg("setpriv")
        .args(AS_NOBODY)
        .arg(binary())
        .args(s.args(s.target.pid(), &["--configure", "--pid-file", "engine.pid"]))
        .current_dir(s.dir.path());
    let desc = describe(&c);
    let out = run_timeout(&mut c, None, Duration::from_secs(20)).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        out.status.success(),
        "{desc} failed ({})\n{}\n{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    let engine = match engines(s.dir.path()).as_slice() {
        [pid] => *pid,
        other => panic!("not one engine: {other:?}"),
    };
    let written = std::fs::read_to_string(&pid_file)
        .unwrap_or_else(|e| panic!("{}: {e}", pid_file.display()));
    assert_eq!(written, format!("{engine}\n"), "the pid file");
    let cwd = std::fs::read_link(format!("/proc/{engine}/cwd")).expect("the engine's cwd");
    assert_eq!(
        cwd,
        std::path::Path::new("/"),
        "the engine's working directory"
    );
    for pid in instances(s.dir.path()) {
        let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).expect("list fds");
        for fd in fds.flatten() {
            let target = std::fs::read_link(fd.path()).unwrap_or_default();
            assert_ne!(
                target,
                inherited,
                "process {pid} (engine {engine}) holds the inherited fd as {}",
                fd.file_name().to_string_lossy()
            );
        }
    }
    s.expect_ping(s.peer_v4(), 1);

    let t = Instant::now();
    signal(engine, Signal::SIGTERM);
    let done = wait_for(EXIT_BUDGET + EXIT_SLACK, || {
        !pid_file.exists() && instances(s.dir.path()).is_empty()
    });
    assert!(
        done,
        "{:?} after SIGTERM: pid file there: {}, still running: {:?}",
        t.elapsed(),
        pid_file.exists(),
        instances(s.dir.path())
    );
    assert!(gone(&s.socket()), "socket left after SIGTERM");
    eprintln!(
        "daemon: cwd {cwd:?}, pid file {written:?}, gone {:?} after SIGTERM",
        t.elapsed()
    );
}

/// An engine killed with SIGKILL cannot remove its pid file: the janitor does,
/// with the socket.
#[test]
fn pid_file_is_removed_when_the_engine_is_killed() {
    let Some(id) = require_root_env("pid_file_is_removed_when_the_engine_is_killed") else {
        return;
    };
    let s = Scenario::new(id, ScenarioOpts::default());
    let pid_file = s.dir.path().join("engine.pid");
    let shown = pid_file.display().to_string();
    s.attach(&["--pid-file", &shown]);
    let engine = match engines(s.dir.path()).as_slice() {
        [pid] => *pid,
        other => panic!("not one engine: {other:?}"),
    };
    let written = std::fs::read_to_string(&pid_file).unwrap_or_else(|e| panic!("{shown}: {e}"));
    assert_eq!(written, format!("{engine}\n"), "the pid file");
    let t = Instant::now();
    signal(engine, Signal::SIGKILL);
    let done = wait_for(EXIT_BUDGET + EXIT_SLACK, || {
        !pid_file.exists() && gone(&s.socket()) && instances(s.dir.path()).is_empty()
    });
    assert!(
        done,
        "{:?} after SIGKILL: pid file there: {}, socket gone: {}, running: {:?}",
        t.elapsed(),
        pid_file.exists(),
        gone(&s.socket()),
        instances(s.dir.path())
    );
    eprintln!("pid file removed {:?} after SIGKILL", t.elapsed());
}

/// Background mode, the foreground process SIGKILLed while its daemon is
/// starting: the daemon sees it (the ready pipe has no reader: `POLLERR`
/// between the steps, `EPIPE` on "ready") and stops, leaving no process, no
/// socket and no TUN, and never reports ready on its `--ready-fd` (a file
/// here). The kill is timed by watching the foreground's children: as soon
/// as the daemon exists, before its socket does. That start takes
/// milliseconds, so the kill lands in it in almost every try; a try where
/// the daemon was quicker is legitimate (it wrote "1": the tunnel was up
/// before its starter died) and is stopped with SIGTERM. At least one of the
/// tries must land before the socket exists; every try must leave nothing
/// behind unless the daemon reported ready.
#[test]
fn foreground_killed_before_ready_stops_the_start() {
    let Some(id) = require_root_env("foreground_killed_before_ready_stops_the_start") else {
        return;
    };
    const TRIES: u32 = 8;
    let s = Scenario::new(id, ScenarioOpts::default());
    let mut early = 0;
    for attempt in 0..TRIES {
        let ready_file = s.dir.path().join(format!("ready-{attempt}"));
        let mut c = cmd("sh", ["-c", r#"exec "$@" 3>"$0""#]);
        c.arg(&ready_file)
            .arg("setpriv")
            .args(AS_NOBODY)
            .arg(binary())
            .args(s.args(s.target.pid(), &["--configure", "--ready-fd", "3"]))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let mut fg = Process::new(c.spawn().expect("spawn the foreground process"));
        let children = format!("/proc/{0}/task/{0}/children", fg.pid);
        let deadline = Instant::now() + Duration::from_secs(10);
        let daemon = loop {
            let listed = std::fs::read_to_string(&children).unwrap_or_default();
            if let Some(pid) = listed.split_whitespace().next() {
                break pid.parse::<u32>().expect("a child PID");
            }
            assert!(
                fg.try_exit().is_none() && Instant::now() < deadline,
                "try {attempt}: the foreground process forked no daemon ({:?})",
                fg.try_exit()
            );
            std::thread::sleep(Duration::from_micros(100));
        };
        let socket_existed = !gone(&s.socket());
        fg.signal(Signal::SIGKILL);
        fg.wait_exit(Duration::from_secs(5))
            .expect("the foreground process survived SIGKILL");
        let settled = wait_for(EXIT_BUDGET + EXIT_SLACK, || {
            instances(s.dir.path()).is_empty()
                || std::fs::read_to_string(&ready_file).is_ok_and(|r| r == "1")
        });
        let ready = std::fs::read_to_string(&ready_file).unwrap_or_default();
        if ready == "1" {
            eprintln!(
                "try {attempt}: daemon {daemon} reported ready (its start outran the kill, or it ignored its starter's death)"
            );
            for pid in engines(s.dir.path()) {
                signal(pid, Signal::SIGTERM);
            }
            assert!(
                wait_for(EXIT_BUDGET + EXIT_SLACK, || instances(s.dir.path())
                    .is_empty()),
                "try {attempt}: still running after SIGTERM: {:?}",
                instances(s.dir.path())
            );
            continue;
        }
        assert!(
            settled,
            "try {attempt}: daemon {daemon} neither stopped nor reported ready: {:?}",
            instances(s.dir.path())
        );
        assert!(
            wait_for(EXIT_SLACK, || gone(&s.socket())),
            "try {attempt}: socket left"
        );
        assert_eq!(
            link_mtu(&s.target.place(), &s.ifname),
            None,
            "try {attempt}: the TUN is left in the target"
        );
        if !socket_existed {
            early += 1;
        }
    }
    assert!(
        early >= 1,
        "no try killed the foreground before its daemon had a socket"
    );
    eprintln!("{early} of {TRIES} tries killed the foreground mid-start; each stopped clean");
}

/// A second instance on the same `--tmpdir` and IFNAME (another target) fails
/// clearly, leaves no TUN in its target, and does not disturb the first.
#[test]
fn second_instance_same_socket_fails() {
    let Some(id) = require_root_env("second_instance_same_socket_fails") else {
        return;
    };
    let s = Scenario::new(id, ScenarioOpts::default());
    s.attach(&["--configure"]);
    s.expect_ping(s.peer_v4(), 1);

    let second = Target::spawn();
    let mut c = s.command(second.pid(), &["--configure"]);
    let t = Instant::now();
    let out = run_timeout(&mut c, None, Duration::from_secs(10)).unwrap_or_else(|e| panic!("{e}"));
    let took = t.elapsed();
    let stderr = text(&out.stderr);
    assert!(
        !out.status.success(),
        "second instance succeeded:\n{stderr}"
    );
    let socket = s.socket().display().to_string();
    assert!(
        stderr.contains(&socket),
        "error does not name {socket}:\n{stderr}"
    );
    let lower = stderr.to_lowercase();
    assert!(
        lower.contains("in use") || lower.contains("already"),
        "error does not say the socket is in use:\n{stderr}"
    );

    assert!(
        !gone(&s.socket()),
        "the first instance's socket was removed"
    );
    s.expect_ping(s.peer_v4(), 2);
    let link = UapiLink::new(&s.id.link_name(), &s.socket());
    let dump = link.dump();
    assert_eq!(
        dump.public_key, s.client_keys.public,
        "the socket no longer leads to the first instance"
    );

    let no_tun = wait_for(EXIT_BUDGET, || {
        !run(&mut second.cmd("ip", ["link", "show", "dev", &s.ifname]))
            .status
            .success()
    });
    assert!(
        no_tun,
        "{} left behind in the second target:\n{}",
        s.ifname,
        text(&run(&mut second.cmd("ip", ["link"])).stdout)
    );
    eprintln!(
        "second_instance_same_socket_fails: refused after {took:?} ({}): {}",
        out.status,
        stderr.trim()
    );
}

/// `--foreground` instance, SIGTERM by PID: exits within 2 s, socket gone.
#[test]
fn sigterm_stops_and_cleans_up() {
    stops_and_cleans_up("sigterm_stops_and_cleans_up", Stop::Signal(Signal::SIGTERM));
}

/// The same for SIGINT (Ctrl-C).
#[test]
fn sigint_stops_and_cleans_up() {
    stops_and_cleans_up("sigint_stops_and_cleans_up", Stop::Signal(Signal::SIGINT));
}

/// Deleting the interface inside the namespace ends the tunnel: our process
/// exits within 2 s and removes its socket; the target lives on.
#[test]
fn exits_when_interface_is_deleted() {
    stops_and_cleans_up("exits_when_interface_is_deleted", Stop::InterfaceDeleted);
}

/// Nothing but root reads the engine's memory or environment, where its keys
/// are: not the target's root, which is our uid on the host (the kernel's
/// capability check refuses it, its user namespace is not ours), and not a
/// process of our uid in our own namespaces (the engine is non-dumpable).
#[test]
fn target_and_same_uid_cannot_read_the_engines_memory() {
    let Some(id) = require_root_env("target_and_same_uid_cannot_read_the_engines_memory") else {
        return;
    };
    let s = Scenario::new(id, ScenarioOpts::default());
    let mut fg = s.spawn_foreground(s.target.pid(), &[]);
    fg.wait_socket(&s.socket(), Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("{e}"));
    let engine = fg.pid.to_string();
    let out = run(&mut s
        .target
        .cmd("sh", ["-c", PROBE_ENGINE, "probe", engine.as_str()]));
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert_engine_unreadable("from the target", &stdout, &stderr);
    let out = run_ok(&mut as_user("sh", ["-c", PROBE_ENGINE, "probe", &engine]));
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_engine_unreadable("from uid 65534 on the host", &stdout, &stderr);
}

/// slirp4netns' lifecycle descriptors: `--ready-fd` gets "1" once the tunnel is
/// up; closing the other end of `--exit-fd` stops us within 2 s, socket and all.
#[test]
fn ready_fd_and_exit_fd() {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;

    let Some(id) = require_root_env("ready_fd_and_exit_fd") else {
        return;
    };
    let s = Scenario::new(id, ScenarioOpts::default());
    let ready = s.dir.path().join("ready.fifo");
    let exit = s.dir.path().join("exit.fifo");
    for fifo in [&ready, &exit] {
        run_ok(&mut as_user("mkfifo", [fifo]));
    }
    // O_RDWR never blocks on a FIFO (Linux): we hold a writer on the exit FIFO
    // and a non-blocking reader on the ready FIFO before the program opens them.
    let exit_writer = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&exit)
        .expect("open exit fifo");
    let mut ready_reader = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&ready)
        .expect("open ready fifo");

    let mut args = vec![
        "-c".into(),
        r#"exec "$0" "$@" 3>"$READY" 4<"$EXIT""#.into(),
        binary().as_os_str().to_owned(),
    ];
    args.extend(s.args(
        s.target.pid(),
        &[
            "--foreground",
            "--configure",
            "--ready-fd",
            "3",
            "--exit-fd",
            "4",
        ],
    ));
    let mut child = as_user("bash", args)
        .env("READY", &ready)
        .env("EXIT", &exit)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn our binary");

    let mut got = Vec::new();
    let readied = wait_for(Duration::from_secs(10), || {
        let mut buf = [0u8; 8];
        if let Ok(n) = ready_reader.read(&mut buf) {
            got.extend_from_slice(&buf[..n]);
        }
        !got.is_empty()
    });
    if !readied {
        kill_child(&mut child);
        panic!("nothing on --ready-fd within 10 s");
    }
    assert_eq!(got, b"1", "--ready-fd must get exactly \"1\"");
    s.expect_ping(s.peer_v4(), 1);

    let t = Instant::now();
    drop(exit_writer);
    let status = wait_until(&mut child, Instant::now() + EXIT_BUDGET + EXIT_SLACK);
    let took = t.elapsed();
    if status.is_none() {
        kill_child(&mut child);
        panic!("still running {took:?} after --exit-fd was closed");
    }
    assert!(gone(&s.socket()), "socket left behind after --exit-fd");
    eprintln!("ready_fd_and_exit_fd: exited ({status:?}) {took:?} after the exit fd closed");
}

/// Bind mounts of a namespace, made by root, unmounted on drop.
struct NsBind(std::path::PathBuf);

impl NsBind {
    fn new(source: String, path: std::path::PathBuf) -> Self {
        std::fs::write(&path, b"").expect("mount point");
        run_ok(&mut cmd(
            "mount",
            [
                std::ffi::OsStr::new("--bind"),
                source.as_ref(),
                path.as_ref(),
            ],
        ));
        Self(path)
    }
}

impl Drop for NsBind {
    fn drop(&mut self) {
        let _ = run(&mut cmd("umount", [&self.0]));
    }
}

/// `--netns-type=path`: attach to a bind-mounted network namespace (as rootless
/// container tools keep them under /run/user/UID/netns/), with its owning user
/// namespace given by `--userns-path` or found by the kernel.
#[test]
fn attach_by_namespace_path() {
    let Some(id) = require_root_env("attach_by_namespace_path") else {
        return;
    };
    let s = Scenario::new(id, ScenarioOpts::default());
    let pid = s.target.pid();
    let net = NsBind::new(format!("/proc/{pid}/ns/net"), s.dir.path().join("netns"));
    let user = NsBind::new(format!("/proc/{pid}/ns/user"), s.dir.path().join("userns"));
    let net_path = net.0.to_string_lossy().into_owned();
    let user_path = user.0.to_string_lossy().into_owned();

    for flags in [
        vec![
            "--configure",
            "--netns-type=path",
            "--userns-path",
            &user_path,
        ],
        vec!["--configure", "--netns-type=path"],
    ] {
        let mut args: Vec<std::ffi::OsString> = s.args(0, &flags);
        // `args` put the PID 0 where TARGET goes: the namespace path instead.
        let target = args.len() - 3;
        args[target] = net_path.clone().into();
        args.insert(0, "--foreground".into());
        let log = s.dir.path().join("path-attach.log");
        let mut child = as_user(binary(), &args)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log"))
            .spawn()
            .expect("spawn our binary");
        if !wait_for(Duration::from_secs(10), || !gone(&s.socket())) {
            kill_child(&mut child);
            panic!(
                "no socket with {flags:?}: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        s.expect_ping(s.peer_v4(), 1);
        signal(child.id(), Signal::SIGTERM);
        let status = wait_until(&mut child, Instant::now() + EXIT_BUDGET + EXIT_SLACK);
        if status.is_none() {
            kill_child(&mut child);
            panic!("still running after SIGTERM with {flags:?}");
        }
        assert!(gone(&s.socket()), "socket left behind with {flags:?}");
    }
}

/// How a namespace path goes away under a running `--netns-type=path` engine.
#[derive(Debug, Clone, Copy)]
enum PathGoes {
    /// `umount` of a bind mount: the mount point file stays, another inode.
    Unmounted,
    /// `ip netns del` of an `ip netns attach`: the file is gone too.
    NetnsDeleted,
}

/// `ip netns attach NAME PID`, deleted on drop if the test did not.
struct IpNetns(String);

impl Drop for IpNetns {
    fn drop(&mut self) {
        if !gone(&std::path::Path::new("/run/netns").join(&self.0)) {
            let _ = run(&mut cmd("ip", ["netns", "del", &self.0]));
        }
    }
}

/// A `--netns-type=path` engine whose namespace path disappears stops within
/// 2 s, exits 0 naming the reason, removes its socket and TUN; the namespace's
/// process lives on.
fn path_target_stops_when_path_goes(test: &str, how: PathGoes) {
    let Some(id) = require_root_env(test) else {
        return;
    };
    let s = Scenario::new(id, ScenarioOpts::default());
    let pid = s.target.pid();
    // Undo on drop whatever the test did not (also when it fails).
    let (mut _bind, mut netns) = (None, None);
    let path = match how {
        PathGoes::Unmounted => {
            let b = NsBind::new(format!("/proc/{pid}/ns/net"), s.dir.path().join("netns"));
            let path = b.0.clone();
            _bind = Some(b);
            path
        }
        PathGoes::NetnsDeleted => {
            let name = s.id.name("ns");
            run_ok(&mut cmd("ip", ["netns", "attach", &name, &pid.to_string()]));
            netns = Some(IpNetns(name.clone()));
            std::path::Path::new("/run/netns").join(name)
        }
    };
    let mut args: Vec<std::ffi::OsString> = s.args(0, &["--configure", "--netns-type=path"]);
    let target = args.len() - 3;
    args[target] = path.clone().into();
    args.insert(0, "--foreground".into());
    let log = s.dir.path().join("path-gone.log");
    let mut child = as_user(binary(), &args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log"))
        .spawn()
        .expect("spawn our binary");
    let read_log = || std::fs::read_to_string(&log).unwrap_or_default();
    if !wait_for(Duration::from_secs(10), || !gone(&s.socket())) {
        kill_child(&mut child);
        panic!("no socket: {}", read_log());
    }
    s.expect_ping(s.peer_v4(), 1);

    let t = Instant::now();
    match how {
        PathGoes::Unmounted => {
            run_ok(&mut cmd("umount", [&path]));
        }
        PathGoes::NetnsDeleted => {
            let name = netns.as_ref().map(|n: &IpNetns| n.0.clone());
            run_ok(&mut cmd("ip", ["netns", "del", &name.unwrap_or_default()]));
        }
    }
    let status = wait_until(&mut child, Instant::now() + EXIT_BUDGET + EXIT_SLACK);
    let took = t.elapsed();
    let Some(status) = status else {
        kill_child(&mut child);
        panic!("still running {took:?} after {how:?}:\n{}", read_log());
    };
    let output = read_log();
    assert!(status.success(), "exit {status} after {how:?}:\n{output}");
    assert!(
        output.contains("stopping: the network namespace path")
            && output.contains("removed or unmounted"),
        "no stop reason logged after {how:?}:\n{output}"
    );
    assert!(gone(&s.socket()), "socket left behind after {how:?}");
    assert!(
        !run(&mut s.target.cmd("ip", ["link", "show", "dev", &s.ifname]))
            .status
            .success(),
        "{} left in the namespace after {how:?}",
        s.ifname
    );
    assert!(process_running(pid), "the namespace's process died");
    eprintln!("{test}: exited ({status}) {took:?} after {how:?}");
}

#[test]
fn path_target_stops_when_unmounted() {
    path_target_stops_when_path_goes("path_target_stops_when_unmounted", PathGoes::Unmounted);
}

#[test]
fn path_target_stops_when_netns_deleted() {
    path_target_stops_when_path_goes(
        "path_target_stops_when_netns_deleted",
        PathGoes::NetnsDeleted,
    );
}

/// The attach target's root (the owner's uid, seen from outside) and a
/// process in a user namespace nested in the target's get nothing from the
/// UAPI socket, which they can reach (same uid, the directory is on a shared
/// filesystem): `get=1` and `set=1` are closed on without a byte, and logged.
/// The tunnel carries traffic afterwards, and our `show` (uid 65534) and
/// root's `wg show` (through a /var/run/wireguard symlink) see the peer
/// unchanged.
#[test]
fn attach_target_is_refused_by_the_socket() {
    let Some(id) = require_root_env("attach_target_is_refused_by_the_socket") else {
        return;
    };
    let s = Scenario::new(id, ScenarioOpts::default());
    let mut fg = s.configured_foreground();
    s.expect_ping(s.peer_v4(), 1);
    let socket = s.socket().display().to_string();
    let probes = [
        (
            "the target's root",
            s.target.cmd(PYTHON, ["-c", UAPI_PROBE, &socket]),
        ),
        (
            "a namespace nested in the target's",
            s.target
                .cmd("unshare", ["-Ur", PYTHON, "-c", UAPI_PROBE, &socket]),
        ),
    ];
    for (who, mut probe) in probes {
        let out = run_ok(&mut probe);
        let times = assert_uapi_refused(who, &text(&out.stdout));
        eprintln!("{who}: refusals took {times:?} ms");
    }
    s.expect_ping(s.peer_v4(), 2);

    let mut show = as_user(binary(), ["show", "--tmpdir"]);
    show.arg(s.dir.path()).args([&s.ifname, "dump"]);
    let ours = text(&run_ok(&mut show).stdout);
    assert!(
        ours.contains(&s.peer.keys.public),
        "our show lost the peer:\n{ours}"
    );
    let link = UapiLink::new(&s.id.link_name(), &s.socket());
    let dump = link.dump();
    let peer = dump
        .peer(&s.peer.keys.public)
        .unwrap_or_else(|| panic!("wg show lost the peer: {dump:?}"));
    assert_eq!(
        sorted(peer.allowed_ips.clone()),
        sorted(s.config.allowed_ips.clone())
    );
    let refusals = wait_for(Duration::from_secs(5), || {
        fg.log()
            .matches("refused a UAPI connection from PID")
            .count()
            >= 4
    });
    assert!(refusals, "the refusals were not logged:\n{}", fg.log());
    fg.signal(Signal::SIGTERM);
}

/// The owner holds 1,000 idle connections to the UAPI socket: the engine
/// closes the idle ones to make room, its memory stays put, and `show` works
/// while they are held and after they are gone.
#[test]
fn thousand_idle_uapi_connections_leave_show_working() {
    let Some(id) = require_root_env("thousand_idle_uapi_connections_leave_show_working") else {
        return;
    };
    let s = Scenario::new(id, ScenarioOpts::default());
    let mut fg = s.configured_foreground();
    s.expect_ping(s.peer_v4(), 1);
    let engine = fg.pid;
    let show = || {
        let mut show = as_user(binary(), ["show", "--tmpdir"]);
        show.arg(s.dir.path()).args([&s.ifname, "dump"]);
        let t = Instant::now();
        let out = text(&run_ok(&mut show).stdout);
        assert!(
            out.contains(&s.peer.keys.public),
            "show lost the peer:\n{out}"
        );
        t.elapsed()
    };
    show();
    let before = rss_kib(engine);

    let holder = r#"
import resource, socket, sys
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 4096), hard))
conns = []
for i in range(1000):
    c = socket.socket(socket.AF_UNIX)
    c.settimeout(10)
    c.connect(sys.argv[1])
    conns.append(c)
print("held", flush=True)
sys.stdin.read(1)
"#;
    let socket = s.socket().display().to_string();
    let mut held = as_user(PYTHON, ["-c", holder, &socket])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn python3");
    let mut line = String::new();
    let mut out = std::io::BufReader::new(held.stdout.take().expect("stdout"));
    std::io::BufRead::read_line(&mut out, &mut line).expect("read python3");
    assert_eq!(line, "held\n", "python3 could not open 1000 connections");
    let during = rss_kib(engine);
    let show_took = show();
    drop(held.stdin.take());
    let _ = held.wait();

    show();
    let after = rss_kib(engine);
    eprintln!(
        "engine RSS: {before} KiB before, {during} KiB with 1000 idle connections, {after} KiB after; show took {show_took:?} while they were held"
    );
    assert!(
        during <= before + 4 * 1024 && after <= before + 4 * 1024,
        "RSS grew: {before} -> {during} -> {after} KiB"
    );
    s.expect_ping(s.peer_v4(), 1);
    fg.signal(Signal::SIGTERM);
}

/// The target's root shares the owner's uid and filesystem, so it can remove
/// the tunnel's socket and listen at its path itself. The owner's `set` (which
/// here would carry a new private key) and `show` then refuse to talk to it:
/// the listening process lives inside, and the fake server receives nothing.
#[test]
fn target_posing_as_the_socket_gets_no_request() {
    let Some(id) = require_root_env("target_posing_as_the_socket_gets_no_request") else {
        return;
    };
    let s = Scenario::new(id, ScenarioOpts::default());
    let mut fg = s.configured_foreground();
    // Replace the socket from inside, then print what each connection sends.
    let fake = r#"
import os, socket, sys
path = sys.argv[1]
os.unlink(path)
s = socket.socket(socket.AF_UNIX)
s.bind(path)
s.listen(8)
print("ready", flush=True)
s.settimeout(20)
for _ in range(2):
    try:
        c, _ = s.accept()
    except OSError:
        break
    c.settimeout(5)
    try:
        print("got %r" % c.recv(4096), flush=True)
    except OSError:
        print("got b''", flush=True)
"#;
    let socket = s.socket().display().to_string();
    let mut child = s
        .target
        .cmd(PYTHON, ["-c", fake, &socket])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn the fake server");
    let stdout = child.stdout.take().expect("stdout");
    let mut server = Process::new(child);
    let mut out = std::io::BufReader::new(stdout);
    let mut line = String::new();
    std::io::BufRead::read_line(&mut out, &mut line).expect("read the fake's ready");
    assert_eq!(line, "ready\n", "the fake server did not start");

    let key = s.dir.write("new.key", &KeyPair::generate().private, 0o600);
    let mut set = as_user(binary(), ["set", "--tmpdir"]);
    set.arg(s.dir.path())
        .args([s.ifname.as_str(), "private-key"])
        .arg(&key);
    let mut show = as_user(binary(), ["show", "--tmpdir"]);
    show.arg(s.dir.path()).args([&s.ifname, "private-key"]);
    for (what, mut c) in [("set", set), ("show", show)] {
        let refused = run(&mut c);
        let err = text(&refused.stderr);
        assert!(
            !refused.status.success() && err.contains("runs inside a tunnel's namespaces"),
            "{what} talked to the fake socket: {:?}\n{err}",
            refused.status
        );
    }
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut out, &mut rest).expect("read the fake's output");
    assert_eq!(
        rest, "got b''\ngot b''\n",
        "the fake server received a request"
    );
    server.wait_exit(Duration::from_secs(10));
    fg.signal(Signal::SIGTERM);
}

/// Numbered UDP datagrams, sent in bursts both ways at once: the receiver
/// records each number and reports how many came and how often one came
/// after a higher one. Runs until its `end` marker or `lifetime` seconds.
const NUMBERED: &str = r#"
import signal, socket, struct, sys, time
mode, host, port, lifetime = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
signal.alarm(lifetime)
family = socket.AF_INET6 if ":" in host else socket.AF_INET
s = socket.socket(family, socket.SOCK_DGRAM)
if mode == "recv":
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    s.bind((host, port))
    print("ready", flush=True)
    got, seen, inversions, duplicates, last, first_bad = 0, set(), 0, 0, -1, ""
    while True:
        data = s.recv(65535)
        if data == b"end":
            break
        n = struct.unpack_from("!Q", data)[0]
        if n in seen:
            duplicates += 1
        seen.add(n)
        if n < last:
            inversions += 1
            first_bad = first_bad or f"{n} after {last}"
        last = max(last, n)
        got += 1
    print(f"got {got} inversions {inversions} duplicates {duplicates} first {first_bad or '-'}", flush=True)
else:
    count, size, burst = int(sys.argv[5]), int(sys.argv[6]), int(sys.argv[7])
    pad = bytes(size - 8)
    for n in range(count):
        s.sendto(struct.pack("!Q", n) + pad, (host, port))
        if n % burst == burst - 1:
            time.sleep(0.001)
    time.sleep(0.5)
    for _ in range(20):
        s.sendto(b"end", (host, port))
        time.sleep(0.05)
"#;

/// Per-peer order is kept through the engine, encryption and decryption
/// spread over worker threads included: numbered datagrams sent in bursts
/// (both ways at once, IPv4 one way and IPv6 the other) arrive with no number
/// after a higher one and none twice. Losses are allowed (UDP, bounded
/// queues, the debug build's pace), but at least one in 20 must arrive, or the
/// check would say little.
#[test]
fn udp_datagrams_arrive_in_order_both_ways() {
    let Some(id) = require_root_env("udp_datagrams_arrive_in_order_both_ways") else {
        return;
    };
    let s = Scenario::new(id, ScenarioOpts::default());
    s.attach(&["--configure", "--threads", "2"]);
    s.expect_ping(s.peer_v4(), 2);
    let script = s.dir.write("numbered.py", NUMBERED, 0o644);
    let script = script.display().to_string();
    const COUNT: u32 = 20_000;
    const LIFETIME: &str = "60";
    let (peer_v4, client_v6) = (s.peer_v4().to_string(), s.client_v6().to_string());
    let legs = [
        (
            "target -> peer (our encryption)",
            s.peer.place(),
            peer_v4,
            Place::Target(s.target.pid()),
        ),
        (
            "peer -> target (our decryption)",
            Place::Target(s.target.pid()),
            client_v6,
            s.peer.place(),
        ),
    ];
    let mut receivers = Vec::new();
    for (name, at, addr, _) in &legs {
        let r = Spawned::start(at.cmd(PYTHON, [script.as_str(), "recv", addr, "5002", LIFETIME]));
        assert!(
            wait_for(Duration::from_secs(10), || r.stdout().contains("ready")),
            "{name}: receiver not ready\n{}",
            r.report()
        );
        receivers.push(r);
    }
    let mut senders = Vec::new();
    for (_, _, addr, from) in &legs {
        let args = [
            script.as_str(),
            "send",
            addr,
            "5002",
            LIFETIME,
            &COUNT.to_string(),
            "1200",
            "16",
        ];
        senders.push(Spawned::start(from.cmd(PYTHON, args)));
    }
    for ((name, ..), (mut sender, mut receiver)) in
        legs.iter().zip(senders.into_iter().zip(receivers))
    {
        sender.wait_exit(Duration::from_secs(70));
        receiver.wait_exit(Duration::from_secs(10));
        let out = receiver.stdout();
        let report = || {
            format!(
                "{name}\n{}\n{}\n{}",
                receiver.report(),
                sender.report(),
                s.diagnostics()
            )
        };
        let fields: Vec<&str> = out.lines().last().unwrap_or("").split(' ').collect();
        let [_, got, _, inversions, _, duplicates, _, first] = fields[..] else {
            panic!("no summary from the receiver\n{}", report());
        };
        let got: u32 = got.parse().unwrap_or(0);
        eprintln!(
            "{name}: {got} of {COUNT} arrived, {inversions} out of order (first: {first}), {duplicates} twice"
        );
        assert_eq!(
            inversions,
            "0",
            "datagrams out of order (first: {first})\n{}",
            report()
        );
        assert_eq!(duplicates, "0", "datagrams delivered twice\n{}", report());
        assert!(
            got >= COUNT / 20,
            "only {got} of {COUNT} arrived\n{}",
            report()
        );
    }
}
