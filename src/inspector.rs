//! The UAPI peer check of a confined engine, done by a small forked process
//! that stays outside the engine's Landlock domain.
//!
//! # Why a process of its own
//!
//! [`crate::peer`] places a connecting client by reading its user namespace,
//! which needs `PTRACE_MODE_READ` over the client. Landlock confines ptrace
//! too: a task in a Landlock domain may only ptrace (and so only inspect)
//! tasks in the same domain or one nested in it (`hook_ptrace_access_check`
//! in `security/landlock/task.c`). Once the engine has restricted itself
//! (see [`crate::sandbox`]), every client, the owner's `show` included, would
//! be uninspectable and refused. Leaving one thread of the engine outside
//! the domain would not be a boundary (threads share memory), so the check
//! runs in a [`crate::sidecar`] forked right before the engine confines
//! itself:
//!
//! * it holds nothing but its end of the pair, is non-dumpable like the
//!   engine it was forked from, has `no_new_privs` and no capability but
//!   `CAP_SYS_PTRACE` (a root engine's; an unprivileged one has none), and
//!   dies with the engine;
//! * per connection the engine sends it the accepted socket (`SCM_RIGHTS`),
//!   and it answers with what [`peer::inspect`]
//!   found on that socket: `SO_PEERPIDFD`/`SO_PEERCRED` work on a socket
//!   passed to another process, since they describe the socket's peer, not
//!   its holder;
//! * it never reads a byte from the client and never sees the device, so a
//!   compromised engine gains nothing by talking to it that it could not do
//!   before it confined itself (it can only ask about sockets it holds).
//!
//! The engine waits for the answer without blocking a runtime thread, at
//! most [`ANSWER_TIMEOUT`]: the check is a handful of system calls, and a
//! stopped inspector must not hold the accept loop for long. If the inspector is
//! gone, every client is refused (fail closed) and the error says why.
//!
//! An engine started with `--no-sandbox` inspects its clients itself
//! ([`PeerCheck::InProcess`]).

#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::time::Duration;

use crate::fdpass::Channel;
use crate::peer::{self, Peer, PeerError, Relation, UserNs};
use crate::sidecar::{self, Sidecar};

/// How long the engine waits for the inspector's answer about one client.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(2);

/// Answer tags: a peer, or why it could not be inspected.
const ANSWER_PEER: u8 = b'P';
const ANSWER_ERROR: u8 = b'E';

/// How the UAPI server learns who is calling.
#[derive(Debug)]
pub struct PeerCheck {
    how: How,
    /// Whoever inspects is root in the initial user namespace and so can
    /// inspect every process: an uninspectable one is hidden by an LSM, not
    /// above us, and gets no benefit of the doubt (see `uapi::server`).
    sees_everyone: bool,
}

#[derive(Debug)]
enum How {
    /// Inspect the client here (an engine without Landlock).
    InProcess(UserNs),
    /// Ask the inspector process (a confined engine).
    Delegated(Inspector),
}

impl PeerCheck {
    /// Inspect clients in this process.
    ///
    /// # Errors
    ///
    /// [`PeerError::OwnNamespace`] when our own user namespace cannot be read.
    pub fn in_process() -> Result<Self, PeerError> {
        Ok(Self {
            how: How::InProcess(UserNs::current()?),
            sees_everyone: peer::root_in_initial_user_ns(),
        })
    }

    /// Fork the inspector; see the module documentation. Must be called while
    /// the process is single-threaded.
    ///
    /// # Errors
    ///
    /// When the socketpair or the fork fails.
    pub fn spawn_inspector() -> io::Result<Self> {
        Ok(Self {
            how: How::Delegated(Inspector::spawn()?),
            sees_everyone: peer::root_in_initial_user_ns(),
        })
    }

    /// Whether an uninspectable client can only be one an LSM hides from us.
    pub fn sees_everyone(&self) -> bool {
        self.sees_everyone
    }

    /// Who is at the other end of the connected unix socket `sock`. Needs
    /// a tokio runtime (for the inspector's answer).
    ///
    /// # Errors
    ///
    /// [`PeerError`] when the client could not be placed: the caller refuses it.
    pub async fn inspect(&mut self, sock: BorrowedFd<'_>) -> Result<Peer, PeerError> {
        match &mut self.how {
            How::InProcess(ours) => peer::inspect(sock, *ours),
            How::Delegated(inspector) => inspector.ask(sock).await,
        }
    }
}

