#!/usr/bin/env python3
"""The lookup service the http-enrich tests ask: a real server, in its own
process. Port 0 takes a free one; the first line it prints is
"listening PORT".

    lookup_server.py PORT DIR [--delay-ms D]

GET /users/ID answers, after a wait of up to D ms (different for each ID):
500 when ID % 17 == 0 (always: a lookup that fails for good); 404 when
ID % 13 == 0; 503 the first time it is asked when ID % 7 == 0 (then as
below); else 200 with {"name": "user-ID", "tier": ID % 3}. Each request's
path is a line of DIR/requests, in the order they came.
"""

import http.server
import json
import os
import sys
import threading
import time

PORT = int(sys.argv[1])
DIR = sys.argv[2]
DELAY = int(sys.argv[sys.argv.index("--delay-ms") + 1]) / 1000 if "--delay-ms" in sys.argv else 0
REQUESTS = os.path.join(DIR, "requests")

lock = threading.Lock()
asked = {}


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def answer(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        with lock:
            with open(REQUESTS, "a") as f:
                f.write(self.path + "\n")
            n = asked.get(self.path, 0)
            asked[self.path] = n + 1
        if not self.path.startswith("/users/"):
            return self.answer(404, {"error": "no such path"})
        try:
            uid = int(self.path[len("/users/"):])
        except ValueError:
            return self.answer(400, {"error": "not an id"})
        time.sleep(DELAY * ((uid * 7919) % 101) / 100)
        if uid % 17 == 0:
            return self.answer(500, {"error": "broken"})
        if uid % 13 == 0:
            return self.answer(404, {"error": "no such user"})
        if uid % 7 == 0 and n == 0:
            return self.answer(503, {"error": "busy"})
        return self.answer(200, {"name": f"user-{uid}", "tier": uid % 3})


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 512


os.makedirs(DIR, exist_ok=True)
server = Server(("127.0.0.1", PORT), Handler)
print(f"listening {server.server_address[1]}", flush=True)
server.serve_forever()
