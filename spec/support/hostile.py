#!/usr/bin/env python3
"""A hostile client for spec/security_spec.lua (stdlib only): sends bytes a
well-behaved client library would refuse to (NUL and newlines in usernames,
Basic credentials without a colon, port 0), from a chosen source address.

  hostile.py socks --proxy H:P [--user-hex HEX --pass-hex HEX]
                   --host HOST|--host-hex HEX --port N [--domain] [--source IP]
      one SOCKS5 session: prints "auth=ok|fail" (with credentials), then
      "reply=0xNN"; on success sends "ping\\n" and prints "data=<what came back>".
  hostile.py http --proxy H:P --target HOST:PORT [--basic-hex HEX] [--source IP]
      one HTTP CONNECT: HEX is the decoded Basic token (e.g. "alice" without a
      colon); prints "status=NNN"; on 200 sends "ping\\n", prints "data=...".
  hostile.py flood --proxy H:P -n N
      opens N connections at once, waits until each is closed by the proxy (or
      5 s pass); prints "closed=<n>".
"""
import argparse
import base64
import ipaddress
import socket
import struct
import sys


def hostport(s):
    h, _, p = s.rpartition(":")
    return h.strip("[]"), int(p)


def recv_exact(s, n):
    buf = b""
    while len(buf) < n:
        c = s.recv(n - len(buf))
        if not c:
            raise EOFError("EOF after %d of %d bytes" % (len(buf), n))
        buf += c
    return buf


def connect(proxy, source, timeout=10):
    h, p = hostport(proxy)
    return socket.create_connection((h, p), timeout=timeout,
                                    source_address=(source, 0) if source else None)


def ping(s):
    s.sendall(b"ping\n")
    s.settimeout(3)
    data = b""
    try:
        while not data.endswith(b"\n"):
            c = s.recv(100)
            if not c:
                break
            data += c
    except socket.timeout:
        pass
    print("data=" + data.decode(errors="replace").rstrip("\n"), flush=True)


def cmd_socks(a):
    s = connect(a.proxy, a.source)
    creds = a.user_hex is not None
    s.sendall(b"\x05\x01" + (b"\x02" if creds else b"\x00"))
    ver, method = recv_exact(s, 2)
    if method == 0xFF:
        print("method=0xff")
        return 1
    if creds:
        u, p = bytes.fromhex(a.user_hex), bytes.fromhex(a.pass_hex or "")
        s.sendall(b"\x01" + bytes([len(u)]) + u + bytes([len(p)]) + p)
        try:
            _, status = recv_exact(s, 2)
        except (EOFError, OSError):
            status = 255
        print("auth=%s" % ("ok" if status == 0 else "fail"), flush=True)
        if status != 0:
            return 1
    host = bytes.fromhex(a.host_hex) if a.host_hex else a.host.encode()
    if a.domain or a.host_hex:
        addr = b"\x03" + bytes([len(host)]) + host
    else:
        ip = ipaddress.ip_address(host.decode())
        addr = (b"\x01" if ip.version == 4 else b"\x04") + ip.packed
    s.sendall(b"\x05\x01\x00" + addr + struct.pack("!H", a.port))
    try:
        head = recv_exact(s, 4)
        recv_exact(s, {1: 6, 4: 18}.get(head[3], 6))
    except (EOFError, OSError) as e:
        print("reply=none (%s)" % e, flush=True)
        return 1
    print("reply=0x%02x" % head[1], flush=True)
    if head[1] != 0:
        return 1
    ping(s)
    return 0


def cmd_http(a):
    s = connect(a.proxy, a.source)
    head = "CONNECT %s HTTP/1.1\r\nHost: %s\r\n" % (a.target, a.target)
    if a.basic_hex is not None:
        tok = base64.b64encode(bytes.fromhex(a.basic_hex)).decode()
        head += "Proxy-Authorization: Basic %s\r\n" % tok
    s.sendall((head + "\r\n").encode())
    resp = b""
    while b"\r\n\r\n" not in resp:
        c = s.recv(4096)
        if not c:
            break
        resp += c
    line = resp.split(b"\r\n", 1)[0].decode(errors="replace")
    parts = line.split(" ")
    print("status=%s" % (parts[1] if len(parts) > 1 else "none"), flush=True)
    if len(parts) > 1 and parts[1] == "200":
        ping(s)
        return 0
    return 1


def cmd_flood(a):
    h, p = hostport(a.proxy)
    socks = []
    for _ in range(a.n):
        s = socket.create_connection((h, p), timeout=5)
        socks.append(s)
    closed = 0
    for s in socks:
        try:
            if s.recv(1) == b"":
                closed += 1
        except OSError:
            closed += 1
        s.close()
    print("closed=%d" % closed, flush=True)
    return 0


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("socks")
    p.add_argument("--proxy", required=True)
    p.add_argument("--user-hex")
    p.add_argument("--pass-hex")
    p.add_argument("--host")
    p.add_argument("--host-hex")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--domain", action="store_true")
    p.add_argument("--source")
    p = sub.add_parser("http")
    p.add_argument("--proxy", required=True)
    p.add_argument("--target", required=True)
    p.add_argument("--basic-hex")
    p.add_argument("--source")
    p = sub.add_parser("flood")
    p.add_argument("--proxy", required=True)
    p.add_argument("-n", type=int, default=20)
    a = ap.parse_args()
    try:
        return {"socks": cmd_socks, "http": cmd_http, "flood": cmd_flood}[a.cmd](a)
    except (OSError, EOFError) as e:
        print("error=%s" % e, flush=True)
        return 1


if __name__ == "__main__":
    sys.exit(main())
