# Sends forged GSO frames into a TUN from inside its network namespace, as
# root there could: an AF_PACKET socket with PACKET_VNET_HDR, so each frame
# carries our own virtio_net_hdr in front of a ~64 KiB TCP/IPv4 packet.
# usage: gso_frames.py IFNAME SRC DST GSO_SIZE COUNT
import socket
import struct
import sys

SOL_PACKET = 263
PACKET_VNET_HDR = 15
ETH_P_IP = 0x0800
VIRTIO_NET_HDR_F_NEEDS_CSUM = 1
VIRTIO_NET_HDR_GSO_TCPV4 = 1

ifname, src, dst = sys.argv[1], sys.argv[2], sys.argv[3]
gso_size, count = int(sys.argv[4]), int(sys.argv[5])

payload = bytes(65535 - 40)
tcp = struct.pack("!HHIIBBHHH", 40000, 9, 1, 0, 5 << 4, 0x18, 65535, 0, 0)
ip = struct.pack(
    "!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp) + len(payload), 1, 0x4000, 64, 6, 0,
    socket.inet_aton(src), socket.inet_aton(dst),
)
vnet = struct.pack(
    "<BBHHHH", VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_TCPV4, 40, gso_size, 20, 16
)
frame = vnet + ip + tcp + payload

s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_IP))
s.setsockopt(SOL_PACKET, PACKET_VNET_HDR, 1)
s.bind((ifname, ETH_P_IP))
sent = 0
for _ in range(count):
    try:
        s.send(frame)
        sent += 1
    except OSError as e:
        print(f"send: {e}", file=sys.stderr)
print(sent)
