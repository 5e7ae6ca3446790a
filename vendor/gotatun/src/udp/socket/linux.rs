// This Source Code Form is subject to the terms of the Mozilla Public
// License, v. 2.0. If a copy of the MPL was not distributed with this
// file, You can obtain one at https://mozilla.org/MPL/2.0/.
//
// This file incorporates work covered by the following copyright and
// permission notice:
//
//   Copyright (c) Mullvad VPN AB. All rights reserved.
//
// SPDX-License-Identifier: MPL-2.0

use nix::sys::socket::{MsgFlags, MultiHeaders, SockaddrStorage};
#[cfg(target_os = "linux")]
use nix::sys::socket::{setsockopt, sockopt};
use std::{
    io::{self, IoSlice},
    net::SocketAddr,
    os::fd::AsRawFd,
};
use tokio::io::Interest;

use crate::{
    packet::Packet,
    udp::{
        UdpSend,
        socket::{UdpSocket, check_send_max_number_of_packets},
    },
};

/// Max number of packets/messages for sendmmsg/recvmmsg
const MAX_PACKET_COUNT: usize = 100;

#[derive(Default)]
pub struct SendmmsgBuf {
    targets: Vec<Option<SockaddrStorage>>,
}

impl UdpSend for super::UdpSocket {
    type SendManyBuf = SendmmsgBuf;

    async fn send_to(&self, packet: Packet, target: SocketAddr) -> io::Result<()> {
        self.socket().send_to(&packet, target).await?;
        Ok(())
    }

    async fn send_many_to(
        &self,
        buf: &mut SendmmsgBuf,
        packets: &mut Vec<(Packet, SocketAddr)>,
    ) -> io::Result<()> {
        check_send_max_number_of_packets(MAX_PACKET_COUNT, packets)?;

        let socket = self.socket();
        let fd = socket.as_raw_fd();

        buf.targets.clear();

        // This allocation can't be put in the struct because of lifetimes.
        // So we allocate it on the stack instead.
        let mut packets_buf = [[IoSlice::new(&[])]; MAX_PACKET_COUNT];
        for ((packet, target), packets_buf) in packets.iter().zip(&mut packets_buf) {
            buf.targets.push(Some(SockaddrStorage::from(*target)));
            *packets_buf = [IoSlice::new(&packet[..])];
        }

        let len = buf.targets.len();
        let pkts = &packets_buf[..len];
        let mut packet_buf_start = 0;
        while packet_buf_start < len {
            let result = socket
                .async_io(Interest::WRITABLE, || {
                    let mut multiheaders =
                        MultiHeaders::preallocate(pkts[packet_buf_start..].len(), None);
                    let multiresult = nix::sys::socket::sendmmsg(
                        fd,
                        &mut multiheaders,
                        &pkts[packet_buf_start..],
                        &buf.targets[packet_buf_start..],
                        [],
                        MsgFlags::MSG_DONTWAIT,
                    )?;
                    let n = multiresult.count();
                    Ok(n)
                })
                .await;
            let n = result?;
            packet_buf_start += n;
        }
        debug_assert!(packet_buf_start == len, "all packets should be sent");
        packets.clear();

        Ok(())
    }

    fn max_number_of_packets_to_send(&self) -> usize {
        MAX_PACKET_COUNT
    }

    fn local_addr(&self) -> io::Result<Option<SocketAddr>> {
        UdpSocket::local_addr(self).map(Some)
    }

    #[cfg(target_os = "linux")]
    fn set_fwmark(&self, mark: u32) -> io::Result<()> {
        setsockopt(self.socket(), sockopt::Mark, &mark)?;
        Ok(())
    }
}

#[cfg(target_os = "linux")]
mod gro {
    /// Number of segments per message received
    const MAX_SEGMENTS: usize = 64;
    /// Size of a single UDP packet with multiple segments
    // TODO: Fix constant
    const MAX_GRO_SIZE: usize = MAX_SEGMENTS * 4096;

