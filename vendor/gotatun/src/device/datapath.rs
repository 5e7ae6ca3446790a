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

//! wireguard4netns: a connection's data path, replacing upstream's `handle_outgoing` and
//! `handle_incoming` and the buffered channels around them (`tun/buffer.rs`,
//! `udp/buffer.rs`, removed).
//!
//! Upstream ran each direction as three tasks joined by per-packet channels (TUN read →
//! encrypt → UDP send; UDP receive → decrypt → TUN write), took the device lock, the route
//! lookup and the peer lock once per packet, and encrypted (decrypted) in its one task, so
//! a direction was capped by one core. Here a direction is a sequential stage that reads a
//! batch (a TUN read's segments; a `recvmmsg`'s datagrams) and prepares it, the crypto of
//! the batch, and a sequential stage that finishes it in order and writes it out — the
//! ordered queues of wireguard-go, with batches for elements:
//!
//! - Outgoing: the TUN is read in the stage itself; per batch one device read lock, one
//!   route lookup per run of packets to the same address, one peer lock per run of packets
//!   to the same peer, under which `Tunn::prepare_outgoing_packet` pads, picks the session
//!   and reserves the nonce counter (the nonces are thus increasing in the order read).
//!   Then the batch is sealed and handed to the UDP socket whole (`send_many_to`).
//! - Incoming: `recv_many_from` in the stage itself; the rate limiter and the handshake and
//!   cookie packets are handled there, one by one, as upstream did. Data packets are
//!   prepared (`Tunn::prepare_incoming_data`: the session by receiver index, the quick
//!   replay check) under one peer lock per run, opened, then finished under the peer lock
//!   again, in the order received (`Tunn::finish_incoming_data`: the replay window, where a
//!   duplicate that passed the quick check is dropped, the current session, timers, bytes,
//!   the endpoint), checked against the allowed IPs and written to the TUN together.
//!
//! With one crypto worker the crypto runs inline in the first stage and so does the
//! second: one task per direction, no thread and no handoff. With more, while the first
//! stage keeps up with its source it still works inline (see `dispatch`: a handoff costs
//! more CPU than it saves on a machine whose cores are busy anyway); once it falls behind,
//! it submits each batch to the connection's [`CryptoPool`] and pushes the job's ticket
//! into a bounded FIFO; a second task takes the tickets in FIFO order, awaits each, and
//! sends or finishes and writes. A batch done inline while others are under way joins the
//! FIFO finished. Order per peer on the wire and on the TUN is therefore the order read,
//! whichever worker finishes first. At most [`IN_FLIGHT`] batches of at most
//! [`MAX_BATCH`] packets wait per direction (a slot is reserved before the job is
//! submitted), so the packet buffers under way stay within the pool's (`set_up`).
//!
//! Errors keep upstream's meaning for `watch_task`: a failing `recv_many_from` or a TUN
//! the kernel removed ends a task with an error (the device's fatal error unless the
//! connection was retired); a refused datagram or packet is dropped and logged.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::sync::{Mutex, OwnedMutexGuard, RwLock, mpsc, oneshot};

use super::crypto_pool::CryptoPool;
use super::peer_state::PeerState;
use super::{DeviceState, DeviceTransports, Error};
use crate::log_limit::{LOG_INTERVAL, LogLimit, log_limited};
use crate::noise::errors::WireGuardError;
use crate::noise::handshake::parse_handshake_anon;
use crate::noise::rate_limiter::RateLimiter;
use crate::noise::{OpenJob, Opened, Outgoing, TunnResult};
use crate::packet::{Ip, Packet, PacketBufPool, WgKind};
use crate::tun::{IpRecv, IpSend, MtuWatcher};
use crate::udp::{UdpRecv, UdpSend};
use crate::x25519;

/// The most packets in one batch, the unit of crypto work and of hand-over: a 64 KiB TCP
/// super-packet of 1420-byte segments is ~46, one GRO datagram of them ~44.
pub(crate) const MAX_BATCH: usize = 64;

/// Batches waiting per direction between the stages when crypto runs on workers: 7 × 64
/// packets each way, and a batch being read, stay within the 4 × 256 buffers of the pool.
/// Fewer (workers + 1) measured slower on two cores: when a worker finishes, the stage that
/// takes its result waits for a core, and with a short queue the workers ran dry meanwhile.
pub(crate) const IN_FLIGHT: usize = 7;

/// How long a new connection waits for the TUN halves that the previous one's tasks held.
const TUN_LOCK_TIMEOUT: Duration = Duration::from_secs(5);

