//! What a named tunnel leaves in the socket directory, and how the other
//! commands find its processes again.
//!
//! `DIR/NAME.state` names two processes: the engine (which also holds
//! `NAME.lock` and serves `NAME.sock`) and the holder (its child, whose
//! namespaces are the tunnel's). A PID alone could name another process once
//! the one it named is gone, so each comes with its start time (field 22 of
//! `/proc/PID/stat`, in clock ticks since boot), and a reader opens a pidfd
//! first and compares the start time after: the pidfd then surely names the
//! process the file meant, or nothing. The file is written once, whole
//! (a temporary file renamed over it), and removed with the socket, by the
//! engine or, should it be killed, by its janitor.
//!
//! Counting and stopping "the processes inside" goes by network namespace:
//! every process whose `/proc/PID/ns/net` is the holder's (compared by device
//! and inode). The commands `exec` starts run as the caller's uid, so the
//! caller may read that link for each of them; a process inside that made
//! itself non-dumpable hides it, and is not seen.

#![forbid(unsafe_code)]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::lifecycle::PidFd;

use super::NamedError;

/// The state file's name for tunnel `name`.
pub fn file_name(name: &str) -> String {
    format!("{name}.state")
}

/// One process, as the state file names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Proc {
    pub pid: i32,
    /// Field 22 of `/proc/PID/stat`.
    pub start: u64,
}

impl Proc {
    /// `pid` as it is now; `None` when there is no such process.
    pub fn of(pid: i32) -> Option<Self> {
        start_time(pid).map(|start| Self { pid, start })
    }

    /// A pidfd on this very process, or `None` when it is gone (its PID
    /// free, or taken by another process since).
    pub fn open(&self) -> Option<PidFd> {
        let pidfd = PidFd::open(self.pid).ok()?;
        (start_time(self.pid) == Some(self.start) && !pidfd.has_exited()).then_some(pidfd)
    }
}

/// The start time of `pid`, from `/proc/PID/stat` (readable for any process).
pub fn start_time(pid: i32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: count from its end.
    let (_, rest) = stat.rsplit_once(") ")?;
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// The contents of `NAME.state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct State {
    pub engine: Proc,
    pub holder: Proc,
}

impl State {
    fn render(&self) -> String {
        format!(
            "engine {} {}\nholder {} {}\n",
            self.engine.pid, self.engine.start, self.holder.pid, self.holder.start
        )
    }

    fn parse(text: &str) -> Option<Self> {
        let mut engine = None;
        let mut holder = None;
        for line in text.lines() {
            let mut words = line.split_whitespace();
            let (Some(role), Some(pid), Some(start), None) =
                (words.next(), words.next(), words.next(), words.next())
            else {
                return None;
            };
            let proc = Proc {
                pid: pid.parse().ok().filter(|&pid: &i32| pid > 0)?,
                start: start.parse().ok()?,
            };
            match role {
                "engine" => engine = Some(proc),
                "holder" => holder = Some(proc),
                _ => return None,
            }
        }
        Some(Self {
            engine: engine?,
            holder: holder?,
        })
    }

    /// Write `dir/NAME.state` (0600) in one step: a reader sees the old file,
    /// or none, or this one whole.
    pub fn write(&self, dir: &Path, name: &str) -> io::Result<()> {
        let path = dir.join(file_name(name));
        let tmp = dir.join(format!(".{}.tmp", file_name(name)));
        let _ = fs::remove_file(&tmp);
        let written = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .and_then(|mut file| file.write_all(self.render().as_bytes()))
            .and_then(|()| fs::rename(&tmp, &path));
        if written.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        written
    }

