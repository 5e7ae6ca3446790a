// wireguard4netns: tests of the data path (`device/datapath.rs`): per-peer order with
// several crypto workers and uneven jobs, nonces increasing on the wire, replay handling
// with parallel opening, the one-worker path, and workers stopped with their connection.
// Not part of upstream gotatun.
//
// Alice is a `Device` between in-memory ends (the test reads and writes its TUN and its UDP
// socket batch by batch); Bob is a bare `Tunn`, so the test sees every datagram as sent.

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::timeout;
use x25519_dalek::{PublicKey, StaticSecret};
use zerocopy::IntoBytes;

use crate::device::{Device, DeviceBuilder, Peer};
use crate::noise::index_table::IndexTable;
use crate::noise::rate_limiter::RateLimiter;
use crate::noise::{Tunn, TunnResult};
use crate::packet::{Ip, Packet, PacketBufPool, WgKind};
use crate::tun::{IpRecv, IpSend, MtuWatcher};
use crate::udp::{UdpRecv, UdpSend, UdpTransportFactory, UdpTransportFactoryParams};

const ALICE: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
const BOB: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
const WAIT: Duration = Duration::from_secs(10);

fn bob_endpoint() -> SocketAddr {
    (Ipv4Addr::new(192, 0, 2, 2), 51820).into()
}

type Datagrams = Vec<(Packet, SocketAddr)>;

/// The names of the threads that sent datagrams or wrote to the TUN.
type Threads = Arc<Mutex<std::collections::BTreeSet<String>>>;

fn note_thread(threads: &Threads) {
    if let Some(name) = std::thread::current().name() {
        threads.lock().expect("lock").insert(name.to_owned());
    }
}

/// Alice's UDP socket: what she sends comes out of `sent`; batches put into `received`
/// come out of one `recv_many_from` each. Sockets bound after the first receive nothing.
#[derive(Clone)]
struct TestUdp {
    sent: mpsc::UnboundedSender<Packet>,
    received: Arc<Mutex<Option<mpsc::UnboundedReceiver<Datagrams>>>>,
    threads: Threads,
}

#[derive(Clone)]
struct TestUdpSend(mpsc::UnboundedSender<Packet>, Threads);

struct TestUdpRecv(mpsc::UnboundedReceiver<Datagrams>);

impl UdpTransportFactory for TestUdp {
    type Send = TestUdpSend;
    type Recv = TestUdpRecv;

    async fn bind(
        &mut self,
        _: &UdpTransportFactoryParams,
    ) -> io::Result<(TestUdpSend, TestUdpRecv)> {
        let received = self.received.lock().expect("lock").take();
        let received = received.unwrap_or_else(|| mpsc::unbounded_channel().1);
        let send = TestUdpSend(self.sent.clone(), Arc::clone(&self.threads));
        Ok((send, TestUdpRecv(received)))
    }
}

impl UdpSend for TestUdpSend {
    type SendManyBuf = ();

    async fn send_to(&self, packet: Packet, _: SocketAddr) -> io::Result<()> {
        note_thread(&self.1);
        let _ = self.0.send(packet);
        Ok(())
    }

    fn max_number_of_packets_to_send(&self) -> usize {
        64
    }

    async fn send_many_to(&self, _: &mut (), packets: &mut Datagrams) -> io::Result<()> {
        note_thread(&self.1);
        for (packet, _) in packets.drain(..) {
            let _ = self.0.send(packet);
        }
        Ok(())
    }

    fn local_addr(&self) -> io::Result<Option<SocketAddr>> {
        Ok(Some((Ipv4Addr::LOCALHOST, 51820).into()))
    }
}

impl UdpRecv for TestUdpRecv {
    type RecvManyBuf = ();

    async fn recv_from(&mut self, _: &mut PacketBufPool) -> io::Result<(Packet, SocketAddr)> {
        unreachable!("the device receives with recv_many_from")
    }

    async fn recv_many_from(
        &mut self,
        _: &mut (),
        _: &mut PacketBufPool,
        packets: &mut Datagrams,
    ) -> io::Result<()> {
        match self.0.recv().await {
            Some(batch) => packets.extend(batch),
            None => std::future::pending().await,
        }
        Ok(())
    }
}

