//! End-to-end tests of named tunnels: `up`, `exec NAME`, `list`, `down`, and
//! configs found by name. Our binary runs as uid 65534 against a real
//! `wireguard-go` peer (see `common/mod.rs`); the tests need root for the
//! peer's namespace and skip without it (or fail when `CI=true`).

#![forbid(unsafe_code)]

mod common;

use std::ffi::OsString;
use std::fs;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use common::*;

/// How long `up` may take.
const UP_TIMEOUT: Duration = Duration::from_secs(20);
/// What the issue allows from `down` until nothing is left.
const DOWN_BUDGET: Duration = Duration::from_secs(2);

/// `wireguard4netns SUBCOMMAND --tmpdir DIR ARGS…` as uid 65534, bounded.
fn named(subcommand: &str, dir: &Path, args: &[&str]) -> Output {
    let mut c = named_cmd(subcommand, dir, args);
    run_timeout(&mut c, None, UP_TIMEOUT).unwrap_or_else(|e| panic!("{e}"))
}

fn named_cmd(subcommand: &str, dir: &Path, args: &[&str]) -> Command {
    let mut all: Vec<OsString> = vec![subcommand.into(), "--tmpdir".into(), dir.into()];
    all.extend(args.iter().map(OsString::from));
    as_user(binary(), all)
}

fn named_ok(subcommand: &str, dir: &Path, args: &[&str]) -> String {
    let out = named(subcommand, dir, args);
    assert!(
        out.status.success(),
        "{subcommand} {args:?} failed ({})\n{}{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// The socket directory of a test: inside the work dir, made by `up`.
fn sock_dir(s: &Scenario) -> PathBuf {
    s.dir.path().join("uapi")
}

/// `(engine, holder)` PIDs from `DIR/NAME.state`.
fn state_pids(dir: &Path, name: &str) -> (u32, u32) {
    let state = fs::read_to_string(dir.join(format!("{name}.state")))
        .unwrap_or_else(|e| panic!("no state file for {name}: {e}"));
    let pid = |role: &str| -> u32 {
        state
            .lines()
            .find_map(|l| {
                l.strip_prefix(role)?
                    .split_whitespace()
                    .next()?
                    .parse()
                    .ok()
            })
            .unwrap_or_else(|| panic!("no {role} in {state:?}"))
    };
    (pid("engine "), pid("holder "))
}

/// `(device, inode)` of the network namespace of `pid`.
fn netns_of(pid: u32) -> Option<(u64, u64)> {
    let meta = fs::metadata(format!("/proc/{pid}/ns/net")).ok()?;
    Some((meta.dev(), meta.ino()))
}

/// Every process in network namespace `ns`.
fn processes_in(ns: (u64, u64)) -> Vec<u32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| netns_of(pid) == Some(ns))
        .collect()
}

/// Whether `pid` exists and is not a zombie.
fn running(pid: u32) -> bool {
    status_field(pid, "State").is_some_and(|s| !s.starts_with('Z'))
}

/// A python one-liner that fetches `url` (20 tries, 0.5 s apart) and prints
/// the body.
fn fetch_script(url: &str) -> String {
    format!(
        "import time, urllib.request\n\
         for _ in range(20):\n\
         \x20   try:\n\
         \x20       print(urllib.request.urlopen({url:?}, timeout=2).read().decode(), flush=True)\n\
         \x20       break\n\
         \x20   except OSError:\n\
         \x20       time.sleep(0.5)\n\
         else:\n\
         \x20   raise SystemExit('cannot fetch ' + {url:?})\n"
    )
}

