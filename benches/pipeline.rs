//! Pipeline benchmark: a real gotatun `Device`, built through its public builder,
//! between an in-memory TUN and an in-memory UDP socket; no kernel, no peer
//! process. It measures what the engine adds around the crypto, and what its
//! crypto workers gain:
//!
//! - encrypt: the TUN end hands out 1420-byte IPv4 packets to the peer's
//!   allowed IPs as fast as the device reads (46 per read, as a 64 KiB TSO
//!   super-packet splits; copied into the device's pool buffers, as our TUN
//!   does), the UDP end counts the datagrams;
//! - decrypt: datagrams sealed beforehand by the peer's `Tunn` (fresh counters,
//!   outside the timing) are received 64 at a time, copied one after the other into
//!   one buffer and split in place, as the engine's socket receives a GRO datagram;
//!   the TUN end counts.
//!
//! Each with 1 and 2 crypto workers, next to ChaCha20-Poly1305 alone on the
//! same 1420 bytes (aws-lc, which gotatun uses, on one thread), and the two
//! ratios issue 12 sets: 2 workers ÷ 1 worker (≥ 1.7 on two cores) and one
//! worker's time above the crypto alone (≤ 40 %). The device runs on a tokio
//! runtime of one worker, like the engine. Each figure is the median of 15
//! rounds; everything comes from the same run.
//!
//!     cargo bench --bench pipeline

use std::collections::VecDeque;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use gotatun::device::{self, Device, Peer};
use gotatun::noise::index_table::IndexTable;
use gotatun::noise::rate_limiter::RateLimiter;
use gotatun::noise::{Tunn, TunnResult};
use gotatun::packet::{Ip, Packet, PacketBufPool, WgKind};
use gotatun::tun::{IpRecv, IpSend, MtuWatcher};
use gotatun::udp::{UdpRecv, UdpSend, UdpTransportFactory, UdpTransportFactoryParams};
use gotatun::x25519::{PublicKey, StaticSecret};
use tokio::sync::{Notify, mpsc};

const MTU: usize = 1420;
/// Packets per TUN read: a 64 KiB TSO super-packet of 1420-byte segments.
const TUN_READ: usize = 46;
/// Datagrams per `recv_many_from`.
const UDP_READ: usize = 64;
const ROUNDS: usize = 15;

const DEVICE_IP: [u8; 4] = [10, 0, 0, 1];
const PEER_IP: [u8; 4] = [10, 0, 0, 2];

fn peer_endpoint() -> SocketAddr {
    (Ipv4Addr::new(192, 0, 2, 2), 51820).into()
}

/// A 1420-byte IPv4/UDP packet from `src` to `dst` (header checksum set; the
/// engine does not look further).
fn ip_packet(src: [u8; 4], dst: [u8; 4]) -> Vec<u8> {
    let mut p = vec![0u8; MTU];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(MTU as u16).to_be_bytes());
    p[8] = 64;
    p[9] = 17;
    p[12..16].copy_from_slice(&src);
    p[16..20].copy_from_slice(&dst);
    let sum: u32 = p[..20]
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
        .sum();
    let sum = (sum & 0xffff) + (sum >> 16);
    let sum = (sum & 0xffff) + (sum >> 16);
    p[10..12].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    for (i, b) in p[20..].iter_mut().enumerate() {
        *b = (i * 7 % 251) as u8;
    }
    p
}

/// Counts packets until a target, then wakes the bench. The packets are dropped,
/// which returns them to the device's pool, as the kernel's TUN and UDP writes do.
#[derive(Default)]
struct Counter {
    count: AtomicUsize,
    target: AtomicUsize,
    done: Notify,
}

impl Counter {
    fn arm(&self, target: usize) {
        self.count.store(0, Ordering::SeqCst);
        self.target.store(target, Ordering::SeqCst);
    }

    fn add(&self, packets: impl Iterator<Item = Packet>) {
        let n = packets.count();
        let before = self.count.fetch_add(n, Ordering::SeqCst);
        let target = self.target.load(Ordering::SeqCst);
        if before < target && before + n >= target {
            self.done.notify_one();
        }
    }
}

/// Datagrams as `recv_many_from` returns them.
type Datagrams = Vec<(Packet, SocketAddr)>;

/// The in-memory UDP socket: what the device sends is captured (during the
/// handshake) or counted; what it receives comes from `inject`.
#[derive(Clone)]
struct MemUdp {
    shared: Arc<UdpShared>,
}