    // wireguard4netns: 100 → 32 messages per recvmmsg. The kernel fills each buffer as far
    // as its datagram goes and those pages stay resident: 100 GRO datagrams of up to 64 KiB
    // made 5-6 MiB of the engine's resident memory under load. 32 messages of up to 44
    // segments still hold more than the 256 packets a device queue takes.
    const MAX_PACKET_COUNT: usize = 32;
    use crate::packet::{Packet, PacketBufPool};
    use crate::udp::socket::map_src_addr;
    use crate::udp::{UdpRecv, socket::UdpSocket};
    use bytes::BytesMut;
    use nix::cmsg_space;
    use nix::sys::socket::{ControlMessageOwned, MsgFlags, MultiHeaders, SockaddrStorage};
    use std::hint::cold_path;
    use std::io::{self, IoSliceMut};
    use std::net::SocketAddr;
    use std::os::fd::AsRawFd;
    use tokio::io::Interest;

    // wireguard4netns: the datagrams stay where the kernel put them. Upstream copied every
    // GRO segment (and every single datagram) into a 4 KiB pool buffer: a memcpy, a pool
    // lock and a calloc'd buffer's pages per packet. Now each message is received into a
    // buffer of its own, split in place into packets (`BytesMut::split_to`, no copy), and
    // the buffer is reused once every packet split off it has been dropped (`try_reclaim`).
    // Until then it is "lent"; `MAX_BUFFERS` bounds how many buffers exist, and when all
    // are lent a receive copies into pool buffers as upstream did, through one bounce
    // buffer, so memory stays bounded whatever holds on to packets.

    /// How many receive buffers may exist at once (each `MAX_GRO_SIZE` of address space;
    /// only the pages the kernel wrote, ~64 KiB per GRO datagram, become resident): one
    /// `recvmmsg`'s worth ready, and as many again lent out to packets in flight (the
    /// device queues hold ~2 × 256 packets, ~12 buffers' worth of 44-segment datagrams).
    pub(crate) const MAX_BUFFERS: usize = 2 * MAX_PACKET_COUNT;

    #[derive(Default)]
    pub struct RecvManyBuf {
        /// Buffers for the next `recvmmsg`, each `MAX_GRO_SIZE` bytes long.
        ready: Vec<BytesMut>,
        /// What is left of buffers whose datagrams went out as packets: each is ready
        /// again once the last of those packets is dropped.
        lent: Vec<BytesMut>,
        /// Receives into this one and copies when every buffer is lent (never split).
        bounce: Option<BytesMut>,
    }

    impl RecvManyBuf {
        /// Make buffers ready for one `recvmmsg`: those no packet refers to any more,
        /// then new ones while fewer than `MAX_BUFFERS` exist.
        fn refill(&mut self) {
            let mut i = 0;
            while i < self.lent.len() && self.ready.len() < MAX_PACKET_COUNT {
                if reclaim(&mut self.lent[i]) {
                    self.ready.push(self.lent.swap_remove(i));
                } else {
                    i += 1;
                }
            }
            while self.ready.len() < MAX_PACKET_COUNT
                && self.ready.len() + self.lent.len() < MAX_BUFFERS
            {
                self.ready.push(BytesMut::zeroed(MAX_GRO_SIZE));
            }
        }

        /// Buffers in existence (ready, lent and the bounce buffer).
        #[cfg(test)]
        pub(crate) fn buffers(&self) -> usize {
            self.ready.len() + self.lent.len() + usize::from(self.bounce.is_some())
        }
    }

    /// Whether every packet split off `buf` has been dropped; if so, `buf` is a whole
    /// `MAX_GRO_SIZE` buffer again.
    fn reclaim(buf: &mut BytesMut) -> bool {
        buf.clear();
        if !buf.try_reclaim(MAX_GRO_SIZE) {
            return false;
        }
        debug_assert!(buf.capacity() >= MAX_GRO_SIZE);
        // SAFETY: `try_reclaim` succeeded, so `buf` is the only handle to its allocation
        // and has capacity for `MAX_GRO_SIZE` bytes from its start, all inside that
        // allocation. The allocation was made by `BytesMut::zeroed` (`refill`), so every
        // byte of it is initialised; since then it was only written (by the kernel and
        // through the packets split off it), never de-initialised.
        unsafe { buf.set_len(MAX_GRO_SIZE) };
        true
    }

