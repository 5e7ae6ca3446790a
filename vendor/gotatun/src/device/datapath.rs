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
//! a direction was capped by one core. Here a direction runs in *rounds*. A round reads
//! its source once (a TUN read's segments; a `recvmmsg`'s datagrams) and prepares what it
//! read while it holds the source, then seals (opens) it, then waits for its turn and
//! finishes it and writes it out:
//!
//! - Outgoing: per read one device read lock, one route lookup per run of packets to the
//!   same address, one peer lock per run of packets to the same peer, under which
//!   `Tunn::prepare_outgoing_packet` pads, picks the session and reserves the nonce counter
//!   (so the nonces increase in the order read). Sealed, the packets go to the UDP socket
//!   whole (`send_many_to`).
//! - Incoming: the rate limiter and the handshake and cookie packets are handled as they
//!   are read, one by one, as upstream did. Data packets are prepared
//!   (`Tunn::prepare_incoming_data`: the session by receiver index, the quick replay check)
//!   under one peer lock per run, opened, then finished under the peer lock again, in the
//!   order received (`Tunn::finish_decrypted`: the replay window, where a duplicate
//!   that passed the quick check is dropped, the current session, timers, bytes, the
//!   endpoint), checked against the allowed IPs and written to the TUN together.
//!
//! Each direction has a stage, a task that runs its rounds one after the other, and with
//! N crypto workers N − 1 *helpers*, threads that run the same rounds. A round takes a
//! ticket while it holds the source, and finishes only when the round before it did
//! ([`Order`]): whoever reads first sends (writes) first, so per peer the order on the wire
//! and on the TUN is the order read, as wireguard-go's ordered queues keep it, and no
//! batch of packets moves between threads. A helper works only while the stage is behind
//! its source ([`Behind`]: it asks for help), and only as long as its own reads find data
//! waiting; then it sleeps until asked again. So a direction that keeps up runs in one
//! task with no thread woken and no handoff, and one that falls behind spreads over the
//! cores. (This module's first version handed each batch to a crypto thread and back: the
//! wake-ups and the packets' trips between the cores cost more than the crypto they
//! spread on two busy cores.) What the threads share is kept apart too: each stage and
//! helper has its own packet pool and batch vectors, a batch holds one reference to a
//! session per run of its packets, and a lock or turn that another round holds for a few
//! µs is retried before the round goes to sleep ([`SPIN`]).
//!
//! Errors keep upstream's meaning for `watch_task`: a failing `recv_many_from` or a TUN
//! the kernel removed ends a stage with an error (the device's fatal error unless the
//! connection was retired); a refused datagram or packet is dropped and logged. A helper
//! that meets such an error stops helping; its stage meets it too.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::task::Poll;
use std::time::Duration;

use tokio::sync::{Mutex, MutexGuard, Notify, OwnedMutexGuard, RwLock};

use super::peer_state::PeerState;
use super::{DeviceState, DeviceTransports, Error};
use crate::log_limit::{LOG_INTERVAL, LogLimit, log_limited};
use crate::noise::errors::WireGuardError;
use crate::noise::handshake::parse_handshake_anon;
use crate::noise::rate_limiter::RateLimiter;
use crate::noise::session::{Decrypted, Session, Unopened, Unsealed};
use crate::noise::{Outgoing, TunnResult};
use crate::packet::{Ip, Packet, PacketBufPool, WgKind};
use crate::tun::{IpRecv, IpSend, MtuWatcher};
use crate::udp::{UdpRecv, UdpSend, UdpTransportFactory};
use crate::x25519;

/// The packets of a usual read, which a round's vectors are made for: a 64 KiB TCP
/// super-packet of 1420-byte segments is ~46, one GRO datagram of them ~44. A read that
/// gives more grows them for the round (see `shrink`).
pub(crate) const MAX_BATCH: usize = 64;

/// The packet buffers a helper keeps for its reads (each stage or helper has a pool of its
/// own: the packets a round reads are sent or written by that round, and go back to the
/// pool of the thread that took them, with no other thread contending for its lock).
const HELPER_POOL: usize = 2 * MAX_BATCH;

/// How long a new connection waits for the TUN halves that the previous one's tasks held.
const TUN_LOCK_TIMEOUT: Duration = Duration::from_secs(5);

