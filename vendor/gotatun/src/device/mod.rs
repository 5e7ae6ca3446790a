// This Source Code Form is subject to the terms of the Mozilla Public
// License, v. 2.0. If a copy of the MPL was not distributed with this
// file, You can obtain one at https://mozilla.org/MPL/2.0/.
//
// This file incorporates work covered by the following copyright and
// permission notice:
//
//   Copyright (c) Mullvad VPN AB. All rights reserved.
//   Copyright (c) 2019 Cloudflare, Inc. All rights reserved.
//
// SPDX-License-Identifier: MPL-2.0

//! WireGuard device implementation with support for peers, handshakes, and packet routing.
pub(crate) mod allowed_ips;
mod builder;
pub mod configure;
#[cfg(feature = "daita")]
pub mod daita;
// wireguard4netns: the data path's helper threads.
mod helpers;
// wireguard4netns: the data path (upstream's `handle_incoming`/`handle_outgoing`, in
// rounds that the stages and their helper threads run).
mod datapath;
// wireguard4netns: upstream's `integration_tests` module is removed: all its tests are
// marked ignore and need docker and root, so they could never run here.
mod peer;
mod peer_state;
#[cfg(test)]
mod tests;
mod transports;
pub mod uapi;

use crate::noise::index_table::IndexTable;
use builder::Nul;
use futures::FutureExt;
use std::collections::HashMap;
use std::io::{self};
use std::num::NonZeroUsize;
use std::ops::BitOrAssign;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio::join;
use tokio::sync::RwLock;
use tokio::sync::{Mutex, watch};
use tracing::{Level, instrument};

use crate::log_limit::{LOG_INTERVAL, LogLimit, log_limited};
use crate::noise::Tunn;
use crate::noise::errors::WireGuardError;
use crate::noise::rate_limiter::RateLimiter;
use crate::packet::{PacketBufPool, WgKind};
use crate::task::Task;
use crate::tun::MtuWatcher;
use crate::udp::{UdpSend, UdpTransportFactory, UdpTransportFactoryParams};
use crate::x25519;
use allowed_ips::AllowedIps;
use helpers::Helpers;
use peer_state::{PeerState, PendingHandshake};

#[cfg(feature = "tun")]
pub use crate::device::transports::DefaultDeviceTransports;
pub use crate::device::transports::DeviceTransports;
pub use builder::DeviceBuilder;
pub use peer::Peer;

/// The number of handshakes per second to tolerate before using cookies
const HANDSHAKE_RATE_LIMIT: u64 = 100;

/// Maximum number of packet buffers that each channel may contain
// wireguard4netns: 4000 → 256. Four channels of 4000 buffers of 4 KiB let a
// single TCP flow queue ~60 MiB (resident memory under load, and latency under
// load). 256 packets still hold over a millisecond at 3 Gbit/s and five 64 KiB
// GSO bursts; 512 measured no faster and 3 MiB larger. The channels are gone
// (`datapath.rs`); the stages' pool still keeps up to 4 × this returned buffers.
const MAX_PACKET_BUFS: usize = 256;

