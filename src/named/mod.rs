//! Named tunnels that several programs share: `up`, `exec NAME`, `down`,
//! `list`, and configs found by name.
//!
//! `up CONFIG` is `run` in the background with a holder for its command
//! ([`holder`]): the same user, network and mount namespaces (`lo` and the
//! tunnel only, the private resolv.conf, the socket directory and the config
//! hidden), the engine in the caller's namespaces, forked before any thread
//! exists, as `run` does it. Like the attach form's background mode it
//! returns once the tunnel is up (the daemon's answer comes over a pipe, see
//! `daemon`), and "up" here means the holder has exec'd: before that it
//! would still be root in the namespace with the engine's memory.
//!
//! The tunnel's name is its interface's name and its UAPI socket's
//! (`DIR/NAME.sock`, so `show NAME` and `set NAME` work as for any tunnel),
//! and the socket's lock (`DIR/NAME.lock`) is what makes a second `up` of
//! the same name fail. `DIR/NAME.state` says which processes are the engine
//! and the holder (see [`state`]); the engine writes it before it confines
//! itself and removes it with the socket, its janitor if it is killed.
//!
//! `exec NAME` is `exec PID` with the holder's PID: it joins the holder's
//! namespaces (the owner user namespace, the network, the mounts, then the
//! holder's own user namespace) and so runs the command as the caller,
//! without capability over the network, as `run` runs its command.
//!
//! `down NAME` sends SIGTERM to every process in the tunnel's network
//! namespace but the holder, gives them [`GRACE`] to exit, sends SIGKILL to
//! what is left, then ends the holder, whereupon the engine removes its files
//! and exits; `down` waits for that (bounded by [`ENGINE_EXIT`], after which
//! the engine is killed and its janitor cleans up).

#![forbid(unsafe_code)]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod holder;
pub mod lookup;
pub mod state;

use std::collections::HashMap;
use std::io::{self, Write};
use std::os::fd::RawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use nix::sys::signal::Signal;

use crate::cli::{DownArgs, ListArgs, RunArgs, UpArgs};
use crate::daemon::{self, DaemonOutcome, Daemonized};
use crate::lifecycle::PidFd;
use crate::uapi;

use state::{NetnsId, Proc, State, Status};

/// How long `down` lets the processes inside handle SIGTERM before SIGKILL.
pub const GRACE: Duration = Duration::from_secs(5);
/// How long `down` waits for the engine after the holder is gone.
pub const ENGINE_EXIT: Duration = Duration::from_secs(5);
/// How often `down` looks again for processes inside.
const POLL: Duration = Duration::from_millis(20);

/// The errors of the named-tunnel commands.
#[derive(Debug, thiserror::Error)]
pub enum NamedError {
    #[error(
        "no config named {name}: looked for {looked} (hint: give its path, e.g. ./{name}, or put {name}.conf in one of those directories)"
    )]
    ConfigNotFound { name: String, looked: String },

    #[error("cannot name the tunnel {name:?}: {why} (hint: choose a name with --name)")]
    BadName { name: String, why: String },

    #[error(
        "no tunnel named {name} is up (no {}; see `wireguard4netns list`)",
        state::path(dir, name).display()
    )]
    NotUp { name: String, dir: PathBuf },

    #[error(
        "no tunnel named {name} is up: its engine was killed; removed its state file {}",
        state::path(dir, name).display()
    )]
    Stale { name: String, dir: PathBuf },

    #[error(
        "the tunnel {name} is going down: its holder process (PID {pid}) has exited (hint: wireguard4netns down {name})"
    )]
    HolderGone { name: String, pid: i32 },

    #[error(
        "a tunnel named {name} is already up (engine PID {pid}); stop it with `wireguard4netns down {name}`, or choose another --name"
    )]
    AlreadyUp { name: String, pid: i32 },

    #[error("cannot read the state file {}: {error}", path.display())]
    ReadState { path: PathBuf, error: io::Error },

    #[error(
        "the state file {} is garbled (hint: if no such tunnel runs, remove it)",
        path.display()
    )]
    GarbledState { path: PathBuf },

    #[error("cannot stop the tunnel {name}: {what}")]
    Stop { name: String, what: String },
}

