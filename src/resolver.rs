//! Following peers whose `Endpoint` is a DNS name: a dynamic-DNS peer whose
//! address changes is found again without a restart.
//!
//! # The schedule
//!
//! wireguard-tools leaves this to `contrib/reresolve-dns/reresolve-dns.sh`,
//! run every 30 seconds: for each peer of the config with an Endpoint, if its
//! latest handshake is more than 135 seconds old (REKEY_AFTER_TIME, 120 s,
//! plus margin: a working session re-handshakes every two minutes while
//! traffic flows), it sets the endpoint from the config again, which looks
//! the name up. We do the same inside the engine, for the peers whose
//! Endpoint is a name: every [`CHECK_EVERY`], a peer whose latest handshake
//! (or, before the first, the engine's start) is older than [`STALE_AFTER`]
//! has its name looked up; if the current endpoint is not among the
//! addresses found, the first of them becomes the endpoint and that is
//! logged. As with the script, an endpoint set by `wg set` on such a peer
//! gives way to the name once the peer has been silent that long, and a peer
//! that roamed keeps its address while it answers.
//!
//! # Where the lookup runs
//!
//! The confined engine may not do it: `getaddrinfo` reads `/etc/hosts`,
//! `/etc/resolv.conf` and `/etc/nsswitch.conf`, may load NSS modules and
//! talks TCP to DNS servers, none of which the sandbox allows (see
//! [`crate::sandbox`]). So the lookup runs in a [`Sidecar`] forked before the
//! engine confines itself, which then `execve`s this binary again
//! ([`RESOLVER_ARG`]): the fork's memory is a copy of the engine's, private
//! key included, and the resolver is the one process of ours that parses
//! answers from the network outside the sandbox, so it starts from a fresh
//! image that never held a key. It keeps its channel, `no_new_privs`, no
//! capability, and dies with the engine. An engine with `--no-sandbox` looks
//! names up itself, on tokio's blocking pool.

#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

use std::ffi::{CString, OsString};
use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, SystemTime};

use gotatun::device::uapi::UapiClient;
use gotatun::device::uapi::command::{Get, Peer, Request, Response, Set, SetPeer};

use crate::config::{Config, Endpoint};
use crate::fdpass::Channel;
use crate::keys::Key;
use crate::sidecar::{self, Sidecar};

/// How often the peers with a name are looked at (reresolve-dns.sh's cron).
pub const CHECK_EVERY: Duration = Duration::from_secs(30);

/// A peer without a handshake for longer than this has its name looked up
/// again (reresolve-dns.sh's 135 s).
pub const STALE_AFTER: Duration = Duration::from_secs(135);

/// How long one lookup may take: glibc's default is 5 s per try, two tries,
/// for each of up to three servers.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(30);

/// The first argument that makes this binary the resolver process, followed
/// by its channel's descriptor number. Not a subcommand: nobody but the
/// sidecar starts it.
pub const RESOLVER_ARG: &str = "__resolve-endpoints";

/// Answer tags: addresses, or why there are none.
const ANSWER_ADDRS: u8 = b'A';
const ANSWER_ERROR: u8 = b'E';

/// A peer whose Endpoint is a name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamedPeer {
    pub key: [u8; 32],
    pub host: String,
    pub port: u16,
}

/// The peers of `config` whose Endpoint is a name.
pub fn named_peers(config: &Config) -> Vec<NamedPeer> {
    config
        .peers
        .iter()
        .filter_map(|peer| match &peer.endpoint {
            Some(Endpoint::Host { host, port }) => Some(NamedPeer {
                key: *peer.public_key.as_bytes(),
                host: host.clone(),
                port: *port,
            }),
            _ => None,
        })
        .collect()
}

/// Looks names up for the engine.
#[derive(Debug)]
pub enum Resolver {
    /// On the blocking pool (an engine without the sandbox).
    InProcess,
    /// In the resolver process (a confined engine).
    Delegated(Sidecar),
}

impl Resolver {
    /// Start the resolver process; see the module documentation. Must be
    /// called while the process is single-threaded and not yet confined.
    ///
    /// # Errors
    ///
    /// When the socketpair or the fork fails.
    pub fn spawn() -> io::Result<Self> {
        let sidecar = Sidecar::spawn(crate::sandbox::caps::Keep::default(), exec_resolver)?;
        Ok(Self::Delegated(sidecar))
    }

    /// Every address `host` has, with `port`.
    ///
    /// # Errors
    ///
    /// A one-line reason: the name does not resolve, or the resolver process
    /// does not answer.
    pub async fn lookup(&mut self, host: &str, port: u16) -> Result<Vec<SocketAddr>, String> {
        match self {
            Self::InProcess => {
                let host = host.to_owned();
                tokio::task::spawn_blocking(move || lookup(&host, port))
                    .await
                    .map_err(|e| e.to_string())?
            }
            Self::Delegated(sidecar) => {
                let pid = sidecar.pid();
                let answer = sidecar
                    .ask(&question(host, port), None, LOOKUP_TIMEOUT)
                    .await
                    .map_err(|e| format!("the resolver process {pid} does not answer: {e}"))?;
                decode(&answer).unwrap_or_else(|| Err("garbled answer from the resolver".into()))
            }
        }
    }
}

