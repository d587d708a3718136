#!/usr/bin/env python3
"""A handler that never returns cannot wedge the listener.

  wedge.py --lua lua5.4 [--timeout 1] [--logins 3] [--noauth 5]

Starts spec/support/wedged_proxy.lua (listener `timeout` = TIMEOUT seconds), logs
in once so its handler starts looping forever on the host thread, then checks:
NOAUTH sessions (loopback, no event needed) are still served end to end; that
first login and LOGINS more are refused (status 0x01, connection closed) once
their decision is TIMEOUT overdue, not left hanging. Prints key=value lines.
"""
import argparse
import asyncio
import os
import subprocess
import sys
import time

import loadlib


async def login(proxy):
    """Seconds until the proxy refused the login and closed, or None."""
    t = time.monotonic()
    r, w = await loadlib.open_conn(proxy)
    try:
        w.write(bytes([5, 1, 2]))
        if await loadlib.read_exact(r, 2) != b"\x05\x02":
            return None
        w.write(b"\x01\x05alice\x06secret")
        status = await loadlib.read_exact(r, 2, 60)
        if status != b"\x01\x01" or not await loadlib.at_eof(r, 10):
            return None
        return time.monotonic() - t
    except (loadlib.Fail, OSError, asyncio.TimeoutError):
        return None
    finally:
        w.transport.abort()


async def main(args):
    servers = await loadlib.Servers().start()
    env = dict(os.environ, KUMOPROXY_TIMEOUT=str(args.timeout))
    proc = await asyncio.create_subprocess_exec(
        args.lua, "spec/support/wedged_proxy.lua", env=env, stdout=subprocess.PIPE)
    try:
        ready = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode().split()
        proxy = ready[1]
        first = asyncio.create_task(login(proxy))
        wedged = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode().strip()
        print("handler_wedged=%s" % (wedged == "WEDGED"))

        noauth_ok = 0
        for _ in range(args.noauth):
            try:
                r, w = await loadlib.socks_open(proxy, servers.echo, timeout=10)
                w.write(b"still serving\n")
                if await asyncio.wait_for(r.readline(), 10) == b"still serving\n":
                    noauth_ok += 1
                w.close()
            except (loadlib.Fail, OSError, asyncio.TimeoutError):
                pass
        print("noauth_ok_while_wedged=%d" % noauth_ok)

        times = await asyncio.gather(first, *(login(proxy) for _ in range(args.logins)))
        refused = [t for t in times if t is not None]
        print("logins_refused=%d of %d" % (len(refused), len(times)))
        if refused:
            print("refused_after_min=%.2f refused_after_max=%.2f" % (min(refused), max(refused)))
        print("proxy_alive=%s" % (proc.returncode is None))
    finally:
        proc.kill()
        await proc.wait()
    return 0


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--lua", required=True)
    ap.add_argument("--timeout", type=float, default=1)
    ap.add_argument("--logins", type=int, default=3)
    ap.add_argument("--noauth", type=int, default=5)
    sys.exit(asyncio.run(main(ap.parse_args())))
