//! The `exec` subcommand: run a command inside the namespaces of a tunnel you
//! attached, so nobody needs `nsenter --preserve-credentials -U -n -t PID`.
//!
//! It does what that nsenter line does, plus the mount namespace when the
//! target has one of its own (where a launcher bind-mounted its resolv.conf):
//! TARGET's namespaces are opened and checked as the attach form opens them
//! (pidfd first, see `netns::open`), a child joins them and execs the command,
//! and we wait for it. The credentials are not changed ("preserve"): inside,
//! the caller's uid is whatever the target's user namespace maps it to, root
//! for a target made with `unshare --map-root-user`. The child joins the user
//! namespace that owns the network namespace first, then the network and mount
//! namespaces, then the target's own user namespace if that is another one
//! (`run`'s command: see `netns::ExecNamespaces`), as `setns` needs.
//!
//! Why a child, when nsenter without `--fork` just execs: our exit status is
//! then the command's in a shell's terms (128+N when signal N killed it), the
//! errors of joining and of exec come back to us over a close-on-exec pipe and
//! are printed as one line (nothing written means the exec happened), and we
//! stay outside the target's namespaces. Signals sent to us are passed on (see
//! `command`); the child dies with us (`PR_SET_PDEATHSIG`), as `run`'s does.
//!
//! Joining a mount namespace puts the working directory at its root; the child
//! goes back to the caller's working directory by path if that exists there,
//! else stays at `/`.
//!
//! TARGET is a PID or, with `--netns-type=path`, a namespace path; any other
//! word is the name of a tunnel started with `up`, whose holder's PID its
//! state file gives (see `named`): that PID is checked again once its
//! namespaces are open, so a holder that exited meanwhile is not mistaken
//! for whatever took its PID.

#![forbid(unsafe_code)]

use std::ffi::CString;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::path::PathBuf;

use anyhow::Context;
use nix::fcntl::OFlag;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::unistd::{ForkResult, Pid, getpid};

use crate::cli::{ExecArgs, NetnsType};
use crate::command;
use crate::lifecycle::{self, BlockedSignals, PidFd};
use crate::netns::{self, ExecNamespaces, Target};

/// The status of `exec` when it could not join the namespaces.
const JOIN_FAILED: i32 = 1;

/// Run `wireguard4netns exec` to the end; returns the command's exit status.
pub fn exec(args: &ExecArgs) -> anyhow::Result<u8> {
    let named = named_target(args);
    let target = match named {
        Some(name) => Target::Pid(crate::named::holder_pid(args.tmpdir.as_deref(), name)?),
        None => {
            crate::attach::parse_target(&args.target, args.netns_type, args.userns_path.as_deref())?
        }
    };
    let command =
        crate::command::argv(&args.command, "wireguard4netns exec TARGET -- CMD [ARGS…]")?;
    let ns = netns::open_for_exec(&target)?;
    if let (Some(name), Target::Pid(pid)) = (named, &target) {
        crate::named::still_the_holder(args.tmpdir.as_deref(), name, *pid)?;
    }
    tracing::debug!(
        "joining {}{}",
        ns.target(),
        if ns.joins_mounts() {
            " (with its mount namespace)"
        } else {
            ""
        }
    );
    let cwd = std::env::current_dir().ok();
    let signals = BlockedSignals::block().context("cannot block signals")?;
    let (report_r, report_w) =
        nix::unistd::pipe2(OFlag::O_CLOEXEC).context("cannot make a pipe")?;
    let parent = getpid();
    let child = match lifecycle::fork_before_threads().context("cannot fork")? {
        ForkResult::Child => {
            drop(report_r);
            child_main(ns, cwd, &command, &signals, File::from(report_w), parent)
        }
        ForkResult::Parent { child } => child,
    };
    drop((ns, report_w));
    // Nothing written before the pipe closed: the command is running.
    let mut report = String::new();
    let _ = File::from(report_r).take(4096).read_to_string(&mut report);
    if !report.is_empty() {
        let code = command::exit_code(command::wait_status(child));
        return Err(Failed { code, report }.into());
    }
    wait(child, &signals)
}

/// The tunnel name TARGET is, if it is one: a word that is no PID but could
/// be an interface name, without `--netns-type=path` or `--userns-path`.
fn named_target(args: &ExecArgs) -> Option<&str> {
    let word = args.target.as_str();
    let pid_like = !word.is_empty() && word.bytes().all(|b| b.is_ascii_digit());
    let nameable = crate::tun::validate_ifname(word).is_ok();
    (args.netns_type == NetnsType::Pid && args.userns_path.is_none() && !pid_like && nameable)
        .then_some(word)
}