/// What a direction's stage shares with its helpers: its source, the order of its rounds,
/// and its call for help.
pub(crate) struct Lane<R> {
    /// `None` until the stage has taken the source (the TUN's reading half, which the
    /// previous connection's stage may still hold for a moment; the UDP socket).
    source: Mutex<Option<Reading<R>>>,
    /// Set while the stage waits on an empty source, which it holds meanwhile: a helper
    /// that finds the source taken then knows there is nothing to read.
    idle: AtomicBool,
    order: Order,
    /// The stage asks its helpers for help here (one is woken per call).
    help: Notify,
    helpers: usize,
}

/// A source, and the next round's ticket.
struct Reading<R> {
    rx: R,
    next_ticket: u64,
}

impl<R> Lane<R> {
    /// A direction with `helpers` helper threads.
    pub(crate) fn new(helpers: usize) -> Self {
        Lane {
            source: Mutex::new(None),
            idle: AtomicBool::new(false),
            order: Order::default(),
            help: Notify::new(),
            helpers,
        }
    }

    /// The stage gives the source to the lane (once, when it starts).
    async fn install(&self, rx: R) {
        let next_ticket = self.order.next.load(Ordering::Acquire);
        *self.source.lock().await = Some(Reading { rx, next_ticket });
    }

    /// The source for a round: the stage waits for it; a helper too, unless the stage holds
    /// it waiting for data (`None`: nothing to read now).
    async fn lock(&self, read: &Read<'_>) -> Option<MutexGuard<'_, Option<Reading<R>>>> {
        match read {
            Read::Wait(_) => Some(lock_soon(&self.source).await),
            Read::Try => match self.source.try_lock() {
                Ok(source) => Some(source),
                Err(_) if self.idle.load(Ordering::Acquire) => None,
                Err(_) => Some(lock_soon(&self.source).await),
            },
        }
    }

    /// Ask a helper for help (if there is one).
    fn ask_for_help(&self) {
        if self.helpers > 0 {
            self.help.notify_one();
        }
    }
}

/// How a round reads its source.
enum Read<'a> {
    /// The stage's: wait for data, and count whether it had to (`Behind`).
    Wait(&'a mut Behind),
    /// A helper's: take what is there, or nothing.
    Try,
}

/// What a round did.
#[derive(Debug, PartialEq)]
enum Round {
    /// It read its source (and sent or wrote what it could); `behind`: the stage is behind
    /// its source (see [`Behind`]).
    Read { behind: bool },
    /// A helper found nothing to read.
    Empty,
    /// The device is gone.
    Gone,
}

impl Round {
    /// Run `read` on the locked `reading`: the stage awaits it (with `lane.idle` set while
    /// it waits) and counts it; a helper polls it once (`None`: nothing there).
    async fn read<R, F: Future>(
        lane: &Lane<R>,
        how: Read<'_>,
        read: F,
    ) -> Option<(F::Output, bool)> {
        match how {
            Read::Wait(behind) => {
                let mut read = pin!(read);
                let mut waited = false;
                let out = std::future::poll_fn(|cx| {
                    let poll = read.as_mut().poll(cx);
                    if poll.is_pending() && !waited {
                        waited = true;
                        lane.idle.store(true, Ordering::Release);
                    }
                    poll
                })
                .await;
                if waited {
                    lane.idle.store(false, Ordering::Release);
                }
                Some((out, behind.after_read(waited)))
            }
            Read::Try => {
                let mut read = pin!(read);
                std::future::poll_fn(|cx| match read.as_mut().poll(cx) {
                    Poll::Ready(out) => Poll::Ready(Some((out, false))),
                    Poll::Pending => Poll::Ready(None),
                })
                .await
            }
        }
    }
}

/// The order in which a direction's rounds finish: by ticket, taken while the round held
/// the source.
#[derive(Default)]
pub(crate) struct Order {
    /// The ticket whose round may finish now.
    next: AtomicU64,
    /// Whether that round is finishing (has its turn) rather than still sealing or opening.
    finishing: AtomicBool,
    advanced: Notify,
}

/// A round's turn to finish; the next round's comes when it is dropped (also if the round
/// fails or is cancelled while it finishes).
struct Turn<'a>(&'a Order);