/// `getaddrinfo`, through std.
fn lookup(host: &str, port: u16) -> Result<Vec<SocketAddr>, String> {
    let found: Vec<_> = (host, port)
        .to_socket_addrs()
        .map_err(|e| e.to_string())?
        .collect();
    if found.is_empty() {
        return Err("the name has no addresses".to_owned());
    }
    Ok(found)
}

/// The port, a space, the name.
fn question(host: &str, port: u16) -> Vec<u8> {
    format!("{port} {host}").into_bytes()
}

fn parse_question(question: &[u8]) -> Option<(&str, u16)> {
    let (port, host) = std::str::from_utf8(question).ok()?.split_once(' ')?;
    Some((host, port.parse().ok()?))
}

/// `A` and the addresses one per line, or `E` and the reason.
fn encode(answer: &Result<Vec<SocketAddr>, String>) -> Vec<u8> {
    let (tag, text) = match answer {
        Ok(addrs) => {
            // Far more than any name has, and well inside a message.
            let lines: Vec<_> = addrs.iter().take(64).map(ToString::to_string).collect();
            (ANSWER_ADDRS, lines.join("\n"))
        }
        Err(reason) => (ANSWER_ERROR, reason.chars().take(512).collect()),
    };
    let mut out = vec![tag];
    out.extend_from_slice(text.as_bytes());
    out
}

fn decode(data: &[u8]) -> Option<Result<Vec<SocketAddr>, String>> {
    let (&tag, rest) = data.split_first()?;
    let text = std::str::from_utf8(rest).ok()?;
    match tag {
        ANSWER_ADDRS => text
            .lines()
            .map(|l| l.parse().ok())
            .collect::<Option<_>>()
            .map(Ok),
        ANSWER_ERROR => Some(Err(text.to_owned())),
        _ => None,
    }
}

/// In the sidecar: become the resolver, a fresh image of this binary that
/// never held a key. If `execve` fails the sidecar ends, and the engine's
/// lookups fail with "does not answer" (logged, the endpoints stay).
fn exec_resolver(channel: Channel) {
    let Ok(fd) = CString::new(channel.as_raw_fd().to_string()) else {
        return;
    };
    if channel.keep_across_exec().is_err() {
        return;
    }
    let argv = [
        c"wireguard4netns".to_owned(),
        c"__resolve-endpoints".to_owned(),
        fd,
    ];
    let _ = nix::unistd::execv(c"/proc/self/exe", &argv);
}

/// If this process was started as the resolver, serve and return the exit
/// status; `None` for every other command line. Called first thing in `main`.
pub fn main_if_asked() -> Option<u8> {
    let mut args = std::env::args_os().skip(1);
    if args.next() != Some(OsString::from(RESOLVER_ARG)) {
        return None;
    }
    let Some(fd) = args.next().and_then(|a| a.to_str()?.parse::<RawFd>().ok()) else {
        return Some(2);
    };
    // It holds no key, but what it learns is the engine's business.
    if crate::lifecycle::make_undumpable().is_err() {
        return Some(1);
    }
    // SAFETY: the descriptor was handed over by the sidecar that exec'd us;
    // nothing in this fresh process owns it.
    let Ok(channel) = (unsafe { Channel::inherited(fd) }) else {
        return Some(1);
    };
    sidecar::serve(&channel, |question, _| {
        let answer = parse_question(question)
            .ok_or_else(|| "garbled question".to_owned())
            .and_then(|(host, port)| lookup(host, port));
        (encode(&answer), None)
    });
    Some(0)
}

/// Whether a peer whose latest handshake was at `handshake` (seconds since
/// the epoch, as the UAPI says) is stale at `now`; `since` stands in for a
/// peer that never had one.
fn is_stale(now: SystemTime, handshake: Option<u64>, since: SystemTime) -> bool {
    let last = handshake.map_or(since, |secs| {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    });
    now.duration_since(last).is_ok_and(|age| age > STALE_AFTER)
}

/// The endpoint to set, if any: none while the current one is among the
/// addresses found (round-robin names do not make us hop), else the first.
fn choose(current: Option<SocketAddr>, found: &[SocketAddr]) -> Option<SocketAddr> {
    match current {
        Some(current) if found.contains(&current) => None,
        _ => found.first().copied(),
    }
}

