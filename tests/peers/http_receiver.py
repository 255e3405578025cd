#!/usr/bin/env python3
"""The HTTP receiver the http-sink tests post to: a real server, in its own
process, that a test can SIGKILL and start again on the same port. Port 0
takes a free one; the first line it prints is "listening PORT".

    http_receiver.py PORT DIR [--reject-bad] [--fail-first N] [--delay-ms D]
                     [--tls CERT KEY]

Every POST's body is NDJSON or a JSON array of records. Each line received
is appended to DIR/all.ndjson (repeats included). A request whose
Idempotency-Key was kept before is answered 200 and kept no more; otherwise
its records are appended to DIR/kept.log as "KEY<TAB>RECORD" lines, in one
write, so a kill leaves either all of a request or none of it, and the keys
seen are read back from there at start. With --reject-bad a request holding
a record with "bad": true is answered 400. With --fail-first N the first N
requests are answered 503 with Retry-After: 1. With --delay-ms D each request
is answered after D ms, and the most requests in flight at once is kept in
DIR/most_in_flight. With --tls it serves HTTPS with that certificate and key.
Each connection accepted is
a line of DIR/connections, and each Authorization header a line of
DIR/authorization.
"""

import http.server
import json
import os
import sys
import threading
import time

PORT = int(sys.argv[1])
DIR = sys.argv[2]
REJECT_BAD = "--reject-bad" in sys.argv
FAIL_FIRST = int(sys.argv[sys.argv.index("--fail-first") + 1]) if "--fail-first" in sys.argv else 0
DELAY = int(sys.argv[sys.argv.index("--delay-ms") + 1]) / 1000 if "--delay-ms" in sys.argv else 0

KEPT = os.path.join(DIR, "kept.log")
ALL = os.path.join(DIR, "all.ndjson")
in_flight = 0
most_in_flight = 0
lock = threading.Lock()
seen = set()
if os.path.exists(KEPT):
    with open(KEPT, encoding="utf-8") as f:
        for line in f:
            seen.add(line.split("\t", 1)[0])
failed = 0


def records(body, content_type):
    text = body.decode("utf-8")
    if content_type.startswith("application/json"):
        return [json.dumps(r, separators=(",", ":")) for r in json.loads(text)]
    return [line for line in text.split("\n") if line]


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body are two writes: with Nagle on, a keep-alive client
    # waits out its delayed ACK (40 ms) for every response.
    disable_nagle_algorithm = True

    def do_POST(self):
        global in_flight, most_in_flight
        with lock:
            in_flight += 1
            if in_flight > most_in_flight:
                most_in_flight = in_flight
                with open(os.path.join(DIR, "most_in_flight"), "w", encoding="utf-8") as f:
                    f.write(f"{most_in_flight}\n")
        try:
            time.sleep(DELAY)
            self.post()
        finally:
            with lock:
                in_flight -= 1

    def post(self):
        global failed
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        if failed < FAIL_FIRST:
            failed += 1
            self.answer(503, b"busy", {"Retry-After": "1"})
            return
        lines = records(body, self.headers.get("Content-Type", ""))
        with open(ALL, "a", encoding="utf-8") as f:
            f.write("".join(line + "\n" for line in lines))
        auth = self.headers.get("Authorization")
        if auth is not None:
            with open(os.path.join(DIR, "authorization"), "a", encoding="utf-8") as f:
                f.write(auth + "\n")
        key = self.headers.get("Idempotency-Key", "")
        if key and key in seen:
            self.answer(200, b"repeat")
            return
        if REJECT_BAD and any(json.loads(line).get("bad") for line in lines):
            self.answer(400, b"a record is bad")
            return
        with open(KEPT, "a", encoding="utf-8") as f:
            f.write("".join(key + "\t" + line + "\n" for line in lines))
        seen.add(key)
        self.answer(200, b"ok")

    def answer(self, status, text, headers=None):
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(text)))
        self.end_headers()
        self.wfile.write(text)

    def log_message(self, *args):
        pass


class Server(http.server.ThreadingHTTPServer):
    def verify_request(self, request, client_address):
        with open(os.path.join(DIR, "connections"), "a", encoding="utf-8") as f:
            f.write(f"{client_address}\n")
        return True


server = Server(("127.0.0.1", PORT), Handler)
if "--tls" in sys.argv:
    import ssl

    at = sys.argv.index("--tls")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(sys.argv[at + 1], sys.argv[at + 2])
    server.socket = context.wrap_socket(server.socket, server_side=True)
print("listening", server.server_address[1], flush=True)
server.serve_forever()
