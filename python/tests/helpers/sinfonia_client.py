"""Sinfonia's tier-3 client, as it uses wireguard4netns, run by the tests as uid 65534.

Reads a JSON spec on stdin (it holds the private key, so not in argv or a
file) and prints one JSON result. Two modes:

``flow``: what sinfonia_tier3's ``sinfonia_runapp`` does. A
``wireguard_tools.WireguardConfig`` (the real PyPI package) is built from
the spec, its resolv.conf written to a ``TemporaryDirectory``, the
application started under ``unshare --user --map-root-user --net --mount``
through netns_helper.py, and ``create_wireguard_tunnel(proc.pid, WG, config,
tmpdir)`` called right after ``Popen``, catching ``AssertionError``,
``FileNotFoundError`` and ``CalledProcessError`` as Sinfonia does to fall
back. The result says what the application saw, whether the key reached the
disk or the engine's command line, and how long the engine outlived the
application.

``fail``: one bad call (no such process, another user's process, a target
that is gone, a bad key), timed, with what was raised.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from shutil import which
from tempfile import TemporaryDirectory
from typing import Any

import wireguard4netns
from wireguard_tools import WireguardConfig

HELPERS = Path(__file__).resolve().parent
ENGINE_EXIT_WAIT = 5.0
APP_TIMEOUT = 60.0


class Collect(logging.Handler):
    """The records of the ``wireguard4netns`` logger, for the result."""

    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f"{record.levelname} {record.getMessage()}")


def main() -> int:
    spec = json.load(sys.stdin)
    collect = Collect()
    logging.getLogger("wireguard4netns").addHandler(collect)
    result = flow(spec) if spec["mode"] == "flow" else fail(spec)
    result["log"] = collect.lines
    print(json.dumps(result), flush=True)
    return 0


# ---------------------------------------------------------------------------
# The flow


def flow(spec: dict[str, Any]) -> dict[str, Any]:
    config = WireguardConfig.from_dict(spec["config"])
    private_key = str(config.private_key)
    result: dict[str, Any] = {}
    with TemporaryDirectory() as temporary_directory:
        tmpdir = Path(temporary_directory)
        resolv_conf = tmpdir / "resolv.conf"
        resolv_conf.write_text(config.to_resolvconf(opt_ndots=5))
        unshare = which("unshare")
        assert unshare is not None
        wg = f"wg-{spec['name']}"[:15]
        wg_config = config_argument(spec.get("form", "object"), config, tmpdir)
        addresses = [arg for address in config.addresses for arg in ("--address", str(address))]
        app = [
            sys.executable,
            str(HELPERS / "app.py"),
            "--lookup",
            spec["lookup"],
            "--url",
            spec["url"],
        ]
        with subprocess.Popen(
            [
                unshare,
                "--user",
                "--map-root-user",
                "--net",
                "--mount",
                "--",
                sys.executable,
                str(HELPERS / "netns_helper.py"),
                "--resolvconf",
                str(resolv_conf.resolve()),
                *addresses,
                wg,
                *app,
            ],
            stdout=subprocess.PIPE,
        ) as netns_proc:
            started = time.monotonic()
            try:
                wireguard4netns.create_wireguard_tunnel(netns_proc.pid, wg, wg_config, tmpdir)
                result["up_s"] = time.monotonic() - started
            except (AssertionError, FileNotFoundError, subprocess.CalledProcessError) as e:
                # Sinfonia falls back to its sudo helper here; we report.
                result["error"] = f"{type(e).__name__}: {e}"
                netns_proc.kill()
                netns_proc.communicate()
                return result
            engines = engine_pids(tmpdir)
            socket = tmpdir / f"{wg}.sock"
            result["engines"] = len(engines)
            result["socket_while_up"] = socket.exists()
            result["key_in_files"] = [
                str(path.relative_to(tmpdir))
                for path in tmpdir.rglob("*")
                if path.is_file() and private_key in path.read_text(errors="replace")
            ]
            result["key_in_engine_cmdline"] = any(private_key in cmdline(pid) for pid in engines)
            try:
                out, _ = netns_proc.communicate(timeout=APP_TIMEOUT)
            except subprocess.TimeoutExpired:
                netns_proc.kill()
                out, _ = netns_proc.communicate()
                result["app_timeout"] = True
            app_exited = time.monotonic()
            result["app_status"] = netns_proc.returncode
            result["app"] = json.loads(out) if out.strip() else None
            result["engine_exit_s"] = wait_gone(engines, socket, app_exited)
            result["socket_after"] = socket.exists()
            result["engines_after"] = len(engine_pids(tmpdir))
    return result


def config_argument(form: str, config: WireguardConfig, tmpdir: Path) -> Any:
    """The config in one of the forms create_wireguard_tunnel takes."""
    if form == "object":
        return config
    text = config.to_wgconfig(wgquick_format=True)
    if form == "text":
        return text
    if form == "bytes":
        return text.encode()
    path = tmpdir / "wg.conf"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as file:
        file.write(text)
    return str(path) if form == "path" else path


def engine_pids(tmpdir: Path) -> list[int]:
    """Our engine's processes for this tmpdir: argv[0] is the bundled binary.

    By command line, since the engine is non-dumpable and so /proc/PID/exe
    cannot be read even by its own user."""
    binary = str(wireguard4netns.find_wireguard4netns_bin())
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        argv = cmdline(int(entry.name)).split("\0")
        if argv and argv[0] == binary and str(tmpdir) in argv:
            pids.append(int(entry.name))
    return pids


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return ""


def wait_gone(pids: list[int], socket: Path, since: float) -> dict[str, float | None]:
    """Seconds from ``since`` until the socket, and every engine PID, are gone."""
    gone: dict[str, float | None] = {"socket": None, "processes": None}
    deadline = since + ENGINE_EXIT_WAIT
    while time.monotonic() < deadline and None in gone.values():
        elapsed = time.monotonic() - since
        if gone["socket"] is None and not socket.exists():
            gone["socket"] = elapsed
        if gone["processes"] is None and not any(Path(f"/proc/{pid}").exists() for pid in pids):
            gone["processes"] = elapsed
        time.sleep(0.01)
    return gone


# ---------------------------------------------------------------------------
# Bad calls


def fail(spec: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    with TemporaryDirectory() as temporary_directory:
        tmpdir = Path(temporary_directory)
        target, cleanup = make_target(spec["target"])
        try:
            if "config" in spec:
                wg_config: Any = WireguardConfig.from_dict(spec["config"])
            else:
                wg_config = spec["config_text"]
            started = time.monotonic()
            try:
                wireguard4netns.create_wireguard_tunnel(target, "wg-sinfonia", wg_config, tmpdir)
                result["raised"] = None
            except (AssertionError, FileNotFoundError, subprocess.CalledProcessError) as e:
                result["raised"] = type(e).__name__
                result["is_called_process_error"] = isinstance(e, subprocess.CalledProcessError)
                result["is_tunnel_error"] = isinstance(e, wireguard4netns.TunnelError)
                result["message"] = str(e)
                result["returncode"] = getattr(e, "returncode", None)
                result["stderr"] = (getattr(e, "stderr", None) or b"").decode(errors="replace")
            result["elapsed_s"] = time.monotonic() - started
            result["left_in_tmpdir"] = sorted(p.name for p in tmpdir.iterdir())
            result["engines_after"] = len(engine_pids(tmpdir))
        finally:
            cleanup()
    return result


def make_target(kind: str) -> tuple[int, Any]:
    """A PID to attach to, and how to clean up after it."""
    nothing = lambda: None
    if kind == "no-such-pid":
        return int(Path("/proc/sys/kernel/pid_max").read_text()) + 1, nothing
    if kind == "another-user":
        return 1, nothing
    unshare = ["unshare", "--user", "--map-root-user", "--net", "--mount", "--"]
    if kind == "live":
        proc = subprocess.Popen([*unshare, "sleep", "60"])

        def stop() -> None:
            proc.kill()
            proc.wait()

        return proc.pid, stop
    if kind in ("exited", "reaped"):
        proc = subprocess.Popen([*unshare, "true"])
        if kind == "reaped":
            proc.wait()
            return proc.pid, nothing
        # Exited but not reaped: the PID is still there, a zombie without
        # namespaces.
        deadline = time.monotonic() + 10
        while state(proc.pid) != "Z" and time.monotonic() < deadline:
            time.sleep(0.005)
        return proc.pid, proc.wait
    raise ValueError(f"unknown target kind {kind}")


def state(pid: int) -> str:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return "gone"
    return stat.rsplit(")", 1)[1].split()[0]


if __name__ == "__main__":
    sys.exit(main())
