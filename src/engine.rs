//! Wiring gotatun's WireGuard `Device`: our TUN as its packet source and sink, a
//! UDP socket in the caller's network namespace, and the parsed config as its
//! initial state. The UAPI server half is plugged in here; its socket transport
//! lives in `uapi`.
//!
//! gotatun runs a connection as tasks (UDP receive and decrypt, TUN read and
//! encrypt, timers; with `--threads N` above 1 a direction that falls behind
//! also runs on up to N - 1 helper threads, each peer's packets kept in
//! order; see `vendor/gotatun/src/device/datapath.rs`) that end for good on an
//! I/O error: one `recvmmsg` error and
//! no packet flows again, while the UAPI still answers. [`Engine::failed`]
//! reports such a death so the process can stop instead of serving a dead
//! tunnel. A reconfiguration (`set listen_port`, `private_key`, `fwmark`)
//! replaces the connection and its tasks end too; the vendored gotatun tells
//! those apart (`// wireguard4netns:` in `device/mod.rs`), so they are no failure.

#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::num::NonZeroUsize;

use std::collections::HashMap;
use std::time::Duration;

use gotatun::device::uapi::command::{Get, Request, Response};
use gotatun::device::uapi::{UapiClient, UapiServer};
use gotatun::device::{self, Device, Peer};
use gotatun::x25519::{PublicKey, StaticSecret};

use crate::config::Config;
use crate::keys::Key;
use crate::resolver::{self, Resolver};
use crate::tun::TunDevice;
use crate::udp::UdpFactory;

type Transports = (UdpFactory, TunDevice, TunDevice);

/// `SO_RCVBUF`/`SO_SNDBUF` of the UDP socket, as wireguard-go sets them: the
/// TUN hands us 64 KiB bursts (GSO), which overflow the default ~208 KiB
/// receive buffer of the peer's socket (and ours, for its bursts) and turn
/// into TCP retransmits. The kernel caps it at `net.core.rmem_max`/`wmem_max`.
const UDP_SOCKET_BUFFER: usize = 7 << 20;

/// Errors starting the engine.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("cannot start the WireGuard engine (ListenPort {port}): {source}")]
    Start {
        port: u16,
        #[source]
        source: device::Error,
    },
    #[error(
        "the WireGuard engine stopped working: {0} (hint: this is a bug or a fault of the host; restart the tunnel)"
    )]
    TaskDied(String),
}

/// A running WireGuard device.
pub struct Engine {
    /// Runs as long as it is held (its tasks stop when it is dropped).
    device: Device<Transports>,
}

/// The peers of `config` as gotatun wants them, with endpoints already resolved
/// (`endpoints[i]` belongs to `config.peers[i]`).
fn peers(config: &Config, endpoints: &[Option<SocketAddr>]) -> Vec<Peer> {
    config
        .peers
        .iter()
        .zip(endpoints.iter().chain(std::iter::repeat(&None)))
        .map(|(p, endpoint)| {
            let mut peer = Peer::new(PublicKey::from(*p.public_key.as_bytes()))
                .with_allowed_ips(p.allowed_ips.iter().copied());
            peer.endpoint = *endpoint;
            peer.preshared_key = p.preshared_key.as_ref().map(|k| *k.as_bytes());
            peer.keepalive = p.persistent_keepalive;
            peer
        })
        .collect()
}

impl Engine {
    /// Start the device on `tun` with the config's key, port and peers,
    /// encrypting and decrypting on up to `threads` threads (`--threads`; with 1,
    /// on the runtime's). Needs a tokio runtime.
    pub async fn start(
        tun: TunDevice,
        config: &Config,
        endpoints: &[Option<SocketAddr>],
        uapi: UapiServer,
        threads: NonZeroUsize,
    ) -> Result<Self, EngineError> {
        let port = config.interface.listen_port.unwrap_or(0);
        let mut builder = device::build()
            .with_udp(UdpFactory::new(UDP_SOCKET_BUFFER))
            .with_ip(tun)
            .with_private_key(StaticSecret::from(*config.interface.private_key.as_bytes()))
            .with_listen_port(port)
            .with_peers(peers(config, endpoints))
            .with_crypto_workers(threads)
            .with_uapi(uapi);
        if let Some(mark) = config.interface.fwmark {
            builder = builder.with_fwmark(mark);
        }
        let device = builder
            .build()
            .await
            .map_err(|source| EngineError::Start { port, source })?;
        Ok(Self { device })
    }

    /// Resolves when one of the engine's tasks has died, saying which and why.
    pub async fn failed(&mut self) -> EngineError {
        EngineError::TaskDied(self.device.wait_failure().await)
    }
}

/// The engine's own watchers, for as long as the device runs: handshakes and
/// peers logged, endpoint names followed (when `resolver` is given; see
/// [`crate::resolver`]).
pub fn spawn_watchers(client: &UapiClient, config: &Config, resolver: Option<Resolver>) {
    tokio::spawn(log_peer_events(client.clone()));
    if let Some(resolver) = resolver {
        let peers = resolver::named_peers(config);
        tokio::spawn(resolver::follow_names(client.clone(), resolver, peers));
    }
}

/// Log handshakes and peers coming and going at info level, with the peer's key
/// and endpoint (gotatun logs handshakes at debug, without saying with whom).
/// Asks the device once a second through its UAPI channel; ends with the device.
async fn log_peer_events(client: UapiClient) {
    let mut seen: HashMap<[u8; 32], Option<u64>> = HashMap::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut first = true;
    loop {
        tick.tick().await;
        let Ok(Response::Get(state)) = client.send(Request::Get(Get::default())).await else {
            return;
        };
        let mut current = HashMap::with_capacity(state.peers.len());
        for peer in &state.peers {
            let key = peer.peer.public_key.0;
            let handshake = peer.last_handshake_time_sec;
            let name = Key::from_bytes(key);
            let before = seen.get(&key);
            if before.is_none() && !first {
                tracing::info!("peer {name} added");
            }
            // The device recomputes the handshake's wall-clock second on every
            // request, so it may move by one without a new handshake; real
            // handshakes are at least REKEY_TIMEOUT (5 s) apart.
            let earlier = before.copied().flatten();
            if let Some(at) = handshake
                && earlier.is_none_or(|earlier| at > earlier + 1)
            {
                let endpoint = peer
                    .peer
                    .endpoint
                    .map_or_else(|| "no endpoint".to_owned(), |e| e.to_string());
                tracing::info!("handshake with peer {name} ({endpoint})");
            }
            current.insert(key, handshake);
        }
        for key in seen.keys().filter(|k| !current.contains_key(*k)) {
            tracing::info!("peer {} removed", Key::from_bytes(*key));
        }
        seen = current;
        first = false;
    }
}
