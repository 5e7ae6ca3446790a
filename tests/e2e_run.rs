//! End-to-end tests of the `run` form
//! (`wireguard4netns run --config CONFIG [--ifname IF] [--tmpdir DIR] [--map-root]
//! [--ready-fd N] -- CMD [ARGS…]`): our binary runs as uid 65534, makes its own
//! user+net+mount namespaces for the command, and talks to a real `wireguard-go`
//! peer in a root-owned namespace. See `common/mod.rs` for the harness. They
//! need root; without it they skip (or fail when `CI=true`).

#![forbid(unsafe_code)]

mod common;

use std::ffi::OsStr;
use std::fs;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use common::*;

/// Bound for one `run` whose command does a little (ping, a 1 s iperf3 …).
const RUN_TIMEOUT: Duration = Duration::from_secs(40);
/// Bound for one `run` whose command does nearly nothing.
const QUICK_TIMEOUT: Duration = Duration::from_secs(20);

/// One test's world for `run`: a work dir (the `--tmpdir`, the configs), a
/// client key pair, and, when the test needs traffic, a [`Peer`] that accepts
/// the client (tunnel `.1`/`::1`; the client is `.2`/`::2`). Without a peer the
/// config's Endpoint is a local port nobody listens on: the tunnel comes up,
/// it just carries nothing.
///
/// On drop: instances of our binary started with this work dir get 3 s to go,
/// then SIGKILL by PID; then the peer and the dir go.
struct RunWorld {
    id: TestId,
    config: ClientConfig,
    /// `DNS =` entries: servers and search domains.
    dns: Vec<String>,
    peer: Option<Peer>,
    dir: WorkDir,
}

impl RunWorld {
    fn new(id: TestId, with_peer: bool) -> Self {
        let keys = KeyPair::generate();
        let dir = WorkDir::new(&id);
        let (peer, peer_public, endpoint) = if with_peer {
            let peer = Peer::server(&id, &keys.public, None);
            let (public, endpoint) = (peer.keys.public.clone(), peer.endpoint());
            (Some(peer), public, endpoint)
        } else {
            let other = KeyPair::generate();
            (None, other.public, format!("127.0.0.1:{}", id.port(1)))
        };
        let config = ClientConfig {
            private_key: keys.private.clone(),
            addresses: vec![
                format!("{}/24", id.tunnel_v4(2)),
                format!("{}/64", id.tunnel_v6(2)),
            ],
            peer_public_key: peer_public,
            allowed_ips: vec![
                format!("{}/24", id.tunnel_v4(0)),
                format!("{}/64", id.tunnel_v6(0)),
            ],
            endpoint,
            ..ClientConfig::default()
        };
        Self {
            id,
            config,
            dns: Vec::new(),
            peer,
            dir,
        }
    }

    fn peer(&self) -> &Peer {
        self.peer.as_ref().expect("this world has a peer")
    }

    /// The config, with `DNS =` when [`RunWorld::dns`] is set, as `DIR/NAME`.
    fn write_config(&self, name: &str) -> PathBuf {
        let mut text = self.config.render();
        if !self.dns.is_empty() {
            text = text.replacen(
                "[Interface]\n",
                &format!("[Interface]\nDNS = {}\n", self.dns.join(", ")),
                1,
            );
        }
        self.dir.write(name, &text, 0o600)
    }

    /// The `--tmpdir`: a directory of its own inside the work dir, because
    /// `run` hides it from the command, and the command works in DIR.
    fn sock_dir(&self) -> PathBuf {
        self.dir.path().join("uapi")
    }

    /// `run --config DIR/wg0.conf --tmpdir DIR/uapi FLAGS… -- COMMAND…` as
    /// uid 65534, in DIR.
    fn command<S: AsRef<OsStr>>(
        &self,
        flags: &[&str],
        command: impl IntoIterator<Item = S>,
    ) -> Command {
        let config = self.write_config("wg0.conf");
        let mut c = run_form(&config, &self.sock_dir(), flags, command);
        c.current_dir(self.dir.path());
        c
    }

