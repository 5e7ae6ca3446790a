"""``python -m wireguard4netns ARGS``: the bundled binary, as if run directly."""

from __future__ import annotations

import os
import sys

from ._binary import find_wireguard4netns_bin


def main() -> None:
    """Replace this process with the binary, keeping the arguments."""
    binary = os.fspath(find_wireguard4netns_bin())
    os.execv(binary, [binary, *sys.argv[1:]])


if __name__ == "__main__":
    main()
