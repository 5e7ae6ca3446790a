//! End-to-end tests of the tools (`show`, `set`, `genkey`, `pubkey`, `genpsk`)
//! against the stock `wg` (wireguard-tools): a real tunnel (our binary as uid
//! 65534 attached to a namespace, a wireguard-go peer), read and changed both
//! through our tools (as uid 65534, `--tmpdir`) and through `wg` (as root, via
//! a symlink in /var/run/wireguard). Outputs must be byte-identical, apart
//! from the interface name and counters that move between two calls. The
//! `wg` command set is also run on the wireguard-go peer in the same test
//! and compared with ours (`wg_command_set_matches_wireguard_go`). See
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

// ---------------------------------------------------------------------------
// The `wg` command set on ours and on wireguard-go, side by side
// ---------------------------------------------------------------------------

/// One end of the test's tunnel as `wg` sees it: ours (the client, through
/// the symlink) or the wireguard-go peer (the server). Each has the other as
/// its "remote" peer, with a live session, so the same `wg` command can be run
/// on both and the results compared once what legitimately differs (own keys,
/// ports, endpoints, handshake times, byte counts) is written as a
/// placeholder.
struct Side {
    what: &'static str,
    ifname: String,
    own: KeyPair,
    remote: String,
}

impl Side {
    /// `wg VERB IF ARGS…`, which must succeed.
    fn wg(&self, verb: &str, args: &[&str]) -> String {
        let mut all = vec![verb, self.ifname.as_str()];
        all.extend_from_slice(args);
        wg(&all)
    }

    fn keys_out(&self, text: &str) -> String {
        text.replace(&self.own.private, "(own private key)")
            .replace(&self.own.public, "(own public key)")
            .replace(&self.remote, "(remote)")
    }

    /// `wg showconf`, `wg show` and `wg show dump`, normalised: keys and
    /// the values that differ by position replaced, lists and peers sorted
    /// (each implementation keeps its own order).
    fn view(&self) -> String {
        let showconf = self.keys_out(&self.wg("showconf", &[]));
        let showconf = sorted_blocks(&showconf, |line| {
            let (key, value) = line.split_once(" = ")?;
            Some(match key {
                "ListenPort" => "ListenPort = (port)".to_owned(),
                "Endpoint" => "Endpoint = (endpoint)".to_owned(),
                "AllowedIPs" => format!("AllowedIPs = {}", sorted_list(value, ", ")),
                _ => return None,
            })
        });
        let show = self.keys_out(&self.wg("show", &[]));
        let show = sorted_blocks(&show, |line| {
            let (key, value) = line.split_once(": ")?;
            Some(match key.trim_start() {
                "interface" => "interface: (name)".to_owned(),
                "listening port" | "endpoint" | "latest handshake" | "transfer" => {
                    format!("{key}: (some)")
                }
                "allowed ips" => format!("{key}: {}", sorted_list(value, ", ")),
                _ => return None,
            })
        });
        let dump = self.keys_out(&self.wg("show", &["dump"]));
        let mut lines = dump
            .lines()
            .map(|line| -> Vec<String> { line.split('\t').map(str::to_owned).collect() });
        let mut head = lines.next().unwrap_or_default();
        if let Some(port) = head.get_mut(2) {
            *port = "(port)".to_owned();
        }
        let some = |v: &str, none: &str| if v == none { none } else { "(some)" }.to_owned();
        let mut peers: Vec<String> = lines
            .map(|mut f| {
                if f.len() == 8 {
                    f[2] = some(&f[2], "(none)");
                    f[3] = sorted_list(&f[3], ",");
                    for field in &mut f[4..=6] {
                        *field = some(field, "0");
                    }
                }
                f.join("\t")
            })
            .collect();
        peers.sort();
        format!(
            "--- showconf\n{showconf}--- show\n{show}--- dump\n{}\n{}\n",
            head.join("\t"),
            peers.join("\n")
        )
    }

    /// The remote peer's line of `wg show IF dump`.
    fn remote_peer(&self) -> DumpPeer {
        let dump = WgDump::parse(&self.wg("show", &["dump"])).unwrap();
        dump.peer(&self.remote)
            .unwrap_or_else(|| panic!("{}: the remote peer is gone: {dump:?}", self.what))
            .clone()
    }
}

