//! Harness for the end-to-end tests: real namespaces, a real WireGuard peer, our
//! binary running as an unprivileged user.
//!
//! Every test builds its own small world and tears it down in `Drop`, also when it
//! panics half-way through setup:
//! - a *peer* ([`Peer`]): a root-owned network namespace joined to the root
//!   namespace by a veth pair, running Debian's `wireguard-go` (or `boringtun-cli`,
//!   [`PeerEngine`]) configured with `wg`;
//! - a *target* ([`Target`]): `unshare -Urn sleep` run as uid 65534, the namespace
//!   our program attaches to;
//! - a *work dir* ([`WorkDir`]) owned by uid 65534, holding the client config and
//!   the UAPI socket (`--tmpdir`);
//! - [`Scenario`] puts the three together with a matching client config.
//!
//! Our binary runs as uid 65534 from a world-readable copy ([`binary`]): the
//! checkout may live under `/root` (0700), which that user cannot enter.
//!
//! Names, subnets and ports derive from a number each test claims for itself
//! ([`TestId`]), so tests running in parallel threads, test binaries running in
//! parallel, and cargo-nextest's process per test, do not collide. Every wait
//! has a deadline; processes are killed by PID only, never by name.

#![allow(
    dead_code,
    reason = "shared by several test binaries, each of which uses a subset"
)]

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::fs;
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt, chown, symlink};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, OnceLock, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use nix::fcntl::{Flock, FlockArg};
use nix::sys::signal::{Signal, kill};
use nix::unistd::{Pid, geteuid};

/// The unprivileged user our binary and the target namespace run as.
pub const NOBODY: u32 = 65534;
/// `setpriv` arguments that drop to [`NOBODY`].
pub const AS_NOBODY: [&str; 3] = ["--reuid=65534", "--regid=65534", "--clear-groups"];
/// Default bound for helper commands (`ip`, `wg`, `ping -c 1` …).
pub const CMD_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a handshake plus first ping reply may take.
pub const HANDSHAKE_DEADLINE: Duration = Duration::from_secs(10);
/// The contract: our program exits within this long after its target exits or
/// after SIGINT/SIGTERM.
pub const EXIT_BUDGET: Duration = Duration::from_secs(2);
/// Added to [`EXIT_BUDGET`] for polling and scheduling on a loaded test machine.
pub const EXIT_SLACK: Duration = Duration::from_millis(300);
/// Where `wg` and `wireguard-go` look for userspace interfaces' UAPI sockets.
pub const WG_RUN_DIR: &str = "/var/run/wireguard";
/// After a command exits, how long its stdout/stderr may stay open.
const PIPE_GRACE: Duration = Duration::from_secs(2);
const POLL: Duration = Duration::from_millis(10);
const TOOLS: &[&str] = &[
    "ip",
    "wg",
    "wireguard-go",
    "setpriv",
    "unshare",
    "nsenter",
    "ping",
    "mount",
    "sh",
    "sleep",
];

// ---------------------------------------------------------------------------
// Environment gate
// ---------------------------------------------------------------------------

/// Gate for every end-to-end test: root, the tools, a `/dev/net/tun` usable by
/// uid 65534, unprivileged user namespaces. Returns the test's [`TestId`] when
/// the environment is usable. Otherwise: with `CI=true` it panics (the test
/// fails); elsewhere it prints `SKIP <test>: <reason>` to stderr (uncaptured,
/// so it shows without `--nocapture`) and returns `None`.
///
/// The first call also installs the world-readable copy of the binary (see
/// [`binary`]) before any test thread spawns a process, so no forked child can
/// hold the copy's write descriptor when someone executes it (ETXTBSY).
pub fn require_root_env(test: &str) -> Option<TestId> {
    static PROBLEM: OnceLock<Option<String>> = OnceLock::new();
    match PROBLEM.get_or_init(check_env) {
        None => Some(TestId::next()),
        Some(reason) => skip_or_fail(
            test,
            &format!("the end-to-end environment is not usable: {reason}"),
        ),
    }
}

/// A test that cannot run: with `CI=true` it panics (fails); elsewhere it
/// prints `SKIP <test>: <reason>` to stderr and returns `None`.
fn skip_or_fail<T>(test: &str, reason: &str) -> Option<T> {
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{test}: {reason}");
    }
    // Straight to fd 2: libtest captures `eprintln!` of passing tests.
    let _ = writeln!(io::stderr(), "SKIP {test}: {reason}");
    None
}

/// The environment variable naming the `boringtun-cli` binary; without it,
/// `boringtun-cli` is looked up in `PATH`.
pub const BORINGTUN_CLI_ENV: &str = "W4N_BORINGTUN_CLI";

/// [`require_root_env`] plus `boringtun-cli` (crates.io `boringtun-cli`
/// 0.7.1, which `.ci/run` installs with `cargo install`): its path, or skip
/// (fail with `CI=true`) saying how to get it.
pub fn require_boringtun(test: &str) -> Option<(TestId, PathBuf)> {
    let id = require_root_env(test)?;
    let path = match std::env::var_os(BORINGTUN_CLI_ENV) {
        Some(p) => Some(PathBuf::from(&p))
            .filter(|p| p.is_file())
            .ok_or_else(|| format!("${BORINGTUN_CLI_ENV} ({p:?}) is not a file")),
        None => find_in_path("boringtun-cli")
            .ok_or_else(|| format!("no boringtun-cli in PATH and ${BORINGTUN_CLI_ENV} unset")),
    };
    match path {
        Ok(p) => Some((id, p)),
        Err(why) => skip_or_fail(
            test,
            &format!("{why} (hint: cargo install boringtun-cli --locked --version 0.7.1)"),
        ),
    }
}

fn check_env() -> Option<String> {
    let mut problems = Vec::new();
    if !geteuid().is_root() {
        problems.push("not running as root (the peer's network namespace needs root)".to_owned());
    }
    for tool in TOOLS {
        if find_in_path(tool).is_none() {
            problems.push(format!("`{tool}` not found in PATH"));
        }
    }
    if let Err(e) = tun_usable_by_nobody() {
        problems.push(e);
    }
    match read_trimmed("/proc/sys/user/max_user_namespaces") {
        Ok(v) if v.parse::<u64>().is_ok_and(|n| n > 0) => {}
        Ok(v) => problems.push(format!("/proc/sys/user/max_user_namespaces is {v}")),
        Err(e) => problems.push(format!(
            "cannot read /proc/sys/user/max_user_namespaces: {e}"
        )),
    }
    if let Ok(v) = read_trimmed("/proc/sys/kernel/unprivileged_userns_clone")
        && v != "1"
    {
        problems.push(format!("/proc/sys/kernel/unprivileged_userns_clone is {v}"));
    }
    if let Ok(v) = read_trimmed("/proc/sys/kernel/apparmor_restrict_unprivileged_userns")
        && v != "0"
    {
        problems.push(format!(
            "/proc/sys/kernel/apparmor_restrict_unprivileged_userns is {v}"
        ));
    }
    if problems.is_empty() {
        remove_stale_claims();
        if let Err(e) = install_binary() {
            problems.push(e.clone());
        } else {
            let probe = run_timeout(&mut as_user("unshare", ["-Urn", "true"]), None, CMD_TIMEOUT);
            match probe {
                Ok(out) if out.status.success() => {}
                Ok(out) => problems.push(format!(
                    "uid {NOBODY} cannot create a user+net namespace (`unshare -Urn true`: {}): {}",
                    out.status,
                    text(&out.stderr).trim()
                )),
                Err(e) => problems.push(e.to_string()),
            }
        }
    }
    if problems.is_empty() {
        None
    } else {
        Some(problems.join("; "))
    }
}

fn tun_usable_by_nobody() -> Result<(), String> {
    let path = "/dev/net/tun";
    let meta = fs::metadata(path).map_err(|e| format!("{path}: {e}"))?;
    if !meta.file_type().is_char_device() {
        return Err(format!("{path} is not a character device"));
    }
    let mode = meta.mode() & 0o7777;
    let usable = mode & 0o006 == 0o006
        || (meta.uid() == NOBODY && mode & 0o600 == 0o600)
        || (meta.gid() == NOBODY && mode & 0o060 == 0o060);
    if usable {
        Ok(())
    } else {
        Err(format!(
            "{path} is mode {mode:04o}, not usable by uid {NOBODY} (hint: chmod 0666 {path})"
        ))
    }
}

fn find_in_path(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(tool))
        .find(|p| fs::metadata(p).is_ok_and(|m| m.is_file() && m.mode() & 0o111 != 0))
}

fn read_trimmed(path: &str) -> io::Result<String> {
    Ok(fs::read_to_string(path)?.trim().to_owned())
}

// ---------------------------------------------------------------------------
// The binary under test
// ---------------------------------------------------------------------------

const BIN_DIR_PREFIX: &str = "w4n-bin-";

fn install_binary() -> Result<&'static Path, &'static String> {
    static BINARY: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BINARY
        .get_or_init(|| {
            remove_stale_bin_dirs();
            let dir = PathBuf::from(format!("/tmp/{BIN_DIR_PREFIX}{}", std::process::id()));
            // A directory with our pid is a leftover of a dead process that had it.
            let _ = fs::remove_dir_all(&dir);
            let dst = dir.join("wireguard4netns");
            let src = env!("CARGO_BIN_EXE_wireguard4netns");
            fs::create_dir(&dir)
                .and_then(|()| fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)))
                .and_then(|()| fs::copy(src, &dst))
                .and_then(|_| fs::set_permissions(&dst, fs::Permissions::from_mode(0o755)))
                .map_err(|e| format!("cannot copy {src} to {}: {e}", dst.display()))?;
            Ok(dst)
        })
        .as_deref()
}

