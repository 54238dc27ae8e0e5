"""The demo's webhook receiver: answers 200 to every POST and appends its body, one line each,
to the file given.

Usage: python3 webhook.py PORT FILE
"""
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

port, path = int(sys.argv[1]), sys.argv[2]


class Hook(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        with open(path, "ab") as f:
            f.write(body.replace(b"\n", b" ") + b"\n")
        self.send_response(200)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


print(f"webhook: listening on 127.0.0.1:{port}, writing {path}", flush=True)
ThreadingHTTPServer(("127.0.0.1", port), Hook).serve_forever()