/// The socket directory from `--tmpdir` or the default, absolute. Where it
/// exists it must be as `up` makes it (see `uapi`): a directory of ours,
/// not a symlink, that nobody else may write to, or a state file there could
/// have been put by someone else to send `exec` and `down` elsewhere.
fn socket_dir(tmpdir: Option<&Path>) -> anyhow::Result<PathBuf> {
    let dir = tmpdir.map_or_else(uapi::default_dir, Path::to_path_buf);
    let dir =
        std::path::absolute(&dir).context("cannot find the current directory for --tmpdir")?;
    let meta = match std::fs::symlink_metadata(&dir) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(dir),
        Err(e) => anyhow::bail!("cannot inspect the socket directory {}: {e}", dir.display()),
    };
    let reason = if !meta.is_dir() {
        Some("it is not a directory".to_owned())
    } else if meta.uid() != nix::unistd::geteuid().as_raw() {
        Some(format!("it belongs to uid {}", meta.uid()))
    } else if meta.mode() & 0o022 != 0 {
        Some(format!(
            "others may write to it (mode {:o})",
            meta.mode() & 0o7777
        ))
    } else {
        None
    };
    match reason {
        Some(reason) => Err(uapi::UapiError::UnsafeDir { path: dir, reason }.into()),
        None => Ok(dir),
    }
}

/// The tunnel's name: `--name`, else the config file's (`vpn.conf` makes
/// `vpn`), which must be an interface name.
fn tunnel_name(name: Option<&str>, config: &Path) -> Result<String, NamedError> {
    let name = match name {
        Some(name) => name.to_owned(),
        None => config
            .file_stem()
            .map(|stem| stem.to_string_lossy().into_owned())
            .unwrap_or_default(),
    };
    crate::tun::validate_ifname(&name).map_err(|e| NamedError::BadName {
        why: e.to_string(),
        name: name.clone(),
    })?;
    Ok(name)
}

/// The tunnel `name` must not be up; a stale state file is removed.
fn check_not_up(dir: &Path, name: &str) -> Result<(), NamedError> {
    match state::status(dir, name)? {
        Status::Down => Ok(()),
        Status::Stale => {
            let _ = std::fs::remove_file(state::path(dir, name));
            Ok(())
        }
        Status::Up { engine, .. } | Status::HolderGone { engine, .. } => {
            Err(NamedError::AlreadyUp {
                name: name.to_owned(),
                pid: engine.pid(),
            })
        }
    }
}

/// `wireguard4netns up`: returns 0 once the tunnel is up (in the original
/// process); the daemon returns when the tunnel goes down.
pub fn up(args: &UpArgs, log_fd: Option<RawFd>) -> anyhow::Result<u8> {
    let config = lookup::resolve(&args.config)?;
    // The daemon works from `/`.
    let config = std::path::absolute(&config)
        .with_context(|| format!("cannot make {} absolute", config.display()))?;
    let name = tunnel_name(args.name.as_deref(), &config)?;
    // Said here, not through the daemon (binding waits for it: the daemon
    // holds the listeners).
    crate::publish::parse_all(&args.publish)?;
    let dir = socket_dir(args.tmpdir.as_deref())?;
    check_not_up(&dir, &name)?;
    // Its errors, said here rather than into the daemon's /dev/null.
    let parsed = crate::config::Config::from_file(&config)?;
    for warning in &parsed.warnings {
        tracing::warn!("{}: {warning}", config.display());
    }
    drop(parsed);
    let mut notifier = match daemon::daemonize(&log_fd.into_iter().collect::<Vec<_>>())
        .context("cannot fork into the background")?
    {
        Daemonized::Daemon(notifier) => notifier,
        Daemonized::Original(DaemonOutcome::Ready) => return Ok(0),
        Daemonized::Original(DaemonOutcome::Failed(msg)) => anyhow::bail!("{msg}"),
    };
    let run = RunArgs {
        config,
        ifname: Some(name.clone()),
        tmpdir: Some(dir.clone()),
        map_root: false,
        publish: args.publish.clone(),
        no_sandbox: args.no_sandbox,
        ready_fd: None,
        threads: args.threads,
        log_level: None,
        log_file: None,
        command: holder::command(&name),
    };
    let ready = &mut notifier;
    let held = crate::run::Held {
        state_name: state::file_name(&name),
        write_state: Box::new(|holder| write_state(&dir, &name, holder.as_raw())),
        on_up: Box::new(move || ready.ready().map_err(Into::into)),
    };
    let result = crate::run::exec_held(&run, Some(held));
    if let Err(e) = &result {
        notifier.fail(&format!("{e:#}"));
    }
    result
}