/// The world-readable (0755, in a 0755 dir under /tmp) copy of our binary, made
/// once per test process. Copies of test processes that are gone are removed.
pub fn binary() -> &'static Path {
    install_binary().unwrap_or_else(|e| panic!("{e}"))
}

fn remove_stale_bin_dirs() {
    let Ok(entries) = fs::read_dir("/tmp") else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(BIN_DIR_PREFIX))
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if !pid_alive(pid) {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}

/// PIDs of live processes executing our copied binary whose command line
/// contains `marker` (a test's unique work dir), so parallel tests never see
/// each other's instances. Zombies have no readable `exe` and are not listed.
pub fn instances(marker: &Path) -> Vec<u32> {
    let want = binary();
    let marker = marker.as_os_str().as_encoded_bytes();
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut pids = Vec::new();
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == std::process::id() {
            continue;
        }
        let Ok(exe) = fs::read_link(format!("/proc/{pid}/exe")) else {
            continue;
        };
        if exe != want {
            continue;
        }
        let Ok(cmdline) = fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        if cmdline.windows(marker.len()).any(|w| w == marker) {
            pids.push(pid);
        }
    }
    pids
}

/// The engines among [`instances`]: those whose parent is not one of them
/// (the janitor is the engine's child and is not confined).
pub fn engines(marker: &Path) -> Vec<u32> {
    let all = instances(marker);
    all.iter()
        .copied()
        .filter(|pid| {
            status_field(*pid, "PPid")
                .and_then(|p| p.parse().ok())
                .is_none_or(|ppid: u32| !all.contains(&ppid))
        })
        .collect()
}

/// One `Name:` field of `/proc/PID/status`.
pub fn status_field(pid: u32, name: &str) -> Option<String> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    confinement_field(&status, name)
}

/// One `Name:` field of a `/proc/PID/status` text.
pub fn confinement_field(status: &str, name: &str) -> Option<String> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .map(|v| v.trim().to_owned())
}

/// Seccomp filters the test process itself runs under (a CI container may
/// add its own); an engine's count is compared with it.
fn own_seccomp_filters() -> u32 {
    status_field(std::process::id(), "Seccomp_filters")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// An engine's `/proc/PID/status` text (or the `NoNewPrivs`/`Seccomp` lines
/// of it) shows it confined: `NoNewPrivs: 1`, `Seccomp: 2` (filter mode) and
/// more filters than the test process has.
pub fn assert_confined(status: &str, context: &str) {
    let field = |name| confinement_field(status, name);
    let filters: Option<u32> = field("Seccomp_filters").and_then(|v| v.parse().ok());
    assert!(
        field("NoNewPrivs").as_deref() == Some("1")
            && field("Seccomp").as_deref() == Some("2")
            && filters.is_some_and(|n| n > own_seccomp_filters()),
        "{context}: the engine is not confined:\n{status}"
    );
}

/// The engine is not confined (`--no-sandbox`): no filter beyond the test
/// process's own, and `Seccomp: 0` when the test process has none.
pub fn assert_unconfined(status: &str, context: &str) {
    let own = own_seccomp_filters();
    let field = |name| confinement_field(status, name);
    let filters: Option<u32> = field("Seccomp_filters").and_then(|v| v.parse().ok());
    let mode_ok = own > 0 || field("Seccomp").as_deref() == Some("0");
    assert!(
        filters == Some(own) && mode_ok,
        "{context}: the engine has a seccomp filter despite --no-sandbox:\n{status}"
    );
}

/// Every engine of the scenario in `marker`'s work dir is confined.
pub fn assert_engines_confined(marker: &Path, context: &str) {
    let engines = engines(marker);
    assert!(!engines.is_empty(), "{context}: no engine found");
    for pid in engines {
        let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        assert_confined(&status, &format!("{context} (pid {pid})"));
    }
}

/// The lines of `/proc/$PPID/status` that [`assert_confined`] reads, for a
/// `run` command to print: its parent is the engine.
pub const PRINT_ENGINE_CONFINEMENT: &str =
    "grep -E '^(NoNewPrivs|Seccomp|Seccomp_filters):' /proc/$PPID/status";

/// Wait up to `timeout` for every instance matching `marker` to exit, then
/// SIGKILL (by PID) whatever is left. Returns the PIDs that had to be killed.
pub fn reap_instances(marker: &Path, timeout: Duration) -> Vec<u32> {
    if !wait_for(timeout, || instances(marker).is_empty()) {
        let left = instances(marker);
        for &pid in &left {
            signal(pid, Signal::SIGKILL);
        }
        return left;
    }
    Vec::new()
}

// ---------------------------------------------------------------------------
// Unique names, subnets, ports
// ---------------------------------------------------------------------------

static NEXT_ID: AtomicU32 = AtomicU32::new(0);

/// Claims of [`TestId`] sequence numbers, one file per number holding the PID
/// of the test process that owns it; `lock` serialises claims across processes.
const ID_DIR: &str = "/tmp/w4n-e2e-ids";

/// One test's identity, from which every name, subnet and port it uses derives.
///
/// `seq` is a 16-bit number claimed in [`ID_DIR`] (a claim whose process is gone
/// is free again), so no two live test processes — threads of one `cargo test`,
/// parallel test binaries, or cargo-nextest's process per test — ever share one.
/// The search starts at `(pid % 2048) * 32 + n` (`n` counts this process's
/// tests), so it rarely probes. From `seq`:
/// - names: `w4n<seq><suffix>` (≤ 15 chars, so usable as link names);
/// - veth links: `10.<128 + seq/8192>.<(seq/32) % 256>.<(seq % 32)*8 + slot*4>/30`
///   (two /30 per test, slots 0 and 1), outer end `.1`, inner end `.2`;
/// - tunnel: `10.<(seq/256) % 128>.<seq % 256>.0/24` and `fd77:4e34:<seq>::/64`
///   (these exist only inside private namespaces, so even a clash would be
///   harmless);
/// - ports: `20000 + (2*seq + slot) % 40000`.
#[derive(Clone, Debug)]
pub struct TestId {
    pub pid: u32,
    pub n: u32,
    seq: u32,
}

impl TestId {
    pub fn next() -> Self {
        let pid = std::process::id();
        let _lock = lock_id_dir();
        for _ in 0..=0xffff {
            let n = NEXT_ID.fetch_add(1, Ordering::Relaxed);
            let seq = ((pid % 2048) * 32 + n) & 0xffff;
            let claim = Path::new(ID_DIR).join(seq.to_string());
            match claim_holder(&claim) {
                Some(holder) if holder == pid || pid_alive(holder) => continue,
                _ if leftovers(seq) => continue,
                _ => {}
            }
            fs::write(&claim, pid.to_string())
                .unwrap_or_else(|e| panic!("claim {}: {e}", claim.display()));
            return Self { pid, n, seq };
        }
        panic!("all 65536 test ids in {ID_DIR} are held by live processes");
    }

    /// `w4n<seq><suffix>`; panics beyond 15 characters.
    pub fn name(&self, suffix: &str) -> String {
        let name = format!("w4n{}{suffix}", self.seq);
        assert!(name.len() <= 15, "name {name} is longer than 15 characters");
        name
    }

    /// Name for a [`UapiLink`] to this test's instance of our program.
    pub fn link_name(&self) -> String {
        self.name("u")
    }

    /// (outer `.1`, inner `.2`) of this test's veth /30 number `slot` (0 or 1).
    pub fn veth_addrs(&self, slot: u8) -> (Ipv4Addr, Ipv4Addr) {
        assert!(slot < 2, "a test has two veth subnets");
        let s = self.seq;
        let a = 128 + (s >> 13) as u8;
        let b = ((s >> 5) & 0xff) as u8;
        let c = ((s & 31) as u8) * 8 + slot * 4;
        (
            Ipv4Addr::new(10, a, b, c + 1),
            Ipv4Addr::new(10, a, b, c + 2),
        )
    }

    /// Address `host` in this test's tunnel /24.
    pub fn tunnel_v4(&self, host: u8) -> Ipv4Addr {
        let s = self.seq;
        Ipv4Addr::new(10, ((s >> 8) & 0x7f) as u8, (s & 0xff) as u8, host)
    }

    /// Address `host` in this test's tunnel /64.
    pub fn tunnel_v6(&self, host: u16) -> Ipv6Addr {
        Ipv6Addr::new(0xfd77, 0x4e34, self.seq as u16, 0, 0, 0, 0, host)
    }

    /// An address outside the tunnel subnets, unique to this test (198.18.0.0/15).
    pub fn extra_v4(&self) -> Ipv4Addr {
        let s = self.seq;
        Ipv4Addr::new(198, 18 + (s >> 16) as u8, (s >> 8) as u8, s as u8)
    }

    pub fn port(&self, slot: u8) -> u16 {
        20000 + ((self.seq * 2 + u32::from(slot)) % 40000) as u16
    }
}

/// Exclusive `flock` on `ID_DIR/lock` until dropped.
fn lock_id_dir() -> Flock<fs::File> {
    fs::create_dir_all(ID_DIR).unwrap_or_else(|e| panic!("mkdir {ID_DIR}: {e}"));
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(Path::new(ID_DIR).join("lock"))
        .unwrap_or_else(|e| panic!("open {ID_DIR}/lock: {e}"));
    Flock::lock(file, FlockArg::LockExclusive)
        .unwrap_or_else(|(_, e)| panic!("flock {ID_DIR}/lock: {e}"))
}

/// Whether a killed test process left things named after `seq` behind (a test
/// process killed by SIGKILL runs no `Drop`): such a number is skipped, not
/// cleaned, since whatever is left may still be in use by something.
fn leftovers(seq: u32) -> bool {
    let name = |suffix: &str| format!("w4n{seq}{suffix}");
    (0..2).any(|slot| {
        Path::new("/run/netns")
            .join(name(&format!("n{slot}")))
            .exists()
            || Path::new("/sys/class/net")
                .join(name(&format!("o{slot}")))
                .exists()
            || Path::new(WG_RUN_DIR)
                .join(name(&format!("w{slot}.sock")))
                .exists()
    }) || fs::symlink_metadata(Path::new(WG_RUN_DIR).join(name("u.sock"))).is_ok()
}

fn claim_holder(claim: &Path) -> Option<u32> {
    fs::read_to_string(claim).ok()?.trim().parse().ok()
}

fn pid_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Forget claims of test processes that are gone.
fn remove_stale_claims() {
    let _lock = lock_id_dir();
    let Ok(entries) = fs::read_dir(ID_DIR) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if entry
            .file_name()
            .to_str()
            .is_some_and(|n| n.parse::<u32>().is_ok())
            && claim_holder(&path).is_none_or(|pid| !pid_alive(pid))
        {
            let _ = fs::remove_file(path);
        }
    }
}