/// Alice's TUN: each batch put into the reading side is one `recv`; what she writes
/// comes out of the writing side packet by packet.
struct TestTunRx {
    batches: mpsc::UnboundedReceiver<Vec<Packet<Ip>>>,
    out: Vec<Packet<Ip>>,
}

struct TestTunTx(mpsc::UnboundedSender<Packet<Ip>>, Threads);

impl IpRecv for TestTunRx {
    async fn recv<'a>(
        &'a mut self,
        _: &mut PacketBufPool,
    ) -> io::Result<impl Iterator<Item = Packet<Ip>> + Send + 'a> {
        match self.batches.recv().await {
            Some(batch) => self.out = batch,
            None => std::future::pending().await,
        }
        Ok(self.out.drain(..))
    }

    fn mtu(&self) -> MtuWatcher {
        MtuWatcher::new(1420)
    }
}

impl IpSend for TestTunTx {
    async fn send(&mut self, packet: Packet<Ip>) -> io::Result<()> {
        note_thread(&self.1);
        let _ = self.0.send(packet);
        Ok(())
    }

    fn max_batch(&self) -> usize {
        64
    }
}

struct Harness {
    alice: Device<(TestUdp, TestTunTx, TestTunRx)>,
    bob: Tunn,
    /// Alice's TUN, to read from (`tun_in`) and what she wrote (`tun_out`).
    tun_in: mpsc::UnboundedSender<Vec<Packet<Ip>>>,
    tun_out: mpsc::UnboundedReceiver<Packet<Ip>>,
    /// Alice's socket: to receive (`udp_in`) and what she sent (`udp_out`).
    udp_in: mpsc::UnboundedSender<Datagrams>,
    udp_out: mpsc::UnboundedReceiver<Packet>,
    /// The threads that sent or wrote.
    threads: Threads,
}

/// Alice with `workers` crypto workers, shaken hands with Bob.
async fn harness(workers: usize) -> Harness {
    let (alice_key, bob_key) = (StaticSecret::random(), StaticSecret::random());
    let (alice_pub, bob_pub) = (PublicKey::from(&alice_key), PublicKey::from(&bob_key));
    let bob = Tunn::new(
        bob_key,
        alice_pub,
        None,
        None,
        IndexTable::from_os_rng(),
        Arc::new(RateLimiter::new(&bob_pub, 100)),
    );
    let (sent, udp_out) = mpsc::unbounded_channel();
    let (udp_in, received) = mpsc::unbounded_channel();
    let (tun_in, batches) = mpsc::unbounded_channel();
    let (tun_tx, tun_out) = mpsc::unbounded_channel();
    let threads = Threads::default();
    let alice = DeviceBuilder::new()
        .with_udp(TestUdp {
            sent,
            received: Arc::new(Mutex::new(Some(received))),
            threads: Arc::clone(&threads),
        })
        .with_ip_pair(
            TestTunTx(tun_tx, Arc::clone(&threads)),
            TestTunRx {
                batches,
                out: Vec::new(),
            },
        )
        .with_private_key(alice_key)
        .with_listen_port(51820)
        .with_peer(
            Peer::new(bob_pub)
                .with_endpoint(bob_endpoint())
                .with_allowed_ip(ipnetwork::Ipv4Network::new(BOB, 32).expect("prefix").into()),
        )
        .with_crypto_workers(NonZeroUsize::new(workers).expect("workers > 0"))
        .build()
        .await
        .expect("device");
    let mut h = Harness {
        alice,
        bob,
        tun_in,
        tun_out,
        udp_in,
        udp_out,
        threads,
    };
    let answer = async {
        let init = h.udp_out.recv().await.expect("initiation");
        let TunnResult::WriteToNetwork(resp) = h
            .bob
            .handle_incoming_packet(init.try_into_wg().expect("wg"))
        else {
            panic!("no handshake response");
        };
        h.udp_in
            .send(vec![(resp.into(), bob_endpoint())])
            .expect("alice receives");
        let keepalive = h.udp_out.recv().await.expect("keepalive");
        assert!(matches!(
            h.bob.handle_incoming_packet(keepalive.try_into_wg().expect("wg")),
            TunnResult::WriteToTunnel(p) if p.is_empty()
        ));
    };
    let (shaken, ()) = timeout(WAIT, async {
        tokio::join!(h.alice.force_handshake(&bob_pub), answer)
    })
    .await
    .expect("handshake in time");
    shaken.expect("handshake");
    h
}

