//! TUN offloads as pure packet code: the `virtio_net_hdr` in front of every
//! packet of a TUN opened with `IFF_VNET_HDR`, splitting the kernel's GSO
//! super-packets into MTU-sized IP packets, coalescing received TCP (and UDP)
//! segments into super-packets (GRO), and the Internet checksum they all need.
//!
//! Why: one `read`/`write` per 1420-byte packet caps a userspace tunnel near
//! 1 Gbit/s. With `TUNSETOFFLOAD` the namespace's TCP stack hands us up to
//! 64 KiB per `read` (TSO as if the TUN were a NIC) and accepts up to 64 KiB
//! per `write` (as if we were a NIC doing GRO), so the kernel's per-packet
//! work (`tun_get_user`, the IP and TCP receive path, `tun_put_user`) runs once
//! per ~44 segments.
//!
//! The rules follow the kernel: `include/uapi/linux/virtio_net.h` for the
//! header (little-endian on every architecture we build for, since `TUN`
//! defaults to the host's byte order and virtio 1.0 is little-endian),
//! `tcp_gso_segment()` for splitting (sequence numbers advance, IPv4 IDs
//! increment, FIN/PSH only on the last segment, CWR only on the first), and
//! `tcp_gro_receive()` for coalescing (same flow and ACK, contiguous sequence
//! numbers, same options and IP header fields, equal segment sizes with only
//! the last one shorter, PSH ends a group). wireguard-go's
//! `tun/offload_linux.go` is the userspace precedent.
//!
//! Checksums: a super-packet the kernel gives us carries only the
//! pseudo-header part of its TCP/UDP checksum (`VIRTIO_NET_HDR_F_NEEDS_CSUM`,
//! `CHECKSUM_PARTIAL` inside the kernel), so every segment we cut gets its full
//! checksum computed here; so does a single packet flagged `NEEDS_CSUM`. When we
//! coalesce, we first verify each segment's checksum (as wireguard-go does) so
//! that a segment that arrived with a bad checksum is written on its own and
//! dropped by the kernel, never folded into a super-packet whose checksum the
//! kernel would then trust.

#![deny(clippy::unwrap_used)]

use std::ops::{Deref, DerefMut};

/// Size of the `virtio_net_hdr` we configure with `TUNSETVNETHDRSZ`: the plain
/// 10-byte header, without the `num_buffers` field of the mergeable-buffers
/// variant (which TUN does not use).
pub const VNET_HDR_LEN: usize = 10;

/// The largest packet we build or accept: IPv4 total length and IPv6 payload
/// length are 16-bit fields (no jumbograms, no BIG TCP on a TUN).
pub const MAX_PACKET: usize = 65535;

/// At most this many segments go into one coalesced super-packet (the kernel's
/// own GRO stops at 64 too, `MAX_GRO_SKBS`/`gro_max_size` aside).
pub const MAX_SEGMENTS: usize = 64;

/// At most this many segments come out of one GSO super-packet read from the
/// TUN; a frame that would split into more is dropped whole, never expanded
/// (each segment costs a 4 KiB pool buffer, so a 64 KiB frame with a 1-byte
/// `gso_size` would cost ~65,000 of them, ~256 MiB, from one `read`).
///
/// Why no kernel TUN exceeds it: for USO, `udp_send_skb()` refuses a
/// `UDP_SEGMENT` send of more than `UDP_MAX_SEGMENTS` datagrams, 64 before
/// Linux 6.9 and 128 since. For TCP, a 64 KiB frame holds at most 128 segments
/// of 512 bytes; the smallest MSS every IPv4 host must accept is 536
/// (RFC 1122, the kernel's `TCP_MSS_DEFAULT` when a peer sends no MSS option),
/// 524 bytes of data a segment after the timestamp option, so a 64 KiB frame
/// of any connection not squeezed below that by its peer stays within 125.
/// A peer that advertises a tinier MSS (the kernel accepts down to
/// `tcp_min_snd_mss`, 48) gets frames too long to forward; its connection
/// stalls instead of costing us memory, which is the trade the kernel made too
/// when it raised that floor against CVE-2019-11479.
pub const MAX_GSO_SEGMENTS: usize = 128;

/// The smallest TCP `gso_size` a kernel produces: the MSS it sends with is
/// never below `tcp_min_snd_mss` (at least `TCP_MIN_SND_MSS` = 48), which the
/// kernel sizes as "room for the full set of TCP options (40 bytes) and 8 bytes
/// of data", and `tcp_bound_to_half_wnd()` keeps the same floor
/// (68 bytes minus a 60-byte header). A frame forwarded through the namespace
/// keeps the segment size GRO found, and `tcp_gro_receive()` merges only
/// segments of equal size, which a Linux sender cuts with the same floor.
/// Anything smaller is forged (or sent by a TCP that is not Linux's and
/// splits below any MSS a peer can ask for).
pub const MIN_TCP_GSO_SIZE: u16 = 8;

const PROTO_TCP: u8 = 6;
const PROTO_UDP: u8 = 17;

const TCP_FIN: u8 = 0x01;
const TCP_PSH: u8 = 0x08;
const TCP_ACK: u8 = 0x10;
const TCP_CWR: u8 = 0x80;

const UDP_HDR_LEN: usize = 8;
const IPV6_HDR_LEN: usize = 40;

/// `struct virtio_net_hdr` (`include/uapi/linux/virtio_net.h`), decoded.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VirtioNetHdr {
    pub flags: u8,
    pub gso_type: u8,
    /// Length of the headers to repeat in each segment. The kernel fills it
    /// with the linear part of the skb when it hands us a packet, so we do
    /// not rely on it when splitting.
    pub hdr_len: u16,
    pub gso_size: u16,
    pub csum_start: u16,
    pub csum_offset: u16,
}

impl VirtioNetHdr {
    /// `VIRTIO_NET_HDR_F_NEEDS_CSUM`: the checksum at `csum_start +
    /// csum_offset` holds only the pseudo-header sum.
    pub const F_NEEDS_CSUM: u8 = 1;
    /// `VIRTIO_NET_HDR_F_DATA_VALID`.
    pub const F_DATA_VALID: u8 = 2;
    pub const GSO_NONE: u8 = 0;
    pub const GSO_TCPV4: u8 = 1;
    /// UFO (IP fragmentation of UDP); we never enable it.
    pub const GSO_UDP: u8 = 3;
    pub const GSO_TCPV6: u8 = 4;
    /// USO: UDP segmentation (`UDP_SEGMENT`), Linux 6.2+.
    pub const GSO_UDP_L4: u8 = 5;
    /// Flag bit on `gso_type`: the TCP stream uses ECN.
    pub const GSO_ECN: u8 = 0x80;

    /// Decode the header at the start of `bytes` (little-endian fields).
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let b: &[u8; VNET_HDR_LEN] = bytes.get(..VNET_HDR_LEN)?.try_into().ok()?;
        Some(Self {
            flags: b[0],
            gso_type: b[1],
            hdr_len: u16::from_le_bytes([b[2], b[3]]),
            gso_size: u16::from_le_bytes([b[4], b[5]]),
            csum_start: u16::from_le_bytes([b[6], b[7]]),
            csum_offset: u16::from_le_bytes([b[8], b[9]]),
        })
    }

    /// The header's wire form.
    pub fn encode(&self) -> [u8; VNET_HDR_LEN] {
        let mut b = [0u8; VNET_HDR_LEN];
        b[0] = self.flags;
        b[1] = self.gso_type;
        b[2..4].copy_from_slice(&self.hdr_len.to_le_bytes());
        b[4..6].copy_from_slice(&self.gso_size.to_le_bytes());
        b[6..8].copy_from_slice(&self.csum_start.to_le_bytes());
        b[8..10].copy_from_slice(&self.csum_offset.to_le_bytes());
        b
    }

    /// The GSO type without the ECN flag.
    pub fn gso(&self) -> u8 {
        self.gso_type & !Self::GSO_ECN
    }
}

/// A packet we cannot split or finish; it is dropped (the caller logs why).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum OffloadError {
    #[error("packet is shorter than its headers")]
    Truncated,
    #[error("not an IPv4 or IPv6 packet")]
    NotIp,
    #[error("GSO type {0} is not supported")]
    UnsupportedGso(u8),
    #[error("GSO type does not match the packet's IP version or protocol")]
    GsoMismatch,
    #[error("GSO packet with a segment size of 0")]
    ZeroGsoSize,
    #[error("checksum start/offset outside the packet")]
    BadChecksumOffset,
    #[error("packet is longer than 65535 bytes")]
    TooLong,
    #[error(
        "TCP GSO packet with a segment size of {0}, below the kernel's minimum of {MIN_TCP_GSO_SIZE}"
    )]
    GsoSizeTooSmall(u16),
    #[error("GSO segments of {0} bytes, above the interface's MTU of {1}")]
    SegmentTooLarge(usize, usize),
    #[error("GSO packet of {0} segments, more than the {MAX_GSO_SEGMENTS} a kernel produces")]
    TooManySegments(usize),
}

impl OffloadError {
    /// The frame's GSO parameters are ones no kernel TUN produces: only a
    /// program writing its own `virtio_net_hdr` (`AF_PACKET` with
    /// `PACKET_VNET_HDR`) makes them, so they are counted apart.
    #[must_use]
    pub fn is_forged_gso(&self) -> bool {
        matches!(
            self,
            Self::ZeroGsoSize
                | Self::GsoSizeTooSmall(_)
                | Self::SegmentTooLarge(..)
                | Self::TooManySegments(_)
        )
    }
}

// ---- checksums --------------------------------------------------------------

