//! GRO on what comes out of the tunnel (decrypted packets from the peer,
//! which a hostile peer controls): a batch of arbitrary packets through the
//! coalescing table, then every write assembled. Invariants: no panic; every
//! packet goes into exactly one write; no write holds more than
//! `MAX_SEGMENTS` segments or more than a 64 KiB packet after its header; the
//! assembled write is as long as it says.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wireguard4netns::offload::{Coalescer, MAX_PACKET, MAX_SEGMENTS, VNET_HDR_LEN, VirtioNetHdr};

/// Most packets in a batch: the TUN's `WRITE_BATCH`.
const BATCH: usize = 64;

fuzz_target!(|data: &[u8]| {
    // One byte of options (bit 0: UDP GRO too), then packets, each a 2-byte
    // little-endian length and its bytes.
    let Some((&opts, mut rest)) = data.split_first() else {
        return;
    };
    let mut packets: Vec<Vec<u8>> = Vec::new();
    while rest.len() >= 2 && packets.len() < BATCH {
        let len = usize::from(u16::from_le_bytes([rest[0], rest[1]])).min(rest.len() - 2);
        packets.push(rest[2..2 + len].to_vec());
        rest = &rest[2 + len..];
    }
    // Repeating the last packet with a rising sequence number gives the
    // table runs to merge, which random bytes rarely make.
    if opts & 2 != 0
        && let Some(last) = packets.last().cloned()
    {
        for i in 1..=u32::from(opts >> 2) {
            if packets.len() == BATCH {
                break;
            }
            let mut p = last.clone();
            if p.len() >= 28 {
                let at = if p[0] >> 4 == 6 { 44 } else { 24 };
                if p.len() >= at + 4 {
                    let seq = u32::from_be_bytes([p[at], p[at + 1], p[at + 2], p[at + 3]]);
                    let step = (p.len().saturating_sub(at + 16)) as u32;
                    p[at..at + 4]
                        .copy_from_slice(&seq.wrapping_add(step.wrapping_mul(i)).to_be_bytes());
                }
            }
            packets.push(p);
        }
    }
    let mut gro = Coalescer::new(opts & 1 != 0);
    let writes = gro.coalesce(&mut packets);
    let mut segments = 0usize;
    for w in &writes {
        let n = usize::from(w.segments);
        assert!((1..=MAX_SEGMENTS).contains(&n), "{n} segments");
        segments += n;
        let bytes = gro.assemble(w, &packets);
        assert_eq!(bytes.len(), VNET_HDR_LEN + w.len as usize);
        if n > 1 {
            assert!(w.len as usize <= MAX_PACKET, "write of {} bytes", w.len);
            assert!(w.hdr.gso() != VirtioNetHdr::GSO_NONE);
            assert!(w.hdr.gso_size > 0);
        } else {
            assert_eq!(w.hdr, VirtioNetHdr::default());
        }
    }
    assert_eq!(segments, packets.len(), "every packet in exactly one write");
});
