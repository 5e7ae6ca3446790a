//! Landlock: the running engine's filesystem is its socket directory, where it
//! removes its files at exit, and nothing else.
//!
//! Landlock (Linux 5.13+) lets an unprivileged process restrict itself: a
//! ruleset names the access rights it *handles*, rules grant some of them
//! beneath given directories, and every handled right not granted is refused
//! from then on, to this thread and the threads it starts (so this runs before
//! tokio's threads exist). What the running engine still does with paths,
//! checked with `strace -f` over the e2e tests:
//! - at exit, `lstat` + `unlink` of `DIR/IFNAME.sock`, `DIR/IFNAME.lock` and
//!   (`run`, `up`) `DIR/IFNAME.resolv.conf`, (`up`) `DIR/NAME.state`:
//!   `RemoveFile` beneath the socket
//!   directory (`lstat` is not governed by Landlock);
//!
//! Nothing else: the UAPI peer check, which reads other processes' `/proc`
//! files and namespaces, runs in a process forked before this (Landlock also
//! confines ptrace-mode access, see [`crate::inspector`]); config, endpoints, `/dev/net/tun` and `/dev/null` were all
//! opened before. Landlock checks rights when a file is opened (or, for
//! `IoctlDev`, against the rights recorded at open), so descriptors opened
//! before the ruleset keep working: the engine's `TUNSETOFFLOAD` on the TUN
//! descriptor the helper sent, right after this, still succeeds. TCP `bind`/`connect` are handled and never granted (the
//! engine speaks UDP only; UDP is left alone because gotatun binds new UDP
//! sockets on a port change), and connecting to abstract unix sockets of
//! other domains is refused. Signals are not scoped: `run` forwards them to
//! its command, which lives outside our domain.
//!
//! Best effort: the ruleset asks for everything this crate knows, and each
//! kernel enforces the part its Landlock ABI has (the crate drops the rest).
//! A kernel without Landlock (not built, or not in `lsm=`) is logged at info
//! and the engine goes on with seccomp and capabilities alone.

use std::path::Path;

use landlock::{
    ABI, Access, AccessFs, AccessNet, CompatLevel, Compatible, RestrictionStatus, Ruleset,
    RulesetAttr, RulesetCreatedAttr, RulesetError, RulesetStatus, Scope, path_beneath_rules,
};

use super::SandboxError;

/// The newest ABI this code was written against; older kernels get the part
/// they know.
const ABI_WANTED: ABI = ABI::V6;

/// Restrict the calling thread (and the threads it starts later) to removing
/// files in `socket_dir`.
pub fn restrict(socket_dir: &Path) -> Result<(), SandboxError> {
    let err = |error| SandboxError::Landlock {
        dir: socket_dir.to_owned(),
        error,
    };
    let status = apply(socket_dir).map_err(err)?;
    match status.ruleset {
        RulesetStatus::NotEnforced => tracing::info!(
            "the kernel has no Landlock ({:?}): the filesystem stays reachable, seccomp and capabilities still apply",
            status.landlock
        ),
        RulesetStatus::PartiallyEnforced => tracing::debug!(
            "Landlock partly enforced (older ABI: {:?})",
            status.landlock
        ),
        RulesetStatus::FullyEnforced => tracing::debug!("Landlock fully enforced"),
    }
    Ok(())
}

/// Build and apply the ruleset; returns what the kernel enforces.
pub fn apply(socket_dir: &Path) -> Result<RestrictionStatus, RulesetError> {
    Ruleset::default()
        .set_compatibility(CompatLevel::BestEffort)
        .handle_access(AccessFs::from_all(ABI_WANTED))?
        .handle_access(AccessNet::BindTcp | AccessNet::ConnectTcp)?
        .scope(Scope::AbstractUnixSocket)?
        .create()?
        .add_rules(path_beneath_rules([socket_dir], AccessFs::RemoveFile))?
        .restrict_self()
}

/// Keep the calling process and everything it starts from signalling any
/// process outside them (`LANDLOCK_SCOPE_SIGNAL`, Linux 6.12), touching
/// nothing else: for `run`'s command, which runs as the caller's uid and
/// could otherwise stop or kill the engine, the janitor and the peer-check
/// process (and any other process of the caller). Signals *to* the command
/// (forwarded ones, a terminal's) and the kernel's own (`SIGCHLD`, the
/// parent-death signal) are not affected. Returns whether the kernel
/// enforces it; an older kernel leaves the command as it was.
pub fn scope_signals() -> Result<bool, RulesetError> {
    let status = Ruleset::default()
        .set_compatibility(CompatLevel::BestEffort)
        .scope(Scope::Signal)?
        .create()?
        .restrict_self()?;
    Ok(status.ruleset != RulesetStatus::NotEnforced)
}

