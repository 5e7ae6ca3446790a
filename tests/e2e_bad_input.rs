//! End-to-end tests of bad input: every item of the issue's list, in the attach
//! form and, where it applies, the `run` form. Each asserts what the user gets:
//! - one line on stderr (no panic, no backtrace) that names the bad thing, and
//!   the OS error at most once;
//! - exit status 1 for our failures, 2 for usage errors, 127/126 for a `run`
//!   command that does not exist / cannot be executed;
//! - an answer within a few seconds;
//! - nothing left behind: no process of our binary, no new file in the work dir
//!   (socket, lock, resolv.conf), no new interface in the target's namespace.
//!
//! Our binary runs as uid 65534 as in the other end-to-end tests; the tests need
//! root to build the bad situations (a root-owned network namespace, a private
//! mount namespace without /dev/net/tun, a user namespace with
//! `user.max_user_namespaces` 0), all without touching the machine's settings.
//! Without root they skip (or fail when `CI=true`).

#![forbid(unsafe_code)]

mod common;

use std::ffi::{OsStr, OsString};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use common::*;

/// How long a refusal may take ("within a few seconds").
const FEW_SECONDS: Duration = Duration::from_secs(5);
/// Hard bound on one invocation; beyond it the program is killed and the test
/// fails as a hang.
const BOUND: Duration = Duration::from_secs(30);
/// Endpoint names are resolved by the system's resolver, whose timeouts are
/// its own: allow those, but no more.
const RESOLVE_BOUND: Duration = Duration::from_secs(25);

/// The attach form runs in both of its modes: background (the default; the
/// error travels from the daemon through a pipe) and `--foreground`.
const MODES: [&[&str]; 2] = [&[], &["--foreground"]];

/// One test's world: a work dir (the configs, `--tmpdir`), a valid client
/// config (its Endpoint a local port nobody listens on), and a unique
/// interface name. On drop, instances of our binary whose command line names
/// the work dir get 3 s to go, then SIGKILL by PID.
struct World {
    id: TestId,
    dir: WorkDir,
    config: ClientConfig,
    ifname: String,
}

impl World {
    /// The world of `test`, or `None` where the end-to-end environment is
    /// not usable (`require_root_env` has said why, or panicked under CI).
    fn for_test(test: &str) -> Option<Self> {
        require_root_env(test).map(Self::new)
    }

    fn new(id: TestId) -> Self {
        let ours = KeyPair::generate();
        let theirs = KeyPair::generate();
        let config = ClientConfig {
            private_key: ours.private,
            addresses: vec![format!("{}/24", id.tunnel_v4(2))],
            peer_public_key: theirs.public,
            allowed_ips: vec![format!("{}/24", id.tunnel_v4(0))],
            endpoint: format!("127.0.0.1:{}", id.port(0)),
            ..ClientConfig::default()
        };
        let dir = WorkDir::new(&id);
        let sock_dir = dir.path().join("uapi");
        fs::create_dir(&sock_dir).expect("mkdir uapi");
        fs::set_permissions(&sock_dir, fs::Permissions::from_mode(0o700)).expect("chmod uapi");
        std::os::unix::fs::chown(&sock_dir, Some(NOBODY), Some(NOBODY)).expect("chown uapi");
        Self {
            dir,
            ifname: id.name("t"),
            config,
            id,
        }
    }

    /// The `--tmpdir` of [`World::attach`] and [`World::run`]: a directory of
    /// its own, because `run` hides it from the command, which may live in
    /// DIR.
    fn sock_dir(&self) -> PathBuf {
        self.dir.path().join("uapi")
    }

    /// The entries of DIR and of DIR/uapi, for "nothing left behind".
    fn entries(&self) -> Vec<String> {
        let mut all = dir_entries(self.dir.path());
        all.extend(
            dir_entries(&self.sock_dir())
                .into_iter()
                .map(|n| format!("uapi/{n}")),
        );
        all
    }

    /// The valid config as `DIR/wg0.conf`.
    fn valid_config(&self) -> PathBuf {
        self.dir.write("wg0.conf", &self.config.render(), 0o600)
    }

    /// [`World::valid_config`] with `DNS =`, for `run`: without it, `run`
    /// warns (once the tunnel is up) that the host's resolv.conf is kept,
    /// a second line beside the refusal of a command that cannot run.
    fn valid_run_config(&self) -> PathBuf {
        let text =
            self.config
                .render()
                .replacen("[Interface]\n", "[Interface]\nDNS = 192.0.2.53\n", 1);
        self.dir.write("wg0.conf", &text, 0o600)
    }

    /// Our binary as uid 65534: `FLAGS… --tmpdir TMPDIR TARGET IFNAME CONFIG`.
    fn attach_args(
        &self,
        flags: &[&str],
        tmpdir: &Path,
        target: impl AsRef<OsStr>,
        ifname: &str,
        config: &Path,
    ) -> Vec<OsString> {
        let mut args: Vec<OsString> = flags.iter().map(OsString::from).collect();
        args.extend([
            "--tmpdir".into(),
            tmpdir.into(),
            target.as_ref().to_owned(),
            ifname.into(),
            config.into(),
        ]);
        args
    }

    fn attach(&self, flags: &[&str], target: impl AsRef<OsStr>, ifname: &str) -> Command {
        let config = self.valid_config();
        as_user(
            binary(),
            self.attach_args(flags, &self.sock_dir(), target, ifname, &config),
        )
    }

    /// `run --config CONFIG --tmpdir DIR/uapi FLAGS… -- COMMAND…` as uid 65534.
    fn run<S: AsRef<OsStr>>(
        &self,
        config: &Path,
        flags: &[&str],
        command: impl IntoIterator<Item = S>,
    ) -> Command {
        let mut c = run_form(config, &self.sock_dir(), flags, command);
        c.current_dir(self.dir.path());
        c
    }
}

impl Drop for World {
    fn drop(&mut self) {
        let killed = reap_instances(self.dir.path(), Duration::from_secs(3));
        if !killed.is_empty() {
            eprintln!("cleanup: instances {killed:?} of our binary still running; SIGKILLed");
        }
    }
}

