// wireguard4netns: tests of a UAPI `set` changing a peer the device already has in place
// (`DeviceState::modify_peer`), as wireguard-go does: its session, handshake time and
// counters stay whatever field is sent again or changed, but for a changed endpoint,
// which starts a handshake at once. Not part of upstream gotatun.

use std::time::Duration;

use futures::{FutureExt, StreamExt};
use zerocopy::IntoBytes;

use super::mock;
use crate::device::uapi::command::{Get, GetPeer, Request, Response, Set};
use crate::device::uapi::{UapiClient, UapiServer};
use crate::serialization::KeyBytes;
use x25519_dalek::{PublicKey, StaticSecret};

/// Alice's only peer (Bob), as `get` reports it.
async fn bob_seen_by(alice: &UapiClient) -> GetPeer {
    match alice.send(Get).await.expect("get") {
        Response::Get(mut get) => {
            assert_eq!(get.peers.len(), 1, "{get:?}");
            get.peers.remove(0)
        }
        Response::Set(set) => panic!("a set answer to a get: {set:?}"),
    }
}

/// Sends `set=1` with `lines`, which must succeed.
async fn set(alice: &UapiClient, lines: &str) {
    let request = format!("set=1\n{lines}\n");
    let set: Set = match request.parse::<Request>().expect("a set request") {
        Request::Set(set) => set,
        Request::Get(_) => unreachable!(),
    };
    match alice.send(set).await.expect("set") {
        Response::Set(set) => assert_eq!(set.errno, 0, "{lines}"),
        Response::Get(get) => panic!("a get answer to a set: {get:?}"),
    }
}

/// The handshake time in seconds since the epoch, as a float for comparing.
fn handshake_time(peer: &GetPeer) -> f64 {
    let sec = peer.last_handshake_time_sec.expect("a handshake");
    let nsec = peer.last_handshake_time_nsec.expect("a handshake");
    sec as f64 + f64::from(nsec) / 1e9
}

