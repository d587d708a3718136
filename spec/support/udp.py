#!/usr/bin/env python3
"""UDP peers and SOCKS5 UDP ASSOCIATE clients for spec/udp_spec.lua (stdlib + PySocks).

  udp.py peers --parent-pid PID
      UDP echo and a tiny DNS responder (A records: every name is 127.0.0.1,
      AAAA: ::1) on 127.0.0.1 and ::1, free ports. Prints one line
      "echo4=P echo6=P dns4=P dns6=P pid=N", then serves until PID exits.

  udp.py pysocks --proxy H:P --target H:P [--user U --password P] [-n N]
      PySocks' own UDP client (socks.socksocket(AF_INET, SOCK_DGRAM)): N
      datagrams to an echo; prints "ok=N from=H:P".

  udp.py dns --proxy H:P --server H:P --name NAME [--qtype A|AAAA] [--family 4|6]
      raw client: a DNS query through the relay; prints "answer=IP from=H:P".

  udp.py raw --proxy H:P [--family 4|6] [--user U --password P] [--port N]
             [--target H:P] [-n N] [--size S] [--bad] [--intruders]
             [--associations K] [--close-control]
      raw client: UDP ASSOCIATE (DST.PORT --port, default 0) and prints
      "reply=0xNN bound=H:P"; on success sends N datagrams of S bytes to the
      echo --target and checks each comes back from it ("echoed=N").
      --bad first sends the issue's bad datagrams (truncated header, bad ATYP,
      FRAG set, control characters in a name), then one good one; prints
      "bad_answered=K" (must be 0) before "echoed".
      --intruders: after the echo, datagrams from another port and from
      127.0.0.2 / another ::1 port; prints "intruder_answered=K".
      --associations K: K associations at once (control connections held),
      prints one "reply=0xNN" line each.
      --recv-timeout S: how long a receive waits (default 5 s; all commands).
      --tls: the control connection in TLS (any certificate accepted).
      --close-control: then closes the control connection and waits (up to
      5 s) for the relay to stop answering: "after_close=0" when it did.
"""
import argparse
import ipaddress
import os
import select
import socket
import struct
import sys
import threading
import time

# spec/support/socks.py would shadow PySocks' module of the same name.
_here = os.path.dirname(os.path.abspath(__file__))
sys.path = [p for p in sys.path if os.path.abspath(p or ".") != _here]


def split_hostport(s):
    host, _, port = s.rpartition(":")
    return host.strip("[]"), int(port)


def fmt(addr):
    host, port = addr[0], addr[1]
    return ("[%s]:%d" if ":" in host else "%s:%d") % (host, port)


def recv_exact(sock, n):
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise OSError("EOF after %d of %d bytes" % (len(buf), n))
        buf += chunk
    return buf


def encode_addr(host, port):
    try:
        ip = ipaddress.ip_address(host)
        return bytes([1 if ip.version == 4 else 4]) + ip.packed + struct.pack("!H", port)
    except ValueError:
        h = host.encode()
        return bytes([3, len(h)]) + h + struct.pack("!H", port)


def parse_addr(buf):
    """(host, port, length) of the ATYP..PORT at buf[0]."""
    atyp = buf[0]
    if atyp == 1:
        return str(ipaddress.IPv4Address(buf[1:5])), struct.unpack("!H", buf[5:7])[0], 7
    if atyp == 4:
        return str(ipaddress.IPv6Address(buf[1:17])), struct.unpack("!H", buf[17:19])[0], 19
    if atyp == 3:
        n = buf[1]
        return buf[2:2 + n].decode(), struct.unpack("!H", buf[2 + n:4 + n])[0], 4 + n
    raise ValueError("atyp %d" % atyp)


def wrap(host, port, payload):
    return b"\0\0\0" + encode_addr(host, port) + payload


def unwrap(d):
    if d[2] != 0:
        raise ValueError("FRAG set in a reply")
    host, port, n = parse_addr(d[3:])
    return (host, port), d[3 + n:]


TLS = False


def associate(proxy, port=0, user=None, password=None, family=4):
    """Control connection + UDP ASSOCIATE; returns (tcp, reply code, (host, port))."""
    tcp = socket.create_connection(split_hostport(proxy), timeout=5)
    if TLS:
        # The listener's self-signed certificate: the spec is about UDP, not trust.
        import ssl
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        tcp = ctx.wrap_socket(tcp)
    method = 2 if user is not None else 0
    tcp.sendall(bytes([5, 1, method]))
    if recv_exact(tcp, 2) != bytes([5, method]):
        raise OSError("method not accepted")
    if method == 2:
        u, p = user.encode(), password.encode()
        tcp.sendall(bytes([1, len(u)]) + u + bytes([len(p)]) + p)
        if recv_exact(tcp, 2)[1] != 0:
            raise OSError("auth failed")
    any_ip = "0.0.0.0" if family == 4 else "::"
    tcp.sendall(bytes([5, 3, 0]) + encode_addr(any_ip, port))
    head = recv_exact(tcp, 4)
    rest = recv_exact(tcp, {1: 6, 4: 18}.get(head[3], 0) or (recv_exact(tcp, 1)[0] + 2))
    host, bport, _ = parse_addr(bytes([head[3]]) + rest)
    return tcp, head[1], (host, bport)


