"""``create_wireguard_tunnel``: 0.1.x's API on top of the ``wireguard4netns`` program.

The function runs the bundled binary in its attach form without
``--configure`` (only the MTU is set inside, as 0.1.x did) and in background
mode, which exits 0 once the engine is configured and serving, leaving the
engine running detached until the target's process exits. So "returns once
the tunnel is up" is the binary's own exit status, and every failure is its
one-line error on stderr, raised here as :class:`TunnelError`.

The configuration text goes to the binary on a pipe (its stdin, named
``/dev/stdin`` as the CONFIG path): the private key is never written to a
file, and is not in the command line or the environment either, where other
processes of the same user could read it. The binary reads the whole config
before it forks its daemon, and the daemon keeps no inherited descriptor, so
the pipes close when the start is over.

Nothing here can hang: the binary is bounded by ``timeout`` and killed (by
its PID) when it runs over, which abandons the start without leaving an
engine behind.
"""

from __future__ import annotations

import logging
import operator
import os
import re
import subprocess
import time
from pathlib import Path
from typing import Protocol, Sequence, Union

from ._binary import find_wireguard4netns_bin

_log = logging.getLogger("wireguard4netns")

DEFAULT_TIMEOUT = 30.0
"""Seconds :func:`create_wireguard_tunnel` waits for the tunnel by default.

Generous: endpoint host names are resolved during the start, and a resolver
that does not answer takes several seconds per attempt."""

# How long to wait for `unshare` to have made (and mapped) the namespaces of a
# process that was started a moment ago; see _wait_for_namespaces.
_NAMESPACE_WAIT = 2.0
_NAMESPACE_POLL = 0.005
# After killing an overdue start, how long its pipes may take to close.
_KILL_GRACE = 2.0
# A log line of the binary: "2026-01-01T00:00:00.000000Z  WARN message".
_LOG_LINE = re.compile(r"^\S+\s+(TRACE|DEBUG|INFO|WARN|ERROR)\s+(.*)$")
_LEVELS = {
    "TRACE": logging.DEBUG,
    "DEBUG": logging.DEBUG,
    "INFO": logging.INFO,
    "WARN": logging.WARNING,
    "ERROR": logging.ERROR,
}


class WireguardConfigLike(Protocol):
    """What is used of a ``wireguard_tools.WireguardConfig``."""

    def to_wgconfig(self, *, wgquick_format: bool = ...) -> str:
        """The configuration in the wg-quick file format."""
        ...  # pragma: no cover


ConfigSource = Union[WireguardConfigLike, str, bytes, "os.PathLike[str]"]


class TunnelError(subprocess.CalledProcessError):
    """The tunnel could not be set up.

    A :class:`subprocess.CalledProcessError`, so code written for 0.1.x that
    catches that (as Sinfonia does, to fall back to another method) keeps
    working. ``str(error)`` is the program's one-line error, which names what
    failed and how to fix it; ``returncode``, ``cmd`` (the command line, which
    holds no key), ``stdout`` and ``stderr`` are those of the program run.
    """

    def __init__(
        self,
        returncode: int,
        cmd: Sequence[str],
        output: bytes | None = None,
        stderr: bytes | None = None,
        message: str | None = None,
    ) -> None:
        super().__init__(returncode, list(cmd), output, stderr)
        self.message = message or _last_line(stderr) or _fallback_message(returncode)

    def __str__(self) -> str:
        return self.message

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (
            type(self),
            (self.returncode, self.cmd, self.output, self.stderr, self.message),
        )