/// What must hold after a refusal.
struct Expect<'a> {
    /// The exit status.
    code: i32,
    /// Pieces of the message, matched case-insensitively.
    says: &'a [&'a str],
    /// The namespace whose interfaces must be the same afterwards.
    inside: Option<Place>,
    /// Bound on how long the refusal may take.
    within: Duration,
}

impl<'a> Expect<'a> {
    fn fails(says: &'a [&'a str]) -> Self {
        Self {
            code: 1,
            says,
            inside: None,
            within: FEW_SECONDS,
        }
    }

    fn code(mut self, code: i32) -> Self {
        self.code = code;
        self
    }

    fn inside(mut self, place: Place) -> Self {
        self.inside = Some(place);
        self
    }

    fn within(mut self, bound: Duration) -> Self {
        self.within = bound;
        self
    }
}

/// Interface names at `place`.
fn links(place: &Place) -> Vec<String> {
    let out = run(&mut place.cmd("ip", ["-o", "link", "show"]));
    assert!(
        out.status.success(),
        "ip link at {place:?}: {}",
        text(&out.stderr)
    );
    let mut names: Vec<String> = text(&out.stdout)
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n).to_owned())
        .collect();
    names.sort();
    names
}

/// Run `c` (bounded) and check the refusal: exit status, one clean line on
/// stderr saying `expect.says`, in time, nothing left behind. Returns stderr.
fn refused(w: &World, what: &str, mut c: Command, expect: Expect<'_>) -> String {
    let desc = describe(&c);
    let files_before = w.entries();
    let procs_before = instances(w.dir.path());
    let links_before = expect.inside.as_ref().map(links);

    let t = Instant::now();
    let bound = BOUND.max(expect.within);
    let out = run_timeout(&mut c, None, bound)
        .unwrap_or_else(|e| panic!("{what}: not refused in time (a hang?): {e}"));
    let took = t.elapsed();
    let stderr = text(&out.stderr);
    let stdout = text(&out.stdout);
    let context = format!(
        "{what}: {desc} ({}, {took:?})\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}",
        out.status
    );

    assert_eq!(
        out.status.code(),
        Some(expect.code),
        "exit status\n{context}"
    );
    assert!(
        took <= expect.within,
        "refused only after {took:?} (more than {:?})\n{context}",
        expect.within
    );
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    if expect.code == 2 {
        // clap's usage errors: its own multi-line format, no panic.
        assert!(
            lines.first().is_some_and(|l| l.starts_with("error:")),
            "not a usage error\n{context}"
        );
    } else {
        assert_eq!(lines.len(), 1, "not exactly one line on stderr\n{context}");
        assert!(
            lines[0].starts_with("wireguard4netns: "),
            "the message does not say who speaks\n{context}"
        );
        assert!(stdout.is_empty(), "output on stdout\n{context}");
    }
    for bad in ["panicked", "RUST_BACKTRACE", "stack backtrace", "thread '"] {
        assert!(!stderr.contains(bad), "{bad:?} on stderr\n{context}");
    }
    assert!(
        stderr.matches("(os error").count() <= 1,
        "the OS error is said more than once\n{context}"
    );
    let lower = stderr.to_lowercase();
    for piece in expect.says {
        assert!(
            lower.contains(&piece.to_lowercase()),
            "the message does not say {piece:?}\n{context}"
        );
    }

    let quiet = wait_for(EXIT_BUDGET, || {
        instances(w.dir.path())
            .iter()
            .all(|p| procs_before.contains(p))
    });
    assert!(
        quiet,
        "processes of our binary left: {:?} (before: {procs_before:?})\n{context}",
        instances(w.dir.path())
    );
    assert_eq!(
        w.entries(),
        files_before,
        "files left in {}\n{context}",
        w.dir.path().display()
    );
    if let (Some(place), Some(before)) = (&expect.inside, links_before) {
        assert_eq!(links(place), before, "interfaces at {place:?}\n{context}");
    }
    eprintln!(
        "{what}: exit {} after {took:?}: {}",
        expect.code,
        stderr.trim()
    );
    stderr
}

/// A process that holds namespaces: spawned by `c`, which must exec in place
/// down to `sleep`; `spawn` returns once it is `sleep`. SIGKILLed and reaped on
/// drop.
struct Holder {
    child: Child,
}

impl Holder {
    fn spawn(mut c: Command) -> Self {
        let desc = describe(&c);
        let child = c
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {desc}: {e}"));
        let mut holder = Self { child };
        let pid = holder.pid();
        let ready = wait_for(Duration::from_secs(10), || {
            fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "sleep")
                || holder.child.try_wait().ok().flatten().is_some()
        });
        assert!(
            ready && process_running(pid),
            "{desc} did not become `sleep`"
        );
        holder
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        kill_child(&mut self.child);
    }
}

/// A root-owned network namespace (`ip netns add`), deleted on drop.
struct RootNetns {
    name: String,
}

impl RootNetns {
    fn new(id: &TestId) -> Self {
        // Named like the harness's namespaces, so a leftover of a killed run
        // keeps the id from being reused.
        let name = id.name("n0");
        run_ok(&mut cmd("ip", ["netns", "add", &name]));
        Self { name }
    }
}

impl Drop for RootNetns {
    fn drop(&mut self) {
        let _ = run_timeout(
            &mut cmd("ip", ["netns", "del", &self.name]),
            None,
            CMD_TIMEOUT,
        );
    }
}

/// No interface named IFNAME appeared in the root namespace (where a target
/// that is not in a namespace of its own would have put it).
fn assert_no_link_in_root(w: &World) {
    let path = Path::new("/sys/class/net").join(&w.ifname);
    assert!(!path.exists(), "{} exists", path.display());
}

/// A root-owned 0755 directory under /tmp: nobody else may write in it.
fn root_dir(id: &TestId) -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix(&format!("{}-root-", id.name("")))
        .tempdir_in("/tmp")
        .expect("root dir");
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).expect("chmod");
    dir
}

