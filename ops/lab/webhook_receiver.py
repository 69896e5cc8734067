"""A real HTTP webhook receiver on 127.0.0.1, for the integration tests and for
`paystream chaos` (its webhook-outage fault)."""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class Receiver:
    """Records every request; answers 500 for `failing_seconds` after the first
    one (forever with `math.inf`) and while `down` is set, otherwise 200, each
    after `delay` seconds."""

    def __init__(self, failing_seconds: float = 0.0, delay: float = 0.0) -> None:
        self.requests: list[dict[str, Any]] = []
        self.failing_seconds = failing_seconds
        self.delay = delay
        self.down = False
        self.first: float | None = None
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"])).decode()
                now, received = time.monotonic(), time.time()
                if outer.first is None:
                    outer.first = now
                if outer.delay:
                    time.sleep(outer.delay)
                failing = outer.down or now - outer.first < outer.failing_seconds
                status = 500 if failing else 200
                # `received`: wall-clock time, which a receiver checks the signature's
                # timestamp against when the request arrives (not when a run ends).
                outer.requests.append({"at": now, "done": time.monotonic(), "status": status, "received": received,
                                       "body": body, "headers": dict(self.headers.items())})
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def delivered(self) -> set[str]:
        """Event ids answered 200."""
        return {q["headers"]["Paystream-Event-Id"] for q in self.requests if q["status"] == 200}

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
