//! `examples/`: the client config (for `run`) and the server config (for
//! `wg-quick up`) parse once the walk-through's `sed` lines have filled in the
//! keys, and they match each other: each side's peer is the other's key, one
//! preshared key, the client's address inside what the server routes to it.

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;

use wireguard4netns::config::Config;
use wireguard4netns::keys::{self, Key};

fn example(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples")
        .join(name);
    fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The `TOKEN`s the walk-through's `sed -e "s|TOKEN|…|"` lines replace.
fn substituted(walkthrough: &str) -> BTreeSet<String> {
    walkthrough
        .split("s|")
        .skip(1)
        .filter_map(|rest| rest.split('|').next())
        .map(str::to_owned)
        .collect()
}

/// The upper-case placeholders a config holds (`CLIENT_PRIVATE_KEY`, …).
fn placeholders(config: &str) -> BTreeSet<String> {
    config
        .lines()
        .filter(|line| !line.trim_start().starts_with('#'))
        .filter_map(|line| line.split_once('=').map(|(_, value)| value.trim()))
        .filter(|value| value.ends_with("_KEY"))
        .map(str::to_owned)
        .collect()
}

#[test]
fn examples_parse_and_match_each_other() {
    let (client_text, server_text) = (example("client.conf"), example("server.conf"));
    let walkthrough = example("README.md");
    let tokens = substituted(&walkthrough);
    for (name, text) in [("client.conf", &client_text), ("server.conf", &server_text)] {
        let missing: Vec<_> = placeholders(text).difference(&tokens).cloned().collect();
        assert!(
            missing.is_empty(),
            "the walk-through never fills in {missing:?} of {name}"
        );
    }

    let client_key = keys::generate_private();
    let server_key = keys::generate_private();
    let psk = keys::generate_preshared();
    let fill = |text: &str| {
        text.replace("CLIENT_PRIVATE_KEY", &client_key.to_string())
            .replace("SERVER_PRIVATE_KEY", &server_key.to_string())
            .replace(
                "CLIENT_PUBLIC_KEY",
                &keys::public_from_private(&client_key).to_string(),
            )
            .replace(
                "SERVER_PUBLIC_KEY",
                &keys::public_from_private(&server_key).to_string(),
            )
            .replace("PRESHARED_KEY", &psk.to_string())
    };
    let client = Config::parse(&fill(&client_text), "examples/client.conf").expect("client.conf");
    let server = Config::parse(&fill(&server_text), "examples/server.conf").expect("server.conf");
    assert!(client.warnings.is_empty(), "{:?}", client.warnings);

    let only = |config: &Config, name: &str| {
        assert_eq!(config.peers.len(), 1, "{name}: one peer");
        config.peers[0].clone()
    };
    let (to_server, to_client) = (only(&client, "client"), only(&server, "server"));
    let public = |key: &Key| keys::public_from_private(key);
    assert_eq!(to_server.public_key, public(&server.interface.private_key));
    assert_eq!(to_client.public_key, public(&client.interface.private_key));
    assert_eq!(to_server.preshared_key, Some(psk.clone()));
    assert_eq!(to_client.preshared_key, Some(psk));
    assert!(
        to_server.endpoint.is_some(),
        "the client needs the server's endpoint"
    );
    assert!(
        !client.interface.dns.is_empty(),
        "run applies DNS=; the example shows it"
    );

    let client_addr = client.interface.addresses[0].ip();
    assert!(
        to_client
            .allowed_ips
            .iter()
            .any(|net| net.contains(client_addr)),
        "the server does not route {client_addr} to the client"
    );
    assert!(
        server
            .interface
            .addresses
            .iter()
            .any(|net| net.contains(client_addr)),
        "the client's {client_addr} is outside the server's tunnel subnet"
    );
    let port = server
        .interface
        .listen_port
        .expect("the server listens on a fixed port");
    assert!(
        client_text.contains(&format!(":{port}")),
        "the client's Endpoint is not the server's ListenPort {port}"
    );
}
