"""Watching stem-results from a CLI process: a subscription of its own, typed waiting."""

from __future__ import annotations

import contextlib
import threading
import uuid
from collections.abc import Iterator
from typing import Any

from consumer import gcp
from consumer.settings import Settings
from stem_contracts import ResultEvent, ResultSubscriber, StemsFailed, StemsProcessed

__all__ = ["WaitTimeout", "event_line", "is_final", "results_subscription", "wait_for_result"]


class WaitTimeout(RuntimeError):
    """No final result event arrived in time."""


@contextlib.contextmanager
def results_subscription(settings: Settings) -> Iterator[tuple[Any, str]]:
    """A subscription on stem-results of this CLI process's own: deleted on exit, and
    expiring by itself after a day should the process die first."""
    from google.cloud import pubsub_v1
    from google.protobuf import duration_pb2

    project = settings.require_project()
    client = gcp.subscriber_client(settings)
    path = client.subscription_path(project, f"stemctl-{uuid.uuid4().hex[:12]}")
    client.create_subscription(
        request=pubsub_v1.types.Subscription(
            name=path,
            topic=f"projects/{project}/topics/{settings.results_topic}",
            expiration_policy=pubsub_v1.types.ExpirationPolicy(
                ttl=duration_pb2.Duration(seconds=86400)
            ),
            ack_deadline_seconds=30,
        )
    )
    try:
        yield client, path.rsplit("/", 1)[-1]
    finally:
        with contextlib.suppress(Exception):  # best effort; it expires anyway
            client.delete_subscription(subscription=path)
        client.close()


def event_line(event: ResultEvent) -> str:
    return event.model_dump_json(by_alias=True, exclude_none=True)


def is_final(event: ResultEvent) -> bool:
    return isinstance(event, StemsProcessed) or (isinstance(event, StemsFailed) and event.final)


def wait_for_result(
    settings: Settings, results: tuple[Any, str], job_id: str, timeout: float
) -> ResultEvent:
    client, name = results
    seen: list[ResultEvent] = []
    done = threading.Event()

    def on_event(event: ResultEvent) -> None:
        if event.job_id == job_id:
            seen.append(event)
            if is_final(event):
                done.set()

    with ResultSubscriber(settings.require_project(), name, on_event=on_event, subscriber=client):
        if not done.wait(timeout):
            raise WaitTimeout(f"no final result for job {job_id} within {timeout:.0f} s")
    return seen[-1]
