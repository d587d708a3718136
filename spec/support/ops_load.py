#!/usr/bin/env python3
"""Concurrent SOCKS5 sessions with one distinct user name each (ops_spec).

  ops_load.py --proxy H:P --target H:P -n N [-c CONCURRENCY] --password PW
      sessions user u1..uN (RFC 1929), each CONNECTs to the echo target, sends
      16 bytes and reads them back; prints "ok=<n> fail=<n>" (+ first error).
"""
import argparse
import os
import sys
import threading

sys.path.insert(0, os.path.dirname(__file__))
import socks  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--proxy", required=True)
    ap.add_argument("--target", required=True)
    ap.add_argument("-n", type=int, default=100)
    ap.add_argument("-c", type=int, default=4)
    ap.add_argument("--password", required=True)
    a = ap.parse_args()
    th, tp = socks.split_hostport(a.target)
    lock = threading.Lock()
    state = {"next": 1, "ok": 0, "fail": 0, "err": None}

    def worker():
        while True:
            with lock:
                i = state["next"]
                if i > a.n:
                    return
                state["next"] += 1
            try:
                s = socks.open_proxy(a.proxy, timeout=10)
                try:
                    socks.greet(s, "u%d" % i, a.password)
                    rep, _ = socks.request(s, socks.CMD_CONNECT, th, tp)
                    if rep != 0:
                        raise socks.SocksError("reply 0x%02x" % rep)
                    msg = os.urandom(16)
                    s.sendall(msg)
                    if socks.recv_exact(s, 16) != msg:
                        raise socks.SocksError("echo mismatch")
                finally:
                    s.close()
                with lock:
                    state["ok"] += 1
            except Exception as e:  # noqa: BLE001 - reported, counted
                with lock:
                    state["fail"] += 1
                    state["err"] = state["err"] or "u%d: %s" % (i, e)

    ts = [threading.Thread(target=worker) for _ in range(a.c)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    print("ok=%d fail=%d%s" % (state["ok"], state["fail"],
                               " first=" + state["err"] if state["err"] else ""))
    sys.exit(0 if state["fail"] == 0 else 1)


if __name__ == "__main__":
    main()
