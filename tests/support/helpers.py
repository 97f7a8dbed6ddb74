"""Small helpers shared by the integration tests (no fakes: these talk to the emulators)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
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


def mpeg1_layer3_headers(data: bytes) -> list[tuple[int, int, int]]:
    """(offset, kbit/s, Hz) of every frame, walking MPEG-1 layer III headers to EOF."""
    kbps = (0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320, 0)
    rates = (44_100, 48_000, 32_000, 0)
    headers = []
    pos = 0
    while pos < len(data):
        header = int.from_bytes(data[pos : pos + 4], "big")
        assert header >> 21 == 0x7FF, f"no frame sync at byte {pos}"
        assert (header >> 17) & 0b1111 == 0b1101, f"not MPEG-1 layer III at byte {pos}"
        bitrate, rate = kbps[(header >> 12) & 0xF], rates[(header >> 10) & 0b11]
        headers.append((pos, bitrate, rate))
        pos += 144_000 * bitrate // rate + ((header >> 9) & 1)
    assert pos == len(data), "the last frame runs past the end of the file"
    return headers


def kill_group(process: subprocess.Popen[Any], timeout_s: float = 10.0) -> None:
    """SIGKILL a child started with ``start_new_session=True``, all its process group
    (a crash, an OOM kill, a node lost), and reap it."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout_s)
