//! End-to-end tests of what a packaged tool has around the tunnel: `exec`
//! into an attached namespace, `--log-file` for the background engine, the
//! attach form's word on `DNS=`, and shell completions. Our binary runs as uid
//! 65534 against a real `wireguard-go` peer (see `common/mod.rs`); the tests
//! that need namespaces need root and skip without it (or fail when
//! `CI=true`).

#![forbid(unsafe_code)]

mod common;

use std::ffi::OsString;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::*;

/// Bound for one `exec` whose command does a little.
const EXEC_TIMEOUT: Duration = Duration::from_secs(30);
/// How fast a bad target must be refused.
const REFUSAL_BUDGET: Duration = Duration::from_secs(5);

/// `wireguard4netns exec ARGS…` as uid 65534, bounded, from `cwd`.
fn exec_as_nobody(args: &[&str], cwd: &std::path::Path) -> Output {
    let mut all: Vec<OsString> = vec!["exec".into()];
    all.extend(args.iter().map(OsString::from));
    let mut c = as_user(binary(), all);
    c.current_dir(cwd);
    run_timeout(&mut c, None, EXEC_TIMEOUT).unwrap_or_else(|e| panic!("{e}"))
}

/// The interface names of an `ip -o link` listing.
fn link_names(listing: &str) -> Vec<String> {
    listing
        .lines()
        .filter_map(|line| line.split(": ").nth(1))
        .map(|name| name.split('@').next().unwrap_or(name).to_owned())
        .collect()
}

/// Ping `addr` once a second (at most 10 tries) until it answers, then three
/// more that must all be answered.
fn until_reply(addr: &str) -> String {
    format!(
        "n=0; until ping -n -c 1 -W 1 {addr} >/dev/null 2>&1; do n=$((n + 1)); \
         [ $n -lt 10 ] || {{ echo no reply from {addr}; exit 1; }}; sleep 0.2; done; \
         ping -n -c 3 -i 0.2 -W 2 {addr}"
    )
}

/// `exec` into an attached target: the command sees `lo` and the tunnel and
/// nothing else, reaches the peer over IPv4 and IPv6, runs as the target's
/// root (uid 65534 mapped, as `nsenter --preserve-credentials` leaves it),
/// keeps the caller's working directory, and its status is ours: 7 for
/// `exit 7`, 143 for SIGTERM, 127 for a command that does not exist (with one
/// line saying so). SIGPIPE is not left ignored for it.
#[test]
fn exec_runs_a_command_that_sees_only_lo_and_the_tunnel() {
    let Some(id) = require_root_env("exec_runs_a_command_that_sees_only_lo_and_the_tunnel") else {
        return;
    };
    let s = Scenario::new(id, ScenarioOpts::default());
    s.attach(&["--configure"]);
    let pid = s.target.pid().to_string();
    let cwd = s.dir.path();

    let t = Instant::now();
    let out = exec_as_nobody(&[&pid, "--", "ip", "-o", "link"], cwd);
    let took = t.elapsed();
    assert!(out.status.success(), "exec ip link: {out:?}");
    let links = link_names(&text(&out.stdout));
    assert_eq!(links, ["lo", "wg0"], "{}", text(&out.stdout));

    let script = format!(
        "set -e; id -u; pwd; grep SigIgn /proc/self/status; {}; {}",
        until_reply(&s.peer_v4().to_string()),
        until_reply(&s.peer_v6().to_string())
    );
    let out = exec_as_nobody(&[&pid, "--", "sh", "-c", &script], cwd);
    let stdout = text(&out.stdout);
    assert!(
        out.status.success(),
        "exec could not reach the peer: {}\n{stdout}\n{}\n{}",
        out.status,
        text(&out.stderr),
        s.diagnostics()
    );
    let mut lines = stdout.lines();
    assert_eq!(lines.next(), Some("0"), "not the target's root:\n{stdout}");
    assert_eq!(
        lines.next(),
        Some(cwd.to_str().expect("utf-8 work dir")),
        "working directory not kept:\n{stdout}"
    );
    let ignored = lines
        .next()
        .and_then(|l| l.strip_prefix("SigIgn:"))
        .and_then(|mask| u64::from_str_radix(mask.trim(), 16).ok())
        .unwrap_or_else(|| panic!("no SigIgn line:\n{stdout}"));
    assert_eq!(ignored & (1 << 12), 0, "SIGPIPE is ignored in the command");

    for (script, want) in [("exit 7", 7), ("kill -TERM $$", 143)] {
        let out = exec_as_nobody(&[&pid, "--", "sh", "-c", script], cwd);
        assert_eq!(out.status.code(), Some(want), "{script}: {out:?}");
        assert!(out.stderr.is_empty(), "{script}: {}", text(&out.stderr));
    }
    let out = exec_as_nobody(&[&pid, "--", "no-such-command-w4n"], cwd);
    assert_eq!(out.status.code(), Some(127), "{out:?}");
    assert_eq!(
        text(&out.stderr),
        "wireguard4netns: no-such-command-w4n: command not found\n"
    );
    eprintln!("exec_runs_a_command_that_sees_only_lo_and_the_tunnel: exec ip link took {took:?}");
}