def create_wireguard_tunnel(
    ns_pid: int,
    interface: str,
    wg_config: ConfigSource,
    tmpdir: str | os.PathLike[str] | None = None,
    *,
    timeout: float = DEFAULT_TIMEOUT,
) -> None:
    """Give the network namespace of process ``ns_pid`` a WireGuard interface.

    The interface ``interface`` is created inside the user and network
    namespaces of ``ns_pid`` with the config's MTU (1420 by default) and
    nothing else: the namespace's owner adds addresses, brings the links up,
    adds routes and sets up resolv.conf, as with 0.1.x. The WireGuard engine
    runs in the caller's namespaces (its UDP socket uses the caller's
    network) and in the background; it stops when ``ns_pid`` exits, removing
    its socket. The function returns once the engine is configured.

    Args:
        ns_pid: a process in the namespaces, typically ``Popen(["unshare",
            "-U", "--map-root-user", "--net", ...]).pid``. Called right after
            that ``Popen``, it waits (up to 2 s) for ``unshare`` to have made
            and mapped the namespaces.
        interface: the interface name inside the namespace (at most 15
            bytes). The engine's UAPI socket is ``tmpdir/interface.sock``,
            which ``wg`` and ``wireguard4netns show`` read.
        wg_config: the configuration: an object with
            ``to_wgconfig(wgquick_format=True)`` such as a
            ``wireguard_tools.WireguardConfig``; config text in the wg-quick
            format (a ``str`` or ``bytes`` with a line break); or the path of
            a wg-quick file (a ``str`` without a line break, or an
            ``os.PathLike``). Text and objects are handed over on a pipe, so
            the private key never touches the disk.
        tmpdir: directory for the socket; ``None`` is the current directory,
            as with 0.1.x. It must be yours and writable by nobody else (a
            ``tempfile.TemporaryDirectory`` is).
        timeout: seconds to wait for the tunnel before giving up.

    Raises:
        TunnelError: the tunnel could not be set up (no such process, a bad
            key or config, a TUN that cannot be made, an unusable socket
            directory, no answer within ``timeout``, ...); its message is the
            program's one-line error. A subclass of
            :class:`subprocess.CalledProcessError`.
        FileNotFoundError: the ``wireguard4netns`` binary of this package is
            missing.
        TypeError: ``wg_config`` or ``ns_pid`` has a type not listed above.
    """
    pid = operator.index(ns_pid)
    config_arg, config_text = _config_source(wg_config)
    socket_dir = Path.cwd() if tmpdir is None else Path(tmpdir)
    cmd = [
        os.fspath(find_wireguard4netns_bin()),
        "--log-level",
        "warn",
        "--tmpdir",
        os.fspath(socket_dir),
        "--",
        str(pid),
        interface,
        config_arg,
    ]
    deadline = time.monotonic() + timeout
    _wait_for_namespaces(pid, min(_NAMESPACE_WAIT, timeout))
    stdout, stderr, returncode = _run_bounded(cmd, config_text, deadline, timeout)
    if returncode != 0:
        raise TunnelError(returncode, cmd, stdout, stderr)
    _forward_log(stderr)


def _config_source(wg_config: ConfigSource) -> tuple[str, bytes | None]:
    """(the CONFIG argument, the text to send on its pipe or None)."""
    to_wgconfig = getattr(wg_config, "to_wgconfig", None)
    if callable(to_wgconfig):
        text = to_wgconfig(wgquick_format=True)
        if not isinstance(text, str):
            raise TypeError(
                f"{type(wg_config).__name__}.to_wgconfig() returned "
                f"{type(text).__name__}, not the config text"
            )
        return "/dev/stdin", _bracket_ipv6_endpoints(text).encode()
    if isinstance(wg_config, bytes):
        return "/dev/stdin", wg_config
    if isinstance(wg_config, str):
        if "\n" in wg_config:
            return "/dev/stdin", wg_config.encode()
        return wg_config, None
    if isinstance(wg_config, os.PathLike):
        return os.fspath(wg_config), None
    raise TypeError(
        "wg_config must be a wireguard_tools.WireguardConfig (or any object with "
        "to_wgconfig()), wg-quick config text, or the path of a config file, "
        f"not {type(wg_config).__name__}"
    )


def _bracket_ipv6_endpoints(text: str) -> str:
    """``Endpoint = fd00::1:51820`` as ``Endpoint = [fd00::1]:51820``.

    ``wireguard_tools.WireguardConfig.to_wgconfig`` writes an IPv6 endpoint
    without the brackets that ``wg`` (and we) need to tell the port from the
    address. It always appends ``:PORT`` to the host, so the last colon is
    the port's; text a user wrote is left to the parser as it is.
    """
    lines = []
    for line in text.splitlines(keepends=True):
        key, sep, value = line.partition("=")
        endpoint = value.strip()
        if (
            sep
            and key.strip().lower() == "endpoint"
            and endpoint.count(":") > 1
            and not endpoint.startswith("[")
        ):
            host, _, port = endpoint.rpartition(":")
            line = f"{key}{sep} [{host}]:{port}\n"
        lines.append(line)
    return "".join(lines)


