//! Running the user's command, for `run` and `exec`: the shell's rules for
//! finding and executing it (127 when it does not exist, 126 when it cannot be
//! executed), its exit status as ours (128+N when signal N killed it), and the
//! signals sent to us passed on to it.
//!
//! Both forms fork a child that execs the command while we stay to wait for it,
//! so a signal meant for the command may reach us instead: `kill PID` of ours,
//! a service manager's SIGTERM. A terminal's Ctrl-C, though, goes to the whole
//! foreground process group, the command included, and forwarding that one too
//! would deliver it twice (sudo makes the same distinction): [`forward`] tells
//! them apart by the signal's sender.

#![forbid(unsafe_code)]

use std::ffi::{CString, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use nix::errno::Errno;
use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::{Pid, execv, getpgid, getpgrp, getpid, getsid};

use crate::lifecycle::ReceivedSignal;

/// Why a command line cannot be run.
#[derive(Debug, thiserror::Error)]
pub enum ArgvError {
    #[error("the command contains a NUL byte")]
    Nul(#[source] std::ffi::NulError),
    /// None given; the form's synopsis says how.
    #[error("no command given: {0}")]
    Empty(&'static str),
}

/// The command's arguments as `execv` takes them; `synopsis` is the form's
/// (`wireguard4netns run --config CONFIG -- CMD [ARGS…]`), for the error
/// when there are none.
///
/// # Errors
///
/// [`ArgvError`] for an argument with a NUL byte, or no command.
pub fn argv(args: &[OsString], synopsis: &'static str) -> Result<Vec<CString>, ArgvError> {
    let argv = args
        .iter()
        .map(|arg| CString::new(arg.as_bytes()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(ArgvError::Nul)?;
    if argv.is_empty() {
        return Err(ArgvError::Empty(synopsis));
    }
    Ok(argv)
}

/// Exit statuses of a shell that cannot run a command.
pub const NOT_FOUND: i32 = 127;
pub const NOT_EXECUTABLE: i32 = 126;

/// Pass a signal sent to us on to the command, unless the terminal sent it to
/// the command's process group as well (Ctrl-C): then it has it. The kernel
/// sends a session leader's hangup to it alone, so that one is forwarded.
pub fn forward(child: Pid, received: ReceivedSignal) {
    let ReceivedSignal {
        signal,
        from_kernel,
    } = received;
    let hangup_for_us_alone = signal == Signal::SIGHUP && getsid(None).ok() == Some(getpid());
    if from_kernel && !hangup_for_us_alone && getpgid(Some(child)).ok() == Some(getpgrp()) {
        tracing::debug!("{signal} came from the terminal, which sent it to the command too");
        return;
    }
    tracing::info!("forwarding {signal} to the command");
    let _ = kill(child, signal);
}

/// Reap the child. `StillAlive` stands for "no status" (already reaped).
pub fn wait_status(child: Pid) -> WaitStatus {
    loop {
        match waitpid(child, None) {
            Ok(status @ (WaitStatus::Exited(..) | WaitStatus::Signaled(..))) => return status,
            Ok(_) | Err(Errno::EINTR) => continue,
            Err(_) => return WaitStatus::StillAlive,
        }
    }
}

/// A shell's convention: the exit code, or 128+N for death by signal N.
pub fn exit_code(status: WaitStatus) -> u8 {
    match status {
        WaitStatus::Exited(_, code) => u8::try_from(code).unwrap_or(1),
        WaitStatus::Signaled(_, sig, _) => 128u8.saturating_add(sig as u8),
        _ => 1,
    }
}

/// Exec the command the way a shell does, and on failure return the shell's
/// status and message: 127 when no such command exists, 126 when it exists but
/// cannot be executed. (`execvp` alone would say EACCES for a missing command
/// whenever some PATH directory is unreadable to us, and 126 for it.)
pub fn exec_command(command: &[CString]) -> (i32, String) {
    let Some(program) = command.first() else {
        return (NOT_FOUND, "no command given".to_owned());
    };
    // Rust ignores SIGPIPE, and an ignored signal stays ignored across
    // execve: a `yes | head` inside would see EPIPE errors instead of dying
    // quietly, as it does in a shell.
    crate::lifecycle::default_sigpipe();
    let name = program.as_bytes();
    let candidates: Vec<CString> = if name.contains(&b'/') {
        vec![program.clone()]
    } else {
        let path =
            std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
        path.as_bytes()
            .split(|&b| b == b':')
            .map(|dir| {
                let dir = if dir.is_empty() { &b"."[..] } else { dir };
                let mut full = dir.to_vec();
                full.push(b'/');
                full.extend_from_slice(name);
                full
            })
            .filter_map(|full| CString::new(full).ok())
            .collect()
    };
    let mut found = None;
    for candidate in &candidates {
        let path = Path::new(std::ffi::OsStr::from_bytes(candidate.as_bytes()));
        if !path.is_file() {
            continue;
        }
        let Err(err) = execv(candidate, command);
        found.get_or_insert(err);
    }
    match found {
        None if name.contains(&b'/') && !Path::new(std::ffi::OsStr::from_bytes(name)).exists() => {
            (NOT_FOUND, "no such file or directory".to_owned())
        }
        None if name.contains(&b'/') => (NOT_EXECUTABLE, "is not a regular file".to_owned()),
        None => (NOT_FOUND, "command not found".to_owned()),
        Some(err) => (NOT_EXECUTABLE, format!("cannot execute: {}", err.desc())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_follow_the_shell() {
        let pid = Pid::from_raw(1);
        assert_eq!(exit_code(WaitStatus::Exited(pid, 7)), 7);
        assert_eq!(exit_code(WaitStatus::Exited(pid, 0)), 0);
        assert_eq!(
            exit_code(WaitStatus::Signaled(pid, Signal::SIGTERM, false)),
            143
        );
        assert_eq!(
            exit_code(WaitStatus::Signaled(pid, Signal::SIGKILL, true)),
            137
        );
        assert_eq!(exit_code(WaitStatus::StillAlive), 1);
    }
}
