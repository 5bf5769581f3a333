#!/usr/bin/env python3
"""A webhook receiver for tests/webhooks.rs: a real HTTP server on loopback.

    webhook_receiver.py --port PORT --log FILE [--mode-file FILE]

Binds 127.0.0.1:PORT (0 picks one) and prints "listening PORT" once it accepts. Every POST
is appended to FILE as one JSON line {"path", "headers", "body", "answered"} (the body as
text) before it is answered. What it answers is read from --mode-file on each request:
"ok" (or no file) answers 200, "fail" answers 500, "hang" never answers (the request is
recorded with answered = "hang" and the connection held until the client gives up).
"""

import argparse
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

LOCK = threading.Lock()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--log", required=True)
    ap.add_argument("--mode-file")
    args = ap.parse_args()

    def mode():
        if not args.mode_file:
            return "ok"
        try:
            with open(args.mode_file) as f:
                return f.read().strip() or "ok"
        except FileNotFoundError:
            return "ok"

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self):
            n = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(n)
            m = mode()
            answered = {"ok": 200, "fail": 500}.get(m, "hang")
            line = {
                "path": self.path,
                "headers": {k.lower(): v for k, v in self.headers.items()},
                "body": body.decode("utf-8"),
                "answered": answered,
            }
            with LOCK, open(args.log, "a") as f:
                f.write(json.dumps(line) + "\n")
                f.flush()
            if answered == "hang":
                # Hold the connection; the client's timeout ends it.
                while True:
                    time.sleep(3600)
            self.send_response(answered)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *a):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    server.daemon_threads = True
    print(f"listening {server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