/// The state file for our holder `holder`.
fn write_state(dir: &Path, name: &str, holder: i32) -> anyhow::Result<()> {
    let me = i32::try_from(std::process::id()).context("our PID is out of range")?;
    let (Some(engine), Some(holder)) = (Proc::of(me), Proc::of(holder)) else {
        anyhow::bail!("the holder process ended as it started");
    };
    State { engine, holder }
        .write(dir, name)
        .with_context(|| format!("cannot write {}", state::path(dir, name).display()))
}

/// For `exec NAME`: the holder's PID, which must be running.
pub fn holder_pid(tmpdir: Option<&Path>, name: &str) -> anyhow::Result<i32> {
    let dir = socket_dir(tmpdir)?;
    match state::status(&dir, name)? {
        Status::Up { state, .. } => Ok(state.holder.pid),
        other => Err(not_running(&dir, name, other).into()),
    }
}

/// For `exec NAME`, after it opened the namespaces by PID: is that PID still
/// the holder? (It could have exited and its PID been taken in between.)
pub fn still_the_holder(tmpdir: Option<&Path>, name: &str, pid: i32) -> anyhow::Result<()> {
    let dir = socket_dir(tmpdir)?;
    match state::status(&dir, name)? {
        Status::Up { state, .. } if state.holder.pid == pid => Ok(()),
        Status::Up { .. } => anyhow::bail!("the tunnel {name} was restarted while we joined it"),
        other => Err(not_running(&dir, name, other).into()),
    }
}

/// The error for a tunnel that is not [`Status::Up`]; a stale state file is
/// removed on the way.
fn not_running(dir: &Path, name: &str, status: Status) -> NamedError {
    let (name, dir) = (name.to_owned(), dir.to_owned());
    match status {
        Status::Down | Status::Up { .. } => NamedError::NotUp { name, dir },
        Status::Stale => {
            let _ = std::fs::remove_file(state::path(&dir, &name));
            NamedError::Stale { name, dir }
        }
        Status::HolderGone { holder, .. } => NamedError::HolderGone {
            name,
            pid: holder.pid,
        },
    }
}

/// `wireguard4netns down NAME`.
pub fn down(args: &DownArgs) -> anyhow::Result<u8> {
    let dir = socket_dir(args.tmpdir.as_deref())?;
    let name = &args.name;
    // Not a file name to look up: `../x` names no tunnel.
    if crate::tun::validate_ifname(name).is_err() {
        return Err(NamedError::NotUp {
            name: name.clone(),
            dir,
        }
        .into());
    }
    let stop_err = |what: String| NamedError::Stop {
        name: name.clone(),
        what,
    };
    let engine = match state::status(&dir, name)? {
        Status::Up { engine, holder, .. } => {
            let netns = state::netns_of(holder.pid())
                .map_err(|e| stop_err(format!("cannot read the holder's namespace: {e}")))?;
            let (stopped, killed) = stop_inside(netns, holder.pid());
            if stopped > 0 {
                tracing::info!(
                    "stopped {stopped} process(es) in {name}, {killed} of them with SIGKILL"
                );
            }
            match holder.signal(Signal::SIGTERM) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {}
                Err(e) => return Err(stop_err(format!("cannot signal its holder: {e}")).into()),
            }
            engine
        }
        Status::HolderGone { engine, .. } => engine,
        other => return Err(not_running(&dir, name, other).into()),
    };
    wait_engine(&engine, name)?;
    Ok(0)
}

/// Wait for the engine to remove its files and exit; SIGKILL it (its janitor
/// then removes them) if it takes longer than [`ENGINE_EXIT`].
fn wait_engine(engine: &PidFd, name: &str) -> Result<(), NamedError> {
    if engine.wait_exited(ENGINE_EXIT) {
        return Ok(());
    }
    tracing::warn!(
        "the engine of {name} (PID {}) did not exit within {ENGINE_EXIT:?}; killing it",
        engine.pid()
    );
    let _ = engine.signal(Signal::SIGKILL);
    if engine.wait_exited(ENGINE_EXIT) {
        Ok(())
    } else {
        Err(NamedError::Stop {
            name: name.to_owned(),
            what: format!("its engine (PID {}) survived SIGKILL", engine.pid()),
        })
    }
}

