#!/usr/bin/env python3
"""A small user service for the enrich example: GET /users/ID answers
{"id": ID, "name": "user-ID", "tier": "gold" | "silver" | "bronze"} after
20 ms, as a service across a network would, or 404 when ID % 13 == 0 (no
such user). It answers many requests at once (a thread each).

    python3 lookup.py [PORT]        # default 8099; prints "listening PORT"
"""

import http.server
import json
import sys
import time

PORT = int(sys.argv[1]) if len(sys.argv) > 1 else 8099
TIERS = ["gold", "silver", "bronze"]


class Users(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_GET(self):
        time.sleep(0.02)
        try:
            uid = int(self.path.removeprefix("/users/"))
        except ValueError:
            uid = None
        if uid is None or uid % 13 == 0:
            status, body = 404, {"error": "no such user"}
        else:
            status, body = 200, {"id": uid, "name": f"user-{uid}", "tier": TIERS[uid % 3]}
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 512


server = Server(("127.0.0.1", PORT), Users)
print(f"listening {server.server_address[1]}", flush=True)
server.serve_forever()