    /// One received message: its length, the size of its segments (the length itself
    /// without GRO) and where it came from.
    #[derive(Clone, Copy, Default)]
    struct Datagram {
        len: usize,
        segment: usize,
        src: Option<SocketAddr>,
    }

    /// One `recvmmsg` into `bufs` (one message per buffer, in order); what each message
    /// is goes into `out`. Returns how many messages were received.
    fn recv_into(
        fd: std::os::fd::RawFd,
        bufs: &mut [BytesMut],
        map_ipv4_to_ipv6: bool,
        out: &mut [Datagram; MAX_PACKET_COUNT],
    ) -> io::Result<usize> {
        let n = bufs.len().min(MAX_PACKET_COUNT);
        // TODO: the CMSG space cannot be reused, so we must allocate new headers each
        // time [ControlMessageOwned::UdpGroSegments(i32)] contains
        // the size of all smaller packets/segments
        // Use a generic sockaddr storage here because this path serves both the IPv4
        // and IPv6 UDP sockets. Using `SockaddrIn` corrupts IPv6 source addresses and
        // can poison the peer runtime endpoint with an unspecified IPv4 address.
        let headers = &mut MultiHeaders::<SockaddrStorage>::preallocate(n, Some(cmsg_space!(i32)));
        let mut io_slices: [[IoSliceMut; 1]; MAX_PACKET_COUNT] =
            std::array::from_fn(|_| [IoSliceMut::new(&mut [])]);
        for (slot, buf) in io_slices.iter_mut().zip(bufs.iter_mut()) {
            *slot = [IoSliceMut::new(&mut buf[..])];
        }
        let results = nix::sys::socket::recvmmsg(
            fd,
            headers,
            &mut io_slices[..n],
            MsgFlags::MSG_DONTWAIT,
            None,
        )?;
        let mut count = 0;
        for (result, d) in results.zip(out.iter_mut()) {
            count += 1;
            *d = Datagram::default();
            if result.bytes == 0 {
                cold_path();
                if cfg!(debug_assertions) {
                    tracing::trace!("Received empty datagram from IoSlice");
                }
                continue;
            }
            let Some(source_addr) = result.address.as_ref().and_then(|addr| {
                addr.as_sockaddr_in()
                    .map(|&addr| SocketAddr::from(addr))
                    .or_else(|| addr.as_sockaddr_in6().map(|addr| (*addr).into()))
            }) else {
                if cfg!(debug_assertions) {
                    tracing::debug!("recvmmsg returned packet without source");
                }
                continue;
            };
            // A truncated control message (it cannot be: there is room for the one we
            // enabled) would leave the segment size unknown: drop the datagram.
            let Ok(mut cmsgs) = result.cmsgs() else {
                tracing::debug!("recvmmsg returned truncated control messages");
                continue;
            };
            let gro_size = cmsgs
                .find_map(|cmsg| match cmsg {
                    ControlMessageOwned::UdpGroSegments(gro_size) => Some(gro_size),
                    _ => None,
                })
                .and_then(|gro_size| usize::try_from(gro_size).ok())
                .filter(|&gro_size| gro_size > 0);
            *d = Datagram {
                len: result.bytes,
                segment: gro_size.unwrap_or(result.bytes),
                src: Some(map_src_addr(map_ipv4_to_ipv6, source_addr)),
            };
        }
        Ok(count)
    }

    /// Split the datagram at the start of `buf` into its segments (Generic Receive
    /// Offload), without copying: `buf` keeps what follows it.
    fn split_in_place(
        buf: &mut BytesMut,
        d: &Datagram,
        src: SocketAddr,
        packets: &mut Vec<(Packet, SocketAddr)>,
    ) {
        let mut data = buf.split_to(d.len);
        while data.len() > d.segment {
            packets.push((Packet::from_bytes(data.split_to(d.segment)), src));
        }
        packets.push((Packet::from_bytes(data), src));
    }