impl Order {
    /// Wait until the rounds before `ticket` are finished.
    async fn turn(&self, ticket: u64) -> Turn<'_> {
        if self.spin_for(ticket) {
            return self.take();
        }
        loop {
            let advanced = self.advanced.notified();
            let mut advanced = pin!(advanced);
            // Registered before the check, so that an advance in between is not missed.
            advanced.as_mut().enable();
            if self.next.load(Ordering::Acquire) == ticket {
                return self.take();
            }
            advanced.await;
        }
    }

    /// Whether `ticket`'s turn came while its predecessor was finishing (see [`SPIN`]).
    fn spin_for(&self, ticket: u64) -> bool {
        let turn = spin(|| {
            let next = self.next.load(Ordering::Acquire);
            if next == ticket {
                Some(true)
            } else if next.wrapping_add(1) == ticket && self.finishing.load(Ordering::Acquire) {
                None
            } else {
                Some(false)
            }
        });
        turn == Some(true)
    }

    fn take(&self) -> Turn<'_> {
        self.finishing.store(true, Ordering::Release);
        Turn(self)
    }
}

/// How long a round tries a lock held by another round (or retries for its turn while the
/// round before it finishes) before it waits in line: the data path holds its locks for a
/// few µs to a few tens, and a round that goes to sleep for one, and is woken, costs each
/// side more than that.
const SPIN: Duration = Duration::from_micros(30);

/// Call `attempt` until it gives something, for at most [`SPIN`].
fn spin<G>(mut attempt: impl FnMut() -> Option<G>) -> Option<G> {
    let mut started = None;
    for spin in 0u32.. {
        if let Some(got) = attempt() {
            return Some(got);
        }
        if spin % 64 == 0 {
            let started = *started.get_or_insert_with(std::time::Instant::now);
            if started.elapsed() > SPIN {
                return None;
            }
        }
        std::hint::spin_loop();
    }
    None
}

/// Lock `mutex`, trying for a moment (see [`SPIN`]) before waiting in line.
async fn lock_soon<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    match spin(|| mutex.try_lock().ok()) {
        Some(guard) => guard,
        None => mutex.lock().await,
    }
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        // Before the next may take its turn (and set it again).
        self.0.finishing.store(false, Ordering::Release);
        self.0.next.fetch_add(1, Ordering::AcqRel);
        self.0.advanced.notify_waiters();
    }
}

/// The outgoing direction's lane: its source is the TUN's reading half.
pub(crate) type OutLane<T> = Lane<OwnedMutexGuard<<T as DeviceTransports>::IpRecv>>;

type UdpRx<T> = <<T as DeviceTransports>::UdpTransportFactory as UdpTransportFactory>::Recv;
type UdpTx<T> = <<T as DeviceTransports>::UdpTransportFactory as UdpTransportFactory>::Send;

/// The incoming direction's lane: its source is the UDP socket.
pub(crate) type InLane<T> = Lane<InRx<UdpRx<T>>>;

/// The UDP socket's receiving end with its `recvmmsg` buffers.
pub(crate) struct InRx<U: UdpRecv> {
    udp_rx: U,
    recv_buf: U::RecvManyBuf,
    datagrams: Vec<(Packet, SocketAddr)>,
}

impl<U: UdpRecv> InRx<U> {
    fn new(udp_rx: U) -> Self {
        InRx {
            udp_rx,
            recv_buf: Default::default(),
            datagrams: Vec::new(),
        }
    }
}

/// Where the incoming direction's rounds write and answer: the TUN's writing half (which
/// the stage takes when it starts), the UDP socket for cookie replies, and the shared
/// sender for the handshake path.
pub(crate) struct InSinks<T: DeviceTransports> {
    tun: Arc<Mutex<Option<TunWriter<T::IpSend>>>>,
    udp: UdpTx<T>,
    sender: SharedSender<UdpTx<T>>,
}

impl<T: DeviceTransports> InSinks<T> {
    pub(crate) fn new(udp: UdpTx<T>, sender: SharedSender<UdpTx<T>>) -> Self {
        InSinks {
            tun: Arc::new(Mutex::new(None)),
            udp,
            sender,
        }
    }
}

impl<T: DeviceTransports> Clone for InSinks<T> {
    fn clone(&self) -> Self {
        InSinks {
            tun: Arc::clone(&self.tun),
            udp: self.udp.clone(),
            sender: Arc::clone(&self.sender),
        }
    }
}

