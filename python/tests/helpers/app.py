"""The application inside the tunnel's namespace: what it sees, and a fetch by name.

Prints one JSON object: the interfaces it has, the address ``--lookup``
resolves to (through /etc/resolv.conf, i.e. the peer's DNS responder), and
the body of ``--url`` (whose host is that name). Errors are reported in the
object, not raised, so the test can say which step failed.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import urllib.request
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lookup", required=True)
    parser.add_argument("--url", required=True)
    args = parser.parse_args()

    result: dict[str, object] = {
        "interfaces": sorted(name for _, name in socket.if_nameindex()),
        "resolv_conf": Path("/etc/resolv.conf").read_text(),
    }
    try:
        infos = socket.getaddrinfo(args.lookup, None, socket.AF_INET, socket.SOCK_STREAM)
        result["lookup"] = sorted({info[4][0] for info in infos})
    except OSError as e:
        result["lookup_error"] = str(e)
    try:
        # No proxy: the namespace has no other way out, and none is wanted.
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(args.url, timeout=15) as response:
            result["body"] = response.read().decode()
    except OSError as e:
        result["http_error"] = str(e)
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
