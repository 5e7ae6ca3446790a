//! The holder: the process whose namespaces a named tunnel is. It is `run`'s
//! command for `up` (so it runs as the caller, without capability over the
//! namespace, like every command `exec` starts there) and does nothing but
//! wait to be stopped: SIGTERM (from `down`) ends it, and the engine, which
//! watches it through a pidfd as `run` watches its command, removes the
//! socket and state files and exits. It dies with the engine
//! (`PR_SET_PDEATHSIG`, set by `run`'s child before the exec).
//!
//! It is this binary started again (`/proc/self/exe`, which works whatever
//! the mount namespace hides), so it holds none of the engine's memory, the
//! keys included: the exec replaced it. Being freshly exec'd it is dumpable,
//! which is what lets `exec NAME` and `list` (the caller's own processes)
//! open its `/proc/PID/ns/*`.
//!
//! With `--publish` it is also the connector (see `publish`): it opens the
//! connections to the namespace's loopback and hands them out, its channel's
//! descriptor given as the argument after the name. That keeps it out of
//! `list`'s count and `down`'s signals, which spare the holder.

#![forbid(unsafe_code)]

use std::ffi::{CString, OsString};

/// The first argument that makes this binary a holder.
pub const ARG: &str = "__hold-namespaces";

/// The holder's command line, for `run`'s child to exec: the binary itself,
/// [`ARG`], and the tunnel's name (for `ps`).
pub fn command(name: &str) -> Vec<OsString> {
    ["/proc/self/exe", ARG, name]
        .into_iter()
        .map(OsString::from)
        .collect()
}

/// If this process was started as a holder, hold until a signal ends it;
/// `None` for every other command line. Called first thing in `main`.
pub fn main_if_asked() -> Option<u8> {
    let mut args = std::env::args_os().skip(1);
    if args.next() != Some(OsString::from(ARG)) {
        return None;
    }
    // `ps` and `top` show "w4n-hold NAME" rather than "exe".
    if let Ok(comm) = CString::new("w4n-hold") {
        let _ = nix::sys::prctl::set_name(&comm);
    }
    let _name = args.next();
    if let Some(fd) = args.next() {
        return Some(crate::publish::serve_inherited(Some(fd)));
    }
    // SIGTERM, SIGINT and SIGHUP keep their default action, which ends us;
    // nothing else is waited for.
    loop {
        nix::unistd::pause();
    }
}