/// A target with a mount namespace of its own (the original's users start it
/// with `unshare --mount` and bind-mount their resolv.conf): `exec` sees its
/// mounts, as the programs inside do.
#[test]
fn exec_joins_the_target_s_mount_namespace() {
    let Some(id) = require_root_env("exec_joins_the_target_s_mount_namespace") else {
        return;
    };
    let mut s = Scenario::new(id, ScenarioOpts::default());
    let marker = format!(
        "# {} resolv.conf\nnameserver {}\n",
        s.id.name(""),
        s.peer_v4()
    );
    let resolv = s.dir.write("resolv.conf", &marker, 0o644);
    s.target = Target::spawn_with(
        "-Urnm",
        &format!("mount --bind {} /etc/resolv.conf", resolv.display()),
    );
    s.attach(&["--configure"]);
    let pid = s.target.pid().to_string();
    let out = exec_as_nobody(&[&pid, "--", "cat", "/etc/resolv.conf"], s.dir.path());
    assert!(out.status.success(), "{out:?}");
    assert_eq!(text(&out.stdout), marker);
    let host = fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    assert_ne!(host, marker, "the bind mount leaked to the host");
}

/// `exec` into `run`'s command: the caller's own uid there, the tunnel and
/// `lo` only, and no capability over the network namespace (run's nested user
/// namespace, which `exec` joins last).
#[test]
fn exec_into_a_run_command_keeps_its_credentials() {
    let Some(id) = require_root_env("exec_into_a_run_command_keeps_its_credentials") else {
        return;
    };
    let s = Scenario::new(id, ScenarioOpts::default());
    let config = s.write_config();
    let sock_dir = s.dir.path().join("uapi");
    let mut c = run_form(&config, &sock_dir, &["--ifname", "wg0"], ["sleep", "30"]);
    c.current_dir(s.dir.path());
    let mut runner = Spawned::start(c);
    let mut sleeper = None;
    wait_for(Duration::from_secs(20), || {
        sleeper = children_of(runner.pid)
            .into_iter()
            .find(|(_, comm)| comm == "sleep")
            .map(|(pid, _)| pid);
        sleeper.is_some() || runner.try_exit().is_some()
    });
    let sleeper =
        sleeper.unwrap_or_else(|| panic!("run's command never started\n{}", runner.report()));
    let out = exec_as_nobody(
        &[
            &sleeper.to_string(),
            "--",
            "sh",
            "-c",
            "id -u; ip -o link | cut -d: -f2; ip link set wg0 down 2>&1 && echo DOWN || echo REFUSED",
        ],
        s.dir.path(),
    );
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    let mut lines = stdout.lines();
    assert_eq!(lines.next(), Some("65534"), "{stdout}");
    assert_eq!(lines.next().map(str::trim), Some("lo"), "{stdout}");
    assert_eq!(lines.next().map(str::trim), Some("wg0"), "{stdout}");
    assert!(
        !stdout.contains("DOWN"),
        "exec could take the tunnel down:\n{stdout}"
    );
    runner.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(
        runner.wait_exit(Duration::from_secs(5)).is_some(),
        "run did not stop\n{}",
        runner.report()
    );
}

