"""A fault-injecting HTTP proxy for putting in front of fake-gcs-server.

Forwards every request to the real server, except the ones a rule picks, which get a
``503 Service Unavailable`` (or a dropped connection) instead. Used to prove that storage
calls are retried in place and that a job survives a flaky storage service.
"""

from __future__ import annotations

import http.client
import socket
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from urllib.parse import urlsplit

# (method, path) -> "503" | "drop" | None (forward)
Rule = Callable[[str, str], str | None]

_HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "proxy-authorization",
    "proxy-authenticate",
}


def fail_first(count: int, *, method: str | None = None, path_contains: str = "") -> Rule:
    """A rule failing the first ``count`` matching requests with 503, then forwarding."""
    lock = threading.Lock()
    left = [count]

    def rule(req_method: str, path: str) -> str | None:
        if (method is None or req_method == method) and path_contains in path:
            with lock:
                if left[0] > 0:
                    left[0] -= 1
                    return "503"
        return None

    return rule


class FaultyProxy:
    """``with FaultyProxy(target_url, rule) as proxy:`` — point clients at ``proxy.url``."""

    def __init__(self, target_url: str, rule: Rule) -> None:
        target = urlsplit(target_url)
        self.faults: list[tuple[str, str, str]] = []
        self.forwarded = 0
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass  # quiet: the test reports what matters

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                fault = rule(self.command, self.path)
                if fault is not None:
                    proxy.faults.append((self.command, self.path, fault))
                    if fault == "drop":
                        self.connection.shutdown(socket.SHUT_RDWR)
                        self.close_connection = True
                        return
                    payload = b'{"error": {"code": 503, "message": "injected fault"}}'
                    self.send_response(503)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                conn = http.client.HTTPConnection(target.hostname, target.port, timeout=60)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
                conn.request(self.command, self.path, body=body, headers=headers)
                response = conn.getresponse()
                data = response.read()
                proxy.forwarded += 1
                self.send_response(response.status)
                for key, value in response.getheaders():
                    if key.lower() not in _HOP_BY_HOP and key.lower() != "content-length":
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                conn.close()

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _handle

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> FaultyProxy:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._server.shutdown()
        self._server.server_close()