/// SIGTERM to every process in `netns` but `holder`, including those started
/// while we wait; after [`GRACE`], SIGKILL to what is left. Returns how many
/// were signalled and how many of them got SIGKILL.
fn stop_inside(netns: NetnsId, holder: i32) -> (usize, usize) {
    let mut signalled: HashMap<i32, PidFd> = HashMap::new();
    let mut total = 0;
    let deadline = Instant::now() + GRACE;
    let mut signal = Signal::SIGTERM;
    let mut killed = 0;
    // Bounded: GRACE, then as long again for SIGKILL to take effect.
    while Instant::now() < deadline + GRACE {
        if signal == Signal::SIGTERM && Instant::now() >= deadline {
            signal = Signal::SIGKILL;
            for pidfd in signalled.values() {
                if pidfd.signal(Signal::SIGKILL).is_ok() {
                    killed += 1;
                }
            }
        }
        for pid in state::inside(netns, holder) {
            if signalled.get(&pid).is_some_and(|fd| !fd.has_exited()) {
                continue;
            }
            let Ok(pidfd) = PidFd::open(pid) else {
                continue;
            };
            // Checked after the pidfd is open: it names this very process.
            if state::netns_of(pid).is_ok_and(|ns| ns == netns) && pidfd.signal(signal).is_ok() {
                total += 1;
                killed += usize::from(signal == Signal::SIGKILL);
                signalled.insert(pid, pidfd);
            }
        }
        signalled.retain(|_, pidfd| !pidfd.has_exited());
        if signalled.is_empty() && state::inside(netns, holder).is_empty() {
            break;
        }
        std::thread::sleep(POLL);
    }
    (total, killed)
}

/// `wireguard4netns list`: one line per peer of each named tunnel (one for a
/// tunnel without peers), with the number of processes inside.
pub fn list(args: &ListArgs) -> anyhow::Result<u8> {
    let dir = socket_dir(args.tmpdir.as_deref())?;
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut rows = vec![[
        "NAME".to_owned(),
        "PROCESSES".to_owned(),
        "PEER".to_owned(),
        "LATEST HANDSHAKE".to_owned(),
    ]];
    for name in state::names(&dir) {
        let Status::Up { holder, .. } = state::status(&dir, &name)? else {
            continue;
        };
        let processes = state::netns_of(holder.pid())
            .map(|ns| state::inside(ns, holder.pid()).len().to_string())
            .unwrap_or_else(|_| "?".to_owned());
        let peers = match crate::tools::client::get(&dir, &name) {
            Ok(device) => device
                .peers
                .iter()
                .map(|peer| {
                    let handshake = match peer.last_handshake_time_sec {
                        0 => "never".to_owned(),
                        then => crate::tools::show::ago(then, now, Default::default()),
                    };
                    (peer.public_key.to_string(), handshake)
                })
                .collect(),
            Err(e) => vec![("?".to_owned(), format!("({e})"))],
        };
        let peers: Vec<(String, String)> = peers;
        if peers.is_empty() {
            rows.push([
                name.clone(),
                processes.clone(),
                "-".to_owned(),
                "-".to_owned(),
            ]);
        }
        for (peer, handshake) in peers {
            rows.push([name.clone(), processes.clone(), peer, handshake]);
        }
    }
    let mut out = io::stdout().lock();
    if rows.len() > 1 {
        write_table(&mut out, &rows).context("cannot write to stdout")?;
    }
    Ok(0)
}

/// Columns padded to their widest cell, the last one not.
fn write_table(out: &mut impl Write, rows: &[[String; 4]]) -> io::Result<()> {
    let mut widths = [0; 4];
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    for row in rows {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i + 1 < row.len() {
                line.push_str(&format!("{cell:<width$}  ", width = widths[i]));
            } else {
                line.push_str(cell);
            }
        }
        writeln!(out, "{line}")?;
    }
    out.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_name_comes_from_the_flag_or_the_file() {
        assert_eq!(tunnel_name(None, Path::new("/x/vpn.conf")).unwrap(), "vpn");
        assert_eq!(
            tunnel_name(Some("home"), Path::new("/x/vpn.conf")).unwrap(),
            "home"
        );
        let err = tunnel_name(None, Path::new("/x/a-very-long-config-name.conf"))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("cannot name the tunnel \"a-very-long-config-name\": ")
                && err.ends_with("(hint: choose a name with --name)"),
            "{err}"
        );
    }

    #[test]
    fn the_table_is_aligned() {
        let rows = [
            ["NAME", "PROCESSES", "PEER", "LATEST HANDSHAKE"].map(str::to_owned),
            ["vpn", "2", "abc=", "Now"].map(str::to_owned),
        ];
        let mut out = Vec::new();
        write_table(&mut out, &rows).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "NAME  PROCESSES  PEER  LATEST HANDSHAKE\nvpn   2          abc=  Now\n"
        );
    }
}