/// Follow the names of `peers` for as long as the device answers `client`.
pub async fn follow_names(client: UapiClient, mut resolver: Resolver, peers: Vec<NamedPeer>) {
    let started = SystemTime::now();
    let mut tick = tokio::time::interval(CHECK_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Which names failed last time, so a failure is logged once per streak.
    let mut failing = vec![false; peers.len()];
    loop {
        tick.tick().await;
        let Ok(Response::Get(state)) = client.send(Request::Get(Get::default())).await else {
            return;
        };
        for (named, failing) in peers.iter().zip(&mut failing) {
            let Some(peer) = state
                .peers
                .iter()
                .find(|p| p.peer.public_key.0 == named.key)
            else {
                continue;
            };
            if !is_stale(SystemTime::now(), peer.last_handshake_time_sec, started) {
                continue;
            }
            let name = Key::from_bytes(named.key);
            let current = peer.peer.endpoint;
            let found = match resolver.lookup(&named.host, named.port).await {
                Ok(found) => found,
                Err(reason) => {
                    if !std::mem::replace(failing, true) {
                        tracing::warn!(
                            "cannot look up {}:{} again for peer {name}: {reason}; its endpoint stays {}",
                            named.host,
                            named.port,
                            current.map_or_else(|| "unset".to_owned(), |e| e.to_string()),
                        );
                    }
                    continue;
                }
            };
            *failing = false;
            let Some(new) = choose(current, &found) else {
                continue;
            };
            if !set_endpoint(&client, named.key, new).await {
                return;
            }
            let was = current.map_or_else(|| "no endpoint".to_owned(), |e| e.to_string());
            tracing::info!(
                "peer {name}: {}:{} now resolves to {new} (was {was}); endpoint changed",
                named.host,
                named.port,
            );
        }
    }
}

/// Set the endpoint of the peer with `key`, if it still exists. False when
/// the device is gone.
async fn set_endpoint(client: &UapiClient, key: [u8; 32], endpoint: SocketAddr) -> bool {
    let peer = Peer::builder().public_key(key).endpoint(endpoint).build();
    let mut set = Set::builder().build();
    set.peers = vec![SetPeer::builder().peer(peer).update_only().build()];
    client.send(Request::Set(set)).await.is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn answers_round_trip() {
        let addrs = vec![addr("10.0.0.1:51820"), addr("[fd00::1]:51820")];
        assert_eq!(decode(&encode(&Ok(addrs.clone()))), Some(Ok(addrs)));
        let err = Err("no such host".to_owned());
        assert_eq!(decode(&encode(&err)), Some(err));
        assert_eq!(decode(b""), None);
        assert_eq!(decode(b"Anot an address"), None);
        assert_eq!(decode(b"X"), None);
    }

    #[test]
    fn questions_round_trip() {
        assert_eq!(
            parse_question(&question("peer.example", 51820)),
            Some(("peer.example", 51820))
        );
        assert_eq!(parse_question(b"70000 x"), None);
        assert_eq!(parse_question(b"51820"), None);
        assert_eq!(parse_question(b"\xff \xff"), None);
    }

    #[test]
    fn stale_after_135_s_without_handshake() {
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let at = |s: u64| start + Duration::from_secs(s);
        // Never a handshake: counted from the start.
        assert!(!is_stale(at(135), None, start));
        assert!(is_stale(at(136), None, start));
        // A handshake resets it.
        assert!(!is_stale(at(200), Some(1_000_100), start));
        assert!(is_stale(at(236), Some(1_000_100), start));
        // A clock that went back is not staleness.
        assert!(!is_stale(at(0), Some(1_000_100), start));
    }

    #[test]
    fn the_current_endpoint_is_kept_while_the_name_has_it() {
        let (a, b) = (addr("192.0.2.1:1"), addr("192.0.2.2:1"));
        assert_eq!(choose(Some(a), &[b, a]), None);
        assert_eq!(choose(Some(a), &[b]), Some(b));
        assert_eq!(choose(None, &[b, a]), Some(b));
        assert_eq!(choose(Some(a), &[]), None);
    }

    #[test]
    fn named_peers_are_those_with_a_host_endpoint() {
        let key = |n: u8| Key::from_bytes([n; 32]).to_string();
        let text = format!(
            "[Interface]\nPrivateKey = {}\n\
             [Peer]\nPublicKey = {}\nEndpoint = 192.0.2.1:51820\n\
             [Peer]\nPublicKey = {}\nEndpoint = peer.example:4242\n\
             [Peer]\nPublicKey = {}\n",
            key(1),
            key(2),
            key(3),
            key(4)
        );
        let config = Config::parse(&text, "test").unwrap();
        assert_eq!(
            named_peers(&config),
            vec![NamedPeer {
                key: [3; 32],
                host: "peer.example".to_owned(),
                port: 4242
            }]
        );
    }

    /// The resolver process answers from a fresh image: run as the test
    /// binary's child, it would be the test harness, so this checks the
    /// in-process path and the protocol; the exec'd process is shown end to
    /// end (tests/e2e_faults.rs, a hostname endpoint whose address changes).
    #[test]
    fn in_process_lookup_finds_localhost() {
        use crate::sandbox::testing::block_on;
        let found = block_on(Resolver::InProcess.lookup("localhost", 7)).unwrap();
        assert!(found.iter().all(|a| a.ip().is_loopback() && a.port() == 7));
        let err = block_on(Resolver::InProcess.lookup("no-such-host.invalid", 7)).unwrap_err();
        assert!(!err.is_empty());
    }
}
