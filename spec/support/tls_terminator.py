#!/usr/bin/env python3
"""TLS terminator for egress specs (stdlib only): a stand-in for a SOCKS5 proxy
that speaks TLS, built from a plain proxy.

  tls_terminator.py --cert C --key K --to HOST:PORT --parent-pid PID

Accepts TLS on 127.0.0.1 (OS-assigned port), forwards the plaintext to
HOST:PORT and back. Prints exactly one line, then serves:
  READY pid=<pid> port=<port>
Exits when PARENT-PID is gone or after --max-seconds. The certificate and key
are made by the spec at test time (openssl), never committed.
"""
import argparse
import os
import socket
import ssl
import threading


def pump(src, dst, on_eof):
    try:
        while True:
            data = src.recv(65536)
            if not data:
                break
            dst.sendall(data)
    except OSError:
        pass
    on_eof()


def handle(ctx, raw, backend_addr):
    try:
        raw.settimeout(10)
        tls = ctx.wrap_socket(raw, server_side=True)
        tls.settimeout(None)
    except (OSError, ssl.SSLError):
        raw.close()  # a client that rejects our certificate ends up here
        return
    try:
        backend = socket.create_connection(backend_addr)
    except OSError:
        tls.close()
        return

    def client_eof():  # client said close_notify or closed: half-close upstream
        try:
            backend.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def backend_eof():  # upstream done: say close_notify, then close
        try:
            tls.settimeout(2)
            tls.unwrap()
        except (OSError, ValueError, ssl.SSLError):
            pass
        try:
            tls.close()
        except OSError:
            pass

    t = threading.Thread(target=pump, args=(tls, backend, client_eof), daemon=True)
    t.start()
    pump(backend, tls, backend_eof)
    t.join(10)
    backend.close()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cert", required=True)
    ap.add_argument("--key", required=True)
    ap.add_argument("--to", required=True)
    ap.add_argument("--parent-pid", type=int, required=True)
    ap.add_argument("--max-seconds", type=float, default=300)
    args = ap.parse_args()
    host, _, port = args.to.rpartition(":")
    backend_addr = (host, int(port))

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(args.cert, args.key)

    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.bind(("127.0.0.1", 0))
    srv.listen(64)

    def accept_loop():
        while True:
            try:
                raw, _ = srv.accept()
            except OSError:
                return
            threading.Thread(target=handle, args=(ctx, raw, backend_addr),
                             daemon=True).start()

    threading.Thread(target=accept_loop, daemon=True).start()
    print("READY pid=%d port=%d" % (os.getpid(), srv.getsockname()[1]), flush=True)

    done = threading.Event()

    def watch_parent():
        while not done.wait(0.5):
            try:
                os.kill(args.parent_pid, 0)
            except ProcessLookupError:
                break
        done.set()

    threading.Thread(target=watch_parent, daemon=True).start()
    done.wait(args.max_seconds)
    os._exit(0)


if __name__ == "__main__":
    main()