/// Fold a one's-complement accumulator to 16 bits (not complemented).
#[inline]
pub fn fold(mut sum: u64) -> u16 {
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// The one's-complement sum of `data` as big-endian 16-bit words (an odd last
/// byte is padded with zero), folded to 16 bits and not complemented: RFC 1071.
///
/// The bulk is summed as native-endian 32-bit words into a 64-bit accumulator
/// (which cannot overflow below 2^32 words), a loop the compiler vectorises;
/// RFC 1071's byte-order independence lets us swap once at the end.
#[inline]
pub fn ones_sum(data: &[u8]) -> u16 {
    let mut chunks = data.chunks_exact(4);
    let mut acc: u64 = 0;
    for c in &mut chunks {
        acc += u64::from(u32::from_ne_bytes([c[0], c[1], c[2], c[3]]));
    }
    // Native-endian 16-bit words on a little-endian machine are the
    // byte-swapped big-endian words, and so is their one's-complement sum.
    let bulk = u16::from_be(fold(acc));
    let mut tail = u64::from(bulk);
    let rest = chunks.remainder();
    let mut pairs = rest.chunks_exact(2);
    for p in &mut pairs {
        tail += u64::from(u16::from_be_bytes([p[0], p[1]]));
    }
    if let [last] = pairs.remainder() {
        tail += u64::from(*last) << 8;
    }
    fold(tail)
}

/// Copy `src` into `dst` (of the same length) and return the one's-complement
/// sum of the bytes, as [`ones_sum`] would: one pass over the data instead of a
/// copy and then a second read for the checksum.
///
/// Blocks of 64 bytes are copied, then summed while they are still in L1 (two
/// simple loops the compiler vectorises, where one loop that loads, stores and
/// adds per word is not); the tail goes through [`ones_sum`].
#[inline]
pub fn copy_and_sum(dst: &mut [u8], src: &[u8]) -> u16 {
    const BLOCK: usize = 64;
    debug_assert_eq!(dst.len(), src.len());
    let mut acc: u64 = 0;
    let mut d = dst.chunks_exact_mut(BLOCK);
    let mut s = src.chunks_exact(BLOCK);
    for (d, s) in (&mut d).zip(&mut s) {
        d.copy_from_slice(s);
        for w in s.chunks_exact(4) {
            acc += u64::from(u32::from_ne_bytes([w[0], w[1], w[2], w[3]]));
        }
    }
    let (d, s) = (d.into_remainder(), s.remainder());
    d.copy_from_slice(s);
    // The blocks are a multiple of 4 bytes long, so the tail starts on a word
    // boundary and its sum adds to theirs.
    let bulk = u16::from_be(fold(acc));
    fold(u64::from(bulk) + u64::from(ones_sum(s)))
}

/// The (unfolded) sum of the TCP/UDP pseudo header: addresses, protocol and
/// the L4 length.
#[inline]
pub fn pseudo_header_sum(src: &[u8], dst: &[u8], proto: u8, l4_len: usize) -> u64 {
    u64::from(ones_sum(src)) + u64::from(ones_sum(dst)) + u64::from(proto) + l4_len as u64
}

fn get_u16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn put_u16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_be_bytes());
}

fn get_u32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn put_u32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_be_bytes());
}

/// Recompute the IPv4 header checksum of `pkt` (header length from IHL).
fn set_ipv4_header_checksum(pkt: &mut [u8]) {
    let ihl = usize::from(pkt[0] & 0x0f) * 4;
    put_u16(pkt, 10, 0);
    let c = !ones_sum(&pkt[..ihl]);
    put_u16(pkt, 10, c);
}

/// Where an IP packet's addresses are.
fn addresses(pkt: &[u8]) -> (&[u8], &[u8]) {
    if pkt[0] >> 4 == 4 {
        (&pkt[12..16], &pkt[16..20])
    } else {
        (&pkt[8..24], &pkt[24..40])
    }
}

/// Compute and store the full TCP/UDP checksum of `pkt`, whose L4 header
/// starts at `l4` and whose payload, from `hdrs` on (an even distance from
/// `l4`), sums to `payload_sum` (see [`copy_and_sum`]). The checksum field is
/// cleared first, so whatever it held is ignored.
fn set_l4_checksum(pkt: &mut [u8], l4: usize, hdrs: usize, payload_sum: u16, proto: u8) {
    debug_assert_eq!((hdrs - l4) % 2, 0);
    let at = l4 + if proto == PROTO_TCP { 16 } else { 6 };
    put_u16(pkt, at, 0);
    let (src, dst) = addresses(pkt);
    let sum = pseudo_header_sum(src, dst, proto, pkt.len() - l4)
        + u64::from(ones_sum(&pkt[l4..hdrs]))
        + u64::from(payload_sum);
    // 0 means "no checksum" for UDP over IPv4; its one's-complement twin
    // 0xffff is the same value (the kernel's CSUM_MANGLED_0).
    let c = match !fold(sum) {
        0 => 0xffff,
        c => c,
    };
    put_u16(pkt, at, c);
}

/// Whether the TCP/UDP checksum of `pkt` (L4 header at `l4`) verifies.
fn l4_checksum_ok(pkt: &[u8], l4: usize, proto: u8) -> bool {
    let (src, dst) = addresses(pkt);
    let sum = pseudo_header_sum(src, dst, proto, pkt.len() - l4) + u64::from(ones_sum(&pkt[l4..]));
    fold(sum) == 0xffff
}

/// Finish the checksum of a single (non-GSO) packet the kernel flagged
/// `NEEDS_CSUM`: sum from `csum_start` to the end, over the pseudo-header sum
/// already stored in the field, and store the complement. A no-op otherwise.
pub fn complete_checksum(pkt: &mut [u8], hdr: &VirtioNetHdr) -> Result<(), OffloadError> {
    if hdr.flags & VirtioNetHdr::F_NEEDS_CSUM == 0 {
        return Ok(());
    }
    let start = usize::from(hdr.csum_start);
    let at = start + usize::from(hdr.csum_offset);
    if start > pkt.len() || at + 2 > pkt.len() {
        return Err(OffloadError::BadChecksumOffset);
    }
    let c = match !ones_sum(&pkt[start..]) {
        0 => 0xffff,
        c => c,
    };
    put_u16(pkt, at, c);
    Ok(())
}

// ---- GSO split --------------------------------------------------------------

/// The parsed headers of a super-packet.
struct Layout {
    v6: bool,
    proto: u8,
    /// Offset of the TCP/UDP header.
    l4: usize,
    /// Length of all headers (IP + TCP/UDP, with options).
    hdrs: usize,
}

fn gso_layout(pkt: &[u8], hdr: &VirtioNetHdr) -> Result<Layout, OffloadError> {
    let (v6, proto) = match hdr.gso() {
        VirtioNetHdr::GSO_TCPV4 => (Some(false), PROTO_TCP),
        VirtioNetHdr::GSO_TCPV6 => (Some(true), PROTO_TCP),
        VirtioNetHdr::GSO_UDP_L4 => (None, PROTO_UDP),
        other => return Err(OffloadError::UnsupportedGso(other)),
    };
    let first = *pkt.first().ok_or(OffloadError::Truncated)?;
    let is_v6 = match first >> 4 {
        4 => false,
        6 => true,
        _ => return Err(OffloadError::NotIp),
    };
    if v6.is_some_and(|v6| v6 != is_v6) {
        return Err(OffloadError::GsoMismatch);
    }
    let l4 = if is_v6 {
        if pkt.len() < IPV6_HDR_LEN {
            return Err(OffloadError::Truncated);
        }
        // Extension headers would need walking; the kernel's TSO to a TUN
        // never produces them for our traffic, so they are refused.
        if pkt[6] != proto {
            return Err(OffloadError::GsoMismatch);
        }
        IPV6_HDR_LEN
    } else {
        let ihl = usize::from(first & 0x0f) * 4;
        if ihl < 20 || pkt.len() < ihl {
            return Err(OffloadError::Truncated);
        }
        if pkt[9] != proto {
            return Err(OffloadError::GsoMismatch);
        }
        ihl
    };
    if hdr.flags & VirtioNetHdr::F_NEEDS_CSUM != 0 && usize::from(hdr.csum_start) != l4 {
        return Err(OffloadError::BadChecksumOffset);
    }
    let l4_len = if proto == PROTO_TCP {
        if pkt.len() < l4 + 20 {
            return Err(OffloadError::Truncated);
        }
        let doff = usize::from(pkt[l4 + 12] >> 4) * 4;
        if doff < 20 {
            return Err(OffloadError::Truncated);
        }
        doff
    } else {
        UDP_HDR_LEN
    };
    let hdrs = l4 + l4_len;
    if pkt.len() < hdrs {
        return Err(OffloadError::Truncated);
    }
    Ok(Layout {
        v6: is_v6,
        proto,
        l4,
        hdrs,
    })
}

/// The number of segments a super-packet of `len` bytes splits into, or why
/// its GSO parameters are not ones a kernel TUN of this `mtu` produces (see
/// [`MAX_GSO_SEGMENTS`] and [`MIN_TCP_GSO_SIZE`]): checked before a single
/// buffer is taken.
fn gso_segments(
    len: usize,
    hdr: &VirtioNetHdr,
    layout: &Layout,
    mtu: usize,
) -> Result<usize, OffloadError> {
    if len > MAX_PACKET {
        return Err(OffloadError::TooLong);
    }
    if hdr.gso_size == 0 {
        return Err(OffloadError::ZeroGsoSize);
    }
    if layout.proto == PROTO_TCP && hdr.gso_size < MIN_TCP_GSO_SIZE {
        return Err(OffloadError::GsoSizeTooSmall(hdr.gso_size));
    }
    // The kernel's MSS (and, for USO, `udp_send_skb()`'s check against the
    // fragment size) keeps headers plus one segment within the device MTU.
    // That is the configured MTU: if root inside raises the TUN's, TSO frames
    // cut for the larger one are dropped (plain packets up to the engine's
    // 4 KiB buffers still pass).
    let gso_size = usize::from(hdr.gso_size);
    if layout.hdrs + gso_size > mtu {
        return Err(OffloadError::SegmentTooLarge(layout.hdrs + gso_size, mtu));
    }
    // A payload of zero still yields one segment (the headers alone).
    let count = (len - layout.hdrs).div_ceil(gso_size).max(1);
    if count > MAX_GSO_SEGMENTS {
        return Err(OffloadError::TooManySegments(count));
    }
    Ok(count)
}