/// Error of [`Device`]-related operations.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Multiple peers have the same public key
    #[error("Multiple peers have the same public key")]
    DuplicatePeer,

    /// I/O error
    #[error("i/o error: {0}")]
    IoError(#[from] io::Error),

    /// Failed to bind UDP sockets
    #[error("Failed to bind UDP sockets (params={1:?}): {0}")]
    Bind(#[source] io::Error, UdpTransportFactoryParams),

    /// TUN device error
    #[error("TUN device error: {0}")]
    #[cfg(feature = "tun")]
    TunDevice(#[from] crate::tun::tun_async_device::Error),

    /// Failed to initialize DAITA hooks
    #[error("Failed to initialize DAITA hooks")]
    #[cfg(feature = "daita")]
    DaitaHooks(#[from] daita::Error),

    /// No peer with the given public key exists
    #[error("No peer with the given public key exists")]
    PeerNotFound,

    /// The peer has no known endpoint
    #[error("The peer has no known endpoint")]
    NoEndpoint,

    /// The device has no active connection, e.g. because it is suspended
    #[error("The device has no active connection")]
    NotConnected,

    // wireguard4netns: which task died and why, for [`Device::wait_failure`] (the
    // task's own error is not `Clone`, so it is kept as text).
    /// A task of the current connection ended with an error: no traffic flows.
    #[error("task {task} failed: {reason}")]
    TaskFailed {
        /// The task's name (`handle_incoming`, `handle_outgoing`).
        task: &'static str,
        /// Its error.
        reason: String,
    },
}

/// A reference-counted handle to a WireGuard device.
pub struct Device<T: DeviceTransports> {
    inner: Arc<RwLock<DeviceState<T>>>,
    fatal_error: watch::Receiver<Option<Error>>,
}

/// Entry point for building a [`Device`].
///
/// See [`DeviceBuilder`] for options.
pub const fn build() -> DeviceBuilder<Nul, Nul, Nul> {
    DeviceBuilder::new()
}

// wireguard4netns: a bound socket's two halves (see `DeviceState::prebound`).
type UdpPair<T> = (
    <<T as DeviceTransports>::UdpTransportFactory as UdpTransportFactory>::Send,
    <<T as DeviceTransports>::UdpTransportFactory as UdpTransportFactory>::Recv,
);

/// wireguard4netns: prefixes a new peer took over in the routing table (`peers_by_ip`)
/// from the peers that had them. Their own lists (shown by `get`, carried over when a
/// `set` updates them) must drop them too, as in wireguard-go: otherwise the old peer
/// keeps listing the prefix, and an unrelated `set` on it re-inserts it into the table
/// and routes the prefix back to it. The lists sit behind the peers' async locks, hence
/// a separate step.
#[derive(Default)]
#[must_use]
struct Displaced(Vec<(Arc<Mutex<PeerState>>, ipnetwork::IpNetwork)>);

impl Displaced {
    async fn disown(self) {
        for (peer, network) in self.0 {
            peer.lock().await.allowed_ips.remove_network(network);
        }
    }

    /// For the synchronous configuration API: a peer whose lock a task holds right now
    /// keeps listing the prefix (the table, which routes, is right regardless).
    fn disown_now(self) {
        for (peer, network) in self.0 {
            match peer.try_lock() {
                Ok(mut peer) => peer.allowed_ips.remove_network(network),
                Err(_) => tracing::debug!("peer busy; {network} stays in its list"),
            }
        }
    }
}

pub(crate) struct DeviceState<T: DeviceTransports> {
    key_pair: Option<(x25519::StaticSecret, x25519::PublicKey)>,
    fwmark: Option<u32>,

    tun_tx: Arc<Mutex<T::IpSend>>,
    /// The tun device reader.
    ///
    /// This is `Arc<Mutex>`:ed because:
    /// - The task responsible from reading from the `tun_rx` must have ownership of it.
    /// - We must be able to claim the ownership after that task is stopped.
    ///
    /// This is implemented by the task taking the lock upon startup, and holding it until it is
    /// stopped.
    tun_rx: Arc<Mutex<T::IpRecv>>,

    /// MTU watcher of the TUN device.
    tun_rx_mtu: MtuWatcher,

    peers: HashMap<x25519::PublicKey, Arc<Mutex<PeerState>>>,
    peers_by_ip: AllowedIps<Arc<Mutex<PeerState>>>,
    peers_by_idx: parking_lot::Mutex<HashMap<u32, Arc<Mutex<PeerState>>>>,
    index_table: IndexTable,

    rate_limiter: Option<Arc<RateLimiter>>,

    port: u16,
    udp_factory: T::UdpTransportFactory,
    connection: Option<Connection<T>>,

    // wireguard4netns: threads per direction that encrypt (decrypt) while it falls behind
    // (`DeviceBuilder::with_crypto_workers`): its task and N - 1 helpers (`datapath.rs`).
    crypto_workers: NonZeroUsize,

    // wireguard4netns: the socket a UAPI `set` bound for a new listen port before it
    // changed anything; the next `Connection::set_up` takes it instead of binding.
    prebound: Option<UdpPair<T>>,

    /// Whether the device has been suspended via [`Device::suspend`].
    ///
    /// While suspended, the [`Connection`] (and all its tasks) is torn down so no
    /// traffic flows, but peers, keys, and config are retained for [`Device::resume`].
    suspended: bool,

    /// The task that responds to API requests.
    api: Option<Task>,

    /// If an unrecoverable error occurs (such as the TUN device being deleted),
    /// it will be stored here and propagated to all [`Device`] handles.
    fatal_error: watch::Sender<Option<Error>>,
}

pub(crate) struct Connection<T: DeviceTransports> {
    udp: <T::UdpTransportFactory as UdpTransportFactory>::Send,

    // wireguard4netns: set first thing in `stop`, so the errors its tasks hit while
    // they are torn down (closed channels) are not taken for fatal ones.
    retired: Arc<AtomicBool>,

    /// The task that reads IPv4 traffic from the UDP socket.
    incoming: Task,

    /// The task that handles keepalives/heartbeats/etc.
    timers: Task,

    /// The task that reads traffic from the TUN device.
    outgoing: Task,

    // wireguard4netns: with N crypto workers, N - 1 helper threads per direction (see
    // `datapath.rs`).
    helpers: Option<Helpers>,
}

impl<T: DeviceTransports> Connection<T> {
    #[instrument(level = Level::TRACE, skip_all, ret)]
    pub async fn set_up(device_arc: Arc<RwLock<DeviceState<T>>>) -> Result<(), Error> {
        let mut device = device_arc.write().await;

        // While suspended, no connection may be brought up: a reconfiguration
        // (adding a peer, changing the key/port, a UAPI `set=1`, ...) must not
        // silently resume the tunnel. The config change is still applied to
        // `DeviceState`; [`Device::resume`] brings the connection up afterwards
        // with the latest config.
        if device.suspended {
            return Ok(());
        }

        // wireguard4netns: the stages' pool (each helper has its own, `datapath.rs`) keeps
        // up to four channels' worth of returned buffers, as when the device had four
        // channels of MAX_PACKET_BUFS: with one channel's worth, every burst overflowed it
        // and each further packet buffer was a fresh 4 KiB calloc and a free (~0.3 per
        // packet, measured then). With rounds, the stages hold at most a read each.
        let pool = PacketBufPool::new_lazy(4 * MAX_PACKET_BUFS);

        // clean up existing connection
        let replaced = device.connection.take();
        let rebinding = replaced.is_some();
        if let Some(conn) = replaced {
            conn.stop().await;
        }

        // wireguard4netns: a socket bound ahead by a UAPI `set` (new port) is used as is;
        // otherwise the old connection's port is bound again (see `rebind_own_port`).
        let (udp_tx, udp_rx) = match device.prebound.take() {
            Some(bound) => bound,
            None if rebinding => device.rebind_own_port().await?,
            None => device.open_listen_socket().await?,
        };

        // Remember the bound port in case it was 0
        if let Some(addr) = udp_tx.local_addr()? {
            device.port = addr.port();
        }

        // Start DAITA/hooks tasks
        #[cfg(feature = "daita")]
        for peer_arc in device.peers.values() {
            PeerState::maybe_start_daita(
                peer_arc,
                pool.clone(),
                device.tun_rx_mtu.clone(),
                udp_tx.clone(),
            )
            .await?;
        }

        // wireguard4netns: a task's error is fatal only while its connection is the
        // current one. A reconfiguration (listen-port, private-key, fwmark) stops the old
        // connection, and its tasks then fail on their closed channels; upstream recorded
        // that as the device's fatal error, so it could not be told from a real death
        // (one `recvmmsg` error ends the UDP receive task for good). The error keeps the
        // task's name.
        let retired = Arc::new(AtomicBool::new(false));
        let watched = |task: &'static str, fut: _| {
            watch_task(task, fut, Arc::clone(&retired), device.fatal_error.clone())
        };

        // wireguard4netns: no buffered channels between the TUN, the crypto and the UDP
        // socket: each direction's stage reads its source itself, and with N crypto workers
        // N - 1 helper threads per direction run rounds beside it while it falls behind
        // (see `datapath.rs`).
        let sender = datapath::shared_sender(udp_tx.clone());
        let extra = device.crypto_workers.get() - 1;
        let out_lane = Arc::new(datapath::OutLane::<T>::new(extra));
        let in_lane = Arc::new(datapath::InLane::<T>::new(extra));
        let in_sinks = datapath::InSinks::<T>::new(udp_tx.clone(), Arc::clone(&sender));
        let helpers = match extra {
            0 => None,
            _ => {
                let helpers = Helpers::new();
                let runtime = tokio::runtime::Handle::current();
                for i in 0..extra {
                    let device = Arc::downgrade(&device_arc);
                    helpers.spawn(
                        format!("wg-out-{i}"),
                        &runtime,
                        DeviceState::help_outgoing(
                            device.clone(),
                            Arc::clone(&out_lane),
                            Arc::clone(&sender),
                        ),
                    )?;
                    helpers.spawn(
                        format!("wg-in-{i}"),
                        &runtime,
                        DeviceState::help_incoming(device, Arc::clone(&in_lane), in_sinks.clone()),
                    )?;
                }
                Some(helpers)
            }
        };

        // Start device tasks
        let outgoing = Task::spawn(
            "handle_outgoing",
            watched(
                "handle_outgoing",
                DeviceState::handle_outgoing(
                    Arc::downgrade(&device_arc),
                    Arc::clone(&device.tun_rx),
                    sender,
                    pool.clone(),
                    out_lane,
                )
                .boxed(),
            ),
        );
        let timers = Task::spawn(
            "handle_timers",
            DeviceState::handle_timers(Arc::downgrade(&device_arc), udp_tx.clone()),
        );
        let incoming = Task::spawn(
            "handle_incoming",
            watched(
                "handle_incoming",
                DeviceState::handle_incoming(
                    Arc::downgrade(&device_arc),
                    Arc::clone(&device.tun_tx),
                    udp_rx,
                    pool.clone(),
                    in_lane,
                    in_sinks,
                )
                .boxed(),
            ),
        );

        debug_assert!(device.connection.is_none());
        device.connection = Some(Connection {
            udp: udp_tx,
            retired,
            incoming,
            timers,
            outgoing,
            helpers,
        });

        Ok(())
    }
}

impl<T: DeviceTransports> Device<T> {
    /// Stop tunneling traffic and shut down the [`Device`].
    pub async fn stop(self) {
        Self::stop_inner(self.inner.clone()).await
    }

    async fn stop_inner(device: Arc<RwLock<DeviceState<T>>>) {
        tracing::debug!("Stopping device");

        let mut device = device.write().await;

        if let Some(api_task) = device.api.take() {
            api_task.stop().await;
        }

        if let Some(connection) = device.connection.take() {
            connection.stop().await;
        }
    }

    /// Suspend the device, stopping all tunnel activity.
    ///
    /// This tears down the connection and all its background tasks (timers,
    /// inbound, and outbound I/O), so no keepalives, handshakes, or data packets are
    /// sent or received. Peers, keys, and configuration are retained, and the device
    /// can be brought back with [`Device::resume`].
    ///
    /// This is primarily intended for platforms such as iOS, where the host process
    /// may be suspended by the system: an explicit suspend stops the timers (whose
    /// clock keeps advancing while suspended) from waking the process and flooding
    /// the link on resume.
    ///
    /// Calling this on an already-suspended device is a no-op.
    pub async fn suspend(&self) {
        tracing::debug!("Suspending device");

        let mut device = self.inner.write().await;

        if device.suspended {
            return;
        }

        if let Some(connection) = device.connection.take() {
            connection.stop().await;
        }

        device.suspended = true;
    }

    /// Resume a device that was suspended with [`Device::suspend`].
    ///
    /// This rebuilds the connection (rebinding sockets and respawning tasks).
    /// Existing sessions are cleared first, so the tunnel performs a fresh handshake
    /// rather than reusing a stale session.
    ///
    /// Calling this on a device that is not suspended is a no-op.
    pub async fn resume(&self) -> Result<(), Error> {
        tracing::debug!("Resuming device");

        {
            let mut device = self.inner.write().await;

            if !device.suspended {
                return Ok(());
            }

            // Force a fresh handshake on resume by dropping any existing sessions.
            for peer in device.peers.values() {
                peer.lock().await.reset();
            }

            device.suspended = false;

            // Nothing to bring up if the device has no peers (and therefore no key).
            if device.peers.is_empty() {
                return Ok(());
            }
        }

        Connection::set_up(self.inner.clone()).await
    }

    /// Wait until there is a session with the peer with `public_key` that is not yet due for
    /// rekeying.
    ///
    /// Returns immediately if such a session exists. Otherwise, a handshake initiation is sent
    /// unless one is already in progress, and this waits until a handshake initiated by us
    /// completes. Note that this function never times out.
    ///
    /// Returns [`Error::PeerNotFound`] if the peer does not exist or is removed while waiting.
    pub async fn force_handshake(&self, public_key: &x25519::PublicKey) -> Result<(), Error> {
        let mut completed = {
            let device = self.inner.read().await;
            let connection = device.connection.as_ref().ok_or(Error::NotConnected)?;
            let peer_arc = device.peers.get(public_key).ok_or(Error::PeerNotFound)?;

            let mut peer = peer_arc.lock().await;
            let Some(PendingHandshake {
                completed,
                initiation,
            }) = peer.force_handshake()?
            else {
                return Ok(());
            };

            if let Some((packet, endpoint_addr)) = initiation {
                let packet = WgKind::from(packet);
                DeviceState::<T>::register_handshake_idx(&device.peers_by_idx, &packet, peer_arc);
                drop(peer);

                // NOTE: Like `handle_timers`, this does not trigger DAITA events.
                connection.udp.send_to(packet.into(), endpoint_addr).await?;
            }

            completed
        };

        // The sender is dropped along with the peer
        completed.changed().await.map_err(|_| Error::PeerNotFound)
    }

    /// Wait until an unrecoverable error occurs.
    pub async fn wait(&mut self) {
        self.fatal_error
            .wait_for(|err| err.is_some())
            .await
            .expect("Sender will not be dropped while Self exists");
    }

    // wireguard4netns: `wait`, and what it waited for.
    /// Wait until an unrecoverable error occurs, and describe it.
    pub async fn wait_failure(&mut self) -> String {
        match self.fatal_error.wait_for(|err| err.is_some()).await {
            Ok(err) => err.as_ref().map(ToString::to_string).unwrap_or_default(),
            Err(_) => "the device is gone".to_owned(),
        }
    }
}

// wireguard4netns: runs a connection's task and records its error as the device's
// fatal error (the first one only), unless the connection was retired by then: a
// task stopped on purpose is not a task that died. The error is still returned, for
// the task's own log line.
async fn watch_task(
    task: &'static str,
    fut: futures::future::BoxFuture<'static, Result<(), Error>>,
    retired: Arc<AtomicBool>,
    fatal_error: watch::Sender<Option<Error>>,
) -> Result<(), Error> {
    let result = fut.await;
    if let Err(e) = &result {
        if retired.load(Ordering::Acquire) {
            tracing::debug!("task {task:?} of a replaced connection ended: {e}");
            return Ok(());
        }
        fatal_error.send_if_modified(|option| {
            let first = option.is_none();
            if first {
                *option = Some(Error::TaskFailed {
                    task,
                    reason: e.to_string(),
                });
            }
            first
        });
    }
    result
}

impl<T: DeviceTransports> Drop for Device<T> {
    fn drop(&mut self) {
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            tracing::warn!("Failed to get tokio runtime handle");
            return;
        };
        let device = self.inner.clone();
        handle.spawn(async move {
            Self::stop_inner(device).await;
        });
    }
}

/// Do we need to reconfigure the socket?
#[must_use]
#[derive(Clone, Copy, PartialEq, Eq)]
enum Reconfigure {
    Yes,
    No,
}

impl BitOrAssign for Reconfigure {
    fn bitor_assign(&mut self, rhs: Self) {
        *self = match (*self, rhs) {
            (Reconfigure::No, Reconfigure::No) => Reconfigure::No,
            _ => Reconfigure::Yes,
        };
    }
}

impl<T: DeviceTransports> DeviceState<T> {
    async fn remove_peer(&mut self, pub_key: &x25519::PublicKey) -> Option<Arc<Mutex<PeerState>>> {
        if let Some(peer) = self.peers.remove(pub_key) {
            // Remove all session index entries that point to this peer
            self.peers_by_idx
                .lock()
                .retain(|_idx, p| !Arc::ptr_eq(&peer, p));
            self.peers_by_ip
                .remove(&|p: &Arc<Mutex<PeerState>>| Arc::ptr_eq(&peer, p));

            tracing::info!("Peer removed");

            Some(peer)
        } else {
            None
        }
    }

    // wireguard4netns: returns the prefixes taken from other peers (see `Displaced`).
    fn add_peer(&mut self, peer_builder: Peer) -> Displaced {
        let pub_key = peer_builder.public_key;
        let allowed_ips = peer_builder.allowed_ips.clone();
        let peer = self.create_peer(peer_builder);
        let peer = Arc::new(Mutex::new(peer));

        self.peers.insert(pub_key, Arc::clone(&peer));

        let mut displaced = Displaced::default();
        for allowed_ip in allowed_ips {
            let addr = allowed_ip.network();
            let cidr = allowed_ip.prefix();
            if let Some(previous) = self.peers_by_ip.insert(addr, cidr, Arc::clone(&peer))
                && !Arc::ptr_eq(&previous, &peer)
            {
                displaced.0.push((previous, allowed_ip));
            }
        }

        tracing::info!("Peer added");
        displaced
    }

    fn create_peer(&mut self, peer_builder: Peer) -> PeerState {
        let device_key_pair = self
            .key_pair
            .as_ref()
            .expect("Private key must be set first");
        let rate_limiter = self
            .rate_limiter
            .as_ref()
            .expect("Setting private key creates rate limiter")
            .clone();

        let mut tunn = Tunn::new(
            device_key_pair.0.clone(),
            peer_builder.public_key,
            peer_builder.preshared_key,
            peer_builder.keepalive,
            self.index_table.clone(),
            rate_limiter,
        );

        if let Some(timer_params) = peer_builder.danger_timer_params {
            tunn.dangerously_set_timer_params(timer_params);
        }

        PeerState::new(
            tunn,
            peer_builder.endpoint,
            peer_builder.allowed_ips.as_slice(),
            #[cfg(feature = "daita")]
            peer_builder.daita_settings,
        )
    }

    fn set_port(&mut self, port: u16) -> Reconfigure {
        if self.port == port {
            Reconfigure::No
        } else {
            self.port = port;
            Reconfigure::Yes
        }
    }

    /// Bind two UDP sockets. One for IPv4, one for IPv6.
    async fn open_listen_socket(
        &mut self,
    ) -> Result<
        (
            <T::UdpTransportFactory as UdpTransportFactory>::Send,
            <T::UdpTransportFactory as UdpTransportFactory>::Recv,
        ),
        Error,
    > {
        let params = UdpTransportFactoryParams {
            addr: None,
            port: self.port,
            #[cfg(target_os = "linux")]
            fwmark: self.fwmark,
        };
        let (udp_tx, udp_rx) = self
            .udp_factory
            .bind(&params)
            .await
            .map_err(|e| Error::Bind(e, params))?;
        Ok((udp_tx, udp_rx))
    }

    /// wireguard4netns: binds the port the connection just stopped held. Its socket is
    /// owned by the buffered UDP tasks, which `Task`'s drop aborts but the runtime drops
    /// a moment later, so the first bind can meet our own socket (`EADDRINUSE`, which
    /// left the tunnel without UDP until the next `set`). While we hold the port nobody
    /// else can bind it, so the error is ours and short-lived: retry for up to 1 s.
    /// (`SO_REUSEPORT` would let both sockets live, with the kernel sharing datagrams
    /// between them, some to the one about to close, and other sockets of our uid could
    /// join the port.)
    async fn rebind_own_port(&mut self) -> Result<UdpPair<T>, Error> {
        let mut tries = 100;
        loop {
            match self.open_listen_socket().await {
                Err(Error::Bind(e, _)) if e.kind() == io::ErrorKind::AddrInUse && tries > 0 => {
                    tries -= 1;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                other => return other,
            }
        }
    }

    /// wireguard4netns: the fallible part of a UAPI `set`, done before anything changes
    /// so that a failed `set` changes nothing. A new listen port is bound now (with the
    /// new fwmark) and kept in `prebound` for `Connection::set_up`; a new fwmark on the
    /// same port is set on the live socket (it needs `CAP_NET_ADMIN`), so the tunnel
    /// keeps its socket either way. Without a connection (no key yet, suspended) there
    /// is nothing to bind yet. Returns the errno to answer.
    async fn prepare_udp(
        &mut self,
        port: Option<u16>,
        fwmark: Option<Option<u32>>,
    ) -> Result<(), i32> {
        let new_port = port.unwrap_or(self.port);
        let new_fwmark = fwmark.unwrap_or(self.fwmark);
        let Some(connection) = &self.connection else {
            return Ok(());
        };
        if new_port != self.port {
            let params = UdpTransportFactoryParams {
                addr: None,
                port: new_port,
                #[cfg(target_os = "linux")]
                fwmark: new_fwmark,
            };
            let bound = self.udp_factory.bind(&params).await.map_err(|e| {
                tracing::warn!("cannot bind UDP port {new_port}: {e}");
                e.raw_os_error().unwrap_or(libc::EINVAL)
            })?;
            self.prebound = Some(bound);
        } else if new_fwmark != self.fwmark {
            #[cfg(target_os = "linux")]
            connection
                .udp
                .set_fwmark(new_fwmark.unwrap_or(0))
                .map_err(|e| {
                    tracing::warn!("cannot set fwmark: {e}");
                    e.raw_os_error().unwrap_or(libc::EINVAL)
                })?;
        }
        Ok(())
    }

    async fn set_key(&mut self, private_key: x25519::StaticSecret) -> Reconfigure {
        let public_key = x25519::PublicKey::from(&private_key);
        // x25519 (rightly) doesn't let us expose secret keys for comparison.
        // If the public keys are the same, then the private keys are the same.
        if let Some(key_pair) = self.key_pair.as_ref()
            && key_pair.1 == public_key
        {
            return Reconfigure::No;
        }

        // wireguard4netns: a peer with the new public key goes, as in wireguard-go
        // (`SetPrivateKey`): it would be a peer of ourselves.
        self.remove_peer(&public_key).await;

        let rate_limiter = Arc::new(RateLimiter::new(&public_key, HANDSHAKE_RATE_LIMIT));

        for peer in self.peers.values_mut() {
            peer.lock().await.tunnel.set_static_private(
                private_key.clone(),
                public_key,
                Arc::clone(&rate_limiter),
            )
        }

        self.key_pair = Some((private_key, public_key));
        self.rate_limiter = Some(rate_limiter);

        Reconfigure::Yes
    }

    #[cfg(target_os = "linux")]
    fn set_fwmark(&mut self, mark: u32) -> Result<(), Error> {
        self.fwmark = Some(mark);

        if let Some(conn) = &mut self.connection {
            conn.udp.set_fwmark(mark)?;
        }

        // // Then on all currently connected sockets
        // for peer in self.peers.values() {
        //     if let Some(ref sock) = peer.delay_lock().endpoint().conn {
        //         sock.set_mark(mark)?
        //     }
        // }

        Ok(())
    }

    /// Remove all peers.
    ///
    /// # Returns
    /// Returns the number of peers removed.
    fn clear_peers(&mut self) -> usize {
        let n = self.peers.len();
        self.peers.clear();
        self.peers_by_idx.lock().clear();
        self.peers_by_ip.clear();
        // TODO: tear down connection?
        n
    }

    /// If `packet` is a handshake init or response, register its `sender_idx` in `peers_by_idx`.
    fn register_handshake_idx(
        peers_by_idx: &parking_lot::Mutex<HashMap<u32, Arc<Mutex<PeerState>>>>,
        packet: &WgKind,
        peer: &Arc<Mutex<PeerState>>,
    ) {
        let sender_idx = match packet {
            WgKind::HandshakeInit(p) => p.sender_idx.get(),
            WgKind::HandshakeResp(p) => p.sender_idx.get(),
            _ => return,
        };
        peers_by_idx.lock().insert(sender_idx, Arc::clone(peer));
    }

    #[instrument(level = Level::TRACE, skip_all)]
    async fn handle_timers(device: Weak<RwLock<Self>>, udp: impl UdpSend) {
        loop {
            let Some(device) = device.upgrade() else {
                break;
            };
            let device = device.read().await;
            // Remove stale session indices.
            //
            // `device.index_table` is a singleton which identifies ongoing handshakes and active sessions.
            // Once a session is stale it is dropped (see `update_session_timers`), and its
            // associated index is freed from the table.
            device
                .peers_by_idx
                .lock()
                .retain(|idx, _| device.index_table.in_use(*idx));

            // NOTE: Try to reset the packet counts here in addition to inside of `PeerState::update_timers`.
            // Otherwise if the device has no peers, try_reset_count will never trigger, and packet
            // counts will accumulate indefinitely. Fixes GHSA-m2rr-7rr7-vmp7.
            if let Some(rate_limiter) = device.rate_limiter.as_ref() {
                rate_limiter.try_reset_count();
            }

            // TODO: pass in peers instead?
            let peer_map = &device.peers;

            // Go over each peer and invoke the timer function
            for peer in peer_map.values() {
                let mut p = peer.lock().await;
                let endpoint_addr = match p.endpoint().addr {
                    Some(addr) => addr,
                    None => continue,
                };

                match p.update_timers() {
                    Ok(Some(packet)) => {
                        // Register sender_idx from outgoing handshake packets
                        Self::register_handshake_idx(&device.peers_by_idx, &packet, peer);

                        drop(p);

                        // NOTE: we don't bother with triggering TunnelRecv DAITA events here.

                        let _ = udp.send_to(packet.into(), endpoint_addr).await;
                    }
                    Ok(None) => {}
                    Err(WireGuardError::ConnectionExpired) => {}
                    // wireguard4netns: rate-limited, it could repeat every 250 ms per peer.
                    Err(e) => {
                        static TIMER_ERROR: LogLimit = LogLimit::new(LOG_INTERVAL);
                        log_limited!(error, TIMER_ERROR, "Timer error = {e:?}");
                    }
                }
            }

            drop(device);
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

impl<T: DeviceTransports> Connection<T> {
    async fn stop(self) {
        let Self {
            udp,
            retired,
            incoming,
            timers,
            outgoing,
            helpers,
        } = self;
        // wireguard4netns: before anything is torn down (see `retired`).
        retired.store(true, Ordering::Release);
        drop(udp);

        join!(incoming.stop(), timers.stop(), outgoing.stop(),);
        // wireguard4netns: the stages are gone; the helpers are stopped where they wait
        // and joined (each finishes at most the crypto of one read first).
        if let Some(helpers) = helpers {
            helpers.shutdown();
        }
    }
}
