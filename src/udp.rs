//! The engine's UDP socket, sending runs of equal-size datagrams with UDP GSO.
//!
//! gotatun's socket sends a batch with `sendmmsg`, one message per datagram, so
//! the kernel walks the whole UDP/IP stack once per 1452-byte packet: half of
//! the upload path's time in a profile. With the `UDP_SEGMENT` control message
//! (Linux 4.18) one `sendmsg` carries up to 64 datagrams of the same size (the
//! last may be shorter) that go down the stack as one buffer and are cut up at
//! the device or just before it. A TCP super-packet from the TUN becomes ~44
//! equal-size WireGuard packets to one peer, which is exactly that shape.
//!
//! Receiving keeps gotatun's socket (`recvmmsg` with `UDP_GRO`).
//!
//! The kernel refuses `UDP_SEGMENT` where it cannot do it: `EIO` when the
//! route's device cannot checksum (wireguard-go's `errShouldDisableUDPGSO`),
//! `EINVAL` when the segment size exceeds the path MTU or the socket disabled
//! checksums. A refused send sends nothing, so the run is sent again one
//! datagram per message. If that works, it was GSO that was refused, and GSO
//! stays off for this socket (as in wireguard-go; a path MTU below the tunnel's
//! packets on one peer's route thus costs the others GSO too, a misconfigured
//! MTU's price). If it fails as well, the datagrams themselves were bad (a
//! destination port 0 is `EINVAL` either way): that error is returned and GSO
//! stays on.

#![forbid(unsafe_code)]

use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::ops::Deref;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use gotatun::packet::Packet;
use gotatun::udp::socket::{UdpSocket, UdpSocketFactory};
use gotatun::udp::{UdpSend, UdpTransportFactory, UdpTransportFactoryParams};
use nix::errno::Errno;
use nix::sys::socket::{ControlMessage, MsgFlags, SockaddrStorage};
use tokio::io::Interest;

/// Most segments per `UDP_SEGMENT` send (the kernel's `UDP_MAX_SEGMENTS` is 64
/// before Linux 6.9).
const MAX_SEGMENTS: usize = 64;

/// Most payload bytes per `UDP_SEGMENT` send: below the 64 KiB IP packet limit
/// with room for any IP and UDP header.
const MAX_GSO_BYTES: usize = 65_000;

/// Binds gotatun's socket (buffer sizes, dual stack, `UDP_GRO`) and wraps its
/// sending half in [`GsoSend`].
pub struct UdpFactory {
    inner: UdpSocketFactory,
}

impl UdpFactory {
    /// A factory asking for `buffer` bytes of `SO_RCVBUF` and `SO_SNDBUF`.
    pub fn new(buffer: usize) -> Self {
        Self {
            inner: UdpSocketFactory {
                recv_buffer_size: Some(buffer),
                send_buffer_size: Some(buffer),
            },
        }
    }
}

impl UdpTransportFactory for UdpFactory {
    type Send = GsoSend;
    type Recv = UdpSocket;

    async fn bind(
        &mut self,
        params: &UdpTransportFactoryParams,
    ) -> io::Result<(GsoSend, UdpSocket)> {
        let (send, recv) = self.inner.bind(params).await?;
        Ok((GsoSend::new(send), recv))
    }
}

/// The sending half: batches go out as `UDP_SEGMENT` runs while the kernel
/// takes them, and with `sendmmsg` otherwise.
#[derive(Clone)]
pub struct GsoSend {
    socket: UdpSocket,
    /// Shared by the clones: they all send on the same socket.
    gso: Arc<AtomicBool>,
}

impl GsoSend {
    pub fn new(socket: UdpSocket) -> Self {
        Self {
            socket,
            gso: Arc::new(AtomicBool::new(true)),
        }
    }

    /// Whether sends still try `UDP_SEGMENT`.
    pub fn gso_enabled(&self) -> bool {
        self.gso.load(Ordering::Relaxed)
    }

    /// One `sendmsg` of `run` (≥ 2 datagrams to one address, all as long as
    /// the first but the last) with `UDP_SEGMENT`.
    async fn send_segmented(&self, run: &[(Packet, SocketAddr)]) -> io::Result<()> {
        let socket = self.socket.socket();
        let fd = socket.as_raw_fd();
        let segment = u16::try_from(run[0].0.len())
            .map_err(|_| io::Error::from_raw_os_error(libc::EMSGSIZE))?;
        let mut iov = [IoSlice::new(&[]); MAX_SEGMENTS];
        for (slot, (packet, _)) in iov.iter_mut().zip(run) {
            *slot = IoSlice::new(packet);
        }
        let iov = &iov[..run.len()];
        let addr = SockaddrStorage::from(run[0].1);
        socket
            .async_io(Interest::WRITABLE, || {
                let cmsg = [ControlMessage::UdpGsoSegments(&segment)];
                // nix builds the control buffer on the heap: one small
                // allocation per run of up to 64 packets.
                nix::sys::socket::sendmsg(fd, iov, &cmsg, MsgFlags::MSG_DONTWAIT, Some(&addr))
                    .map_err(io::Error::from)
            })
            .await?;
        Ok(())
    }

