//! End-to-end tests of the tools (`show`, `set`, `genkey`, `pubkey`, `genpsk`)
//! against the stock `wg` (wireguard-tools): a real tunnel (our binary as uid
//! 65534 attached to a namespace, a wireguard-go peer), read and changed both
//! through our tools (as uid 65534, `--tmpdir`) and through `wg` (as root, via
//! a symlink in /var/run/wireguard). Outputs must be byte-identical, apart
//! from the interface name and counters that move between two calls. See
//! `common/mod.rs` for the harness. They need root; without it they skip (or
//! fail when `CI=true`).

#![forbid(unsafe_code)]

mod common;

use std::ffi::OsString;
use std::process::Output;
use std::thread;
use std::time::Duration;

use common::*;

/// `wg ARGS…` as root, which must succeed; its stdout.
fn wg(args: &[&str]) -> String {
    text(&run_ok(&mut cmd("wg", args)).stdout)
}

/// Calls `both` (which returns ours and wg's output) until the two are equal,
/// up to 20 times 0.3 s apart: a handshake time or a counter may change
/// between two calls. Returns the last pair, for the caller to compare.
fn settle(mut both: impl FnMut() -> (String, String)) -> (String, String) {
    let mut pair = both();
    for _ in 0..20 {
        if pair.0 == pair.1 {
            break;
        }
        thread::sleep(Duration::from_millis(300));
        pair = both();
    }
    pair
}

/// A tunnel with a preshared key, up and past its first handshake, a
/// persistent keepalive, and a second peer that never shook hands (so the
/// output has two peers to sort and `(none)`s to print); the symlink for
/// `wg`.
fn running_tunnel(test: &str) -> Option<(Scenario, UapiLink, KeyPair)> {
    let id = require_root_env(test)?;
    let s = Scenario::new(
        id,
        ScenarioOpts {
            psk: true,
            ..ScenarioOpts::default()
        },
    );
    s.attach(&["--configure"]);
    s.expect_ping(s.peer_v4(), 2);
    let link = UapiLink::new(&s.id.link_name(), &s.socket());
    let idle = KeyPair::generate();
    wg(&[
        "set",
        &link.name,
        "peer",
        &idle.public,
        "allowed-ips",
        &format!("{}/32,fd00::/64", s.id.extra_v4()),
    ]);
    // Changing peers resets sessions in gotatun: shake hands again.
    s.expect_ping(s.peer_v4(), 1);
    Some((s, link, idle))
}

