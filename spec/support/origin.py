#!/usr/bin/env python3
"""Test destination servers for kumoproxy specs (stdlib only).

Starts, all on 127.0.0.1 with OS-assigned ports:
  http   ThreadingHTTPServer
           GET /          -> "hello from origin\\n"
           GET /bytes/N   -> N bytes of deterministic content (see pattern())
           POST <any>     -> echoes the request body
           every response carries "X-Peer: ip:port" (the client's address)
  echo   TCP echo; on client EOF it shuts down its write side, then closes
  peer   TCP; writes the client's "ip:port\\n" then closes
  echo6  like echo, on [::1] (0 if IPv6 loopback is unavailable)

Prints exactly one line on stdout, then serves:
  READY pid=<pid> http=<port> echo=<port> peer=<port> echo6=<port or 0>

Exits when stdin reaches EOF or after --max-seconds (default 600), so keep
its stdin open: e.g. from Lua, io.popen("python3 origin.py --ready-file F", "w")
and poll F for the READY line (stdin is then the pipe you hold).
"""
import argparse
import os
import socket
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def pattern(n):
    """Deterministic content for /bytes/N: repeating 0x00..0xff."""
    return bytes(i & 0xFF for i in range(n))


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):  # keep spec output quiet
        pass

    def _send(self, code, body, ctype="text/plain"):
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Peer", "%s:%d" % self.client_address[:2])
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_GET(self):
        path = self.path.split("?", 1)[0]
        if path == "/":
            self._send(200, b"hello from origin\n")
        elif path.startswith("/bytes/") and path[7:].isdigit():
            self._send(200, pattern(int(path[7:])), "application/octet-stream")
        else:
            self._send(200, ("path %s\n" % path).encode())

    do_HEAD = do_GET

    def do_POST(self):
        n = int(self.headers.get("Content-Length") or 0)
        self._send(200, self.rfile.read(n), "application/octet-stream")

    do_PUT = do_POST


def listen(family, host):
    s = socket.socket(family, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if family == socket.AF_INET6:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    s.bind((host, 0))
    s.listen(128)
    return s


def serve(sock, handle):
    def accept_loop():
        while True:
            try:
                conn, addr = sock.accept()
            except OSError:
                return
            threading.Thread(target=handle, args=(conn, addr), daemon=True).start()

    threading.Thread(target=accept_loop, daemon=True).start()


def handle_echo(conn, addr):
    with conn:
        try:
            while True:
                data = conn.recv(65536)
                if not data:
                    break
                conn.sendall(data)
            conn.shutdown(socket.SHUT_WR)  # half-close observable by the client
        except OSError:
            pass


def handle_peer(conn, addr):
    with conn:
        try:
            conn.sendall(("%s:%d\n" % addr[:2]).encode())
        except OSError:
            pass


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--max-seconds", type=float, default=600)
    ap.add_argument("--ready-file", help="also write the READY line to this "
                    "file (atomically), handy with io.popen(cmd, 'w')")
    ap.add_argument("--parent-pid", type=int, help="exit when this process "
                    "is gone instead of watching stdin (for io.popen(cmd, 'r'))")
    args = ap.parse_args()

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()

    echo = listen(socket.AF_INET, "127.0.0.1")
    serve(echo, handle_echo)
    peer = listen(socket.AF_INET, "127.0.0.1")
    serve(peer, handle_peer)

    echo6_port = 0
    if socket.has_ipv6:
        try:
            echo6 = listen(socket.AF_INET6, "::1")
            serve(echo6, handle_echo)
            echo6_port = echo6.getsockname()[1]
        except OSError:
            pass

    ready = "READY pid=%d http=%d echo=%d peer=%d echo6=%d" % (
        os.getpid(), httpd.server_address[1], echo.getsockname()[1],
        peer.getsockname()[1], echo6_port)
    if args.ready_file:
        with open(args.ready_file + ".tmp", "w") as f:
            f.write(ready + "\n")
        os.replace(args.ready_file + ".tmp", args.ready_file)
    print(ready, flush=True)

    # Stop on stdin EOF (parent died / closed the pipe) or timeout.
    def watch_stdin():
        try:
            while sys.stdin.buffer.read1(4096):
                pass
        except (OSError, ValueError):
            pass
        done.set()

    def watch_parent():
        while not done.wait(0.5):
            try:
                os.kill(args.parent_pid, 0)
            except ProcessLookupError:
                break
        done.set()

    done = threading.Event()
    watch = watch_parent if args.parent_pid else watch_stdin
    threading.Thread(target=watch, daemon=True).start()
    done.wait(args.max_seconds)
    os._exit(0)


if __name__ == "__main__":
    main()