def _run_bounded(
    cmd: list[str], config_text: bytes | None, deadline: float, timeout: float
) -> tuple[bytes, bytes, int]:
    """Run ``cmd`` with ``config_text`` on stdin; kill it at ``deadline``."""
    proc = subprocess.Popen(
        cmd,
        stdin=subprocess.PIPE if config_text is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        close_fds=True,
    )
    try:
        remaining = max(deadline - time.monotonic(), 0.0)
        stdout, stderr = proc.communicate(config_text, timeout=remaining)
    except subprocess.TimeoutExpired:
        stdout, stderr = _kill(proc)
        message = (
            f"wireguard4netns: the tunnel was not up within {timeout:g} s, so its start "
            f"was abandoned (hint: check that the process is alive and the endpoint "
            f"name resolves; stderr: {_last_line(stderr) or 'nothing'})"
        )
        raise TunnelError(proc.returncode, cmd, stdout, stderr, message) from None
    except BaseException:
        # KeyboardInterrupt and the like: a start that nobody waits for is
        # abandoned, and the binary leaves nothing behind when killed before
        # it is ready.
        _kill(proc)
        raise
    return stdout, stderr, proc.returncode


def _kill(proc: subprocess.Popen[bytes]) -> tuple[bytes, bytes]:
    """Kill our child by its PID and collect what it wrote, bounded."""
    proc.kill()
    try:
        stdout, stderr = proc.communicate(timeout=_KILL_GRACE)
    except subprocess.TimeoutExpired:
        # A descendant still holds the pipes: stop reading them.
        for pipe in (proc.stdin, proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()
        proc.wait()
        stdout, stderr = b"", b""
    return stdout or b"", stderr or b""


def _wait_for_namespaces(pid: int, budget: float) -> None:
    """Wait until process ``pid`` is in a network namespace other than ours.

    ``create_wireguard_tunnel(Popen(["unshare", ...]).pid, ...)`` is the way
    0.1.x is called, and ``Popen`` returns once ``unshare`` is executed, not
    once it has called unshare(2) and written its uid and gid maps. Joining
    too early would find our own namespaces (an error, "in our own network
    namespace") or a user namespace without a mapping. So wait, briefly, for
    the namespaces to be there; on any error (no such process, not ours), or
    when the time is up, return and let the binary say what is wrong.
    """
    deadline = time.monotonic() + budget
    while True:
        try:
            if _namespaces_ready(pid):
                return
        except OSError:
            return
        if time.monotonic() >= deadline:
            return
        time.sleep(_NAMESPACE_POLL)


def _namespaces_ready(pid: int) -> bool:
    proc = Path("/proc", str(pid))
    if _same_file(proc / "ns" / "net", Path("/proc/self/ns/net")):
        return False
    if _same_file(proc / "ns" / "user", Path("/proc/self/ns/user")):
        return True
    return all((proc / name).read_text().strip() for name in ("uid_map", "gid_map"))


def _same_file(a: Path, b: Path) -> bool:
    sa, sb = a.stat(), b.stat()
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)


def _forward_log(stderr: bytes | None) -> None:
    """The binary's log lines of a successful start (warnings about settings
    it ignores, say) to the ``wireguard4netns`` logger, at their level."""
    for line in _lines(stderr):
        match = _LOG_LINE.match(line)
        if match:
            _log.log(_LEVELS[match.group(1)], "%s", match.group(2))
        else:
            _log.warning("%s", line)


def _lines(data: bytes | None) -> list[str]:
    text = (data or b"").decode("utf-8", errors="replace")
    return [line.strip() for line in text.splitlines() if line.strip()]


def _last_line(data: bytes | None) -> str | None:
    lines = _lines(data)
    return lines[-1] if lines else None


def _fallback_message(returncode: int) -> str:
    if returncode < 0:
        return f"wireguard4netns: killed by signal {-returncode} before the tunnel was up"
    return f"wireguard4netns: exited with status {returncode} without saying why"