/// Longest headers a segment repeats: IPv4 with options (60) and TCP with
/// options (60).
const MAX_HDRS: usize = 120;

/// How one GSO super-packet splits, and the headers its segments share: what
/// [`GsoPlan::finish`] writes into each segment.
pub struct GsoPlan {
    v6: bool,
    proto: u8,
    l4: usize,
    hdrs: usize,
    gso_size: usize,
    count: usize,
    /// Length of the whole super-packet.
    len: usize,
    ip_id: u16,
    seq: u32,
    flags: u8,
    headers: [u8; MAX_HDRS],
}

/// Plan the split of a GSO super-packet `len` bytes long (described by `hdr`,
/// read from a TUN of this `mtu`) from `head`, its first bytes, which must
/// hold all its headers. A frame whose GSO parameters no kernel produces is
/// refused (see [`OffloadError::is_forged_gso`]), so a plan has at most
/// [`MAX_GSO_SEGMENTS`] segments.
pub fn gso_plan(
    head: &[u8],
    len: usize,
    hdr: &VirtioNetHdr,
    mtu: usize,
) -> Result<GsoPlan, OffloadError> {
    let layout = gso_layout(head, hdr)?;
    if len < layout.hdrs {
        return Err(OffloadError::Truncated);
    }
    let count = gso_segments(len, hdr, &layout, mtu)?;
    let Layout {
        v6,
        proto,
        l4,
        hdrs,
    } = layout;
    if hdrs > MAX_HDRS {
        return Err(OffloadError::Truncated);
    }
    let mut headers = [0u8; MAX_HDRS];
    headers[..hdrs].copy_from_slice(&head[..hdrs]);
    Ok(GsoPlan {
        v6,
        proto,
        l4,
        hdrs,
        gso_size: usize::from(hdr.gso_size),
        count,
        len,
        ip_id: if v6 { 0 } else { get_u16(head, 4) },
        seq: if proto == PROTO_TCP {
            get_u32(head, l4 + 4)
        } else {
            0
        },
        flags: if proto == PROTO_TCP { head[l4 + 13] } else { 0 },
        headers,
    })
}

impl GsoPlan {
    /// Length of the headers each segment repeats.
    pub fn hdrs(&self) -> usize {
        self.hdrs
    }

    /// Payload bytes per segment (the last may have fewer).
    pub fn gso_size(&self) -> usize {
        self.gso_size
    }

    /// Number of segments.
    pub fn count(&self) -> usize {
        self.count
    }

    /// Length of segment `i`, headers included.
    pub fn segment_len(&self, i: usize) -> usize {
        let payload = self.len - self.hdrs;
        let start = (i * self.gso_size).min(payload);
        self.hdrs + (payload - start).min(self.gso_size)
    }

    /// Make segment `i` (of [`GsoPlan::segment_len`]) a complete packet whose
    /// payload is already in place after [`GsoPlan::hdrs`] bytes: write the
    /// headers, lengths, IDs, sequence number, flags and checksums.
    pub fn finish(&self, seg: &mut [u8], i: usize) {
        let payload_sum = ones_sum(&seg[self.hdrs..]);
        self.finish_summed(seg, i, payload_sum);
    }

    /// [`GsoPlan::finish`] with the payload's sum already known.
    fn finish_summed(&self, out: &mut [u8], i: usize, payload_sum: u16) {
        let Self {
            v6,
            proto,
            l4,
            hdrs,
            count,
            ..
        } = *self;
        let len = out.len();
        debug_assert_eq!(len, self.segment_len(i));
        out[..hdrs].copy_from_slice(&self.headers[..hdrs]);
        if v6 {
            put_u16(out, 4, (len - IPV6_HDR_LEN) as u16);
        } else {
            put_u16(out, 2, len as u16);
            put_u16(out, 4, self.ip_id.wrapping_add(i as u16));
            set_ipv4_header_checksum(out);
        }
        if proto == PROTO_TCP {
            put_u32(
                out,
                l4 + 4,
                self.seq.wrapping_add((i * self.gso_size) as u32),
            );
            let mut f = self.flags;
            if i + 1 < count {
                f &= !(TCP_FIN | TCP_PSH);
            }
            if i > 0 {
                f &= !TCP_CWR;
            }
            out[l4 + 13] = f;
        } else {
            put_u16(out, l4 + 4, (len - l4) as u16);
        }
        set_l4_checksum(out, l4, hdrs, payload_sum, proto);
    }
}

/// Split the GSO super-packet `pkt` (described by `hdr`), read from a TUN of
/// this `mtu`, into IP packets of at most `hdr.gso_size` payload bytes each,
/// with complete headers and checksums. A frame whose GSO parameters no kernel
/// produces is refused whole (see [`OffloadError::is_forged_gso`]), so at most
/// [`MAX_GSO_SEGMENTS`] segments come out. For each segment, `alloc(len)` must
/// return a buffer of exactly `len` bytes, which is filled and passed to
/// `emit`. Returns the number of segments. A packet with `GSO_NONE` is not for
/// this function (see [`complete_checksum`]).
pub fn gso_split<B: DerefMut<Target = [u8]>>(
    pkt: &[u8],
    hdr: &VirtioNetHdr,
    mtu: usize,
    mut alloc: impl FnMut(usize) -> B,
    mut emit: impl FnMut(B),
) -> Result<usize, OffloadError> {
    let plan = gso_plan(pkt, pkt.len(), hdr, mtu)?;
    let (hdrs, gso_size) = (plan.hdrs, plan.gso_size);
    let payload = &pkt[hdrs..];
    for i in 0..plan.count {
        let start = (i * gso_size).min(payload.len());
        let chunk = &payload[start..(start + gso_size).min(payload.len())];
        let len = hdrs + chunk.len();
        let mut seg = alloc(len);
        let out: &mut [u8] = &mut seg;
        debug_assert_eq!(
            out.len(),
            len,
            "alloc must return a buffer of the asked length"
        );
        let payload_sum = copy_and_sum(&mut out[hdrs..], chunk);
        plan.finish_summed(out, i, payload_sum);
        emit(seg);
    }
    Ok(plan.count)
}

// ---- GRO coalescing ---------------------------------------------------------

/// What a group of packets becomes when written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// Written as it is, with a zero header.
    Single,
    Tcp,
    Udp,
}

const NONE: u16 = u16::MAX;

/// One output packet: a head packet, possibly followed by the payloads of
/// further segments of the same flow.
#[derive(Clone, Copy, Debug)]
struct Group {
    kind: Kind,
    head: u16,
    tail: u16,
    count: u16,
    v6: bool,
    l4: u8,
    hdrs: u8,
    gso_size: u16,
    /// Length of the super-packet so far (headers once, all payloads).
    total: u32,
    /// TCP: the sequence number the next segment must carry.
    next_seq: u32,
    /// Whether another segment may still be appended.
    open: bool,
    /// The head's L4 checksum was verified (done lazily, on the first append).
    head_checked: bool,
    /// The last appended segment carries PSH.
    psh: bool,
}

/// A segment's parsed headers, as far as coalescing needs them.
struct Candidate {
    kind: Kind,
    v6: bool,
    l4: usize,
    hdrs: usize,
    payload: usize,
    seq: u32,
    psh: bool,
}

fn candidate(pkt: &[u8], udp: bool) -> Option<Candidate> {
    if pkt.len() > MAX_PACKET || pkt.len() < 20 {
        return None;
    }
    let (v6, proto, l4) = match pkt[0] >> 4 {
        4 => {
            // No options, no fragments, total length exact.
            if pkt[0] & 0x0f != 5
                || get_u16(pkt, 6) & 0x3fff != 0
                || usize::from(get_u16(pkt, 2)) != pkt.len()
            {
                return None;
            }
            (false, pkt[9], 20)
        }
        6 => {
            if pkt.len() < IPV6_HDR_LEN || usize::from(get_u16(pkt, 4)) != pkt.len() - IPV6_HDR_LEN
            {
                return None;
            }
            (true, pkt[6], IPV6_HDR_LEN)
        }
        _ => return None,
    };
    match proto {
        PROTO_TCP => {
            if pkt.len() < l4 + 20 {
                return None;
            }
            let doff = usize::from(pkt[l4 + 12] >> 4) * 4;
            if doff < 20 || pkt.len() < l4 + doff {
                return None;
            }
            let flags = pkt[l4 + 13];
            if flags != TCP_ACK && flags != TCP_ACK | TCP_PSH {
                return None;
            }
            let payload = pkt.len() - l4 - doff;
            if payload == 0 {
                return None;
            }
            Some(Candidate {
                kind: Kind::Tcp,
                v6,
                l4,
                hdrs: l4 + doff,
                payload,
                seq: get_u32(pkt, l4 + 4),
                psh: flags & TCP_PSH != 0,
            })
        }
        PROTO_UDP if udp => {
            let payload = pkt.len().checked_sub(l4 + UDP_HDR_LEN)?;
            if payload == 0 || usize::from(get_u16(pkt, l4 + 4)) != pkt.len() - l4 {
                return None;
            }
            Some(Candidate {
                kind: Kind::Udp,
                v6,
                l4,
                hdrs: l4 + UDP_HDR_LEN,
                payload,
                seq: 0,
                psh: false,
            })
        }
        _ => None,
    }
}

