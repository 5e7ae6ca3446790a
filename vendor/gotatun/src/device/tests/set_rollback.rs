// wireguard4netns: tests of our changes to UAPI `set`: all-or-nothing (see
// `DeviceState::prepare_udp` in `device/mod.rs`), and a prefix moved to another peer
// leaving the old peer's list (`Displaced`). Not part of upstream gotatun.

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::num::NonZero;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use x25519_dalek::{PublicKey, StaticSecret};

use super::mock::mock_tun;
use crate::device::uapi::UapiServer;
use crate::device::uapi::command::{Get, GetResponse, Response, Set, SetPeer, SetUnset};
use crate::device::{DeviceBuilder, Peer};
use crate::packet::{Packet, PacketBufPool};
use crate::serialization::KeyBytes;
use crate::udp::{UdpRecv, UdpSend, UdpTransportFactory, UdpTransportFactoryParams};

/// Port another socket holds: binding it fails.
const TAKEN_PORT: u16 = 40000;

/// A UDP transport that counts its binds, refuses [`TAKEN_PORT`] with
/// EADDRINUSE and any fwmark with EPERM (no CAP_NET_ADMIN), as the kernel
/// would.
#[derive(Clone, Default)]
struct StrictUdp {
    binds: Arc<AtomicU32>,
}

struct SilentRecv;

#[derive(Clone)]
struct MarklessSend(u16);

impl UdpTransportFactory for StrictUdp {
    type Send = MarklessSend;
    type Recv = SilentRecv;

    async fn bind(
        &mut self,
        params: &UdpTransportFactoryParams,
    ) -> io::Result<(Self::Send, Self::Recv)> {
        if params.port == TAKEN_PORT {
            return Err(io::Error::from_raw_os_error(libc::EADDRINUSE));
        }
        if params.fwmark.is_some() {
            return Err(io::Error::from_raw_os_error(libc::EPERM));
        }
        self.binds.fetch_add(1, Ordering::SeqCst);
        Ok((MarklessSend(params.port), SilentRecv))
    }
}

impl UdpRecv for SilentRecv {
    type RecvManyBuf = ();

    async fn recv_from(&mut self, _pool: &mut PacketBufPool) -> io::Result<(Packet, SocketAddr)> {
        std::future::pending().await
    }
}

impl UdpSend for MarklessSend {
    type SendManyBuf = ();

    async fn send_to(&self, _packet: Packet, _destination: SocketAddr) -> io::Result<()> {
        Ok(())
    }

    fn local_addr(&self) -> io::Result<Option<SocketAddr>> {
        Ok(Some((Ipv4Addr::LOCALHOST, self.0).into()))
    }

    fn set_fwmark(&self, _mark: u32) -> io::Result<()> {
        Err(io::Error::from_raw_os_error(libc::EPERM))
    }
}

fn set_errno(response: Response) -> i32 {
    match response {
        Response::Set(set) => set.errno,
        Response::Get(get) => panic!("a get answer to a set: {get:?}"),
    }
}

fn get(response: Response) -> GetResponse {
    match response {
        Response::Get(get) => get,
        Response::Set(set) => panic!("a set answer to a get: {set:?}"),
    }
}

