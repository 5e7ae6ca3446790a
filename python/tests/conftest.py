"""Fixtures for the Python package's tests: peers, ids, running as uid 65534.

The tests run as root because they build the WireGuard peer: Debian's
``wireguard-go`` as root in a network namespace made here, behind a veth
pair, with an HTTP server and a DNS responder on its tunnel address
(helpers/peer_services.py). The code under test, the installed
``wireguard4netns`` package and its binary, runs as uid 65534 (the
Sinfonia client in helpers/sinfonia_client.py), so the interpreter that runs
pytest must be readable by that user: a venv of Debian's /usr/bin/python3 in
a world-readable directory, as python/tests/run makes it.

Names, subnets and ports come from the same id claims as the Rust harness
(tests/common/mod.rs, ``TestId``): a number ``seq`` claimed in
/tmp/w4n-e2e-ids under its flock, held while the test runs, so these tests
and ``cargo test`` running at the same time never share a name, subnet or
port. Everything a test makes is removed when it ends, also when it fails;
processes are stopped by PID only. Without root or a tool, tests skip with
the reason; with CI=true they fail instead.
"""

from __future__ import annotations

import fcntl
import ipaddress
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import pytest

NOBODY = 65534
AS_NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
TOOLS = ["ip", "wg", "wireguard-go", "unshare", "setpriv", "mount"]
ID_DIR = Path("/tmp/w4n-e2e-ids")
WG_RUN_DIR = Path("/var/run/wireguard")
CMD_TIMEOUT = 20.0
CLIENT_TIMEOUT = 120.0
HELPERS = Path(__file__).resolve().parent / "helpers"


