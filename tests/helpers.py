"""Small helpers shared by the integration tests (no fakes: these talk to the emulators)."""

from __future__ import annotations

import time
from typing import Any

from google.cloud import pubsub_v1


def pull(
    subscriber: pubsub_v1.SubscriberClient,
    subscription_path: str,
    count: int,
    *,
    timeout_s: float = 20.0,
    ack: bool = True,
) -> list[Any]:
    """Synchronously pull until ``count`` messages arrived (or the timeout); ack them."""
    received: list[Any] = []
    deadline = time.monotonic() + timeout_s
    while len(received) < count and time.monotonic() < deadline:
        response = subscriber.pull(
            request={
                "subscription": subscription_path,
                "max_messages": count - len(received),
                # A blocking pull on an empty subscription waits seconds on the emulator.
                "return_immediately": True,
            },
            timeout=5.0,
        )
        if ack and response.received_messages:
            subscriber.acknowledge(
                request={
                    "subscription": subscription_path,
                    "ack_ids": [m.ack_id for m in response.received_messages],
                }
            )
        received.extend(response.received_messages)
        if not response.received_messages:
            time.sleep(0.1)
    return received