/// `list` split at `sep`, sorted, joined again.
fn sorted_list(list: &str, sep: &str) -> String {
    let mut items: Vec<&str> = list.split(sep).collect();
    items.sort_unstable();
    items.join(sep)
}

/// `text`'s blank-line separated blocks, each line passed through `fix`
/// (`None` keeps it), the blocks sorted: the interface block first, the
/// peers in key order.
fn sorted_blocks(text: &str, fix: impl Fn(&str) -> Option<String>) -> String {
    let mut blocks: Vec<String> = text
        .split("\n\n")
        .filter(|block| !block.trim().is_empty())
        .map(|block| {
            block
                .lines()
                .map(|line| fix(line).unwrap_or_else(|| line.to_owned()) + "\n")
                .collect()
        })
        .collect();
    blocks.sort_by_key(|block: &String| {
        !block.starts_with("[Interface]") && !block.starts_with("interface")
    });
    blocks[1..].sort();
    blocks.join("\n")
}

/// What a step must do to the session with the remote peer.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Session {
    /// Handshake time and counters stay; a ping goes through without a new
    /// handshake.
    Kept,
    /// The peer was made anew: no handshake, zero counters, until a ping
    /// makes a new one.
    Reset,
}

/// The two sides and the scenario: runs a step on both, compares.
struct Parity<'a> {
    s: &'a Scenario,
    sides: [Side; 2],
}

impl Parity<'_> {
    /// Runs `apply` on ours, then on wireguard-go; then both views must be
    /// equal and the session with the remote peer must have gone as
    /// `session` says, on both, and a ping must get through.
    fn step(&self, step: &str, session: Session, apply: impl Fn(&Side)) {
        let before = self.sides.each_ref().map(Side::remote_peer);
        for side in &self.sides {
            apply(side);
        }
        self.same(step);
        self.check_session(step, session, &before);
    }

    /// Both views equal, within 2 s: the engines' timers act on a new
    /// peer at different moments (wireguard-go sends a persistent keepalive
    /// at the `set` itself, gotatun at its next 250 ms tick), so a view taken
    /// at once may catch one side's first packet and not the other's.
    fn same(&self, step: &str) {
        let mut views = self.sides.each_ref().map(Side::view);
        wait_for(Duration::from_secs(2), || {
            views = self.sides.each_ref().map(Side::view);
            views[0] == views[1]
        });
        let [ours, go] = views;
        assert_eq!(
            ours, go,
            "after {step}: ours (left) and wireguard-go (right) differ"
        );
    }

    fn check_session(&self, step: &str, session: Session, before: &[DumpPeer; 2]) {
        let after = self.sides.each_ref().map(Side::remote_peer);
        for ((side, was), now) in self.sides.iter().zip(before).zip(&after) {
            let what = format!("after {step}, {}: {was:?} → {now:?}", side.what);
            match session {
                Session::Kept => {
                    assert_eq!(now.latest_handshake, was.latest_handshake, "{what}");
                    assert!(
                        now.rx_bytes >= was.rx_bytes && now.tx_bytes >= was.tx_bytes,
                        "{what}"
                    );
                }
                Session::Reset => {
                    assert_eq!(
                        (now.latest_handshake, now.rx_bytes, now.tx_bytes),
                        (0, 0, 0),
                        "{what}"
                    );
                }
            }
        }
        self.s.expect_ping(self.s.peer_v4(), 1);
        let pinged = self.sides.each_ref().map(Side::remote_peer);
        for ((side, was), now) in self.sides.iter().zip(&after).zip(&pinged) {
            let what = format!("ping after {step}, {}: {was:?} → {now:?}", side.what);
            assert!(now.rx_bytes > was.rx_bytes, "{what}");
            match session {
                Session::Kept => assert_eq!(
                    now.latest_handshake, was.latest_handshake,
                    "{what}: a new handshake"
                ),
                Session::Reset => assert!(now.latest_handshake > 0, "{what}"),
            }
        }
    }

    /// Writes `contents` to a file of the side's for `wg`; its path.
    fn conf(&self, side: &Side, name: &str, contents: &str) -> String {
        let file = format!("{name}-{}.conf", side.what);
        self.s
            .dir
            .write(&file, contents, 0o600)
            .display()
            .to_string()
    }
}