/// What a stage or helper keeps from one outgoing round to the next: the buffers it reads
/// into, the TUN's MTU, and the vectors of its batch (allocated once: with one malloc
/// arena, two threads allocating them per round contended for its lock).
struct OutContext {
    pool: PacketBufPool,
    tun_mtu: MtuWatcher,
    prepared: OutBatch,
    sealed: SealedBatch,
}

impl OutContext {
    fn new(pool: PacketBufPool, tun_mtu: MtuWatcher) -> Self {
        OutContext {
            pool,
            tun_mtu,
            prepared: OutBatch::new(),
            sealed: SealedBatch::new(),
        }
    }
}

/// What a stage or helper keeps from one incoming round to the next: what the round
/// needs of the device (see `incoming_context`), the buffers it reads into, and the vectors
/// of its batch.
struct InContext {
    keys: (x25519::StaticSecret, x25519::PublicKey, Arc<RateLimiter>),
    tun_mtu: MtuWatcher,
    pool: PacketBufPool,
    prepared: InBatch,
    opened: OpenedBatch,
}

/// A packet prepared to send: to seal with the session of its run, or ready (a handshake
/// initiation).
enum Prepared {
    Seal(Unsealed),
    Ready(WgKind),
}

/// Runs of packets of one session: the session, and how many (one reference per run, not
/// per packet: see `SealJob::into_parts`).
type SessionRuns = Vec<(Arc<Session>, usize)>;

/// Count a packet of `session` at the end of `runs`.
fn count_in_run(runs: &mut SessionRuns, session: Arc<Session>) {
    match runs.last_mut() {
        Some((last, n)) if Arc::ptr_eq(last, &session) => *n += 1,
        _ => runs.push((session, 1)),
    }
}

/// The session of each packet in turn, from its runs.
struct RunCursor<'a> {
    runs: std::slice::Iter<'a, (Arc<Session>, usize)>,
    current: Option<(&'a Arc<Session>, usize)>,
}

impl<'a> RunCursor<'a> {
    fn new(runs: &'a SessionRuns) -> Self {
        RunCursor {
            runs: runs.iter(),
            current: None,
        }
    }

    fn next_session(&mut self) -> Option<&'a Arc<Session>> {
        loop {
            match &mut self.current {
                Some((session, left)) if *left > 0 => {
                    *left -= 1;
                    return Some(*session);
                }
                _ => {
                    let (session, n) = self.runs.next()?;
                    self.current = Some((session, *n));
                }
            }
        }
    }
}

/// Packets to send, prepared under their peer's lock, and where to.
pub(crate) struct OutBatch {
    packets: Vec<(Prepared, SocketAddr)>,
    sessions: SessionRuns,
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
            sessions: Vec::new(),
            #[cfg(feature = "daita")]
            runs: Vec::new(),
        }
    }

    /// Add a packet that `prepare_outgoing_packet` gave.
    fn push(&mut self, outgoing: Outgoing, to: SocketAddr) {
        let prepared = match outgoing {
            Outgoing::Seal(job) => {
                let (session, unsealed) = job.into_parts();
                count_in_run(&mut self.sessions, session);
                Prepared::Seal(unsealed)
            }
            Outgoing::Ready(packet) => Prepared::Ready(packet),
        };
        self.packets.push((prepared, to));
    }

    /// Seal the packets into `sealed` (which is empty), leaving this batch empty.
    fn seal_into(&mut self, sealed: &mut SealedBatch) {
        let mut sessions = RunCursor::new(&self.sessions);
        for (prepared, to) in self.packets.drain(..) {
            let packet = match prepared {
                Prepared::Ready(packet) => packet,
                Prepared::Seal(unsealed) => match sessions.next_session() {
                    Some(session) => unsealed.seal(session).into(),
                    // Each packet to seal was counted in a run.
                    None => continue,
                },
            };
            sealed.packets.push((packet, to));
        }
        self.sessions.clear();
        #[cfg(feature = "daita")]
        sealed.runs.append(&mut self.runs);
    }
}

impl SealedBatch {
    fn new() -> Self {
        SealedBatch {
            packets: Vec::with_capacity(MAX_BATCH),
            #[cfg(feature = "daita")]
            runs: Vec::new(),
        }
    }
}