// ---------------------------------------------------------------------------
// Running commands, bounded
// ---------------------------------------------------------------------------

/// Why a bounded command did not give a normal result.
#[derive(Debug)]
pub enum RunError {
    Spawn {
        cmd: String,
        error: io::Error,
    },
    /// Still running at the deadline; it was killed (by PID).
    TimedOut {
        cmd: String,
        after: Duration,
        stdout: String,
        stderr: String,
    },
    /// It exited, but its stdout/stderr stayed open: a descendant holds them.
    PipesHeld {
        cmd: String,
        status: ExitStatus,
        stdout: String,
        stderr: String,
    },
}

impl fmt::Display for RunError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Spawn { cmd, error } => write!(f, "cannot spawn {cmd}: {error}"),
            Self::TimedOut {
                cmd,
                after,
                stdout,
                stderr,
            } => write!(
                f,
                "{cmd} still running after {after:?}, killed\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}"
            ),
            Self::PipesHeld {
                cmd,
                status,
                stdout,
                stderr,
            } => write!(
                f,
                "{cmd} exited ({status}) but its stdout/stderr stayed open for {PIPE_GRACE:?} \
                 (a descendant still holds them)\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}"
            ),
        }
    }
}

struct Drain {
    buf: Arc<Mutex<Vec<u8>>>,
    done: mpsc::Receiver<()>,
}

