//! Micro-benchmark of the per-packet work on the data path, without namespaces
//! or sockets, so a regression shows up in `cargo bench` alone:
//!
//! - GSO split of a 64 KiB TCP super-packet into MTU-1420 segments (what
//!   `IpRecv::recv` does per TUN read), checksums included, into buffers from
//!   a pool as large as the engine's (so which buffers it hands out, cache-warm
//!   or not, shows);
//! - the same super-packet split in place, as `IpRecv::recv` does when its
//!   `readv` scattered the segments' payloads into their buffers: only
//!   headers and checksums are written;
//! - GRO coalescing of 44 decrypted segments into one write (what the TUN
//!   writer does per batch), checksum verification included;
//! - encrypt + decrypt of one 1420-byte packet with gotatun's `Tunn` (the
//!   ChaCha20-Poly1305 work and gotatun's per-packet overhead);
//! - the Internet checksum over 64 KiB.
//!
//! Each figure is the median of 7 rounds of at least 0.2 s. Plain `Instant`
//! timing instead of criterion: the point is a few numbers per run, not
//! statistics, and it keeps the dependency tree as it is.
//!
//!     cargo bench --bench datapath

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use gotatun::noise::index_table::IndexTable;
use gotatun::noise::rate_limiter::RateLimiter;
use gotatun::noise::{Tunn, TunnResult};
use gotatun::packet::{Packet, PacketBufPool, WgKind};
use gotatun::x25519::{PublicKey, StaticSecret};
use wireguard4netns::offload::{self, Coalescer, VNET_HDR_LEN, VirtioNetHdr};

const MTU: usize = 1420;
/// IPv4 + TCP with timestamps, as Linux sends bulk data.
const HEADERS: usize = 20 + 32;
const MSS: usize = MTU - HEADERS;

/// Runs `f` (which handles `packets` packets of `bytes` bytes in total) and
/// prints the median time per call, per packet, and the throughput.
fn bench(name: &str, packets: usize, bytes: usize, mut f: impl FnMut()) {
    let round = Duration::from_millis(200);
    let mut per_call = Vec::new();
    f(); // warm up caches and allocations
    for _ in 0..7 {
        let start = Instant::now();
        let mut calls = 0u64;
        while start.elapsed() < round {
            for _ in 0..16 {
                f();
            }
            calls += 16;
        }
        per_call.push(start.elapsed().as_nanos() as f64 / calls as f64);
    }
    per_call.sort_by(f64::total_cmp);
    let ns = per_call[per_call.len() / 2];
    println!(
        "{name:<44} {:>10.0} ns/call {:>8.1} ns/packet {:>7.2} Gbit/s",
        ns,
        ns / packets as f64,
        bytes as f64 * 8.0 / ns
    );
}

fn put16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_be_bytes());
}

/// A 10.0.0.1 -> 10.0.0.2 TCP super-packet of `payload` bytes as the kernel
/// hands it over with TSO: one header set, pseudo-header-only checksum.
fn super_packet(payload: usize) -> (VirtioNetHdr, Vec<u8>) {
    let total = HEADERS + payload;
    let mut p = vec![0u8; total];
    p[0] = 0x45;
    put16(&mut p, 2, total as u16);
    put16(&mut p, 4, 0x1234);
    p[6] = 0x40;
    p[8] = 64;
    p[9] = 6;
    p[12..16].copy_from_slice(&[10, 0, 0, 1]);
    p[16..20].copy_from_slice(&[10, 0, 0, 2]);
    put16(&mut p, 20, 40000);
    put16(&mut p, 22, 5201);
    p[24..28].copy_from_slice(&0x0102_0304u32.to_be_bytes());
    p[28..32].copy_from_slice(&0x0506_0708u32.to_be_bytes());
    p[32] = 8 << 4;
    p[33] = 0x18; // ACK | PSH
    put16(&mut p, 34, 500);
    p[40..52].copy_from_slice(&[1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2]);
    for (i, b) in p[HEADERS..].iter_mut().enumerate() {
        *b = (i * 7 % 251) as u8;
    }
    let partial = offload::fold(offload::pseudo_header_sum(
        &[10, 0, 0, 1],
        &[10, 0, 0, 2],
        6,
        total - 20,
    ));
    put16(&mut p, 36, partial);
    let c = !offload::ones_sum(&p[..20]);
    put16(&mut p, 10, c);
    let hdr = VirtioNetHdr {
        flags: VirtioNetHdr::F_NEEDS_CSUM,
        gso_type: VirtioNetHdr::GSO_TCPV4,
        hdr_len: HEADERS as u16,
        gso_size: MSS as u16,
        csum_start: 20,
        csum_offset: 16,
    };
    (hdr, p)
}

