#!/usr/bin/env python3
"""The HTTP service the http-source tests read: a real server, in its own
process, that a test can SIGKILL and start again on the same port. Port 0
takes a free one; the first line it prints is "listening PORT".

    event_server.py PORT DIR N

Its records are {"seq": i} for i in 1..=N, served three ways:
  GET /events  Server-Sent Events, "id: i" each, from Last-Event-ID + 1 (or
               1), about 1000 a second; then the stream stays open, quiet
               but for a comment every second.
  GET /lines   the same records as NDJSON, from 1.
  GET /items?cursor=C
               a page of up to 100 records after cursor C (none: from the
               start) as {"items": [...], "next": "<cursor>"}.
  GET /limited?cursor=C
               the same pages, but the first two requests are answered 429
               with Retry-After: 1.
Each request's path and Last-Event-ID is a line of DIR/requests.
"""

import http.server
import json
import os
import sys
import threading
import time
import urllib.parse

PORT = int(sys.argv[1])
DIR = sys.argv[2]
N = int(sys.argv[3])
# Requests to /limited still to answer 429.
LIMITED = [2]
LIMITED_LOCK = threading.Lock()


class Handler(http.server.BaseHTTPRequestHandler):
    # The streams end when the connection does.
    protocol_version = "HTTP/1.0"

    def do_GET(self):
        url = urllib.parse.urlparse(self.path)
        last = self.headers.get("Last-Event-ID")
        with open(os.path.join(DIR, "requests"), "a", encoding="utf-8") as f:
            f.write(f"{self.path} {last}\n")
        if url.path == "/events":
            self.stream("text/event-stream", int(last) + 1 if last else 1, sse=True)
        elif url.path == "/lines":
            self.stream("application/x-ndjson", 1, sse=False)
        elif url.path == "/limited" and self.limited():
            self.send_response(429)
            self.send_header("Retry-After", "1")
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif url.path in ("/items", "/limited"):
            cursor = urllib.parse.parse_qs(url.query).get("cursor", ["0"])[0]
            start = int(cursor) + 1
            end = min(start + 99, N)
            body = json.dumps({
                "items": [{"seq": i} for i in range(start, end + 1)],
                "next": str(max(end, start - 1)),
            }).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        else:
            self.send_response(404)
            self.end_headers()

    def limited(self):
        with LIMITED_LOCK:
            if LIMITED[0] > 0:
                LIMITED[0] -= 1
                return True
            return False

    def stream(self, content_type, start, sse):
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.end_headers()
        try:
            if sse:
                self.wfile.write(b"retry: 100\n\n")
            for i in range(start, N + 1):
                record = json.dumps({"seq": i}, separators=(",", ":"))
                if sse:
                    self.wfile.write(f"id: {i}\ndata: {record}\n\n".encode())
                else:
                    self.wfile.write(f"{record}\n".encode())
                if i % 20 == 0:
                    self.wfile.flush()
                    time.sleep(0.02)
            self.wfile.flush()
            while True:
                time.sleep(1)
                self.wfile.write(b": quiet\n\n" if sse else b"\n")
                self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            pass

    def log_message(self, *args):
        pass


os.makedirs(DIR, exist_ok=True)
server = http.server.ThreadingHTTPServer(("127.0.0.1", PORT), Handler)
server.daemon_threads = True
print("listening", server.server_address[1], flush=True)
server.serve_forever()