    /// What gathered in `buf.plain`, with the socket's own `sendmmsg`.
    async fn send_plain(&self, buf: &mut SendBuf) -> io::Result<()> {
        if buf.plain.is_empty() {
            return Ok(());
        }
        UdpSend::send_many_to(&self.socket, &mut buf.sendmmsg, &mut buf.plain).await
    }
}

/// What [`GsoSend::send_many_to`] reuses from one call to the next.
#[derive(Default)]
pub struct SendBuf {
    sendmmsg: <UdpSocket as UdpSend>::SendManyBuf,
    /// Datagrams for one `sendmmsg`, in order.
    plain: Vec<(Packet, SocketAddr)>,
}

/// Whether a failed `UDP_SEGMENT` send means this socket cannot do GSO (see
/// the module comment), rather than that the datagrams themselves were bad.
fn gso_refused(err: &io::Error) -> bool {
    matches!(
        err.raw_os_error().map(Errno::from_raw),
        Some(Errno::EIO | Errno::EINVAL)
    )
}

/// How many datagrams from the start of `packets` one `UDP_SEGMENT` send can
/// carry: same destination, all as long as the first except a shorter last one,
/// at most [`MAX_SEGMENTS`] and [`MAX_GSO_BYTES`]. At least 1 for a non-empty
/// slice.
fn segment_run<P: Deref<Target = [u8]>>(packets: &[(P, SocketAddr)]) -> usize {
    let Some((first, dst)) = packets.first() else {
        return 0;
    };
    let size = first.len();
    let mut total = size;
    let mut n = 1;
    for (packet, to) in &packets[1..] {
        let len = packet.len();
        if n == MAX_SEGMENTS || to != dst || len > size || len == 0 || total + len > MAX_GSO_BYTES {
            break;
        }
        total += len;
        n += 1;
        if len < size {
            break;
        }
    }
    n
}

impl UdpSend for GsoSend {
    type SendManyBuf = SendBuf;

    async fn send_to(&self, packet: Packet, destination: SocketAddr) -> io::Result<()> {
        UdpSend::send_to(&self.socket, packet, destination).await
    }

    fn max_number_of_packets_to_send(&self) -> usize {
        self.socket.max_number_of_packets_to_send()
    }

    async fn send_many_to(
        &self,
        buf: &mut SendBuf,
        packets: &mut Vec<(Packet, SocketAddr)>,
    ) -> io::Result<()> {
        if !self.gso_enabled() {
            return UdpSend::send_many_to(&self.socket, &mut buf.sendmmsg, packets).await;
        }
        // Runs too short for GSO gather in `buf.plain` and go out together
        // with `sendmmsg`, in order.
        buf.plain.clear();
        while !packets.is_empty() {
            let n = segment_run(packets);
            if n >= 2 && self.gso_enabled() {
                self.send_plain(buf).await?;
                match self.send_segmented(&packets[..n]).await {
                    Ok(()) => {
                        packets.drain(..n);
                        continue;
                    }
                    Err(err) if gso_refused(&err) => {
                        buf.plain.extend(packets.drain(..n));
                        self.send_plain(buf).await?;
                        self.gso.store(false, Ordering::Relaxed);
                        tracing::info!(
                            "the kernel refused UDP GSO ({err}); sending one datagram per packet"
                        );
                        continue;
                    }
                    Err(err) => return Err(err),
                }
            }
            buf.plain.extend(packets.drain(..n));
        }
        self.send_plain(buf).await
    }

    fn local_addr(&self) -> io::Result<Option<SocketAddr>> {
        UdpSend::local_addr(&self.socket)
    }