/// `unshare -m sh -c 'SETUP && exec "$@"' sh setpriv … wireguard4netns ARGS…`:
/// our binary as uid 65534 in a private mount namespace prepared by SETUP (as
/// root). The machine's own mounts are untouched (`unshare -m` makes the new
/// namespace's mounts private).
fn in_private_mounts(setup: &str, args: impl IntoIterator<Item = OsString>) -> Command {
    let mut c = cmd(
        "unshare",
        ["-m", "sh", "-c", &format!(r#"{setup} && exec "$@""#), "sh"],
    );
    c.arg("setpriv").args(AS_NOBODY).arg(binary()).args(args);
    c
}

// ---------------------------------------------------------------------------
// The target
// ---------------------------------------------------------------------------

/// A PID that does not exist (a child of ours that has exited and been reaped).
#[test]
fn pid_that_does_not_exist() {
    let Some(w) = World::for_test("pid_that_does_not_exist") else {
        return;
    };
    let mut gone_pid = None;
    for _ in 0..10 {
        let mut child = cmd("true", Vec::<&str>::new()).spawn().expect("spawn true");
        let pid = child.id();
        child.wait().expect("reap true");
        if !Path::new(&format!("/proc/{pid}")).exists() {
            gone_pid = Some(pid);
            break;
        }
    }
    let pid = gone_pid.expect("a PID nobody uses").to_string();
    for mode in MODES {
        refused(
            &w,
            &format!("PID {pid} that does not exist {mode:?}"),
            w.attach(mode, &pid, &w.ifname),
            Expect::fails(&[&format!("no process with PID {pid}")]),
        );
        assert_no_link_in_root(&w);
    }
}

/// A PID of another user: 1 (root's).
#[test]
fn pid_of_another_user() {
    let Some(w) = World::for_test("pid_of_another_user") else {
        return;
    };
    for mode in MODES {
        refused(
            &w,
            &format!("PID 1 {mode:?}"),
            w.attach(mode, "1", &w.ifname),
            Expect::fails(&["process 1", "another user", "your own"]),
        );
        assert_no_link_in_root(&w);
    }
}

/// A PID of the user's own that has not unshared a user namespace (a plain
/// `sleep` as uid 65534).
#[test]
fn pid_without_a_user_namespace() {
    let Some(w) = World::for_test("pid_without_a_user_namespace") else {
        return;
    };
    let plain = Holder::spawn(as_user("sleep", ["300"]));
    let pid = plain.pid().to_string();
    for mode in MODES {
        refused(
            &w,
            &format!("plain sleep {mode:?}"),
            w.attach(mode, &pid, &w.ifname),
            Expect::fails(&[
                &format!("process {pid}"),
                "has not unshared a user namespace",
                "unshare",
            ]),
        );
        assert_no_link_in_root(&w);
    }
}

/// A PID whose network namespace we may not enter: the process is ours, in a
/// user namespace we own (`unshare -U` as uid 65534), but its network namespace
/// is a root-owned one (`ip netns exec`), so `setns(CLONE_NEWNET)` is EPERM.
#[test]
fn pid_whose_network_namespace_is_not_ours() {
    let Some(w) = World::for_test("pid_whose_network_namespace_is_not_ours") else {
        return;
    };
    let netns = RootNetns::new(&w.id);
    // ip netns exec, setpriv and unshare all exec in place.
    let mut c = cmd("ip", ["netns", "exec", &netns.name, "setpriv"]);
    c.args(AS_NOBODY).args(["unshare", "-U", "sleep", "300"]);
    let holder = Holder::spawn(c);
    let pid = holder.pid().to_string();
    for mode in MODES {
        refused(
            &w,
            &format!("foreign netns {mode:?}"),
            w.attach(mode, &pid, &w.ifname),
            Expect::fails(&[
                &format!("network namespace of process {pid}"),
                "not permitted",
                "unshare --user --map-root-user --net",
            ])
            .inside(Place::Netns(netns.name.clone())),
        );
    }
}

/// A target of the user's own that made itself non-dumpable: python3 as uid
/// 65534 in the initial user namespace makes a user+net namespace (its memory
/// still belongs to the initial one, so owning the new user namespace gives no
/// `CAP_SYS_PTRACE` over it), maps itself to root there, then calls
/// `prctl(PR_SET_DUMPABLE, 0)`. The kernel says EACCES as for another user's
/// process; we must say what it really is.
#[test]
fn pid_of_our_own_that_is_not_dumpable() {
    use std::io::{BufRead, BufReader};
    let Some(w) = World::for_test("pid_of_our_own_that_is_not_dumpable") else {
        return;
    };
    let script = r#"
import ctypes, os, sys, time
libc = ctypes.CDLL(None, use_errno=True)
CLONE_NEWUSER, CLONE_NEWNET = 0x10000000, 0x40000000
if libc.unshare(CLONE_NEWUSER | CLONE_NEWNET) != 0:
    sys.exit("unshare: " + os.strerror(ctypes.get_errno()))
for name, text in (("uid_map", "0 65534 1"), ("setgroups", "deny"), ("gid_map", "0 65534 1")):
    with open("/proc/self/" + name, "w") as f:
        f.write(text)
PR_SET_DUMPABLE = 4
if libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
    sys.exit("prctl: " + os.strerror(ctypes.get_errno()))
print("ready", flush=True)
time.sleep(300)
"#;
    let mut c = cmd("setpriv", AS_NOBODY);
    c.args(["/usr/bin/python3", "-c", script])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let mut child = c.spawn().expect("spawn python3");
    let stdout = child.stdout.take().expect("python3's stdout");
    let target = Process::new(child);
    // Bounded: python3 prints one line or exits (end of file).
    let mut line = String::new();
    let _ = BufReader::new(stdout).read_line(&mut line);
    assert_eq!(
        line.trim(),
        "ready",
        "the non-dumpable target did not start"
    );
    let pid = target.pid.to_string();
    for mode in MODES {
        refused(
            &w,
            &format!("non-dumpable target {mode:?}"),
            w.attach(mode, &pid, &w.ifname),
            Expect::fails(&[
                &format!("process {pid} is yours but not dumpable"),
                "PR_SET_DUMPABLE",
                "--netns-type=path",
            ]),
        );
        assert_no_link_in_root(&w);
    }
    drop(target);
}

// ---------------------------------------------------------------------------
// The interface name
// ---------------------------------------------------------------------------

fn bad_ifname(test: &str, ifname: &str, says: &[&str]) {
    let Some(w) = World::for_test(test) else {
        return;
    };
    let target = Target::spawn();
    let pid = target.pid().to_string();
    for mode in MODES {
        refused(
            &w,
            &format!("{test} attach {mode:?}"),
            w.attach(mode, &pid, ifname),
            Expect::fails(says).inside(target.place()),
        );
    }
    let config = w.valid_config();
    refused(
        &w,
        &format!("{test} run"),
        w.run(&config, &["--ifname", ifname], ["true"]),
        Expect::fails(says),
    );
}

#[test]
fn ifname_too_long() {
    bad_ifname(
        "ifname_too_long",
        "sixteen_chars_xx",
        &["\"sixteen_chars_xx\"", "longer than 15"],
    );
}

#[test]
fn ifname_with_slash() {
    bad_ifname("ifname_with_slash", "wg/0", &["\"wg/0\"", "'/'"]);
}

#[test]
fn ifname_with_whitespace() {
    bad_ifname(
        "ifname_with_whitespace",
        "wg 0",
        &["\"wg 0\"", "whitespace"],
    );
}

/// An interface of that name already exists in the target's namespace (a TUN
/// made there first); it is neither taken over nor removed.
#[test]
fn ifname_already_exists() {
    let Some(w) = World::for_test("ifname_already_exists") else {
        return;
    };
    let target = Target::spawn();
    target.ip_ok(["tuntap", "add", "dev", &w.ifname, "mode", "tun"]);
    let pid = target.pid().to_string();
    for mode in MODES {
        refused(
            &w,
            &format!("existing interface {mode:?}"),
            w.attach(mode, &pid, &w.ifname),
            Expect::fails(&[&w.ifname, "already exists", "ip link del"]).inside(target.place()),
        );
    }
}

// ---------------------------------------------------------------------------
// /dev/net/tun
// ---------------------------------------------------------------------------

/// `/dev/net/tun` replaced by `setup` in a private mount namespace: the attach
/// form (both modes) and `run` say `says`.
fn bad_tun_device(test: &str, setup: &str, says: &[&str]) {
    let Some(w) = World::for_test(test) else {
        return;
    };
    let target = Target::spawn();
    let config = w.valid_config();
    for mode in MODES {
        let args = w.attach_args(
            mode,
            w.dir.path(),
            target.pid().to_string(),
            &w.ifname,
            &config,
        );
        refused(
            &w,
            &format!("{test} attach {mode:?}"),
            in_private_mounts(setup, args),
            Expect::fails(says).inside(target.place()),
        );
    }
    let mut args: Vec<OsString> = vec!["run".into(), "--config".into(), config.into()];
    args.extend([
        "--tmpdir".into(),
        w.dir.path().into(),
        "--".into(),
        "true".into(),
    ]);
    refused(
        &w,
        &format!("{test} run"),
        in_private_mounts(setup, args),
        Expect::fails(says),
    );
}

#[test]
fn dev_net_tun_missing() {
    bad_tun_device(
        "dev_net_tun_missing",
        "mount -t tmpfs tmpfs /dev/net",
        &["/dev/net/tun does not exist", "modprobe tun", "mknod"],
    );
}

#[test]
fn dev_net_tun_not_accessible() {
    bad_tun_device(
        "dev_net_tun_not_accessible",
        "mount -t tmpfs tmpfs /dev/net && mknod -m 0600 /dev/net/tun c 10 200",
        &[
            "/dev/net/tun",
            "permission denied",
            "chmod 0666 /dev/net/tun",
        ],
    );
}

/// Something that is not the TUN device at the path (/dev/null bound over it).
#[test]
fn dev_net_tun_not_a_tun_device() {
    bad_tun_device(
        "dev_net_tun_not_a_tun_device",
        "mount --bind /dev/null /dev/net/tun",
        &["/dev/net/tun is not the TUN device", "mknod"],
    );
}

// ---------------------------------------------------------------------------
// The socket directory
// ---------------------------------------------------------------------------

/// `--tmpdir tmpdir`: the attach form and `run` say `says`.
fn bad_socket_dir(w: &World, what: &str, tmpdir: &Path, says: &[&str]) {
    let target = Target::spawn();
    let config = w.valid_config();
    let args = w.attach_args(&[], tmpdir, target.pid().to_string(), &w.ifname, &config);
    refused(
        w,
        &format!("{what} attach"),
        as_user(binary(), args),
        Expect::fails(says).inside(target.place()),
    );
    let mut c = as_user(binary(), ["run", "--config"]);
    c.arg(&config)
        .arg("--tmpdir")
        .arg(tmpdir)
        .args(["--", "true"]);
    refused(w, &format!("{what} run"), c, Expect::fails(says));
}

/// [`bad_socket_dir`] on an existing directory, which must be left as empty
/// as it was.
fn bad_existing_socket_dir(w: &World, what: &str, tmpdir: &Path, says: &[&str]) {
    bad_socket_dir(w, what, tmpdir, says);
    assert_eq!(
        dir_entries(tmpdir),
        Vec::<String>::new(),
        "{what}: files left in {}",
        tmpdir.display()
    );
}

/// A directory `name` in the work dir, uid 65534's, with `mode`.
fn own_dir(w: &World, name: &str, mode: u32) -> std::path::PathBuf {
    let dir = w.dir.path().join(name);
    fs::create_dir(&dir).expect("mkdir");
    fs::set_permissions(&dir, fs::Permissions::from_mode(mode)).expect("chmod");
    std::os::unix::fs::chown(&dir, Some(NOBODY), Some(NOBODY)).expect("chown");
    dir
}

/// A socket directory that cannot be created: its parent is root's, 0755.
#[test]
fn socket_dir_cannot_be_created() {
    let Some(w) = World::for_test("socket_dir_cannot_be_created") else {
        return;
    };
    let parent = root_dir(&w.id);
    let tmpdir = parent.path().join("sockets");
    let shown = tmpdir.display().to_string();
    bad_socket_dir(
        &w,
        "uncreatable socket dir",
        &tmpdir,
        &[
            &format!("cannot create socket directory {shown}"),
            "permission denied",
            "another --tmpdir",
        ],
    );
    assert!(gone(&tmpdir), "{shown} was created");
}

/// A socket directory below a file.
#[test]
fn socket_dir_below_a_file() {
    let Some(w) = World::for_test("socket_dir_below_a_file") else {
        return;
    };
    let file = w.dir.write("plain-file", "", 0o600);
    let tmpdir = file.join("sockets");
    let shown = tmpdir.display().to_string();
    bad_socket_dir(
        &w,
        "socket dir below a file",
        &tmpdir,
        &[
            &format!("cannot create socket directory {shown}"),
            "not a directory",
            "another --tmpdir",
        ],
    );
}

/// A socket directory of ours that we may not write in (0500).
#[test]
fn socket_dir_not_writable() {
    let Some(w) = World::for_test("socket_dir_not_writable") else {
        return;
    };
    let tmpdir = own_dir(&w, "read-only", 0o500);
    let shown = tmpdir.display().to_string();
    bad_existing_socket_dir(
        &w,
        "unwritable socket dir",
        &tmpdir,
        &[
            &format!("socket directory {shown} is not writable"),
            "another --tmpdir",
        ],
    );
}

/// A socket directory that is not ours (root's, 0755): its owner could swap
/// the socket, so it is refused even though it is not writable by others.
#[test]
fn socket_dir_of_another_user() {
    let Some(w) = World::for_test("socket_dir_of_another_user") else {
        return;
    };
    let tmpdir = root_dir(&w.id);
    let shown = tmpdir.path().display().to_string();
    bad_existing_socket_dir(
        &w,
        "socket dir of another user",
        tmpdir.path(),
        &[
            &format!("socket directory {shown} is unsafe"),
            "owned by uid 0, not by you (uid 65534)",
            "another --tmpdir",
        ],
    );
}

/// A socket directory writable by its group, and a sticky world-writable
/// one (like /tmp): both refused, nothing created in them.
#[test]
fn socket_dir_writable_by_others() {
    let Some(w) = World::for_test("socket_dir_writable_by_others") else {
        return;
    };
    for mode in [0o770, 0o1777] {
        let tmpdir = own_dir(&w, &format!("shared-{mode:o}"), mode);
        let shown = tmpdir.display().to_string();
        bad_existing_socket_dir(
            &w,
            &format!("socket dir mode {mode:o}"),
            &tmpdir,
            &[
                &format!("socket directory {shown} is unsafe"),
                "writable by group or others",
                "another --tmpdir",
            ],
        );
    }
}

/// A socket directory given as a symlink to ours: refused (it could be
/// pointed elsewhere between the check and the use), nothing created.
#[test]
fn socket_dir_is_a_symlink() {
    let Some(w) = World::for_test("socket_dir_is_a_symlink") else {
        return;
    };
    let link = w.dir.path().join("link");
    std::os::unix::fs::symlink(w.sock_dir(), &link).expect("symlink");
    let shown = link.display().to_string();
    bad_socket_dir(
        &w,
        "symlinked socket dir",
        &link,
        &[
            &format!("socket directory {shown} is unsafe"),
            "symbolic link",
            "another --tmpdir",
        ],
    );
}

/// Another live instance on the same socket, for `run`: a second `run`, and an
/// attach with the same IFNAME and `--tmpdir`, are refused; the first runs on
/// undisturbed.
#[test]
fn second_instance_on_the_same_socket_run() {
    let Some(w) = World::for_test("second_instance_on_the_same_socket_run") else {
        return;
    };
    let config = w.valid_config();
    let socket = w.sock_dir().join("wg0.sock");
    let mut first = Spawned::start(w.run(&config, &[], ["sleep", "30"]));
    let up = wait_for(Duration::from_secs(10), || {
        children_of(first.pid).iter().any(|(_, c)| c == "sleep") || first.try_exit().is_some()
    });
    assert!(up && !gone(&socket), "first run not up\n{}", first.report());
    let says = [
        &socket.display().to_string()[..],
        "already serving wg0",
        "another interface name or --tmpdir",
    ];

    refused(
        &w,
        "second run",
        w.run(&config, &[], ["true"]),
        Expect::fails(&says),
    );
    let target = Target::spawn();
    let pid = target.pid().to_string();
    for mode in MODES {
        refused(
            &w,
            &format!("attach on run's socket {mode:?}"),
            w.attach(mode, &pid, "wg0"),
            Expect::fails(&says).inside(target.place()),
        );
    }

    assert!(
        first.try_exit().is_none() && !gone(&socket),
        "the first instance was disturbed\n{}",
        first.report()
    );
    first.signal(Signal::SIGTERM);
    let status = first.wait_exit(EXIT_BUDGET + EXIT_SLACK);
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(143),
        "{}",
        first.report()
    );
}

// ---------------------------------------------------------------------------
// The config file
// ---------------------------------------------------------------------------

/// `config` refused by the attach form (background) and `run`, each saying `says`.
fn bad_config(w: &World, what: &str, config: &Path, says: &[&str]) {
    let target = Target::spawn();
    let args = w.attach_args(
        &[],
        w.dir.path(),
        target.pid().to_string(),
        &w.ifname,
        config,
    );
    refused(
        w,
        &format!("{what} attach"),
        as_user(binary(), args),
        Expect::fails(says).inside(target.place()),
    );
    refused(
        w,
        &format!("{what} run"),
        w.run(config, &[], ["true"]),
        Expect::fails(says),
    );
}

/// The valid config with the line starting `key =` replaced by `line` (or
/// added to `[Peer]`), written as `DIR/NAME`; returns the path and the line's
/// number.
fn config_with(w: &World, name: &str, key: &str, line: &str) -> (PathBuf, usize) {
    let mut lines: Vec<String> = w.config.render().lines().map(str::to_owned).collect();
    let prefix = format!("{key} =");
    match lines.iter().position(|l| l.starts_with(&prefix)) {
        Some(i) => lines[i] = line.to_owned(),
        None => lines.push(line.to_owned()),
    }
    let number = lines.iter().position(|l| l == line).expect("the line") + 1;
    let path = w.dir.write(name, &(lines.join("\n") + "\n"), 0o600);
    (path, number)
}

fn config_test(test: &str, key: &str, line: &str, says: &[&str]) {
    let Some(w) = World::for_test(test) else {
        return;
    };
    let (path, number) = config_with(&w, "bad.conf", key, line);
    let at = format!("{}:{number}: {key}", path.display());
    let mut all = vec![at.as_str()];
    all.extend_from_slice(says);
    bad_config(&w, test, &path, &all);
}

#[test]
fn config_missing() {
    let Some(w) = World::for_test("config_missing") else {
        return;
    };
    let path = w.dir.path().join("missing.conf");
    let shown = path.display().to_string();
    bad_config(
        &w,
        "missing config",
        &path,
        &[
            &format!("cannot read {shown}"),
            "no such file",
            "check the path",
        ],
    );
}

/// Mode 000, as its owner (uid 65534).
#[test]
fn config_unreadable() {
    let Some(w) = World::for_test("config_unreadable") else {
        return;
    };
    let path = w.dir.write("unreadable.conf", &w.config.render(), 0o000);
    let shown = path.display().to_string();
    bad_config(
        &w,
        "unreadable config",
        &path,
        &[
            &format!("cannot read {shown}"),
            "permission denied",
            "make it readable",
        ],
    );
}

/// A config that group and others can read works, with wg-quick's warning:
/// the file named, `chmod 600` suggested; in both forms (the attach form says
/// it when it reads the config, before it finds the target missing).
#[test]
fn config_readable_by_others_is_warned_about() {
    let Some(w) = World::for_test("config_readable_by_others_is_warned_about") else {
        return;
    };
    let path = w.dir.write("open.conf", &w.config.render(), 0o644);
    let shown = path.display().to_string();
    let want = format!(
        "{shown}: it holds a PrivateKey and is readable by group and others (mode 0644) (hint: chmod 600 {shown})"
    );
    let out = run_timeout(&mut w.run(&path, &[], ["true"]), None, BOUND)
        .unwrap_or_else(|e| panic!("{e}"));
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "run: {stderr}");
    assert!(
        stderr.contains(&want),
        "run: no warning {want:?} in:\n{stderr}"
    );

    let args = w.attach_args(
        &["--foreground"],
        w.dir.path(),
        "99999999",
        &w.ifname,
        &path,
    );
    let out =
        run_timeout(&mut as_user(binary(), args), None, BOUND).unwrap_or_else(|e| panic!("{e}"));
    let stderr = text(&out.stderr);
    assert!(!out.status.success(), "attach to no process succeeded");
    assert!(
        stderr.contains(&want),
        "attach: no warning {want:?} in:\n{stderr}"
    );
    assert!(
        stderr.contains("there is no process with PID 99999999"),
        "{stderr}"
    );
}