/// Where a direction's crypto runs.
pub(crate) enum Crypto<B> {
    /// In the first stage itself, which then also does the second.
    Inline,
    /// On the pool; the results go, in order, to the second stage's task.
    Pool {
        pool: Arc<CryptoPool>,
        tickets: mpsc::Sender<oneshot::Receiver<B>>,
        /// Batches given to the second stage and not yet through it.
        in_flight: Arc<AtomicUsize>,
    },
}

/// A direction's crypto on `pool` with its FIFO of tickets: the first stage's end and the
/// second stage's.
pub(crate) fn ordered<B>(pool: &Arc<CryptoPool>) -> (Crypto<B>, Tickets<B>) {
    let (tickets, rx) = mpsc::channel(IN_FLIGHT);
    let in_flight = Arc::new(AtomicUsize::new(0));
    let second = Tickets {
        rx,
        in_flight: Arc::clone(&in_flight),
    };
    let first = Crypto::Pool {
        pool: Arc::clone(pool),
        tickets,
        in_flight,
    };
    (first, second)
}

/// The receiving end of a direction's FIFO of tickets.
pub(crate) struct Tickets<B> {
    rx: mpsc::Receiver<oneshot::Receiver<B>>,
    in_flight: Arc<AtomicUsize>,
}

impl<B> Tickets<B> {
    /// The next batch in order (`None`: the first stage is gone); `Err` if its job
    /// panicked (logged by the pool). Call [`Tickets::done`] once it is through.
    async fn next(&mut self) -> Option<Result<B, oneshot::error::RecvError>> {
        let ticket = self.rx.recv().await?;
        Some(ticket.await)
    }