/// The child's own failure: its message and status, printed by `main` as
/// `wireguard4netns: MESSAGE` with that status.
#[derive(Debug, thiserror::Error)]
#[error("{report}")]
pub struct Failed {
    pub code: u8,
    report: String,
}

/// Wait for the command, passing on the signals sent to us, and return its
/// status in a shell's terms.
fn wait(child: Pid, signals: &BlockedSignals) -> anyhow::Result<u8> {
    let pidfd = match PidFd::open(child.as_raw()) {
        Ok(pidfd) => pidfd,
        // Without a pidfd, waiting blocks signals' forwarding; the command
        // still gets the terminal's.
        Err(e) => {
            tracing::warn!("cannot watch the command ({e}); signals to us are not passed on");
            return Ok(command::exit_code(command::wait_status(child)));
        }
    };
    loop {
        let mut fds = [
            PollFd::new(pidfd.as_fd(), PollFlags::POLLIN),
            PollFd::new(signals.as_fd(), PollFlags::POLLIN),
        ];
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => {
                tracing::warn!("cannot wait for the command's signals ({e})");
                return Ok(command::exit_code(command::wait_status(child)));
            }
        }
        while let Ok(Some(received)) = signals.try_next() {
            command::forward(child, received);
        }
        if pidfd.has_exited() {
            return Ok(command::exit_code(command::wait_status(child)));
        }
    }
}

/// The child: join, go back to the working directory, exec. Never returns;
/// every failure is written to `report` (the parent prints it) before exit.
fn child_main(
    ns: ExecNamespaces,
    cwd: Option<PathBuf>,
    command: &[CString],
    signals: &BlockedSignals,
    mut report: File,
    parent: Pid,
) -> ! {
    let mut fail = |code: i32, msg: String| -> ! {
        let _ = report.write_all(msg.as_bytes());
        lifecycle::exit_now(code)
    };
    lifecycle::die_with(parent);
    // Its memory is a copy of ours, and in the target's user namespace its
    // credentials become the target root's: nothing inside may read it
    // before the exec replaces it (which resets the flag).
    if let Err(e) = lifecycle::make_undumpable() {
        fail(
            JOIN_FAILED,
            format!("cannot make the process non-dumpable: {e}"),
        );
    }
    if let Err(msg) = netns::enter(ns) {
        fail(JOIN_FAILED, msg);
    }
    let moved = cwd.is_some_and(|dir| nix::unistd::chdir(&dir).is_ok());
    if !moved {
        let _ = nix::unistd::chdir("/");
    }
    // Joining a user namespace changes credentials, which clears the
    // parent-death signal: set it again.
    lifecycle::die_with(parent);
    if let Err(e) = signals.previous_mask().thread_set_mask() {
        fail(JOIN_FAILED, format!("cannot restore the signal mask: {e}"));
    }
    let (code, why) = command::exec_command(command);
    let name = command
        .first()
        .map(|c| c.to_string_lossy().into_owned())
        .unwrap_or_default();
    fail(code, format!("{name}: {why}"))
}

/// `Failed`'s status, for `main`: the child's, or 1.
pub fn status_of(err: &anyhow::Error) -> Option<u8> {
    err.downcast_ref::<Failed>().map(|f| f.code)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn exec_args(line: &str) -> ExecArgs {
        let words = ["wireguard4netns", "exec"]
            .into_iter()
            .chain(line.split(' '))
            .chain(["--", "true"]);
        match crate::cli::Cli::try_parse_from(words).map(|cli| cli.command) {
            Ok(Some(crate::cli::Command::Exec(args))) => args,
            other => panic!("{line}: {other:?}"),
        }
    }

    /// A word that is no PID but could be an interface name is a tunnel
    /// name; a PID, a path target and a word that cannot be a name are not.
    #[test]
    fn which_targets_are_tunnel_names() {
        assert_eq!(named_target(&exec_args("vpn")), Some("vpn"));
        assert_eq!(named_target(&exec_args("--tmpdir /x wg-0")), Some("wg-0"));
        assert_eq!(named_target(&exec_args("1234")), None);
        assert_eq!(named_target(&exec_args("--netns-type=path vpn")), None);
        assert_eq!(named_target(&exec_args("../vpn")), None);
        assert_eq!(named_target(&exec_args("sixteen-chars-xx")), None);
    }

    #[test]
    fn a_failed_child_keeps_its_status() {
        let err = anyhow::Error::new(Failed {
            code: 127,
            report: "nope: command not found".into(),
        });
        assert_eq!(status_of(&err), Some(127));
        assert_eq!(err.to_string(), "nope: command not found");
        assert_eq!(status_of(&anyhow::anyhow!("other")), None);
    }
}