def answered(sock, wait=0.5):
    """Datagrams that arrive on sock within `wait` s."""
    n = 0
    end = time.time() + wait
    while True:
        left = end - time.time()
        if left <= 0 or not select.select([sock], [], [], left)[0]:
            return n
        sock.recv(65536)
        n += 1


RECV_TIMEOUT = 5.0


def udp_sock(family, host=None):
    fam = socket.AF_INET if family == 4 else socket.AF_INET6
    s = socket.socket(fam, socket.SOCK_DGRAM)
    s.bind((host or ("127.0.0.1" if family == 4 else "::1"), 0))
    s.settimeout(RECV_TIMEOUT)
    return s


def echo_check(u, relay, target, n, size):
    th, tp = split_hostport(target)
    ok = 0
    for i in range(n):
        payload = (b"%08d" % i + os.urandom(size))[:size] if size >= 8 else os.urandom(size)
        u.sendto(wrap(th, tp, payload), relay)
        d, frm = u.recvfrom(70000)
        if frm[:2] != relay[:2]:
            raise OSError("reply from %s, not the relay" % (frm,))
        sender, data = unwrap(d)
        try:
            same_host = ipaddress.ip_address(sender[0]) == ipaddress.ip_address(th)
        except ValueError:  # a name: the reply carries the address it resolved to
            same_host = True
        if not same_host or sender[1] != tp:
            raise OSError("reply wrapped with %s, expected %s" % (fmt(sender), target))
        if data != payload:
            raise OSError("payload mismatch on datagram %d" % i)
        ok += 1
    return ok


def cmd_raw(a):
    if a.associations:
        held = []
        for _ in range(a.associations):
            try:
                tcp, rep, _ = associate(a.proxy, 0, a.user, a.password, a.family)
                held.append(tcp)
                print("reply=0x%02x" % rep, flush=True)
            except OSError as e:
                print("reply=error %s" % e, flush=True)
        for t in held:
            t.close()
        return 0
    tcp, rep, relay = associate(a.proxy, a.port, a.user, a.password, a.family)
    print("reply=0x%02x bound=%s" % (rep, fmt(relay)), flush=True)
    if rep != 0:
        return 0
    u = udp_sock(a.family)
    if a.port:
        # DST.PORT named: this socket must be the one on that port.
        u.close()
        u = socket.socket(socket.AF_INET if a.family == 4 else socket.AF_INET6, socket.SOCK_DGRAM)
        u.bind(("127.0.0.1" if a.family == 4 else "::1", a.port))
        u.settimeout(RECV_TIMEOUT)
    relay = (relay[0], relay[1])
    if a.bad:
        th, tp = split_hostport(a.target)
        good = wrap(th, tp, b"x")
        bad = [
            b"\0\0",                                   # truncated before ATYP
            b"\0\0\0\x01\x7f\0",                       # truncated address
            b"\0\0\0\x02\x7f\0\0\x01\0\x35abc",        # bad ATYP
            b"\0\0\x01" + good[3:],                    # FRAG = 1
            b"\0\0\x81" + good[3:],                    # FRAG, end of sequence
            b"\0\0\0\x03\x03a\nb" + struct.pack("!H", tp) + b"x",  # control char
            b"\0\0\0\x03\x00" + struct.pack("!H", tp),  # empty name
        ]
        for d in bad:
            u.sendto(d, relay)
        print("bad_answered=%d" % answered(u), flush=True)
    if a.target:
        print("echoed=%d" % echo_check(u, relay, a.target, a.n, a.size), flush=True)
    if a.intruders:
        th, tp = split_hostport(a.target)
        others = [udp_sock(a.family)]
        if a.family == 4:
            others.append(udp_sock(4, "127.0.0.2"))
        for o in others:
            o.sendto(wrap(th, tp, b"intruder"), relay)
        print("intruder_answered=%d" % sum(answered(o) for o in others), flush=True)
    if a.close_control:
        tcp.close()
        # The association ends with its control connection: wait (bounded) for
        # the relay to stop answering, rather than sleeping a guessed time.
        th, tp = split_hostport(a.target)
        deadline = time.time() + 5
        still = 1
        while still and time.time() < deadline:
            u.sendto(wrap(th, tp, b"late"), relay)
            still = answered(u, 0.3)
        print("after_close=%d" % still, flush=True)
        return 0
    tcp.close()
    return 0


