"""A Pub/Sub publisher client that records what it is asked and confirms nothing.

For tests of what *our* code asks of the client (how often it publishes, with which retry
policy), never for tests that claim to exercise Pub/Sub. Imports nothing of the fleet, so
``tests/contracts`` can use it in the contracts-only virtualenv.
"""

from __future__ import annotations

import concurrent.futures
from typing import Any


class StalledClient:
    """Accepts every publish and confirms none (or fails it with ``error``)."""

    def __init__(self, error: BaseException | None = None) -> None:
        self.calls: list[dict[str, Any]] = []
        self._error = error

    def topic_path(self, project: str, topic: str) -> str:
        return f"projects/{project}/topics/{topic}"

    def publish(self, topic: str, data: bytes, **kwargs: Any) -> concurrent.futures.Future[str]:
        self.calls.append({"topic": topic, "data": data, **kwargs})
        future: concurrent.futures.Future[str] = concurrent.futures.Future()
        if self._error is not None:
            future.set_exception(self._error)
        return future

    def stop(self) -> None:
        pass
