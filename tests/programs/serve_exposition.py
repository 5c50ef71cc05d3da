"""A test worker that serves fixed bytes on /metrics: `serve_exposition.py PORT FILE [CONTENT_TYPE]`.

With FILE "-" it serves a body that is not an exposition. SIGTERM ends it.
"""

from __future__ import annotations

import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

BROKEN_BODY = b"this is { not an exposition\n\x00\x01garbage\n"


def main() -> None:
    port = int(sys.argv[1])
    body = BROKEN_BODY if sys.argv[2] == "-" else Path(sys.argv[2]).read_bytes()
    content_type = sys.argv[3] if len(sys.argv) > 3 else "text/plain; version=0.0.4"

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.serve_forever()


if __name__ == "__main__":
    main()