/// For `--publish`'s forwarder (see [`crate::publish`]): no filesystem at
/// all, no TCP `bind` or `connect` (it accepts on listeners bound before,
/// and its inner sockets come connected from the namespace), no abstract
/// unix sockets, no signals to anyone outside. So even a forwarder gone
/// wrong opens no connection of its own on the host. Returns whether the
/// kernel enforces it (best effort, as for the engine).
pub fn forwarder() -> Result<bool, RulesetError> {
    Ok(apply_forwarder()?.ruleset != RulesetStatus::NotEnforced)
}

fn apply_forwarder() -> Result<RestrictionStatus, RulesetError> {
    Ruleset::default()
        .set_compatibility(CompatLevel::BestEffort)
        .handle_access(AccessFs::from_all(ABI_WANTED))?
        .handle_access(AccessNet::BindTcp | AccessNet::ConnectTcp)?
        .scope(Scope::AbstractUnixSocket | Scope::Signal)?
        .create()?
        .restrict_self()
}

#[cfg(test)]
mod tests {
    use super::super::testing::in_child;
    use super::*;
    use nix::sys::wait::WaitStatus;
    use std::fs;

    /// Landlock is there unless the kernel lacks it; CI's kernel has it.
    fn landlock_or_skip(test: &str, status: &RestrictionStatus) -> bool {
        if status.ruleset != RulesetStatus::NotEnforced {
            return true;
        }
        let why = format!("{test}: the kernel has no Landlock ({:?})", status.landlock);
        assert!(
            std::env::var_os("CI").is_none_or(|v| v != "true"),
            "{why}, and CI=true"
        );
        eprintln!("SKIP {why}");
        false
    }

    fn denied<T>(result: std::io::Result<T>) -> bool {
        matches!(result, Err(e) if e.raw_os_error() == Some(libc::EACCES))
    }

    /// Codes the child reports: 0 pass, 10 skip, others a failed step.
    #[test]
    fn only_removing_in_the_socket_dir_stays_possible() {
        let dir = tempfile::tempdir().expect("tempdir");
        let outside = tempfile::tempdir().expect("tempdir");
        let ours = dir.path().join("wg0.sock");
        let theirs = outside.path().join("file");
        fs::write(&ours, "x").expect("write");
        fs::write(&theirs, "x").expect("write");
        let status = in_child(|| {
            let Ok(status) = apply(dir.path()) else {
                return 2;
            };
            if !landlock_or_skip("only_removing_in_the_socket_dir_stays_possible", &status) {
                return 10;
            }
            // Outside: no open, no create, no unlink.
            if !denied(fs::read(&theirs)) || !denied(fs::read("/etc/hostname")) {
                return 3;
            }
            if !denied(fs::write(outside.path().join("new"), "x"))
                || !denied(fs::remove_file(&theirs))
            {
                return 4;
            }
            // In the socket directory: removal only, not even reading.
            if !denied(fs::read(&ours)) || !denied(fs::write(dir.path().join("new"), "x")) {
                return 5;
            }
            if fs::remove_file(&ours).is_err() {
                return 6;
            }
            // Not even /proc: the peer check runs in the inspector process.
            if !denied(fs::read("/proc/1/stat")) {
                return 7;
            }
            // TCP is handled and never granted (where the ABI has it, 6.7+).
            let tcp_handled = matches!(
                status.landlock,
                landlock::LandlockStatus::Available { effective_abi, .. } if effective_abi >= ABI::V4
            );
            if tcp_handled && !denied(std::net::TcpListener::bind("127.0.0.1:0")) {
                return 8;
            }
            0
        });
        match status {
            WaitStatus::Exited(_, 0 | 10) => {}
            other => panic!("child failed: {other:?}"),
        }
        // The parent is not confined: the file outside is still there.
        assert!(theirs.exists());
    }

    /// The forwarder: no file, no TCP connect of its own.
    #[test]
    fn the_forwarder_opens_nothing() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("listen");
        let addr = listener.local_addr().expect("addr");
        let status = in_child(|| {
            let Ok(status) = apply_forwarder() else {
                return 2;
            };
            if !landlock_or_skip("the_forwarder_opens_nothing", &status) {
                return 10;
            }
            if !denied(fs::read("/etc/hostname")) {
                return 3;
            }
            let tcp_handled = matches!(
                status.landlock,
                landlock::LandlockStatus::Available { effective_abi, .. } if effective_abi >= ABI::V4
            );
            if tcp_handled && !denied(std::net::TcpStream::connect(addr)) {
                return 4;
            }
            0
        });
        match status {
            WaitStatus::Exited(_, 0 | 10) => {}
            other => panic!("child failed: {other:?}"),
        }
        // Accepting on a listener bound before is not governed: e2e_publish
        // shows it end to end.
        drop(listener);
    }
}