    /// Copy the segments of the datagram at the start of `buf` into pool buffers,
    /// growing a buffer if a segment is larger than the pool's buffer size (a single
    /// datagram can be, via IP fragment reassembly, up to 64k).
    fn split_copying(
        buf: &[u8],
        d: &Datagram,
        src: SocketAddr,
        pool: &PacketBufPool,
        packets: &mut Vec<(Packet, SocketAddr)>,
    ) {
        for segment in buf[..d.len].chunks(d.segment) {
            let mut packet = pool.get();
            packet.buf_mut().clear();
            packet.buf_mut().extend_from_slice(segment);
            packets.push((packet, src));
        }
    }

    impl UdpRecv for UdpSocket {
        type RecvManyBuf = RecvManyBuf;

        async fn recv_from(
            &mut self,
            pool: &mut PacketBufPool,
        ) -> io::Result<(Packet, SocketAddr)> {
            let mut buf = pool.get();
            let (n, src) = self.socket().recv_from(&mut buf).await?;
            buf.truncate(n);
            let src = self.map_src(src);
            Ok((buf, src))
        }

        async fn recv_many_from(
            &mut self,
            recv_many_bufs: &mut Self::RecvManyBuf,
            pool: &mut PacketBufPool,
            packets: &mut Vec<(Packet, SocketAddr)>,
        ) -> io::Result<()> {
            let socket = self.socket();
            let fd = socket.as_raw_fd();
            let map_ipv4_to_ipv6 = self.map_ipv4_to_ipv6;
            recv_many_bufs.refill();

            socket
                .async_io(Interest::READABLE, move || {
                    let bufs = &mut *recv_many_bufs;
                    let mut datagrams = [Datagram::default(); MAX_PACKET_COUNT];
                    if bufs.ready.is_empty() {
                        // Every buffer is lent: receive one message and copy it out.
                        let bounce = bufs
                            .bounce
                            .get_or_insert_with(|| BytesMut::zeroed(MAX_GRO_SIZE));
                        let n = recv_into(
                            fd,
                            std::slice::from_mut(bounce),
                            map_ipv4_to_ipv6,
                            &mut datagrams,
                        )?;
                        for d in &datagrams[..n] {
                            if let Some(src) = d.src {
                                split_copying(bounce, d, src, pool, packets);
                            }
                        }
                        return Ok(());
                    }
                    let n = recv_into(fd, &mut bufs.ready, map_ipv4_to_ipv6, &mut datagrams)?;
                    for (buf, d) in bufs.ready.iter_mut().zip(&datagrams[..n]) {
                        if let Some(src) = d.src {
                            split_in_place(buf, d, src, packets);
                        }
                    }
                    // The buffers that now hold packets are lent (from the back, so that
                    // `swap_remove` moves only buffers already looked at).
                    for i in (0..n).rev() {
                        if datagrams[i].src.is_some() {
                            bufs.lent.push(bufs.ready.swap_remove(i));
                        }
                    }
                    Ok(())
                })
                .await?;

            Ok(())
        }

        fn enable_udp_gro(&self) -> io::Result<()> {
            // TODO: missing constants on Android
            use std::os::fd::AsFd;
            nix::sys::socket::setsockopt(
                &self.as_fd(),
                nix::sys::socket::sockopt::UdpGroSegment,
                &true,
            )?;
            Ok(())
        }
    }

    #[cfg(test)]
    mod tests {
        use super::UdpSocket;
        use super::{MAX_BUFFERS, MAX_GRO_SIZE, MAX_PACKET_COUNT, RecvManyBuf};
        use crate::packet::{Packet, PacketBufPool};
        use crate::udp::socket::SockOpt;
        use crate::udp::{UdpRecv, UdpSend};
        use nix::sys::socket::{ControlMessage, MsgFlags, SockaddrStorage};
        use std::io::IoSlice;
        use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
        use std::os::fd::AsRawFd;
        use std::time::Duration;