/// An IPv4/UDP packet from `src` to `dst` whose payload starts with `number`; `len` bytes
/// in all (at least 32).
fn numbered(src: Ipv4Addr, dst: Ipv4Addr, number: u32, len: usize) -> Packet {
    let mut p = vec![0u8; len];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(len as u16).to_be_bytes());
    p[8] = 64;
    p[9] = 17;
    p[12..16].copy_from_slice(&src.octets());
    p[16..20].copy_from_slice(&dst.octets());
    p[28..32].copy_from_slice(&number.to_be_bytes());
    Packet::from_bytes(bytes::BytesMut::from(&p[..]))
}

fn number_of(packet: &[u8]) -> u32 {
    u32::from_be_bytes(packet[28..32].try_into().expect("4 bytes"))
}

/// Batch sizes that make the crypto jobs very uneven: a full batch, then a batch of one
/// packet (done long before the full one on another worker), and so on.
fn uneven(total: usize) -> Vec<usize> {
    let mut sizes = Vec::new();
    let mut left = total;
    for size in [64, 1, 37, 2, 64, 5, 1, 1, 50].iter().cycle() {
        if left == 0 {
            break;
        }
        let size = (*size).min(left);
        sizes.push(size);
        left -= size;
    }
    sizes
}

/// With `pauses`, after every fourth batch the test lets the stages run dry (this runtime
/// has one thread: they run only while the test yields), so the next batch finds its stage
/// waiting, no longer behind, while the rounds its helpers read before are still being
/// sealed or opened: its own round must still finish after theirs.
async fn pause_now_and_then(pauses: bool, batch: usize) {
    if pauses && batch % 4 == 3 {
        for _ in 0..4 {
            tokio::task::yield_now().await;
        }
    }
}

/// Alice encrypts what her TUN gives her: on the wire the packets come in the order read,
/// with increasing nonces, and Bob opens every one. The names of the threads that sent.
async fn sends_in_order(workers: usize, pauses: bool) -> Vec<String> {
    const N: u32 = 2000;
    let mut h = harness(workers).await;
    let mut number = 0;
    for (i, size) in uneven(N as usize).into_iter().enumerate() {
        pause_now_and_then(pauses, i).await;
        let batch = (0..size)
            .map(|_| {
                number += 1;
                let len = 100 + (number as usize * 13) % 1300;
                numbered(ALICE, BOB, number, len).try_into_ip().expect("ip")
            })
            .collect();
        h.tun_in.send(batch).expect("alice reads");
    }
    let mut last_counter = None;
    for expected in 1..=N {
        let datagram = timeout(WAIT, h.udp_out.recv())
            .await
            .expect("datagram in time")
            .expect("datagram");
        let WgKind::Data(data) = datagram.try_into_wg().expect("wg") else {
            panic!("not a data packet");
        };
        let counter = data.header.counter.get();
        assert!(
            last_counter.is_none_or(|last| counter > last),
            "nonce {counter} after {last_counter:?}"
        );
        last_counter = Some(counter);
        let TunnResult::WriteToTunnel(plain) = h.bob.handle_incoming_packet(WgKind::Data(data))
        else {
            panic!("Bob cannot open packet {expected}");
        };
        assert_eq!(number_of(&plain), expected, "{workers} workers");
    }
    let threads = h.threads.lock().expect("lock");
    threads.iter().cloned().collect()
}

