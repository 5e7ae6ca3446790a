"""The helper Sinfonia's tier-3 client runs inside ``unshare -U --map-root-user --net --mount``.

As root of the new user namespace it waits for the WireGuard interface that
``create_wireguard_tunnel`` makes here, adds the config's addresses, brings
``lo`` and the interface up, routes everything through it, bind-mounts the
tunnel's resolv.conf over /etc/resolv.conf (in its private mount namespace,
so the host's file is untouched), and then executes the application. The
same steps, in the same order, as sinfonia_tier3.netns_helper (which uses
pyroute2; this uses iproute2 and mount(8) to need nothing but the standard
library). Every wait is bounded.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time

INTERFACE_WAIT = 20.0


def wait_for_interface(name: str) -> None:
    # if_nametoindex asks the kernel about *this* network namespace (/sys
    # would show the host's: sysfs is still the host's mount here).
    deadline = time.monotonic() + INTERFACE_WAIT
    while True:
        try:
            socket.if_nametoindex(name)
            return
        except OSError:
            if time.monotonic() > deadline:
                sys.exit(f"netns_helper: no interface {name} after {INTERFACE_WAIT:g} s")
            time.sleep(0.01)


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, timeout=10)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--resolvconf", required=True)
    parser.add_argument("--address", action="append", default=[])
    parser.add_argument("interface")
    parser.add_argument("application", nargs=argparse.REMAINDER)
    args = parser.parse_args()

    wait_for_interface(args.interface)
    ip("link", "set", "lo", "up")
    for address in args.address:
        ip("address", "add", address, "dev", args.interface)
    ip("link", "set", args.interface, "up")
    ip("route", "add", "default", "dev", args.interface)
    if any(":" in address for address in args.address):
        ip("-6", "route", "add", "default", "dev", args.interface)
    subprocess.run(["mount", "--bind", args.resolvconf, "/etc/resolv.conf"], check=True, timeout=10)
    os.execvp(args.application[0], args.application)
    return 127


if __name__ == "__main__":
    sys.exit(main())