#[test]
fn show_dump_is_byte_identical_to_wg() {
    let Some((s, link, idle)) = running_tunnel("show_dump_is_byte_identical_to_wg") else {
        return;
    };
    let (ours_dump, wg_dump) = settle(|| {
        (
            ours_ok(&s, "show", &[&s.ifname, "dump"]),
            wg(&["show", &link.name, "dump"]),
        )
    });
    assert_eq!(ours_dump, wg_dump, "`show wg0 dump` against `wg show dump`");

    let parsed = WgDump::parse(&ours_dump).unwrap();
    assert_eq!(parsed.public_key, s.client_keys.public);
    assert_eq!(parsed.private_key, s.client_keys.private);
    let peer = parsed
        .peer(&s.peer.keys.public)
        .expect("server peer listed");
    assert_eq!(Some(&peer.preshared_key), s.psk.as_ref());
    assert_eq!(peer.endpoint, s.peer.endpoint());
    assert!(peer.latest_handshake > 0 && peer.rx_bytes > 0, "{peer:?}");
    let idle_peer = parsed.peer(&idle.public).expect("idle peer listed");
    assert_eq!(idle_peer.endpoint, "(none)");
    assert_eq!(idle_peer.preshared_key, "(none)");
    assert_eq!(idle_peer.latest_handshake, 0);

    // `all dump`: every line starts with the interface name. wg's own `all`
    // lists other tests' interfaces too: keep the lines of ours.
    let (ours_all, wg_all) = settle(|| {
        let wg_lines: String = wg(&["show", "all", "dump"])
            .lines()
            .filter_map(|l| l.strip_prefix(&format!("{}\t", link.name)))
            .map(|l| format!("{}\t{l}\n", s.ifname))
            .collect();
        (ours_ok(&s, "show", &["all", "dump"]), wg_lines)
    });
    assert_eq!(ours_all, wg_all, "`show all dump`");
    assert_eq!(ours_all.lines().count(), 3, "{ours_all}");

    // wireguard-go answers differently from gotatun (protocol_version, an
    // all-zero preshared key, zero counters and handshake times where gotatun
    // leaves lines out): read the peer's own socket, as root, with ours and wg.
    wg(&[
        "set",
        &s.peer.ifname,
        "peer",
        &idle.public,
        "allowed-ips",
        "fd00::/64",
    ]);
    for args in [
        vec![s.peer.ifname.as_str(), "dump"],
        vec![s.peer.ifname.as_str()],
    ] {
        let (ours_out, wg_out) = settle(|| {
            let mut all = vec!["show", "--tmpdir", WG_RUN_DIR];
            all.extend(&args);
            let mut wg_args = vec!["show"];
            wg_args.extend(&args);
            (text(&run_ok(&mut cmd(binary(), all)).stdout), wg(&wg_args))
        });
        assert_eq!(ours_out, wg_out, "wireguard-go's socket, {args:?}");
    }
}

#[test]
fn show_fields_are_byte_identical_to_wg() {
    let Some((s, link, _idle)) = running_tunnel("show_fields_are_byte_identical_to_wg") else {
        return;
    };
    for field in [
        "public-key",
        "private-key",
        "listen-port",
        "fwmark",
        "peers",
        "preshared-keys",
        "endpoints",
        "allowed-ips",
        "latest-handshakes",
        "transfer",
        "persistent-keepalive",
    ] {
        let (ours_out, wg_out) = settle(|| {
            (
                ours_ok(&s, "show", &[&s.ifname, field]),
                wg(&["show", &link.name, field]),
            )
        });
        assert_eq!(ours_out, wg_out, "`show wg0 {field}`");
        assert!(!ours_out.is_empty(), "{field}");
    }
    assert_eq!(ours_ok(&s, "show", &["interfaces"]), "wg0\n");
    assert_eq!(
        ours_ok(&s, "show", &["all", "listen-port"]),
        format!("wg0\t{}", wg(&["show", &link.name, "listen-port"]))
    );
}

#[test]
fn show_human_output_matches_wg() {
    let Some((s, link, idle)) = running_tunnel("show_human_output_matches_wg") else {
        return;
    };
    let ours_name = format!("interface: {}\n", s.ifname);
    let wg_name = format!("interface: {}\n", link.name);
    // stdout is a pipe: no colours, keys hidden.
    let (ours_out, wg_out) = settle(|| {
        (
            ours_ok(&s, "show", &[&s.ifname]).replacen(&ours_name, &wg_name, 1),
            wg(&["show", &link.name]),
        )
    });
    assert_eq!(ours_out, wg_out, "`show wg0` against `wg show`");
    assert!(ours_out.contains("  private key: (hidden)\n"), "{ours_out}");
    assert!(
        ours_out.contains("  preshared key: (hidden)\n"),
        "{ours_out}"
    );
    assert!(ours_out.contains("  latest handshake: "), "{ours_out}");
    assert!(ours_out.contains("  transfer: "), "{ours_out}");
    // The peer with a handshake comes first, the idle one last.
    let server_at = ours_out.find(&s.peer.keys.public).expect("server peer");
    let idle_at = ours_out.find(&idle.public).expect("idle peer");
    assert!(server_at < idle_at, "{ours_out}");

    // No argument is `all`.
    let (all, one) = settle(|| (ours_ok(&s, "show", &[]), ours_ok(&s, "show", &["wg0"])));
    assert_eq!(all, one);

    // Colours and keys on request, as wg does them.
    let coloured = |program: &str, args: &[&str]| {
        let mut c = if program == "wg" {
            cmd("wg", args)
        } else {
            let mut all: Vec<OsString> =
                vec!["show".into(), "--tmpdir".into(), s.dir.path().into()];
            all.extend(args.iter().map(OsString::from));
            as_user(binary(), all)
        };
        c.env("WG_COLOR_MODE", "always")
            .env("WG_HIDE_KEYS", "never");
        text(&run_ok(&mut c).stdout)
    };
    let (ours_out, wg_out) = settle(|| {
        (
            coloured("ours", &[&s.ifname]).replacen(&s.ifname, &link.name, 1),
            coloured("wg", &["show", &link.name]),
        )
    });
    assert_eq!(ours_out, wg_out, "coloured, keys shown");
    assert!(
        ours_out.contains("\x1b[1mprivate key\x1b[0m: "),
        "{ours_out:?}"
    );
    assert!(ours_out.contains(&s.client_keys.private), "{ours_out:?}");
}

