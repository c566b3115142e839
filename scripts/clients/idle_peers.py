#!/usr/bin/env python3
"""Hold many idle BitTorrent peer connections open against one client, for memory benchmarks.

    idle_peers.py --to IP:PORT --info-hash HEX --count N [--from-net 127.9] [--timeout S]
                  [--ignore-stdin] [--spread]

Opens N TCP connections to IP:PORT, each from its own loopback source address (127.9.x.y, so
per-IP connection limits do not apply), sends a BitTorrent handshake for the info hash and reads
the peer's, then sends nothing more (with --spread each comes from a /24 network of its own,
127.<20 + n / 250>.<1 + n % 250>.1, so per-network limits do not apply either): a peer that has nothing and wants nothing. It prints `CONNECTED n` once n connections have completed their handshake
(n <= N: the other side may refuse some), then keeps them open, answering nothing and sending a
keep-alive every 60 s, until stdin closes, SIGTERM/SIGINT, or --timeout seconds pass.
With --ignore-stdin, stdin is not watched (for a background run with stdin at /dev/null).
Exit 1 if not one connection completed its handshake.
"""

import argparse
import os
import select
import signal
import socket
import sys
import time

PSTR = b"\x13BitTorrent protocol"


def handshake(info_hash, peer_id):
    return PSTR + bytes(8) + info_hash + peer_id


def connect(to, source, info_hash, index, deadline):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
    s.bind((source, 0))
    s.settimeout(max(0.1, deadline - time.monotonic()))
    s.connect(to)
    peer_id = b"-ID0001-" + ("%012d" % index).encode()
    s.sendall(handshake(info_hash, peer_id))
    got = b""
    while len(got) < 68:
        chunk = s.recv(68 - len(got))
        if not chunk:
            raise ConnectionError("closed during the handshake")
        got += chunk
    if got[28:48] != info_hash:
        raise ConnectionError("wrong info hash in the reply")
    s.setblocking(False)
    return s


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--to", required=True, help="IP:PORT of the client to connect to")
    ap.add_argument("--info-hash", required=True, help="40 hex digits")
    ap.add_argument("--count", type=int, required=True)
    ap.add_argument("--from-net", default="127.9", help="first two octets of the source addresses")
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds to hold them at most")
    ap.add_argument("--ignore-stdin", action="store_true", help="do not stop when stdin closes")
    ap.add_argument("--spread", action="store_true", help="one /24 network per connection")
    args = ap.parse_args()
    host, port = args.to.rsplit(":", 1)
    to = (host, int(port))
    info_hash = bytes.fromhex(args.info_hash)
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    signal.signal(signal.SIGINT, lambda *_: stop.append(1))

    socks, errors = [], {}
    deadline = time.monotonic() + 60
    for i in range(args.count):
        if args.spread:
            source = "127.%d.%d.1" % (20 + i // 250, 1 + i % 250)
        else:
            source = "%s.%d.%d" % (args.from_net, 1 + i // 250, 1 + i % 250)
        try:
            socks.append(connect(to, source, info_hash, i, deadline))
        except OSError as err:  # includes ConnectionError and timeouts
            errors[str(err)] = errors.get(str(err), 0) + 1
        if stop or time.monotonic() > deadline:
            break
    for err, n in sorted(errors.items()):
        sys.stderr.write("idle_peers: %d connection(s) failed: %s\n" % (n, err))
    print("CONNECTED %d" % len(socks), flush=True)
    if not socks:
        return 1

    end = time.monotonic() + args.timeout
    next_keepalive = time.monotonic() + 60
    stdin = sys.stdin.fileno()
    while not stop and time.monotonic() < end:
        readable, _, _ = select.select([] if args.ignore_stdin else [stdin], [], [], 1.0)
        if readable and not os.read(stdin, 4096):
            break
        # Drain whatever the client sends (bitfield, keep-alives) so its writes never block.
        alive = []
        for s in socks:
            try:
                while True:
                    data = s.recv(65536)
                    if not data:
                        raise ConnectionError("closed")
            except BlockingIOError:
                alive.append(s)
            except OSError:
                s.close()
        if len(alive) < len(socks):
            sys.stderr.write("idle_peers: %d connection(s) closed by the client\n" % (len(socks) - len(alive)))
            print("CONNECTED %d" % len(alive), flush=True)
        socks = alive
        if time.monotonic() >= next_keepalive:
            next_keepalive += 60
            for s in socks:
                try:
                    s.send(bytes(4))
                except OSError:
                    pass
    for s in socks:
        s.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