/// Same addresses and ports (and, with `ack`, the same TCP ACK number:
/// segments with different ACKs are kept apart as the kernel's GRO does).
fn same_flow(a: &[u8], b: &[u8], v6: bool, l4: usize, ack: bool) -> bool {
    let addrs = if v6 { 8..40 } else { 12..20 };
    if a[0] >> 4 != b[0] >> 4 || a[addrs.clone()] != b[addrs] || a[l4..l4 + 4] != b[l4..l4 + 4] {
        return false;
    }
    !ack || a[l4 + 8..l4 + 12] == b[l4 + 8..l4 + 12]
}

/// The transport of a packet that is not a coalescing candidate, if it is a
/// plain (unfragmented, option-less IPv4, or IPv6 without extension headers)
/// TCP or UDP packet: its kind, IP version and L4 offset.
fn transport(pkt: &[u8]) -> Option<(Kind, bool, usize)> {
    let (v6, proto, l4) = match pkt.first()? >> 4 {
        4 if pkt.len() >= 20 && pkt[0] & 0x0f == 5 && get_u16(pkt, 6) & 0x3fff == 0 => {
            (false, pkt[9], 20)
        }
        6 if pkt.len() >= IPV6_HDR_LEN => (true, pkt[6], IPV6_HDR_LEN),
        _ => return None,
    };
    let kind = match proto {
        PROTO_TCP if pkt.len() >= l4 + 20 => Kind::Tcp,
        PROTO_UDP if pkt.len() >= l4 + UDP_HDR_LEN => Kind::Udp,
        _ => return None,
    };
    Some((kind, v6, l4))
}

/// IP header fields that must match for segments to merge: IPv4 TOS, DF and
/// TTL; IPv6 traffic class and hop limit.
fn ip_fields_match(a: &[u8], b: &[u8], v6: bool) -> bool {
    if v6 {
        a[0] == b[0] && a[1] >> 4 == b[1] >> 4 && a[7] == b[7]
    } else {
        a[1] == b[1] && a[6] >> 5 == b[6] >> 5 && a[8] == b[8]
    }
}

/// Coalesces a batch of IP packets into as few writes as possible. Reused
/// across batches, so it allocates only while growing to the largest batch.
#[derive(Default)]
pub struct Coalescer {
    udp: bool,
    groups: Vec<Group>,
    /// Per packet index: the next member of its group, or `NONE`.
    next: Vec<u16>,
}

/// One write: the `virtio_net_hdr`, then the packet data (see
/// [`Coalescer::parts`]).
#[derive(Clone, Copy, Debug)]
pub struct Write {
    pub hdr: VirtioNetHdr,
    head: u16,
    hdrs: u16,
    pub segments: u16,
    /// Total length of the packet data (without the `virtio_net_hdr`).
    pub len: u32,
}

impl Coalescer {
    /// `udp`: also coalesce UDP datagrams into `GSO_UDP_L4` packets (needs
    /// Linux 6.2+ on the receiving TUN).
    pub fn new(udp: bool) -> Self {
        Self {
            udp,
            ..Self::default()
        }
    }

    /// Group `packets` into writes; heads of merged groups are rewritten in
    /// place (lengths, IPv4 header checksum, PSH, partial L4 checksum). Returns
    /// the writes in order: packets of one flow keep their order.
    pub fn coalesce<P: DerefMut<Target = [u8]>>(&mut self, packets: &mut [P]) -> Vec<Write> {
        let mut out = Vec::new();
        self.coalesce_into(packets, &mut out);
        out
    }

    /// [`Coalescer::coalesce`] into a reused vector.
    pub fn coalesce_into<P: DerefMut<Target = [u8]>>(
        &mut self,
        packets: &mut [P],
        out: &mut Vec<Write>,
    ) {
        self.groups.clear();
        self.next.clear();
        self.next.resize(packets.len(), NONE);
        out.clear();
        // Indices are u16; a batch never comes close.
        let n = packets.len().min(usize::from(NONE));
        for i in 0..n {
            self.add(packets, i);
        }
        for g in &self.groups {
            out.push(finish(g, packets));
        }
    }

    fn add<P: Deref<Target = [u8]>>(&mut self, packets: &[P], i: usize) {
        let pkt: &[u8] = &packets[i];
        let Some(c) = candidate(pkt, self.udp) else {
            // A packet of a flow that cannot merge (a pure ACK, a FIN) still
            // closes that flow's group: what follows it must not be merged
            // into a write that goes out before it.
            if let Some((kind, v6, l4)) = transport(pkt)
                && let Some(g) = self.groups.iter_mut().rev().find(|g| {
                    g.kind == kind
                        && g.v6 == v6
                        && same_flow(&packets[usize::from(g.head)], pkt, v6, l4, false)
                })
            {
                g.open = false;
            }
            self.groups.push(single(i, pkt.len()));
            return;
        };
        // The latest group of this flow, if any: only it may take the packet,
        // or the flow's packets would be reordered.
        let found = self.groups.iter().rposition(|g| {
            g.kind == c.kind
                && g.v6 == c.v6
                && same_flow(
                    &packets[usize::from(g.head)],
                    pkt,
                    c.v6,
                    c.l4,
                    c.kind == Kind::Tcp,
                )
        });
        if let Some(gi) = found
            && self.try_append(packets, gi, i, &c)
        {
            return;
        }
        self.groups.push(Group {
            kind: c.kind,
            head: i as u16,
            tail: i as u16,
            count: 1,
            v6: c.v6,
            l4: c.l4 as u8,
            hdrs: c.hdrs as u8,
            gso_size: c.payload as u16,
            total: pkt.len() as u32,
            next_seq: c.seq.wrapping_add(c.payload as u32),
            open: !c.psh,
            head_checked: false,
            psh: c.psh,
        });
    }

    fn try_append<P: Deref<Target = [u8]>>(
        &mut self,
        packets: &[P],
        gi: usize,
        i: usize,
        c: &Candidate,
    ) -> bool {
        let g = &mut self.groups[gi];
        let head: &[u8] = &packets[usize::from(g.head)];
        let pkt: &[u8] = &packets[i];
        let l4 = usize::from(g.l4);
        let proto = if g.kind == Kind::Tcp {
            PROTO_TCP
        } else {
            PROTO_UDP
        };
        let fits = g.open
            && usize::from(g.count) < MAX_SEGMENTS
            && c.l4 == l4
            && c.hdrs == usize::from(g.hdrs)
            && c.payload <= usize::from(g.gso_size)
            && g.total as usize + c.payload <= MAX_PACKET
            && (g.kind != Kind::Tcp || c.seq == g.next_seq)
            && ip_fields_match(head, pkt, g.v6)
            // TCP: same flags but PSH, same window-independent header bytes
            // (options), as `tcp_gro_receive` requires.
            && (g.kind != Kind::Tcp
                || (head[l4 + 13] & !TCP_PSH == pkt[l4 + 13] & !TCP_PSH
                    && head[l4 + 20..c.hdrs] == pkt[l4 + 20..c.hdrs]));
        if !fits {
            return false;
        }
        if !g.head_checked {
            if !l4_checksum_ok(head, l4, proto) {
                // The head stays alone; the packet starts a new group.
                g.open = false;
                return false;
            }
            g.head_checked = true;
        }
        if !l4_checksum_ok(pkt, l4, proto) {
            return false;
        }
        let tail = usize::from(g.tail);
        self.next[tail] = i as u16;
        g.tail = i as u16;
        g.count += 1;
        g.total += c.payload as u32;
        g.next_seq = c.seq.wrapping_add(c.payload as u32);
        g.psh = c.psh;
        // A shorter segment or PSH ends the group.
        if c.payload < usize::from(g.gso_size) || c.psh {
            g.open = false;
        }
        true
    }

    /// The byte slices of one write, in order: the head packet whole, then the
    /// payloads of the following segments. (The `virtio_net_hdr` is not
    /// included: it is `w.hdr.encode()`.)
    pub fn parts<'a, P: Deref<Target = [u8]>>(
        &'a self,
        w: &Write,
        packets: &'a [P],
    ) -> impl Iterator<Item = &'a [u8]> + 'a {
        let hdrs = usize::from(w.hdrs);
        let mut at = w.head;
        let mut first = true;
        std::iter::from_fn(move || {
            if at == NONE {
                return None;
            }
            let i = usize::from(at);
            at = self.next.get(i).copied().unwrap_or(NONE);
            let p: &[u8] = &packets[i];
            Some(if std::mem::take(&mut first) {
                p
            } else {
                &p[hdrs..]
            })
        })
    }

    /// One write as a contiguous buffer: `virtio_net_hdr` then the data.
    pub fn assemble<P: Deref<Target = [u8]>>(&self, w: &Write, packets: &[P]) -> Vec<u8> {
        let mut v = Vec::with_capacity(VNET_HDR_LEN + w.len as usize);
        v.extend_from_slice(&w.hdr.encode());
        for part in self.parts(w, packets) {
            v.extend_from_slice(part);
        }
        v
    }
}

fn single(i: usize, len: usize) -> Group {
    Group {
        kind: Kind::Single,
        head: i as u16,
        tail: i as u16,
        count: 1,
        v6: false,
        l4: 0,
        hdrs: 0,
        gso_size: 0,
        total: len as u32,
        next_seq: 0,
        open: false,
        head_checked: false,
        psh: false,
    }
}

