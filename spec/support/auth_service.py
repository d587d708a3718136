#!/usr/bin/env python3
"""A small HTTP auth service for the auth_http specs (stdlib only).

Listens on 127.0.0.1 with an OS-assigned port. POST bodies are the JSON that
kumoproxy sends: {"username", "password", "peer_address", "local_address"}.

  POST /check      users below: right password -> 200 with the user's reply
                   body; anything else -> 401
  POST /empty      200, empty body
  POST /wide       200 '{"cache_scope": "credentials"}' (any credentials)
  POST /deny       401
  POST /redirect   302 to /yes (which would say yes: must not be followed)
  POST /yes        200 '{}'
  POST /slow       waits --slow-seconds (default 30), then 200
  POST /malformed  200 with a body that is not JSON
  POST /error      500
  GET  /calls      number of POSTs so far, per path: {"/check": 3, ...}
  GET  /last       the last POST: {"path", "body", "headers"}

Users (username: password -> reply body):
  alice: secret -> {"identity": "alice@corp", "groups": ["staff"],
                    "permissions": {"allow": ["127.0.0.1:<--allow-port>"]}}
  bob:   hunter2 -> "" (empty body: full access)

Prints one line, then serves until the parent exits or --max-seconds:
  READY pid=<pid> port=<port>
"""
import argparse
import json
import os
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

lock = threading.Lock()
calls = {}
last = {}


def make_handler(args):
    users = {
        "alice": ("secret", json.dumps({
            "identity": "alice@corp",
            "groups": ["staff"],
            "permissions": {"allow": ["127.0.0.1:%d" % args.allow_port]},
        })),
        "bob": ("hunter2", ""),
    }

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, fmt, *a):
            pass

        def send(self, code, body="", headers=()):
            data = body.encode()
            self.send_response(code)
            for k, v in headers:
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            with lock:
                if self.path == "/calls":
                    self.send(200, json.dumps(calls))
                elif self.path == "/last":
                    self.send(200, json.dumps(last))
                else:
                    self.send(404)

        def do_POST(self):
            n = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(n)
            with lock:
                calls[self.path] = calls.get(self.path, 0) + 1
                last.clear()
                last.update(path=self.path, body=raw.decode("utf-8", "replace"),
                            headers={k.lower(): v for k, v in self.headers.items()})
            try:
                req = json.loads(raw)
            except ValueError:
                req = {}
            p = self.path
            if p == "/check":
                u = users.get(req.get("username"))
                if u and req.get("password") == u[0]:
                    self.send(200, u[1])
                else:
                    self.send(401, "no")
            elif p == "/wide":
                self.send(200, '{"cache_scope": "credentials"}')
            elif p == "/empty" or p == "/yes":
                self.send(200, "" if p == "/empty" else "{}")
            elif p == "/deny":
                self.send(401, "no")
            elif p == "/redirect":
                self.send(302, "", [("Location", "/yes")])
            elif p == "/slow":
                time.sleep(args.slow_seconds)
                self.send(200, "")
            elif p == "/malformed":
                self.send(200, '{"identity": ')
            elif p == "/error":
                self.send(500, "oops")
            else:
                self.send(404)

    return Handler


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--parent-pid", type=int, default=0)
    ap.add_argument("--max-seconds", type=float, default=600)
    ap.add_argument("--slow-seconds", type=float, default=30)
    ap.add_argument("--allow-port", type=int, default=1)
    args = ap.parse_args()

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(args))
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    print("READY pid=%d port=%d" % (os.getpid(), httpd.server_address[1]), flush=True)

    done = threading.Event()

    def watch_parent():
        while not done.wait(0.5):
            try:
                os.kill(args.parent_pid, 0)
            except ProcessLookupError:
                break
        done.set()

    if args.parent_pid:
        threading.Thread(target=watch_parent, daemon=True).start()
    done.wait(args.max_seconds)
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
