"""Give an unprivileged network namespace its network through WireGuard.

This is the Python face of the ``wireguard4netns`` program, which this package
installs next to itself (in the scripts directory of the same install). It
keeps the API of the original Python package (0.1.x), so its users switch
without changing a line::

    proc = subprocess.Popen(["unshare", "-U", "--map-root-user", "--net",
                             "--mount", "--", *helper_and_app])
    create_wireguard_tunnel(proc.pid, "wg-app", config, tmpdir)

:func:`create_wireguard_tunnel` creates the TUN interface inside the
namespaces of ``ns_pid`` (setting only its MTU, as 0.1.x did: the caller's
helper inside adds addresses, routes and resolv.conf), starts the WireGuard
engine in the caller's own namespace and returns once the engine is
configured. The engine runs in the background until that namespace's process
exits. Failures raise :class:`TunnelError` with the program's one-line error.

Only the standard library is needed; a ``wireguard_tools.WireguardConfig``
is accepted by duck typing (anything with ``to_wgconfig(wgquick_format=True)``).
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from ._binary import find_wireguard4netns_bin
from ._tunnel import (
    DEFAULT_TIMEOUT,
    TunnelError,
    WireguardConfigLike,
    create_wireguard_tunnel,
)

try:
    __version__ = version("wireguard4netns")
except PackageNotFoundError:  # imported from a source tree, not installed
    __version__ = "0+unknown"

__all__ = [
    "DEFAULT_TIMEOUT",
    "TunnelError",
    "WireguardConfigLike",
    "__version__",
    "create_wireguard_tunnel",
    "find_wireguard4netns_bin",
]
