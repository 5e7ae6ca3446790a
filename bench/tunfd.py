#!/usr/bin/python3
"""Hand a TUN made inside another process's namespaces to an engine that only
takes a file descriptor (wireguard-go's WG_TUN_FD, boringtun-cli's --tun-fd).

    tunfd.py --pid PID --ifname NAME [--mtu 1420] [--addr 10.0.0.2/24]
             [--vnet-hdr] [--uapi-set FILE] -- ENGINE [ARGS...]

This is what wireguard4netns does itself, done the simplest way for the
benchmark's anchors:
1. fork a child that joins PID's user and network namespaces (`setns` with
   ctypes: os.setns exists only from Python 3.12; joining a user namespace needs
   a single-threaded process, which a fresh python3 is), opens /dev/net/tun,
   creates NAME (IFF_TUN | IFF_NO_PI, plus IFF_VNET_HDR with --vnet-hdr so
   wireguard-go turns on its TUN offloads), sets the MTU, the IPv4 address and
   the link up with ioctls (an exec'd `ip` would lose the capabilities there
   when we are root outside: root is not mapped inside), and sends the fd back
   over a socketpair (SCM_RIGHTS);
2. the parent puts the fd at 3 and execs the engine (so the engine keeps this
   process's PID). With --uapi-set, fd 4 is one end of a stream socketpair (what
   boringtun-cli's --uapi-fd wants); a forked holder writes FILE (a UAPI
   `set=1` request) into the other end, checks the `errno=0` answer, then holds
   the socket until the engine closes it (the engine exits on EOF). The holder's
   PID goes to the file named by $TUNFD_HOLDER_PIDFILE when that is set, so the
   caller can kill it by PID.
Errors go to stderr with exit status 1.
"""

import argparse
import ctypes
import fcntl
import ipaddress
import os
import socket
import struct
import sys

CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000
TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000
SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
SIOCSIFADDR = 0x8916
SIOCSIFNETMASK = 0x891C
SIOCSIFMTU = 0x8922
IFF_UP = 0x1
IFREQ_SIZE = 40

libc = ctypes.CDLL(None, use_errno=True)


def die(msg):
    print(f"tunfd.py: {msg}", file=sys.stderr, flush=True)
    sys.exit(1)


def setns(fd, nstype, what):
    if libc.setns(fd, nstype) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns({what}): {os.strerror(err)}")


def ifreq(name, payload=b""):
    raw = name.encode() + b"\0" * (16 - len(name)) + payload
    return raw + b"\0" * (IFREQ_SIZE - len(raw))


def sockaddr_in(addr):
    return struct.pack("=HH4s8x", socket.AF_INET, 0, addr.packed)


def make_tun(args):
    """In the target's namespaces: the TUN's fd, configured."""
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
    flags = IFF_TUN | IFF_NO_PI | (IFF_VNET_HDR if args.vnet_hdr else 0)
    fcntl.ioctl(fd, TUNSETIFF, ifreq(args.ifname, struct.pack("=H", flags)))
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        fcntl.ioctl(s, SIOCSIFMTU, ifreq(args.ifname, struct.pack("=i", args.mtu)))
        if args.addr:
            net = ipaddress.IPv4Interface(args.addr)
            fcntl.ioctl(s, SIOCSIFADDR, ifreq(args.ifname, sockaddr_in(net.ip)))
            fcntl.ioctl(s, SIOCSIFNETMASK, ifreq(args.ifname, sockaddr_in(net.netmask)))
        for name in ("lo", args.ifname):
            got = fcntl.ioctl(s, SIOCGIFFLAGS, ifreq(name))
            (flags,) = struct.unpack_from("=H", got, 16)
            fcntl.ioctl(s, SIOCSIFFLAGS, ifreq(name, struct.pack("=H", flags | IFF_UP)))
    finally:
        s.close()
    return fd


def tun_from_child(args):
    user = os.open(f"/proc/{args.pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
    net = os.open(f"/proc/{args.pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    same_user = os.stat(f"/proc/{args.pid}/ns/user").st_ino == os.stat("/proc/self/ns/user").st_ino
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    child = os.fork()
    if child == 0:
        ours.close()
        try:
            if not same_user:
                setns(user, CLONE_NEWUSER, "user")
            setns(net, CLONE_NEWNET, "net")
            fd = make_tun(args)
            socket.send_fds(theirs, [b"ok"], [fd])
            os._exit(0)
        except Exception as e:  # noqa: BLE001 - everything goes back as text
            theirs.send(f"error: {e}".encode())
            os._exit(1)
    theirs.close()
    os.close(user)
    os.close(net)
    msg, fds, _, _ = socket.recv_fds(ours, 4096, 1)
    os.waitpid(child, 0)
    if msg != b"ok" or not fds:
        die(f"creating {args.ifname} in the namespaces of {args.pid}: "
            f"{msg.decode(errors='replace') or 'helper died'}")
    return fds[0]


def start_holder(request):
    """fd for the engine's end; a forked holder drives the other end."""
    engine_end, ours = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    holder = os.fork()
    if holder != 0:
        ours.close()
        pidfile = os.environ.get("TUNFD_HOLDER_PIDFILE")
        if pidfile:
            with open(pidfile, "w") as f:
                f.write(f"{holder}\n")
        return engine_end
    engine_end.close()
    os.setsid()
    ours.sendall(request)
    answer = b""
    while not answer.endswith(b"\n\n"):
        chunk = ours.recv(4096)
        if not chunk:
            break
        answer += chunk
    if b"errno=0\n" not in answer:
        print(f"tunfd.py: UAPI set answered {answer!r}", file=sys.stderr, flush=True)
    # Hold the socket: the engine exits when it reads EOF here.
    while ours.recv(4096):
        pass
    os._exit(0)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pid", type=int, required=True)
    p.add_argument("--ifname", required=True)
    p.add_argument("--mtu", type=int, default=1420)
    p.add_argument("--addr")
    p.add_argument("--vnet-hdr", action="store_true")
    p.add_argument("--uapi-set", metavar="FILE")
    p.add_argument("engine", nargs=argparse.REMAINDER)
    args = p.parse_args()
    cmd = args.engine[1:] if args.engine[:1] == ["--"] else args.engine
    if not cmd:
        die("no engine command given")
    if len(args.ifname.encode()) > 15:
        die(f"interface name {args.ifname!r} is longer than 15 bytes")

    request = None
    if args.uapi_set:
        with open(args.uapi_set, "rb") as f:
            request = f.read()
    fd = tun_from_child(args)
    if fd != 3:
        os.dup2(fd, 3, inheritable=True)
        os.close(fd)
    os.set_inheritable(3, True)
    if request is not None:
        sock = start_holder(request)
        if sock.fileno() == 4:
            sock.detach()
        else:
            os.dup2(sock.fileno(), 4, inheritable=True)
            sock.close()
        os.set_inheritable(4, True)
    try:
        os.execvp(cmd[0], cmd)
    except OSError as e:
        die(f"cannot run {cmd[0]}: {e}")


if __name__ == "__main__":
    main()
