"""What the WireGuard peer's side offers the client: an HTTP server and a DNS responder.

Runs as root inside the peer's network namespace (made by the test), bound to
the peer's tunnel address only, so it is reachable through the tunnel and
from nowhere else. Standard library only. The DNS responder knows one name
(``--name`` -> ``--answer``, type A); other names get NXDOMAIN, other types
of the known name an empty answer. Prints ``ready`` once both listen; runs
until killed (by the test, by PID).
"""

from __future__ import annotations

import argparse
import http.server
import ipaddress
import socket
import struct
import sys
import threading

QTYPE_A = 1
QCLASS_IN = 1


def parse_question(packet: bytes) -> tuple[str, int, int, int]:
    """(name, qtype, qclass, end offset) of the first question."""
    labels = []
    offset = 12
    while True:
        length = packet[offset]
        offset += 1
        if length == 0:
            break
        if length & 0xC0:
            raise ValueError("compressed name in a question")
        labels.append(packet[offset : offset + length].decode("ascii").lower())
        offset += length
    qtype, qclass = struct.unpack_from("!HH", packet, offset)
    return ".".join(labels), qtype, qclass, offset + 4


def answer(packet: bytes, name: str, address: ipaddress.IPv4Address) -> bytes:
    (ident,) = struct.unpack_from("!H", packet, 0)
    qname, qtype, qclass, end = parse_question(packet)
    question = packet[12:end]
    known = qname == name.lower().rstrip(".")
    rcode = 0 if known else 3  # NXDOMAIN
    answers = b""
    if known and qtype == QTYPE_A and qclass == QCLASS_IN:
        # A pointer to the question's name (offset 12), TTL 60.
        answers = struct.pack("!HHHIH", 0xC00C, QTYPE_A, QCLASS_IN, 60, 4) + address.packed
    flags = 0x8000 | 0x0400 | 0x0100 | 0x0080 | rcode  # QR, AA, RD, RA
    header = struct.pack("!HHHHHH", ident, flags, 1, 1 if answers else 0, 0, 0)
    return header + question + answers


def serve_dns(sock: socket.socket, name: str, address: ipaddress.IPv4Address) -> None:
    while True:
        packet, client = sock.recvfrom(512)
        try:
            sock.sendto(answer(packet, name, address), client)
        except (ValueError, IndexError, struct.error, UnicodeDecodeError):
            continue  # not a query we understand: no answer


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--listen", required=True, help="the peer's tunnel address")
    parser.add_argument("--http-port", type=int, required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--answer", type=ipaddress.IPv4Address, required=True)
    parser.add_argument("--token", required=True, help="the HTTP body")
    args = parser.parse_args()

    dns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    dns.bind((args.listen, 53))
    threading.Thread(target=serve_dns, args=(dns, args.name, args.answer), daemon=True).start()

    body = args.token.encode()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            sys.stderr.write(f"http: {self.client_address[0]} {format % args}\n")

    server = http.server.ThreadingHTTPServer((args.listen, args.http_port), Handler)
    print("ready", flush=True)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