def cmd_pysocks(a):
    import socks  # PySocks (python3-socks)

    ph, pp = split_hostport(a.proxy)
    th, tp = split_hostport(a.target)
    s = socks.socksocket(socket.AF_INET, socket.SOCK_DGRAM)
    s.set_proxy(socks.SOCKS5, ph, pp, username=a.user, password=a.password)
    s.settimeout(a.recv_timeout)
    frm = None
    for i in range(a.n):
        payload = b"pysocks %d" % i
        s.sendto(payload, (th, tp))
        data, frm = s.recvfrom(65536)
        if data != payload:
            raise OSError("payload mismatch: %r" % data)
    print("ok=%d from=%s" % (a.n, fmt(frm)))
    s.close()
    return 0


def dns_query(name, qtype):
    qid = int.from_bytes(os.urandom(2), "big")
    q = struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0)
    for label in name.rstrip(".").split("."):
        q += bytes([len(label)]) + label.encode()
    return qid, q + b"\0" + struct.pack("!HH", qtype, 1)


def cmd_dns(a):
    qtype = {"A": 1, "AAAA": 28}[a.qtype]
    tcp, rep, relay = associate(a.proxy, 0, None, None, a.family)
    if rep != 0:
        print("reply=0x%02x" % rep)
        return 1
    u = udp_sock(a.family)
    sh, sp = split_hostport(a.server)
    qid, q = dns_query(a.name, qtype)
    u.sendto(wrap(sh, sp, q), relay)
    d, _ = u.recvfrom(65536)
    sender, resp = unwrap(d)
    rid, flags, qd, an = struct.unpack("!HHHH", resp[:8])
    if rid != qid or an < 1:
        raise OSError("bad DNS response id=%d an=%d" % (rid, an))
    rdata = resp[-(4 if qtype == 1 else 16):]
    print("answer=%s from=%s" % (ipaddress.ip_address(rdata), fmt(sender)))
    tcp.close()
    return 0


def dns_answer(q):
    """A minimal authoritative answer: every A is 127.0.0.1, every AAAA ::1."""
    qid, _, qd = struct.unpack("!HHH", q[:6])
    i = 12
    while q[i] != 0:
        i += 1 + q[i]
    qtype, _ = struct.unpack("!HH", q[i + 1:i + 5])
    question = q[12:i + 5]
    rdata = ipaddress.ip_address("127.0.0.1" if qtype == 1 else "::1").packed
    head = struct.pack("!HHHHHH", qid, 0x8400, 1, 1, 0, 0)
    answer = b"\xc0\x0c" + struct.pack("!HHIH", qtype, 1, 60, len(rdata)) + rdata
    return head + question + answer


def serve(sock, fn):
    while True:
        try:
            d, frm = sock.recvfrom(70000)
            sock.sendto(fn(d), frm)
        except Exception:  # a bad query must not stop the responder
            pass


def cmd_peers(a):
    ports = {}
    for name, fam, host, fn in [
        ("echo4", socket.AF_INET, "127.0.0.1", lambda d: d),
        ("echo6", socket.AF_INET6, "::1", lambda d: d),
        ("dns4", socket.AF_INET, "127.0.0.1", dns_answer),
        ("dns6", socket.AF_INET6, "::1", dns_answer),
    ]:
        s = socket.socket(fam, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        s.bind((host, 0))
        ports[name] = s.getsockname()[1]
        threading.Thread(target=serve, args=(s, fn), daemon=True).start()
    print(" ".join("%s=%d" % kv for kv in ports.items()) + " pid=%d" % os.getpid(), flush=True)
    while True:
        try:
            os.kill(a.parent_pid, 0)
        except OSError:
            return 0
        time.sleep(1)


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    peers = sub.add_parser("peers")
    peers.add_argument("--parent-pid", type=int, required=True)
    for name in ("pysocks", "dns", "raw"):
        s = sub.add_parser(name)
        s.add_argument("--proxy", required=True)
        s.add_argument("--user")
        s.add_argument("--password")
        s.add_argument("--family", type=int, default=4)
        s.add_argument("--target")
        s.add_argument("-n", type=int, default=1)
        s.add_argument("--recv-timeout", type=float, default=5.0)
        s.add_argument("--tls", action="store_true")
        if name == "dns":
            s.add_argument("--server", required=True)
            s.add_argument("--name", required=True)
            s.add_argument("--qtype", default="A")
        if name == "raw":
            s.add_argument("--port", type=int, default=0)
            s.add_argument("--size", type=int, default=64)
            s.add_argument("--bad", action="store_true")
            s.add_argument("--intruders", action="store_true")
            s.add_argument("--associations", type=int, default=0)
            s.add_argument("--close-control", action="store_true")
    a = p.parse_args()
    global RECV_TIMEOUT, TLS
    RECV_TIMEOUT = getattr(a, "recv_timeout", RECV_TIMEOUT)
    TLS = getattr(a, "tls", False)
    try:
        return {"peers": cmd_peers, "pysocks": cmd_pysocks, "dns": cmd_dns, "raw": cmd_raw}[a.cmd](a)
    except (OSError, ValueError) as e:
        print("error=%s: %s" % (type(e).__name__, e), flush=True)
        return 1


if __name__ == "__main__":
    sys.exit(main())