/// Bad targets: one line on stderr, exit 1, fast, nothing started.
#[test]
fn exec_bad_targets_fail_in_one_line() {
    let Some(id) = require_root_env("exec_bad_targets_fail_in_one_line") else {
        return;
    };
    let dir = WorkDir::new(&id);
    // A process of uid 65534 in our own namespaces.
    let mut own = Process::new(
        as_user("sleep", ["30"])
            .stdin(std::process::Stdio::null())
            .spawn()
            .expect("spawn sleep"),
    );
    let own_pid = own.pid.to_string();
    let missing = dir.path().join("no-such-netns");
    let missing = missing.to_str().expect("utf-8");
    let cases: [(&[&str], &str); 7] = [
        (
            &["99999999", "--", "true"],
            "there is no process with PID 99999999",
        ),
        // A word that is no PID is a tunnel's name (see e2e_named), one
        // that cannot be a name is neither.
        (&["abc", "--", "true"], "no tunnel named abc is up"),
        (
            &["a b", "--", "true"],
            "invalid TARGET \"a b\": expected a process ID",
        ),
        (&["0", "--", "true"], "invalid TARGET \"0\""),
        (
            &["1", "--", "true"],
            "process 1 belongs to another user (uid 0)",
        ),
        (
            &[&own_pid, "--", "true"],
            "has not unshared a user namespace",
        ),
        (&["--netns-type=path", missing, "--", "true"], "cannot open"),
    ];
    for (args, want) in cases {
        let t = Instant::now();
        let out = exec_as_nobody(args, dir.path());
        let took = t.elapsed();
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {out:?}");
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
        assert!(
            stderr.starts_with("wireguard4netns: ") && stderr.contains(want),
            "{args:?}: {stderr}"
        );
        assert!(out.stdout.is_empty(), "{args:?}: {}", text(&out.stdout));
        assert!(took < REFUSAL_BUDGET, "{args:?} took {took:?}");
    }
    own.signal(nix::sys::signal::Signal::SIGKILL);
}

/// `--log-file`: the background engine's log goes there (created 0600, the
/// up line and, once the target is gone, why it stopped) while the engine is
/// confined as always; and the attach form says in it that it does not apply
/// DNS=.
#[test]
fn log_file_gets_the_background_engine_s_log() {
    let Some(id) = require_root_env("log_file_gets_the_background_engine_s_log") else {
        return;
    };
    let mut s = Scenario::new(id, ScenarioOpts::default());
    // A log file that cannot be opened: one line, status 1, nothing started.
    let nowhere = s.dir.path().join("no-such-dir/engine.log");
    let mut c = s.command(
        s.target.pid(),
        &["--log-file", nowhere.to_str().expect("utf-8")],
    );
    let out = run_timeout(&mut c, None, REFUSAL_BUDGET).unwrap_or_else(|e| panic!("{e}"));
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with(&format!(
            "wireguard4netns: cannot open the log file {}",
            nowhere.display()
        )),
        "{stderr}"
    );
    assert!(gone(&s.socket()), "a socket was made");
    let log = s.dir.path().join("engine.log");
    let text_with_dns =
        s.config
            .render()
            .replacen("[Interface]\n", "[Interface]\nDNS = 192.0.2.53\n", 1);
    let config = s.dir.write("dns.conf", &text_with_dns, 0o600);
    let mut c = as_user(binary(), ["--configure", "--log-file"]);
    c.arg(&log)
        .arg("--tmpdir")
        .arg(s.dir.path())
        .arg(s.target.pid().to_string())
        .arg("wg0")
        .arg(&config);
    let desc = describe(&c);
    let out = run_timeout(&mut c, None, Duration::from_secs(20)).unwrap_or_else(|e| panic!("{e}"));
    assert!(out.status.success(), "{desc}: {out:?}");
    assert!(
        out.stderr.is_empty(),
        "the log went to stderr, not the file: {}",
        text(&out.stderr)
    );
    assert_engines_confined(s.dir.path(), &desc);
    s.expect_ping(s.peer_v4(), 2);
    let mode = fs::metadata(&log)
        .expect("the log file")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "log file mode {mode:o}");
    let logged = fs::read_to_string(&log).unwrap_or_default();
    assert!(
        logged.contains("DNS = 192.0.2.53 is not applied"),
        "no DNS= warning:\n{logged}"
    );
    assert!(
        logged.contains(&format!("wg0 is up in process {}", s.target.pid())),
        "no up line:\n{logged}"
    );
    let target = s.target.pid();
    s.target.kill();
    let stopped = wait_for(EXIT_BUDGET, || {
        fs::read_to_string(&log)
            .is_ok_and(|l| l.contains(&format!("target process {target} exited")))
    });
    assert!(
        stopped,
        "no stop line:\n{}",
        fs::read_to_string(&log).unwrap_or_default()
    );
}

