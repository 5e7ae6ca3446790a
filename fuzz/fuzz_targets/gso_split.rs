//! What the TUN hands the engine: a `virtio_net_hdr` and a packet, decoded,
//! checksummed or split as `tun::split_read` does. Invariants: no panic; a
//! split asks for exactly as many buffers as it returns segments, never more
//! than `MAX_GSO_SEGMENTS`, none longer than the MTU; a refused frame costs
//! no buffer.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wireguard4netns::offload::{self, MAX_GSO_SEGMENTS, MAX_PACKET, VNET_HDR_LEN, VirtioNetHdr};

fuzz_target!(|data: &[u8]| {
    // Two bytes of MTU (the range `TunDevice` sees), then what a read returns.
    let [m0, m1, rest @ ..] = data else {
        return;
    };
    let mtu = usize::from(u16::from_le_bytes([*m0, *m1])).clamp(68, 4096);
    let Some(hdr) = VirtioNetHdr::decode(rest) else {
        return;
    };
    assert_eq!(hdr.encode()[..], rest[..VNET_HDR_LEN]);
    let pkt = &rest[VNET_HDR_LEN..];
    if hdr.gso() == VirtioNetHdr::GSO_NONE {
        let mut single = pkt.to_vec();
        if offload::complete_checksum(&mut single, &hdr).is_err() {
            assert_eq!(single, pkt, "a refused packet is left alone");
        }
        return;
    }
    let mut allocs = 0usize;
    let mut emitted = 0usize;
    let result = offload::gso_split(
        pkt,
        &hdr,
        mtu,
        |len| {
            allocs += 1;
            assert!(
                allocs <= MAX_GSO_SEGMENTS,
                "more buffers than segments allowed"
            );
            assert!(
                len <= mtu && len <= MAX_PACKET,
                "segment of {len} bytes, MTU {mtu}"
            );
            vec![0u8; len]
        },
        |seg| {
            emitted += 1;
            assert!(seg.len() <= mtu);
        },
    );
    match result {
        Ok(n) => {
            assert!((1..=MAX_GSO_SEGMENTS).contains(&n));
            assert_eq!(n, allocs);
            assert_eq!(n, emitted);
        }
        Err(e) => {
            assert_eq!(emitted, 0, "{e}: refused after emitting");
            assert_eq!(allocs, 0, "{e}: refused after taking buffers");
        }
    }
});
