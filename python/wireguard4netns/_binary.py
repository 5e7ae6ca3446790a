"""Finding the ``wireguard4netns`` program this package was installed with.

The wheel carries the binary as a script (maturin's ``bindings = "bin"``), so
the installer puts it in the *scripts* directory of the install scheme it
used: ``<venv>/bin`` for a virtual environment, ``~/.local/bin`` for
``pip install --user``, ``<prefix>/bin`` for ``--prefix``, ``/usr/local/bin``
for Debian's ``posix_local`` scheme, ``<target>/bin`` for ``--target``. We
look for it there, by finding the scheme whose library directory holds this
package, rather than on ``$PATH``: ``$PATH`` may name another version (or
nothing at all, for a program started without a shell), and the binary must
match this module. ruff's ``find_ruff_bin`` does the same for the same reason.
"""

from __future__ import annotations

import os
import sys
import sysconfig
from pathlib import Path
from typing import Iterator

BINARY_NAME = "wireguard4netns"

# How many directories above site-packages a scheme's base can lie:
# <base>/lib/python3.X/site-packages is three.
_MAX_BASE_DEPTH = 3


def find_wireguard4netns_bin() -> Path:
    """Return the path of the ``wireguard4netns`` binary installed with this package.

    Raises:
        FileNotFoundError: the package was installed without its binary (or it
            was removed); the message names the places searched. Sinfonia and
            other 0.1.x users catch this to fall back to another method.
    """
    package_dir = Path(__file__).resolve().parent
    searched = []
    for scripts in _scripts_dirs(package_dir.parent):
        candidate = scripts / (BINARY_NAME + (sysconfig.get_config_var("EXE") or ""))
        if candidate in searched:
            continue
        searched.append(candidate)
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    places = ", ".join(str(path) for path in searched) or "(no install scheme matched)"
    raise FileNotFoundError(
        f"cannot find the {BINARY_NAME} binary installed with the Python package in "
        f"{package_dir}: looked for {places} (hint: reinstall the package from its "
        f"wheel or with `pip install .`, which builds it)"
    )


def _scripts_dirs(site_dir: Path) -> Iterator[Path]:
    """Scripts directories of the install schemes whose library is ``site_dir``.

    Each scheme is tried with its usual variables (the running interpreter's
    prefix, the user base) and with every directory a few levels above
    ``site_dir`` as its base, which covers ``pip install --prefix`` and
    ``--root`` installs into another tree. Last, ``site_dir/bin``, where
    ``pip install --target`` puts scripts.
    """
    bases = [None] + [str(parent) for parent in list(site_dir.parents)[:_MAX_BASE_DEPTH]]
    for scheme in _scheme_names():
        for base in bases:
            paths = _scheme_paths(scheme, base)
            if paths is None or "scripts" not in paths:
                continue
            libraries = {paths.get("purelib"), paths.get("platlib")}
            if any(_same_dir(library, site_dir) for library in libraries if library):
                yield Path(paths["scripts"])
    yield site_dir / "bin"


def _scheme_names() -> list[str]:
    """The interpreter's preferred schemes first (distributions add their own)."""
    preferred: list[str] = []
    if sys.version_info >= (3, 10):
        for key in ("prefix", "user", "home"):
            try:
                preferred.append(sysconfig.get_preferred_scheme(key))
            except (KeyError, ValueError):
                pass
    rest = [name for name in sysconfig.get_scheme_names() if name not in preferred]
    return preferred + rest


def _scheme_paths(scheme: str, base: str | None) -> dict[str, str] | None:
    variables = None
    if base is not None:
        variables = {
            "base": base,
            "platbase": base,
            "installed_base": base,
            "installed_platbase": base,
            "userbase": base,
        }
    try:
        return sysconfig.get_paths(scheme, vars=variables)
    except (KeyError, ValueError):
        return None


def _same_dir(path: str, directory: Path) -> bool:
    try:
        return Path(path).resolve() == directory
    except OSError:
        return False