impl Drain {
    /// Read `r` to its end on a thread of its own (a pipe may stay open forever
    /// if a daemon inherited it; then the thread is left behind, blocked).
    fn start<R: Read + Send + 'static>(r: Option<R>) -> Self {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let (tx, done) = mpsc::channel();
        match r {
            Some(mut r) => {
                let buf = Arc::clone(&buf);
                thread::spawn(move || {
                    let mut chunk = [0u8; 8192];
                    loop {
                        match r.read(&mut chunk) {
                            Ok(0) => break,
                            Ok(n) => lock(&buf).extend_from_slice(&chunk[..n]),
                            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                            Err(_) => break,
                        }
                    }
                    let _ = tx.send(());
                });
            }
            None => {
                let _ = tx.send(());
            }
        }
        Self { buf, done }
    }

    fn finished_by(&self, deadline: Instant) -> bool {
        self.done
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .is_ok()
    }

    fn take(&self) -> Vec<u8> {
        lock(&self.buf).clone()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Poll `child` until it exits or `deadline` passes (every 1 ms at first, so
/// quick exits are timed to the millisecond, backing off to 10 ms).
pub fn wait_until(child: &mut Child, deadline: Instant) -> Option<ExitStatus> {
    let mut pause = Duration::from_millis(1);
    loop {
        if let Some(status) = child.try_wait().expect("waitpid on our own child") {
            return Some(status);
        }
        let now = Instant::now();
        if now >= deadline {
            return None;
        }
        thread::sleep(pause.min(deadline - now));
        pause = (pause * 2).min(POLL);
    }
}

/// SIGKILL `child` (by its PID) and reap it.
pub fn kill_child(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// SIGTERM by PID, SIGKILL after 2 s, reaped either way.
pub fn stop_child(child: &mut Child) {
    signal(child.id(), Signal::SIGTERM);
    if wait_until(child, Instant::now() + Duration::from_secs(2)).is_none() {
        kill_child(child);
    }
}

/// A child process we started, reaped at most once (so never signalled by a
/// PID that may have been reused). On drop, if still running: [`stop_child`].
pub struct Process {
    child: Child,
    pub pid: u32,
    exited: Option<ExitStatus>,
}

impl Process {
    pub fn new(child: Child) -> Self {
        Self {
            pid: child.id(),
            child,
            exited: None,
        }
    }

    pub fn try_exit(&mut self) -> Option<ExitStatus> {
        if self.exited.is_none() {
            self.exited = self.child.try_wait().expect("waitpid");
        }
        self.exited
    }

    /// Wait up to `timeout` for it to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        if self.exited.is_none() {
            self.exited = wait_until(&mut self.child, Instant::now() + timeout);
        }
        self.exited
    }

    /// Send `sig` by PID unless it has been reaped.
    pub fn signal(&mut self, sig: Signal) {
        if self.try_exit().is_none() {
            signal(self.pid, sig);
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if self.try_exit().is_none() {
            stop_child(&mut self.child);
        }
    }
}

/// Send `sig` to `pid`, ignoring "no such process".
pub fn signal(pid: u32, sig: Signal) {
    let pid = i32::try_from(pid).expect("pid fits in i32");
    let _ = kill(Pid::from_raw(pid), sig);
}

/// Poll `cond` for up to `timeout` (every 1 ms at first, backing off to 10 ms);
/// true as soon as it holds.
pub fn wait_for(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(1);
    loop {
        if cond() {
            return true;
        }
        let now = Instant::now();
        if now >= deadline {
            return false;
        }
        thread::sleep(pause.min(deadline - now));
        pause = (pause * 2).min(POLL);
    }
}

/// Run `cmd` with piped stdout/stderr (and `input` on stdin), `LC_ALL=C`, for at
/// most `timeout`: a command still running then is killed by PID. After it exits
/// its pipes must reach end-of-file within 2 s, or [`RunError::PipesHeld`].
pub fn run_timeout(
    cmd: &mut Command,
    input: Option<&[u8]>,
    timeout: Duration,
) -> Result<Output, RunError> {
    let desc = describe(cmd);
    cmd.env("LC_ALL", "C")
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let deadline = Instant::now() + timeout;
    let mut child = cmd.spawn().map_err(|error| RunError::Spawn {
        cmd: desc.clone(),
        error,
    })?;
    if let (Some(data), Some(mut stdin)) = (input, child.stdin.take()) {
        let data = data.to_vec();
        thread::spawn(move || {
            let _ = stdin.write_all(&data);
        });
    }
    let out = Drain::start(child.stdout.take());
    let err = Drain::start(child.stderr.take());
    match wait_until(&mut child, deadline) {
        Some(status) => {
            let pipes_deadline = Instant::now() + PIPE_GRACE;
            let out_closed = out.finished_by(pipes_deadline);
            let err_closed = err.finished_by(pipes_deadline);
            let output = Output {
                status,
                stdout: out.take(),
                stderr: err.take(),
            };
            if out_closed && err_closed {
                Ok(output)
            } else {
                Err(RunError::PipesHeld {
                    cmd: desc,
                    status,
                    stdout: text(&output.stdout),
                    stderr: text(&output.stderr),
                })
            }
        }
        None => {
            kill_child(&mut child);
            let grace = Instant::now() + Duration::from_millis(500);
            out.finished_by(grace);
            err.finished_by(grace);
            Err(RunError::TimedOut {
                cmd: desc,
                after: timeout,
                stdout: text(&out.take()),
                stderr: text(&err.take()),
            })
        }
    }
}

/// [`run_timeout`] with [`CMD_TIMEOUT`]; panics on timeout, not on failure.
pub fn run(cmd: &mut Command) -> Output {
    run_timeout(cmd, None, CMD_TIMEOUT).unwrap_or_else(|e| panic!("{e}"))
}

/// [`run`], and panics with the output unless the command succeeded.
pub fn run_ok(cmd: &mut Command) -> Output {
    let desc = describe(cmd);
    let out = run(cmd);
    assert_success(&desc, &out);
    out
}

/// [`run_ok`] with `input` on stdin.
pub fn run_input_ok(cmd: &mut Command, input: &[u8]) -> Output {
    let desc = describe(cmd);
    let out = run_timeout(cmd, Some(input), CMD_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    assert_success(&desc, &out);
    out
}

fn assert_success(desc: &str, out: &Output) {
    assert!(
        out.status.success(),
        "{desc} failed ({})\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
}

/// Lossy UTF-8.
pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

pub fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        s.push(' ');
        s.push_str(&arg.to_string_lossy());
    }
    format!("`{s}`")
}

/// A refusal: status 1, one line on stderr that contains `want`, nothing on
/// stdout.
pub fn assert_refused(out: &Output, want: &str, context: &str) {
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{context}: {out:?}");
    assert_eq!(
        stderr.lines().count(),
        1,
        "{context}: not one line:\n{stderr}"
    );
    assert!(
        stderr.starts_with("wireguard4netns: ") && stderr.contains(want),
        "{context}: expected {want:?} in:\n{stderr}"
    );
    assert!(out.stdout.is_empty(), "{context}: {}", text(&out.stdout));
}

/// `program args…` in the current namespaces, as the current user (root).
pub fn cmd<S: AsRef<OsStr>>(
    program: impl AsRef<OsStr>,
    args: impl IntoIterator<Item = S>,
) -> Command {
    let mut c = Command::new(program);
    c.args(args);
    c
}

/// `setpriv --reuid=65534 --regid=65534 --clear-groups program args…`
pub fn as_user<S: AsRef<OsStr>>(
    program: impl AsRef<OsStr>,
    args: impl IntoIterator<Item = S>,
) -> Command {
    let mut c = Command::new("setpriv");
    c.args(AS_NOBODY).arg(program).args(args);
    c
}

/// `program args…` inside the user and network namespaces of `pid`, as uid
/// 65534 outside, which is root of that user namespace inside
/// (`setpriv … nsenter --preserve-credentials -U -n -t PID …`): `ip addr add`
/// and raw-socket `ping` work there.
pub fn in_netns<S: AsRef<OsStr>>(
    pid: u32,
    program: impl AsRef<OsStr>,
    args: impl IntoIterator<Item = S>,
) -> Command {
    let mut c = as_user(
        "nsenter",
        ["--preserve-credentials", "-U", "-n", "-t", &pid.to_string()],
    );
    c.arg(program).args(args);
    c
}

/// Where a helper command runs.
#[derive(Clone, Debug)]
pub enum Place {
    /// The root namespaces, as root.
    Root,
    /// A named (root-owned) network namespace, as root (`ip netns exec`).
    Netns(String),
    /// A target's user+net namespaces, as uid 65534 ([`in_netns`]).
    Target(u32),
}

impl Place {
    pub fn cmd<S: AsRef<OsStr>>(
        &self,
        program: impl AsRef<OsStr>,
        args: impl IntoIterator<Item = S>,
    ) -> Command {
        match self {
            Self::Root => cmd(program, args),
            Self::Netns(name) => {
                let mut c = cmd("ip", ["netns", "exec", name.as_str()]);
                c.arg(program).args(args);
                c
            }
            Self::Target(pid) => in_netns(*pid, program, args),
        }
    }

    /// Run `ip args…` here and insist on success.
    pub fn ip_ok<S: AsRef<OsStr>>(&self, args: impl IntoIterator<Item = S>) -> Output {
        run_ok(&mut self.cmd("ip", args))
    }
}

/// The MTU of `ifname` as `ip -o link show` reports it at `place`.
pub fn link_mtu(place: &Place, ifname: &str) -> Option<u32> {
    let out = run(&mut place.cmd("ip", ["-o", "link", "show", "dev", ifname]));
    if !out.status.success() {
        return None;
    }
    let line = text(&out.stdout);
    let mut words = line.split_whitespace();
    words.find(|w| *w == "mtu")?;
    words.next()?.parse().ok()
}

// ---------------------------------------------------------------------------
// Ping
// ---------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, Default)]
pub struct PingStats {
    pub transmitted: u32,
    pub received: u32,
    /// Average round-trip time, when any reply came.
    pub avg_ms: Option<f64>,
}

fn parse_ping(out: &str) -> PingStats {
    let mut stats = PingStats::default();
    for line in out.lines() {
        if line.contains("packets transmitted") {
            let mut words = line.split_whitespace();
            stats.transmitted = words.next().and_then(|w| w.parse().ok()).unwrap_or(0);
            let mut prev = None;
            for w in line.split([' ', ',']).filter(|w| !w.is_empty()) {
                if w == "received" {
                    stats.received = prev.and_then(|p: &str| p.parse().ok()).unwrap_or(0);
                }
                prev = Some(w);
            }
        } else if let Some(rest) = line.strip_prefix("rtt min/avg/max/mdev = ") {
            stats.avg_ms = rest.split('/').nth(1).and_then(|v| v.parse().ok());
        }
    }
    stats
}

fn ping_args(addr: IpAddr, count: u32, wait_s: u32) -> Vec<String> {
    let family = if addr.is_ipv6() { "-6" } else { "-4" };
    vec![
        family.to_owned(),
        "-n".to_owned(),
        "-c".to_owned(),
        count.to_string(),
        "-i".to_owned(),
        "0.2".to_owned(),
        "-W".to_owned(),
        wait_s.to_string(),
        addr.to_string(),
    ]
}

/// `ping -c 1 -W 1` from `place` in a loop until a reply or `deadline` (from
/// now). Err carries the last attempt's output.
pub fn ping_until_in(place: &Place, addr: IpAddr, deadline: Duration) -> Result<PingStats, String> {
    let end = Instant::now() + deadline;
    loop {
        let out = run(&mut place.cmd("ping", ping_args(addr, 1, 1)));
        let stdout = text(&out.stdout);
        let stats = parse_ping(&stdout);
        if out.status.success() && stats.received > 0 {
            return Ok(stats);
        }
        if Instant::now() >= end {
            let last = format!("{stdout}{}", text(&out.stderr));
            return Err(format!(
                "no reply from {addr} at {place:?} within {deadline:?}; last attempt:\n{last}"
            ));
        }
        // A failing ping returns after its 1 s wait; an immediate error
        // (e.g. no route yet) should not spin.
        thread::sleep(
            Duration::from_millis(100).min(end.saturating_duration_since(Instant::now())),
        );
    }
}

/// First reply within `deadline` (see [`ping_until_in`]), then `count` more
/// pings 0.2 s apart, all of which must be answered.
pub fn ping_ok_in(
    place: &Place,
    addr: IpAddr,
    count: u32,
    deadline: Duration,
) -> Result<PingStats, String> {
    ping_until_in(place, addr, deadline)?;
    let timeout = Duration::from_secs(u64::from(count) / 5 + 5);
    let out = run_timeout(
        &mut place.cmd("ping", ping_args(addr, count, 2)),
        None,
        timeout,
    )
    .map_err(|e| e.to_string())?;
    let stdout = text(&out.stdout);
    let stats = parse_ping(&stdout);
    if stats.received == count {
        Ok(stats)
    } else {
        Err(format!(
            "{}/{count} replies from {addr} at {place:?}:\n{stdout}{}",
            stats.received,
            text(&out.stderr)
        ))
    }
}

/// [`ping_until_in`] from inside the target `pid`.
pub fn ping_until(pid: u32, addr: IpAddr, deadline: Duration) -> Result<PingStats, String> {
    ping_until_in(&Place::Target(pid), addr, deadline)
}

/// [`ping_ok_in`] from inside the target `pid`.
pub fn ping_ok(
    pid: u32,
    addr: IpAddr,
    count: u32,
    deadline: Duration,
) -> Result<PingStats, String> {
    ping_ok_in(&Place::Target(pid), addr, count, deadline)
}

// ---------------------------------------------------------------------------
// WireGuard: keys, `wg show dump`, UAPI socket links
// ---------------------------------------------------------------------------

#[derive(Clone, Debug)]
pub struct KeyPair {
    pub private: String,
    pub public: String,
}

impl KeyPair {
    /// `wg genkey` | `wg pubkey`.
    pub fn generate() -> Self {
        let private = text(&run_ok(&mut cmd("wg", ["genkey"])).stdout)
            .trim()
            .to_owned();
        let public = text(&run_input_ok(&mut cmd("wg", ["pubkey"]), private.as_bytes()).stdout)
            .trim()
            .to_owned();
        Self { private, public }
    }
}

/// `wg genpsk`.
pub fn genpsk() -> String {
    text(&run_ok(&mut cmd("wg", ["genpsk"])).stdout)
        .trim()
        .to_owned()
}

/// One `[Peer]` line of `wg show IF dump`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DumpPeer {
    pub public_key: String,
    /// `(none)` when unset.
    pub preshared_key: String,
    /// `(none)` when unknown.
    pub endpoint: String,
    /// As printed, in order; empty for `(none)`.
    pub allowed_ips: Vec<String>,
    /// Unix seconds; 0 = never.
    pub latest_handshake: u64,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    /// None for `off`.
    pub persistent_keepalive: Option<u16>,
}

/// Parsed `wg show IF dump`.
#[derive(Clone, Debug)]
pub struct WgDump {
    pub private_key: String,
    pub public_key: String,
    pub listen_port: u16,
    pub fwmark: String,
    pub peers: Vec<DumpPeer>,
}

impl WgDump {
    pub fn parse(dump: &str) -> Result<Self, String> {
        let mut lines = dump.lines().filter(|l| !l.trim().is_empty());
        let head: Vec<&str> = lines.next().ok_or("empty dump")?.split('\t').collect();
        let [private_key, public_key, listen_port, fwmark] = head[..] else {
            return Err(format!(
                "interface line has {} fields: {head:?}",
                head.len()
            ));
        };
        let mut peers = Vec::new();
        for line in lines {
            let f: Vec<&str> = line.split('\t').collect();
            let [pk, psk, endpoint, allowed, hs, rx, tx, ka] = f[..] else {
                return Err(format!("peer line has {} fields: {line:?}", f.len()));
            };
            let num = |s: &str| {
                s.parse::<u64>()
                    .map_err(|e| format!("{s:?} in {line:?}: {e}"))
            };
            peers.push(DumpPeer {
                public_key: pk.to_owned(),
                preshared_key: psk.to_owned(),
                endpoint: endpoint.to_owned(),
                allowed_ips: if allowed == "(none)" {
                    Vec::new()
                } else {
                    allowed.split(',').map(str::to_owned).collect()
                },
                latest_handshake: num(hs)?,
                rx_bytes: num(rx)?,
                tx_bytes: num(tx)?,
                persistent_keepalive: if ka == "off" {
                    None
                } else {
                    Some(ka.parse().map_err(|e| format!("{ka:?} in {line:?}: {e}"))?)
                },
            });
        }
        Ok(Self {
            private_key: private_key.to_owned(),
            public_key: public_key.to_owned(),
            listen_port: listen_port
                .parse()
                .map_err(|e| format!("listen port {listen_port:?}: {e}"))?,
            fwmark: fwmark.to_owned(),
            peers,
        })
    }

    pub fn peer(&self, public_key: &str) -> Option<&DumpPeer> {
        self.peers.iter().find(|p| p.public_key == public_key)
    }
}

/// `wg show NAME dump` (as root; `wg` finds userspace interfaces through
/// `/var/run/wireguard/NAME.sock`, following symlinks), parsed.
pub fn wg_dump(name: &str) -> WgDump {
    let out = run_ok(&mut cmd("wg", ["show", name, "dump"]));
    WgDump::parse(&text(&out.stdout)).unwrap_or_else(|e| panic!("`wg show {name} dump`: {e}"))
}

/// A symlink `/var/run/wireguard/NAME.sock` → a UAPI socket elsewhere, so the
/// stock `wg` tool can reach an interface whose socket lives in a test's dir
/// (`wg` `stat`s and `connect`s that path; both follow symlinks). Removed on drop.
pub struct UapiLink {
    pub name: String,
    link: PathBuf,
    socket: PathBuf,
}

impl UapiLink {
    pub fn new(name: &str, socket: &Path) -> Self {
        assert!(name.len() <= 15, "interface name {name} too long");
        fs::create_dir_all(WG_RUN_DIR).unwrap_or_else(|e| panic!("mkdir {WG_RUN_DIR}: {e}"));
        let link = Path::new(WG_RUN_DIR).join(format!("{name}.sock"));
        symlink(socket, &link)
            .unwrap_or_else(|e| panic!("symlink {} -> {}: {e}", link.display(), socket.display()));
        Self {
            name: name.to_owned(),
            link,
            socket: socket.to_owned(),
        }
    }

    pub fn dump(&self) -> WgDump {
        wg_dump(&self.name)
    }
}

impl Drop for UapiLink {
    fn drop(&mut self) {
        if fs::read_link(&self.link).is_ok_and(|t| t == self.socket) {
            let _ = fs::remove_file(&self.link);
        }
    }
}

// ---------------------------------------------------------------------------
// Work dir
// ---------------------------------------------------------------------------

/// A fresh 0700 directory under /tmp owned by uid 65534 (the program's
/// `--tmpdir`, its config); removed, with everything in it, on drop.
pub struct WorkDir {
    dir: tempfile::TempDir,
}

impl WorkDir {
    pub fn new(id: &TestId) -> Self {
        let dir = tempfile::Builder::new()
            .prefix(&format!("{}-", id.name("")))
            .tempdir_in("/tmp")
            .expect("create a work dir under /tmp");
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o700)).expect("chmod work dir");
        chown(dir.path(), Some(NOBODY), Some(NOBODY)).expect("chown work dir");
        Self { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Write `name` in the dir, owned by uid 65534, with `mode`.
    pub fn write(&self, name: &str, contents: &str, mode: u32) -> PathBuf {
        let path = self.path().join(name);
        fs::write(&path, contents).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).expect("chmod");
        chown(&path, Some(NOBODY), Some(NOBODY)).expect("chown");
        path
    }
}

