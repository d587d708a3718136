#!/usr/bin/env python3
"""A fixed number of SOCKS5 connection cycles through a proxy, for profiling.

    cycles.py PROXY_ADDR ECHO_ADDR N [CONCURRENCY]

Each cycle: connect, greeting (no auth), CONNECT to the IPv4 echo address,
a 1-byte echo, close (the client closes first): what bench/run.sh's `cycles`
does. Exits non-zero if any cycle fails, so a profile never counts broken ones.
"""
import socket
import struct
import sys
import threading


def addr(s):
    h, p = s.rsplit(':', 1)
    return h, int(p)


def recv_exact(s, n):
    b = b''
    while len(b) < n:
        c = s.recv(n - len(b))
        if not c:
            raise EOFError('closed after %d of %d bytes' % (len(b), n))
        b += c
    return b


def cycle(proxy, req):
    s = socket.create_connection(proxy)
    try:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.sendall(b'\x05\x01\x00')
        assert recv_exact(s, 2) == b'\x05\x00'
        s.sendall(req)
        rep = recv_exact(s, 10)
        assert rep[1] == 0, 'reply %d' % rep[1]
        s.sendall(b'x')
        assert recv_exact(s, 1) == b'x'
    finally:
        s.close()


def main():
    proxy, echo, n = addr(sys.argv[1]), addr(sys.argv[2]), int(sys.argv[3])
    conc = int(sys.argv[4]) if len(sys.argv) > 4 else 1
    req = b'\x05\x01\x00\x01' + socket.inet_aton(echo[0]) + struct.pack('>H', echo[1])
    errors = []

    def worker(k):
        try:
            for _ in range(k):
                cycle(proxy, req)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    per = [n // conc + (1 if i < n % conc else 0) for i in range(conc)]
    ts = [threading.Thread(target=worker, args=(k,)) for k in per]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    if errors:
        print('cycles.py: %d worker(s) failed: %r' % (len(errors), errors[0]), file=sys.stderr)
        sys.exit(1)


main()
