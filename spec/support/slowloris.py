#!/usr/bin/env python3
"""Slowloris and stalled peers against a proxy, while real clients use it.

  slowloris.py --proxy H:P --timeout SECONDS [--silent 250] [--one-byte 250]
               [--stalled 20] [--user U --password P]

Opens SILENT connections that send nothing and ONE_BYTE that send one byte
(0x05) and stop, then STALLED clients that complete a CONNECT to an echo server,
exchange one line and go quiet. Meanwhile real clients run full sessions
(RFC 1929 with U/P when given, CONNECT, 1 KiB echoed) until every staller has
been cut. Prints key=value lines (counts, cut delays relative to the proxy's
TIMEOUT, real sessions served while all stallers were still connected); the
spec asserts on them.
"""
import argparse
import asyncio
import os
import sys
import time

import loadlib


async def staller(proxy, first_bytes, results, t_all_open):
    # Before connecting: the proxy cannot start its clock any earlier.
    t0 = time.monotonic()
    r, w = await loadlib.open_conn(proxy)
    if first_bytes:
        w.write(first_bytes)
        await w.drain()
    await t_all_open.wait()
    closed = await loadlib.at_eof(r, 120)
    results.append(time.monotonic() - t0 if closed else None)
    w.transport.abort()


async def data_staller(args, servers, results, t_all_open, ready):
    r, w = await loadlib.socks_open(args.proxy, servers.echo, args.user, args.password)
    # Before the last bytes the relay will move: its idle clock restarts later.
    t0 = time.monotonic()
    w.write(b"ping\n")
    line = await asyncio.wait_for(r.readline(), 10)
    ready.append(line == b"ping\n")
    await t_all_open.wait()
    closed = await loadlib.at_eof(r, 120)
    results.append(time.monotonic() - t0 if closed else None)
    w.transport.abort()


async def real_clients(args, servers, stop, first_cut, out):
    async def one():
        payload = os.urandom(1024)
        r, w = await loadlib.socks_open(args.proxy, servers.echo, args.user, args.password)
        try:
            w.write(payload)
            got = await loadlib.read_exact(r, len(payload))
            if got != payload:
                raise loadlib.Fail("echo mismatch")
        finally:
            w.close()

    async def worker():
        while not stop.is_set():
            try:
                await one()
                out["ok"] += 1
                if not first_cut:
                    out["ok_while_held"] += 1
            except (loadlib.Fail, OSError, asyncio.TimeoutError) as e:
                out["fail"] += 1
                out.setdefault("first_error", "%s: %s" % (type(e).__name__, e))

    await asyncio.gather(*(worker() for _ in range(args.concurrency)))


async def main(args):
    servers = await loadlib.Servers().start()
    t_all_open = asyncio.Event()
    silent, one_byte, stalled, ready = [], [], [], []
    tasks = []
    for _ in range(args.silent):
        tasks.append(asyncio.create_task(staller(args.proxy, b"", silent, t_all_open)))
    for _ in range(args.one_byte):
        tasks.append(asyncio.create_task(staller(args.proxy, b"\x05", one_byte, t_all_open)))
    for _ in range(args.stalled):
        tasks.append(asyncio.create_task(
            data_staller(args, servers, stalled, t_all_open, ready)))
    # Wait for every staller to be connected (and the data stallers relaying).
    deadline = time.monotonic() + 30
    while len(ready) < args.stalled and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    t_all_open.set()
    print("stallers_open=%d data_stallers_relaying=%d" % (
        args.silent + args.one_byte + len(ready), sum(ready)))

    # Real traffic until every staller is cut (or the deadline passes).
    first_cut = []
    stop = asyncio.Event()
    out = {"ok": 0, "fail": 0, "ok_while_held": 0}
    real = asyncio.create_task(real_clients(args, servers, stop, first_cut, out))
    total = args.silent + args.one_byte + args.stalled
    deadline = time.monotonic() + args.timeout * 3 + 60
    while time.monotonic() < deadline:
        done = len(silent) + len(one_byte) + len(stalled)
        if done and not first_cut:
            first_cut.append(True)
        if done == total:
            break
        await asyncio.sleep(0.01)
    stop.set()
    await real
    for t in tasks:
        t.cancel()

    def report(name, xs, want):
        cut = [x for x in xs if x is not None]
        print("%s_cut=%d of %d" % (name, len(cut), want))
        if cut:
            print("%s_min=%.3f %s_max=%.3f" % (name, min(cut), name, max(cut)))

    report("silent", silent, args.silent)
    report("one_byte", one_byte, args.one_byte)
    report("stalled", stalled, args.stalled)
    print("real_ok=%d real_fail=%d real_ok_while_held=%d" % (
        out["ok"], out["fail"], out["ok_while_held"]))
    if "first_error" in out:
        print("first_error=" + out["first_error"])
    return 0


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--proxy", required=True)
    ap.add_argument("--timeout", type=float, required=True, help="the proxy's timeout")
    ap.add_argument("--silent", type=int, default=250)
    ap.add_argument("--one-byte", type=int, default=250)
    ap.add_argument("--stalled", type=int, default=20)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--user")
    ap.add_argument("--password")
    sys.exit(asyncio.run(main(ap.parse_args())))