/// Bob's packets, received by Alice in uneven batches, reach her TUN in the order sent.
/// The names of the threads that wrote them.
async fn receives_in_order(workers: usize, pauses: bool) -> Vec<String> {
    const N: u32 = 2000;
    let mut h = harness(workers).await;
    let mut number = 0;
    for (i, size) in uneven(N as usize).into_iter().enumerate() {
        pause_now_and_then(pauses, i).await;
        let batch = (0..size)
            .map(|_| {
                number += 1;
                let len = 100 + (number as usize * 7) % 1300;
                let Some(sealed) = h
                    .bob
                    .handle_outgoing_packet(numbered(BOB, ALICE, number, len), None)
                else {
                    panic!("Bob has a session");
                };
                (Packet::from(sealed), bob_endpoint())
            })
            .collect();
        h.udp_in.send(batch).expect("alice receives");
    }
    for expected in 1..=N {
        let packet = timeout(WAIT, h.tun_out.recv())
            .await
            .expect("packet in time")
            .expect("packet");
        assert_eq!(number_of(packet.as_bytes()), expected, "{workers} workers");
    }
    let threads = h.threads.lock().expect("lock");
    threads.iter().cloned().collect()
}

/// The stages fall behind (every batch is there before they read), so their helpers run
/// rounds too: some datagrams leave, and some packets reach the TUN, from helper threads.
#[tokio::test]
async fn order_is_kept_with_four_workers_and_uneven_jobs() {
    let senders = sends_in_order(4, false).await;
    assert!(
        senders.iter().any(|name| name.starts_with("wg-out-")),
        "no helper sent: {senders:?}"
    );
    let writers = receives_in_order(4, false).await;
    assert!(
        writers.iter().any(|name| name.starts_with("wg-in-")),
        "no helper wrote: {writers:?}"
    );
}

/// A stage that falls behind wakes a helper, whose rounds run beside its own; once it has
/// caught up, its rounds still finish after the helper's rounds that read before them.
#[tokio::test]
async fn order_is_kept_when_a_stage_falls_behind_and_catches_up() {
    sends_in_order(2, true).await;
    receives_in_order(2, true).await;
}

/// One worker: the rounds run in the stages themselves, no thread is started.
#[tokio::test]
async fn one_worker_runs_inline_and_keeps_order() {
    let h = harness(1).await;
    let device = h.alice.inner.read().await;
    let connection = device.connection.as_ref().expect("connection");
    assert!(connection.helpers.is_none());
    drop(device);
    sends_in_order(1, true).await;
    receives_in_order(1, true).await;
}

/// A datagram that comes twice in one batch passes the quick replay check twice (neither
/// copy is marked yet), is opened twice in parallel, and reaches the TUN once: the second
/// copy is refused where the counter is marked, in order.
#[tokio::test]
async fn a_datagram_twice_in_one_batch_arrives_once() {
    for workers in [1, 3] {
        let mut h = harness(workers).await;
        let mut sealed = |n| {
            let packet = h
                .bob
                .handle_outgoing_packet(numbered(BOB, ALICE, n, 200), None);
            Packet::from(packet.expect("sealed"))
        };
        let (one, two, three) = (sealed(1), sealed(2), sealed(3));
        let copy = Packet::from_bytes(bytes::BytesMut::from(&one[..]));
        // Another batch replays it later: refused by the quick check.
        let late = Packet::from_bytes(bytes::BytesMut::from(&one[..]));
        let batch = [one, two, copy, three].map(|p| (p, bob_endpoint()));
        h.udp_in.send(batch.into()).expect("alice receives");
        h.udp_in
            .send(vec![(late, bob_endpoint())])
            .expect("alice receives");
        let mut got = Vec::new();
        for _ in 0..3 {
            let packet = timeout(WAIT, h.tun_out.recv()).await.expect("in time");
            got.push(number_of(packet.expect("packet").as_bytes()));
        }
        assert_eq!(got, [1, 2, 3], "{workers} workers");
        assert!(
            timeout(Duration::from_millis(200), h.tun_out.recv())
                .await
                .is_err(),
            "a replayed packet reached the TUN ({workers} workers)"
        );
    }
}