/// A `set` that fails (fwmark refused, port taken) answers the errno and
/// changes nothing: same port, fwmark and key, no new socket. One that works
/// binds a new port before letting the old one go, and a new key on the same
/// port gets its socket back.
#[tokio::test]
async fn failed_set_changes_nothing() {
    let udp = StrictUdp::default();
    let (tun, _app_tx, _app_rx) = mock_tun();
    let (client, server) = UapiServer::new();
    let key = StaticSecret::random();
    // With a peer, the device binds its socket when built.
    let peer = Peer::new(PublicKey::from(&StaticSecret::random()))
        .with_endpoint((Ipv4Addr::new(10, 0, 0, 2), 51820).into());
    let _device = DeviceBuilder::new()
        .with_private_key(key.clone())
        .with_ip(tun)
        .with_udp(udp.clone())
        .with_listen_port(51820)
        .with_peer(peer)
        .with_uapi(server)
        .build()
        .await
        .expect("device");
    let state = || async { get(client.send(Get).await.expect("get")) };
    assert_eq!(udp.binds.load(Ordering::SeqCst), 1);

    let fwmark = Set {
        fwmark: Some(SetUnset::Set(NonZero::new(4660).unwrap())),
        private_key: Some(KeyBytes(StaticSecret::random().to_bytes())),
        ..Set::default()
    };
    assert_eq!(set_errno(client.send(fwmark).await.unwrap()), libc::EPERM);
    let taken = Set {
        listen_port: Some(TAKEN_PORT),
        private_key: Some(KeyBytes(StaticSecret::random().to_bytes())),
        ..Set::default()
    };
    assert_eq!(
        set_errno(client.send(taken).await.unwrap()),
        libc::EADDRINUSE
    );

    let after = state().await;
    assert_eq!(after.listen_port, Some(51820));
    assert_eq!(after.fwmark, None);
    assert_eq!(after.private_key.map(|k| k.0), Some(key.to_bytes()));
    assert_eq!(
        udp.binds.load(Ordering::SeqCst),
        1,
        "the socket was replaced"
    );

    let moved = Set {
        listen_port: Some(51821),
        ..Set::default()
    };
    assert_eq!(set_errno(client.send(moved).await.unwrap()), 0);
    assert_eq!(state().await.listen_port, Some(51821));
    let rekeyed = Set {
        private_key: Some(KeyBytes(StaticSecret::random().to_bytes())),
        ..Set::default()
    };
    assert_eq!(set_errno(client.send(rekeyed).await.unwrap()), 0);
    assert_eq!(state().await.listen_port, Some(51821));
    assert_eq!(udp.binds.load(Ordering::SeqCst), 3, "one bind per change");
}

/// A prefix given to another peer leaves the old one's list, also after an
/// unrelated `set` on the old peer (which used to put it back in the table).
#[tokio::test]
async fn moved_prefix_leaves_the_old_peer() {
    let (tun, _app_tx, _app_rx) = mock_tun();
    let (client, server) = UapiServer::new();
    let _device = DeviceBuilder::new()
        .with_private_key(StaticSecret::random())
        .with_ip(tun)
        .with_udp(StrictUdp::default())
        .with_listen_port(51820)
        .with_uapi(server)
        .build()
        .await
        .expect("device");
    let old = PublicKey::from(&StaticSecret::random());
    let new = PublicKey::from(&StaticSecret::random());
    let prefix: ipnetwork::IpNetwork = "10.0.8.0/24".parse().unwrap();
    let kept: ipnetwork::IpNetwork = "10.0.9.0/24".parse().unwrap();
    let with_ips = |key: &PublicKey, ips: Vec<ipnetwork::IpNetwork>| {
        let mut peer = SetPeer::new(*key.as_bytes());
        peer.peer.allowed_ip = ips;
        Set {
            peers: vec![peer],
            ..Set::default()
        }
    };
    let lists = || async {
        let got = get(client.send(Get).await.expect("get"));
        let of = |key: &PublicKey| {
            got.peers
                .iter()
                .find(|p| p.peer.public_key.0 == *key.as_bytes())
                .map(|p| p.peer.allowed_ip.clone())
                .unwrap_or_default()
        };
        (of(&old), of(&new))
    };

    let set = with_ips(&old, vec![prefix, kept]);
    assert_eq!(set_errno(client.send(set).await.unwrap()), 0);
    let set = with_ips(&new, vec![prefix]);
    assert_eq!(set_errno(client.send(set).await.unwrap()), 0);
    assert_eq!(lists().await, (vec![kept], vec![prefix]));

    let mut unrelated = SetPeer::new(*old.as_bytes());
    unrelated.peer.persistent_keepalive_interval = Some(25);
    let set = Set {
        peers: vec![unrelated],
        ..Set::default()
    };
    assert_eq!(set_errno(client.send(set).await.unwrap()), 0);
    assert_eq!(lists().await, (vec![kept], vec![prefix]));
}