        #[tokio::test]
        async fn recv_many_from_preserves_ipv6_source_addr() {
            let mut receiver =
                UdpSocket::bind((Ipv6Addr::LOCALHOST, 0).into(), SockOpt::default()).unwrap();
            receiver.enable_udp_gro().ok();
            let sender =
                UdpSocket::bind((Ipv6Addr::LOCALHOST, 0).into(), SockOpt::default()).unwrap();

            let recv_addr = receiver.local_addr().unwrap();
            let sender_addr = sender.local_addr().unwrap();

            let send_pool = PacketBufPool::<4096>::new(1);
            let mut packet = send_pool.get();
            packet.truncate(5);
            packet.copy_from_slice(b"hello");
            sender.send_to(packet, recv_addr).await.unwrap();

            let mut recv_pool = PacketBufPool::<4096>::new(1);
            let mut recv_many_buf = <UdpSocket as UdpRecv>::RecvManyBuf::default();
            let mut packets = vec![];

            tokio::time::timeout(
                Duration::from_secs(1),
                receiver.recv_many_from(&mut recv_many_buf, &mut recv_pool, &mut packets),
            )
            .await
            .unwrap()
            .unwrap();

            assert!(!packets.is_empty(), "expected at least one IPv6 packet");
            assert_eq!(packets[0].1, sender_addr);
        }

        // A datagram larger than the pool buffer must be received in full by growing
        // the target buffer, not dropped or truncated.
        //
        // Note: a single datagram is not GRO-coalesced, so this exercises the non-GRO
        // receive branch. The GRO branch (segments larger than the buffer) is not
        // covered here - UDP GRO does not engage on loopback.
        #[tokio::test]
        async fn recv_many_from_grows_for_oversized_datagram() {
            let mut receiver =
                UdpSocket::bind((Ipv6Addr::LOCALHOST, 0).into(), SockOpt::default()).unwrap();
            receiver.enable_udp_gro().ok();
            let recv_addr = receiver.local_addr().unwrap();

            // 10000 bytes is larger than the 4096-byte pool buffer.
            let payload = vec![0xABu8; 10_000];
            let sender = std::net::UdpSocket::bind((Ipv6Addr::LOCALHOST, 0)).unwrap();
            sender.send_to(&payload, recv_addr).unwrap();

            let mut recv_pool = PacketBufPool::<4096>::new(1);
            let mut recv_many_buf = <UdpSocket as UdpRecv>::RecvManyBuf::default();
            let mut packets: Vec<(Packet, SocketAddr)> = Vec::new();

            // The datagram is already buffered, so a single read returns it.
            tokio::time::timeout(
                Duration::from_secs(1),
                receiver.recv_many_from(&mut recv_many_buf, &mut recv_pool, &mut packets),
            )
            .await
            .unwrap()
            .unwrap();

            assert_eq!(packets.len(), 1, "expected exactly one packet");
            let (packet, _) = &packets[0];
            assert_eq!(
                packet.len(),
                payload.len(),
                "oversized datagram must be received in full, not dropped or truncated"
            );
            assert_eq!(
                &packet[..],
                &payload[..],
                "datagram must retain same content"
            );
        }

        // wireguard4netns: the tests of receiving in place.

        /// A socket with GRO on, and a plain sender to it.
        fn gro_pair() -> (UdpSocket, std::net::UdpSocket, SocketAddr) {
            let receiver =
                UdpSocket::bind((Ipv4Addr::LOCALHOST, 0).into(), SockOpt::default()).unwrap();
            receiver.enable_udp_gro().unwrap();
            let addr = receiver.local_addr().unwrap();
            let sender = std::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
            (receiver, sender, addr)
        }

