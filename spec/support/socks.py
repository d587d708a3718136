#!/usr/bin/env python3
"""Minimal SOCKS5 client library + CLI for kumoproxy specs (stdlib only).

  socks.py sessions --proxy H:P --target H:P [-n 1000] [--user U --password P]
      N sequential CONNECT sessions against an echo server, 16 random bytes
      each; prints "ok=<n> fail=<n>" (+ first failure reason); exit 0 iff all ok.
  socks.py raw --proxy H:P --hex HEX [--read-timeout S]
      sends raw bytes, prints hex of everything received, then EOF or TIMEOUT.
  socks.py connect --proxy H:P --target H:P [--user U --password P]
                   [--domain] [--bind-source IP]
      one handshake; prints "reply=0xNN bound=ip:port" per reply, then on
      success sends "ping\\n" and prints "data=<text>" (what came back in 1s).
      --bind-source first sends BIND(IP, port 0) (KumoMTA's way of choosing
      the proxy's source address), reads its reply, then CONNECTs.
"""
import argparse
import ipaddress
import os
import socket
import struct
import sys

CMD_CONNECT, CMD_BIND = 1, 2
ATYP_V4, ATYP_DOMAIN, ATYP_V6 = 1, 3, 4


class SocksError(Exception):
    pass


def split_hostport(s):
    host, _, port = s.rpartition(":")
    return host.strip("[]"), int(port)


def recv_exact(sock, n):
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise SocksError("EOF after %d of %d bytes" % (len(buf), n))
        buf += chunk
    return buf


def greet(sock, user=None, password=None):
    """Method negotiation, plus RFC 1929 username/password if credentials."""
    method = 2 if user is not None else 0
    sock.sendall(bytes([5, 1, method]))
    ver, chosen = recv_exact(sock, 2)
    if ver != 5 or chosen != method:
        raise SocksError("greeting reply ver=%d method=0x%02x" % (ver, chosen))
    if method == 2:
        u, p = user.encode(), (password or "").encode()
        sock.sendall(bytes([1, len(u)]) + u + bytes([len(p)]) + p)
        _, status = recv_exact(sock, 2)
        if status != 0:
            raise SocksError("auth failed status=0x%02x" % status)


def encode_addr(host, port, domain=False):
    if not domain:
        try:
            ip = ipaddress.ip_address(host)
            atyp = ATYP_V4 if ip.version == 4 else ATYP_V6
            return bytes([atyp]) + ip.packed + struct.pack("!H", port)
        except ValueError:
            pass
    h = host.encode()
    return bytes([ATYP_DOMAIN, len(h)]) + h + struct.pack("!H", port)


def request(sock, cmd, host, port, domain=False):
    """Send a request; return (reply_code, "ip:port" bound address)."""
    sock.sendall(bytes([5, cmd, 0]) + encode_addr(host, port, domain))
    ver, rep, _, atyp = recv_exact(sock, 4)
    if ver != 5:
        raise SocksError("reply version %d" % ver)
    if atyp == ATYP_V4:
        addr = str(ipaddress.IPv4Address(recv_exact(sock, 4)))
    elif atyp == ATYP_V6:
        addr = "[%s]" % ipaddress.IPv6Address(recv_exact(sock, 16))
    elif atyp == ATYP_DOMAIN:
        addr = recv_exact(sock, recv_exact(sock, 1)[0]).decode(errors="replace")
    else:
        raise SocksError("reply atyp %d" % atyp)
    (bport,) = struct.unpack("!H", recv_exact(sock, 2))
    return rep, "%s:%d" % (addr, bport)


def open_proxy(proxy, timeout=5.0):
    return socket.create_connection(split_hostport(proxy), timeout=timeout)


def one_session(args):
    host, port = split_hostport(args.target)
    with open_proxy(args.proxy) as s:
        greet(s, args.user, args.password)
        rep, _ = request(s, CMD_CONNECT, host, port)
        if rep != 0:
            raise SocksError("CONNECT reply=0x%02x" % rep)
        payload = os.urandom(16)
        s.sendall(payload)
        got = recv_exact(s, 16)
        if got != payload:
            raise SocksError("echo mismatch: sent %s got %s" % (payload.hex(), got.hex()))


def cmd_sessions(args):
    ok = fail = 0
    first = None
    for i in range(args.n):
        try:
            one_session(args)
            ok += 1
        except (OSError, SocksError) as e:
            fail += 1
            first = first or "session %d: %s: %s" % (i, type(e).__name__, e)
    print("ok=%d fail=%d" % (ok, fail))
    if first:
        print("first failure: " + first)
    return 0 if fail == 0 else 1


def cmd_raw(args):
    with open_proxy(args.proxy) as s:
        s.sendall(bytes.fromhex(args.hex))
        s.settimeout(args.read_timeout)
        received, end = b"", "EOF"
        try:
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                received += chunk
        except socket.timeout:
            end = "TIMEOUT"
        except ConnectionResetError:
            end = "EOF"  # RST counts as the proxy closing on us
    print(received.hex())
    print(end)
    return 0


def cmd_connect(args):
    host, port = split_hostport(args.target)
    with open_proxy(args.proxy) as s:
        greet(s, args.user, args.password)
        if args.bind_source:
            rep, bound = request(s, CMD_BIND, args.bind_source, 0)
            print("reply=0x%02x bound=%s" % (rep, bound), flush=True)
            if rep != 0:
                return 1
        rep, bound = request(s, CMD_CONNECT, host, port, args.domain)
        print("reply=0x%02x bound=%s" % (rep, bound), flush=True)
        if rep != 0:
            return 1
        s.sendall(b"ping\n")
        s.settimeout(1.0)
        data = b""
        try:
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
        except (socket.timeout, ConnectionResetError):
            pass
    print("data=" + data.decode(errors="replace").rstrip("\n"))
    return 0


def main(argv=None):
    ap = argparse.ArgumentParser(description="SOCKS5 test client")
    sub = ap.add_subparsers(dest="cmd", required=True)

    def common(p, target=True):
        p.add_argument("--proxy", required=True, help="HOST:PORT of the proxy")
        if target:
            p.add_argument("--target", required=True, help="HOST:PORT to CONNECT to")
            p.add_argument("--user")
            p.add_argument("--password")
        return p

    p = common(sub.add_parser("sessions"))
    p.add_argument("-n", type=int, default=1000)
    p.set_defaults(func=cmd_sessions)

    p = common(sub.add_parser("raw"), target=False)
    p.add_argument("--hex", required=True)
    p.add_argument("--read-timeout", type=float, default=2.0)
    p.set_defaults(func=cmd_raw)

    p = common(sub.add_parser("connect"))
    p.add_argument("--domain", action="store_true",
                   help="send the target host as a domain name (ATYP 3)")
    p.add_argument("--bind-source", metavar="IP")
    p.set_defaults(func=cmd_connect)

    args = ap.parse_args(argv)
    try:
        return args.func(args)
    except (OSError, SocksError) as e:
        print("error=%s: %s" % (type(e).__name__, e))
        return 2


if __name__ == "__main__":
    sys.exit(main())