#[test]
fn set_through_our_tool_is_seen_by_wg_and_back() {
    let Some((s, link, idle)) = running_tunnel("set_through_our_tool_is_seen_by_wg_and_back")
    else {
        return;
    };
    // Ours → wg: keepalive and a new allowed-ips list for the server peer.
    let new_allowed = [
        format!("{}/32", s.peer.tunnel_v4),
        format!("{}/128", s.peer.tunnel_v6),
        format!("{}/32", s.id.tunnel_v4(9)),
    ];
    ours_ok(
        &s,
        "set",
        &[
            &s.ifname,
            "peer",
            &s.peer.keys.public,
            "persistent-keepalive",
            "17",
            "allowed-ips",
            &new_allowed.join(", "),
        ],
    );
    let dump = link.dump();
    let peer = dump.peer(&s.peer.keys.public).expect("server peer listed");
    assert_eq!(peer.persistent_keepalive, Some(17), "{peer:?}");
    let mut got = peer.allowed_ips.clone();
    got.sort();
    let mut want = new_allowed.to_vec();
    want.sort();
    assert_eq!(got, want);
    let idle_peer = dump.peer(&idle.public).expect("idle peer listed");
    assert_eq!(idle_peer.allowed_ips.len(), 2, "{idle_peer:?}");
    s.expect_ping(s.peer_v4(), 2);
    s.expect_ping(s.peer_v6(), 2);

    // Ours: remove the idle peer, set a preshared key from a file (the
    // server's, so the tunnel keeps working) and an endpoint.
    let psk_file = s
        .dir
        .write("psk", &format!("{}\n", s.psk.as_ref().unwrap()), 0o600);
    ours_ok(
        &s,
        "set",
        &[
            &s.ifname,
            "peer",
            &idle.public,
            "remove",
            "peer",
            &s.peer.keys.public,
            "preshared-key",
            psk_file.to_str().unwrap(),
            "endpoint",
            &s.peer.endpoint(),
        ],
    );
    let dump = link.dump();
    assert!(dump.peer(&idle.public).is_none(), "{dump:?}");
    let peer = dump.peer(&s.peer.keys.public).expect("server peer listed");
    assert_eq!(Some(&peer.preshared_key), s.psk.as_ref());
    assert_eq!(peer.endpoint, s.peer.endpoint());
    s.expect_ping(s.peer_v4(), 2);

    // wg → ours.
    wg(&[
        "set",
        &link.name,
        "peer",
        &s.peer.keys.public,
        "persistent-keepalive",
        "off",
        "allowed-ips",
        &format!("{}/24,{}/64", s.id.tunnel_v4(0), s.id.tunnel_v6(0)),
    ]);
    let ours_dump = WgDump::parse(&ours_ok(&s, "show", &[&s.ifname, "dump"])).unwrap();
    let peer = ours_dump.peer(&s.peer.keys.public).expect("peer listed");
    assert_eq!(peer.persistent_keepalive, None);
    let mut got = peer.allowed_ips.clone();
    got.sort();
    assert_eq!(
        got,
        [
            format!("{}/24", s.id.tunnel_v4(0)),
            format!("{}/64", s.id.tunnel_v6(0))
        ]
    );
    // An empty list clears it.
    ours_ok(
        &s,
        "set",
        &[&s.ifname, "peer", &s.peer.keys.public, "allowed-ips", ""],
    );
    let (ours_ips, wg_ips) = settle(|| {
        (
            ours_ok(&s, "show", &[&s.ifname, "allowed-ips"]),
            wg(&["show", &link.name, "allowed-ips"]),
        )
    });
    assert_eq!(ours_ips, format!("{}\t(none)\n", s.peer.keys.public));
    assert_eq!(ours_ips, wg_ips);
}