/// The engine's side of the inspector process.
#[derive(Debug)]
pub struct Inspector(Sidecar);

impl Inspector {
    fn spawn() -> io::Result<Self> {
        // It never executes anything, and needs no privilege but reading
        // other processes' namespaces (`CAP_SYS_PTRACE`, which only a root
        // engine holds in the first place).
        let keep = crate::sandbox::caps::Keep {
            sys_ptrace: true,
            ..Default::default()
        };
        Ok(Self(Sidecar::spawn(keep, inspector_main)?))
    }

    /// Send `sock` to the inspector and wait for its answer.
    async fn ask(&mut self, sock: BorrowedFd<'_>) -> Result<Peer, PeerError> {
        let pid = self.0.pid();
        let gone = move |e: io::Error| {
            PeerError::Delegated(format!(
                "the peer-check process {pid} does not answer: {e} (was it stopped or killed?)"
            ))
        };
        let answer = self
            .0
            .ask(&[], Some(sock), ANSWER_TIMEOUT)
            .await
            .map_err(gone)?;
        decode(&answer).unwrap_or_else(|| Err(gone(io::ErrorKind::InvalidData.into())))
    }
}

/// The inspector: answer questions until the engine goes away. Never returns.
fn inspector_main(channel: Channel) {
    let ours = UserNs::current();
    sidecar::serve(&channel, |_, sock| {
        let answer = match (&ours, &sock) {
            (Ok(ours), Some(sock)) => peer::inspect(sock.as_fd(), *ours),
            (Err(e), _) => Err(PeerError::Delegated(e.to_string())),
            (_, None) => Err(PeerError::Delegated("no socket in the question".to_owned())),
        };
        (encode(&answer), None)
    })
}

fn relation_code(relation: Relation) -> u8 {
    match relation {
        Relation::Same => 0,
        Relation::Inside => 1,
        Relation::Outside => 2,
        Relation::Uninspectable => 3,
        Relation::Gone => 4,
    }
}

fn relation_of(code: u8) -> Option<Relation> {
    Some(match code {
        0 => Relation::Same,
        1 => Relation::Inside,
        2 => Relation::Outside,
        3 => Relation::Uninspectable,
        4 => Relation::Gone,
        _ => return None,
    })
}

/// `P` pid uid relation, or `E` and the error's text.
fn encode(answer: &Result<Peer, PeerError>) -> Vec<u8> {
    let mut out = Vec::new();
    match answer {
        Ok(peer) => {
            out.push(ANSWER_PEER);
            out.extend_from_slice(&peer.pid.to_le_bytes());
            out.extend_from_slice(&peer.uid.to_le_bytes());
            out.push(relation_code(peer.relation));
        }
        Err(e) => {
            out.push(ANSWER_ERROR);
            let text = e.to_string();
            // Well inside a message.
            out.extend(text.bytes().take(1024));
        }
    }
    out
}

