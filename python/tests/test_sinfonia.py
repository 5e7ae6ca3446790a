"""Sinfonia's tier-3 flow against a WireGuard peer, as uid 65534.

Each test builds a wireguard-go peer (root, its own namespace) serving HTTP
and DNS on its tunnel address, then runs helpers/sinfonia_client.py as uid
65534 with the installed package: ``unshare -U --map-root-user --net
--mount`` running the helper, ``create_wireguard_tunnel`` with a
``wireguard_tools.WireguardConfig``, and the application fetching a URL by
name through the tunnel.
"""

from __future__ import annotations

import pytest
from conftest import Peer, run_client, wg_genkey

FAIL_BUDGET_S = 5.0
EXIT_BUDGET_S = 3.0


def flow_spec(peer: Peer, config: dict, form: str = "object") -> dict:
    return {
        "mode": "flow",
        "form": form,
        "name": "sinfoniatest",
        "config": config,
        "lookup": peer.dns_name,
        "url": f"http://{peer.dns_name}:{peer.http_port}/",
    }


def assert_flow_ok(result: dict, peer: Peer) -> None:
    context = f"result: {result}\n{peer.diagnostics()}"
    assert "error" not in result, context
    app = result["app"]
    assert app is not None and result["app_status"] == 0, context
    # The namespace has lo and the tunnel, nothing else.
    assert app["interfaces"] == ["lo", "wg-sinfoniatest"], context
    # The name is looked up through the tunnel (the peer's responder is the
    # only server that knows it) and the page fetched by that name.
    assert app.get("lookup") == [peer.tunnel_v4], context
    assert app.get("body") == peer.token, context
    assert f"nameserver {peer.tunnel_v4}" in app["resolv_conf"], context


def test_sinfonia_flow_fetches_by_name_through_the_tunnel_and_ends_with_the_namespace(
    make_peer, helpers_dir
):
    private, public = wg_genkey()
    peer = make_peer(public)
    result = run_client(helpers_dir, flow_spec(peer, peer.client_config(private)))
    assert_flow_ok(result, peer)
    context = f"result: {result}"
    # Up and serving when the call returned: the socket is there, one engine
    # (with its helper processes) runs for it.
    assert result["socket_while_up"] and result["engines"] >= 1, context
    # The key went over a pipe: not in any file, not on the command line.
    assert result["key_in_files"] == [] and not result["key_in_engine_cmdline"], context
    # The tunnel ends when the namespace does: the application's exit takes
    # the engine and its socket with it.
    exit_s = result["engine_exit_s"]
    assert None not in exit_s.values() and max(exit_s.values()) < EXIT_BUDGET_S, context
    assert not result["socket_after"] and result["engines_after"] == 0, context
    print(
        f"tunnel up in {result['up_s'] * 1000:.0f} ms; after the namespace ended, socket gone in "
        f"{exit_s['socket'] * 1000:.0f} ms, engine processes in {exit_s['processes'] * 1000:.0f} ms"
    )


@pytest.mark.parametrize("form", ["text", "bytes", "path", "pathlike"])
def test_config_as_text_bytes_or_path(make_peer, helpers_dir, form):
    private, public = wg_genkey()
    peer = make_peer(public)
    result = run_client(helpers_dir, flow_spec(peer, peer.client_config(private), form))
    assert_flow_ok(result, peer)
    expected_files = ["wg.conf"] if form in ("path", "pathlike") else []
    assert result["key_in_files"] == expected_files, result


def test_preshared_key_and_hostname_endpoint_work_and_warnings_go_to_the_logger(
    make_peer, helpers_dir
):
    # 0.1.6 failed on any preshared key, and raised AssertionError on an
    # endpoint given by name.
    private, public = wg_genkey()
    psk = wg_genkey()[0]
    peer = make_peer(public, preshared_key=psk)
    host, port = peer.endpoint.rsplit(":", 1)
    endpoint = {"preshared_key": psk, "endpoint": f"peer.sinfonia.test:{port}"}
    config = peer.client_config(private, peer=endpoint, postup=["echo up"])
    hosts = f"127.0.0.1 localhost\n{host} peer.sinfonia.test\n"
    result = run_client(helpers_dir, flow_spec(peer, config), hosts=hosts)
    assert_flow_ok(result, peer)
    # The binary's warning about the hook it does not run reaches the
    # caller's logging, once, and the call still succeeds.
    hooks = [line for line in result["log"] if "PostUp is ignored" in line]
    assert len(hooks) == 1 and hooks[0].startswith("WARNING /dev/stdin: line "), result["log"]


# ---------------------------------------------------------------------------
# Failures: TunnelError, caught as CalledProcessError, within 5 s, nothing left


def fail_spec(target: str, **config: object) -> dict:
    return {"mode": "fail", "target": target, **config}


def assert_failed(result: dict, *fragments: str) -> None:
    context = f"result: {result}"
    assert result["raised"] == "TunnelError", context
    assert result["is_called_process_error"] and result["is_tunnel_error"], context
    assert result["returncode"] == 1, context
    assert result["elapsed_s"] < FAIL_BUDGET_S, context
    message = result["message"]
    assert message.startswith("wireguard4netns: ") and "\n" not in message, context
    for fragment in fragments:
        assert fragment in message, context
    assert result["left_in_tmpdir"] == [] and result["engines_after"] == 0, context


def good_config(peer_public: str) -> dict:
    return {
        "private_key": wg_genkey()[0],
        "addresses": ["10.99.0.2/24"],
        "peers": [
            {"public_key": peer_public, "endpoint": "127.0.0.1:9", "allowed_ips": ["0.0.0.0/0"]}
        ],
    }


@pytest.mark.parametrize(
    ("target", "fragments"),
    [
        ("no-such-pid", ["there is no process with PID"]),
        ("another-user", ["belongs to another user"]),
        ("exited", []),
        ("reaped", []),
    ],
)
def test_bad_or_vanished_target_raises_tunnel_error(root_env, helpers_dir, target, fragments):
    result = run_client(helpers_dir, fail_spec(target, config=good_config(wg_genkey()[1])))
    assert_failed(result, *fragments)


def test_bad_private_key_raises_tunnel_error_without_the_key(root_env, helpers_dir):
    bad_key = "c2hvcnQ="  # base64, but 5 bytes, not 32
    text = f"[Interface]\nPrivateKey = {bad_key}\n\n[Peer]\nPublicKey = {wg_genkey()[1]}\nAllowedIPs = 0.0.0.0/0\n"
    result = run_client(helpers_dir, fail_spec("live", config_text=text))
    assert_failed(result, "/dev/stdin:2: PrivateKey")
    assert bad_key not in result["message"] and bad_key not in result["stderr"], result


def test_peer_with_our_own_key_raises_tunnel_error(root_env, helpers_dir):
    # A WireguardConfig wireguard-tools accepts, but no tunnel can use.
    private, public = wg_genkey()
    config = good_config(public)
    config["private_key"] = private
    result = run_client(helpers_dir, fail_spec("live", config=config))
    assert_failed(result, "own public key")