/// `up` → two `exec`s at once (one serving HTTP inside, which the peer
/// fetches from; one fetching from the peer) → `list` shows both processes
/// and the peer's handshake → from inside, only `lo` and the tunnel, the host's
/// loopback and addresses outside the tunnel unreachable, no capability over
/// the network → `down` → within 2 s nothing is left: no process of the
/// tunnel, no socket, state or lock file, no TUN.
#[test]
fn up_exec_list_down_leaves_nothing() {
    let Some(id) = require_root_env("up_exec_list_down_leaves_nothing") else {
        return;
    };
    let s = Scenario::new(id, ScenarioOpts::default());
    let config = s.write_config();
    let dir = sock_dir(&s);
    let t = Instant::now();
    let out = named("up", &dir, &[config.to_str().expect("utf-8")]);
    let up_took = t.elapsed();
    assert!(out.status.success(), "up: {out:?}");
    assert!(out.stdout.is_empty() && out.stderr.is_empty(), "{out:?}");
    assert_engines_confined(s.dir.path(), "up");
    // The name defaults to the config's file name.
    let (engine, holder) = state_pids(&dir, "client");
    let ns = netns_of(holder).expect("the holder's namespace");
    // Held open by us, to look for the TUN once everything is gone.
    let ns_file = fs::File::open(format!("/proc/{holder}/ns/net")).expect("open the netns");
    let ns_path = format!("/proc/{}/fd/{}", std::process::id(), ns_file.as_raw_fd());

    // The peer serves a file; A serves inside the tunnel; B fetches from the peer.
    let www = s.dir.path().join("www");
    fs::create_dir(&www).expect("www");
    let marker = format!("hello from the peer {}", s.id.name(""));
    fs::write(www.join("hello.txt"), &marker).expect("hello.txt");
    let peer_port = s.id.port(5).to_string();
    let peer_v4 = s.peer_v4().to_string();
    let client_v4 = s.client_v4().to_string();
    let _peer_http = Spawned::start(s.peer.netns.place().cmd(
        PYTHON,
        [
            "-m",
            "http.server",
            "--bind",
            &peer_v4,
            "--directory",
            www.to_str().expect("utf-8"),
            &peer_port,
        ],
    ));
    let inside_www = s.dir.path().join("inside");
    fs::create_dir(&inside_www).expect("inside");
    fs::set_permissions(&inside_www, fs::Permissions::from_mode(0o755)).expect("chmod");
    fs::write(inside_www.join("index.html"), "served from inside\n").expect("index");
    let mut server = Spawned::start(named_cmd(
        "exec",
        &dir,
        &[
            "client",
            "--",
            PYTHON,
            "-m",
            "http.server",
            "--bind",
            &client_v4,
            "--directory",
            inside_www.to_str().expect("utf-8"),
            "8080",
        ],
    ));
    let fetch = format!(
        "{}import time\ntime.sleep(60)\n",
        fetch_script(&format!("http://{peer_v4}:{peer_port}/hello.txt"))
    );
    let mut fetcher = Spawned::start(named_cmd(
        "exec",
        &dir,
        &["client", "--", PYTHON, "-c", &fetch],
    ));
    let from_inside = s.peer.netns.place().cmd(
        PYTHON,
        ["-c", &fetch_script(&format!("http://{client_v4}:8080/"))],
    );
    let out = run_timeout(&mut { from_inside }, None, Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        out.status.success() && text(&out.stdout).contains("served from inside"),
        "the peer cannot fetch from the server inside: {out:?}\n{}\n{}",
        server.report(),
        s.diagnostics()
    );
    assert!(
        wait_for(Duration::from_secs(15), || fetcher
            .stdout()
            .contains(&marker)),
        "the fetch from the peer failed\n{}",
        fetcher.report()
    );

    let listing = named_ok("list", &dir, &[]);
    let row = listing
        .lines()
        .find(|l| l.starts_with("client "))
        .unwrap_or_else(|| panic!("client not listed:\n{listing}"));
    let cells: Vec<&str> = row
        .split("  ")
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .collect();
    assert_eq!(
        cells.get(1),
        Some(&"2"),
        "not two processes inside:\n{listing}"
    );
    assert_eq!(
        cells.get(2),
        Some(&s.peer.keys.public.as_str()),
        "{listing}"
    );
    assert!(
        cells
            .get(3)
            .is_some_and(|h| h.ends_with(" ago") || *h == "Now"),
        "no handshake listed:\n{listing}"
    );

    // From inside: lo and the tunnel, own uid, nothing else reachable.
    let host_lo = std::net::TcpListener::bind("127.0.0.1:0").expect("host listener");
    let host_port = host_lo.local_addr().expect("port").port();
    let probe = format!(
        "import socket, subprocess, os\n\
         print(os.getuid())\n\
         print(' '.join(sorted(n for _, n in socket.if_nameindex())))\n\
         for addr in [('127.0.0.1', {host_port}), ({outside:?}, 22), ({outside:?}, {host_port})]:\n\
         \x20   s = socket.socket(); s.settimeout(2)\n\
         \x20   try:\n\
         \x20       s.connect(addr); print('REACHED', addr)\n\
         \x20   except OSError as e:\n\
         \x20       print('unreachable', addr, e.errno)\n\
         r = subprocess.run(['ip', 'link', 'set', 'client', 'down'], capture_output=True)\n\
         print('DOWN' if r.returncode == 0 else 'refused')\n",
        outside = s.peer.netns.outer_addr.to_string(),
    );
    let out = named("exec", &dir, &["client", "--", PYTHON, "-c", &probe]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    let mut lines = stdout.lines();
    assert_eq!(lines.next(), Some("65534"), "{stdout}");
    assert_eq!(lines.next(), Some("client lo"), "{stdout}");
    assert!(!stdout.contains("REACHED"), "reached outside:\n{stdout}");
    assert_eq!(stdout.matches("unreachable").count(), 3, "{stdout}");
    assert!(
        stdout.ends_with("refused\n"),
        "took the tunnel down:\n{stdout}"
    );
    drop(host_lo);

    // What must be gone after `down`.
    let inside = processes_in(ns);
    assert_eq!(inside.len(), 3, "holder + 2 commands expected: {inside:?}");
    let mut ours: Vec<u32> = inside.clone();
    ours.push(engine);
    ours.extend(children_of(engine).into_iter().map(|(pid, _)| pid));

    let t = Instant::now();
    let out = named("down", &dir, &["client"]);
    assert!(out.status.success(), "down: {out:?}");
    assert!(out.stdout.is_empty() && out.stderr.is_empty(), "{out:?}");
    let gone = wait_for(DOWN_BUDGET, || {
        !ours.iter().any(|&pid| running(pid)) && dir_entries(&dir).is_empty()
    });
    let down_took = t.elapsed();
    assert!(
        gone,
        "left after down: processes {:?}, files {:?}",
        ours.iter().filter(|&&p| running(p)).collect::<Vec<_>>(),
        dir_entries(&dir)
    );
    assert!(processes_in(ns).is_empty(), "{:?}", processes_in(ns));
    let links = run(&mut cmd(
        "nsenter",
        [
            format!("--net={ns_path}"),
            "ip".into(),
            "-o".into(),
            "link".into(),
        ],
    ));
    let links = text(&links.stdout);
    assert_eq!(links.lines().count(), 1, "the TUN is still there:\n{links}");
    assert!(links.contains(": lo:"), "{links}");
    for (what, p) in [("server", &mut server), ("fetcher", &mut fetcher)] {
        let status = p.wait_exit(DOWN_BUDGET);
        assert_eq!(
            status.and_then(|s| s.code()),
            Some(143),
            "{what} did not end by SIGTERM\n{}",
            p.report()
        );
    }
    assert!(named_ok("list", &dir, &[]).is_empty());
    eprintln!(
        "up_exec_list_down_leaves_nothing: up took {up_took:?}, down until nothing left {down_took:?}"
    );
}

/// `DIR/NAME` made as a directory owned by uid 65534 (mode `mode`).
fn nobody_dir(parent: &Path, name: &str, mode: u32) -> PathBuf {
    let path = parent.join(name);
    fs::create_dir_all(&path).expect("mkdir");
    fs::set_permissions(&path, fs::Permissions::from_mode(mode)).expect("chmod");
    std::os::unix::fs::chown(&path, Some(NOBODY), Some(NOBODY)).expect("chown");
    path
}

/// The scenario's config with `DNS = dns`, written as `dir/NAME.conf` (0600,
/// uid 65534).
fn config_with_dns(s: &Scenario, dir: &Path, name: &str, dns: &str) -> PathBuf {
    let text =
        s.config
            .render()
            .replacen("[Interface]\n", &format!("[Interface]\nDNS = {dns}\n"), 1);
    let path = dir.join(format!("{name}.conf"));
    fs::write(&path, text).expect("write config");
    fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).expect("chmod");
    std::os::unix::fs::chown(&path, Some(NOBODY), Some(NOBODY)).expect("chown");
    path
}