/// Rewrite a merged group's head for its super-packet and describe the write.
fn finish<P: DerefMut<Target = [u8]>>(g: &Group, packets: &mut [P]) -> Write {
    let mut w = Write {
        hdr: VirtioNetHdr::default(),
        head: g.head,
        hdrs: u16::from(g.hdrs),
        segments: g.count,
        len: g.total,
    };
    if g.count < 2 {
        return w;
    }
    let head: &mut [u8] = &mut packets[usize::from(g.head)];
    let l4 = usize::from(g.l4);
    let total = g.total as usize;
    let (proto, csum_offset, gso_type) = match (g.kind, g.v6) {
        (Kind::Tcp, false) => (PROTO_TCP, 16, VirtioNetHdr::GSO_TCPV4),
        (Kind::Tcp, true) => (PROTO_TCP, 16, VirtioNetHdr::GSO_TCPV6),
        _ => (PROTO_UDP, 6, VirtioNetHdr::GSO_UDP_L4),
    };
    if g.v6 {
        put_u16(head, 4, (total - IPV6_HDR_LEN) as u16);
    } else {
        put_u16(head, 2, total as u16);
        set_ipv4_header_checksum(head);
    }
    match g.kind {
        Kind::Tcp if g.psh => head[l4 + 13] |= TCP_PSH,
        Kind::Udp => put_u16(head, l4 + 4, (total - l4) as u16),
        _ => {}
    }
    // The pseudo-header sum over the whole L4 length, not complemented: the
    // kernel adds the data when it segments or verifies (CHECKSUM_PARTIAL).
    let (src, dst) = addresses(head);
    let partial = fold(pseudo_header_sum(src, dst, proto, total - l4));
    put_u16(head, l4 + csum_offset, partial);
    w.hdr = VirtioNetHdr {
        flags: VirtioNetHdr::F_NEEDS_CSUM,
        gso_type,
        hdr_len: u16::from(g.hdrs),
        gso_size: g.gso_size,
        csum_start: l4 as u16,
        csum_offset: csum_offset as u16,
    };
    w
}

/// Packet builders and an independent checksum for tests (here and in `tun`).
#[cfg(test)]
pub(crate) mod testing {
    use std::net::IpAddr;

    /// RFC 1071 the slow, obvious way: big-endian 16-bit words of the
    /// concatenated parts, carries folded at the end. Deliberately shares no
    /// code with [`super::ones_sum`].
    pub fn reference_sum(parts: &[&[u8]]) -> u16 {
        let bytes: Vec<u8> = parts.concat();
        let mut sum: u32 = 0;
        for pair in bytes.chunks(2) {
            let hi = u32::from(pair[0]) << 8;
            let lo = pair.get(1).map_or(0, |&b| u32::from(b));
            sum += hi | lo;
        }
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        sum as u16
    }

    /// One direction of a TCP or UDP conversation.
    #[derive(Clone, Copy, Debug)]
    pub struct Flow {
        pub src: IpAddr,
        pub dst: IpAddr,
        pub sport: u16,
        pub dport: u16,
    }

    impl Flow {
        pub fn v4(sport: u16, dport: u16) -> Self {
            Self {
                src: "10.9.0.2".parse().expect("address"),
                dst: "10.9.0.1".parse().expect("address"),
                sport,
                dport,
            }
        }

        pub fn v6(sport: u16, dport: u16) -> Self {
            Self {
                src: "fd09::2".parse().expect("address"),
                dst: "fd09::1".parse().expect("address"),
                sport,
                dport,
            }
        }

        fn addr_bytes(a: IpAddr) -> Vec<u8> {
            match a {
                IpAddr::V4(a) => a.octets().to_vec(),
                IpAddr::V6(a) => a.octets().to_vec(),
            }
        }

        /// An IP packet with `l4` (whose checksum field at `csum_at` is
        /// filled here) as its payload.
        fn ip(&self, proto: u8, id: u16, mut l4: Vec<u8>, csum_at: usize) -> Vec<u8> {
            let (src, dst) = (Self::addr_bytes(self.src), Self::addr_bytes(self.dst));
            let len = l4.len() as u32;
            let pseudo = [
                src.as_slice(),
                dst.as_slice(),
                &[0, proto],
                &len.to_be_bytes()[..],
            ]
            .concat();
            let c = !reference_sum(&[&pseudo, &l4]);
            let c = if c == 0 { 0xffff } else { c };
            l4[csum_at..csum_at + 2].copy_from_slice(&c.to_be_bytes());
            let mut pkt = match self.src {
                IpAddr::V4(_) => {
                    let total = (20 + l4.len()) as u16;
                    let mut h = vec![0x45, 0];
                    h.extend_from_slice(&total.to_be_bytes());
                    h.extend_from_slice(&id.to_be_bytes());
                    h.extend_from_slice(&[0x40, 0, 64, proto, 0, 0]);
                    h.extend_from_slice(&src);
                    h.extend_from_slice(&dst);
                    let c = !reference_sum(&[&h]);
                    h[10..12].copy_from_slice(&c.to_be_bytes());
                    h
                }
                IpAddr::V6(_) => {
                    let mut h = vec![0x60, 0, 0, 0];
                    h.extend_from_slice(&(l4.len() as u16).to_be_bytes());
                    h.extend_from_slice(&[proto, 64]);
                    h.extend_from_slice(&src);
                    h.extend_from_slice(&dst);
                    h
                }
            };
            pkt.append(&mut l4);
            pkt
        }

        /// A TCP segment with correct checksums.
        #[allow(clippy::too_many_arguments)] // reason: a test builder mirroring the header
        pub fn tcp(
            &self,
            id: u16,
            seq: u32,
            ack: u32,
            flags: u8,
            window: u16,
            options: &[u8],
            payload: &[u8],
        ) -> Vec<u8> {
            assert_eq!(options.len() % 4, 0, "TCP options are padded to words");
            let doff = (20 + options.len()) / 4;
            let mut t = Vec::with_capacity(20 + options.len() + payload.len());
            t.extend_from_slice(&self.sport.to_be_bytes());
            t.extend_from_slice(&self.dport.to_be_bytes());
            t.extend_from_slice(&seq.to_be_bytes());
            t.extend_from_slice(&ack.to_be_bytes());
            t.extend_from_slice(&[(doff as u8) << 4, flags]);
            t.extend_from_slice(&window.to_be_bytes());
            t.extend_from_slice(&[0, 0, 0, 0]);
            t.extend_from_slice(options);
            t.extend_from_slice(payload);
            self.ip(6, id, t, 16)
        }

        /// A UDP datagram with correct checksums.
        pub fn udp(&self, id: u16, payload: &[u8]) -> Vec<u8> {
            let mut u = Vec::with_capacity(8 + payload.len());
            u.extend_from_slice(&self.sport.to_be_bytes());
            u.extend_from_slice(&self.dport.to_be_bytes());
            u.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
            u.extend_from_slice(&[0, 0]);
            u.extend_from_slice(payload);
            self.ip(17, id, u, 6)
        }
    }

    /// Test data: a byte stream no two nearby segments share by accident.
    pub fn pattern(offset: usize, len: usize) -> Vec<u8> {
        (offset..offset + len)
            .map(|i| (i.wrapping_mul(7) % 251) as u8 ^ (i >> 8) as u8)
            .collect()
    }

    /// Check an IP packet the way a receiving kernel would: lengths, IPv4
    /// header checksum, TCP/UDP checksum (with the reference sum). Returns the
    /// L4 header offset and protocol.
    pub fn verify(pkt: &[u8]) -> Result<(usize, u8), String> {
        let (l4, proto, src, dst) = match pkt.first().map(|b| b >> 4) {
            Some(4) => {
                let ihl = usize::from(pkt[0] & 0xf) * 4;
                if usize::from(u16::from_be_bytes([pkt[2], pkt[3]])) != pkt.len() {
                    return Err(format!("IPv4 total length != {}", pkt.len()));
                }
                if reference_sum(&[&pkt[..ihl]]) != 0xffff {
                    return Err("bad IPv4 header checksum".into());
                }
                (ihl, pkt[9], &pkt[12..16], &pkt[16..20])
            }
            Some(6) => {
                if usize::from(u16::from_be_bytes([pkt[4], pkt[5]])) != pkt.len() - 40 {
                    return Err(format!("IPv6 payload length != {}", pkt.len() - 40));
                }
                (40, pkt[6], &pkt[8..24], &pkt[24..40])
            }
            _ => return Err("not IP".into()),
        };
        if proto == 17
            && usize::from(u16::from_be_bytes([pkt[l4 + 4], pkt[l4 + 5]])) != pkt.len() - l4
        {
            return Err("bad UDP length".into());
        }
        let len = ((pkt.len() - l4) as u32).to_be_bytes();
        let sum = reference_sum(&[src, dst, &[0, proto], &len, &pkt[l4..]]);
        if sum != 0xffff {
            return Err(format!("bad L4 checksum (sum {sum:#06x})"));
        }
        Ok((l4, proto))
    }