fn split_into_vecs(hdr: &VirtioNetHdr, pkt: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    offload::gso_split(pkt, hdr, MTU, |len| vec![0; len], |s| out.push(s)).expect("splits");
    out
}

fn bench_gso_split() {
    let (hdr, pkt) = super_packet(65535 - HEADERS);
    // The engine's pool keeps up to 4 x 256 buffers (vendor/gotatun's device).
    let pool: PacketBufPool = PacketBufPool::new(4 * 256);
    let mut out: Vec<Packet> = Vec::with_capacity(64);
    let segments = split_into_vecs(&hdr, &pkt).len();
    bench(
        &format!("gso_split 64 KiB TCP -> {segments} x {MTU} B"),
        segments,
        pkt.len(),
        || {
            offload::gso_split(
                black_box(&pkt),
                &hdr,
                MTU,
                |len| {
                    let mut p = pool.get();
                    p.truncate(len);
                    p
                },
                |s| out.push(s),
            )
            .expect("splits");
            black_box(&out);
            out.clear();
        },
    );
}

fn bench_gso_in_place() {
    let (hdr, pkt) = super_packet(65535 - HEADERS);
    let pool: PacketBufPool = PacketBufPool::new(4 * 256);
    // The payloads where the scattered read puts them: segment i's after
    // HEADERS bytes of room in buffer i (the first also holds the headers).
    let plan = offload::gso_plan(&pkt, pkt.len(), &hdr, MTU).expect("plans");
    let mut lanes: Vec<Packet> = (0..plan.count())
        .map(|i| {
            let mut p = pool.get();
            let len = plan.segment_len(i);
            p.truncate(len);
            let at = HEADERS + i * MSS;
            p[HEADERS..].copy_from_slice(&pkt[at..at + len - HEADERS]);
            p
        })
        .collect();
    lanes[0][..HEADERS].copy_from_slice(&pkt[..HEADERS]);
    let head = lanes[0][..HEADERS].to_vec();
    bench(
        &format!("gso in place 64 KiB TCP -> {} x {MTU} B", lanes.len()),
        lanes.len(),
        pkt.len(),
        || {
            // Finishing rewrote the first buffer's headers; put them back.
            lanes[0][..HEADERS].copy_from_slice(&head);
            let plan =
                offload::gso_plan(&lanes[0], black_box(pkt.len()), &hdr, MTU).expect("plans");
            for (i, seg) in lanes.iter_mut().enumerate() {
                plan.finish(seg, i);
            }
            black_box(&lanes);
        },
    );
}

fn bench_gro() {
    let (hdr, pkt) = super_packet(44 * MSS);
    let segments = split_into_vecs(&hdr, &pkt);
    let head = segments[0].clone();
    let mut batch = segments.clone();
    let mut gro = Coalescer::new(false);
    let mut writes = Vec::new();
    bench(
        &format!("gro coalesce {} x {MTU} B -> 1 write", segments.len()),
        segments.len(),
        pkt.len(),
        || {
            // Coalescing rewrote the head last time; put it back.
            batch[0].copy_from_slice(&head);
            gro.coalesce_into(&mut batch, &mut writes);
            let mut parts = 0;
            for w in &writes {
                parts += gro.parts(w, &batch).count();
            }
            assert_eq!((writes.len(), parts), (1, segments.len()));
            black_box(&writes);
        },
    );
}

