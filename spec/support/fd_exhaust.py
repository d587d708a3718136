#!/usr/bin/env python3
"""fd exhaustion: a proxy under `ulimit -n LIMIT` runs out of descriptors, idles
cheaply while exhausted, and its same listener serves again once they are freed.

  fd_exhaust.py --lua lua5.4 [--limit 64] [--window 3]

Starts spec/support/fd_proxy.lua with `ulimit -n LIMIT`, opens idle client
connections until the listener reports accept errors (EMFILE), measures the
proxy's CPU time (utime+stime from /proc/PID/stat) over WINDOW seconds of
exhaustion, closes the clients, then runs one normal SOCKS5 session through the
same listener. Prints key=value lines; the spec asserts on them.
"""
import argparse
import asyncio
import subprocess
import sys
import time

import loadlib


def stats(proc):
    proc.stdin.write(b"stats\n")
    proc.stdin.flush()
    line = proc.stdout.readline().decode()
    if not line.startswith("STATS "):
        raise loadlib.Fail("proxy said %r" % line)
    out = {}
    for kv in line.split()[1:]:
        k, v = kv.split("=")
        out[k] = v if v in ("true", "false") else int(v)
    return out


async def main(args):
    servers = await loadlib.Servers().start()
    proc = subprocess.Popen(
        ["bash", "-c", 'ulimit -n %d && exec "$0" spec/support/fd_proxy.lua' % args.limit, args.lua],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        ready = proc.stdout.readline().decode().split()
        if not ready or ready[0] != "READY":
            print("error=proxy did not start: %r" % ready)
            return 1
        proxy = ready[1]
        host, port = loadlib.split_hostport(proxy)
        print("limit=%d" % args.limit)

        # Idle clients until the listener reports EMFILE.
        held = []
        s = stats(proc)
        while s["accept_errors"] == 0 and len(held) < 4 * args.limit:
            r, w = await asyncio.open_connection(host, port)
            held.append(w)
            # Each connection is accepted (or refused by EMFILE) asynchronously;
            # wait until the listener has dealt with it.
            deadline = time.monotonic() + 10
            while True:
                s = stats(proc)
                if s["accepted"] >= len(held) or s["accept_errors"] > 0:
                    break
                if time.monotonic() > deadline:
                    print("error=listener neither accepted nor failed a connection")
                    return 1
                await asyncio.sleep(0.01)
        print("held_at_exhaustion=%d" % len(held))
        print("accepted_at_exhaustion=%d" % s["accepted"])
        # A few more in the kernel's queue while exhausted.
        for _ in range(10):
            r, w = await asyncio.open_connection(host, port)
            held.append(w)

        before = stats(proc)
        cpu0, t0 = loadlib.proc_cpu_seconds(proc.pid), time.monotonic()
        await asyncio.sleep(args.window)  # the measurement window, not a sync point
        cpu1, t1 = loadlib.proc_cpu_seconds(proc.pid), time.monotonic()
        after = stats(proc)
        print("window_seconds=%.2f" % (t1 - t0))
        print("cpu_seconds=%.3f" % (cpu1 - cpu0))
        print("accept_errors_in_window=%d" % (after["accept_errors"] - before["accept_errors"]))
        print("accepted_in_window=%d" % (after["accepted"] - before["accepted"]))
        print("accepting_while_exhausted=%s" % after["accepting"])

        for w in held:
            w.transport.abort()
        # The same listener must now serve a normal client, end to end.
        t = time.monotonic()
        try:
            r, w = await loadlib.socks_open(proxy, servers.echo, timeout=20)
            w.write(b"after exhaustion\n")
            line = await asyncio.wait_for(r.readline(), 10)
            w.close()
            print("served_after=%s" % (line == b"after exhaustion\n"))
        except (loadlib.Fail, OSError, asyncio.TimeoutError) as e:
            print("served_after=False")
            print("error=%s: %s" % (type(e).__name__, e))
        print("recovery_seconds=%.2f" % (time.monotonic() - t))
        final = stats(proc)
        print("final_accepted=%d final_accept_errors=%d" % (final["accepted"], final["accept_errors"]))
    finally:
        proc.stdin.close()
        try:
            rc = proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            rc = "killed"
        print("proxy_exit=%s" % rc)
    return 0


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--lua", required=True)
    ap.add_argument("--limit", type=int, default=64)
    ap.add_argument("--window", type=float, default=3.0)
    sys.exit(asyncio.run(main(ap.parse_args())))