/// Data packets received, prepared under their peer's lock: each run's peer and length,
/// and the runs of their sessions.
pub(crate) struct InBatch {
    packets: Vec<(Unopened, SocketAddr)>,
    runs: Vec<(Arc<Mutex<PeerState>>, usize)>,
    sessions: SessionRuns,
}

/// An [`InBatch`] opened (a packet that fails to authenticate is an `Err`, kept in place so
/// that the runs still count right).
pub(crate) struct OpenedBatch {
    packets: Vec<(Result<Decrypted, WireGuardError>, SocketAddr)>,
    runs: Vec<(Arc<Mutex<PeerState>>, usize)>,
    sessions: SessionRuns,
}

impl InBatch {
    fn new() -> Self {
        InBatch {
            packets: Vec::with_capacity(MAX_BATCH),
            runs: Vec::new(),
            sessions: Vec::new(),
        }
    }

    /// Open the packets into `opened` (which is empty), leaving this batch empty.
    fn open_into(&mut self, opened: &mut OpenedBatch) {
        let mut sessions = RunCursor::new(&self.sessions);
        for (unopened, from) in self.packets.drain(..) {
            // Each packet was counted in a run.
            if let Some(session) = sessions.next_session() {
                opened.packets.push((unopened.open(session), from));
            }
        }
        opened.runs.append(&mut self.runs);
        opened.sessions.append(&mut self.sessions);
    }
}

impl OpenedBatch {
    fn new() -> Self {
        OpenedBatch {
            packets: Vec::with_capacity(MAX_BATCH),
            runs: Vec::new(),
            sessions: Vec::new(),
        }
    }
}

/// Give back what a round's vectors grew to beyond a few batches (a read of many GRO
/// datagrams can bring thousands of packets; the next reads are likely smaller).
fn shrink<T>(v: &mut Vec<T>) {
    if v.capacity() > 4 * MAX_BATCH {
        v.shrink_to(MAX_BATCH);
    }
}

/// Reads in a row that found their data already waiting before a stage counts as behind
/// its source and asks for help. A stage that keeps up finds its source empty after a
/// burst; one that does not finds data every time. (3 and 8 measured alike with
/// bench/run.)
const BEHIND_AFTER: u32 = 3;

/// Whether a stage is behind its source (see [`BEHIND_AFTER`]).
#[derive(Default)]
struct Behind {
    ready_in_a_row: u32,
}