/// `completions bash` loads in bash and registers the completion function;
/// zsh and fish scripts are printed too.
#[test]
fn bash_completion_loads() {
    let bin = binary_for_tools();
    let script = format!(
        "source <({} completions bash) && complete -p wireguard4netns",
        bin.display()
    );
    let out = Command::new("bash")
        .args(["-c", &script])
        .output()
        .expect("run bash");
    assert!(out.status.success(), "{out:?}");
    assert!(
        text(&out.stdout).contains("-F _wireguard4netns wireguard4netns"),
        "{}",
        text(&out.stdout)
    );
    for (shell, first) in [("zsh", "#compdef wireguard4netns"), ("fish", "")] {
        let out = Command::new(&bin)
            .args(["completions", shell])
            .output()
            .expect("run completions");
        assert!(out.status.success(), "{shell}: {out:?}");
        assert!(text(&out.stdout).starts_with(first), "{shell}");
        assert!(text(&out.stdout).contains("exec"), "{shell}");
    }
}

/// What a newcomer types first: a guessed subcommand points at `run` in one
/// line (clap's "required argument CONFIG not provided" before), also when
/// the words happen to fill the attach form; no arguments print the help,
/// whose usage starts with `run`; `help --help` is help; `genkey --help` has
/// no `--log-level`.
#[test]
fn a_newcomer_s_first_commands() {
    let ours = |args: &[&str]| {
        Command::new(binary_for_tools())
            .args(args)
            .env_remove("RUST_LOG")
            .output()
            .expect("run our binary")
    };
    for (args, code, config) in [
        (&["begin", "wg.conf"][..], 2, "wg.conf"),
        (&["start", "wg.conf"][..], 2, "wg.conf"),
        (&["begin", "wg.conf", "wg0"][..], 1, "wg.conf"),
        (&["connect"][..], 2, "CONFIG"),
    ] {
        let out = ours(args);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
        assert!(
            stderr.starts_with(&format!(
                "wireguard4netns: \"{}\" is neither a subcommand nor a TARGET",
                args[0]
            )) && stderr.contains(&format!("wireguard4netns run -c {config} -- PROGRAM")),
            "{args:?}: {stderr}"
        );
    }
    let out = ours(&[]);
    assert_eq!(out.status.code(), Some(2));
    let help = text(&out.stderr);
    assert!(
        help.contains("Usage: wireguard4netns run -c CONFIG"),
        "{help}"
    );
    assert!(help.contains("\n  run "), "{help}");
    let out = ours(&["help", "--help"]);
    assert!(out.status.success(), "{out:?}");
    assert!(text(&out.stdout).contains("Usage: wireguard4netns help [COMMAND]"));
    let out = ours(&["help", "exec"]);
    assert!(out.status.success(), "{out:?}");
    assert!(text(&out.stdout).contains("nsenter --preserve-credentials"));
    let out = ours(&["genkey", "--help"]);
    assert!(out.status.success(), "{out:?}");
    assert!(
        !text(&out.stdout).contains("--log-level"),
        "{}",
        text(&out.stdout)
    );
}

/// The binary cargo built, for tests that need no other user.
fn binary_for_tools() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_BIN_EXE_wireguard4netns"))
}