    /// TCP options as Linux sends them on data segments: NOP, NOP, timestamps.
    pub fn timestamps(val: u32, ecr: u32) -> Vec<u8> {
        let mut o = vec![1, 1, 8, 10];
        o.extend_from_slice(&val.to_be_bytes());
        o.extend_from_slice(&ecr.to_be_bytes());
        o
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // reason: tests

    use super::testing::*;
    use super::*;

    const ACK: u8 = TCP_ACK;
    const PSH: u8 = TCP_PSH;

    #[test]
    fn ones_sum_matches_the_reference_at_every_length_and_alignment() {
        let data = pattern(0, 3000);
        for start in 0..8 {
            for len in (0..200).chain([1399, 1400, 1401, 2047, 2048, 2049, 2992 - start]) {
                let d = &data[start..start + len];
                assert_eq!(ones_sum(d), reference_sum(&[d]), "start {start} len {len}");
            }
        }
        // All-ones data and carries out of the 64-bit bulk accumulator's words.
        let ff = vec![0xffu8; 65535];
        assert_eq!(ones_sum(&ff), reference_sum(&[&ff]));
        assert_eq!(fold(u64::MAX), 0xffff);
        assert_eq!(fold(0x1_0000), 1);
        assert_eq!(fold(0x2_fffd), 0xffff);
    }

    #[test]
    fn copy_and_sum_copies_and_sums_like_ones_sum() {
        let data = pattern(0, 3000);
        for start in 0..8 {
            for len in (0..200).chain([1368, 1399, 1400, 1401, 2047, 2048, 2049, 2992 - start]) {
                let src = &data[start..start + len];
                let mut dst = vec![0u8; len];
                let sum = copy_and_sum(&mut dst, src);
                assert_eq!(dst, src, "start {start} len {len}");
                assert_eq!(sum, reference_sum(&[src]), "start {start} len {len}");
            }
        }
        let ff = vec![0xffu8; 65535];
        let mut dst = vec![0u8; ff.len()];
        assert_eq!(copy_and_sum(&mut dst, &ff), reference_sum(&[&ff]));
    }

    #[test]
    fn virtio_net_hdr_is_little_endian() {
        let hdr = VirtioNetHdr {
            flags: 1,
            gso_type: VirtioNetHdr::GSO_TCPV4 | VirtioNetHdr::GSO_ECN,
            hdr_len: 0x0102,
            gso_size: 1348,
            csum_start: 20,
            csum_offset: 16,
        };
        let bytes = hdr.encode();
        assert_eq!(bytes, [1, 0x81, 2, 1, 0x44, 5, 20, 0, 16, 0]);
        assert_eq!(VirtioNetHdr::decode(&bytes), Some(hdr));
        assert_eq!(hdr.gso(), VirtioNetHdr::GSO_TCPV4);
        assert_eq!(VirtioNetHdr::decode(&bytes[..9]), None);
    }

    /// A super-packet as the kernel hands it over: one header, all payload,
    /// lengths of the whole, and only the pseudo-header sum in the checksum.
    fn super_packet(flow: &Flow, tcp: bool, seq: u32, flags: u8, payload: &[u8]) -> Vec<u8> {
        let mut p = if tcp {
            flow.tcp(0x1234, seq, 77, flags, 500, &timestamps(1, 2), payload)
        } else {
            flow.udp(0x1234, payload)
        };
        let v6 = flow.src.is_ipv6();
        let l4 = if v6 { 40 } else { 20 };
        let at = l4 + if tcp { 16 } else { 6 };
        let (src, dst) = addresses(&p);
        let partial = fold(pseudo_header_sum(
            src,
            dst,
            if tcp { 6 } else { 17 },
            p.len() - l4,
        ));
        put_u16(&mut p, at, partial);
        p
    }

    /// The MTU the tests' super-packets come from (the kernel's were captured
    /// on a TUN of 1420).
    const TEST_MTU: usize = 1500;

    fn gso_hdr(v6: bool, tcp: bool, gso_size: u16) -> VirtioNetHdr {
        let l4 = if v6 { 40 } else { 20 };
        VirtioNetHdr {
            flags: VirtioNetHdr::F_NEEDS_CSUM,
            gso_type: match (tcp, v6) {
                (true, false) => VirtioNetHdr::GSO_TCPV4,
                (true, true) => VirtioNetHdr::GSO_TCPV6,
                (false, _) => VirtioNetHdr::GSO_UDP_L4,
            },
            // The kernel puts the skb's linear length here; nothing may rely on it.
            hdr_len: 1234,
            gso_size,
            csum_start: l4,
            csum_offset: if tcp { 16 } else { 6 },
        }
    }

    fn split(pkt: &[u8], hdr: &VirtioNetHdr) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        gso_split(pkt, hdr, TEST_MTU, |len| vec![0xaa; len], |s| out.push(s)).unwrap();
        out
    }

    /// Split and check every segment: checksums (reference), lengths, IDs,
    /// sequence numbers, flags, and that the payloads add up to the original.
    fn split_and_check(flow: &Flow, tcp: bool, flags: u8, payload_len: usize, gso_size: u16) {
        let payload = pattern(5, payload_len);
        let seq = 0xffff_f000; // wraps inside the packet
        let pkt = super_packet(flow, tcp, seq, flags, &payload);
        let v6 = flow.src.is_ipv6();
        let segs = split(&pkt, &gso_hdr(v6, tcp, gso_size));
        let gso = usize::from(gso_size);
        assert_eq!(segs.len(), payload_len.div_ceil(gso).max(1));
        let mut joined = Vec::new();
        for (i, s) in segs.iter().enumerate() {
            let (l4, _) = verify(s).unwrap_or_else(|e| panic!("segment {i}: {e}"));
            let hdrs = l4 + if tcp { 32 } else { 8 };
            let last = i + 1 == segs.len();
            let want = if last { payload_len - i * gso } else { gso };
            assert_eq!(s.len() - hdrs, want, "segment {i} length");
            if !v6 {
                assert_eq!(get_u16(s, 4), 0x1234u16.wrapping_add(i as u16), "IPv4 ID");
            }
            if tcp {
                assert_eq!(get_u32(s, l4 + 4), seq.wrapping_add((i * gso) as u32));
                let f = s[l4 + 13];
                let fin_psh = flags & (TCP_FIN | TCP_PSH);
                assert_eq!(f & (TCP_FIN | TCP_PSH), if last { fin_psh } else { 0 });
                assert_eq!(f & TCP_CWR != 0, i == 0 && flags & TCP_CWR != 0);
                // Everything else in the TCP header is copied.
                assert_eq!(s[l4 + 8..l4 + 12], pkt[l4 + 8..l4 + 12], "ack");
                assert_eq!(s[l4 + 20..hdrs], pkt[l4 + 20..hdrs], "options");
            }
            joined.extend_from_slice(&s[hdrs..]);
        }
        assert_eq!(joined, payload);
    }

    #[test]
    fn gso_split_tcp_ipv4_and_ipv6_odd_sizes() {
        for flow in [Flow::v4(40000, 5001), Flow::v6(40000, 5001)] {
            for (len, gso) in [
                (1, 1348),
                (1348, 1348),
                (1349, 1348),
                (13_333, 1348),
                (65_000, 1348),
                (1000, 8),
                (777, 100),
            ] {
                split_and_check(&flow, true, ACK | PSH, len, gso);
            }
            split_and_check(&flow, true, ACK | PSH | TCP_FIN | TCP_CWR, 5000, 1000);
            split_and_check(&flow, true, ACK, 4000, 1000);
        }
    }

    #[test]
    fn gso_split_udp_ipv4_and_ipv6_odd_sizes() {
        for flow in [Flow::v4(40000, 6000), Flow::v6(40000, 6000)] {
            for (len, gso) in [
                (1, 1200),
                (1200, 1200),
                (10_001, 1200),
                (64_000, 1372),
                (999, 1000),
            ] {
                split_and_check(&flow, false, 0, len, gso);
            }
        }
    }

    #[test]
    fn gso_split_refuses_what_it_cannot_cut() {
        let flow = Flow::v4(1, 2);
        let pkt = super_packet(&flow, true, 1, ACK, &pattern(0, 3000));
        let sink = |_: Vec<u8>| {};
        let mut hdr = gso_hdr(false, true, 1000);
        hdr.gso_type = VirtioNetHdr::GSO_TCPV6;
        assert_eq!(
            gso_split(&pkt, &hdr, TEST_MTU, |l| vec![0; l], sink),
            Err(OffloadError::GsoMismatch)
        );
        hdr.gso_type = VirtioNetHdr::GSO_UDP;
        assert_eq!(
            gso_split(&pkt, &hdr, TEST_MTU, |l| vec![0; l], sink),
            Err(OffloadError::UnsupportedGso(3))
        );
        hdr = gso_hdr(false, true, 0);
        assert_eq!(
            gso_split(&pkt, &hdr, TEST_MTU, |l| vec![0; l], sink),
            Err(OffloadError::ZeroGsoSize)
        );
        hdr = gso_hdr(false, true, 1000);
        hdr.csum_start = 24;
        assert_eq!(
            gso_split(&pkt, &hdr, TEST_MTU, |l| vec![0; l], sink),
            Err(OffloadError::BadChecksumOffset)
        );
        hdr = gso_hdr(false, false, 1000);
        assert_eq!(
            gso_split(&pkt, &hdr, TEST_MTU, |l| vec![0; l], sink),
            Err(OffloadError::GsoMismatch)
        );
        hdr = gso_hdr(false, true, 1000);
        for cut in [0, 10, 30, 45] {
            assert_eq!(
                gso_split(&pkt[..cut], &hdr, TEST_MTU, |l| vec![0; l], sink),
                Err(OffloadError::Truncated)
            );
        }
    }

    /// Counts the buffers a split asks for, so a refused frame is seen to
    /// cost none.
    fn split_cost(
        pkt: &[u8],
        hdr: &VirtioNetHdr,
        mtu: usize,
    ) -> (Result<usize, OffloadError>, usize) {
        let mut allocs = 0;
        let r = gso_split(
            pkt,
            hdr,
            mtu,
            |l| {
                allocs += 1;
                vec![0; l]
            },
            |_| {},
        );
        (r, allocs)
    }

    #[test]
    fn gso_split_drops_a_segment_size_below_the_kernels_tcp_minimum() {
        for flow in [Flow::v4(1, 2), Flow::v6(1, 2)] {
            let v6 = flow.src.is_ipv6();
            let pkt = super_packet(&flow, true, 1, ACK, &pattern(0, 60_000));
            for gso in [1, 7] {
                let (r, allocs) = split_cost(&pkt, &gso_hdr(v6, true, gso), TEST_MTU);
                assert_eq!(r, Err(OffloadError::GsoSizeTooSmall(gso)));
                assert!(r.unwrap_err().is_forged_gso());
                assert_eq!(allocs, 0);
            }
            // The floor itself is allowed, for as many bytes as it may carry.
            let small = super_packet(&flow, true, 1, ACK, &pattern(0, 8 * MAX_GSO_SEGMENTS));
            let hdr = gso_hdr(v6, true, MIN_TCP_GSO_SIZE);
            assert_eq!(split_cost(&small, &hdr, TEST_MTU).0, Ok(MAX_GSO_SEGMENTS));
        }
        // USO has no floor but the segment count: the kernel lets an
        // application pick any `UDP_SEGMENT` size.
        let flow = Flow::v4(1, 2);
        let pkt = super_packet(&flow, false, 0, 0, &pattern(0, 100));
        assert_eq!(
            split_cost(&pkt, &gso_hdr(false, false, 1), TEST_MTU).0,
            Ok(100)
        );
    }