impl Behind {
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
async fn send_batch<U: UdpSend>(sender: &SharedSender<U>, batch: &mut SealedBatch) {
    #[cfg(feature = "daita")]
    let packets = daita_on_tunnel_sent(batch).await;
    #[cfg(not(feature = "daita"))]
    let packets = batch.packets.drain(..);
    lock_soon(sender).await.send(packets).await;
}

/// DAITA's hook on each packet sealed, under its peer's lock.
#[cfg(feature = "daita")]
async fn daita_on_tunnel_sent(batch: &mut SealedBatch) -> Vec<(WgKind, SocketAddr)> {
    let mut packets = batch.packets.drain(..);
    let mut out = Vec::with_capacity(packets.len());
    for (peer, n) in batch.runs.drain(..) {
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
    /// The outgoing direction's stage: take the TUN's reading half and run rounds, asking
    /// for help while behind (see the module).
    pub(crate) async fn handle_outgoing(
        device: Weak<RwLock<Self>>,
        tun_rx: Arc<Mutex<T::IpRecv>>,
        sender: SharedSender<impl UdpSend + 'static>,
        pool: PacketBufPool,
        lane: Arc<Lane<OwnedMutexGuard<T::IpRecv>>>,
    ) -> Result<(), Error> {
        let Some(tun_mtu) = Self::tun_mtu(&device).await else {
            return Ok(());
        };
        let mut context = OutContext::new(pool, tun_mtu);
        lane.install(lock_tun(tun_rx).await?).await;
        let mut behind = Behind::default();
        loop {
            let read = Read::Wait(&mut behind);
            match Self::outgoing_round(&device, &lane, &sender, &mut context, read).await? {
                Round::Read { behind: true } => lane.ask_for_help(),
                Round::Read { behind: false } | Round::Empty => {}
                Round::Gone => return Ok(()),
            }
        }
    }

    /// An outgoing helper (a thread of its own): when asked, run rounds while there is
    /// something to read.
    pub(crate) async fn help_outgoing(
        device: Weak<RwLock<Self>>,
        lane: Arc<Lane<OwnedMutexGuard<T::IpRecv>>>,
        sender: SharedSender<impl UdpSend + 'static>,
    ) {
        let Some(tun_mtu) = Self::tun_mtu(&device).await else {
            return;
        };
        let mut context = OutContext::new(PacketBufPool::new_lazy(HELPER_POOL), tun_mtu);
        loop {
            lane.help.notified().await;
            loop {
                let round = Self::outgoing_round(&device, &lane, &sender, &mut context, Read::Try);
                match round.await {
                    Ok(Round::Read { .. }) => {}
                    Ok(Round::Empty) => break,
                    Ok(Round::Gone) => return,
                    Err(e) => {
                        tracing::debug!("an outgoing helper stops: {e}");
                        return;
                    }
                }
            }
        }
    }

    async fn tun_mtu(device: &Weak<RwLock<Self>>) -> Option<MtuWatcher> {
        let device = device.upgrade()?;
        let device = device.read().await;
        Some(device.tun_rx_mtu.clone())
    }

    /// One outgoing round: read the TUN, prepare what it gave, seal it, and send it in
    /// turn.
    async fn outgoing_round(
        device: &Weak<RwLock<Self>>,
        lane: &Lane<OwnedMutexGuard<T::IpRecv>>,
        sender: &SharedSender<impl UdpSend + 'static>,
        context: &mut OutContext,
        how: Read<'_>,
    ) -> Result<Round, Error> {
        let OutContext {
            pool,
            tun_mtu,
            prepared,
            sealed,
        } = context;
        let (ticket, behind) = {
            let Some(mut source) = lane.lock(&how).await else {
                return Ok(Round::Empty);
            };
            let Some(Reading { rx, next_ticket }) = source.as_mut() else {
                return Ok(Round::Empty);
            };
            let Some((read, behind)) = Round::read(lane, how, rx.recv(pool)).await else {
                return Ok(Round::Empty);
            };
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
                    return Ok(Round::Read { behind });
                }
            };
            let Some(device) = device.upgrade() else {
                return Ok(Round::Gone);
            };
            let device = device.read().await;
            Self::prepare_outgoing(&device, &mut packets, prepared, tun_mtu).await;
            if prepared.packets.is_empty() {
                return Ok(Round::Read { behind });
            }
            let ticket = *next_ticket;
            *next_ticket += 1;
            (ticket, behind)
        };
        // The source is free for the next round while this one seals.
        prepared.seal_into(sealed);
        let turn = lane.order.turn(ticket).await;
        send_batch(sender, sealed).await;
        drop(turn);
        shrink(&mut prepared.packets);
        shrink(&mut sealed.packets);
        Ok(Round::Read { behind })
    }

    /// Prepare the packets from `packets` into `batch`. One route lookup per run of packets
    /// to the same address, one peer lock per run of packets to the same peer.
    async fn prepare_outgoing(
        device: &Self,
        packets: &mut impl Iterator<Item = Packet<Ip>>,
        batch: &mut OutBatch,
        tun_mtu: &mut MtuWatcher,
    ) {
        let mut route: Option<(IpAddr, Option<&Arc<Mutex<PeerState>>>)> = None;
        let mut locked: Option<(
            &Arc<Mutex<PeerState>>,
            tokio::sync::MutexGuard<'_, PeerState>,
        )> = None;
        for packet in packets {
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
                locked = Some((peer_arc, lock_soon(peer_arc).await));
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
            batch.push(outgoing, peer_addr);
        }
    }

    /// The incoming direction's stage: take the TUN's writing half and run rounds on the
    /// UDP socket, asking for help while behind (see the module).
    pub(crate) async fn handle_incoming(
        device: Weak<RwLock<Self>>,
        tun_tx: Arc<Mutex<T::IpSend>>,
        udp_rx: UdpRx<T>,
        pool: PacketBufPool,
        lane: Arc<InLane<T>>,
        out: InSinks<T>,
    ) -> Result<(), Error> {
        let Some(mut context) = Self::incoming_context(&device, pool).await else {
            return Ok(());
        };
        *out.tun.lock().await = Some(TunWriter::lock(tun_tx).await?);
        lane.install(InRx::new(udp_rx)).await;
        let mut behind = Behind::default();
        loop {
            let read = Read::Wait(&mut behind);
            match Self::incoming_round(&device, &lane, &out, &mut context, read).await? {
                Round::Read { behind: true } => lane.ask_for_help(),
                Round::Read { behind: false } | Round::Empty => {}
                Round::Gone => return Ok(()),
            }
        }
    }