// ---------------------------------------------------------------------------
// Network namespaces and the WireGuard peer
// ---------------------------------------------------------------------------

/// A named network namespace (`ip netns add`) with lo up and a veth pair: the
/// inner end in the namespace, the outer end in the root namespace or in
/// another named namespace. On drop: the outer end and the namespace are
/// deleted (deleting the namespace deletes the pair); errors are ignored, so
/// a half-made one is cleaned up too.
pub struct Netns {
    pub name: String,
    pub outer_if: String,
    pub inner_if: String,
    pub outer_addr: Ipv4Addr,
    pub inner_addr: Ipv4Addr,
    /// Namespace of the outer end; None = root.
    pub outer_ns: Option<String>,
}

impl Netns {
    pub fn create(id: &TestId, slot: u8, outer_ns: Option<&str>) -> Self {
        let name = id.name(&format!("n{slot}"));
        let (outer_addr, inner_addr) = id.veth_addrs(slot);
        let out = run(&mut cmd("ip", ["netns", "add", &name]));
        assert!(
            out.status.success(),
            "ip netns add {name} failed: {} (a stale namespace from a killed run? `ip netns del {name}`)",
            text(&out.stderr).trim()
        );
        let ns = Self {
            outer_if: id.name(&format!("o{slot}")),
            inner_if: id.name(&format!("i{slot}")),
            name,
            outer_addr,
            inner_addr,
            outer_ns: outer_ns.map(str::to_owned),
        };
        let outer = ns.outer_place();
        let inner = ns.place();
        outer.ip_ok([
            "link",
            "add",
            &ns.outer_if,
            "type",
            "veth",
            "peer",
            "name",
            &ns.inner_if,
            "netns",
            &ns.name,
        ]);
        inner.ip_ok(["link", "set", "lo", "up"]);
        outer.ip_ok([
            "addr",
            "add",
            &format!("{outer_addr}/30"),
            "dev",
            &ns.outer_if,
        ]);
        outer.ip_ok(["link", "set", &ns.outer_if, "up"]);
        inner.ip_ok([
            "addr",
            "add",
            &format!("{inner_addr}/30"),
            "dev",
            &ns.inner_if,
        ]);
        inner.ip_ok(["link", "set", &ns.inner_if, "up"]);
        ns
    }

    pub fn place(&self) -> Place {
        Place::Netns(self.name.clone())
    }

    pub fn outer_place(&self) -> Place {
        self.outer_ns.clone().map_or(Place::Root, Place::Netns)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = run_timeout(
            &mut self
                .outer_place()
                .cmd("ip", ["link", "del", &self.outer_if]),
            None,
            CMD_TIMEOUT,
        );
        let _ = run_timeout(
            &mut cmd("ip", ["netns", "del", &self.name]),
            None,
            CMD_TIMEOUT,
        );
    }
}

/// A `[Peer]` as `wg set` takes it.
#[derive(Clone, Debug, Default)]
pub struct WgPeerSpec {
    pub public_key: String,
    pub preshared_key: Option<String>,
    pub allowed_ips: Vec<String>,
    pub endpoint: Option<String>,
    pub keepalive: Option<u16>,
}

/// How to build a [`Peer`].
#[derive(Clone, Debug)]
pub struct PeerSpec {
    pub keys: KeyPair,
    /// Which of the test's two veth subnets (0 or 1) and namespace suffix.
    pub slot: u8,
    /// Named namespace for the veth's outer end; None = root namespace.
    pub uplink: Option<String>,
    /// Host part of the peer's tunnel addresses ([`TestId::tunnel_v4`]/`_v6`).
    pub tunnel_host: u8,
    pub listen_port: Option<u16>,
    pub peers: Vec<WgPeerSpec>,
}

/// Which userspace WireGuard a [`Peer`] runs. Both create their own TUN in the
/// peer's namespace and serve the UAPI at `/var/run/wireguard/IFNAME.sock`,
/// so the rest (`wg set`, addresses, link up) is the same.
#[derive(Clone, Debug, Default)]
pub enum PeerEngine {
    /// Debian's `wireguard-go`.
    #[default]
    WireguardGo,
    /// `boringtun-cli` at this path ([`require_boringtun`]).
    Boringtun(PathBuf),
}

impl PeerEngine {
    /// The engine in the foreground, as root, at `place`, on `ifname`.
    fn command(&self, place: &Place, ifname: &str) -> Command {
        match self {
            Self::WireguardGo => {
                let mut c = place.cmd("wireguard-go", ["-f", ifname]);
                // Debian's build only prints a banner without it; others refuse to run.
                c.env("WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD", "1")
                    .env("LOG_LEVEL", "verbose");
                c
            }
            // Without --disable-drop-privileges it would setuid to the
            // getlogin() user after creating the TUN, and fail without one.
            Self::Boringtun(path) => place.cmd(
                path,
                [
                    "--foreground",
                    "--disable-drop-privileges",
                    "--verbosity",
                    "info",
                    ifname,
                ],
            ),
        }
    }

    fn name(&self) -> &'static str {
        match self {
            Self::WireguardGo => "wireguard-go",
            Self::Boringtun(_) => "boringtun-cli",
        }
    }
}

/// A userspace WireGuard ([`PeerEngine`], by default Debian's `wireguard-go`),
/// as root, in its own network namespace ([`Netns`]), configured with `wg
/// set`, with tunnel addresses `/24` + `/64` and up.
/// On drop: SIGTERM by PID (SIGKILL after 2 s), its socket removed, then the
/// namespace deleted.
pub struct Peer {
    child: Option<Child>,
    pub engine: PeerEngine,
    pub ifname: String,
    pub keys: KeyPair,
    pub listen_port: Option<u16>,
    pub tunnel_v4: Ipv4Addr,
    pub tunnel_v6: Ipv6Addr,
    log_path: PathBuf,
    files: tempfile::TempDir,
    pub netns: Netns,
}

impl Peer {
    /// A peer with the usual server shape: slot 0, veth to the root namespace,
    /// tunnel host 1, listening on `id.port(0)`, accepting `client_public` from
    /// the client's tunnel addresses (host 2, `/32` and `/128`).
    pub fn server(id: &TestId, client_public: &str, preshared_key: Option<&str>) -> Self {
        Self::server_with(id, client_public, preshared_key, PeerEngine::default())
    }