fn decode(data: &[u8]) -> Option<Result<Peer, PeerError>> {
    let (&tag, rest) = data.split_first()?;
    Some(match tag {
        ANSWER_PEER if rest.len() == 9 => Ok(Peer {
            pid: i32::from_le_bytes(rest[..4].try_into().ok()?),
            uid: u32::from_le_bytes(rest[4..8].try_into().ok()?),
            relation: relation_of(rest[8])?,
        }),
        ANSWER_ERROR => Err(PeerError::Delegated(
            String::from_utf8_lossy(rest).into_owned(),
        )),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lifecycle;
    use crate::sandbox::testing::block_on;
    use nix::unistd::ForkResult;
    use std::os::unix::net::UnixStream;

    #[test]
    fn answers_round_trip() {
        for relation in [
            Relation::Same,
            Relation::Inside,
            Relation::Outside,
            Relation::Uninspectable,
            Relation::Gone,
        ] {
            let peer = Peer {
                pid: 4242,
                uid: 65534,
                relation,
            };
            assert_eq!(decode(&encode(&Ok(peer))).unwrap().unwrap(), peer);
        }
        let err = PeerError::Delegated("nope".to_owned());
        let back = decode(&encode(&Err(err))).unwrap();
        assert!(back.unwrap_err().to_string().contains("nope"));
        assert!(decode(b"").is_none());
        assert!(decode(b"P\x01").is_none());
        assert!(decode(b"P\0\0\0\0\0\0\0\0\x09").is_none());
    }

    /// The inspector is a forked process, so this test forks it from a
    /// single-threaded child of the test harness.
    #[test]
    fn inspector_process_places_our_own_process() {
        let status = crate::sandbox::testing::in_child(|| {
            let mut check = match PeerCheck::spawn_inspector() {
                Ok(check) => check,
                Err(_) => return 2,
            };
            let (a, _b) = UnixStream::pair().unwrap();
            let peer = block_on(check.inspect(a.as_fd())).unwrap();
            let me = i32::try_from(std::process::id()).unwrap();
            if peer.relation == Relation::Same && peer.pid == me {
                0
            } else {
                eprintln!("inspector said {peer:?}");
                1
            }
        });
        assert_eq!(
            status,
            nix::sys::wait::WaitStatus::Exited(status.pid().unwrap(), 0),
            "{status:?}"
        );
    }

    /// The inspector holds no privilege but reading namespaces: as root,
    /// `CAP_SYS_PTRACE` alone; `no_new_privs` always.
    #[test]
    fn the_inspector_keeps_only_what_it_needs() {
        let root = nix::unistd::geteuid().is_root();
        let status = crate::sandbox::testing::in_child(|| {
            let check = PeerCheck::spawn_inspector().unwrap();
            let How::Delegated(inspector) = &check.how else {
                return 2;
            };
            let path = format!("/proc/{}/status", inspector.0.pid());
            // It confines itself right after the fork: give it a moment.
            for _ in 0..100 {
                let status = std::fs::read_to_string(&path).unwrap_or_default();
                let field = |name: &str| {
                    status
                        .lines()
                        .find_map(|l| l.strip_prefix(name))
                        .map(|v| v.trim().to_owned())
                };
                let want_eff = if root {
                    "0000000000080000"
                } else {
                    "0000000000000000"
                };
                if field("NoNewPrivs:").as_deref() == Some("1")
                    && field("CapEff:").as_deref() == Some(want_eff)
                    && field("CapPrm:").as_deref() == Some(want_eff)
                {
                    return 0;
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            1
        });
        assert!(
            matches!(status, nix::sys::wait::WaitStatus::Exited(_, 0)),
            "{status:?}"
        );
    }

    /// Why the inspector exists: once Landlock confines us, a client outside
    /// our domain (here a forked process that connects to our listener)
    /// cannot be inspected here any more, but the inspector, forked before,
    /// still places it.
    #[test]
    fn landlock_hides_clients_from_the_engine_but_not_from_the_inspector() {
        use std::io::Read;
        use std::os::unix::net::UnixListener;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let status = crate::sandbox::testing::in_child(|| {
            let listener = UnixListener::bind(&path).unwrap();
            // The client: forked before we confine ourselves, so it stays
            // outside our Landlock domain; it connects, then waits for us to
            // hang up.
            let client = match lifecycle::fork_before_threads().unwrap() {
                ForkResult::Child => {
                    let code = match UnixStream::connect(&path) {
                        Ok(mut s) => {
                            let _ = s.read(&mut [0u8; 1]);
                            0
                        }
                        Err(_) => 1,
                    };
                    lifecycle::exit_now(code)
                }
                ForkResult::Parent { child } => child,
            };
            let mut delegated = PeerCheck::spawn_inspector().unwrap();
            let mut here = PeerCheck::in_process().unwrap();
            match crate::sandbox::landlock::apply(dir.path()) {
                Ok(status) if status.ruleset == ::landlock::RulesetStatus::NotEnforced => {
                    return 10;
                }
                Ok(_) => {}
                Err(_) => return 3,
            }
            let (conn, _) = listener.accept().unwrap();
            let seen_here = block_on(here.inspect(conn.as_fd())).unwrap();
            let seen_there = block_on(delegated.inspect(conn.as_fd())).unwrap();
            drop(conn);
            let _ = nix::sys::wait::waitpid(client, None);
            let client = client.as_raw();
            match (seen_here.relation, seen_there.relation) {
                (Relation::Uninspectable, Relation::Same) if seen_there.pid == client => 0,
                other => {
                    eprintln!("here/inspector: {other:?}");
                    1
                }
            }
        });
        match status {
            nix::sys::wait::WaitStatus::Exited(_, 0) => {}
            nix::sys::wait::WaitStatus::Exited(_, 10) => {
                let ci = std::env::var_os("CI").is_some_and(|v| v == "true");
                assert!(!ci, "the kernel has no Landlock, and CI=true");
                eprintln!("SKIP: the kernel has no Landlock, so there is nothing to show");
            }
            other => panic!("{other:?}"),
        }
    }
}
