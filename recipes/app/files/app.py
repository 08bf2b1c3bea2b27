"""A small HTTP service: answers GET / with JSON naming itself, and GET /healthz.

It listens on 127.0.0.1:$APP_PORT and says $APP_GREETING, both from its
systemd unit, so a changed unit shows in what it answers. It tells systemd
when it listens (Type=notify), so a start or restart ends only once requests
are answered.
"""

import json
import os
import socket
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/healthz":
            body = b"ok\n"
            kind = "text/plain"
        elif self.path == "/":
            answer = {
                "service": "app",
                "greeting": os.environ.get("APP_GREETING", ""),
                "pid": os.getpid(),
                "forwarded_proto": self.headers.get("X-Forwarded-Proto", ""),
            }
            body = (json.dumps(answer) + "\n").encode()
            kind = "application/json"
        else:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def notify_ready():
    """Sends READY=1 to systemd's notification socket, when there is one."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.connect(address)
        sock.sendall(b"READY=1")


def main():
    port = int(os.environ.get("APP_PORT", "8000"))
    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    notify_ready()
    server.serve_forever()


if __name__ == "__main__":
    main()