struct UdpShared {
    capture: std::sync::atomic::AtomicBool,
    captured: mpsc::UnboundedSender<Packet>,
    counter: Counter,
    incoming: Mutex<Option<mpsc::UnboundedReceiver<Datagrams>>>,
    /// The datagrams received, once copied: freed by the bench, outside the timing.
    spent: mpsc::UnboundedSender<Datagrams>,
}

#[derive(Clone)]
struct MemUdpSend(Arc<UdpShared>);

struct MemUdpRecv {
    rx: mpsc::UnboundedReceiver<Datagrams>,
    pending: VecDeque<(Packet, SocketAddr)>,
    spent: mpsc::UnboundedSender<Datagrams>,
}

impl UdpTransportFactory for MemUdp {
    type Send = MemUdpSend;
    type Recv = MemUdpRecv;

    async fn bind(
        &mut self,
        _: &UdpTransportFactoryParams,
    ) -> io::Result<(MemUdpSend, MemUdpRecv)> {
        let rx = self
            .shared
            .incoming
            .lock()
            .expect("not poisoned")
            .take()
            .ok_or_else(|| io::Error::other("the in-memory socket binds once"))?;
        let recv = MemUdpRecv {
            rx,
            pending: VecDeque::new(),
            spent: self.shared.spent.clone(),
        };
        Ok((MemUdpSend(Arc::clone(&self.shared)), recv))
    }
}

impl MemUdpSend {
    fn deliver(&self, packets: impl Iterator<Item = Packet>) {
        if self.0.capture.load(Ordering::SeqCst) {
            for p in packets {
                let _ = self.0.captured.send(p);
            }
        } else {
            self.0.counter.add(packets);
        }
    }
}

impl UdpSend for MemUdpSend {
    type SendManyBuf = ();

    async fn send_to(&self, packet: Packet, _: SocketAddr) -> io::Result<()> {
        self.deliver(std::iter::once(packet));
        Ok(())
    }

    fn max_number_of_packets_to_send(&self) -> usize {
        64
    }

    async fn send_many_to(
        &self,
        _: &mut (),
        packets: &mut Vec<(Packet, SocketAddr)>,
    ) -> io::Result<()> {
        self.deliver(packets.drain(..).map(|(p, _)| p));
        Ok(())
    }

    fn local_addr(&self) -> io::Result<Option<SocketAddr>> {
        Ok(Some((Ipv4Addr::LOCALHOST, 51820).into()))
    }
}

impl UdpRecv for MemUdpRecv {
    type RecvManyBuf = ();

    async fn recv_from(&mut self, _: &mut PacketBufPool) -> io::Result<(Packet, SocketAddr)> {
        loop {
            if let Some(next) = self.pending.pop_front() {
                return Ok(next);
            }
            match self.rx.recv().await {
                Some(batch) => self.pending.extend(batch),
                None => std::future::pending().await,
            }
        }
    }

    async fn recv_many_from(
        &mut self,
        _: &mut (),
        _: &mut PacketBufPool,
        packets: &mut Vec<(Packet, SocketAddr)>,
    ) -> io::Result<()> {
        let Some(batch) = self.rx.recv().await else {
            return std::future::pending().await;
        };
        // As the socket receives a GRO datagram: the segments land one after the other
        // in one buffer, which is split in place.
        let mut gro = BytesMut::with_capacity(batch.iter().map(|(d, _)| d.len()).sum());
        for (datagram, _) in &batch {
            gro.extend_from_slice(datagram);
        }
        for (datagram, from) in &batch {
            packets.push((Packet::from_bytes(gro.split_to(datagram.len())), *from));
        }
        let _ = self.spent.send(batch);
        Ok(())
    }
}

/// The in-memory TUN, reading side: up to `budget` packets, `TUN_READ` per
/// read, copied from one template into the device's pool buffers.
struct MemTunRx {
    template: Vec<u8>,
    budget: Arc<AtomicUsize>,
    more: Arc<Notify>,
    out: Vec<Packet<Ip>>,
}