    #[test]
    fn gso_split_drops_more_segments_than_a_kernel_makes() {
        for (tcp, flow) in [(true, Flow::v4(1, 2)), (false, Flow::v6(1, 2))] {
            let v6 = flow.src.is_ipv6();
            let pkt = super_packet(&flow, tcp, 1, ACK, &pattern(0, 65_000));
            // 65,000 bytes in 100-byte segments: 650 of them.
            let (r, allocs) = split_cost(&pkt, &gso_hdr(v6, tcp, 100), TEST_MTU);
            assert_eq!(r, Err(OffloadError::TooManySegments(650)));
            assert!(r.unwrap_err().is_forged_gso());
            assert_eq!(allocs, 0);
            // One segment more than the limit, and exactly the limit.
            let over = super_packet(&flow, tcp, 1, ACK, &pattern(0, 100 * MAX_GSO_SEGMENTS + 1));
            assert_eq!(
                split_cost(&over, &gso_hdr(v6, tcp, 100), TEST_MTU).0,
                Err(OffloadError::TooManySegments(MAX_GSO_SEGMENTS + 1))
            );
            let at = super_packet(&flow, tcp, 1, ACK, &pattern(0, 100 * MAX_GSO_SEGMENTS));
            assert_eq!(
                split_cost(&at, &gso_hdr(v6, tcp, 100), TEST_MTU),
                (Ok(MAX_GSO_SEGMENTS), MAX_GSO_SEGMENTS)
            );
        }
        // A full 64 KiB frame at the smallest MSS every IPv4 host accepts
        // (536, less 12 bytes of timestamps) stays within the limit.
        let flow = Flow::v4(1, 2);
        let pkt = super_packet(&flow, true, 1, ACK, &pattern(0, MAX_PACKET - 52));
        assert_eq!(
            split_cost(&pkt, &gso_hdr(false, true, 524), TEST_MTU).0,
            Ok(125)
        );
    }

    #[test]
    fn gso_split_drops_segments_larger_than_the_mtu() {
        for (tcp, flow) in [(true, Flow::v4(1, 2)), (false, Flow::v6(1, 2))] {
            let v6 = flow.src.is_ipv6();
            let hdrs = if v6 { 40 } else { 20 } + if tcp { 32 } else { 8 };
            let pkt = super_packet(&flow, tcp, 1, ACK, &pattern(0, 20_000));
            let fits = (1420 - hdrs) as u16;
            assert!(split_cost(&pkt, &gso_hdr(v6, tcp, fits), 1420).0.is_ok());
            let (r, allocs) = split_cost(&pkt, &gso_hdr(v6, tcp, fits + 1), 1420);
            assert_eq!(r, Err(OffloadError::SegmentTooLarge(1421, 1420)));
            assert!(r.unwrap_err().is_forged_gso());
            assert_eq!(allocs, 0);
        }
        // A malformed packet is not counted as forged GSO.
        assert!(!OffloadError::Truncated.is_forged_gso());
    }

    #[test]
    fn complete_checksum_finishes_partial_tcp_and_udp() {
        for flow in [Flow::v4(5, 6), Flow::v6(5, 6)] {
            for tcp in [true, false] {
                for len in [0, 1, 2, 3, 100, 1371] {
                    let mut pkt = super_packet(&flow, tcp, 9, ACK, &pattern(1, len));
                    let hdr = VirtioNetHdr {
                        gso_type: 0,
                        ..gso_hdr(flow.src.is_ipv6(), tcp, 0)
                    };
                    complete_checksum(&mut pkt, &hdr).unwrap();
                    verify(&pkt).unwrap();
                }
            }
        }
        let mut short = vec![0x45; 30];
        let hdr = VirtioNetHdr {
            flags: VirtioNetHdr::F_NEEDS_CSUM,
            csum_start: 20,
            csum_offset: 16,
            ..VirtioNetHdr::default()
        };
        assert_eq!(
            complete_checksum(&mut short, &hdr),
            Err(OffloadError::BadChecksumOffset)
        );
        // Without NEEDS_CSUM nothing is touched.
        let before = short.clone();
        complete_checksum(&mut short, &VirtioNetHdr::default()).unwrap();
        assert_eq!(short, before);
    }

    /// Segments of one TCP stream as the engine would decrypt them.
    fn segments(flow: &Flow, seq: u32, sizes: &[usize], psh_last: bool) -> Vec<Vec<u8>> {
        let mut off = 0;
        sizes
            .iter()
            .enumerate()
            .map(|(i, &n)| {
                let last = i + 1 == sizes.len();
                let flags = if last && psh_last { ACK | PSH } else { ACK };
                let p = flow.tcp(
                    i as u16,
                    seq.wrapping_add(off as u32),
                    4242,
                    flags,
                    1000,
                    &timestamps(7, 8),
                    &pattern(off, n),
                );
                off += n;
                p
            })
            .collect()
    }

    /// Coalesce, assemble each write, and split it again.
    fn round_trip(packets: &[Vec<u8>], udp: bool) -> (Vec<Write>, Vec<Vec<u8>>) {
        let mut batch = packets.to_vec();
        let mut gro = Coalescer::new(udp);
        let writes = gro.coalesce(&mut batch);
        let mut out = Vec::new();
        for w in &writes {
            let bytes = gro.assemble(w, &batch);
            assert_eq!(bytes.len(), VNET_HDR_LEN + w.len as usize);
            let hdr = VirtioNetHdr::decode(&bytes).unwrap();
            assert_eq!(hdr, w.hdr);
            let data = &bytes[VNET_HDR_LEN..];
            if hdr.gso() == VirtioNetHdr::GSO_NONE {
                assert_eq!(hdr, VirtioNetHdr::default());
                out.push(data.to_vec());
            } else {
                assert_eq!(hdr.flags, VirtioNetHdr::F_NEEDS_CSUM);
                // The head's checksum is the pseudo-header partial the kernel
                // completes: completing it ourselves must verify.
                let mut whole = data.to_vec();
                complete_checksum(&mut whole, &hdr).unwrap();
                verify(&whole).unwrap();
                out.extend(split(data, &hdr));
            }
        }
        (writes, out)
    }

    #[test]
    fn gro_round_trip_gives_back_the_same_packets() {
        for flow in [Flow::v4(40000, 5001), Flow::v6(40000, 5001)] {
            let mut sizes = vec![1348; 44];
            sizes.push(333);
            let packets = segments(&flow, 0xffff_0000, &sizes, true);
            let (writes, out) = round_trip(&packets, false);
            assert_eq!(writes.len(), 1);
            assert_eq!(writes[0].segments, 45);
            assert_eq!(writes[0].hdr.gso_size, 1348);
            assert_eq!(out, packets);
        }
    }

    #[test]
    fn gro_keeps_each_flow_in_order_and_never_merges_across_flows() {
        let a = segments(&Flow::v4(1000, 5001), 100, &[1000; 6], false);
        let b = segments(&Flow::v6(2000, 5001), 900, &[1000; 6], false);
        let c = segments(&Flow::v4(1001, 5001), 500, &[1000; 6], false);
        // Interleave: a0 b0 c0 a1 b1 c1 ...
        let mut mixed = Vec::new();
        for i in 0..6 {
            mixed.extend([a[i].clone(), b[i].clone(), c[i].clone()]);
        }
        let (writes, out) = round_trip(&mixed, false);
        assert_eq!(writes.len(), 3);
        let mut expect = a.clone();
        expect.extend(b);
        expect.extend(c);
        assert_eq!(out, expect);
    }

    #[test]
    fn gro_rules_for_what_does_not_merge() {
        let flow = Flow::v4(40000, 5001);
        let base = segments(&flow, 1, &[1000, 1000, 1000, 1000], false);
        let count = |packets: &[Vec<u8>]| round_trip(packets, false).0.len();
        assert_eq!(count(&base), 1);

        // A gap in the sequence numbers.
        let mut gap = base.clone();
        gap.remove(2);
        assert_eq!(count(&gap), 2);

        // Out of order: never merged backwards, nothing reordered.
        let mut swapped = base.clone();
        swapped.swap(1, 2);
        let (w, out) = round_trip(&swapped, false);
        assert_eq!(w.len(), 4);
        assert_eq!(out, swapped);

        // A shorter segment ends a group; PSH ends a group.
        let short = segments(&flow, 1, &[1000, 500, 1000, 1000], false);
        assert_eq!(count(&short), 2);
        let mut psh = segments(&flow, 1, &[1000, 1000], true);
        psh.extend(segments(&flow, 2001, &[1000, 1000], false));
        assert_eq!(count(&psh), 2);

        // A larger segment after the first.
        assert_eq!(count(&segments(&flow, 1, &[1000, 1001], false)), 2);

        // Different ACK numbers, TTL, options, flags: separate.
        let other_ack = flow.tcp(
            1,
            2001,
            4243,
            ACK,
            1000,
            &timestamps(7, 8),
            &pattern(2000, 1000),
        );
        assert_eq!(count(&[base[0].clone(), base[1].clone(), other_ack]), 2);
        let mut ttl = base[1].clone();
        ttl[8] = 63;
        set_ipv4_header_checksum(&mut ttl);
        assert_eq!(count(&[base[0].clone(), ttl]), 2);
        let other_ts = flow.tcp(
            1,
            1001,
            4242,
            ACK,
            1000,
            &timestamps(9, 8),
            &pattern(1000, 1000),
        );
        assert_eq!(count(&[base[0].clone(), other_ts]), 2);
        for flags in [
            ACK | TCP_FIN,
            ACK | 0x20, /* URG */
            0x02,       /* SYN */
            0x04,       /* RST */
            ACK | TCP_CWR,
        ] {
            let odd = flow.tcp(
                1,
                1001,
                4242,
                flags,
                1000,
                &timestamps(7, 8),
                &pattern(1000, 1000),
            );
            assert_eq!(count(&[base[0].clone(), odd]), 2, "flags {flags:#x}");
        }
        // A pure ACK (no payload) is written on its own.
        let pure = flow.tcp(1, 1001, 4242, ACK, 1000, &timestamps(7, 8), &[]);
        assert_eq!(count(&[base[0].clone(), pure, base[1].clone()]), 3);

        // A window change does not matter (the kernel's GRO ignores it too).
        let mut win = base[1].clone();
        let l4 = 20;
        win[l4 + 14..l4 + 16].copy_from_slice(&999u16.to_be_bytes());
        let fixed = flow.tcp(
            1,
            1001,
            4242,
            ACK,
            999,
            &timestamps(7, 8),
            &pattern(1000, 1000),
        );
        assert_eq!(win.len(), fixed.len());
        assert_eq!(count(&[base[0].clone(), fixed]), 1);
    }