/// The issue's `wg` command set, each step run with the stock `wg` on ours
/// and on wireguard-go (the test's peer, whose own peer is ours) and compared:
/// show, showconf, syncconf (unchanged: session and counters kept, no new
/// handshake; changed: only the change), set moving a prefix, remove,
/// addconf, listen-port, fwmark, private-key, setconf. Where the two may not
/// agree by position (ours runs as uid 65534, wireguard-go as root), the step
/// says so.
#[test]
fn wg_command_set_matches_wireguard_go() {
    let Some((s, link, idle)) = running_tunnel("wg_command_set_matches_wireguard_go") else {
        return;
    };
    let server_keys = s.peer.keys.clone();
    let mut parity = Parity {
        s: &s,
        sides: [
            Side {
                what: "ours",
                ifname: link.name.clone(),
                own: s.client_keys.clone(),
                remote: server_keys.public.clone(),
            },
            Side {
                what: "wireguard-go",
                ifname: s.peer.ifname.clone(),
                own: server_keys.clone(),
                remote: s.client_keys.public.clone(),
            },
        ],
    };
    let subnets = format!("{}/24,{}/64", s.id.tunnel_v4(0), s.id.tunnel_v6(0));
    let idle_ips = format!("{}/32,fd00::/64", s.id.extra_v4());
    // The same remote peer on both sides (the tunnel's subnets, a keepalive)
    // and the idle peer `running_tunnel` gave ours.
    parity.sides[1].wg("set", &["peer", &idle.public, "allowed-ips", &idle_ips]);
    for side in &parity.sides {
        side.wg(
            "set",
            &[
                "peer",
                &side.remote,
                "allowed-ips",
                &subnets,
                "persistent-keepalive",
                "25",
            ],
        );
    }
    s.expect_ping(s.peer_v4(), 1);
    // Handshake times are whole seconds: let one pass, so a new handshake shows.
    thread::sleep(Duration::from_millis(1100));
    parity.same("show, showconf");

    parity.step("syncconf, nothing changed", Session::Kept, |side| {
        let conf = side.wg("showconf", &[]);
        let file = parity.conf(side, "unchanged", &conf);
        side.wg("syncconf", &[&file]);
    });

    // A new keepalive for the remote peer, the idle peer left out (removed).
    parity.step("syncconf, changed", Session::Kept, |side| {
        let conf = side.wg("showconf", &[]);
        let changed: String = conf
            .split("\n\n")
            .filter(|block| !block.contains(&idle.public))
            .map(|block| block.replace("PersistentKeepalive = 25", "PersistentKeepalive = 15"))
            .collect::<Vec<_>>()
            .join("\n\n");
        let file = parity.conf(side, "changed", &changed);
        side.wg("syncconf", &[&file]);
        assert_eq!(
            side.remote_peer().persistent_keepalive,
            Some(15),
            "{}",
            side.what
        );
    });

    let (old, new) = (KeyPair::generate(), KeyPair::generate());
    parity.step("set: a peer with two prefixes", Session::Kept, |side| {
        side.wg(
            "set",
            &[
                "peer",
                &old.public,
                "allowed-ips",
                "10.0.8.0/24,10.0.9.0/24",
            ],
        );
    });
    parity.step(
        "set: a prefix moved to another peer",
        Session::Kept,
        |side| {
            side.wg("set", &["peer", &new.public, "allowed-ips", "10.0.8.0/24"]);
        },
    );
    parity.step(
        "set: an unrelated change to the old peer",
        Session::Kept,
        |side| {
            side.wg("set", &["peer", &old.public, "persistent-keepalive", "25"]);
        },
    );
    let [ours, go] = &parity.sides;
    assert!(
        ours.wg("show", &["allowed-ips"])
            .contains(&format!("{}\t10.0.9.0/24\n", old.public)),
        "the moved prefix came back to the old peer"
    );

    // wireguard-go ignores a peer with the interface's own public key.
    parity.step("set: a peer with our own key", Session::Kept, |side| {
        side.wg(
            "set",
            &["peer", &side.own.public, "allowed-ips", "10.0.6.0/24"],
        );
    });

    parity.step("set: peer remove", Session::Kept, |side| {
        side.wg("set", &["peer", &new.public, "remove"]);
    });

    let added = KeyPair::generate();
    parity.step("addconf", Session::Kept, |side| {
        let file = parity.conf(
            side,
            "added",
            &format!(
                "[Peer]\nPublicKey = {}\nAllowedIPs = 10.0.7.0/24\n",
                added.public
            ),
        );
        side.wg("addconf", &[&file]);
    });

    // Both to the same port number (each in its own namespace); wireguard-go
    // then back to its own, where ours sends.
    let port = s.id.port(1).to_string();
    parity.step("listen-port", Session::Kept, |side| {
        side.wg("set", &["listen-port", &port]);
        assert_eq!(
            side.wg("show", &["listen-port"]),
            format!("{port}\n"),
            "{}",
            side.what
        );
        if side.what == "wireguard-go" {
            side.wg("set", &["listen-port", &s.id.port(0).to_string()]);
        }
    });

    // fwmark: ours (uid 65534, no CAP_NET_ADMIN where its socket lives) is
    // refused with EPERM and changes nothing. wireguard-go cannot be refused
    // here: it needs CAP_NET_ADMIN in its socket's namespace to make and size
    // its TUN, which is what SO_MARK asks for; as root it takes the mark.
    // `off` again agrees on both.
    let before = ours.view();
    let refused = wg_raw(&["set", &ours.ifname, "fwmark", "4660"]);
    assert!(!refused.status.success(), "fwmark was accepted");
    assert_eq!(
        text(&refused.stderr).trim(),
        "Unable to modify interface: Operation not permitted"
    );
    assert_eq!(ours.view(), before, "a refused fwmark changed something");
    go.wg("set", &["fwmark", "4660"]);
    assert_eq!(go.wg("show", &["fwmark"]), "0x1234\n");
    parity.step("fwmark off", Session::Kept, |side| {
        side.wg("set", &["fwmark", "off"]);
    });

    // private-key: a new key on both; then each side is told the other's new
    // public key (the old remote peer removed, the new one added with the
    // same settings), and a ping makes a new handshake on both.
    let psk_file = s
        .dir
        .write("psk", &format!("{}\n", s.psk.as_ref().unwrap()), 0o600)
        .display()
        .to_string();
    let new_keys = [KeyPair::generate(), KeyPair::generate()];
    for (side, keys) in parity.sides.iter_mut().zip(&new_keys) {
        let file = s.dir.write(
            &format!("key-{}", side.what),
            &format!("{}\n", keys.private),
            0o600,
        );
        side.wg("set", &["private-key", &file.display().to_string()]);
        side.own = keys.clone();
    }
    parity.same("private-key");
    let handshakes = parity
        .sides
        .each_ref()
        .map(|side| side.remote_peer().latest_handshake);
    let remotes = [new_keys[1].public.clone(), new_keys[0].public.clone()];
    for (side, remote) in parity.sides.iter_mut().zip(remotes) {
        let endpoint = side.remote_peer().endpoint;
        side.wg(
            "set",
            &[
                "peer",
                &side.remote,
                "remove",
                "peer",
                &remote,
                "preshared-key",
                &psk_file,
                "allowed-ips",
                &subnets,
                "persistent-keepalive",
                "15",
                "endpoint",
                &endpoint,
            ],
        );
        side.remote = remote;
    }
    parity.same("private-key, the remote peer's new key");
    s.expect_ping(s.peer_v4(), 1);
    for (side, was) in parity.sides.iter().zip(handshakes) {
        let now = side.remote_peer().latest_handshake;
        assert!(
            now > was,
            "{}: no new handshake with the new keys: {was} → {now}",
            side.what
        );
    }
    parity.same("private-key, after a ping");

    // setconf: replaces everything; the added peer, not in the file, goes.
    parity.step("setconf", Session::Reset, |side| {
        let conf = side.wg("showconf", &[]);
        // Without keepalive, so that nothing makes a new handshake before the ping.
        let kept: String = conf
            .split("\n\n")
            .filter(|block| !block.contains(&added.public))
            .map(|block| {
                block
                    .lines()
                    .filter(|line| !line.starts_with("PersistentKeepalive"))
                    .collect::<Vec<_>>()
                    .join("\n")
            })
            .collect::<Vec<_>>()
            .join("\n\n");
        let file = parity.conf(side, "setconf", &kept);
        side.wg("setconf", &[&file]);
        assert!(
            !side.wg("show", &["peers"]).contains(&added.public),
            "{}",
            side.what
        );
    });
    parity.same("setconf, after a ping");
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