    /// [`Peer::server`] running `engine`.
    pub fn server_with(
        id: &TestId,
        client_public: &str,
        preshared_key: Option<&str>,
        engine: PeerEngine,
    ) -> Self {
        Self::start_with(
            id,
            PeerSpec {
                keys: KeyPair::generate(),
                slot: 0,
                uplink: None,
                tunnel_host: 1,
                listen_port: Some(id.port(0)),
                peers: vec![WgPeerSpec {
                    public_key: client_public.to_owned(),
                    preshared_key: preshared_key.map(str::to_owned),
                    allowed_ips: vec![
                        format!("{}/32", id.tunnel_v4(2)),
                        format!("{}/128", id.tunnel_v6(2)),
                    ],
                    ..WgPeerSpec::default()
                }],
            },
            engine,
        )
    }

    pub fn start(id: &TestId, spec: PeerSpec) -> Self {
        Self::start_with(id, spec, PeerEngine::default())
    }

    /// [`Peer::start`] running `engine`.
    pub fn start_with(id: &TestId, spec: PeerSpec, engine: PeerEngine) -> Self {
        let netns = Netns::create(id, spec.slot, spec.uplink.as_deref());
        let files = tempfile::Builder::new()
            .prefix(&format!("{}-peer{}-", id.name(""), spec.slot))
            .tempdir_in("/tmp")
            .expect("peer temp dir");
        let ifname = id.name(&format!("w{}", spec.slot));
        let log_path = files.path().join(format!("{}.log", engine.name()));
        let mut peer = Self {
            child: None,
            engine,
            ifname,
            keys: spec.keys.clone(),
            listen_port: spec.listen_port,
            tunnel_v4: id.tunnel_v4(spec.tunnel_host),
            tunnel_v6: id.tunnel_v6(u16::from(spec.tunnel_host)),
            log_path,
            files,
            netns,
        };
        peer.launch(&spec);
        peer
    }

    /// Stop the engine (SIGTERM by PID, SIGKILL after 2 s; its TUN goes with
    /// it) and start a fresh one on the same interface name from `spec` (its
    /// `slot`/`uplink`/`tunnel_host` are ignored: the namespace stays): a peer
    /// that has forgotten every session, as after a reboot.
    pub fn restart(&mut self, spec: &PeerSpec) {
        if let Some(mut child) = self.child.take() {
            stop_child(&mut child);
        }
        let _ = fs::remove_file(self.socket());
        self.keys = spec.keys.clone();
        self.listen_port = spec.listen_port;
        self.launch(spec);
    }

    /// Spawn the engine in the namespace (log appended), `wg set` it from
    /// `spec`, add the tunnel addresses and bring it up.
    fn launch(&mut self, spec: &PeerSpec) {
        let peer = self;
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&peer.log_path)
            .expect("peer log file");
        let socket = peer.socket();
        assert!(
            fs::symlink_metadata(&socket).is_err(),
            "{} already exists (stale from a killed run?)",
            socket.display()
        );
        let name = peer.engine.name();
        let child = peer
            .engine
            .command(&peer.netns.place(), &peer.ifname)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log fd"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        peer.child = Some(child);
        // Accepting, not only there: the socket file appears at `bind`, a moment before
        // `listen`, and a `wg set` in between is refused (seen once in a full e2e run).
        let accepting = || std::os::unix::net::UnixStream::connect(&socket).is_ok();
        let up = wait_for(Duration::from_secs(10), || {
            accepting() || peer.exited().is_some()
        });
        assert!(
            up && accepting(),
            "{name} did not listen on {} (exit: {:?})\n{}",
            socket.display(),
            peer.exited(),
            peer.log()
        );

        let key_file = peer.write_file("private.key", &spec.keys.private);
        let mut args: Vec<String> = vec!["set".into(), peer.ifname.clone(), "private-key".into()];
        args.push(key_file.display().to_string());
        if let Some(port) = spec.listen_port {
            args.extend(["listen-port".into(), port.to_string()]);
        }
        for (i, p) in spec.peers.iter().enumerate() {
            args.extend(["peer".into(), p.public_key.clone()]);
            if let Some(psk) = &p.preshared_key {
                let f = peer.write_file(&format!("psk{i}"), psk);
                args.extend(["preshared-key".into(), f.display().to_string()]);
            }
            if !p.allowed_ips.is_empty() {
                args.extend(["allowed-ips".into(), p.allowed_ips.join(",")]);
            }
            if let Some(endpoint) = &p.endpoint {
                args.extend(["endpoint".into(), endpoint.clone()]);
            }
            if let Some(ka) = p.keepalive {
                args.extend(["persistent-keepalive".into(), ka.to_string()]);
            }
        }
        run_ok(&mut cmd("wg", &args));

        let place = peer.netns.place();
        place.ip_ok([
            "addr",
            "add",
            &format!("{}/24", peer.tunnel_v4),
            "dev",
            &peer.ifname,
        ]);
        place.ip_ok([
            "addr",
            "add",
            &format!("{}/64", peer.tunnel_v6),
            "dev",
            &peer.ifname,
            "nodad",
        ]);
        place.ip_ok(["link", "set", &peer.ifname, "up"]);
    }

    fn write_file(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.files.path().join(name);
        fs::write(&path, contents).expect("write peer file");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).expect("chmod");
        path
    }

    fn exited(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// `/var/run/wireguard/IFNAME.sock`.
    pub fn socket(&self) -> PathBuf {
        Path::new(WG_RUN_DIR).join(format!("{}.sock", self.ifname))
    }

    /// `inner veth address:listen port`, as seen from the outer end's namespace.
    pub fn endpoint(&self) -> String {
        format!(
            "{}:{}",
            self.netns.inner_addr,
            self.listen_port.expect("this peer listens on a fixed port")
        )
    }

    pub fn place(&self) -> Place {
        self.netns.place()
    }

    pub fn dump(&self) -> WgDump {
        wg_dump(&self.ifname)
    }

    /// The engine's log so far (last 8 KiB).
    pub fn log(&self) -> String {
        let log = fs::read(&self.log_path).unwrap_or_default();
        text(&log[log.len().saturating_sub(8192)..])
    }

    /// State for a failure message: `wg show`, addresses, the log.
    pub fn diagnostics(&self) -> String {
        let wg = run(&mut cmd("wg", ["show", &self.ifname]));
        let addr = run(&mut self.place().cmd("ip", ["addr"]));
        format!(
            "--- peer `wg show {}` ---\n{}{}\n--- peer ip addr ---\n{}\n--- {} log ---\n{}",
            self.ifname,
            text(&wg.stdout),
            text(&wg.stderr),
            text(&addr.stdout),
            self.engine.name(),
            self.log()
        )
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            stop_child(&mut child);
        }
        // Only after a SIGKILL is it left behind; the name is this test's own.
        let _ = fs::remove_file(self.socket());
        // Then `netns` (a field) drops: namespace and veth pair go.
    }
}

// ---------------------------------------------------------------------------
// The target namespace
// ---------------------------------------------------------------------------

/// `setpriv … unshare -Urn sh -c 'exec sleep 300'` as uid 65534: a process in
/// a fresh user+net namespace owned by that user, root inside. `pid()` is that
/// process: setpriv, unshare and sh all exec in place, and `spawn` returns only
/// once it is `sleep` in a network namespace other than ours (so the uid map is
/// written). SIGKILLed by PID and reaped on drop or [`Target::kill`].
pub struct Target {
    child: Option<Child>,
    pid: u32,
}

impl Target {
    pub fn spawn() -> Self {
        Self::spawn_with("-Urn", "")
    }

    /// [`Target::spawn`] with other `unshare` flags (e.g. `-Urnm` for a mount
    /// namespace too) and a shell prelude run inside before the `exec sleep`
    /// (e.g. a bind mount); the prelude must not fail.
    pub fn spawn_with(unshare_flags: &str, prelude: &str) -> Self {
        let script = format!("{prelude}\nexec sleep 300");
        let mut child = as_user("unshare", [unshare_flags, "sh", "-ec", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn the target namespace holder");
        let pid = child.id();
        let mut target = Self { child: None, pid };
        let own_net = fs::read_link("/proc/self/ns/net").expect("own netns");
        let ready = wait_for(Duration::from_secs(10), || {
            let comm = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            let net = fs::read_link(format!("/proc/{pid}/ns/net")).ok();
            (comm.trim() == "sleep" && net.is_some_and(|n| n != own_net))
                || child.try_wait().ok().flatten().is_some()
        });
        if let Ok(Some(status)) = child.try_wait() {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = e.read_to_string(&mut err);
            }
            panic!("target namespace holder exited ({status}): {err}");
        }
        target.child = Some(child);
        assert!(ready, "target {pid} not in its own namespace within 10 s");
        target
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    pub fn place(&self) -> Place {
        Place::Target(self.pid)
    }

    /// `program args…` inside, see [`in_netns`].
    pub fn cmd<S: AsRef<OsStr>>(
        &self,
        program: impl AsRef<OsStr>,
        args: impl IntoIterator<Item = S>,
    ) -> Command {
        in_netns(self.pid, program, args)
    }

    pub fn ip_ok<S: AsRef<OsStr>>(&self, args: impl IntoIterator<Item = S>) -> Output {
        self.place().ip_ok(args)
    }

    pub fn is_alive(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }

    /// SIGKILL by PID and reap; idempotent.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill_child(&mut child);
        }
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        self.kill();
    }
}

// ---------------------------------------------------------------------------
// Client config and the program under test
// ---------------------------------------------------------------------------