    fn set_fwmark(&self, mark: u32) -> io::Result<()> {
        UdpSend::set_fwmark(&self.socket, mark)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;
    use std::net::{Ipv4Addr, Ipv6Addr, UdpSocket as StdUdpSocket};
    use std::time::Duration;

    fn packet(len: usize, fill: u8) -> Packet {
        Packet::from_bytes(BytesMut::from(&vec![fill; len][..]))
    }

    fn sizes(lens: &[usize], dst: SocketAddr) -> Vec<(Vec<u8>, SocketAddr)> {
        lens.iter().map(|&l| (vec![0; l], dst)).collect()
    }

    const A: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::LOCALHOST), 1);
    const B: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::LOCALHOST), 2);

    #[test]
    fn runs_stop_at_a_shorter_packet_inclusive() {
        assert_eq!(segment_run(&sizes(&[1452, 1452, 1452, 700, 1452], A)), 4);
        assert_eq!(segment_run(&sizes(&[1452], A)), 1);
        assert_eq!(segment_run::<Vec<u8>>(&[]), 0);
    }

    #[test]
    fn runs_stop_before_a_longer_packet_or_another_peer() {
        assert_eq!(segment_run(&sizes(&[100, 1452], A)), 1);
        let mut mixed = sizes(&[1452, 1452, 1452], A);
        mixed[2].1 = B;
        assert_eq!(segment_run(&mixed), 2);
    }

    #[test]
    fn runs_respect_the_kernel_limits() {
        assert_eq!(segment_run(&sizes(&[100; 80], A)), MAX_SEGMENTS);
        let n = segment_run(&sizes(&[1452; 80], A));
        assert_eq!(n, MAX_GSO_BYTES / 1452);
        // An empty datagram cannot be a segment.
        assert_eq!(segment_run(&sizes(&[10, 0], A)), 1);
    }

    /// A sender bound like the engine's (dual-stack `::`, gotatun's options).
    async fn sender() -> GsoSend {
        let params = UdpTransportFactoryParams {
            addr: None,
            port: 0,
            fwmark: None,
        };
        let (send, _recv) = UdpFactory::new(1 << 20).bind(&params).await.unwrap();
        send
    }

    /// Send `lens` (datagram i filled with byte i) to a fresh receiver on
    /// `local`, and check each arrives whole, in order, as its own datagram.
    async fn roundtrip(send: &GsoSend, local: std::net::IpAddr, lens: &[usize]) {
        let receiver = StdUdpSocket::bind((local, 0)).unwrap();
        receiver
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        let dst = receiver.local_addr().unwrap();
        let mut batch: Vec<_> = lens
            .iter()
            .enumerate()
            .map(|(i, &l)| (packet(l, i as u8), dst))
            .collect();
        send.send_many_to(&mut SendBuf::default(), &mut batch)
            .await
            .unwrap();
        assert!(batch.is_empty());
        let mut buf = vec![0u8; 70_000];
        for (i, &len) in lens.iter().enumerate() {
            let n = receiver.recv(&mut buf).unwrap();
            assert_eq!(n, len, "datagram {i} of {lens:?}");
            assert!(buf[..n].iter().all(|&b| b == i as u8), "datagram {i}");
        }
    }

    #[tokio::test]
    async fn segmented_batches_arrive_as_separate_datagrams() {
        let send = sender().await;
        let mut lens = vec![1452; 50];
        lens.push(333);
        lens.extend([1452, 1452, 1, 80, 80, 80, 1452]);
        roundtrip(&send, Ipv4Addr::LOCALHOST.into(), &lens).await;
        roundtrip(&send, Ipv6Addr::LOCALHOST.into(), &lens).await;
        // Odd sizes, including the largest a 1420-byte MTU tunnel sends.
        roundtrip(&send, Ipv6Addr::LOCALHOST.into(), &[1473; 64]).await;
        assert!(send.gso_enabled(), "loopback takes UDP_SEGMENT");
    }

    #[tokio::test]
    async fn refused_gso_falls_back_to_one_datagram_per_packet() {
        // With SO_NO_CHECK the kernel refuses UDP_SEGMENT (EINVAL): it cannot
        // leave segment checksums out.
        use nix::{setsockopt_impl, sockopt_impl};
        sockopt_impl!(NoCheck, SetOnly, libc::SOL_SOCKET, libc::SO_NO_CHECK, bool);
        let send = sender().await;
        nix::sys::socket::setsockopt(send.socket.socket(), NoCheck, &true).unwrap();
        roundtrip(&send, Ipv4Addr::LOCALHOST.into(), &[1000, 1000, 1000, 10]).await;
        assert!(!send.gso_enabled());
        roundtrip(&send, Ipv4Addr::LOCALHOST.into(), &[1000; 30]).await;
    }

    #[tokio::test]
    async fn a_bad_destination_is_an_error_and_leaves_gso_on() {
        let send = sender().await;
        let dst = SocketAddr::new(Ipv4Addr::LOCALHOST.into(), 0);
        let mut batch: Vec<_> = (0..3).map(|_| (packet(500, 1), dst)).collect();
        let err = send
            .send_many_to(&mut SendBuf::default(), &mut batch)
            .await
            .unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EINVAL), "{err}");
        assert!(
            send.gso_enabled(),
            "one bad address must not cost every peer GSO"
        );
        roundtrip(&send, Ipv4Addr::LOCALHOST.into(), &[700; 10]).await;
    }
}