/// `set listen-port` moves the UDP socket and the tunnel keeps working.
///
/// gotatun 0.10.2 rebuilds its connection on every reconfiguring `set`
/// (listen-port, private-key, fwmark), and the old connection's tasks may
/// register a "fatal" error on the way out. We do not stop on those: a deleted
/// TUN is detected on its own, and the new connection works.
#[test]
fn set_listen_port_keeps_the_tunnel() {
    let Some((s, link, _idle)) = running_tunnel("set_listen_port_keeps_the_tunnel") else {
        return;
    };
    for slot in [1, 0, 1, 0, 1] {
        let port = s.id.port(slot);
        ours_ok(&s, "set", &[&s.ifname, "listen-port", &port.to_string()]);
        assert_eq!(link.dump().listen_port, port);
        s.expect_ping(s.peer_v4(), 1);
    }
}

#[test]
fn set_and_show_errors() {
    let Some((s, _link, _idle)) = running_tunnel("set_and_show_errors") else {
        return;
    };
    let one_line_error = |out: &Output, expect: &str| {
        let err = text(&out.stderr);
        assert!(!out.status.success(), "succeeded: {err}");
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.starts_with("wireguard4netns: "), "{err}");
        assert!(err.contains(expect), "{expect:?} not in {err:?}");
    };
    one_line_error(&ours(&s, "show", &["nosuch"]), "no tunnel named nosuch in");
    one_line_error(
        &ours(&s, "set", &["nosuch", "listen-port", "1"]),
        "no tunnel named nosuch in",
    );
    one_line_error(
        &ours(
            &s,
            "set",
            &[&s.ifname, "peer", &s.peer.keys.public, "listen-port", "1"],
        ),
        "before the first `peer`",
    );
    one_line_error(
        &ours(
            &s,
            "set",
            &[
                &s.ifname,
                "peer",
                &s.peer.keys.public,
                "allowed-ips",
                "+10.9.0.0/16",
            ],
        ),
        "+/-",
    );
    one_line_error(
        &ours(&s, "set", &[&s.ifname, "private-key", "/nonexistent/key"]),
        "private-key /nonexistent/key: cannot read it",
    );
    // Nothing was changed by the failed commands.
    s.expect_ping(s.peer_v4(), 1);

    // An empty directory: nothing to show, like `wg show` without interfaces.
    let empty = s.dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    std::os::unix::fs::chown(&empty, Some(NOBODY), Some(NOBODY)).unwrap();
    let out = run(&mut as_user(
        binary(),
        [
            OsString::from("show"),
            "--tmpdir".into(),
            empty.clone().into(),
        ],
    ));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(out.stdout.is_empty() && out.stderr.is_empty());
}

/// `wg ARGS…` as root, which may fail: its output.
fn wg_raw(args: &[&str]) -> Output {
    run(&mut cmd("wg", args))
}