    /// `dir/NAME.state`, or `None` when there is none.
    pub fn read(dir: &Path, name: &str) -> Result<Option<Self>, NamedError> {
        let path = dir.join(file_name(name));
        match fs::read_to_string(&path) {
            Ok(text) => Self::parse(&text)
                .map(Some)
                .ok_or(NamedError::GarbledState { path }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(error) => Err(NamedError::ReadState { path, error }),
        }
    }
}

/// A named tunnel as it is now.
#[derive(Debug)]
pub enum Status {
    /// No state file.
    Down,
    /// A state file whose engine is gone (killed together with its janitor).
    Stale,
    /// The engine runs but the holder is gone: it is going down.
    HolderGone { engine: PidFd, holder: Proc },
    /// Both run.
    Up {
        engine: PidFd,
        holder: PidFd,
        state: State,
    },
}

/// The status of tunnel `name` in `dir`.
pub fn status(dir: &Path, name: &str) -> Result<Status, NamedError> {
    let Some(state) = State::read(dir, name)? else {
        return Ok(Status::Down);
    };
    let Some(engine) = state.engine.open() else {
        return Ok(Status::Stale);
    };
    Ok(match state.holder.open() {
        Some(holder) => Status::Up {
            engine,
            holder,
            state,
        },
        None => Status::HolderGone {
            engine,
            holder: state.holder,
        },
    })
}

/// The names of the tunnels with a state file in `dir`, sorted.
pub fn names(dir: &Path) -> Vec<String> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .flatten()
        .filter_map(|e| {
            e.file_name()
                .to_str()?
                .strip_suffix(".state")
                .filter(|n| !n.starts_with('.'))
                .map(str::to_owned)
        })
        .collect();
    names.sort();
    names
}

/// A network namespace, by the device and inode of its nsfs file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NetnsId(u64, u64);

/// The network namespace of `pid`.
pub fn netns_of(pid: i32) -> io::Result<NetnsId> {
    let meta = fs::metadata(format!("/proc/{pid}/ns/net"))?;
    Ok(NetnsId(meta.dev(), meta.ino()))
}

/// The processes in network namespace `netns` that we can see, but `except`.
pub fn inside(netns: NetnsId, except: i32) -> Vec<i32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| pid != except && netns_of(pid).is_ok_and(|ns| ns == netns))
        .collect()
}

/// `dir/NAME.state`, for messages.
pub fn path(dir: &Path, name: &str) -> PathBuf {
    dir.join(file_name(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_round_trips_and_garbage_is_refused() {
        let state = State {
            engine: Proc { pid: 10, start: 7 },
            holder: Proc { pid: 11, start: 8 },
        };
        assert_eq!(State::parse(&state.render()), Some(state));
        for bad in [
            "",
            "engine 10 7\n",
            "engine 10 7\nholder x 8\n",
            "engine 0 7\nholder 11 8\n",
            "engine 10 7 9\nholder 11 8\n",
            "other 1 1\n",
        ] {
            assert_eq!(State::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn written_state_is_read_back_and_listed() {
        let dir = tempfile::tempdir().unwrap();
        let me = Proc::of(std::process::id() as i32).unwrap();
        let state = State {
            engine: me,
            holder: me,
        };
        assert_eq!(State::read(dir.path(), "vpn").unwrap(), None);
        state.write(dir.path(), "vpn").unwrap();
        assert_eq!(State::read(dir.path(), "vpn").unwrap(), Some(state));
        assert_eq!(names(dir.path()), ["vpn"]);
        let mode = fs::metadata(path(dir.path(), "vpn")).unwrap().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(matches!(
            status(dir.path(), "vpn").unwrap(),
            Status::Up { .. }
        ));
        let gone = State {
            engine: Proc {
                pid: me.pid,
                start: me.start + 1,
            },
            holder: me,
        };
        gone.write(dir.path(), "old").unwrap();
        assert!(matches!(status(dir.path(), "old").unwrap(), Status::Stale));
        assert!(matches!(status(dir.path(), "no").unwrap(), Status::Down));
    }

    #[test]
    fn we_are_inside_our_own_namespace() {
        let me = std::process::id() as i32;
        let ours = netns_of(me).unwrap();
        assert!(!inside(ours, -1).is_empty());
        assert!(!inside(ours, me).contains(&me));
    }
}
