"""The installed package: its binary, its module, its API's contract (no root needed)."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import pytest
import wireguard4netns
from wireguard4netns import (
    TunnelError,
    create_wireguard_tunnel,
    find_wireguard4netns_bin,
)


def test_binary_is_the_one_installed_with_the_package_not_on_path():
    binary = find_wireguard4netns_bin()
    # A venv install: the scheme's scripts directory, next to the interpreter.
    assert binary == Path(sysconfig.get_path("scripts")) / "wireguard4netns"
    out = subprocess.run(
        [str(binary), "--version"],
        capture_output=True,
        text=True,
        timeout=10,
        env={"PATH": ""},
        check=False,
    )
    assert (
        out.returncode == 0
        and out.stdout.strip() == f"wireguard4netns {wireguard4netns.__version__}"
    )


def test_python_dash_m_runs_the_binary():
    out = subprocess.run(
        [sys.executable, "-m", "wireguard4netns", "--version"],
        capture_output=True,
        text=True,
        timeout=10,
        env={"PATH": ""},
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"wireguard4netns {wireguard4netns.__version__}"


def test_man_pages_are_installed_under_the_prefix():
    man1 = Path(sysconfig.get_path("data")) / "share" / "man" / "man1"
    page = man1 / "wireguard4netns.1"
    assert page.is_file() and not page.is_symlink(), sorted(man1.glob("*"))
    assert b".SH SYNOPSIS" in page.read_bytes()
    assert (man1 / "wireguard4netns-run.1").is_file()


def test_typed_package():
    assert (Path(wireguard4netns.__file__).parent / "py.typed").is_file()


def test_tunnel_error_is_a_called_process_error_with_the_one_line_message():
    error = TunnelError(
        1,
        ["wireguard4netns", "1", "wg0", "/dev/stdin"],
        b"",
        b"2026 WARN something\nwireguard4netns: cannot do X: why (hint: fix)\n",
    )
    assert isinstance(error, subprocess.CalledProcessError)
    assert str(error) == "wireguard4netns: cannot do X: why (hint: fix)"
    assert error.returncode == 1 and error.cmd[0] == "wireguard4netns"
    assert (
        str(TunnelError(-9, ["x"]))
        == "wireguard4netns: killed by signal 9 before the tunnel was up"
    )


@pytest.mark.parametrize("bad", [42, None, ["[Interface]"], object()])
def test_wrong_config_type_is_a_type_error(bad):
    with pytest.raises(TypeError, match="wg_config must be"):
        create_wireguard_tunnel(os.getpid(), "wg0", bad)


def test_an_ipv6_endpoint_from_wireguard_tools_is_accepted(tmp_path):
    # wireguard_tools writes it without brackets (`Endpoint = fd00::1:51820`);
    # the config must get past our parser: the refusal is about the target.
    import io

    from wireguard_tools import WireguardConfig

    config = WireguardConfig.from_wgconfig(
        io.StringIO(
            "[Interface]\nPrivateKey = yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=\n"
            "[Peer]\nPublicKey = xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=\n"
            "Endpoint = [fd00::1]:51820\nAllowedIPs = 0.0.0.0/0\n"
        )
    )
    assert "Endpoint = fd00::1:51820" in config.to_wgconfig(wgquick_format=True)
    with pytest.raises(TunnelError) as raised:
        create_wireguard_tunnel(os.getpid(), "wg0", config, tmp_path)
    message = str(raised.value)
    assert "Endpoint" not in message and "own network namespace" in message, message


def test_config_text_goes_on_stdin_and_errors_name_its_line(tmp_path):
    # Our own PID is in our own namespaces: refused before anything is made,
    # but after the config has been read from the pipe and checked.
    with pytest.raises(TunnelError) as raised:
        create_wireguard_tunnel(os.getpid(), "wg0", "[Interface]\nPrivateKey = nope\n", tmp_path)
    assert raised.value.message.startswith("wireguard4netns: /dev/stdin:2:"), raised.value.message
    assert "/dev/stdin" in raised.value.cmd and "nope" not in " ".join(raised.value.cmd)


@pytest.mark.parametrize("layout", ["target", "prefix"])
def test_binary_found_in_other_install_layouts(tmp_path, layout):
    """``pip install --target DIR`` puts scripts in DIR/bin, ``--prefix P`` in
    P/bin: the module finds the binary installed with it there too, not the
    one of the environment running it."""
    wheel = os.environ.get("W4N_WHEEL")
    if not wheel:
        if os.environ.get("CI") == "true":
            pytest.fail(
                "CI=true and W4N_WHEEL (the built wheel) is not set; python/tests/run sets it"
            )
        pytest.skip("W4N_WHEEL (the built wheel) is not set; python/tests/run sets it")
    dest = tmp_path / layout
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--ignore-installed",
            f"--{layout}",
            str(dest),
            wheel,
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    if layout == "target":
        site, expected = dest, dest / "bin" / "wireguard4netns"
    else:
        (site,) = dest.glob("lib/python3*/site-packages")
        expected = dest / "bin" / "wireguard4netns"
    probe = "import wireguard4netns; print(wireguard4netns.__file__); print(wireguard4netns.find_wireguard4netns_bin())"
    out = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        timeout=30,
        env={"PYTHONPATH": str(site), "PATH": ""},
        check=True,
    )
    module, found = out.stdout.split()
    assert Path(module).parent == site / "wireguard4netns"
    assert Path(found) == expected and expected.is_file()


def test_a_start_that_hangs_is_killed_at_the_timeout(tmp_path):
    """A FIFO with no writer as the config path: the binary blocks opening it.
    The call gives up at ``timeout`` with a TunnelError, and the binary,
    killed by its PID before it was ready, leaves nothing behind."""
    fifo = tmp_path / "wg.conf"
    os.mkfifo(fifo, 0o600)
    no_such_pid = int(Path("/proc/sys/kernel/pid_max").read_text()) + 1
    started = time.monotonic()
    with pytest.raises(subprocess.CalledProcessError) as raised:
        create_wireguard_tunnel(no_such_pid, "wg0", fifo, tmp_path, timeout=1)
    elapsed = time.monotonic() - started
    assert isinstance(raised.value, TunnelError)
    assert 1 <= elapsed < 4, elapsed
    assert raised.value.returncode == -9
    assert str(raised.value).startswith("wireguard4netns: the tunnel was not up within 1 s")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["wg.conf"]