#[test]
fn config_empty() {
    let Some(w) = World::for_test("config_empty") else {
        return;
    };
    let path = w.dir.write("empty.conf", "", 0o600);
    let shown = path.display().to_string();
    bad_config(
        &w,
        "empty config",
        &path,
        &[&shown, "no settings", "[Interface]", "PrivateKey"],
    );
}

/// Binary garbage, and text that is not a config.
#[test]
fn config_garbage() {
    let Some(w) = World::for_test("config_garbage") else {
        return;
    };
    let bytes: Vec<u8> = (0u32..512)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8 | 0x80)
        .collect();
    let binary_path = w.dir.path().join("binary.conf");
    fs::write(&binary_path, &bytes).expect("write garbage");
    std::os::unix::fs::chown(&binary_path, Some(NOBODY), Some(NOBODY)).expect("chown");
    let shown = binary_path.display().to_string();
    bad_config(
        &w,
        "binary config",
        &binary_path,
        &[&format!("{shown}:1"), "not UTF-8"],
    );

    let text_path = w.dir.write(
        "prose.conf",
        "Dear reader,\nthis is not a WireGuard configuration.\n",
        0o600,
    );
    let shown = text_path.display().to_string();
    bad_config(
        &w,
        "prose config",
        &text_path,
        &[&format!("{shown}:1"), "expected `Key = value`"],
    );
}