/// One batch that mixes packets of two of Bob's sessions (sealed before and after a new
/// handshake, as during a rekey) reaches the TUN whole and in order: each packet is opened
/// and finished with its own session, though the data path keeps one per run of packets.
#[tokio::test]
async fn a_batch_across_a_rekey_opens_each_packet_with_its_session() {
    for workers in [1, 3] {
        let mut h = harness(workers).await;
        let seal = |bob: &mut Tunn, n| {
            let packet = bob.handle_outgoing_packet(numbered(BOB, ALICE, n, 300), None);
            (Packet::from(packet.expect("sealed")), bob_endpoint())
        };
        let old: Vec<_> = (1..=3).map(|n| seal(&mut h.bob, n)).collect();
        // Bob shakes hands again; Alice answers.
        let init = h.bob.format_handshake_initiation(true).expect("initiation");
        h.udp_in
            .send(vec![(init.into(), bob_endpoint())])
            .expect("alice receives");
        let response = timeout(WAIT, h.udp_out.recv())
            .await
            .expect("response in time")
            .expect("response");
        // Bob's confirming keepalive (on the new session) is not passed on: its data is.
        if let TunnResult::Err(e) = h
            .bob
            .handle_incoming_packet(response.try_into_wg().expect("wg"))
        {
            panic!("Bob did not take the response: {e:?}");
        }
        let new: Vec<_> = (4..=6).map(|n| seal(&mut h.bob, n)).collect();
        let mut batch = Vec::new();
        let (mut old, mut new) = (old.into_iter(), new.into_iter());
        // old 1, new 4, new 5, old 2, old 3, new 6: four runs of sessions.
        batch.extend(old.by_ref().take(1));
        batch.extend(new.by_ref().take(2));
        batch.extend(old);
        batch.extend(new);
        h.udp_in.send(batch).expect("alice receives");
        let mut got = Vec::new();
        for _ in 0..6 {
            let packet = timeout(WAIT, h.tun_out.recv()).await.expect("in time");
            got.push(number_of(packet.expect("packet").as_bytes()));
        }
        assert_eq!(got, [1, 4, 5, 2, 3, 6], "{workers} workers");
    }
}

/// The helper threads are the connection's: a reconfiguration starts new ones and joins
/// the old, and so does stopping the device.
#[tokio::test]
async fn workers_go_with_their_connection() {
    let h = harness(3).await;
    let pool = |device: &Device<_>| {
        let device = device.inner.try_read().expect("unlocked");
        let connection = device.connection.as_ref().expect("connection");
        connection.helpers.as_ref().expect("helpers").running()
    };
    let first = pool(&h.alice);
    h.alice.set_listen_port(51821).await.expect("new port");
    let second = pool(&h.alice);
    assert!(
        first.upgrade().is_none(),
        "the old connection's workers live on"
    );
    assert!(second.upgrade().is_some());
    h.alice.stop().await;
    assert!(
        second.upgrade().is_none(),
        "the workers outlived the device"
    );
}

/// Regression test for security advisory GHSA-6gxq-8xp9-742r, moved here with the removed
/// buffered receiver: the incoming stage now calls `recv_many_from` itself, so an empty
/// datagram must neither fail nor panic it, and the next datagram comes through.
#[cfg(target_os = "linux")]
#[tokio::test]
async fn an_empty_loopback_datagram_does_not_stop_receiving() {
    use crate::udp::socket::{SockOpt, UdpSocket};

    let mut socket =
        UdpSocket::bind("127.0.0.1:0".parse().expect("addr"), SockOpt::default()).expect("bind");
    let addr = socket.local_addr().expect("local address");
    let sender = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    sender.send_to(&[], addr).expect("send");
    sender.send_to(b"after-empty", addr).expect("send");

    let mut pool = PacketBufPool::new(16);
    let mut buf = Default::default();
    let mut got = Vec::new();
    timeout(Duration::from_secs(3), async {
        while !got
            .iter()
            .any(|(p, _): &(Packet, _)| &p[..] == b"after-empty")
        {
            socket
                .recv_many_from(&mut buf, &mut pool, &mut got)
                .await
                .expect("receiving goes on");
        }
    })
    .await
    .expect("the datagram after the empty one arrives");
}
