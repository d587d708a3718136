#!/usr/bin/env python3
"""SOCKS5 over TLS client for kumoproxy specs (Python's ssl: a TLS stack we did not write).

  tls_socks.py --proxy H:P --target H:P [--cafile F] [--cert F --key F]
               [--server-name N] [--user U --password P] [--plain-greeting]

Prints, one per line, as far as it gets:
  tls=ok version=<TLSv1.x> cn=<server certificate CN>
  method=0xNN
  auth=ok | auth=fail
  reply=0xNN bound=ip:port
  data=<what the target echoed back for "ping\\n">
or a line "error=<reason>" at the step that failed. Exit 0 iff data came back.
"""
import argparse
import socket
import ssl
import struct
import sys


def hostport(s):
    h, _, p = s.rpartition(":")
    return h.strip("[]"), int(p)


def recv_exact(s, n):
    b = b""
    while len(b) < n:
        c = s.recv(n - len(b))
        if not c:
            raise EOFError("connection closed by proxy")
        b += c
    return b


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--proxy", required=True)
    ap.add_argument("--target", required=True)
    ap.add_argument("--cafile")
    ap.add_argument("--cert")
    ap.add_argument("--key")
    ap.add_argument("--server-name", default=None)
    ap.add_argument("--user")
    ap.add_argument("--password", default="")
    ap.add_argument("--timeout", type=float, default=5)
    a = ap.parse_args()

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if a.cafile:
        ctx.load_verify_locations(a.cafile)
    ctx.check_hostname = a.server_name is not None
    if not a.server_name:
        ctx.check_hostname = False
    if a.cert:
        ctx.load_cert_chain(a.cert, a.key)
    host, port = hostport(a.proxy)
    step = "tls"
    try:
        raw = socket.create_connection((host, port), timeout=a.timeout)
        s = ctx.wrap_socket(raw, server_hostname=a.server_name or host)
        peer = s.getpeercert() or {}
        cn = dict(x[0] for x in peer.get("subject", ())).get("commonName", "")
        print("tls=ok version=%s cn=%s" % (s.version(), cn), flush=True)
        step = "greeting"
        methods = b"\x00\x02" if a.user else b"\x00"
        s.sendall(b"\x05" + bytes([len(methods)]) + methods)
        ver, method = recv_exact(s, 2)
        print("method=0x%02x" % method, flush=True)
        if method == 0xFF:
            print("error=no acceptable method")
            return 1
        if method == 2:
            step = "auth"
            u, p = a.user.encode(), a.password.encode()
            s.sendall(b"\x01" + bytes([len(u)]) + u + bytes([len(p)]) + p)
            _, status = recv_exact(s, 2)
            print("auth=%s" % ("ok" if status == 0 else "fail"), flush=True)
            if status != 0:
                return 1
        step = "connect"
        th, tp = hostport(a.target)
        s.sendall(b"\x05\x01\x00\x01" + socket.inet_aton(th) + struct.pack(">H", tp))
        head = recv_exact(s, 4)
        rest = recv_exact(s, 6 if head[3] == 1 else 18)
        bound = "%s:%d" % (socket.inet_ntop(socket.AF_INET if head[3] == 1 else socket.AF_INET6,
                                            rest[:-2]), struct.unpack(">H", rest[-2:])[0])
        print("reply=0x%02x bound=%s" % (head[1], bound), flush=True)
        if head[1] != 0:
            return 1
        step = "data"
        s.sendall(b"ping\n")
        data = b""
        while not data.endswith(b"\n"):
            c = s.recv(100)
            if not c:
                break
            data += c
        print("data=" + data.decode(errors="replace").rstrip("\n"), flush=True)
        return 0 if data else 1
    except (OSError, EOFError, ssl.SSLError) as e:
        print("error=%s: %s" % (step, e), flush=True)
        return 1


if __name__ == "__main__":
    sys.exit(main())
