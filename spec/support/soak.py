#!/usr/bin/env python3
"""Soak: many mixed sessions through one proxy listener.

  soak.py --proxy H:P -n 3000 [--concurrency 8] --user U --password P

Session kinds, in turn (i % 7):
  0 ok          RFC 1929, CONNECT to echo, 4 KiB echoed and checked
  1 auth_fail   wrong password: status 0x01, then the proxy closes
  2 refused     CONNECT to a closed port: reply 0x05
  3 malformed   garbage instead of a greeting: the proxy closes
  4 abort       CONNECT to a server streaming without end; read 64 KiB, then
                reset the connection (abort) mid-transfer
  5 half_client send 16 KiB, shut down our write side, read the echo to EOF
  6 half_server the destination sends a banner and shuts down its write side
                first; we read to EOF, then still send b"bye", which it must get
Prints per-kind counts of sessions that behaved as expected and of those that
did not (with the first reason), and "sessions=N unexpected=N". Exit 0 iff
every session behaved as expected.
"""
import argparse
import asyncio
import os
import socket
import sys
import time

import loadlib

KINDS = ["ok", "auth_fail", "refused", "malformed", "abort", "half_client", "half_server"]


async def run_one(kind, args, servers, closed_port):
    p = args.proxy
    if kind == "ok":
        r, w = await loadlib.socks_open(p, servers.echo, args.user, args.password)
        payload = os.urandom(4096)
        w.write(payload)
        if await loadlib.read_exact(r, len(payload)) != payload:
            raise loadlib.Fail("echo mismatch")
        w.close()
    elif kind == "auth_fail":
        r, w = await loadlib.open_conn(p)
        why = await loadlib.greet(r, w, args.user, args.password + "-wrong")
        if why != "auth status 0x01":
            raise loadlib.Fail("wrong password: %s" % why)
        if not await loadlib.at_eof(r, 10):
            raise loadlib.Fail("not closed after auth failure")
        w.close()
    elif kind == "refused":
        r, w = await loadlib.open_conn(p)
        why = await loadlib.greet(r, w, args.user, args.password)
        if why:
            raise loadlib.Fail(why)
        rep = await loadlib.connect_req(r, w, "127.0.0.1", closed_port)
        if rep != 5:
            raise loadlib.Fail("reply 0x%02x to a closed port" % rep)
        w.close()
    elif kind == "malformed":
        r, w = await loadlib.open_conn(p)
        w.write(b"GET / HTTP/1.1\r\n\r\n")
        if not await loadlib.at_eof(r, 10):
            raise loadlib.Fail("not closed after garbage")
        w.close()
    elif kind == "abort":
        r, w = await loadlib.socks_open(p, servers.source, args.user, args.password)
        await loadlib.read_exact(r, 65536)
        w.transport.abort()  # RST with data in flight both ways
    elif kind == "half_client":
        r, w = await loadlib.socks_open(p, servers.echo, args.user, args.password)
        payload = os.urandom(16384)
        w.write(payload)
        w.write_eof()
        got = await asyncio.wait_for(r.read(), 10)
        if got != payload:
            raise loadlib.Fail("half-close echo: %d of %d bytes" % (len(got), len(payload)))
        w.close()
    elif kind == "half_server":
        r, w = await loadlib.socks_open(p, servers.halfclose, args.user, args.password)
        got = await asyncio.wait_for(r.read(), 10)
        if got != b"banner\n":
            raise loadlib.Fail("banner %r" % got)
        w.write(b"bye")
        w.write_eof()
        await w.drain()
        if not await loadlib.at_eof(r, 10):
            raise loadlib.Fail("no close after our EOF")
        w.close()


async def main(args):
    servers = await loadlib.Servers().start()
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    closed_port = s.getsockname()[1]
    s.close()

    ok = {k: 0 for k in KINDS}
    bad = {k: 0 for k in KINDS}
    first = {}
    counter = iter(range(args.n))

    async def worker():
        for i in counter:
            kind = KINDS[i % len(KINDS)]
            try:
                await run_one(kind, args, servers, closed_port)
                ok[kind] += 1
            except (loadlib.Fail, OSError, asyncio.TimeoutError) as e:
                bad[kind] += 1
                first.setdefault(kind, "session %d: %s: %s" % (i, type(e).__name__, e))
            if args.progress and (i + 1) % args.progress == 0:
                print("progress %d" % (i + 1), file=sys.stderr, flush=True)

    t = time.monotonic()
    await asyncio.gather(*(worker() for _ in range(args.concurrency)))
    elapsed = time.monotonic() - t
    # The half_server destination counts the b"bye" it got after its own EOF;
    # its handler may still be finishing for the last sessions.
    deadline = time.monotonic() + 10
    while servers.late_ok < ok["half_server"] and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    for k in KINDS:
        print("%s=%d bad_%s=%d" % (k, ok[k], k, bad[k]))
        if k in first:
            print("first_%s=%s" % (k, first[k]))
    print("late_bye_received=%d" % servers.late_ok)
    unexpected = sum(bad.values())
    print("sessions=%d unexpected=%d seconds=%.1f" % (args.n, unexpected, elapsed))
    return 0 if unexpected == 0 else 1


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--proxy", required=True)
    ap.add_argument("-n", type=int, default=3000)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--user", required=True)
    ap.add_argument("--password", required=True)
    ap.add_argument("--progress", type=int, default=0)
    sys.exit(asyncio.run(main(ap.parse_args())))