    fn done(&self) {
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Packets to send, prepared under their peer's lock, and where to.
pub(crate) struct OutBatch {
    packets: Vec<(Outgoing, SocketAddr)>,
    /// For DAITA's hook after encryption: each run's peer and length.
    #[cfg(feature = "daita")]
    runs: Vec<(Arc<Mutex<PeerState>>, usize)>,
}

/// An [`OutBatch`] sealed.
pub(crate) struct SealedBatch {
    packets: Vec<(WgKind, SocketAddr)>,
    #[cfg(feature = "daita")]
    runs: Vec<(Arc<Mutex<PeerState>>, usize)>,
}

impl OutBatch {
    fn new() -> Self {
        OutBatch {
            packets: Vec::with_capacity(MAX_BATCH),
            #[cfg(feature = "daita")]
            runs: Vec::new(),
        }
    }

    fn seal(self) -> SealedBatch {
        SealedBatch {
            packets: self
                .packets
                .into_iter()
                .map(|(packet, to)| (packet.seal(), to))
                .collect(),
            #[cfg(feature = "daita")]
            runs: self.runs,
        }
    }
}

/// Data packets received, prepared under their peer's lock: each run's peer and length.
pub(crate) struct InBatch {
    packets: Vec<(OpenJob, SocketAddr)>,
    runs: Vec<(Arc<Mutex<PeerState>>, usize)>,
}

/// An [`InBatch`] opened (a packet that fails to authenticate is an `Err`, kept in place so
/// that the runs still count right).
pub(crate) struct OpenedBatch {
    packets: Vec<(Result<Opened, WireGuardError>, SocketAddr)>,
    runs: Vec<(Arc<Mutex<PeerState>>, usize)>,
}

impl InBatch {
    fn new() -> Self {
        InBatch {
            packets: Vec::with_capacity(MAX_BATCH),
            runs: Vec::new(),
        }
    }

    fn open(self) -> OpenedBatch {
        OpenedBatch {
            packets: self
                .packets
                .into_iter()
                .map(|(job, from)| (job.open(), from))
                .collect(),
            runs: self.runs,
        }
    }
}

/// Hand `batch` on. With `Inline`, the crypto and `inline` (the second stage's work) run
/// here. With a pool, the crypto runs on a worker only while the stage is behind its source
/// (`backlog`, see [`Behind`]), the batch's ticket joining the FIFO; otherwise here, and
/// then, if nothing is ahead of it in the FIFO and the stage may do the second stage's work
/// (`direct`: the outgoing stage shares the UDP sender; the TUN's writing half belongs to
/// `write_opened`), `inline` runs here too, else the ticket goes into the FIFO finished.
/// Handing a batch to a thread and taking it back costs a wake-up on each side; on two
/// cores shared with the kernel and the applications that cost more than the crypto it
/// spread (measured with bench/run: 0.6 CPU-s per GB more with two workers than with one,
/// at the same throughput). A stage that keeps up with its source needs no help, and one
/// that falls behind gets it. `Err` if the second stage is gone.
async fn dispatch<B: Send + 'static, R: Send + 'static>(
    crypto: &Crypto<R>,
    batch: B,
    work: fn(B) -> R,
    backlog: bool,
    direct: bool,
    inline: impl AsyncFnOnce(R) -> Result<(), Error>,
) -> Result<(), Error> {
    match crypto {
        Crypto::Inline => inline(work(batch)).await,
        Crypto::Pool {
            pool,
            tickets,
            in_flight,
        } => {
            if !backlog && direct && in_flight.load(Ordering::Acquire) == 0 {
                // Nothing ahead of it: through the second stage's work here, as `Inline`.
                return inline(work(batch)).await;
            }
            let slot = tickets.reserve().await.map_err(|_| stage_gone())?;
            in_flight.fetch_add(1, Ordering::AcqRel);
            if backlog {
                slot.send(pool.run(move || work(batch)));
            } else {
                let (done, ticket) = oneshot::channel();
                let _ = done.send(work(batch));
                slot.send(ticket);
            }
            Ok(())
        }
    }
}

/// Reads in a row that found their data already waiting before a stage counts as behind
/// its source. A stage that keeps up finds its source empty after a burst; one that does
/// not finds data every time. (3 and 8 measured alike with bench/run.)
const BEHIND_AFTER: u32 = 3;

/// Whether a stage is behind its source (see [`BEHIND_AFTER`]).
#[derive(Default)]
struct Behind {
    ready_in_a_row: u32,
}

impl Behind {
    /// Await the read `fut` and count it: its result, and whether the stage is now behind.
    async fn read<F: Future>(&mut self, fut: F) -> (F::Output, bool) {
        let (out, waited) = waited(fut).await;
        (out, self.after_read(waited))
    }

    /// Count a read (`waited`: it had to wait for data); `true` while behind.
    fn after_read(&mut self, waited: bool) -> bool {
        self.ready_in_a_row = if waited {
            0
        } else {
            self.ready_in_a_row.saturating_add(1)
        };
        self.ready_in_a_row >= BEHIND_AFTER
    }
}

/// Await `fut`, and say whether it had to wait (`false`: its result was there already).
async fn waited<F: Future>(fut: F) -> (F::Output, bool) {
    let mut fut = std::pin::pin!(fut);
    let mut waited = false;
    let out = std::future::poll_fn(|cx| {
        let poll = fut.as_mut().poll(cx);
        waited |= poll.is_pending();
        poll
    })
    .await;
    (out, waited)
}

fn stage_gone() -> Error {
    Error::IoError(io::Error::new(
        io::ErrorKind::BrokenPipe,
        "the data path's next stage stopped",
    ))
}

/// Checks if an I/O error indicates the TUN device has been deleted or is unusable.
// wireguard4netns: upstream's, from the removed `tun/buffer.rs`.
pub(crate) fn is_fatal_tun_error(err: &io::Error) -> bool {
    #[cfg(target_os = "linux")]
    if matches!(
        err.raw_os_error(),
        Some(libc::EBADF) | Some(libc::EBADFD) | Some(libc::ENODEV)
    ) {
        return true;
    }

    #[cfg(windows)]
    {
        const ERROR_HANDLE_EOF: i32 = windows_sys::Win32::Foundation::ERROR_HANDLE_EOF as i32;

        if err.raw_os_error() == Some(ERROR_HANDLE_EOF) {
            return true;
        }

        // TODO: Propagate the underlying error from tun/wintun-bindings and remove this
        #[cfg(feature = "tun")]
        if let Some(ERROR_HANDLE_EOF) = err
            .get_ref()
            .and_then(|e| e.downcast_ref::<wintun_bindings::Error>())
            .and_then(|e| match e {
                wintun_bindings::Error::Io(io_err) => io_err.raw_os_error(),
                _ => None,
            })
        {
            return true;
        }
    }

    matches!(
        err.kind(),
        io::ErrorKind::NotFound
            | io::ErrorKind::UnexpectedEof
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::InvalidData
            | io::ErrorKind::InvalidInput
    )
}

/// Take one of the TUN's halves for this connection's lifetime. The previous connection's
/// tasks are stopped before a new one starts, but one dropped rather than stopped lets go
/// a moment later.
async fn lock_tun<I>(tun: Arc<Mutex<I>>) -> Result<OwnedMutexGuard<I>, Error> {
    tokio::time::timeout(TUN_LOCK_TIMEOUT, tun.lock_owned())
        .await
        .map_err(|_| {
            Error::IoError(io::Error::other(
                "the TUN is still held by a previous connection",
            ))
        })
}

/// The UDP socket's sending end as the data path shares it (`shared_sender`): one sender at
/// a time. The handshake path sends a handshake's keepalive and the packets queued for it
/// while it still holds the peer's lock, so they leave before anything the outgoing stage
/// prepares for that peer afterwards: on the wire, a peer's nonces keep increasing.
pub(crate) type SharedSender<U> = Arc<Mutex<UdpSender<U>>>;

pub(crate) fn shared_sender<U: UdpSend>(udp: U) -> SharedSender<U> {
    Arc::new(Mutex::new(UdpSender::new(udp)))
}

/// The sending end of the UDP socket, with its `send_many_to` buffer.
pub(crate) struct UdpSender<U: UdpSend> {
    udp: U,
    buf: U::SendManyBuf,
    run: Vec<(Packet, SocketAddr)>,
}

impl<U: UdpSend> UdpSender<U> {
    fn new(udp: U) -> Self {
        UdpSender {
            udp,
            buf: Default::default(),
            run: Vec::with_capacity(MAX_BATCH),
        }
    }

    /// Send packets in order: runs of one address family (`send_many_to` may refuse a mix)
    /// of at most what the socket takes at once. A refused send drops its run, as upstream's
    /// buffered sender did.
    async fn send(&mut self, packets: impl IntoIterator<Item = (WgKind, SocketAddr)>) {
        let max = self.udp.max_number_of_packets_to_send().max(1);
        for (packet, to) in packets {
            let same_family = self
                .run
                .first()
                .is_none_or(|(_, first)| first.is_ipv4() == to.is_ipv4());
            if !same_family || self.run.len() == max {
                self.flush().await;
            }
            self.run.push((packet.into(), to));
        }
        self.flush().await;
    }

    async fn flush(&mut self) {
        let result = match self.run.len() {
            0 => return,
            1 => match self.run.pop() {
                Some((packet, to)) => self.udp.send_to(packet, to).await,
                None => return,
            },
            _ => self.udp.send_many_to(&mut self.buf, &mut self.run).await,
        };
        if let Err(e) = result {
            tracing::trace!(
                "send_many_to failed, dropping {} packets: {e:#}",
                self.run.len()
            );
        }
        self.run.clear();
    }
}

/// Send a sealed batch (after DAITA's hook, which takes the peers' locks: before the
/// sender's, which the handshake path takes while it holds a peer's).
async fn send_batch<U: UdpSend>(sender: &SharedSender<U>, batch: SealedBatch) {
    #[cfg(feature = "daita")]
    let packets = daita_on_tunnel_sent(batch).await;
    #[cfg(not(feature = "daita"))]
    let packets = batch.packets;
    sender.lock().await.send(packets).await;
}

/// DAITA's hook on each packet sealed, under its peer's lock.
#[cfg(feature = "daita")]
async fn daita_on_tunnel_sent(batch: SealedBatch) -> Vec<(WgKind, SocketAddr)> {
    let mut packets = batch.packets.into_iter();
    let mut out = Vec::with_capacity(packets.len());
    for (peer, n) in batch.runs {
        let peer = peer.lock().await;
        for (packet, to) in packets.by_ref().take(n) {
            match &peer.daita {
                Some(daita) => out.extend(daita.on_tunnel_sent(packet).map(|p| (p, to))),
                None => out.push((packet, to)),
            }
        }
    }
    out.extend(packets);
    out
}

/// The sending half of the TUN, with the packets of the batch being finished.
struct TunWriter<I: IpSend> {
    tun: OwnedMutexGuard<I>,
    to_tun: Vec<Packet<Ip>>,
}

impl<I: IpSend> TunWriter<I> {
    async fn lock(tun: Arc<Mutex<I>>) -> Result<Self, Error> {
        Ok(TunWriter {
            tun: lock_tun(tun).await?,
            to_tun: Vec::with_capacity(MAX_BATCH),
        })
    }

    /// Write what `finish` gathered, in batches the TUN takes. Only a TUN the kernel
    /// removed is an error; a refused write is logged and its packets dropped.
    async fn flush(&mut self) -> Result<(), Error> {
        let max = self.tun.max_batch().max(1);
        while !self.to_tun.is_empty() {
            let rest = if self.to_tun.len() > max {
                self.to_tun.split_off(max)
            } else {
                Vec::new()
            };
            if let Err(e) = self.tun.send_many(&mut self.to_tun).await {
                if is_fatal_tun_error(&e) {
                    tracing::error!("TUN device was deleted: {e}");
                    return Err(Error::IoError(e));
                }
                // wireguard4netns: rate-limited, it can come once per packet.
                static SEND_ERROR: LogLimit = LogLimit::new(LOG_INTERVAL);
                log_limited!(error, SEND_ERROR, "Error sending IP packet: {e}");
            }
            self.to_tun = rest;
        }
        Ok(())
    }
}

impl<T: DeviceTransports> DeviceState<T> {
    /// The outgoing direction's first stage: read the TUN, prepare, and seal here or hand
    /// over (see the module).
    pub(crate) async fn handle_outgoing(
        device: Weak<RwLock<Self>>,
        tun_rx: Arc<Mutex<T::IpRecv>>,
        sender: SharedSender<impl UdpSend + 'static>,
        mut packet_pool: PacketBufPool,
        crypto: Crypto<SealedBatch>,
    ) -> Result<(), Error> {
        let mut tun_mtu = {
            let Some(device) = device.upgrade() else {
                return Ok(());
            };
            let device = device.read().await;
            device.tun_rx_mtu.clone()
        };
        let mut tun_rx = lock_tun(tun_rx).await?;
        let mut behind = Behind::default();
        loop {
            let (read, backlog) = behind.read(tun_rx.recv(&mut packet_pool)).await;
            let mut packets = match read {
                Ok(packets) => packets,
                Err(e) if is_fatal_tun_error(&e) => {
                    tracing::error!("TUN device was deleted: {e}");
                    return Err(Error::IoError(e));
                }
                Err(e) => {
                    // wireguard4netns: rate-limited, it can come once per packet.
                    static RECV_ERROR: LogLimit = LogLimit::new(LOG_INTERVAL);
                    log_limited!(error, RECV_ERROR, "Error receiving IP packet: {e}");
                    continue;
                }
            };
            loop {
                let mut batch = OutBatch::new();
                let more = {
                    let Some(device) = device.upgrade() else {
                        return Ok(());
                    };
                    let device = device.read().await;
                    Self::prepare_outgoing(&device, &mut packets, &mut batch, &mut tun_mtu).await
                };
                if batch.packets.is_empty() {
                    // The read ended where the last batch did.
                } else if batch
                    .packets
                    .iter()
                    .all(|(p, _)| matches!(p, Outgoing::Ready(_)))
                {
                    // Nothing to seal (the packets were queued for want of a session, and
                    // this is the handshake initiation): no worker, no waiting behind data.
                    send_batch(&sender, batch.seal()).await;
                } else {
                    dispatch(
                        &crypto,
                        batch,
                        OutBatch::seal,
                        backlog,
                        true,
                        async |sealed| {
                            send_batch(&sender, sealed).await;
                            Ok(())
                        },
                    )
                    .await?;
                }
                if !more {
                    break;
                }
            }
        }
    }

    /// The outgoing direction's second stage with a crypto pool: send the sealed batches
    /// in the order they were read.
    pub(crate) async fn send_sealed(
        mut tickets: Tickets<SealedBatch>,
        sender: SharedSender<impl UdpSend + 'static>,
    ) -> Result<(), Error> {
        while let Some(sealed) = tickets.next().await {
            if let Ok(sealed) = sealed {
                send_batch(&sender, sealed).await;
            }
            tickets.done();
        }
        Ok(())
    }

    /// Prepare packets from `packets` into `batch` until it is full (`true`: more may
    /// follow) or `packets` ends (`false`). One route lookup per run of packets to the same
    /// address, one peer lock per run of packets to the same peer.
    async fn prepare_outgoing(
        device: &Self,
        packets: &mut impl Iterator<Item = Packet<Ip>>,
        batch: &mut OutBatch,
        tun_mtu: &mut MtuWatcher,
    ) -> bool {
        let mut route: Option<(IpAddr, Option<&Arc<Mutex<PeerState>>>)> = None;
        let mut locked: Option<(
            &Arc<Mutex<PeerState>>,
            tokio::sync::MutexGuard<'_, PeerState>,
        )> = None;
        while batch.packets.len() < MAX_BATCH {
            let Some(packet) = packets.next() else {
                return false;
            };
            // Determine peer to use from the destination address
            let Some(dst_addr) = packet.destination() else {
                continue;
            };
            let peer_arc = match route {
                Some((dst, peer)) if dst == dst_addr => peer,
                _ => {
                    let peer = device.peers_by_ip.find(dst_addr);
                    route = Some((dst_addr, peer));
                    peer
                }
            };
            let Some(peer_arc) = peer_arc else {
                if cfg!(debug_assertions) {
                    tracing::trace!("Dropping packet with no routable peer");
                }
                // Drop packet if no peer has allowed IPs for destination
                continue;
            };
            if !locked
                .as_ref()
                .is_some_and(|(held, _)| Arc::ptr_eq(held, peer_arc))
            {
                drop(locked.take());
                locked = Some((peer_arc, peer_arc.lock().await));
            }
            let Some((peer_arc, peer)) = locked.as_mut() else {
                continue;
            };
            let Some(peer_addr) = peer.endpoint().addr else {
                // TODO: Implement the following error handling from section 3 of the
                // whitepaper: If [peer_addr] matches no peer, it is dropped, and the sender is
                // informed by a standard ICMP “no route to host” packet, as well as returning
                // -ENOKEY to user space.
                // wireguard4netns: once per packet this flooded the log (and `run`'s
                // terminal); a peer that has not told us where it is yet is a normal
                // state for a server, so a warning, rate-limited.
                static NO_ENDPOINT: LogLimit = LogLimit::new(LOG_INTERVAL);
                log_limited!(
                    warn,
                    NO_ENDPOINT,
                    "dropping packets to {dst_addr}: its peer has no endpoint (none configured, and no handshake from it yet)"
                );
                continue;
            };

            #[cfg(feature = "daita")]
            let packet = match &mut peer.daita {
                Some(daita) => daita.on_normal_sent(packet),
                None => packet.into(),
            };
            #[cfg(not(feature = "daita"))]
            let packet = packet.into();

            let Some(outgoing) = peer.tunnel.prepare_outgoing_packet(packet, Some(tun_mtu)) else {
                continue;
            };
            if let Outgoing::Ready(packet) = &outgoing {
                // Register sender_idx from outgoing handshake packets
                Self::register_handshake_idx(&device.peers_by_idx, packet, peer_arc);
            }
            #[cfg(feature = "daita")]
            match batch.runs.last_mut() {
                Some((last, n)) if Arc::ptr_eq(last, peer_arc) => *n += 1,
                _ => batch.runs.push((Arc::clone(peer_arc), 1)),
            }
            batch.packets.push((outgoing, peer_addr));
        }
        true
    }

    /// The incoming direction's first stage: receive datagrams, handle the control
    /// packets, prepare the data packets, and open and finish them here or hand them over
    /// (see the module).
    pub(crate) async fn handle_incoming(
        device: Weak<RwLock<Self>>,
        tun_tx: Option<Arc<Mutex<T::IpSend>>>,
        udp_tx: impl UdpSend + 'static,
        sender: SharedSender<impl UdpSend + 'static>,
        mut udp_rx: impl UdpRecv,
        mut packet_pool: PacketBufPool,
        crypto: Crypto<OpenedBatch>,
    ) -> Result<(), Error> {
        let (keys, mut tun_mtu) = {
            let Some(device) = device.upgrade() else {
                return Ok(());
            };
            let device = device.read().await;

            let (private_key, public_key) = device.key_pair.clone().expect("Key not set");
            let rate_limiter = device.rate_limiter.clone().unwrap();
            let tun_mtu = device.tun_rx_mtu.clone();
            ((private_key, public_key, rate_limiter), tun_mtu)
        };
        // With the crypto inline, this stage writes the TUN too.
        let mut writer = match tun_tx {
            Some(tun_tx) => Some(TunWriter::lock(tun_tx).await?),
            None => None,
        };
        let mut recv_buf = Default::default();
        let mut datagrams = Vec::new();
        let mut behind = Behind::default();
        loop {
            // wireguard4netns: its error ends the task, as upstream's buffered receiver
            // passed it on (one `recvmmsg` error is fatal; see `watch_task`).
            let (received, backlog) = behind
                .read(udp_rx.recv_many_from(&mut recv_buf, &mut packet_pool, &mut datagrams))
                .await;
            received?;
            let mut received = datagrams.drain(..);
            loop {
                let mut batch = InBatch::new();
                let more = {
                    let Some(device) = device.upgrade() else {
                        return Ok(());
                    };
                    let device = device.read().await;
                    Self::prepare_incoming(
                        &device,
                        &keys,
                        &mut received,
                        &mut batch,
                        (&udp_tx, &sender),
                        &mut tun_mtu,
                    )
                    .await
                };
                if !batch.packets.is_empty() {
                    dispatch(
                        &crypto,
                        batch,
                        InBatch::open,
                        backlog,
                        false,
                        async |opened| match writer.as_mut() {
                            Some(writer) => Self::finish_and_write(&device, writer, opened).await,
                            None => Err(stage_gone()),
                        },
                    )
                    .await?;
                }
                if !more {
                    break;
                }
            }
        }
    }

    /// The incoming direction's second stage with a crypto pool: finish the opened batches
    /// in the order they were received, and write them to the TUN.
    pub(crate) async fn write_opened(
        device: Weak<RwLock<Self>>,
        mut tickets: Tickets<OpenedBatch>,
        tun_tx: Arc<Mutex<T::IpSend>>,
    ) -> Result<(), Error> {
        let mut writer = TunWriter::lock(tun_tx).await?;
        while let Some(opened) = tickets.next().await {
            if let Ok(opened) = opened {
                Self::finish_and_write(&device, &mut writer, opened).await?;
            }
            tickets.done();
        }
        Ok(())
    }

    /// Finish `opened` in order under one peer lock per run, keep what may enter the TUN,
    /// and write it.
    async fn finish_and_write(
        device: &Weak<RwLock<Self>>,
        writer: &mut TunWriter<T::IpSend>,
        opened: OpenedBatch,
    ) -> Result<(), Error> {
        let Some(device) = device.upgrade() else {
            return Ok(());
        };
        {
            let device = device.read().await;
            Self::finish_incoming(&device, opened, &mut writer.to_tun).await;
        }
        writer.flush().await
    }

    async fn finish_incoming(device: &Self, opened: OpenedBatch, to_tun: &mut Vec<Packet<Ip>>) {
        let mut packets = opened.packets.into_iter();
        for (peer_arc, n) in opened.runs {
            let mut peer = peer_arc.lock().await;
            // The allowed-IPs check once per run of packets from one source address.
            let mut checked: Option<(IpAddr, bool)> = None;
            for (opened, addr) in packets.by_ref().take(n) {
                let Ok(opened) = opened else { continue };
                let Ok(packet) = peer.tunnel.finish_incoming_data(opened) else {
                    continue;
                };
                // Any authenticated packet moves the endpoint (`PeerState::handle_incoming_packet`).
                peer.endpoint.addr = Some(addr);

                #[cfg(feature = "daita")]
                let packet = match &mut peer.daita {
                    Some(daita) => match daita.on_data_recv(packet) {
                        Some(packet) => packet,
                        None => continue,
                    },
                    None => packet,
                };

                // keepalive
                if packet.is_empty() {
                    continue;
                }
                let Ok(packet) = packet.try_into_ipvx() else {
                    continue;
                };

                // Only accept the incoming packet if an outgoing packet to the source IP address
                // would be routed to the same peer. This is determined by the most specific
                // matching allowed IP range on the device.
                let (source, packet): (IpAddr, _) = packet.either(
                    |ipv4| (ipv4.header.source().into(), ipv4.into()),
                    |ipv6| (ipv6.header.source().into(), ipv6.into()),
                );
                let routed_to_this_peer = match checked {
                    Some((checked, allowed)) if checked == source => allowed,
                    _ => {
                        let allowed = device
                            .peers_by_ip
                            .find(source)
                            .is_some_and(|owner| Arc::ptr_eq(owner, &peer_arc));
                        checked = Some((source, allowed));
                        allowed
                    }
                };
                if !routed_to_this_peer {
                    if cfg!(debug_assertions) {
                        tracing::warn!(
                            "peer at {addr} is not allowed to send us packets from: {source}"
                        );
                    }
                    continue;
                }

                to_tun.push(packet);
            }
        }
    }

    /// Sort datagrams from `received` until `batch` is full (`true`: more may follow) or
    /// `received` ends (`false`): control packets are handled here and now, data packets
    /// prepared into `batch` under one peer lock per run of one peer's packets.
    async fn prepare_incoming(
        device: &Self,
        keys: &(x25519::StaticSecret, x25519::PublicKey, Arc<RateLimiter>),
        received: &mut impl Iterator<Item = (Packet, SocketAddr)>,
        batch: &mut InBatch,
        (udp_tx, sender): (&impl UdpSend, &SharedSender<impl UdpSend>),
        tun_mtu: &mut MtuWatcher,
    ) -> bool {
        let (private_key, public_key, rate_limiter) = keys;
        // The receiver index of the last data packet, and its peer, locked.
        let mut locked: Option<(u32, OwnedMutexGuard<PeerState>)> = None;
        while batch.packets.len() < MAX_BATCH {
            let Some((src_buf, addr)) = received.next() else {
                return false;
            };
            let parsed_packet = match rate_limiter.verify_packet(addr, src_buf) {
                Ok(packet) => packet,
                Err(TunnResult::WriteToNetwork(WgKind::CookieReply(cookie))) => {
                    // Note: Cookies should not affect counters.
                    // wireguard4netns: straight to the socket, whose errors are no longer
                    // fatal here (upstream's were errors of its queue, closed only at the end).
                    if let Err(e) = udp_tx.send_to(cookie.into(), addr).await {
                        tracing::trace!("cookie reply to {addr} failed: {e}");
                    }
                    continue;
                }
                Err(_) => continue,
            };
            let WgKind::Data(data) = parsed_packet else {
                drop(locked.take());
                Self::handle_control(
                    device,
                    private_key,
                    public_key,
                    parsed_packet,
                    addr,
                    sender,
                    tun_mtu,
                )
                .await;
                continue;
            };
            let idx = data.header.receiver_idx.get();
            if locked.as_ref().is_none_or(|(held, _)| *held != idx) {
                let Some(peer_arc) = device.peers_by_idx.lock().get(&idx).cloned() else {
                    continue;
                };
                let same_peer = batch
                    .runs
                    .last()
                    .is_some_and(|(last, _)| Arc::ptr_eq(last, &peer_arc));
                match locked.as_mut() {
                    // Another session of the peer held: same run.
                    Some((held, _)) if same_peer => *held = idx,
                    _ => {
                        // One peer lock at a time: let go before waiting for the next.
                        drop(locked.take());
                        let guard = Arc::clone(&peer_arc).lock_owned().await;
                        batch.runs.push((peer_arc, 0));
                        locked = Some((idx, guard));
                    }
                }
            }
            let (Some((_, peer)), Some((_, n))) = (locked.as_ref(), batch.runs.last_mut()) else {
                continue;
            };
            if let Ok(job) = peer.tunnel.prepare_incoming_data(data) {
                batch.packets.push((job, addr));
                *n += 1;
            }
        }
        true
    }

    /// A handshake or cookie packet, handled as upstream's `handle_incoming` did.
    async fn handle_control(
        device: &Self,
        private_key: &x25519::StaticSecret,
        public_key: &x25519::PublicKey,
        parsed_packet: WgKind,
        addr: SocketAddr,
        sender: &SharedSender<impl UdpSend>,
        tun_mtu: &mut MtuWatcher,
    ) {
        let peers = &device.peers;
        let peer = match &parsed_packet {
            WgKind::HandshakeInit(p) => parse_handshake_anon(private_key, public_key, p)
                .ok()
                .and_then(|hh| peers.get(&x25519::PublicKey::from(hh.peer_static_public)))
                .cloned(),
            WgKind::HandshakeResp(p) => device
                .peers_by_idx
                .lock()
                .get(&p.receiver_idx.get())
                .cloned(),
            WgKind::CookieReply(p) => device
                .peers_by_idx
                .lock()
                .get(&p.receiver_idx.get())
                .cloned(),
            WgKind::Data(p) => device
                .peers_by_idx
                .lock()
                .get(&p.header.receiver_idx.get())
                .cloned(),
        };
        let Some(peer_arc) = peer else { return };
        let mut peer = peer_arc.lock().await;

        let result = peer.handle_incoming_packet(parsed_packet, addr);

        #[cfg(feature = "daita")]
        let PeerState { tunnel, daita, .. } = &mut *peer;
        #[cfg(not(feature = "daita"))]
        let PeerState { tunnel, .. } = &mut *peer;

        // A data packet never comes here.
        let TunnResult::WriteToNetwork(packet) = result else {
            return;
        };
        // Register sender_idx from outgoing handshake packets
        Self::register_handshake_idx(&device.peers_by_idx, &packet, &peer_arc);

        // TODO: does this end up with the packets being out-of-order?
        let packets = std::iter::once(packet).chain(tunnel.get_queued_packets(tun_mtu));

        #[cfg(feature = "daita")]
        let packets = packets.filter_map(|p| match daita {
            Some(daita) => daita.on_tunnel_sent(p),
            None => Some(p),
        });

        // wireguard4netns: sent while the peer's lock is held (see `SharedSender`).
        let packets: Vec<_> = packets.map(|packet| (packet, addr)).collect();
        sender.lock().await.send(packets).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stage counts as behind only after [`BEHIND_AFTER`] reads in a row found data
    /// waiting, and no longer once a read had to wait.
    #[test]
    fn behind_after_a_run_of_reads_that_did_not_wait() {
        let mut behind = Behind::default();
        let seen: Vec<bool> = [false, false, false, false, true, false]
            .into_iter()
            .map(|waited| behind.after_read(waited))
            .collect();
        assert_eq!(seen, [false, false, true, true, false, false]);
    }

    /// `waited` tells a future that was ready from one that had to wait.
    #[tokio::test]
    async fn waited_tells_ready_from_pending() {
        assert_eq!(waited(async { 1 }).await, (1, false));
        assert_eq!(
            waited(async {
                tokio::task::yield_now().await;
                2
            })
            .await,
            (2, true)
        );
    }
}
