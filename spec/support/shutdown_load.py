#!/usr/bin/env python3
"""Graceful shutdown under load: SIGTERM while sessions transfer.

  shutdown_load.py --lua lua5.4 [--sessions 200] [--bytes 262144] [--grace 30]

Starts spec/support/graceful_proxy.lua, opens SESSIONS tunnels to an echo
server and moves the first chunk through each, sends SIGTERM, waits until the
listening port refuses new connections, then completes every transfer (the rest
of BYTES, half-close, echo read to EOF). Checksums: sha256 of what each client
sent, of what the echo server received on that session, and of what the client
got back. Prints key=value lines; the spec asserts on them.
"""
import argparse
import asyncio
import hashlib
import os
import signal
import subprocess
import sys
import time

import loadlib

CHUNK = 16384


async def main(args):
    servers = await loadlib.Servers().start()
    env = dict(os.environ, KUMOPROXY_LOG="info", KUMOPROXY_GRACE="%g seconds" % args.grace)
    proc = await asyncio.create_subprocess_exec(
        args.lua, "spec/support/graceful_proxy.lua", env=env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    ready = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode().split()
    if not ready or ready[0] != "READY":
        print("error=proxy did not start: %r" % ready)
        return 1
    proxy = ready[1]
    host, port = loadlib.split_hostport(proxy)
    log = []

    async def read_log():
        async for line in proc.stderr:
            log.append(line.decode(errors="replace").rstrip())

    log_task = asyncio.create_task(read_log())

    # 1. Every session established and mid-transfer.
    sessions = []

    async def start(i):
        r, w = await loadlib.socks_open(proxy, servers.echo, "alice", "secret", timeout=30)
        sid = b"%08d" % i
        data = b"ID" + sid + os.urandom(args.bytes - 10)
        w.write(data[:CHUNK])
        echoed = await loadlib.read_exact(r, CHUNK, 30)
        sessions.append((sid, data, r, w, echoed))

    await asyncio.gather(*(start(i) for i in range(args.sessions)))
    print("established=%d" % len(sessions))

    # 2. SIGTERM; the port must close while the transfers are still open.
    t_term = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    refused = False
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            r, w = await asyncio.wait_for(asyncio.open_connection(host, port), 5)
        except ConnectionRefusedError:
            refused = True
            break
        except (asyncio.TimeoutError, OSError):
            # A loaded machine can leave a SYN unanswered for a while (full
            # backlog while the accept loop winds down): not an answer, try again.
            continue
        w.transport.abort()
        await asyncio.sleep(0.01)
    print("port_refused_after_sigterm=%s" % refused)
    # Further attempts are refused too.
    late_served = 0
    for _ in range(5):
        try:
            r, w = await asyncio.wait_for(asyncio.open_connection(host, port), 5)
            late_served += 1
            w.transport.abort()
        except (ConnectionRefusedError, asyncio.TimeoutError):
            pass
    print("late_connections_accepted=%d" % late_served)

    # 3. Finish every transfer; compare checksums at both ends.
    async def finish(sid, data, r, w, echoed):
        rest = data[CHUNK:]
        reader = asyncio.create_task(asyncio.wait_for(r.read(), args.grace + 30))
        for off in range(0, len(rest), CHUNK):
            w.write(rest[off:off + CHUNK])
            await w.drain()
        w.write_eof()
        got = echoed + await reader
        w.close()
        return sid, hashlib.sha256(data).hexdigest(), hashlib.sha256(got).hexdigest()

    results = await asyncio.gather(
        *(finish(*s) for s in sessions), return_exceptions=True)
    t_done = time.monotonic()
    intact = errors = 0
    first = None
    for res in results:
        if isinstance(res, BaseException):
            errors += 1
            first = first or repr(res)
            continue
        sid, sent, back = res
        # Give the echo server's handler its last moment to record the session.
        deadline = time.monotonic() + 10
        while sid not in servers.received and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        if sent == back == servers.received.get(sid):
            intact += 1
        else:
            first = first or "session %s: checksums differ" % sid.decode()
    print("transfers_intact=%d transfer_errors=%d" % (intact, errors))
    if first:
        print("first_problem=" + first)
    print("bytes_each_way=%d" % (args.sessions * args.bytes))
    print("finished_after_sigterm_seconds=%.2f" % (t_done - t_term))

    # 4. The proxy exits on its own, status 0, having cut nothing.
    try:
        rc = await asyncio.wait_for(proc.wait(), args.grace + 30)
    except asyncio.TimeoutError:
        proc.kill()
        rc = "killed"
    await log_task
    out = (await proc.stdout.read()).decode()
    print("proxy_exit=%s" % rc)
    print("proxy_says=" + " ".join(l for l in out.splitlines() if l.startswith("STOPPED")))
    print("log_stopping=%s" % any("stopping (SIGTERM)" in l for l in log))
    print("log_cut=%s" % any("cutting" in l for l in log))
    return 0


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--lua", required=True)
    ap.add_argument("--sessions", type=int, default=200)
    ap.add_argument("--bytes", type=int, default=262144)
    ap.add_argument("--grace", type=float, default=30)
    sys.exit(asyncio.run(main(ap.parse_args())))
