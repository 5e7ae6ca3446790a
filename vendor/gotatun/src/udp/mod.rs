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

//! Trait abstractions for UDP sockets.
//!
//! - [`socket`] contains implementation for actual UDP sockets.
//! - [`channel`] contains implementation for tokio-based channels.
#![cfg_attr(not(feature = "socket"), expect(rustdoc::broken_intra_doc_links))]

use std::{
    future::Future,
    io,
    net::{IpAddr, SocketAddr},
};

use crate::packet::{Packet, PacketBufPool};

// wireguard4netns: `buffer` (the device's buffered udp channel) removed; see
// `device/datapath.rs`.
pub mod channel;
#[cfg(feature = "socket")]
pub mod socket;

/// An abstraction of `UdpSocket::bind`.
///
/// See [`UdpSend`] and [`UdpRecv`].
pub trait UdpTransportFactory: Send + Sync + 'static {
    /// The [`UdpSend`] returned by [`UdpTransportFactory::bind`].
    type Send: UdpSend + 'static;

    /// The [`UdpRecv`] returned by [`UdpTransportFactory::bind`].
    type Recv: UdpRecv + 'static;

    /// Bind a socket for sending and receiving UDP.
    fn bind(
        &mut self,
        params: &UdpTransportFactoryParams,
    ) -> impl Future<Output = io::Result<(Self::Send, Self::Recv)>> + Send;
}

/// Arguments to [`UdpTransportFactory::bind`].
#[derive(Clone, Debug)]
pub struct UdpTransportFactoryParams {
    /// The [`IpAddr`] to bind the UDP socket to.
    /// If `None`, attempt to bind a dual-stack IPv4/IPv6 socket to `::`.
    pub addr: Option<IpAddr>,

    /// The port to bind the UDP socket to.
    pub port: u16,

    /// If `Some`, set `fwmark` on the socket.
    #[cfg(target_os = "linux")]
    pub fwmark: Option<u32>,
}

/// An abstraction of `recv_from` for a UDP socket.
///
/// This allows us to, for example, swap out UDP sockets with a channel.
pub trait UdpRecv: Send + Sync {
    /// Receive a single UDP packet.
    fn recv_from(
        &mut self,
        pool: &mut PacketBufPool,
    ) -> impl Future<Output = io::Result<(Packet, SocketAddr)>> + Send;

    /// The buffer type that is passed to [`UdpRecv::recv_many_from`].
    type RecvManyBuf: Default + Send;

    /// Receive up to multiple packets at once.
    ///
    /// # Arguments
    /// - `recv_buf` - Internal buffer. Should be reused between calls. Create with [`Default`].
    /// - `pool` - A pool that allocates packet buffers.
    /// - `packets` - Output. UDP datagrams and source addresses will be appended to this vector.
    ///
    /// The default implementation always reads 1 packet.
    fn recv_many_from(
        &mut self,
        recv_buf: &mut Self::RecvManyBuf,
        pool: &mut PacketBufPool,
        packets: &mut Vec<(Packet, SocketAddr)>,
    ) -> impl Future<Output = io::Result<()>> + Send {
        let _ = recv_buf;
        async move {
            let (packet, source_addr) = self.recv_from(pool).await?;
            packets.push((packet, source_addr));
            Ok(())
        }
    }

    /// Enable UDP GRO, if available
    fn enable_udp_gro(&self) -> io::Result<()> {
        Ok(())
    }
}

/// An abstraction of `send_to` for a UDP socket.
///
/// This allows us to, for example, swap out UDP sockets with a channel.
pub trait UdpSend: Send + Sync + Clone {
    /// The implementations of [`UdpSend::send_many_to`] typically require a buffer of some kind.
    /// This buffer should be created by the caller (using `::default()`), and reused between calls.
    type SendManyBuf: Default + Send + Sync;

    /// Send a single UDP packet to `destination`.
    fn send_to(
        &self,
        packet: Packet,
        destination: SocketAddr,
    ) -> impl Future<Output = io::Result<()>> + Send;

    // --- Optional Methods ---

    /// The maximum number of packets that can be passed to [`UdpSend::send_many_to`].
    fn max_number_of_packets_to_send(&self) -> usize {
        1
    }

    /// Send up to [`UdpSend::max_number_of_packets_to_send`] UDP packets to the destination.
    ///
    /// # Arguments
    /// - `send_buf` - Internal buffer. Should be reused between calls. Create with [`Default`].
    /// - `packets` - Input. Packets to send. Packets are removed from this vector when sent.
    ///
    /// May error if [`SocketAddr::V4`]s and [`SocketAddr::V6`]s are mixed.
    /// May error if number of `packets.len() > max_number_of_packets_to_send`.
    ///
    /// If successful, `packets` will be empty.
    /// If unsuccessful any number of packets may have been sent, and `packets` may not be empty.
    ///
    /// # Cancel safety
    /// This method is not cancel safe, but cancellations must never result in a panic,
    /// or an error on a subsequent call.
    fn send_many_to(
        &self,
        send_buf: &mut Self::SendManyBuf,
        packets: &mut Vec<(Packet, SocketAddr)>,
    ) -> impl Future<Output = io::Result<()>> + Send {
        let _ = send_buf;
        generic_send_many_to(self, packets)
    }

    /// Get the port in use, if any.
    ///
    /// This is applicable to UDP sockets, i.e. [`tokio::net::UdpSocket`].
    #[cfg_attr(
        not(any(feature = "socket", feature = "tun")),
        expect(rustdoc::broken_intra_doc_links)
    )]
    fn local_addr(&self) -> io::Result<Option<SocketAddr>> {
        Ok(None)
    }

    /// Set `fwmark`.
    ///
    /// This is applicable to UDP sockets, i.e. [`tokio::net::UdpSocket`].
    #[cfg(target_os = "linux")]
    #[cfg_attr(
        not(any(feature = "socket", feature = "tun")),
        expect(rustdoc::broken_intra_doc_links)
    )]
    fn set_fwmark(&self, _mark: u32) -> io::Result<()> {
        Ok(())
    }
}

async fn generic_send_many_to<U: UdpSend>(
    transport: &U,
    packets: &mut Vec<(Packet, SocketAddr)>,
) -> io::Result<()> {
    for (packet, target) in packets.drain(..) {
        transport.send_to(packet, target).await?;
    }
    Ok(())
}