/// A private key that is not base64; the message must not repeat it.
#[test]
fn key_not_base64() {
    let Some(w) = World::for_test("key_not_base64") else {
        return;
    };
    let secret = "not!base64@secret#value";
    let (path, number) = config_with(
        &w,
        "bad.conf",
        "PrivateKey",
        &format!("PrivateKey = {secret}"),
    );
    let at = format!("{}:{number}: PrivateKey", path.display());
    bad_config(
        &w,
        "key not base64",
        &path,
        &[&at, "not valid base64", "wg genkey"],
    );
    // `refused` printed stderr; check it does not leak the value.
    let out = run(&mut w.run(&path, &[], ["true"]));
    assert!(
        !text(&out.stderr).contains(secret),
        "the private key's text is echoed: {}",
        text(&out.stderr)
    );
}

#[test]
fn key_wrong_length() {
    config_test(
        "key_wrong_length",
        "PublicKey",
        "PublicKey = AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
        &["decodes to 38 bytes", "32 bytes"],
    );
}

#[test]
fn bad_address() {
    config_test(
        "bad_address",
        "Address",
        "Address = 10.0.0.300/24",
        &["\"10.0.0.300/24\"", "such as 10.0.0.2/24"],
    );
}

#[test]
fn bad_allowed_ips() {
    config_test(
        "bad_allowed_ips",
        "AllowedIPs",
        "AllowedIPs = 10.0.0.0/24, 10.1.0.0/33",
        &["\"10.1.0.0/33\"", "0 to 32"],
    );
}