    /// An incoming helper (a thread of its own): when asked, run rounds while there is
    /// something to receive.
    pub(crate) async fn help_incoming(
        device: Weak<RwLock<Self>>,
        lane: Arc<InLane<T>>,
        out: InSinks<T>,
    ) {
        let pool = PacketBufPool::new_lazy(HELPER_POOL);
        let Some(mut context) = Self::incoming_context(&device, pool).await else {
            return;
        };
        loop {
            lane.help.notified().await;
            loop {
                match Self::incoming_round(&device, &lane, &out, &mut context, Read::Try).await {
                    Ok(Round::Read { .. }) => {}
                    Ok(Round::Empty) => break,
                    Ok(Round::Gone) => return,
                    Err(e) => {
                        tracing::debug!("an incoming helper stops: {e}");
                        return;
                    }
                }
            }
        }
    }

    /// What an incoming round needs of the device: its keys and rate limiter (a new key
    /// makes a new connection), and the TUN's MTU.
    async fn incoming_context(
        device: &Weak<RwLock<Self>>,
        pool: PacketBufPool,
    ) -> Option<InContext> {
        let device = device.upgrade()?;
        let device = device.read().await;
        let (private_key, public_key) = device.key_pair.clone().expect("Key not set");
        let rate_limiter = device.rate_limiter.clone().unwrap();
        Some(InContext {
            keys: (private_key, public_key, rate_limiter),
            tun_mtu: device.tun_rx_mtu.clone(),
            pool,
            prepared: InBatch::new(),
            opened: OpenedBatch::new(),
        })
    }

    /// One incoming round: receive datagrams, handle the control packets, prepare the data
    /// packets, open them, and in turn finish them and write them to the TUN.
    async fn incoming_round(
        device: &Weak<RwLock<Self>>,
        lane: &InLane<T>,
        out: &InSinks<T>,
        context: &mut InContext,
        how: Read<'_>,
    ) -> Result<Round, Error> {
        let (device, ticket, behind) = {
            let Some(mut source) = lane.lock(&how).await else {
                return Ok(Round::Empty);
            };
            let Some(reading) = source.as_mut() else {
                return Ok(Round::Empty);
            };
            let InRx {
                udp_rx,
                recv_buf,
                datagrams,
            } = &mut reading.rx;
            let read = udp_rx.recv_many_from(recv_buf, &mut context.pool, datagrams);
            let Some((received, behind)) = Round::read(lane, how, read).await else {
                return Ok(Round::Empty);
            };
            // wireguard4netns: its error ends the stage, as upstream's buffered receiver
            // passed it on (one `recvmmsg` error is fatal; see `watch_task`).
            received?;
            let Some(device_arc) = device.upgrade() else {
                return Ok(Round::Gone);
            };
            let device = device_arc.read().await;
            let mut received = datagrams.drain(..);
            Self::prepare_incoming(
                &device,
                &context.keys,
                &mut received,
                &mut context.prepared,
                (&out.udp, &out.sender),
                &mut context.tun_mtu,
            )
            .await;
            if context.prepared.packets.is_empty() {
                return Ok(Round::Read { behind });
            }
            let ticket = reading.next_ticket;
            reading.next_ticket += 1;
            drop(device);
            (device_arc, ticket, behind)
        };
        // The source is free for the next round while this one opens.
        context.prepared.open_into(&mut context.opened);
        let turn = lane.order.turn(ticket).await;
        let mut tun = out.tun.lock().await;
        let writer = tun.as_mut().ok_or_else(stage_gone)?;
        {
            let device = device.read().await;
            Self::finish_incoming(&device, &mut context.opened, &mut writer.to_tun).await;
        }
        writer.flush().await?;
        drop(turn);
        shrink(&mut context.prepared.packets);
        shrink(&mut context.opened.packets);
        Ok(Round::Read { behind })
    }