/// A CONFIG that is a bare name is found as NAME.conf in
/// `$XDG_CONFIG_HOME/wireguard4netns/` (for `run` and `up`, where `up` also
/// takes the tunnel's name from it), then in `/etc/wireguard/` (a directory
/// of the test's bind-mounted there in a private mount namespace, never the
/// real one); a name found nowhere is one line that lists both places and
/// why neither did, status 1, nothing left behind.
#[test]
fn configs_are_found_by_name() {
    let Some(id) = require_root_env("configs_are_found_by_name") else {
        return;
    };
    let s = Scenario::new(id, ScenarioOpts::default());
    let dir = sock_dir(&s);
    let xdg = nobody_dir(s.dir.path(), "xdg", 0o755);
    let user_dir = nobody_dir(&xdg, "wireguard4netns", 0o700);
    config_with_dns(&s, &user_dir, "vpn", "192.0.2.11");
    let with_xdg = |mut c: Command| {
        c.env("XDG_CONFIG_HOME", &xdg);
        c
    };

    // run -c NAME, from the user's directory.
    let mut c = with_xdg(named_cmd(
        "run",
        &dir,
        &["-c", "vpn", "--", "cat", "/etc/resolv.conf"],
    ));
    let out = run_timeout(&mut c, None, UP_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    assert!(out.status.success(), "{out:?}");
    assert!(
        text(&out.stdout).contains("nameserver 192.0.2.11"),
        "{out:?}"
    );

    // up NAME: the tunnel is named after it too.
    let mut c = with_xdg(named_cmd("up", &dir, &["vpn"]));
    let out = run_timeout(&mut c, None, UP_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    assert!(out.status.success(), "{out:?}");
    let out = named("exec", &dir, &["vpn", "--", "cat", "/etc/resolv.conf"]);
    assert!(
        text(&out.stdout).contains("nameserver 192.0.2.11"),
        "{out:?}"
    );
    named_ok("down", &dir, &["vpn"]);
    assert!(dir_entries(&dir).is_empty(), "{:?}", dir_entries(&dir));

    // From /etc/wireguard, in a private mount namespace.
    let etc = s.dir.path().join("etc-wireguard");
    fs::create_dir(&etc).expect("mkdir");
    config_with_dns(&s, &etc, "sysvpn", "192.0.2.22");
    assert!(
        Path::new("/etc/wireguard").is_dir(),
        "/etc/wireguard is missing (wireguard-tools makes it)"
    );
    let script = format!(
        "mount --bind {} /etc/wireguard && exec setpriv {} \"$@\"",
        etc.display(),
        AS_NOBODY.join(" ")
    );
    let mut c = cmd(
        "unshare",
        [
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            &script,
            "sh",
        ],
    );
    c.arg(binary())
        .args(["run", "--tmpdir"])
        .arg(&dir)
        .args(["-c", "sysvpn", "--", "cat", "/etc/resolv.conf"])
        .env("XDG_CONFIG_HOME", &xdg);
    let out = run_timeout(&mut c, None, UP_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    assert!(out.status.success(), "{out:?}");
    assert!(
        text(&out.stdout).contains("nameserver 192.0.2.22"),
        "{out:?}"
    );

    // Found nowhere (the real /etc/wireguard is root's 0700).
    for sub in [
        &["run", "-c", "nope-w4n", "--", "true"][..],
        &["up", "nope-w4n"],
    ] {
        let mut c = with_xdg(named_cmd(sub[0], &dir, &sub[1..]));
        let out = run_timeout(&mut c, None, UP_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
        assert_refused(&out, "no config named nope-w4n: looked for ", sub[0]);
        let stderr = text(&out.stderr);
        assert!(
            stderr.contains(&format!(
                "{}/nope-w4n.conf (no such file)",
                user_dir.display()
            )) && stderr.contains("/etc/wireguard/nope-w4n.conf ("),
            "{stderr}"
        );
    }
    assert!(dir_entries(&dir).is_empty(), "{:?}", dir_entries(&dir));
}

/// Bad input to the named commands: an unknown name (exec, down), a name
/// that is no interface name, a name already up, exec into a tunnel whose
/// holder died, a tunnel whose engine and janitor were killed. Each is one
/// line and status 1, within the usual budget, and leaves nothing behind;
/// a dead tunnel's name can be brought up again.
#[test]
fn bad_input_to_named_tunnels() {
    let Some(id) = require_root_env("bad_input_to_named_tunnels") else {
        return;
    };
    let s = Scenario::new(id, ScenarioOpts::default());
    let config = s.write_config();
    let config = config.to_str().expect("utf-8");
    let dir = sock_dir(&s);

    let out = named("exec", &dir, &["nosuch", "--", "true"]);
    assert_refused(&out, "no tunnel named nosuch is up", "exec nosuch");
    let out = named("down", &dir, &["nosuch"]);
    assert_refused(&out, "no tunnel named nosuch is up", "down nosuch");
    // A directory of someone else's could hold a state file pointing anywhere.
    let out = named("exec", Path::new("/etc"), &["nosuch", "--", "true"]);
    assert_refused(
        &out,
        "socket directory /etc is unsafe: it belongs to uid 0",
        "exec with --tmpdir /etc",
    );
    let out = named("up", &dir, &[config, "--name", "bad/name"]);
    assert_refused(
        &out,
        "cannot name the tunnel \"bad/name\"",
        "up --name bad/name",
    );
    let garbled = s
        .dir
        .write("garbled.conf", "[Interface]\nNoSuchKey = 1\n", 0o600);
    let out = named("up", &dir, &[garbled.to_str().expect("utf-8")]);
    assert_refused(&out, "garbled.conf", "up with a garbled config");
    assert!(dir_entries(&dir).is_empty(), "{:?}", dir_entries(&dir));

    // Already up.
    named_ok("up", &dir, &[config, "--name", "t1"]);
    let before = dir_entries(&dir);
    let out = named("up", &dir, &[config, "--name", "t1"]);
    assert_refused(&out, "a tunnel named t1 is already up", "second up");
    assert_eq!(dir_entries(&dir), before);
    assert!(named_ok("list", &dir, &[]).contains("\nt1 "));

    // The holder died (the engine, stopped, has not noticed yet).
    let (engine, holder) = state_pids(&dir, "t1");
    signal(engine, Signal::SIGSTOP);
    signal(holder, Signal::SIGKILL);
    assert!(wait_for(Duration::from_secs(2), || !running(holder)));
    let out = named("exec", &dir, &["t1", "--", "true"]);
    assert_refused(
        &out,
        &format!("the tunnel t1 is going down: its holder process (PID {holder}) has exited"),
        "exec into a dead holder",
    );
    assert!(!named_ok("list", &dir, &[]).contains("t1"));
    signal(engine, Signal::SIGCONT);
    assert!(
        wait_for(DOWN_BUDGET, || !running(engine)
            && dir_entries(&dir).is_empty()),
        "the engine did not clean up: {:?}",
        dir_entries(&dir)
    );

    // Engine and janitor killed: the state file is stale, said once and
    // removed; the name comes up again.
    named_ok("up", &dir, &[config, "--name", "t2"]);
    let (engine, holder) = state_pids(&dir, "t2");
    // Stopped first: an engine that saw its children die before its own
    // SIGKILL came would stop cleanly and remove the state file itself (seen
    // once in CI).
    signal(engine, Signal::SIGSTOP);
    for (pid, _) in children_of(engine) {
        signal(pid, Signal::SIGKILL);
    }
    signal(engine, Signal::SIGKILL);
    // Gone for good: a zombie whose threads are still tearing down the TUN
    // would read as a running engine.
    let reaped = |pid: u32| !Path::new(&format!("/proc/{pid}")).exists();
    assert!(wait_for(Duration::from_secs(5), || reaped(engine)
        && !running(holder)));
    let out = named("exec", &dir, &["t2", "--", "true"]);
    assert_refused(
        &out,
        "no tunnel named t2 is up: its engine was killed",
        "stale",
    );
    assert!(!dir.join("t2.state").exists());
    named_ok("up", &dir, &[config, "--name", "t2"]);
    named_ok("down", &dir, &["t2"]);
    assert!(dir_entries(&dir).is_empty(), "{:?}", dir_entries(&dir));
}

/// A process inside that ignores SIGTERM (and its child, which inherits
/// that) gets SIGKILL after the 5 s grace period `down` states; then
/// everything is gone as usual.
#[test]
fn down_kills_what_ignores_sigterm_after_the_grace_period() {
    let Some(id) = require_root_env("down_kills_what_ignores_sigterm_after_the_grace_period")
    else {
        return;
    };
    let s = Scenario::new(id, ScenarioOpts::default());
    let config = s.write_config();
    let dir = sock_dir(&s);
    named_ok(
        "up",
        &dir,
        &[config.to_str().expect("utf-8"), "--name", "stubborn"],
    );
    let (engine, holder) = state_pids(&dir, "stubborn");
    let ns = netns_of(holder).expect("the holder's namespace");
    let mut stubborn = Spawned::start(named_cmd(
        "exec",
        &dir,
        &[
            "stubborn",
            "--",
            "sh",
            "-c",
            "trap '' TERM; sleep 60; echo survived",
        ],
    ));
    assert!(
        wait_for(Duration::from_secs(10), || processes_in(ns).len() == 3),
        "sh and sleep never started inside: {:?}\n{}",
        processes_in(ns),
        stubborn.report()
    );
    let t = Instant::now();
    let out = named("down", &dir, &["stubborn"]);
    let took = t.elapsed();
    assert!(out.status.success(), "{out:?}");
    assert!(
        (Duration::from_secs(5)..Duration::from_secs(8)).contains(&took),
        "down took {took:?}, not the 5 s grace period and a little"
    );
    assert_eq!(
        stubborn.wait_exit(DOWN_BUDGET).and_then(|s| s.code()),
        Some(137),
        "{}",
        stubborn.report()
    );
    assert!(!stubborn.stdout().contains("survived"));
    assert!(
        wait_for(DOWN_BUDGET, || !running(engine)
            && dir_entries(&dir).is_empty()),
        "{:?}",
        dir_entries(&dir)
    );
    assert!(processes_in(ns).is_empty(), "{:?}", processes_in(ns));
}