    #[test]
    fn gro_stops_at_64k_and_64_segments() {
        let flow = Flow::v6(40000, 5001);
        // 50 x 1400 = 70 000 bytes: more than one super-packet.
        let packets = segments(&flow, 1, &[1400; 50], false);
        let (writes, out) = round_trip(&packets, false);
        assert!(writes.len() >= 2);
        assert!(writes.iter().all(|w| w.len as usize <= MAX_PACKET));
        assert_eq!(out, packets);
        // 70 tiny segments: at most 64 per write.
        let tiny = segments(&flow, 1, &[10; 70], false);
        let (writes, out) = round_trip(&tiny, false);
        assert_eq!(
            writes.iter().map(|w| w.segments).collect::<Vec<_>>(),
            [64, 6]
        );
        assert_eq!(out, tiny);
    }

    #[test]
    fn gro_never_merges_a_segment_with_a_bad_checksum() {
        let flow = Flow::v4(40000, 5001);
        for bad in [0, 2, 4] {
            let mut packets = segments(&flow, 1, &[1000; 5], false);
            let last = packets[bad].len() - 1;
            packets[bad][last] ^= 0x40;
            let (writes, out) = round_trip_unverified(&packets);
            // The bad one goes out alone and unchanged (the kernel drops it).
            let alone: Vec<_> = writes.iter().filter(|w| w.segments == 1).collect();
            assert!(!alone.is_empty(), "bad segment {bad}");
            assert!(out.contains(&packets[bad]));
            let total: usize = writes.iter().map(|w| usize::from(w.segments)).sum();
            assert_eq!(total, 5);
        }
    }

    /// Like `round_trip`, for batches holding packets that fail `verify`.
    fn round_trip_unverified(packets: &[Vec<u8>]) -> (Vec<Write>, Vec<Vec<u8>>) {
        let mut batch = packets.to_vec();
        let mut gro = Coalescer::new(false);
        let writes = gro.coalesce(&mut batch);
        let out = writes
            .iter()
            .flat_map(|w| {
                let bytes = gro.assemble(w, &batch);
                let hdr = VirtioNetHdr::decode(&bytes).unwrap();
                if hdr.gso() == VirtioNetHdr::GSO_NONE {
                    vec![bytes[VNET_HDR_LEN..].to_vec()]
                } else {
                    split(&bytes[VNET_HDR_LEN..], &hdr)
                }
            })
            .collect();
        (writes, out)
    }

    #[test]
    fn gro_udp_only_when_asked() {
        for flow in [Flow::v4(40000, 6000), Flow::v6(40000, 6000)] {
            let mut packets: Vec<_> = (0..9)
                .map(|i| flow.udp(i, &pattern(i as usize * 1200, 1200)))
                .collect();
            packets.push(flow.udp(9, &pattern(10_800, 401)));
            let (writes, out) = round_trip(&packets, false);
            assert_eq!(writes.len(), 10);
            assert_eq!(out, packets);
            let (writes, out) = round_trip(&packets, true);
            assert_eq!(writes.len(), 1);
            assert_eq!(writes[0].hdr.gso(), VirtioNetHdr::GSO_UDP_L4);
            assert_eq!(out, packets);
            // A datagram after a shorter one starts a new write.
            packets.push(flow.udp(10, &pattern(0, 1200)));
            assert_eq!(round_trip(&packets, true).0.len(), 2);
        }
    }

    /// Super-packets a Linux 6.18 TCP/UDP stack wrote to a TUN with these
    /// offloads (captured by `tun`'s kernel test with `W4N_CAPTURE=1`): the
    /// `virtio_net_hdr`, the IP and TCP/UDP headers as the kernel made them
    /// (lengths of the whole, pseudo-header-only checksum), and the payload
    /// length. The payload bytes do not enter any header, so any will do.
    const KERNEL_SUPER_PACKETS: [(&str, &str, &str, usize); 4] = [
        (
            "tcp4",
            "01013400440514001000",
            "45001a880b484000400601140a0900010a09000213899c406c7e7a1bfff000018018003f2e8f00000101080ad5e6801d00000002",
            6740,
        ),
        (
            "tcp6",
            "01044800300528001000",
            "6006d1e31a100640fd090000000000000000000000000001fd090000000000000000000000000002138a9c41f4349d32fff0000180180040142d00000101080a1d216f5a00000002",
            6640,
        ),
        (
            "udp4",
            "01051c00b00414000600",
            "4500272d3bde0000401103ce0a0900010a0900021770177127193b3f",
            10001,
        ),
        (
            "udp6",
            "01053000b00428000600",
            "600a948e27191140fd090000000000000000000000000001fd0900000000000000000000000000021772177327192141",
            10001,
        ),
    ];

    fn unhex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn kernel_super_packets_split_and_coalesce_back_byte_for_byte() {
        for (what, vnet, headers, payload_len) in KERNEL_SUPER_PACKETS {
            let hdr = VirtioNetHdr::decode(&unhex(vnet)).unwrap();
            let mut pkt = unhex(headers);
            let hdrs = pkt.len();
            pkt.extend(pattern(17, payload_len));
            let segs = split(&pkt, &hdr);
            let gso = usize::from(hdr.gso_size);
            assert_eq!(segs.len(), payload_len.div_ceil(gso), "{what}");
            for (i, s) in segs.iter().enumerate() {
                verify(s).unwrap_or_else(|e| panic!("{what} segment {i}: {e}"));
                assert_eq!(
                    s[hdrs..],
                    pkt[hdrs + i * gso..(hdrs + (i + 1) * gso).min(pkt.len())]
                );
            }
            // Our GRO makes the very super-packet the kernel made.
            let mut batch = segs.clone();
            let mut gro = Coalescer::new(true);
            let writes = gro.coalesce(&mut batch);
            assert_eq!(writes.len(), 1, "{what}");
            let bytes = gro.assemble(&writes[0], &batch);
            assert_eq!(
                bytes[..VNET_HDR_LEN],
                unhex(vnet)[..],
                "{what}: virtio_net_hdr"
            );
            assert_eq!(bytes[VNET_HDR_LEN..], pkt[..], "{what}: super-packet");
        }
    }

    /// Packets from the kernel and, after decryption, from the peer are
    /// untrusted: mangled and truncated packets must be refused or passed
    /// through, never panic (a cheap stand-in for a fuzz target).
    #[test]
    fn mangled_packets_never_panic() {
        let mut seeds = Vec::new();
        for (_, vnet, headers, len) in KERNEL_SUPER_PACKETS {
            let mut p = unhex(headers);
            p.extend(pattern(0, len.min(3000)));
            seeds.push((VirtioNetHdr::decode(&unhex(vnet)).unwrap(), p));
        }
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for round in 0..20_000 {
            let (mut hdr, mut p) = seeds[round % seeds.len()].clone();
            for _ in 0..(next() % 4) {
                let at = (next() as usize) % 80.min(p.len());
                p[at] ^= next() as u8;
            }
            p.truncate((next() as usize) % (p.len() + 1));
            if next() % 4 == 0 {
                let raw = hdr.encode().map(|b| b ^ (next() as u8 & (next() as u8)));
                hdr = VirtioNetHdr::decode(&raw).unwrap();
            }
            let _ = gso_split(&p, &hdr, TEST_MTU, |len| vec![0; len], |_| {});
            let _ = complete_checksum(&mut p.clone(), &hdr);
            let mut batch = vec![p.clone(), p.clone(), p];
            let mut gro = Coalescer::new(true);
            for w in gro.coalesce(&mut batch) {
                let _ = gro.assemble(&w, &batch);
            }
        }
    }

    #[test]
    fn gro_passes_anything_else_through_untouched() {
        let flow = Flow::v4(1, 2);
        let mut icmp = flow.udp(1, b"ping");
        icmp[9] = 1; // protocol ICMP (checksums are irrelevant here)
        let frag = {
            let mut p = flow.udp(1, &pattern(0, 100));
            p[6] |= 0x20; // more fragments
            p
        };
        let junk = vec![0u8; 3];
        let packets = vec![icmp, frag, junk, segments(&flow, 1, &[10], false).remove(0)];
        let mut batch = packets.clone();
        let mut gro = Coalescer::new(true);
        let writes = gro.coalesce(&mut batch);
        assert_eq!(writes.len(), 4);
        for (w, p) in writes.iter().zip(&packets) {
            assert_eq!(w.hdr, VirtioNetHdr::default());
            assert_eq!(gro.assemble(w, &batch)[VNET_HDR_LEN..], p[..]);
        }
    }
}