    async fn finish_incoming(
        device: &Self,
        opened: &mut OpenedBatch,
        to_tun: &mut Vec<Packet<Ip>>,
    ) {
        let OpenedBatch {
            packets,
            runs,
            sessions,
        } = opened;
        let mut packets = packets.drain(..);
        let mut cursor = RunCursor::new(sessions);
        for (peer_arc, n) in runs.drain(..) {
            let mut peer = lock_soon(&peer_arc).await;
            // The allowed-IPs check once per run of packets from one source address.
            let mut checked: Option<(IpAddr, bool)> = None;
            for (opened, addr) in packets.by_ref().take(n) {
                let session = cursor.next_session();
                let (Ok(opened), Some(session)) = (opened, session) else {
                    continue;
                };
                let Ok(packet) = peer.tunnel.finish_decrypted(session, opened) else {
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
        sessions.clear();
    }

    /// Sort the datagrams from `received`: control packets are handled here and now, data
    /// packets prepared into `batch` under one peer lock per run of one peer's packets.
    async fn prepare_incoming(
        device: &Self,
        keys: &(x25519::StaticSecret, x25519::PublicKey, Arc<RateLimiter>),
        received: &mut impl Iterator<Item = (Packet, SocketAddr)>,
        batch: &mut InBatch,
        (udp_tx, sender): (&impl UdpSend, &SharedSender<impl UdpSend>),
        tun_mtu: &mut MtuWatcher,
    ) {
        let (private_key, public_key, rate_limiter) = keys;
        // The receiver index of the last data packet, and its peer, locked.
        let mut locked: Option<(u32, OwnedMutexGuard<PeerState>)> = None;
        for (src_buf, addr) in received {
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
                        let guard = match spin(|| Arc::clone(&peer_arc).try_lock_owned().ok()) {
                            Some(guard) => guard,
                            None => Arc::clone(&peer_arc).lock_owned().await,
                        };
                        batch.runs.push((peer_arc, 0));
                        locked = Some((idx, guard));
                    }
                }
            }
            let (Some((_, peer)), Some((_, n))) = (locked.as_ref(), batch.runs.last_mut()) else {
                continue;
            };
            if let Ok(job) = peer.tunnel.prepare_incoming_data(data) {
                let (session, unopened) = job.into_parts();
                count_in_run(&mut batch.sessions, session);
                batch.packets.push((unopened, addr));
                *n += 1;
            }
        }
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

    /// The stage's read says whether it had to wait, and marks the lane idle while it
    /// waits; a helper's read takes what is there, or nothing.
    #[tokio::test]
    async fn reads_tell_ready_from_pending() {
        let lane = Lane::<()>::new(1);
        let mut behind = Behind::default();
        let ready = Round::read(&lane, Read::Wait(&mut behind), async { 1 }).await;
        assert_eq!(ready, Some((1, false)));
        let waited = Round::read(&lane, Read::Wait(&mut behind), async {
            tokio::task::yield_now().await;
            lane.idle.load(Ordering::Acquire)
        })
        .await;
        assert_eq!(waited, Some((true, false)), "idle while it waited");
        assert!(!lane.idle.load(Ordering::Acquire));
        assert_eq!(
            Round::read(&lane, Read::Try, async { 3 }).await,
            Some((3, false))
        );
        let nothing = Round::read(&lane, Read::Try, std::future::pending::<u8>()).await;
        assert_eq!(nothing, None);
    }

    /// Rounds finish by ticket, whatever order they come to their turn in.
    #[tokio::test]
    async fn turns_come_in_ticket_order() {
        let order = Arc::new(Order::default());
        let finished = Arc::new(std::sync::Mutex::new(Vec::new()));
        let rounds: Vec<_> = (0..16u64)
            .rev()
            .map(|ticket| {
                let (order, finished) = (Arc::clone(&order), Arc::clone(&finished));
                tokio::spawn(async move {
                    let _turn = order.turn(ticket).await;
                    finished.lock().expect("not poisoned").push(ticket);
                })
            })
            .collect();
        for round in rounds {
            round.await.expect("round");
        }
        let finished = finished.lock().expect("not poisoned").clone();
        assert_eq!(finished, (0..16).collect::<Vec<_>>());
    }
}