/// python3 at `place` holding a dual-stack UDP socket on a free port until
/// dropped (its stdin closed); the port.
struct PortHolder {
    child: std::process::Child,
    port: u16,
}

impl PortHolder {
    fn new(place: &Place) -> Self {
        let script = "import socket,sys\n\
            s=socket.socket(socket.AF_INET6,socket.SOCK_DGRAM)\n\
            s.setsockopt(socket.IPPROTO_IPV6,socket.IPV6_V6ONLY,0)\n\
            s.bind(('::',0))\n\
            print(s.getsockname()[1],flush=True)\n\
            sys.stdin.read(1)\n";
        let mut child = place
            .cmd("python3", ["-c", script])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("spawn python3");
        let mut line = String::new();
        let mut out = std::io::BufReader::new(child.stdout.take().expect("stdout"));
        std::io::BufRead::read_line(&mut out, &mut line).expect("read python3");
        let port = line.trim().parse().unwrap_or_else(|_| {
            let _ = child.kill();
            let _ = child.wait();
            panic!("python3 could not hold a UDP port: {line:?}")
        });
        Self { child, port }
    }
}

impl Drop for PortHolder {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A `set` the device refuses reads in the stock `wg` as it does against
/// wireguard-go: a listen port another socket holds gives "Unable to modify
/// interface: Address already in use" and exit status 1 from both (our
/// answer is the negated errno, as wireguard-go's). Ours changes nothing: same
/// port, the tunnel still pings. (wireguard-go is asked last: it closes its
/// socket before the bind that fails.)
#[test]
fn refused_set_reads_as_with_wireguard_go_and_changes_nothing() {
    let Some((s, link, _idle)) =
        running_tunnel("refused_set_reads_as_with_wireguard_go_and_changes_nothing")
    else {
        return;
    };
    let before = link.dump().listen_port;
    let ours = {
        let held = PortHolder::new(&Place::Root);
        wg_raw(&["set", &link.name, "listen-port", &held.port.to_string()])
    };
    assert_eq!(link.dump().listen_port, before);
    s.expect_ping(s.peer_v4(), 1);

    let go = {
        let held = PortHolder::new(&s.peer.place());
        wg_raw(&["set", &s.peer.ifname, "listen-port", &held.port.to_string()])
    };
    assert_eq!(ours.status.code(), go.status.code(), "exit status");
    assert_eq!(text(&ours.stderr), text(&go.stderr));
    assert_eq!(
        text(&go.stderr).trim(),
        "Unable to modify interface: Address already in use"
    );
    assert!(ours.stdout.is_empty() && go.stdout.is_empty());
}

/// An fwmark the engine (uid 65534, no CAP_NET_ADMIN) may not set is refused
/// and changes nothing: `wg show IF fwmark` still says off and the tunnel
/// keeps its socket (it used to lose it and report the new fwmark).
#[test]
fn refused_fwmark_changes_nothing() {
    let Some((s, link, _idle)) = running_tunnel("refused_fwmark_changes_nothing") else {
        return;
    };
    let out = wg_raw(&["set", &link.name, "fwmark", "4660"]);
    assert!(!out.status.success(), "fwmark was accepted");
    assert_eq!(
        text(&out.stderr).trim(),
        "Unable to modify interface: Operation not permitted"
    );
    assert_eq!(wg(&["show", &link.name, "fwmark"]), "off\n");
    s.expect_ping(s.peer_v4(), 1);
}

/// A new private key keeps the listen port and the tunnel, five times in a
/// row (the same-port rebind used to meet our own old socket: "Address
/// already in use", no UDP until the next `set`). The peer is told each new
/// public key.
#[test]
fn set_private_key_keeps_the_port_and_the_tunnel() {
    let Some(id) = require_root_env("set_private_key_keeps_the_port_and_the_tunnel") else {
        return;
    };
    let s = Scenario::new(id, ScenarioOpts::default());
    let fg = s.configured_foreground();
    s.expect_ping(s.peer_v4(), 1);
    let link = UapiLink::new(&s.id.link_name(), &s.socket());
    let port = link.dump().listen_port;
    let mut current = s.client_keys.public.clone();
    for round in 0..5 {
        let keys = KeyPair::generate();
        let allowed = s
            .peer
            .dump()
            .peer(&current)
            .expect("we are the peer's peer")
            .allowed_ips
            .join(",");
        wg(&[
            "set",
            &s.peer.ifname,
            "peer",
            &current,
            "remove",
            "peer",
            &keys.public,
            "allowed-ips",
            &allowed,
        ]);
        let file = s.dir.write(
            &format!("key{round}"),
            &format!("{}\n", keys.private),
            0o600,
        );
        wg(&[
            "set",
            &link.name,
            "private-key",
            &file.display().to_string(),
        ]);
        assert_eq!(link.dump().listen_port, port, "round {round}");
        s.expect_ping(s.peer_v4(), 1);
        current = keys.public;
    }
    let log = fg.log();
    assert!(!log.contains("Address already in use"), "{log}");
}

/// A prefix given to another peer (`wg set IF peer NEW allowed-ips P`) leaves
/// the old peer's list, and stays gone after an unrelated `set` on the old
/// peer: `wg show IF allowed-ips` for the two reads the same on ours as on
/// wireguard-go, each step.
#[test]
fn moved_prefix_leaves_the_old_peer_as_with_wireguard_go() {
    let Some((s, link, _idle)) =
        running_tunnel("moved_prefix_leaves_the_old_peer_as_with_wireguard_go")
    else {
        return;
    };
    let (old, new) = (KeyPair::generate(), KeyPair::generate());
    let lines_of = |ifname: &str| {
        let all = wg(&["show", ifname, "allowed-ips"]);
        [&old.public, &new.public]
            .map(|key| {
                all.lines()
                    .find(|line| line.starts_with(key.as_str()))
                    .unwrap_or("(missing)")
                    .to_owned()
            })
            .join("\n")
    };
    let steps: [&[&str]; 3] = [
        &[
            "peer",
            &old.public,
            "allowed-ips",
            "10.0.8.0/24,10.0.9.0/24",
        ],
        &["peer", &new.public, "allowed-ips", "10.0.8.0/24"],
        &["peer", &old.public, "persistent-keepalive", "25"],
    ];
    for (step, args) in steps.iter().enumerate() {
        for ifname in [&link.name, &s.peer.ifname] {
            let mut all = vec!["set", ifname.as_str()];
            all.extend_from_slice(args);
            wg(&all);
        }
        let (ours, go) = (lines_of(&link.name), lines_of(&s.peer.ifname));
        assert_eq!(ours, go, "after step {step}: {args:?}");
    }
    assert_eq!(
        lines_of(&link.name),
        format!("{}\t10.0.9.0/24\n{}\t10.0.8.0/24", old.public, new.public)
    );
}

// ---------------------------------------------------------------------------
// Keys: no tunnel needed, only `wg`.
// ---------------------------------------------------------------------------

/// Our binary (as the current user) with `input` on stdin.
fn key_tool(args: &[&str], input: &[u8]) -> Output {
    run_timeout(
        &mut cmd(env!("CARGO_BIN_EXE_wireguard4netns"), args),
        Some(input),
        CMD_TIMEOUT,
    )
    .unwrap_or_else(|e| panic!("{e}"))
}

fn key_line(out: &Output) -> String {
    assert!(out.status.success(), "{}", text(&out.stderr));
    let line = text(&out.stdout);
    assert_eq!(line.len(), 45, "44 characters and a newline: {line:?}");
    assert!(line.ends_with("=\n"), "{line:?}");
    line
}

/// `wg` must be there: say so loudly otherwise, and fail in CI.
fn have_wg(test: &str) -> bool {
    if run_timeout(&mut cmd("wg", ["--version"]), None, CMD_TIMEOUT)
        .is_ok_and(|o| o.status.success())
    {
        return true;
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "{test}: `wg` (wireguard-tools) is not installed"
    );
    eprintln!("SKIP {test}: `wg` (wireguard-tools) is not installed");
    false
}

#[test]
fn genkey_pubkey_genpsk_agree_with_wg() {
    if !have_wg("genkey_pubkey_genpsk_agree_with_wg") {
        return;
    }
    for _ in 0..5 {
        // Our private key, both pubkeys.
        let private = key_line(&key_tool(&["genkey"], b""));
        let ours_pub = key_line(&key_tool(&["pubkey"], private.as_bytes()));
        let wg_pub = text(&run_input_ok(&mut cmd("wg", ["pubkey"]), private.as_bytes()).stdout);
        assert_eq!(ours_pub, wg_pub, "pubkey of our genkey {private:?}");

        // wg's private key, both pubkeys.
        let private = text(&run_ok(&mut cmd("wg", ["genkey"])).stdout);
        let ours_pub = key_line(&key_tool(&["pubkey"], private.as_bytes()));
        let wg_pub = text(&run_input_ok(&mut cmd("wg", ["pubkey"]), private.as_bytes()).stdout);
        assert_eq!(ours_pub, wg_pub, "pubkey of wg's genkey {private:?}");

        // A preshared key is a key `wg` takes.
        let psk = key_line(&key_tool(&["genpsk"], b""));
        run_input_ok(&mut cmd("wg", ["pubkey"]), psk.as_bytes());
    }
    assert_ne!(
        key_line(&key_tool(&["genkey"], b"")),
        key_line(&key_tool(&["genkey"], b""))
    );
}

/// Like `wg genkey` and `wg genpsk`: a key written to a file that others can
/// read comes with wg's warning on stderr, byte for byte; with umask 077, or
/// into a pipe, nothing is said.
#[test]
fn genkey_and_genpsk_warn_like_wg_about_a_file_others_can_read() {
    if !have_wg("genkey_and_genpsk_warn_like_wg_about_a_file_others_can_read") {
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let ours = env!("CARGO_BIN_EXE_wireguard4netns");
    for sub in ["genkey", "genpsk"] {
        for (umask, warned) in [("022", true), ("077", false)] {
            let stderr_of = |program: &str, name: &str| {
                let file = dir.path().join(format!("{name}-{sub}-{umask}"));
                let out = run_ok(&mut cmd(
                    "sh",
                    [
                        "-c",
                        r#"umask "$1" && exec "$0" "$2" > "$3""#,
                        program,
                        umask,
                        sub,
                        file.to_str().expect("utf-8 path"),
                    ],
                ));
                let key = std::fs::read_to_string(&file).expect("the key file");
                assert_eq!(key.len(), 45, "{program} {sub}: {key:?}");
                text(&out.stderr)
            };
            let (ours, wg) = (stderr_of(ours, "ours"), stderr_of("wg", "wg"));
            assert_eq!(
                ours, wg,
                "{sub} with umask {umask}: stderr differs from wg's"
            );
            assert_eq!(
                !ours.is_empty(),
                warned,
                "{sub} with umask {umask}: {ours:?}"
            );
        }
        let out = key_tool(&[sub], b"");
        key_line(&out);
        assert!(
            out.stderr.is_empty(),
            "{sub} into a pipe: {}",
            text(&out.stderr)
        );
    }
}

#[test]
fn pubkey_of_garbage_fails_in_one_line() {
    for garbage in [&b"garbage\n"[..], b"", b"AAAA\n", &[0xff; 44][..]] {
        let out = key_tool(&["pubkey"], garbage);
        assert!(!out.status.success(), "pubkey of {garbage:?} succeeded");
        assert!(out.stdout.is_empty(), "{:?}", text(&out.stdout));
        let err = text(&out.stderr);
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.starts_with("wireguard4netns: "), "{err}");
    }
}