def requirement_missing(reason: str) -> None:
    """Skip, or fail under CI=true, where a missing requirement is a bug."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true and {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def root_env() -> None:
    """Root, the tools, and an interpreter uid 65534 can run."""
    if os.geteuid() != 0:
        requirement_missing(
            "the peers' namespaces need root (run as root; the code under test runs as uid 65534)"
        )
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        requirement_missing(f"missing tools: {', '.join(missing)} (python/tests/run installs them)")
    check = subprocess.run(
        [*AS_NOBODY, sys.executable, "-c", "import wireguard4netns, wireguard_tools"],
        capture_output=True,
        timeout=CMD_TIMEOUT,
        check=False,
    )
    if check.returncode != 0:
        requirement_missing(
            f"uid 65534 cannot run {sys.executable} with wireguard4netns and wireguard_tools "
            f"(use a venv of /usr/bin/python3 in a world-readable directory, as python/tests/run "
            f"does): {check.stderr.decode().strip()}"
        )


@pytest.fixture(scope="session")
def helpers_dir() -> Iterator[Path]:
    """A copy of helpers/ that uid 65534 can read (the checkout may not be)."""
    scratch = Path(tempfile.mkdtemp(prefix="w4n-pytest-helpers-"))
    try:
        scratch.chmod(0o755)
        target = scratch / "helpers"
        shutil.copytree(HELPERS, target, ignore=shutil.ignore_patterns("__pycache__"))
        for path in [target, *target.iterdir()]:
            path.chmod(0o755 if path.is_dir() else 0o644)
        yield target
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


# ---------------------------------------------------------------------------
# Test ids, shared with the Rust harness


def _pid_alive(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists()


def _holder(claim: Path) -> int | None:
    try:
        return int(claim.read_text().strip())
    except (OSError, ValueError):
        return None


def _leftovers(seq: int) -> bool:
    """Things a killed test left under this number (skipped, as the Rust side does)."""
    name = f"w4n{seq}"
    return any(
        Path(f"/run/netns/{name}n{slot}").exists()
        or Path(f"/sys/class/net/{name}o{slot}").exists()
        or (WG_RUN_DIR / f"{name}w{slot}.sock").exists()
        for slot in (0, 1)
    ) or os.path.lexists(WG_RUN_DIR / f"{name}u.sock")


@dataclass
class TestId:
    """Names, subnets and ports derived from a claimed ``seq``, as TestId in tests/common."""

    seq: int

    def name(self, suffix: str) -> str:
        name = f"w4n{self.seq}{suffix}"
        assert len(name) <= 15, name
        return name

    def veth_addrs(self, slot: int) -> tuple[str, str]:
        s = self.seq
        a, b, c = 128 + (s >> 13), (s >> 5) & 0xFF, (s & 31) * 8 + slot * 4
        return f"10.{a}.{b}.{c + 1}", f"10.{a}.{b}.{c + 2}"

    def tunnel_v4(self, host: int) -> str:
        return f"10.{(self.seq >> 8) & 0x7F}.{self.seq & 0xFF}.{host}"

    def port(self, slot: int) -> int:
        return 20000 + (self.seq * 2 + slot) % 40000


_next_n = 0


def _claim() -> TestId:
    global _next_n
    ID_DIR.mkdir(parents=True, exist_ok=True)
    pid = os.getpid()
    with open(ID_DIR / "lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        for _ in range(0x10000):
            seq = ((pid % 2048) * 32 + _next_n) & 0xFFFF
            _next_n += 1
            claim = ID_DIR / str(seq)
            holder = _holder(claim)
            if holder is not None and (holder == pid or _pid_alive(holder)):
                continue
            if _leftovers(seq):
                continue
            claim.write_text(str(pid))
            return TestId(seq)
    raise RuntimeError(f"all test ids in {ID_DIR} are held by live processes")


@pytest.fixture
def test_id(root_env: None) -> Iterator[TestId]:
    tid = _claim()
    try:
        yield tid
    finally:
        claim = ID_DIR / str(tid.seq)
        if _holder(claim) == os.getpid():
            claim.unlink(missing_ok=True)


# ---------------------------------------------------------------------------
# Commands, bounded


def run(
    args: list[str], *, check: bool = True, timeout: float = CMD_TIMEOUT, **kw: Any
) -> subprocess.CompletedProcess:
    out = subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=False, **kw)
    if check and out.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({out.returncode}): {out.stderr.strip()}")
    return out


def wg_genkey() -> tuple[str, str]:
    private = run(["wg", "genkey"]).stdout.strip()
    public = run(["wg", "pubkey"], input=private + "\n").stdout.strip()
    return private, public


def stop(proc: subprocess.Popen, grace: float = 2.0) -> None:
    """SIGTERM our child by its PID, SIGKILL after ``grace``; reaped either way."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def run_client(
    helpers: Path, spec: dict, timeout: float = CLIENT_TIMEOUT, hosts: str | None = None
) -> dict:
    """helpers/sinfonia_client.py as uid 65534, spec on stdin; its JSON result.

    With ``hosts``, it runs in a mount namespace of its own where that text
    is /etc/hosts (the host's file untouched), so endpoint names resolve
    without a DNS server. It runs in a session of its own, so when it
    overruns the whole group it started (unshare, the application) is killed
    with it, by process group id; the engine then ends with its target."""
    env = {
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": "/nonexistent",
        "LANG": "C.UTF-8",
    }
    command = [*AS_NOBODY, sys.executable, str(helpers / "sinfonia_client.py")]
    if hosts is not None:
        hosts_file = helpers / f"hosts-{os.getpid()}-{secrets.token_hex(4)}"
        hosts_file.write_text(hosts)
        hosts_file.chmod(0o644)
        bind = 'mount --bind "$0" /etc/hosts && exec "$@"'
        command = [
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            bind,
            str(hosts_file),
            *command,
        ]
    proc = subprocess.Popen(
        command,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        cwd="/",
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(json.dumps(spec).encode(), timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        raise AssertionError(f"the client ran over {timeout:g} s\n--- stderr ---\n{err.decode()}")
    assert proc.returncode == 0, (
        f"client failed ({proc.returncode})\n--- stderr ---\n{err.decode()}"
    )
    result = json.loads(out)
    result["_stderr"] = err.decode()
    return result


# ---------------------------------------------------------------------------
# The peer


@dataclass
class Peer:
    """wireguard-go as root in a namespace of its own, with HTTP and DNS on its tunnel address."""

    tid: TestId
    netns: str
    ifname: str
    private_key: str
    public_key: str
    endpoint: str
    tunnel_v4: str
    http_port: int
    dns_name: str
    token: str
    procs: list[subprocess.Popen]
    log: Path

    def client_config(self, client_private: str, **extra: Any) -> dict:
        """A ``WireguardConfig.from_dict`` dict for the client (host 2 of the /24)."""
        peer = {
            "public_key": self.public_key,
            "endpoint": self.endpoint,
            "allowed_ips": ["0.0.0.0/0"],
            "persistent_keepalive": 25,
        }
        peer.update(extra.pop("peer", {}))
        config = {
            "private_key": client_private,
            "addresses": [f"{self.tid.tunnel_v4(2)}/24"],
            "dns": [self.tunnel_v4],
            "peers": [peer],
        }
        config.update(extra)
        return config

    def diagnostics(self) -> str:
        shown = run(["wg", "show", self.ifname], check=False).stdout
        log = self.log.read_text(errors="replace")[-4000:] if self.log.exists() else ""
        return f"--- wg show {self.ifname} ---\n{shown}\n--- peer log ---\n{log}"


@pytest.fixture
def make_peer(test_id: TestId, helpers_dir: Path) -> Iterator[Any]:
    """Build the peer for a client public key (and optional preshared key)."""
    made: list[Peer] = []
    netns = test_id.name("n0")
    outer, inner = test_id.name("o0"), test_id.name("i0")
    ifname = test_id.name("w0")
    files = Path(tempfile.mkdtemp(prefix=f"{test_id.name('')}-pypeer-"))

    def build(client_public: str, preshared_key: str | None = None) -> Peer:
        outer_addr, inner_addr = test_id.veth_addrs(0)
        run(["ip", "netns", "add", netns])
        run(["ip", "link", "add", outer, "type", "veth", "peer", "name", inner, "netns", netns])
        run(["ip", "-n", netns, "link", "set", "lo", "up"])
        run(["ip", "addr", "add", f"{outer_addr}/30", "dev", outer])
        run(["ip", "link", "set", outer, "up"])
        run(["ip", "-n", netns, "addr", "add", f"{inner_addr}/30", "dev", inner])
        run(["ip", "-n", netns, "link", "set", inner, "up"])

        log = files / "peer.log"
        procs: list[subprocess.Popen] = []
        env = dict(
            os.environ, WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD="1", LOG_LEVEL="verbose"
        )
        with open(log, "ab") as log_file:
            procs.append(
                subprocess.Popen(
                    ["ip", "netns", "exec", netns, "wireguard-go", "-f", ifname],
                    stdin=subprocess.DEVNULL,
                    stdout=log_file,
                    stderr=log_file,
                    env=env,
                )
            )
        private, public = wg_genkey()
        tunnel = test_id.tunnel_v4(1)
        peer = Peer(
            test_id,
            netns,
            ifname,
            private,
            public,
            f"{inner_addr}:{test_id.port(0)}",
            tunnel,
            8080,
            "web.sinfonia.test",
            secrets.token_hex(16),
            procs,
            log,
        )
        made.append(peer)
        socket = WG_RUN_DIR / f"{ifname}.sock"
        deadline = time.monotonic() + 10
        while not socket.exists():
            assert procs[0].poll() is None and time.monotonic() < deadline, peer.diagnostics()
            time.sleep(0.01)
        key_file = files / "private.key"
        key_file.write_text(private + "\n")
        key_file.chmod(0o600)
        args = [
            "wg",
            "set",
            ifname,
            "private-key",
            str(key_file),
            "listen-port",
            str(test_id.port(0)),
            "peer",
            client_public,
            "allowed-ips",
            f"{test_id.tunnel_v4(2)}/32",
        ]
        if preshared_key is not None:
            psk_file = files / "psk"
            psk_file.write_text(preshared_key + "\n")
            psk_file.chmod(0o600)
            args += ["preshared-key", str(psk_file)]
        run(args)
        run(["ip", "-n", netns, "addr", "add", f"{tunnel}/24", "dev", ifname])
        run(["ip", "-n", netns, "link", "set", ifname, "up"])

        command = ["ip", "netns", "exec", netns, "/usr/bin/python3"]
        command += [str(helpers_dir / "peer_services.py"), "--listen", tunnel, "--http-port"]
        command += ["8080", "--name", peer.dns_name, "--answer", tunnel, "--token", peer.token]
        with open(files / "services.log", "ab") as services_log:
            services = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=services_log
            )
        procs.append(services)
        assert services.stdout is not None
        ready = services.stdout.readline().decode().strip()
        assert ready == "ready", (
            f"peer services did not start: {(files / 'services.log').read_text()}"
        )
        return peer

    try:
        yield build
    finally:
        for peer in made:
            for proc in reversed(peer.procs):
                stop(proc)
        run(["ip", "link", "del", outer], check=False)
        run(["ip", "netns", "del", netns], check=False)
        (WG_RUN_DIR / f"{ifname}.sock").unlink(missing_ok=True)
        shutil.rmtree(files, ignore_errors=True)


def ip_in(network: str, address: str) -> bool:
    return ipaddress.ip_address(address) in ipaddress.ip_network(network, strict=False)