impl IpRecv for MemTunRx {
    async fn recv<'a>(
        &'a mut self,
        pool: &mut PacketBufPool,
    ) -> io::Result<impl Iterator<Item = Packet<Ip>> + Send + 'a> {
        let n = loop {
            let left = self.budget.load(Ordering::SeqCst);
            if left == 0 {
                self.more.notified().await;
                continue;
            }
            let n = left.min(TUN_READ);
            if self
                .budget
                .compare_exchange(left, left - n, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok()
            {
                break n;
            }
        };
        self.out.clear();
        for _ in 0..n {
            let mut p = pool.get();
            p.truncate(MTU);
            p.copy_from_slice(&self.template);
            self.out.push(
                p.try_into_ip()
                    .map_err(|e| io::Error::other(e.to_string()))?,
            );
        }
        Ok(self.out.drain(..))
    }

    fn mtu(&self) -> MtuWatcher {
        MtuWatcher::new(MTU as u16)
    }
}

/// The in-memory TUN, writing side: counts.
struct MemTunTx(Arc<Counter>);

impl IpSend for MemTunTx {
    async fn send(&mut self, packet: Packet<Ip>) -> io::Result<()> {
        self.0.add(std::iter::once(packet.into_bytes()));
        Ok(())
    }

    fn max_batch(&self) -> usize {
        64
    }

    async fn send_many(&mut self, packets: &mut Vec<Packet<Ip>>) -> io::Result<()> {
        self.0.add(packets.drain(..).map(Packet::into_bytes));
        Ok(())
    }
}

/// A device with `workers` crypto workers, shaken hands with `peer`.
struct Setup {
    _device: Device<(MemUdp, MemTunTx, MemTunRx)>,
    peer: Tunn,
    udp: Arc<UdpShared>,
    inject: mpsc::UnboundedSender<Datagrams>,
    spent: mpsc::UnboundedReceiver<Datagrams>,
    tun_budget: Arc<AtomicUsize>,
    tun_more: Arc<Notify>,
    tun_out: Arc<Counter>,
}

async fn setup(workers: usize) -> Setup {
    let rng = rand_core::OsRng;
    let (device_key, peer_key) = (
        StaticSecret::random_from_rng(rng),
        StaticSecret::random_from_rng(rng),
    );
    let (device_pub, peer_pub) = (PublicKey::from(&device_key), PublicKey::from(&peer_key));
    let mut peer = Tunn::new(
        peer_key,
        device_pub,
        None,
        None,
        IndexTable::from_os_rng(),
        Arc::new(RateLimiter::new(&peer_pub, 100)),
    );

    let (captured_tx, mut captured) = mpsc::unbounded_channel();
    let (inject, incoming) = mpsc::unbounded_channel();
    let (spent_tx, spent) = mpsc::unbounded_channel();
    let udp = Arc::new(UdpShared {
        capture: true.into(),
        captured: captured_tx,
        counter: Counter::default(),
        incoming: Mutex::new(Some(incoming)),
        spent: spent_tx,
    });
    let tun_budget = Arc::new(AtomicUsize::new(0));
    let tun_more = Arc::new(Notify::new());
    let tun_out = Arc::new(Counter::default());
    let tun_rx = MemTunRx {
        template: ip_packet(DEVICE_IP, PEER_IP),
        budget: Arc::clone(&tun_budget),
        more: Arc::clone(&tun_more),
        out: Vec::with_capacity(TUN_READ),
    };
    let allowed = ipnetwork::IpNetwork::new(Ipv4Addr::from(PEER_IP).into(), 32).expect("prefix");
    let device = device::build()
        .with_udp(MemUdp {
            shared: Arc::clone(&udp),
        })
        .with_ip_pair(MemTunTx(Arc::clone(&tun_out)), tun_rx)
        .with_private_key(device_key)
        .with_listen_port(51820)
        .with_peer(
            Peer::new(peer_pub)
                .with_endpoint(peer_endpoint())
                .with_allowed_ip(allowed),
        )
        .with_crypto_workers(NonZeroUsize::new(workers).expect("workers > 0"))
        .build()
        .await
        .expect("device");

    // The handshake, the peer answering: initiation, response, keepalive.
    let answer = async {
        let init = captured.recv().await.expect("handshake initiation");
        let init = init.try_into_wg().expect("wireguard packet");
        let TunnResult::WriteToNetwork(resp) = peer.handle_incoming_packet(init) else {
            panic!("no handshake response");
        };
        inject
            .send(vec![(resp.into(), peer_endpoint())])
            .expect("device receives");
        let keepalive = captured.recv().await.expect("keepalive");
        let keepalive = keepalive.try_into_wg().expect("wireguard packet");
        assert!(matches!(
            peer.handle_incoming_packet(keepalive),
            TunnResult::WriteToTunnel(p) if p.is_empty()
        ));
    };
    let (shaken, ()) = tokio::join!(device.force_handshake(&peer_pub), answer);
    shaken.expect("handshake");
    udp.capture.store(false, Ordering::SeqCst);
    Setup {
        _device: device,
        peer,
        udp,
        inject,
        spent,
        tun_budget,
        tun_more,
        tun_out,
    }
}