    /// Run `sh -c SCRIPT` through our binary, bounded by `timeout`.
    fn sh(&self, flags: &[&str], script: &str, timeout: Duration) -> Output {
        let mut c = self.command(flags, ["sh", "-c", script]);
        run_timeout(&mut c, None, timeout).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Files in the work dir other than the test's own (configs and the
    /// `ready`/`started`/`go` files of some tests): while our program runs,
    /// its socket, lock and resolv.conf.
    fn leftovers(&self) -> Vec<String> {
        let sock_dir = self.sock_dir();
        let in_sock_dir = if sock_dir.exists() {
            dir_entries(&sock_dir)
        } else {
            Vec::new()
        };
        dir_entries(self.dir.path())
            .into_iter()
            .filter(|n| {
                !((n.ends_with(".conf") && !n.ends_with(".resolv.conf"))
                    || ["ready", "started", "go", "uapi", "side"].contains(&n.as_str()))
            })
            .chain(in_sock_dir.into_iter().map(|n| format!("uapi/{n}")))
            .collect()
    }

    fn assert_nothing_left(&self, context: &str) {
        let running = wait_for(EXIT_BUDGET, || instances(self.dir.path()).is_empty());
        assert!(
            running,
            "{context}: processes of our binary left: {:?}",
            instances(self.dir.path())
        );
        assert_eq!(
            self.leftovers(),
            Vec::<String>::new(),
            "{context}: files left in {}",
            self.dir.path().display()
        );
    }
}

impl Drop for RunWorld {
    fn drop(&mut self) {
        let killed = reap_instances(self.dir.path(), Duration::from_secs(3));
        if !killed.is_empty() {
            eprintln!("cleanup: instances {killed:?} of our binary still running; SIGKILLed");
        }
    }
}

/// `Output` → (exit code, stdout, stderr), panicking with all of it on death
/// by signal.
fn code_of(desc: &str, out: &Output) -> (i32, String, String) {
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    let code = out
        .status
        .code()
        .unwrap_or_else(|| panic!("{desc}: {}\n{stdout}\n{stderr}", out.status));
    (code, stdout, stderr)
}

/// A shell function for the command's scripts: `until_reply ADDR` pings once a
/// second until the first reply (at most 10 s), then `ping -c 3` must get all.
const UNTIL_REPLY: &str = r#"
until_reply() {
    n=0
    until ping -n -c 1 -W 1 "$1" >/dev/null 2>&1; do
        n=$((n + 1))
        [ "$n" -lt 10 ] || { echo "no reply from $1 within 10 tries"; ping -n -c 1 -W 1 "$1"; return 1; }
        sleep 0.2
    done
    ping -n -c 3 -i 0.2 -W 2 "$1"
}
"#;

/// A one-shot iperf3 server on the peer's tunnel address, run as root in its
/// namespace; killed on drop.
struct IperfServer {
    proc: Spawned,
    port: u16,
}

impl IperfServer {
    fn start(peer: &Peer, port: u16) -> Self {
        let addr = peer.tunnel_v4.to_string();
        let port_s = port.to_string();
        let proc = Spawned::start(
            peer.place()
                .cmd("iperf3", ["-s", "-1", "-B", &addr, "-p", &port_s]),
        );
        let mut server = Self { proc, port };
        let want = format!(":{port}");
        let listening = wait_for(Duration::from_secs(10), || {
            let out = run(&mut peer.place().cmd("ss", ["-Hltn"]));
            text(&out.stdout).contains(&want) || server.proc.try_exit().is_some()
        });
        assert!(
            listening && server.proc.try_exit().is_none(),
            "iperf3 server not listening on {addr}{want}\n{}",
            server.proc.report()
        );
        server
    }
}

/// The command reaches the peer through the tunnel: ping over IPv4 and IPv6,
/// and a 1 s iperf3 TCP transfer to a server on the peer's tunnel address.
#[test]
fn run_reaches_peer_by_ping_and_tcp() {
    let Some(id) = require_root_env("run_reaches_peer_by_ping_and_tcp") else {
        return;
    };
    assert!(
        Command::new("iperf3").arg("--version").output().is_ok(),
        "iperf3 is not installed (tests/run installs it)"
    );
    let w = RunWorld::new(id, true);
    let mut server = IperfServer::start(w.peer(), w.id.port(1));
    let script = format!(
        "{UNTIL_REPLY}\nset -e\n{PRINT_ENGINE_CONFINEMENT}\nuntil_reply {v4}\nuntil_reply {v6}\n\
         iperf3 -c {v4} -p {port} -t 1 -f m\n",
        v4 = w.peer().tunnel_v4,
        v6 = w.peer().tunnel_v6,
        port = server.port,
    );
    let t = Instant::now();
    let out = w.sh(&[], &script, RUN_TIMEOUT);
    let (code, stdout, stderr) = code_of("run", &out);
    assert_eq!(
        code,
        0,
        "the command failed\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}\n{}",
        w.peer().diagnostics()
    );
    assert!(
        stdout.contains("receiver"),
        "no iperf3 summary:\n{stdout}\n{stderr}"
    );
    assert_confined(&stdout, "run's engine, seen by the command");
    let server_exit = server.proc.wait_exit(Duration::from_secs(5));
    assert!(
        server_exit.is_some_and(|s| s.success()),
        "iperf3 server: {}",
        server.proc.report()
    );
    let rate = stdout
        .lines()
        .filter(|l| l.contains("receiver"))
        .map(str::trim)
        .collect::<Vec<_>>()
        .join("; ");
    eprintln!(
        "run_reaches_peer_by_ping_and_tcp: done in {:?}; {rate}",
        t.elapsed()
    );
    w.assert_nothing_left("after the command exited");
}

/// The command sees the config's DNS servers and search domains in
/// /etc/resolv.conf; the host's file stays as it was, during the run and after.
#[test]
fn run_sees_dns_in_resolv_conf_and_host_file_is_unchanged() {
    let Some(id) = require_root_env("run_sees_dns_in_resolv_conf_and_host_file_is_unchanged")
    else {
        return;
    };
    let mut w = RunWorld::new(id, false);
    let server4 = w.id.tunnel_v4(53);
    let server6 = w.id.tunnel_v6(53);
    let domain = format!("{}.test", w.id.name(""));
    w.dns = vec![
        server4.to_string(),
        server6.to_string(),
        domain.clone(),
        "example.invalid".to_owned(),
    ];
    let host_before = fs::read("/etc/resolv.conf").ok();
    let started = w.dir.path().join("started");
    let go = w.dir.path().join("go");
    // Print the file, say so, and wait (at most 15 s) for the test to look at
    // the host's file while the bind mount exists.
    let script = format!(
        "cat /etc/resolv.conf && : > {started} && n=0 && \
         while [ ! -e {go} ] && [ $n -lt 300 ]; do sleep 0.05; n=$((n + 1)); done",
        started = started.display(),
        go = go.display(),
    );
    let mut run = Spawned::start(w.command(&[], ["sh", "-c", &script]));
    let up = wait_for(QUICK_TIMEOUT, || {
        started.exists() || run.try_exit().is_some()
    });
    assert!(
        up && started.exists(),
        "command did not start\n{}",
        run.report()
    );
    let host_during = fs::read("/etc/resolv.conf").ok();
    let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    fs::write(&go, "").expect("signal the command");
    let status = run.wait_exit(QUICK_TIMEOUT);
    assert!(
        status.is_some_and(|s| s.success()),
        "run failed\n{}",
        run.report()
    );
    let inside = run.stdout();
    for want in [
        format!("nameserver {server4}"),
        format!("nameserver {server6}"),
    ] {
        assert!(
            inside.lines().any(|l| l.trim() == want),
            "no `{want}` in the command's /etc/resolv.conf:\n{inside}"
        );
    }
    let search: Vec<&str> = inside
        .lines()
        .find_map(|l| l.strip_prefix("search "))
        .map(|l| l.split_whitespace().collect())
        .unwrap_or_default();
    assert_eq!(
        search,
        vec![domain.as_str(), "example.invalid"],
        "search domains in the command's /etc/resolv.conf:\n{inside}"
    );
    assert_eq!(
        host_during, host_before,
        "the host's /etc/resolv.conf changed during the run"
    );
    assert!(
        !mounts.contains(&w.dir.path().display().to_string()),
        "a mount of the work dir is visible in the host's mount namespace:\n{mounts}"
    );
    assert_eq!(
        fs::read("/etc/resolv.conf").ok(),
        host_before,
        "the host's /etc/resolv.conf changed after the run"
    );
    w.assert_nothing_left("after the command exited");
}

/// `--no-sandbox`: the engine installs no seccomp filter and says so on
/// stderr (a warning, shown at `run`'s default level); the tunnel still works.
#[test]
fn run_no_sandbox_is_unconfined_and_says_so() {
    let Some(id) = require_root_env("run_no_sandbox_is_unconfined_and_says_so") else {
        return;
    };
    let w = RunWorld::new(id, true);
    let script = format!(
        "{UNTIL_REPLY}\nset -e\n{PRINT_ENGINE_CONFINEMENT}\nuntil_reply {}\n",
        w.peer().tunnel_v4
    );
    let out = w.sh(&["--no-sandbox"], &script, RUN_TIMEOUT);
    let (code, stdout, stderr) = code_of("run --no-sandbox", &out);
    assert_eq!(
        code, 0,
        "--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}"
    );
    assert_unconfined(&stdout, "run --no-sandbox");
    assert!(
        stderr.contains("WARN") && stderr.contains("--no-sandbox"),
        "no warning about --no-sandbox on stderr:\n{stderr}"
    );
    w.assert_nothing_left("after the command exited");
}

/// The command's exit status is ours: 0, 7, and 128+15 when it dies of SIGTERM.
#[test]
fn run_passes_exit_status_through() {
    let Some(id) = require_root_env("run_passes_exit_status_through") else {
        return;
    };
    let mut w = RunWorld::new(id, false);
    // With DNS= (and a config named like an interface), a run that goes well
    // says nothing at the default level.
    w.dns = vec![w.id.tunnel_v4(53).to_string()];
    for (script, want) in [("exit 0", 0), ("exit 7", 7), ("kill -TERM $$", 143)] {
        let out = w.sh(&[], script, QUICK_TIMEOUT);
        let (code, stdout, stderr) = code_of(script, &out);
        assert_eq!(
            code, want,
            "`{script}`\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}"
        );
        assert!(
            stderr.trim().is_empty(),
            "`{script}`: our program wrote to stderr:\n{stderr}"
        );
        w.assert_nothing_left(script);
    }
}

/// Without DNS= the command keeps the host's resolv.conf, and `run` says so
/// once, at the default level (warn), once the tunnel is up; a config file
/// whose name is no interface name gives `wg0`, with a warning that says so
/// and why. The command's SIGPIPE is not left ignored (Rust ignores it in our
/// process, and an ignored signal survives exec).
#[test]
fn run_warns_once_about_the_kept_resolv_conf_and_a_fallback_name() {
    let Some(id) =
        require_root_env("run_warns_once_about_the_kept_resolv_conf_and_a_fallback_name")
    else {
        return;
    };
    let w = RunWorld::new(id, false);
    let config = w.write_config("a-name-longer-than-an-ifname.conf");
    let dir = w.sock_dir();
    let script = "ip -o link show dev wg0 >/dev/null && grep SigIgn /proc/self/status";
    let mut c = run_form(&config, &dir, &[], ["sh", "-c", script]);
    c.current_dir(w.dir.path());
    let out = run_timeout(&mut c, None, QUICK_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    let (code, stdout, stderr) = code_of("fallback name", &out);
    assert_eq!(code, 0, "no wg0 inside\n{stdout}\n{stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 2, "{stderr}");
    let said = |what: &str| lines.iter().filter(|l| l.contains(what)).count();
    assert_eq!(
        said("no DNS= in the config: the command keeps the host's /etc/resolv.conf"),
        1,
        "{stderr}"
    );
    assert_eq!(
        said("the interface is named wg0, not after the file"),
        1,
        "{stderr}"
    );
    assert!(lines.iter().all(|l| l.contains("WARN")), "{stderr}");
    let ignored = stdout
        .trim()
        .strip_prefix("SigIgn:")
        .and_then(|mask| u64::from_str_radix(mask.trim(), 16).ok())
        .unwrap_or_else(|| panic!("no SigIgn line:\n{stdout}"));
    assert_eq!(ignored & (1 << 12), 0, "SIGPIPE is ignored in the command");
    w.assert_nothing_left("fallback name");
}

/// `Table = off`, as with wg-quick: no routes for the peers' AllowedIPs (the
/// address's own prefix route, which the kernel adds, stays); without it the
/// AllowedIPs are routed through the tunnel.
#[test]
fn run_table_off_adds_no_routes() {
    let Some(id) = require_root_env("run_table_off_adds_no_routes") else {
        return;
    };
    let mut w = RunWorld::new(id, false);
    w.config.allowed_ips.push("192.0.2.0/24".to_owned());
    let prefix = format!("{}/24", w.id.tunnel_v4(0));
    for (table, routed) in [("", true), ("Table = off\n", false)] {
        let text = w.config.render().replacen(
            "[Interface]\n",
            &format!("[Interface]\nDNS = {}\n{table}", w.id.tunnel_v4(53)),
            1,
        );
        let config = w.dir.write("wg0.conf", &text, 0o600);
        let mut c = run_form(&config, &w.sock_dir(), &[], ["ip", "-4", "route"]);
        c.current_dir(w.dir.path());
        let out = run_timeout(&mut c, None, QUICK_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
        let (code, stdout, stderr) = code_of(table, &out);
        assert_eq!(code, 0, "{table:?}\n{stdout}\n{stderr}");
        assert_eq!(
            stdout.contains("192.0.2.0/24 dev wg0"),
            routed,
            "{table:?}: routes\n{stdout}"
        );
        assert!(
            stdout.contains(&prefix),
            "{table:?}: no prefix route\n{stdout}"
        );
        w.assert_nothing_left(table);
    }
}

/// `--map-root`: the command is uid and gid 0 inside; without it, the
/// caller's (65534).
#[test]
fn run_map_root_or_callers_uid() {
    let Some(id) = require_root_env("run_map_root_or_callers_uid") else {
        return;
    };
    let w = RunWorld::new(id, false);
    for (flags, want) in [(&["--map-root"][..], "0 0"), (&[][..], "65534 65534")] {
        let out = w.sh(flags, "echo $(id -u) $(id -g)", QUICK_TIMEOUT);
        let (code, stdout, stderr) = code_of("id", &out);
        assert_eq!(code, 0, "{flags:?}: {stdout}\n{stderr}");
        assert_eq!(stdout.trim(), want, "uid and gid inside with {flags:?}");
    }
}

/// Nothing but root reads the engine's memory or environment, where its keys
/// are. From the command (the caller's uid in a nested user namespace, or
/// root of its own with `--map-root`) the kernel's capability check refuses
/// already, as the command's user namespace is not the engine's; from a
/// process of the same uid in the engine's own namespaces only the engine
/// being non-dumpable does.
#[test]
fn run_command_and_same_uid_cannot_read_the_engines_memory() {
    let Some(id) = require_root_env("run_command_and_same_uid_cannot_read_the_engines_memory")
    else {
        return;
    };
    let w = RunWorld::new(id, false);
    for flags in [&[][..], &["--map-root"][..]] {
        let script = format!(
            r#"comm=$(cat /proc/$PPID/comm); [ "$comm" = wireguard4netns ] || {{ echo "the parent is $comm"; exit 3; }}
set -- $PPID
{PROBE_ENGINE}
ls -l /proc/$$/fd"#
        );
        let out = w.sh(flags, &script, QUICK_TIMEOUT);
        let (code, stdout, stderr) = code_of("probe", &out);
        assert_eq!(code, 0, "{flags:?}: {stdout}\n{stderr}");
        assert_engine_unreadable(&format!("from the command, {flags:?}"), &stdout, &stderr);
        // None of our sockets (listener, channel) nor the lock file in the
        // socket directory reaches the command. (Its other descriptors are
        // stdio and whatever the test harness let our binary inherit.)
        let dir = w.dir.path().display().to_string();
        assert!(
            !stdout.contains("socket:[") && !stdout.contains(&dir),
            "{flags:?}: the command holds descriptors of ours:\n{stdout}"
        );
    }
    let (run, _sleeper) = start_sleeper(&w);
    let engine = run.pid.to_string();
    let out = run_ok(&mut as_user("sh", ["-c", PROBE_ENGINE, "probe", &engine]));
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_engine_unreadable("from uid 65534 on the host", &stdout, &stderr);
}

/// The command runs in the caller's working directory with the caller's
/// environment.
#[test]
fn run_keeps_cwd_and_environment() {
    let Some(id) = require_root_env("run_keeps_cwd_and_environment") else {
        return;
    };
    let w = RunWorld::new(id, false);
    let value = format!("probe {} with spaces", w.id.name(""));
    let mut c = w.command(&[], ["sh", "-c", r#"pwd; printf '%s\n' "$W4N_PROBE""#]);
    c.env("W4N_PROBE", &value);
    let out = run_timeout(&mut c, None, QUICK_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    let (code, stdout, stderr) = code_of("pwd", &out);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines,
        vec![w.dir.path().to_str().expect("utf-8 path"), value.as_str()],
        "cwd and $W4N_PROBE inside"
    );
}

/// `--ready-fd N` writes "1" to N once the tunnel is up; the command sees it
/// there while it runs.
#[test]
fn run_ready_fd_writes_1() {
    let Some(id) = require_root_env("run_ready_fd_writes_1") else {
        return;
    };
    let w = RunWorld::new(id, false);
    let ready = w.dir.path().join("ready");
    let config = w.write_config("wg0.conf");
    let script = format!(
        r#"n=0; until [ "$(cat {ready})" = 1 ]; do [ $n -lt 100 ] || exit 9; sleep 0.05; n=$((n + 1)); done"#,
        ready = ready.display()
    );
    // fd 3 opened by a shell (as uid 65534) on the file, then our binary.
    let mut c = as_user(
        "sh",
        [
            "-c",
            r#"exec "$0" "$@" 3>"$W4N_READY""#,
            binary().to_str().expect("utf-8 path"),
            "run",
            "--config",
            config.to_str().expect("utf-8 path"),
            "--tmpdir",
            w.sock_dir().to_str().expect("utf-8 path"),
            "--ready-fd",
            "3",
            "--",
            "sh",
            "-c",
            &script,
        ],
    );
    c.env("W4N_READY", &ready).current_dir(w.dir.path());
    let out = run_timeout(&mut c, None, QUICK_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    let (code, stdout, stderr) = code_of("ready-fd", &out);
    assert_eq!(
        code,
        0,
        "the command did not see \"1\" in the ready file ({:?})\n{stdout}\n{stderr}",
        fs::read_to_string(&ready)
    );
    assert_eq!(fs::read_to_string(&ready).expect("ready file"), "1");
}

/// Without `--ifname` the interface is named after the config file
/// (`vpn0.conf` → `vpn0`, as wg-quick does), and so is the socket; `--ifname`
/// overrides it. The command does not see the socket: its directory is an
/// empty read-only tmpfs there.
#[test]
fn run_default_ifname_is_config_stem() {
    let Some(id) = require_root_env("run_default_ifname_is_config_stem") else {
        return;
    };
    let w = RunWorld::new(id, false);
    let config = w.write_config("vpn0.conf");
    let dir = w.sock_dir();
    for (flags, name) in [(&[][..], "vpn0"), (&["--ifname", "tun7"][..], "tun7")] {
        let script = format!(
            "ip -o link show dev {name} && ! test -e {sock} && test -z \"$(ls -A {dir})\" \
             && ! touch {dir}/x 2>/dev/null && ip -o addr show dev {name}",
            sock = dir.join(format!("{name}.sock")).display(),
            dir = dir.display()
        );
        let mut c = run_form(&config, &dir, flags, ["sh", "-c", &script]);
        c.current_dir(w.dir.path());
        let out = run_timeout(&mut c, None, QUICK_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
        let (code, stdout, stderr) = code_of("ifname", &out);
        assert_eq!(
            code, 0,
            "{flags:?}: no interface {name}, or the socket dir is visible inside\n{stdout}\n{stderr}"
        );
        assert!(
            stdout.contains(&format!("{}/24", w.id.tunnel_v4(2))),
            "{name} lacks the config's address:\n{stdout}"
        );
        w.assert_nothing_left(name);
    }
}

/// Start `run -- sleep 30` and wait until the sleep runs; returns the spawned
/// program (its PID is our binary's: setpriv execs in place) and the sleep's PID.
fn start_sleeper(w: &RunWorld) -> (Spawned, u32) {
    let mut run = Spawned::start(w.command(&[], ["sleep", "30"]));
    let mut sleeper = None;
    wait_for(QUICK_TIMEOUT, || {
        sleeper = children_of(run.pid)
            .into_iter()
            .find(|(_, comm)| comm == "sleep")
            .map(|(pid, _)| pid);
        sleeper.is_some() || run.try_exit().is_some()
    });
    let sleeper = sleeper.unwrap_or_else(|| panic!("the command never ran\n{}", run.report()));
    assert!(
        !gone(&w.sock_dir().join("wg0.sock")),
        "no socket while the command runs"
    );
    (run, sleeper)
}

/// SIGTERM to wireguard4netns during `run -- sleep 30` is forwarded: the
/// command dies of it, we exit 143, and nothing is left: no process, no
/// socket, lock or resolv.conf.
#[test]
fn run_sigterm_ends_command_and_leaves_nothing() {
    let Some(id) = require_root_env("run_sigterm_ends_command_and_leaves_nothing") else {
        return;
    };
    let mut w = RunWorld::new(id, false);
    w.dns = vec![w.id.tunnel_v4(53).to_string()];
    let (mut run, sleeper) = start_sleeper(&w);
    assert!(
        !gone(&w.sock_dir().join("wg0.resolv.conf")),
        "no resolv.conf while the command runs: {:?}",
        dir_entries(w.dir.path())
    );
    let t = Instant::now();
    run.signal(Signal::SIGTERM);
    let status = run.wait_exit(EXIT_BUDGET + EXIT_SLACK);
    let took = t.elapsed();
    assert!(
        status.is_some(),
        "still running {took:?} after SIGTERM\n{}",
        run.report()
    );
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(143),
        "exit status after SIGTERM\n{}",
        run.report()
    );
    assert!(
        wait_for(EXIT_BUDGET, || !process_running(sleeper)),
        "the command (sleep, PID {sleeper}) outlived wireguard4netns"
    );
    w.assert_nothing_left("after SIGTERM");
    eprintln!("run_sigterm_ends_command_and_leaves_nothing: exited 143 {took:?} after SIGTERM");
}

/// SIGKILL to wireguard4netns during `run -- sleep 30`: within 2 s the command
/// is gone (parent-death signal) and the janitor has removed the socket files.
#[test]
fn run_sigkill_leaves_nothing_within_2s() {
    let Some(id) = require_root_env("run_sigkill_leaves_nothing_within_2s") else {
        return;
    };
    let mut w = RunWorld::new(id, false);
    w.dns = vec![w.id.tunnel_v4(53).to_string()];
    let (mut run, sleeper) = start_sleeper(&w);
    let t = Instant::now();
    run.signal(Signal::SIGKILL);
    let dir = w.dir.path().to_owned();
    let clean = wait_for(EXIT_BUDGET, || {
        !process_running(sleeper) && instances(&dir).is_empty() && w.leftovers().is_empty()
    });
    let took = t.elapsed();
    assert!(
        clean,
        "{took:?} after SIGKILL: command running: {}, our processes: {:?}, files: {:?}",
        process_running(sleeper),
        instances(&dir),
        w.leftovers()
    );
    let status = run.wait_exit(Duration::from_secs(1));
    assert_eq!(
        status.and_then(|s| std::os::unix::process::ExitStatusExt::signal(&s)),
        Some(9),
        "{}",
        run.report()
    );
    eprintln!("run_sigkill_leaves_nothing_within_2s: all gone {took:?} after SIGKILL");
}

/// `program args…` of `c` as one `sh` word list, each argument single-quoted.
fn shell_line(c: &Command) -> String {
    std::iter::once(c.get_program())
        .chain(c.get_args())
        .map(|a| format!("'{}'", a.to_string_lossy().replace('\'', r"'\''")))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Ctrl-C in a terminal reaches the command once. The terminal sends SIGINT to
/// its whole foreground process group, the command included, so we must not
/// forward our own copy (an editor or a `git` would take two Ctrl-Cs as "quit
/// now"). `script` gives the run a pseudo-terminal; a ^C written to it is what a
/// user's Ctrl-C is. The two copies would often merge while pending, so the
/// test also reads our log (at info level) for the forwarding. A signal sent
/// to us by a process is still forwarded (`run_sigterm_…` covers that path).
#[test]
fn run_ctrl_c_in_a_terminal_reaches_the_command_once() {
    use std::io::{Read, Write};
    use std::process::Stdio;
    use std::sync::{Arc, Mutex};

    let Some(id) = require_root_env("run_ctrl_c_in_a_terminal_reaches_the_command_once") else {
        return;
    };
    let w = RunWorld::new(id, false);
    // "ready" is computed, not written: our log line quotes the command, and
    // a ^C sent on seeing it there could reach the shell before its trap.
    let command = r#"n=0; trap 'n=$((n+1)); echo "INT $n"' INT; echo "trap $((6 * 7)) set"
        i=0; while [ $i -lt 30 ]; do sleep 0.1; i=$((i+1)); done; echo "total $n""#;
    let inner = w.command(&[], ["sh", "-c", command]);
    let mut script = Command::new("script");
    script
        .args(["-q", "-e", "-c"])
        .arg(format!("RUST_LOG=info exec {}", shell_line(&inner)))
        .arg("/dev/null")
        .current_dir(w.dir.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut child = script
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run `script` (util-linux): {e}"));
    let output = Arc::new(Mutex::new(Vec::new()));
    let mut stdout = child.stdout.take().expect("piped stdout");
    let sink = Arc::clone(&output);
    let reader = std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 {
                break;
            }
            sink.lock()
                .expect("output lock")
                .extend_from_slice(&buf[..n]);
        }
    });
    let seen = |what: &str| text(&output.lock().expect("output lock")).contains(what);
    let ready = wait_for(QUICK_TIMEOUT, || seen("trap 42 set"));
    let mut stdin = child.stdin.take().expect("piped stdin");
    if ready {
        stdin.write_all(b"\x03").expect("write ^C to the terminal");
    }
    let exited = wait_for(QUICK_TIMEOUT, || matches!(child.try_wait(), Ok(Some(_))));
    if !exited {
        // By PID: the `script` we started (our binary is reaped by RunWorld).
        let _ = child.kill();
    }
    let status = child.wait().expect("wait for script");
    drop(stdin);
    let _ = reader.join();
    let out = text(&output.lock().expect("output lock"));
    assert!(ready, "the command never started:\n{out}");
    assert!(exited, "still running 20 s after ^C:\n{out}");
    assert!(
        out.contains("INT 1") && out.contains("total 1") && !out.contains("INT 2"),
        "want exactly one SIGINT in the command, got:\n{out}"
    );
    assert!(
        !out.contains("forwarding SIGINT"),
        "we forwarded the terminal's SIGINT:\n{out}"
    );
    assert_eq!(status.code(), Some(0), "exit status\n{out}");
    w.assert_nothing_left("after ^C");
}

/// The command cannot use the UAPI socket: its directory is hidden, and even
/// through a way in (a hard link to the socket in a directory the command
/// sees) `get=1` and `set=1` are closed on without a byte, with and without
/// `--map-root`. The tunnel carries traffic afterwards, and from the host our
/// `show` (uid 65534) and root's `wg show` (through a /var/run/wireguard
/// symlink) see the peer unchanged.
#[test]
fn run_command_is_refused_by_the_socket() {
    let Some(id) = require_root_env("run_command_is_refused_by_the_socket") else {
        return;
    };
    let w = RunWorld::new(id, true);
    let side = w.dir.path().join("side");
    fs::create_dir(&side).expect("mkdir side");
    std::os::unix::fs::chown(&side, Some(NOBODY), Some(NOBODY)).expect("chown side");
    for flags in [&[][..], &["--map-root"][..]] {
        let (started, go) = (w.dir.path().join("started"), w.dir.path().join("go"));
        let way_in = side.join("wg0.sock");
        let script = format!(
            "{UNTIL_REPLY}\n\
             n=0; while [ ! -S {way_in} ] && [ $n -lt 200 ]; do sleep 0.05; n=$((n + 1)); done\n\
             ls -A {sock_dir} && echo listed\n\
             {PYTHON} -c \"$W4N_PROBE\" {way_in}\n\
             until_reply {v4} >/dev/null && echo ping-ok\n\
             : > {started}\n\
             n=0; while [ ! -e {go} ] && [ $n -lt 300 ]; do sleep 0.05; n=$((n + 1)); done\n",
            way_in = way_in.display(),
            sock_dir = w.sock_dir().display(),
            v4 = w.peer().tunnel_v4,
            started = started.display(),
            go = go.display(),
        );
        let mut c = w.command(flags, ["sh", "-c", &script]);
        c.env("W4N_PROBE", UAPI_PROBE);
        let mut run = Spawned::start(c);
        let socket = w.sock_dir().join("wg0.sock");
        let up = wait_for(QUICK_TIMEOUT, || !gone(&socket) || run.try_exit().is_some());
        assert!(
            up && !gone(&socket),
            "{flags:?}: no socket\n{}",
            run.report()
        );
        fs::hard_link(&socket, &way_in).expect("hard link to the socket");
        let probed = wait_for(RUN_TIMEOUT, || started.exists() || run.try_exit().is_some());
        assert!(
            probed,
            "{flags:?}: the command never got past the probe\n{}",
            run.report()
        );

        // From the host, while the command waits: the peer is unchanged.
        let mut show = as_user(binary(), ["show", "--tmpdir"]);
        show.arg(w.sock_dir()).args(["wg0", "dump"]);
        let ours = run_ok(&mut show);
        let ours = text(&ours.stdout);
        assert!(
            ours.contains(&w.config.peer_public_key),
            "{flags:?}: our show lost the peer:\n{ours}"
        );
        let link = UapiLink::new(&w.id.link_name(), &socket);
        let dump = link.dump();
        let peer = dump
            .peer(&w.config.peer_public_key)
            .unwrap_or_else(|| panic!("{flags:?}: wg show lost the peer"));
        assert_eq!(peer.allowed_ips, w.config.allowed_ips, "{flags:?}");
        drop(link);

        fs::write(&go, "").expect("touch go");
        let status = run.wait_exit(RUN_TIMEOUT);
        let stdout = run.stdout();
        assert_eq!(status.and_then(|s| s.code()), Some(0), "{}", run.report());
        assert!(
            !stdout.contains("listed") || stdout.lines().next() == Some("listed"),
            "{flags:?}: the socket directory is visible to the command:\n{stdout}"
        );
        let times = assert_uapi_refused(&format!("run {flags:?}"), &stdout);
        eprintln!("run {flags:?}: refusals took {times:?} ms");
        assert!(
            stdout.contains("ping-ok"),
            "{flags:?}: no traffic after the probe\n{}",
            run.report()
        );
        let refused_logged = run.stderr().contains("refused a UAPI connection from PID");
        assert!(
            refused_logged,
            "{flags:?}: no refusal in the log\n{}",
            run.report()
        );

        // The hard link changed the socket inode's ctime, so our binary
        // took it for someone else's file and left it (see uapi's inode
        // check): that one is the test's to remove.
        for f in [&way_in, &started, &go, &socket] {
            let _ = fs::remove_file(f);
        }
        w.assert_nothing_left(&format!("{flags:?}"));
    }
}

/// The config file holds the private key and the command runs as the caller:
/// `run` mounts an empty file over it, so the command reads nothing there
/// (default and `--map-root`). And a command may not start inside the socket
/// directory, where its working directory would reach past the tmpfs that
/// hides it: that is refused in one line, before anything starts.
#[test]
fn run_command_cannot_read_the_config_or_start_in_the_socket_dir() {
    let Some(id) =
        require_root_env("run_command_cannot_read_the_config_or_start_in_the_socket_dir")
    else {
        return;
    };
    let w = RunWorld::new(id, false);
    let config = w.dir.path().join("wg0.conf");
    for flags in [&[][..], &["--map-root"][..]] {
        let script = format!(
            "printf 'bytes:%s\\n' \"$(wc -c < {config})\"; grep -c PrivateKey {config}; exit 0",
            config = config.display()
        );
        let out = w.sh(flags, &script, QUICK_TIMEOUT);
        let (code, stdout, stderr) = code_of(&script, &out);
        assert_eq!(code, 0, "{flags:?}\n{stdout}\n{stderr}");
        assert_eq!(
            stdout, "bytes:0\n0\n",
            "{flags:?}: the command read the config file\n{stderr}"
        );
        w.assert_nothing_left(&format!("config hidden {flags:?}"));
    }
    // The host's file is untouched.
    let host = fs::read_to_string(&config).expect("read the config");
    assert!(host.contains("PrivateKey"), "{host}");

    let sock_dir = w.sock_dir();
    fs::create_dir_all(&sock_dir).expect("mkdir the socket dir");
    std::os::unix::fs::chown(&sock_dir, Some(NOBODY), Some(NOBODY)).expect("chown");
    fs::set_permissions(
        &sock_dir,
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )
    .expect("chmod");
    let mut c = w.command(&[], ["true"]);
    c.current_dir(&sock_dir);
    let out = run_timeout(&mut c, None, QUICK_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    let (code, _, stderr) = code_of("run in the socket dir", &out);
    assert_eq!(code, 1, "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("is inside the socket directory"),
        "{stderr}"
    );
    w.assert_nothing_left("run in the socket dir");
}

/// The command runs as the caller's uid, which alone would let it stop or
/// kill the engine, its janitor and its peer-check process; it may signal
/// only what it started itself (default and `--map-root`).
#[test]
fn run_command_cannot_signal_the_engine_or_its_helpers() {
    let Some(id) = require_root_env("run_command_cannot_signal_the_engine_or_its_helpers") else {
        return;
    };
    let w = RunWorld::new(id, false);
    // Every process whose parent is the engine, and the engine itself; each
    // `kill` must fail. Then one of its own children, which must work.
    let script = r#"
engine=$PPID
targets=$engine
for stat in /proc/[0-9]*/stat; do
    set -- $(cat "$stat" 2>/dev/null)
    [ "${4:-}" = "$engine" ] && [ "$1" != "$$" ] && targets="$targets $1"
done
for pid in $targets; do
    if kill -STOP "$pid" 2>/dev/null || kill -0 "$pid" 2>/dev/null; then
        echo "signalled $pid"
    else
        echo "refused $pid"
    fi
done
sleep 30 & child=$!
kill -TERM "$child" && wait "$child"; echo "own child: $?"
"#;
    for flags in [&[][..], &["--map-root"][..]] {
        let out = w.sh(flags, script, QUICK_TIMEOUT);
        let (code, stdout, stderr) = code_of(script, &out);
        assert_eq!(code, 0, "{flags:?}\n{stdout}\n{stderr}");
        assert!(
            !stdout.contains("signalled"),
            "{flags:?}: the command signalled the engine or a helper:\n{stdout}"
        );
        // The engine, its janitor and its peer-check process.
        assert!(
            stdout.matches("refused").count() >= 3,
            "{flags:?}: expected at least three processes to try:\n{stdout}"
        );
        assert!(stdout.contains("own child: 143"), "{flags:?}:\n{stdout}");
        w.assert_nothing_left(&format!("signals {flags:?}"));
    }
}

/// A peer without Endpoint: every packet to it is dropped, and gotatun used to
/// log `ERROR No endpoint` for each, flooding `run`'s terminal. 50 pings in
/// half a second now give one warning (the next would come 10 s later, with
/// the count of those left out), and our stderr stays a few lines long.
#[test]
fn run_peer_without_endpoint_complains_a_bounded_number_of_times() {
    let Some(id) =
        require_root_env("run_peer_without_endpoint_complains_a_bounded_number_of_times")
    else {
        return;
    };
    let w = RunWorld::new(id, false);
    let text: String = w
        .config
        .render()
        .lines()
        .filter(|l| !l.starts_with("Endpoint"))
        .map(|l| format!("{l}\n"))
        .collect();
    let config = w.dir.write("noendpoint.conf", &text, 0o600);
    let peer_addr = w.id.tunnel_v4(1).to_string();
    // Root inside (--map-root): iputils refuses intervals under 200 ms otherwise.
    let mut c = run_form(
        &config,
        &w.sock_dir(),
        &["--map-root"],
        [
            "ping", "-n", "-c", "50", "-i", "0.01", "-W", "1", &peer_addr,
        ],
    );
    let out = run_timeout(&mut c, None, RUN_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    let (code, stdout, stderr) = code_of("ping", &out);
    let complaints = stderr
        .lines()
        .filter(|l| l.to_lowercase().contains("no endpoint"))
        .count();
    let context = format!("exit {code}\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}");
    assert!(stdout.contains("50 packets transmitted"), "{context}");
    assert!(
        (1..=2).contains(&complaints),
        "{complaints} complaints about the missing endpoint:\n{context}"
    );
    assert!(
        stderr.lines().count() <= 10,
        "stderr is {} lines long:\n{context}",
        stderr.lines().count()
    );
    eprintln!(
        "{complaints} complaint(s), {} stderr lines",
        stderr.lines().count()
    );
    w.assert_nothing_left("ping without endpoint");
}