#[test]
fn bad_listen_port() {
    let Some(w) = World::for_test("bad_listen_port") else {
        return;
    };
    // Added at the end of the file, so in [Peer]: put it in [Interface].
    let text = w
        .config
        .render()
        .replacen("[Interface]\n", "[Interface]\nListenPort = 70000\n", 1);
    let path = w.dir.write("bad.conf", &text, 0o600);
    let number = text
        .lines()
        .position(|l| l == "ListenPort = 70000")
        .expect("line")
        + 1;
    let at = format!("{}:{number}: ListenPort", path.display());
    bad_config(
        &w,
        "bad_listen_port",
        &path,
        &[&at, "\"70000\"", "0 to 65535"],
    );
}

#[test]
fn bad_persistent_keepalive() {
    config_test(
        "bad_persistent_keepalive",
        "PersistentKeepalive",
        "PersistentKeepalive = often",
        &["\"often\"", "\"off\" or a number of seconds"],
    );
}

/// An Endpoint host name that does not resolve (`.invalid` is reserved for
/// that, RFC 6761). Resolution uses the machine's resolver, so the bound is
/// its timeouts, not ours.
#[test]
fn endpoint_does_not_resolve() {
    let Some(w) = World::for_test("endpoint_does_not_resolve") else {
        return;
    };
    let host = format!("{}.invalid", w.id.name("host"));
    let (path, _) = config_with(
        &w,
        "bad.conf",
        "Endpoint",
        &format!("Endpoint = {host}:51820"),
    );
    let shown = path.display().to_string();
    let says = [
        &shown[..],
        &format!("cannot resolve endpoint host '{host}'"),
        "use an IP address",
    ];
    let target = Target::spawn();
    let args = w.attach_args(
        &[],
        w.dir.path(),
        target.pid().to_string(),
        &w.ifname,
        &path,
    );
    refused(
        &w,
        "unresolvable endpoint attach",
        as_user(binary(), args),
        Expect::fails(&says)
            .inside(target.place())
            .within(RESOLVE_BOUND),
    );
    refused(
        &w,
        "unresolvable endpoint run",
        w.run(&path, &[], ["true"]),
        Expect::fails(&says).within(RESOLVE_BOUND),
    );
}