/// A wg-quick config for our program.
#[derive(Clone, Debug, Default)]
pub struct ClientConfig {
    pub private_key: String,
    pub addresses: Vec<String>,
    pub mtu: Option<u16>,
    pub listen_port: Option<u16>,
    pub peer_public_key: String,
    pub preshared_key: Option<String>,
    pub allowed_ips: Vec<String>,
    pub endpoint: String,
    pub keepalive: Option<u16>,
}

impl ClientConfig {
    pub fn render(&self) -> String {
        let mut s =
            String::from("# written by the wireguard4netns end-to-end tests\n[Interface]\n");
        s += &format!("PrivateKey = {}\n", self.private_key);
        if !self.addresses.is_empty() {
            s += &format!("Address = {}\n", self.addresses.join(", "));
        }
        if let Some(mtu) = self.mtu {
            s += &format!("MTU = {mtu}\n");
        }
        if let Some(port) = self.listen_port {
            s += &format!("ListenPort = {port}\n");
        }
        s += &format!("\n[Peer]\nPublicKey = {}\n", self.peer_public_key);
        if let Some(psk) = &self.preshared_key {
            s += &format!("PresharedKey = {psk}\n");
        }
        s += &format!("AllowedIPs = {}\n", self.allowed_ips.join(", "));
        s += &format!("Endpoint = {}\n", self.endpoint);
        if let Some(ka) = self.keepalive {
            s += &format!("PersistentKeepalive = {ka}\n");
        }
        s
    }
}

#[derive(Clone, Debug, Default)]
pub struct ScenarioOpts {
    /// A preshared key on both sides.
    pub psk: bool,
    /// `MTU =` in the client config; None = the default (1420).
    pub mtu: Option<u16>,
    /// The peer's WireGuard.
    pub peer_engine: PeerEngine,
}

/// One test's world: a [`Peer`] (tunnel `.1`, `::1`), a [`Target`], a
/// [`WorkDir`], and a client config for the target's side (tunnel `.2/24`,
/// `::2/64`; AllowedIPs the tunnel's `/24` and `/64`; Endpoint the peer's veth
/// address). The interface inside the target is `wg0`: each test has its own
/// namespace and `--tmpdir`, so parallel tests share the name on purpose.
///
/// On drop: the target is killed (our program must then exit by itself);
/// instances of our binary started with this work dir get 3 s to go, then
/// SIGKILL by PID; then the peer and the dir are removed.
pub struct Scenario {
    pub id: TestId,
    pub ifname: String,
    pub client_keys: KeyPair,
    pub psk: Option<String>,
    pub config: ClientConfig,
    pub target: Target,
    pub peer: Peer,
    pub dir: WorkDir,
}

/// Our binary as uid 65534: `SUBCOMMAND --tmpdir DIR ARGS…` against the
/// scenario's socket directory.
pub fn ours(s: &Scenario, subcommand: &str, args: &[&str]) -> Output {
    let mut all: Vec<OsString> = vec![subcommand.into(), "--tmpdir".into(), s.dir.path().into()];
    all.extend(args.iter().map(OsString::from));
    run(&mut as_user(binary(), all))
}

/// [`ours`], which must succeed; its stdout.
pub fn ours_ok(s: &Scenario, subcommand: &str, args: &[&str]) -> String {
    let out = ours(s, subcommand, args);
    assert!(
        out.status.success(),
        "wireguard4netns {subcommand} {args:?} failed ({})\n{}{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

impl Scenario {
    pub fn new(id: TestId, opts: ScenarioOpts) -> Self {
        let client_keys = KeyPair::generate();
        let psk = opts.psk.then(genpsk);
        let peer = Peer::server_with(&id, &client_keys.public, psk.as_deref(), opts.peer_engine);
        let target = Target::spawn();
        let dir = WorkDir::new(&id);
        let config = ClientConfig {
            private_key: client_keys.private.clone(),
            addresses: vec![
                format!("{}/24", id.tunnel_v4(2)),
                format!("{}/64", id.tunnel_v6(2)),
            ],
            mtu: opts.mtu,
            listen_port: None,
            peer_public_key: peer.keys.public.clone(),
            preshared_key: psk.clone(),
            allowed_ips: vec![
                format!("{}/24", id.tunnel_v4(0)),
                format!("{}/64", id.tunnel_v6(0)),
            ],
            endpoint: peer.endpoint(),
            keepalive: None,
        };
        Self {
            ifname: "wg0".to_owned(),
            client_keys,
            psk,
            config,
            target,
            peer,
            dir,
            id,
        }
    }

    pub fn client_v4(&self) -> Ipv4Addr {
        self.id.tunnel_v4(2)
    }

    pub fn client_v6(&self) -> Ipv6Addr {
        self.id.tunnel_v6(2)
    }

    pub fn peer_v4(&self) -> IpAddr {
        self.peer.tunnel_v4.into()
    }

    pub fn peer_v6(&self) -> IpAddr {
        self.peer.tunnel_v6.into()
    }

    /// Render [`Scenario::config`] to `DIR/client.conf` (0600, uid 65534).
    pub fn write_config(&self) -> PathBuf {
        self.dir.write("client.conf", &self.config.render(), 0o600)
    }

    /// `DIR/IFNAME.sock`.
    pub fn socket(&self) -> PathBuf {
        self.dir.path().join(format!("{}.sock", self.ifname))
    }

    /// `FLAGS… --tmpdir DIR TARGET IFNAME DIR/client.conf` (writes the config).
    pub fn args(&self, target: u32, flags: &[&str]) -> Vec<OsString> {
        let config = self.write_config();
        let mut args: Vec<OsString> = flags.iter().map(OsString::from).collect();
        args.push("--tmpdir".into());
        args.push(self.dir.path().into());
        args.push(target.to_string().into());
        args.push(self.ifname.clone().into());
        args.push(config.into());
        args
    }

    /// Our binary as uid 65534 with [`Scenario::args`].
    pub fn command(&self, target: u32, flags: &[&str]) -> Command {
        as_user(binary(), self.args(target, flags))
    }

    /// Background mode against this scenario's target: must exit 0 within 20 s
    /// with its stdio released. Returns its output.
    pub fn attach(&self, flags: &[&str]) -> Output {
        let mut c = self.command(self.target.pid(), flags);
        let desc = describe(&c);
        let out =
            run_timeout(&mut c, None, Duration::from_secs(20)).unwrap_or_else(|e| panic!("{e}"));
        assert_success(&desc, &out);
        if !flags.contains(&"--no-sandbox") {
            assert_engines_confined(self.dir.path(), &desc);
        }
        out
    }

    /// `--foreground` against `target`, stdout and stderr to a log file.
    /// `--foreground --configure` on this scenario's target, once its socket
    /// is there (panics with the log if it never comes).
    pub fn configured_foreground(&self) -> Foreground {
        let mut fg = self.spawn_foreground(self.target.pid(), &["--configure"]);
        fg.wait_socket(&self.socket(), Duration::from_secs(20))
            .unwrap_or_else(|e| panic!("{e}"));
        fg
    }

    pub fn spawn_foreground(&self, target: u32, flags: &[&str]) -> Foreground {
        let mut all = vec!["--foreground"];
        all.extend_from_slice(flags);
        self.spawn_logged(self.command(target, &all), &format!("foreground-{target}"))
    }

    /// Start `c` (our binary, maybe behind a wrapper) with stdout and stderr
    /// to `DIR/NAME.log`.
    pub fn spawn_logged(&self, mut c: Command, name: &str) -> Foreground {
        let log_path = self.dir.path().join(format!("{name}.log"));
        let log = fs::File::create(&log_path).expect("foreground log");
        let child = c
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log fd"))
            .stderr(log)
            .spawn()
            .expect("spawn our binary");
        Foreground {
            process: Process::new(child),
            log_path,
        }
    }

    /// Ping `addr` from the target (first reply within [`HANDSHAKE_DEADLINE`],
    /// then `count` answered) or panic with both sides' state.
    pub fn expect_ping(&self, addr: IpAddr, count: u32) -> PingStats {
        ping_ok(self.target.pid(), addr, count, HANDSHAKE_DEADLINE)
            .unwrap_or_else(|e| panic!("{e}\n{}", self.diagnostics()))
    }

    /// The target's addresses and routes, and the peer's state.
    pub fn diagnostics(&self) -> String {
        let addr = run(&mut self.target.cmd("ip", ["addr"]));
        let route4 = run(&mut self.target.cmd("ip", ["route"]));
        let route6 = run(&mut self.target.cmd("ip", ["-6", "route"]));
        format!(
            "--- target ip addr ---\n{}{}\n--- target routes ---\n{}{}\n{}",
            text(&addr.stdout),
            text(&addr.stderr),
            text(&route4.stdout),
            text(&route6.stdout),
            self.peer.diagnostics()
        )
    }
}

impl Drop for Scenario {
    fn drop(&mut self) {
        self.target.kill();
        let killed = reap_instances(self.dir.path(), Duration::from_secs(3));
        if !killed.is_empty() {
            eprintln!(
                "cleanup: instances {killed:?} of our binary outlived their target by 3 s; SIGKILLed"
            );
        }
        // Then the fields drop: target (no-op), peer, dir.
    }
}

/// Our binary in `--foreground`, its stdout+stderr going to a log file.
/// On drop, if still running: SIGTERM by PID, SIGKILL after 2 s.
pub struct Foreground {
    process: Process,
    log_path: PathBuf,
}

impl std::ops::Deref for Foreground {
    type Target = Process;
    fn deref(&self) -> &Process {
        &self.process
    }
}

impl std::ops::DerefMut for Foreground {
    fn deref_mut(&mut self) -> &mut Process {
        &mut self.process
    }
}

impl Foreground {
    /// Its output so far.
    pub fn log(&self) -> String {
        text(&fs::read(&self.log_path).unwrap_or_default())
    }

    /// Wait up to `timeout` for `socket` to appear; Err (with the log) if it
    /// exits first or the time runs out.
    pub fn wait_socket(&mut self, socket: &Path, timeout: Duration) -> Result<(), String> {
        wait_for(timeout, || socket.exists() || self.try_exit().is_some());
        if let Some(status) = self.try_exit() {
            return Err(format!(
                "exited ({status}) before creating {}\n--- its output ---\n{}",
                socket.display(),
                self.log()
            ));
        }
        if socket.exists() {
            Ok(())
        } else {
            Err(format!(
                "no {} after {timeout:?}\n--- its output ---\n{}",
                socket.display(),
                self.log()
            ))
        }
    }
}

/// True if nothing (file, socket, dangling symlink) is at `path`.
pub fn gone(path: &Path) -> bool {
    fs::symlink_metadata(path).is_err()
}

// ---------------------------------------------------------------------------
// Added for e2e_run.rs and e2e_bad_input.rs: processes, dir listings, the
// `run` form, spawned programs with their output in files
// ---------------------------------------------------------------------------

/// The state letter of `/proc/PID/stat` (`R`, `S`, `Z`, …); None when there is
/// no such process.
pub fn process_state(pid: u32) -> Option<char> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name in parentheses may itself hold ") ".
    stat.rsplit_once(") ")?.1.chars().next()
}

/// Whether `pid` exists and is not a zombie (a dead process nobody reaped yet).
pub fn process_running(pid: u32) -> bool {
    process_state(pid).is_some_and(|s| s != 'Z' && s != 'X')
}

/// A script for a process that is not the engine's kin: try to open the
/// engine's `/proc/PID/environ` and `/proc/PID/mem` (PID = `$1`) and print
/// what happened to each, `environ: OK` if it could.
pub const PROBE_ENGINE: &str = r#"
for f in environ mem; do
    if err=$(head -c 1 "/proc/$1/$f" 2>&1 >/dev/null); then
        echo "$f: OK"
    else
        echo "$f: $err"
    fi
done
"#;

/// Checks [`PROBE_ENGINE`]'s output: both opens refused for lack of
/// permission (a dumpable engine of the same uid lets `environ` be read and
/// `mem` be opened; reading address 0 of it then fails with EIO instead).
pub fn assert_engine_unreadable(context: &str, stdout: &str, stderr: &str) {
    for f in ["environ", "mem"] {
        let line = stdout
            .lines()
            .find(|l| l.starts_with(&format!("{f}: ")))
            .unwrap_or_else(|| panic!("{context}: no {f} line\n{stdout}\n{stderr}"));
        assert!(
            line.ends_with("Permission denied"),
            "{context}: the engine's /proc/PID/{f} can be opened: {line}\n{stderr}"
        );
    }
}

/// `(pid, comm)` of the running children of `ppid`, from `/proc/*/stat`.
pub fn children_of(ppid: u32) -> Vec<(u32, String)> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut kids = Vec::new();
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let (Some((head, rest)), Some(open)) = (stat.rsplit_once(") "), stat.find(" (")) else {
            continue;
        };
        let mut fields = rest.split_whitespace();
        let state = fields.next().unwrap_or("?");
        let parent = fields.next().and_then(|p| p.parse::<u32>().ok());
        if parent == Some(ppid) && state != "Z" && state != "X" {
            kids.push((pid, head[open + 2..].to_owned()));
        }
    }
    kids
}