fn bench_checksum() {
    let data: Vec<u8> = (0..65536).map(|i| (i * 13 % 256) as u8).collect();
    bench("ones_sum over 64 KiB", 1, data.len(), || {
        black_box(offload::ones_sum(black_box(&data)));
    });
}

fn bench_crypto() {
    let rng = rand_core::OsRng;
    let (a_key, b_key) = (
        StaticSecret::random_from_rng(rng),
        StaticSecret::random_from_rng(rng),
    );
    let (a_pub, b_pub) = (PublicKey::from(&a_key), PublicKey::from(&b_key));
    let mut a = Tunn::new(
        a_key,
        b_pub,
        None,
        None,
        IndexTable::from_os_rng(),
        Arc::new(RateLimiter::new(&a_pub, 100)),
    );
    let mut b = Tunn::new(
        b_key,
        a_pub,
        None,
        None,
        IndexTable::from_os_rng(),
        Arc::new(RateLimiter::new(&b_pub, 100)),
    );
    let init = a.format_handshake_initiation(false).expect("initiation");
    let TunnResult::WriteToNetwork(resp) = b.handle_incoming_packet(init.into()) else {
        panic!("no handshake response");
    };
    let TunnResult::WriteToNetwork(WgKind::Data(keepalive)) = a.handle_incoming_packet(resp) else {
        panic!("no keepalive");
    };
    assert!(matches!(
        b.handle_incoming_packet(WgKind::Data(keepalive)),
        TunnResult::WriteToTunnel(_)
    ));

    let (_, pkt) = super_packet(MSS);
    let pool: PacketBufPool = PacketBufPool::new(16);
    bench(
        &format!("encrypt + decrypt {MTU} B (gotatun Tunn)"),
        1,
        pkt.len(),
        || {
            let mut p = pool.get();
            p.truncate(pkt.len());
            p.copy_from_slice(&pkt);
            let Some(WgKind::Data(sealed)) = a.handle_outgoing_packet(p, None) else {
                panic!("not encrypted");
            };
            let TunnResult::WriteToTunnel(opened) = b.handle_incoming_packet(WgKind::Data(sealed))
            else {
                panic!("not decrypted");
            };
            assert_eq!(opened.len(), pkt.len());
            black_box(opened);
        },
    );
}

/// The anchor for the row above: ChaCha20-Poly1305 alone (aws-lc, which
/// gotatun uses), sealing and opening a 1420-byte payload in place.
fn bench_aead() {
    use aws_lc_rs::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, UnboundKey};
    let key = LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, &[7; 32]).expect("key"));
    let mut buf = vec![0x5a_u8; MTU + 16];
    let mut counter = 0u64;
    bench(
        &format!("ChaCha20-Poly1305 seal + open {MTU} B alone"),
        1,
        MTU,
        || {
            counter += 1;
            let mut nonce = [0u8; 12];
            nonce[4..].copy_from_slice(&counter.to_le_bytes());
            let (payload, tag_space) = buf.split_at_mut(MTU);
            let tag = key
                .seal_in_place_separate_tag(
                    Nonce::assume_unique_for_key(nonce),
                    Aad::empty(),
                    payload,
                )
                .expect("seal");
            tag_space.copy_from_slice(tag.as_ref());
            let opened = key
                .open_in_place(Nonce::assume_unique_for_key(nonce), Aad::empty(), &mut buf)
                .expect("open");
            black_box(opened.len());
        },
    );
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` runs us too, then
    // without it: one quick pass is enough there.
    if !std::env::args().any(|a| a == "--bench") {
        let (hdr, pkt) = super_packet(65535 - HEADERS);
        assert_eq!(split_into_vecs(&hdr, &pkt).len(), 48);
        return;
    }
    println!("datapath micro-benchmark (median of 7 rounds; VNET_HDR_LEN = {VNET_HDR_LEN})");
    bench_gso_split();
    bench_gso_in_place();
    bench_gro();
    bench_checksum();
    bench_crypto();
    bench_aead();
}