// ---------------------------------------------------------------------------
// User namespaces disabled
// ---------------------------------------------------------------------------

/// `run` where no user namespace can be made: our binary runs inside a user
/// namespace (owned by uid 65534, which is root there) whose
/// `user.max_user_namespaces` its owner set to 0, so its `unshare(CLONE_NEWUSER)`
/// fails as it does with the machine-wide sysctl at 0; the machine's setting is
/// untouched, parallel tests are unaffected.
#[test]
fn user_namespaces_disabled_run() {
    let Some(w) = World::for_test("user_namespaces_disabled_run") else {
        return;
    };
    let config = w.valid_config();
    let mut c = as_user(
        "unshare",
        [
            "-U",
            "--map-root-user",
            "sh",
            "-c",
            r#"echo 0 > /proc/sys/user/max_user_namespaces && exec "$@""#,
            "sh",
        ],
    );
    c.arg(binary())
        .args(["run", "--config"])
        .arg(&config)
        .arg("--tmpdir")
        .arg(w.dir.path())
        .args(["--", "true"]);
    refused(
        &w,
        "user namespaces disabled, run",
        c,
        Expect::fails(&[
            "cannot create a user namespace",
            "user namespaces are disabled",
            "user.max_user_namespaces",
        ]),
    );
}

/// The attach form makes no user namespace, it joins the target's: with the
/// limit at 0 (set after the target was made) it still works.
#[test]
fn user_namespaces_disabled_attach_needs_none() {
    let Some(w) = World::for_test("user_namespaces_disabled_attach_needs_none") else {
        return;
    };
    let config = w.valid_config();
    let script = r#"
        bin=$1 dir=$2 conf=$3 ifname=$4
        unshare -rn sleep 60 & t=$!
        n=0
        until [ "$(cat /proc/$t/comm 2>/dev/null)" = sleep ]; do
            n=$((n + 1)); [ $n -lt 200 ] || exit 90; sleep 0.05
        done
        echo 0 > /proc/sys/user/max_user_namespaces || exit 91
        if unshare -U true 2>/dev/null; then echo "the limit is not in force"; exit 92; fi
        "$bin" --tmpdir "$dir" "$t" "$ifname" "$conf"; rc=$?
        nsenter --preserve-credentials -U -n -t "$t" ip -o link show dev "$ifname" || rc=93
        kill "$t"; wait "$t"
        exit $rc
    "#;
    let mut c = as_user(
        "unshare",
        ["-U", "--map-root-user", "sh", "-c", script, "sh"],
    );
    c.arg(binary())
        .arg(w.dir.path())
        .arg(&config)
        .arg(&w.ifname);
    let desc = describe(&c);
    let out = run_timeout(&mut c, None, BOUND).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        out.status.success(),
        "{desc}: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    let dir = w.dir.path().to_owned();
    assert!(
        wait_for(EXIT_BUDGET + EXIT_SLACK, || instances(&dir).is_empty()
            && gone(&dir.join(format!("{}.sock", w.ifname)))),
        "the daemon outlived its target: {:?}, files {:?}",
        instances(&dir),
        dir_entries(&dir)
    );
}

// ---------------------------------------------------------------------------
// run's command
// ---------------------------------------------------------------------------