        /// Receive until `n` packets have arrived.
        async fn recv_n(
            receiver: &mut UdpSocket,
            buf: &mut RecvManyBuf,
            pool: &mut PacketBufPool,
            n: usize,
        ) -> Vec<(Packet, SocketAddr)> {
            let mut packets = vec![];
            while packets.len() < n {
                tokio::time::timeout(
                    Duration::from_secs(2),
                    receiver.recv_many_from(buf, pool, &mut packets),
                )
                .await
                .expect("the datagrams were sent")
                .unwrap();
                assert!(buf.buffers() <= MAX_BUFFERS + 1, "{}", buf.buffers());
            }
            assert_eq!(packets.len(), n);
            packets
        }

        // A UDP_SEGMENT send on loopback reaches a GRO socket as one message: its
        // segments come out as packets that point into the receive buffer itself.
        #[tokio::test]
        async fn gro_segments_are_split_in_place() {
            let (mut receiver, sender, addr) = gro_pair();
            let lens = [1000, 1000, 1000, 333];
            let data: Vec<u8> = (0..lens.iter().sum::<usize>()).map(|i| i as u8).collect();
            let segment = 1000u16;
            let iov = [IoSlice::new(&data)];
            let cmsg = [ControlMessage::UdpGsoSegments(&segment)];
            let to = SockaddrStorage::from(addr);
            nix::sys::socket::sendmsg(
                sender.as_raw_fd(),
                &iov,
                &cmsg,
                MsgFlags::empty(),
                Some(&to),
            )
            .unwrap();

            let mut buf = RecvManyBuf::default();
            let mut pool = PacketBufPool::<4096>::new(1);
            let packets = recv_n(&mut receiver, &mut buf, &mut pool, lens.len()).await;
            let mut at = 0;
            for ((packet, src), len) in packets.iter().zip(lens) {
                assert_eq!(*src, sender.local_addr().unwrap());
                assert_eq!(&packet[..], &data[at..at + len]);
                at += len;
            }
            for pair in packets.windows(2) {
                let (a, b) = (&pair[0].0, &pair[1].0);
                assert_eq!(a.as_ptr().wrapping_add(a.len()), b.as_ptr(), "not in place");
            }
        }

        // Packets held on to keep their buffers lent: past MAX_BUFFERS, receiving copies
        // instead of allocating more, and once the packets are gone the buffers are
        // whole again and reused.
        #[tokio::test]
        async fn lent_buffers_are_bounded_and_reused() {
            let (mut receiver, sender, addr) = gro_pair();
            let mut buf = RecvManyBuf::default();
            let mut pool = PacketBufPool::<4096>::new(1);
            let mut held = vec![];
            let mut sent = 0u32;
            while held.len() < 3 * MAX_BUFFERS {
                for _ in 0..5 {
                    sender.send_to(&sent.to_be_bytes(), addr).unwrap();
                    sent += 1;
                }
                held.extend(recv_n(&mut receiver, &mut buf, &mut pool, 5).await);
            }
            for (i, (packet, _)) in held.iter().enumerate() {
                assert_eq!(&packet[..], &(i as u32).to_be_bytes(), "datagram {i}");
            }
            assert!(buf.bounce.is_some(), "all buffers were lent: copied");
            let before = buf.buffers();
            drop(held);
            buf.refill();
            assert_eq!(buf.buffers(), before, "no new buffer");
            assert_eq!(buf.ready.len(), MAX_PACKET_COUNT);
            assert!(buf.ready.iter().all(|b| b.len() == MAX_GRO_SIZE));
        }
    }
}

#[cfg(target_os = "android")]
mod android {
    use crate::packet::{Packet, PacketBufPool};
    use crate::udp::UdpRecv;
    use std::io;
    use std::net::SocketAddr;

    impl UdpRecv for super::UdpSocket {
        type RecvManyBuf = ();

        async fn recv_from(
            &mut self,
            pool: &mut PacketBufPool,
        ) -> io::Result<(Packet, SocketAddr)> {
            let mut buf = pool.get();
            let (n, src) = self.socket().recv_from(&mut buf).await?;
            buf.truncate(n);
            let src = self.map_src(src);
            Ok((buf, src))
        }
    }
}
