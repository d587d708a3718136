#!/usr/bin/env python3
"""Event-queue overload: more authentications at once than max_pending_events,
while the host is not dispatching events.

  overload.py --proxy H:P --auth 20 --pending 4 --noauth 10 [--after 2]

Opens AUTH concurrent RFC 1929 logins (alice/secret). With the host stuck, only
PENDING fit in the event queue: the others must be refused at once (status
0x01). Then NOAUTH sessions (loopback, no credentials, no event needed) must be
served end to end all the same. Prints
  HELD refused=N pending=N noauth_ok=N
and waits: once the host dispatches again, the pending logins must succeed and
carry data, and AFTER fresh logins must succeed too. Then prints
  DONE pending_ok=N after_ok=N failures=N [first=...]
"""
import argparse
import asyncio
import os
import sys

import loadlib


async def login(args):
    r, w = await loadlib.open_conn(args.proxy)
    w.write(bytes([5, 1, 2]))
    if await loadlib.read_exact(r, 2, 60) != b"\x05\x02":
        raise loadlib.Fail("method")
    w.write(b"\x01\x05alice\x06secret")
    return r, w


async def tunnel_after_status(r, w, echo):
    rep = await loadlib.connect_req(r, w, "127.0.0.1", echo, 60)
    if rep != 0:
        raise loadlib.Fail("CONNECT reply 0x%02x" % rep)
    payload = os.urandom(512)
    w.write(payload)
    if await loadlib.read_exact(r, len(payload)) != payload:
        raise loadlib.Fail("echo mismatch")
    w.close()


async def main(args):
    servers = await loadlib.Servers().start()
    conns = await asyncio.gather(*(login(args) for _ in range(args.auth)))
    statuses = [asyncio.create_task(loadlib.read_exact(r, 2, 60)) for r, _ in conns]

    # Refusals arrive without any help from the (stuck) host.
    refused = 0
    while refused < args.auth - args.pending:
        done, _ = await asyncio.wait(
            [t for t in statuses if not t.done()], timeout=10,
            return_when=asyncio.FIRST_COMPLETED)
        if not done:
            break
        refused = sum(1 for t in statuses if t.done() and t.result() == b"\x01\x01")
    pending = [i for i, t in enumerate(statuses) if not t.done()]

    noauth_ok = 0
    for _ in range(args.noauth):
        try:
            r, w = await loadlib.socks_open(args.proxy, servers.echo, timeout=10)
            w.write(b"x" * 100)
            if await loadlib.read_exact(r, 100) == b"x" * 100:
                noauth_ok += 1
            w.close()
        except (loadlib.Fail, OSError, asyncio.TimeoutError):
            pass
    print("HELD refused=%d pending=%d noauth_ok=%d" % (refused, len(pending), noauth_ok),
          flush=True)

    failures = 0
    first = None
    pending_ok = 0
    for i in pending:
        r, w = conns[i]
        try:
            status = await statuses[i]
            if status != b"\x01\x00":
                raise loadlib.Fail("status %r" % status)
            await tunnel_after_status(r, w, servers.echo)
            pending_ok += 1
        except (loadlib.Fail, OSError, asyncio.TimeoutError) as e:
            failures += 1
            first = first or "%s: %s" % (type(e).__name__, e)
    after_ok = 0
    for _ in range(args.after):
        try:
            r, w = await loadlib.socks_open(args.proxy, servers.echo, "alice", "secret", timeout=60)
            w.close()
            after_ok += 1
        except (loadlib.Fail, OSError, asyncio.TimeoutError) as e:
            failures += 1
            first = first or "%s: %s" % (type(e).__name__, e)
    for _, w in conns:
        w.transport.abort()
    print("DONE pending_ok=%d after_ok=%d failures=%d%s" % (
        pending_ok, after_ok, failures, (" first=" + first) if first else ""), flush=True)
    return 0


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--proxy", required=True)
    ap.add_argument("--auth", type=int, default=20)
    ap.add_argument("--pending", type=int, default=4)
    ap.add_argument("--noauth", type=int, default=10)
    ap.add_argument("--after", type=int, default=2)
    sys.exit(asyncio.run(main(ap.parse_args())))