/// Time for the device to encrypt `n` packets from the TUN to the UDP end.
async fn encrypt_round(s: &Setup, n: usize, cpu: &mut Duration) -> Duration {
    s.udp.counter.arm(n);
    let cpu_start = cpu_time();
    let start = Instant::now();
    s.tun_budget.store(n, Ordering::SeqCst);
    s.tun_more.notify_one();
    s.udp.counter.done.notified().await;
    let took = start.elapsed();
    *cpu += cpu_time() - cpu_start;
    took
}

/// Time for the device to decrypt `n` datagrams, sealed by the peer beforehand,
/// from the UDP end to the TUN.
async fn decrypt_round(s: &mut Setup, n: usize, cpu: &mut Duration) -> Duration {
    let template = ip_packet(PEER_IP, DEVICE_IP);
    let mut batches = Vec::with_capacity(n.div_ceil(UDP_READ));
    let mut batch = Vec::with_capacity(UDP_READ);
    for _ in 0..n {
        let mut buf = BytesMut::with_capacity(MTU + 64);
        buf.extend_from_slice(&template);
        let Some(WgKind::Data(sealed)) =
            s.peer.handle_outgoing_packet(Packet::from_bytes(buf), None)
        else {
            panic!("the peer did not seal");
        };
        batch.push((Packet::from(WgKind::Data(sealed)), peer_endpoint()));
        if batch.len() == UDP_READ {
            batches.push(std::mem::replace(&mut batch, Vec::with_capacity(UDP_READ)));
        }
    }
    if !batch.is_empty() {
        batches.push(batch);
    }
    s.tun_out.arm(n);
    let cpu_start = cpu_time();
    let start = Instant::now();
    for batch in batches {
        s.inject.send(batch).expect("device receives");
    }
    s.tun_out.done.notified().await;
    let took = start.elapsed();
    *cpu += cpu_time() - cpu_start;
    while s.spent.try_recv().is_ok() {}
    took
}

fn median(mut times: Vec<Duration>) -> Duration {
    times.sort();
    times[times.len() / 2]
}

/// CPU time this process has used (all threads, user and system): on a machine
/// shared with other work, CPU time per packet is the figure that holds.
fn cpu_time() -> Duration {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage writes a `rusage` into the pointer it is given, which
    // points at one.
    let usage = unsafe {
        libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr());
        usage.assume_init()
    };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// Packets per second and Gbit/s of 1420-byte packets, for `n` packets in `t`.
fn rate(n: usize, t: Duration) -> (f64, f64) {
    let pps = n as f64 / t.as_secs_f64();
    (pps, pps * (MTU * 8) as f64 / 1e9)
}

/// One figure: the median time of rounds of `n` packets, and the CPU time all
/// rounds took per packet.
fn line(name: &str, n: usize, t: Duration, cpu_per_packet: Duration) -> f64 {
    let (pps, gbit) = rate(n, t);
    println!(
        "  {name:<40} {pps:>9.0} packets/s {gbit:>6.2} Gbit/s {:>5} ns CPU/packet",
        cpu_per_packet.as_nanos()
    );
    pps
}