/// Names of the entries of `dir`, sorted; empty if it cannot be read.
pub fn dir_entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// Our binary as uid 65534:
/// `run --config CONFIG --tmpdir DIR FLAGS… -- COMMAND…`.
pub fn run_form<S: AsRef<OsStr>>(
    config: &Path,
    dir: &Path,
    flags: &[&str],
    command: impl IntoIterator<Item = S>,
) -> Command {
    let mut c = as_user(binary(), ["run", "--config"]);
    c.arg(config).arg("--tmpdir").arg(dir).args(flags).arg("--");
    c.args(command);
    c
}

/// A command spawned with stdin from /dev/null and stdout/stderr going to
/// files of its own (so nothing can block on a full pipe). On drop, if still
/// running: SIGTERM by PID, SIGKILL after 2 s, reaped.
pub struct Spawned {
    /// The spawned process (with `setpriv`, which execs in place: our binary).
    process: Process,
    desc: String,
    logs: tempfile::TempDir,
}

impl std::ops::Deref for Spawned {
    type Target = Process;
    fn deref(&self) -> &Process {
        &self.process
    }
}

impl std::ops::DerefMut for Spawned {
    fn deref_mut(&mut self) -> &mut Process {
        &mut self.process
    }
}

impl Spawned {
    pub fn start(mut c: Command) -> Self {
        let desc = describe(&c);
        let logs = tempfile::Builder::new()
            .prefix("w4n-spawned-")
            .tempdir_in("/tmp")
            .expect("log dir");
        let out = fs::File::create(logs.path().join("stdout")).expect("stdout file");
        let err = fs::File::create(logs.path().join("stderr")).expect("stderr file");
        let child = c
            .env("LC_ALL", "C")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {desc}: {e}"));
        Self {
            process: Process::new(child),
            desc,
            logs,
        }
    }

    pub fn stdout(&self) -> String {
        text(&fs::read(self.logs.path().join("stdout")).unwrap_or_default())
    }

    pub fn stderr(&self) -> String {
        text(&fs::read(self.logs.path().join("stderr")).unwrap_or_default())
    }

    /// The command line, stdout and stderr, for failure messages.
    pub fn report(&self) -> String {
        format!(
            "{} ({:?})\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.desc,
            self.process.exited,
            self.stdout(),
            self.stderr()
        )
    }
}

// ---------------------------------------------------------------------------
// The UAPI socket seen from inside
// ---------------------------------------------------------------------------

/// Debian's python3 (the one uid 65534 can run), for the UAPI probes.
pub const PYTHON: &str = "/usr/bin/python3";

/// `python3 -c UAPI_PROBE SOCKET`: connects to the UAPI socket twice, sends
/// `get=1` and then `set=1` with `replace_peers=true`, and prints one line
/// per attempt: `closed MS` when the server hung up without a byte (MS: from
/// connect to the hang-up, in milliseconds), `ANSWER …` when it answered,
/// `ERROR …` when the connect itself failed.
pub const UAPI_PROBE: &str = r#"
import socket, sys, time
for req in (b"get=1\n\n", b"set=1\nreplace_peers=true\n\n"):
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(10)
    try:
        s.connect(sys.argv[1])
    except OSError as e:
        print("ERROR connect", e, flush=True)
        continue
    t = time.monotonic()
    try:
        s.sendall(req)
    except OSError:
        pass
    try:
        got = s.recv(65536)
    except (ConnectionResetError, BrokenPipeError):
        got = b""
    ms = (time.monotonic() - t) * 1000
    print("closed %.3f" % ms if got == b"" else "ANSWER %r" % got, flush=True)
    s.close()
"#;

/// The probe's output says both requests were refused without a byte;
/// returns how long each refusal took, in milliseconds.
pub fn assert_uapi_refused(context: &str, probe_stdout: &str) -> Vec<f64> {
    let lines: Vec<&str> = probe_stdout.lines().collect();
    let times: Vec<f64> = lines
        .iter()
        .filter_map(|l| l.strip_prefix("closed "))
        .filter_map(|ms| ms.trim().parse().ok())
        .collect();
    assert!(
        times.len() == 2 && !probe_stdout.contains("ANSWER"),
        "{context}: the UAPI socket answered (or the probe failed):\n{probe_stdout}"
    );
    times
}

/// VmRSS of `pid`, in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no VmRSS for PID {pid}"))
}

// ---------------------------------------------------------------------------
// What a process holds
// ---------------------------------------------------------------------------

/// Whether `needle` is anywhere in the readable memory of process `pid`
/// (`/proc/PID/maps` and `/proc/PID/mem`; needs root, which also reads a
/// non-dumpable process). Regions that cannot be read (guard pages, the
/// vsyscall page) are skipped.
pub fn memory_contains(pid: u32, needle: &[u8]) -> bool {
    use std::io::{Read, Seek, SeekFrom};
    let maps = fs::read_to_string(format!("/proc/{pid}/maps")).unwrap_or_default();
    let Ok(mut mem) = fs::File::open(format!("/proc/{pid}/mem")) else {
        return false;
    };
    for line in maps.lines() {
        let mut fields = line.split_whitespace();
        let (Some(range), Some(perms)) = (fields.next(), fields.next()) else {
            continue;
        };
        let Some((start, end)) = range.split_once('-') else {
            continue;
        };
        let (Ok(start), Ok(end)) = (u64::from_str_radix(start, 16), u64::from_str_radix(end, 16))
        else {
            continue;
        };
        if !perms.starts_with('r') || end - start > 1 << 30 {
            continue;
        }
        let mut region = vec![0u8; (end - start) as usize];
        if mem.seek(SeekFrom::Start(start)).is_err() || mem.read_exact(&mut region).is_err() {
            continue;
        }
        if region.windows(needle.len()).any(|w| w == needle) {
            return true;
        }
    }
    false
}

/// The children of `pid` whose command line starts with `argv` (NUL-joined).
pub fn children_running(pid: u32, argv: &[&str]) -> Vec<u32> {
    let want = argv.join("\0");
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&child| status_field(child, "PPid").as_deref() == Some(&pid.to_string()))
        .filter(|&child| {
            fs::read(format!("/proc/{child}/cmdline")).is_ok_and(|c| c.starts_with(want.as_bytes()))
        })
        .collect()
}
