"""A fault-injecting HTTP proxy for putting in front of fake-gcs-server.

Forwards every request to the real server, except the ones a rule picks, which fail in
one of the ways a storage service fails in production:

- ``"503"``: ``503 Service Unavailable`` without reaching the server;
- ``"drop"``: the connection is closed before the request reaches the server;
- ``"drop_after"``: the request *is* applied by the server, then the connection is closed
  without an answer (the write happened, its acknowledgement was lost);
- ``"truncate"``: the server's answer is cut off half-way through its body.

Every request is recorded (method, path, fault), so a test can also prove what was *not*
asked of storage: a bucket nobody may touch, a download that must not start. ``rewrite``
lets a test alter the server's answers (e.g. object metadata that lies about the size).
Used to prove that storage calls are retried in place, that a job survives a flaky
storage service, and that the worker reads and writes only where it may.
"""

from __future__ import annotations

import contextlib
import http.client
import random
import socket
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Final, Literal
from urllib.parse import unquote, urlsplit

Fault = Literal["503", "drop", "drop_after", "truncate"]
FAULTS: Final[tuple[Fault, ...]] = ("503", "drop", "drop_after", "truncate")

# (method, path) -> a fault, or None to forward
Rule = Callable[[str, str], Fault | None]
# (method, path, status, body) -> the body to send instead
Rewrite = Callable[[str, str, int, bytes], bytes]

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
_WRITE_METHODS: Final = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def fail_first(count: int, *, method: str | None = None, path_contains: str = "") -> Rule:
    """A rule failing the first ``count`` matching requests with 503, then forwarding."""
    lock = threading.Lock()
    left = [count]

    def rule(req_method: str, path: str) -> Fault | None:
        if (method is None or req_method == method) and path_contains in path:
            with lock:
                if left[0] > 0:
                    left[0] -= 1
                    return "503"
        return None

    return rule


def random_faults(
    rate: float,
    *,
    seed: int,
    kinds: Sequence[Fault] = ("503", "drop"),
    path_contains: str = "",
) -> Rule:
    """A rule failing about ``rate`` of the matching requests, each with a random kind.

    The random stream is seeded, so a run injects the same sequence of faults; which
    request gets which depends on the order concurrent requests arrive in.
    """
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"rate must be in [0, 1], got {rate}")
    unknown = set(kinds) - set(FAULTS)
    if not kinds or unknown:
        raise ValueError(f"kinds must be some of {FAULTS}, got {kinds}")
    rng = random.Random(seed)
    lock = threading.Lock()

    def rule(method: str, path: str) -> Fault | None:
        del method
        if path_contains not in path:
            return None
        with lock:
            if rng.random() >= rate:
                return None
            return rng.choice(kinds)

    return rule


def no_faults(method: str, path: str) -> Fault | None:
    """A rule that forwards everything (the proxy then only records)."""
    del method, path
    return None


@dataclass(frozen=True)
class Request:
    """One request the proxy saw, and the fault it injected (None: forwarded intact)."""

    method: str
    path: str
    fault: Fault | None

    @property
    def bucket(self) -> str | None:
        """The bucket a GCS JSON API request addresses (None for project-level calls)."""
        parts = urlsplit(self.path).path.split("/")
        # /storage/v1/b/B/..., /download/storage/v1/b/B/..., /upload/storage/v1/b/B/...
        for index, part in enumerate(parts[:-1]):
            if part == "b" and index >= 2 and parts[index - 1] == "v1":
                return unquote(parts[index + 1])
        return None

    @property
    def object_name(self) -> str | None:
        """The object a request addresses (for uploads: the ``name`` query parameter)."""
        split = urlsplit(self.path)
        parts = split.path.split("/")
        if "o" in parts and parts.index("o") + 1 < len(parts):
            return unquote(parts[parts.index("o") + 1])
        for pair in split.query.split("&"):
            key, _, value = pair.partition("=")
            if key == "name":
                return unquote(value)
        return None

    @property
    def writes(self) -> bool:
        return self.method in _WRITE_METHODS

    @property
    def downloads_media(self) -> bool:
        return self.method == "GET" and "alt=media" in urlsplit(self.path).query


class FaultyProxy:
    """``with FaultyProxy(target_url, rule) as proxy:`` — point clients at ``proxy.url``."""

    def __init__(self, target_url: str, rule: Rule = no_faults, *, rewrite: Rewrite | None = None):
        target = urlsplit(target_url)
        self.faults: list[tuple[str, str, Fault]] = []
        self.requests: list[Request] = []
        self.forwarded = 0
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass  # quiet: the test reports what matters

            def _drop(self) -> None:
                self.close_connection = True
                with contextlib.suppress(OSError):  # the client already went away
                    self.connection.shutdown(socket.SHUT_RDWR)

            def _forward(self, body: bytes | None) -> tuple[int, list[tuple[str, str]], bytes]:
                conn = http.client.HTTPConnection(
                    target.hostname or "127.0.0.1", target.port, timeout=60
                )
                try:
                    headers = {
                        k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP
                    }
                    conn.request(self.command, self.path, body=body, headers=headers)
                    response = conn.getresponse()
                    data = response.read()
                    with proxy._lock:
                        proxy.forwarded += 1
                    return response.status, response.getheaders(), data
                finally:
                    conn.close()

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                fault = rule(self.command, self.path)
                with proxy._lock:
                    proxy.requests.append(Request(self.command, self.path, fault))
                    if fault is not None:
                        proxy.faults.append((self.command, self.path, fault))
                if fault == "drop":
                    self._drop()
                    return
                if fault == "503":
                    payload = b'{"error": {"code": 503, "message": "injected fault"}}'
                    self.send_response(503)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                status, headers, data = self._forward(body)
                if fault == "drop_after":
                    self._drop()
                    return
                if rewrite is not None:
                    data = rewrite(self.command, self.path, status, data)
                self.send_response(status)
                for key, value in headers:
                    if key.lower() not in _HOP_BY_HOP and key.lower() != "content-length":
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if fault == "truncate":
                    self.wfile.write(data[: len(data) // 2])
                    self.wfile.flush()
                    self._drop()
                    return
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _handle

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request: object, client_address: object) -> None:
                pass  # a client killed mid-request (the chaos run does that) is not news

        self._server = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def requests_seen(self) -> list[Request]:
        """A snapshot of every request so far."""
        with self._lock:
            return list(self.requests)

    def fault_counts(self) -> dict[str, int]:
        """How many of each fault were injected so far."""
        counts: dict[str, int] = {}
        with self._lock:
            for _, _, fault in self.faults:
                counts[fault] = counts.get(fault, 0) + 1
        return counts

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