#[test]
fn run_command_not_found() {
    let Some(w) = World::for_test("run_command_not_found") else {
        return;
    };
    let config = w.valid_run_config();
    let name = format!("{}-no-such-command", w.id.name(""));
    refused(
        &w,
        "command not found",
        w.run(&config, &[], [name.as_str()]),
        Expect::fails(&[&format!("{name}: command not found")]).code(127),
    );
    let path = w.dir.path().join("no-such-file");
    let shown = path.display().to_string();
    refused(
        &w,
        "no such file",
        w.run(&config, &[], [&shown]),
        Expect::fails(&[&shown, "no such file"]).code(127),
    );
}

/// A file without execute permission, and a directory.
#[test]
fn run_command_not_executable() {
    let Some(w) = World::for_test("run_command_not_executable") else {
        return;
    };
    let config = w.valid_run_config();
    let script = w.dir.write("script.sh", "#!/bin/sh\nexit 0\n", 0o644);
    let shown = script.display().to_string();
    refused(
        &w,
        "not executable",
        w.run(&config, &[], [&shown]),
        Expect::fails(&[&shown, "permission denied"]).code(126),
    );
    let dir = w.dir.path().display().to_string();
    refused(
        &w,
        "a directory",
        w.run(&config, &[], [&dir]),
        Expect::fails(&[&dir]).code(126),
    );
}

// ---------------------------------------------------------------------------
// --ready-fd / --exit-fd
// ---------------------------------------------------------------------------

/// `sh -c 'exec "$@" 3</dev/null 4</dev/null' sh setpriv … wireguard4netns
/// ARGS…`: our binary as uid 65534 with descriptors 3 and 4 open, so a refusal
/// of them is about their numbers, not about their being closed.
fn with_fds_3_and_4(args: impl IntoIterator<Item = OsString>) -> Command {
    let mut c = cmd(
        "sh",
        [
            "-c",
            r#"exec "$@" 3</dev/null 4</dev/null"#,
            "sh",
            "setpriv",
        ],
    );
    c.args(AS_NOBODY).arg(binary()).args(args);
    c
}

/// Descriptor numbers the engine cannot own: stdio (0-2; in background mode
/// they are /dev/null) and one number for both flags. Refused with exit 1
/// before the target is touched, in both modes and in `run`; with a valid
/// target, so the refusal is the only thing that stops the start.
#[test]
fn ready_and_exit_fds_that_cannot_be_ours() {
    let Some(w) = World::for_test("ready_and_exit_fds_that_cannot_be_ours") else {
        return;
    };
    let target = Target::spawn();
    let pid = target.pid().to_string();
    let config = w.valid_config();
    let cases: [(&[&str], &[&str]); 5] = [
        (
            &["--ready-fd", "0"],
            &["--ready-fd 0", "standard stream", "3 or above"],
        ),
        (
            &["--ready-fd", "1"],
            &["--ready-fd 1", "standard stream", "3 or above"],
        ),
        (
            &["--exit-fd", "2"],
            &["--exit-fd 2", "standard stream", "3 or above"],
        ),
        (
            &["--ready-fd", "3", "--exit-fd", "3"],
            &["--ready-fd and --exit-fd are both 3", "each its own"],
        ),
        (
            &["--exit-fd", "4", "--ready-fd", "4"],
            &["--ready-fd and --exit-fd are both 4", "each its own"],
        ),
    ];
    for mode in MODES {
        for (flags, says) in cases {
            let mut all = mode.to_vec();
            all.extend_from_slice(flags);
            refused(
                &w,
                &format!("{all:?}"),
                with_fds_3_and_4(w.attach_args(&all, &w.sock_dir(), &pid, &w.ifname, &config)),
                Expect::fails(says).inside(target.place()),
            );
        }
    }
    for fd in ["0", "1", "2"] {
        refused(
            &w,
            &format!("run --ready-fd {fd}"),
            w.run(&config, &["--ready-fd", fd], ["true"]),
            Expect::fails(&[&format!("--ready-fd {fd}"), "standard stream"]),
        );
    }
}

/// `--pid-file` in a directory we cannot write (root's 0755) or that does not
/// exist: refused before anything starts, naming the path, with a valid
/// target.
#[test]
fn pid_file_in_a_directory_we_cannot_write() {
    let Some(w) = World::for_test("pid_file_in_a_directory_we_cannot_write") else {
        return;
    };
    let target = Target::spawn();
    let pid = target.pid().to_string();
    let root = root_dir(&w.id);
    let unwritable = root.path().join("engine.pid").display().to_string();
    let missing = w
        .dir
        .path()
        .join("no-such-dir/engine.pid")
        .display()
        .to_string();
    for mode in MODES {
        for (path, why) in [(&unwritable, "not writable"), (&missing, "does not exist")] {
            let mut flags = mode.to_vec();
            flags.extend(["--pid-file", path.as_str()]);
            refused(
                &w,
                &format!("--pid-file {path} {mode:?}"),
                w.attach(&flags, &pid, &w.ifname),
                Expect::fails(&[&format!("cannot write the pid file {path}"), why])
                    .inside(target.place()),
            );
        }
    }
    assert!(
        dir_entries(root.path()).is_empty(),
        "files left in the unwritable directory"
    );
}

// ---------------------------------------------------------------------------
// Usage
// ---------------------------------------------------------------------------

/// Missing arguments are usage errors: exit 2, no panic.
#[test]
fn usage_errors_exit_2() {
    let Some(w) = World::for_test("usage_errors_exit_2") else {
        return;
    };
    let config = w.valid_config();
    refused(
        &w,
        "attach without CONFIG",
        as_user(binary(), ["1234", "wg0"]),
        Expect::fails(&["<CONFIG>"]).code(2),
    );
    let mut c = as_user(binary(), ["run", "--config"]);
    c.arg(&config);
    refused(
        &w,
        "run without a command",
        c,
        Expect::fails(&["<CMD>"]).code(2),
    );
    refused(
        &w,
        "run without --config",
        as_user(binary(), ["run", "--", "true"]),
        Expect::fails(&["--config"]).code(2),
    );
}