/// ChaCha20-Poly1305 alone on one thread, sealing (or opening) `n` distinct
/// 1420-byte payloads in place per round.
fn aead_alone(n: usize, rounds: usize, open: bool) -> Duration {
    use aws_lc_rs::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, UnboundKey};
    let key = LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, &[7; 32]).expect("key"));
    let nonce = |i: usize| {
        let mut nonce = [0u8; 12];
        nonce[4..].copy_from_slice(&(i as u64).to_le_bytes());
        Nonce::assume_unique_for_key(nonce)
    };
    let mut bufs: Vec<Vec<u8>> = (0..n).map(|_| vec![0x5a; MTU + 16]).collect();
    let seal_all = |bufs: &mut Vec<Vec<u8>>| {
        for (i, buf) in bufs.iter_mut().enumerate() {
            let (payload, tag_space) = buf.split_at_mut(MTU);
            let tag = key
                .seal_in_place_separate_tag(nonce(i), Aad::empty(), payload)
                .expect("seal");
            tag_space.copy_from_slice(tag.as_ref());
        }
    };
    let mut times = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        if open {
            seal_all(&mut bufs);
            let start = Instant::now();
            for (i, buf) in bufs.iter_mut().enumerate() {
                let opened = key
                    .open_in_place(nonce(i), Aad::empty(), buf)
                    .expect("open");
                std::hint::black_box(opened.len());
            }
            times.push(start.elapsed());
        } else {
            let start = Instant::now();
            seal_all(&mut bufs);
            times.push(start.elapsed());
        }
    }
    median(times)
}

struct Direction {
    alone: f64,
    one: f64,
    two: f64,
}

impl Direction {
    fn print_ratios(&self) {
        println!(
            "  2 workers / 1 worker: {:.2} (target >= 1.7); 1 worker above crypto alone: {:.0} % (target <= 40 %)",
            self.two / self.one,
            (self.alone / self.one - 1.0) * 100.0
        );
    }
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` runs us too, then
    // without it: one small round each shows the pipeline works.
    let full = std::env::args().any(|a| a == "--bench");
    // One malloc arena, as the engine has (`lifecycle::engine_runtime`): with
    // an arena per thread, batches freed on another thread than the one that
    // allocated them cost page faults the engine does not have.
    // SAFETY: mallopt only sets an allocator parameter; no thread runs yet.
    #[cfg(target_env = "gnu")]
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1)
    };
    let (n, rounds) = if full { (65536, ROUNDS) } else { (512, 1) };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    println!(
        "pipeline benchmark: gotatun Device, in-memory TUN and UDP, {MTU}-byte packets, median of {rounds} rounds of {n}"
    );
    // PIPELINE_ONLY=encrypt or decrypt runs one direction (for a profiler).
    let only = std::env::var("PIPELINE_ONLY").ok();
    // PIPELINE_WORKERS=1 or 2 runs the device with that many workers only.
    let skip_workers: Option<usize> = std::env::var("PIPELINE_WORKERS")
        .ok()
        .and_then(|w| w.parse().ok());
    for decrypt in [false, true] {
        if only
            .as_deref()
            .is_some_and(|o| o != if decrypt { "decrypt" } else { "encrypt" })
        {
            continue;
        }
        let name = if decrypt {
            "decrypt (UDP -> TUN)"
        } else {
            "encrypt (TUN -> UDP)"
        };
        println!("{name}");
        let cpu = cpu_time();
        let t = aead_alone(n, rounds, decrypt);
        // The opening rounds seal first, untimed but on the CPU: half of it.
        let cpu = (cpu_time() - cpu) / if decrypt { 2 } else { 1 };
        let what = if decrypt { "open" } else { "seal" };
        let per = |cpu: Duration| cpu / (n * rounds) as u32;
        let alone = line(
            &format!("ChaCha20-Poly1305 {what} alone, 1 thread"),
            n,
            t,
            per(cpu),
        );
        let mut by_workers = Vec::new();
        for workers in [1, 2] {
            if skip_workers.is_some_and(|w| w != workers) {
                by_workers.push(f64::NAN);
                continue;
            }
            let (t, cpu) = runtime.block_on(async {
                let mut s = setup(workers).await;
                let mut times = Vec::with_capacity(rounds);
                let mut cpu = Duration::ZERO;
                for _ in 0..rounds {
                    let t = if decrypt {
                        decrypt_round(&mut s, n, &mut cpu).await
                    } else {
                        encrypt_round(&s, n, &mut cpu).await
                    };
                    times.push(t);
                }
                (median(times), cpu)
            });
            let plural = if workers == 1 { "" } else { "s" };
            let label = format!("device, {workers} crypto worker{plural}");
            by_workers.push(line(&label, n, t, per(cpu)));
        }
        let d = Direction {
            alone,
            one: by_workers[0],
            two: by_workers[1],
        };
        d.print_ratios();
    }
    // The device's tasks would otherwise be torn down in the middle of their work.
    runtime.shutdown_timeout(Duration::from_millis(100));
}