/// What `wg syncconf` sends when nothing changed (the device's key and port, then
/// each peer with `replace_allowed_ips`), then each field syncconf or `wg set` may
/// send changed, one `set` at a time: after each, Alice's peer keeps its handshake
/// time and counters, and a packet still goes through without a new handshake.
/// (Upstream re-created the peer on every `set` naming it: no session, zero counters,
/// a new handshake for the next packet.)
#[tokio::test]
#[test_log::test]
async fn set_on_a_known_peer_keeps_its_session_and_counters() {
    let (client, server) = UapiServer::new();
    let (alice, mut bob, eve) = mock::device_pair_with_uapi(Some(server)).await;
    let inits = eve.wg_handshake_init();
    tokio::pin!(inits);
    let packet = mock::packet(b"Hello!");
    let mut exchange = async || {
        alice.app_tx.send(packet.clone()).await;
        let got = tokio::time::timeout(Duration::from_secs(5), bob.app_rx.recv())
            .await
            .expect("the packet reached Bob");
        assert_eq!(got.as_bytes(), packet.as_bytes());
    };
    exchange().await;
    assert!(inits.next().await.is_some(), "the first handshake");

    let before = bob_seen_by(&client).await;
    assert!(before.tx_bytes > Some(0), "{before:?}");
    let get = match client.send(Get).await.expect("get") {
        Response::Get(get) => get,
        Response::Set(set) => panic!("{set:?}"),
    };
    let device = format!(
        "private_key={}\nlisten_port={}\n",
        get.private_key.expect("a key"),
        get.listen_port.expect("a port"),
    );
    let bob_key = format!("public_key={}\n", before.peer.public_key);
    let endpoint = before.peer.endpoint.expect("an endpoint");
    let unchanged = format!(
        "{device}{bob_key}endpoint={endpoint}\nreplace_allowed_ips=true\nallowed_ip=0.0.0.0/0\n"
    );
    let psk = "11".repeat(32);
    let steps = [
        ("syncconf, nothing changed", unchanged.clone()),
        ("again", unchanged),
        ("preshared key", format!("{bob_key}preshared_key={psk}\n")),
        ("no preshared key", format!("{bob_key}preshared_key=\n")),
        (
            "keepalive",
            format!("{bob_key}persistent_keepalive_interval=25\n"),
        ),
        (
            "keepalive off",
            format!("{bob_key}persistent_keepalive_interval=0\n"),
        ),
        (
            "allowed ips replaced",
            format!(
                "{bob_key}replace_allowed_ips=true\nallowed_ip=0.0.0.0/0\nallowed_ip=10.9.0.0/16\n"
            ),
        ),
        (
            "allowed ip added",
            format!("{bob_key}allowed_ip=10.8.0.0/16\n"),
        ),
    ];
    let mut last = before;
    for (step, lines) in steps {
        set(&client, &lines).await;
        let now = bob_seen_by(&client).await;
        assert!(
            (handshake_time(&now) - handshake_time(&last)).abs() < 0.5,
            "{step}: the handshake time moved: {last:?} → {now:?}"
        );
        assert!(
            now.tx_bytes >= last.tx_bytes && now.rx_bytes >= last.rx_bytes,
            "{step}: the counters went back: {last:?} → {now:?}"
        );
        exchange().await;
        assert!(
            inits.next().now_or_never().is_none(),
            "{step}: a new handshake was needed"
        );
        last = bob_seen_by(&client).await;
        assert!(last.tx_bytes > now.tx_bytes, "{step}: {last:?}");
    }
    assert!(last.peer.preshared_key.is_none(), "{last:?}");
    assert_eq!(last.peer.persistent_keepalive_interval, None);
    let mut ips: Vec<String> = last
        .peer
        .allowed_ip
        .iter()
        .map(|ip| ip.to_string())
        .collect();
    ips.sort();
    assert_eq!(ips, ["0.0.0.0/0", "10.8.0.0/16", "10.9.0.0/16"]);

    // A changed endpoint is the one field that shakes hands again, at once
    // (`Tunn::handshake_soon`): a peer restarted there has no session with us. The
    // counters stay. (The mock delivers whatever the address; Bob's answers tell
    // Alice the real one.)
    set(&client, &format!("{bob_key}endpoint=10.0.0.3:51821\n")).await;
    let init = tokio::time::timeout(Duration::from_secs(1), inits.next()).await;
    assert!(
        matches!(init, Ok(Some(_))),
        "no handshake within 1 s of a changed endpoint"
    );
    exchange().await;
    let now = bob_seen_by(&client).await;
    assert!(
        now.tx_bytes >= last.tx_bytes && now.rx_bytes >= last.rx_bytes,
        "a changed endpoint: the counters went back: {last:?} → {now:?}"
    );
}

/// As in wireguard-go: a `set` naming a peer with the device's own public key
/// ignores it, and a new private key removes the peer that has its public key.
#[tokio::test]
#[test_log::test]
async fn a_peer_with_the_devices_own_key_is_ignored() {
    let (client, server) = UapiServer::new();
    let (_alice, _bob, _eve) = mock::device_pair_with_uapi(Some(server)).await;
    let peers = async || match client.send(Get).await.expect("get") {
        Response::Get(get) => get
            .peers
            .into_iter()
            .map(|p| p.peer.public_key.to_string())
            .collect::<Vec<_>>(),
        Response::Set(set) => panic!("{set:?}"),
    };
    let own = match client.send(Get).await.expect("get") {
        Response::Get(get) => get.private_key.expect("a key"),
        Response::Set(set) => panic!("{set:?}"),
    };
    let own_public = KeyBytes(*PublicKey::from(&StaticSecret::from(own.0)).as_bytes());
    let before = peers().await;
    set(
        &client,
        &format!("public_key={own_public}\nallowed_ip=10.6.0.0/16\n"),
    )
    .await;
    assert_eq!(peers().await, before, "a peer with our own key was added");

    let next = StaticSecret::random();
    let next_public = KeyBytes(*PublicKey::from(&next).as_bytes());
    set(&client, &format!("public_key={next_public}\n")).await;
    assert_eq!(peers().await.len(), 2);
    set(
        &client,
        &format!("private_key={}\n", KeyBytes(next.to_bytes())),
    )
    .await;
    assert_eq!(peers().await, before, "the peer with our new key stayed");
}
