// wireguard4netns: tests of our change telling a task that died from one that was
// replaced (see `watch_task` in `device/mod.rs`). Not part of upstream gotatun.

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use futures::FutureExt;
use tokio::sync::watch;
use tokio::time::timeout;
use x25519_dalek::{PublicKey, StaticSecret};

use super::mock::mock_tun;
use crate::device::{DeviceBuilder, Error, Peer, watch_task};
use crate::packet::{Packet, PacketBufPool};
use crate::udp::{UdpRecv, UdpSend, UdpTransportFactory, UdpTransportFactoryParams};

/// A UDP transport whose sockets receive nothing until told to fail: then the
/// socket of the current connection (numbered by `bind`) returns a hard error,
/// as a `recvmmsg` error does.
#[derive(Clone, Default)]
struct FailingUdp {
    binds: Arc<AtomicU32>,
    fail: Arc<watch::Sender<u32>>,
}

struct FailingRecv {
    generation: u32,
    fail: watch::Receiver<u32>,
}

#[derive(Clone)]
struct DiscardSend(u16);

impl UdpTransportFactory for FailingUdp {
    type Send = DiscardSend;
    type Recv = FailingRecv;

    async fn bind(
        &mut self,
        params: &UdpTransportFactoryParams,
    ) -> io::Result<(Self::Send, Self::Recv)> {
        let generation = self.binds.fetch_add(1, Ordering::SeqCst) + 1;
        let recv = FailingRecv {
            generation,
            fail: self.fail.subscribe(),
        };
        Ok((DiscardSend(params.port), recv))
    }
}

impl UdpRecv for FailingRecv {
    type RecvManyBuf = ();

    async fn recv_from(&mut self, _pool: &mut PacketBufPool) -> io::Result<(Packet, SocketAddr)> {
        let generation = self.generation;
        let _ = self.fail.wait_for(|g| *g == generation).await;
        Err(io::Error::other("injected recvmmsg failure"))
    }
}

impl UdpSend for DiscardSend {
    type SendManyBuf = ();

    async fn send_to(&self, _packet: Packet, _destination: SocketAddr) -> io::Result<()> {
        Ok(())
    }

    fn local_addr(&self) -> io::Result<Option<SocketAddr>> {
        Ok(Some((Ipv4Addr::LOCALHOST, self.0).into()))
    }
}

/// Reconfiguring the listen port and the key replaces the connection several
/// times without a fatal error; then a receive error on the current socket ends
/// the UDP receive task, and the device reports it, naming the task.
#[tokio::test]
async fn replaced_tasks_are_no_failure_a_dead_one_is() {
    let udp = FailingUdp::default();
    let (tun, _app_tx, _app_rx) = mock_tun();
    let peer = Peer::new(PublicKey::from(&StaticSecret::random()))
        .with_endpoint((Ipv4Addr::new(10, 0, 0, 2), 51820).into());
    let mut device = DeviceBuilder::new()
        .with_private_key(StaticSecret::random())
        .with_ip(tun)
        .with_udp(udp.clone())
        .with_listen_port(51820)
        .with_peer(peer)
        .build()
        .await
        .expect("device");
    for port in 51821..51824 {
        device
            .write(async |d| d.set_listen_port(port))
            .await
            .expect("set listen port");
        device
            .set_private_key(StaticSecret::random())
            .await
            .expect("set private key");
    }
    assert_eq!(udp.binds.load(Ordering::SeqCst), 7, "one bind per change");
    assert!(
        timeout(Duration::from_millis(200), device.wait_failure())
            .await
            .is_err(),
        "a replaced connection was reported as a failure"
    );

    udp.fail.send_replace(udp.binds.load(Ordering::SeqCst));
    let failure = timeout(Duration::from_secs(2), device.wait_failure())
        .await
        .expect("no failure reported within 2 s of the receive error");
    assert!(
        failure.contains("handle_incoming") && failure.contains("injected recvmmsg failure"),
        "{failure}"
    );
}

/// The mechanism itself: an error of a retired connection's task is no fatal
/// error, the same error of a current one is (the first one only).
#[tokio::test]
async fn watch_task_ignores_retired_connections() {
    let fatal = watch::Sender::new(None);
    let failing = || async { Err::<(), _>(Error::IoError(io::Error::other("closed"))) }.boxed();

    let retired = Arc::new(AtomicBool::new(true));
    let result = watch_task("handle_outgoing", failing(), retired, fatal.clone()).await;
    assert!(result.is_ok() && fatal.borrow().is_none());

    let current = Arc::new(AtomicBool::new(false));
    let result = watch_task("handle_incoming", failing(), current.clone(), fatal.clone()).await;
    assert!(result.is_err());
    let _ = watch_task("handle_outgoing", failing(), current, fatal.clone()).await;
    let recorded = fatal.borrow().as_ref().map(ToString::to_string);
    assert_eq!(
        recorded.as_deref(),
        Some("task handle_incoming failed: i/o error: closed")
    );
}
