#!/usr/bin/env python3
"""Opens N SOCKS5 tunnels (RFC 1929) to an echo server, keeps them all
transferring, probes an HTTP URL meanwhile, then verifies every byte.

  tunnels.py --proxy H:P --user U --password P --target H:P -n 50 --probe URL

Prints "tunnels=N ok=K" and "probe=<status> <body>"; exit 0 iff all ok and probe 200.
"""
import argparse
import hashlib
import os
import socket
import struct
import threading
import urllib.request


def open_tunnel(proxy, user, pw, target):
    s = socket.create_connection(proxy, timeout=20)
    s.sendall(b"\x05\x01\x02")
    assert s.recv(2) == b"\x05\x02"
    u, p = user.encode(), pw.encode()
    s.sendall(b"\x01" + bytes([len(u)]) + u + bytes([len(p)]) + p)
    assert s.recv(2) == b"\x01\x00", "auth failed"
    s.sendall(b"\x05\x01\x00\x01" + socket.inet_aton(target[0]) + struct.pack(">H", target[1]))
    rep = b""
    while len(rep) < 10:
        rep += s.recv(10 - len(rep))
    assert rep[1] == 0, "connect reply %d" % rep[1]
    return s


def pump(s, rounds, results, i, started):
    try:
        h_out, h_in, got = hashlib.sha256(), hashlib.sha256(), 0
        started.wait()
        for _ in range(rounds):
            chunk = os.urandom(32768)
            h_out.update(chunk)
            s.sendall(chunk)
            need = len(chunk)
            while need:
                d = s.recv(need)
                if not d:
                    raise EOFError
                h_in.update(d)
                need -= len(d)
        results[i] = h_out.digest() == h_in.digest()
    except Exception as e:  # noqa: BLE001 - report, don't crash the run
        results[i] = False
        print("tunnel %d: %r" % (i, e))
    finally:
        s.close()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--proxy", required=True)
    ap.add_argument("--target", required=True)
    ap.add_argument("--user", required=True)
    ap.add_argument("--password", required=True)
    ap.add_argument("-n", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=64)
    ap.add_argument("--probe")
    a = ap.parse_args()
    hp = lambda s: (s.rpartition(":")[0], int(s.rpartition(":")[2]))
    socks = [open_tunnel(hp(a.proxy), a.user, a.password, hp(a.target)) for _ in range(a.n)]
    results = [None] * a.n
    started = threading.Event()
    threads = [threading.Thread(target=pump, args=(s, a.rounds, results, i, started))
               for i, s in enumerate(socks)]
    for t in threads:
        t.start()
    started.set()
    status, body = 0, ""
    if a.probe:
        with urllib.request.urlopen(a.probe, timeout=10) as r:
            status, body = r.status, r.read().decode().strip()
    for t in threads:
        t.join()
    ok = sum(1 for r in results if r)
    print("tunnels=%d ok=%d" % (a.n, ok))
    print("probe=%d %s" % (status, body))
    return 0 if ok == a.n and (not a.probe or status == 200) else 1


if __name__ == "__main__":
    raise SystemExit(main())
