"""Watching stem-results from a CLI process: a subscription of its own, typed waiting."""

from __future__ import annotations

import contextlib
import threading
import uuid
from collections.abc import Callable, Iterator
from typing import Any

from consumer import gcp
from consumer.settings import Settings
from stem_contracts import (
    ResultEvent,
    ResultSubscriber,
    StemsFailed,
    StemsProcessed,
    StemsProcessing,
    StemsProgress,
)
from stemctl.display import Bar

__all__ = [
    "WaitTimeout",
    "event_line",
    "is_final",
    "results_subscription",
    "show_progress",
    "usage_line",
    "wait_for_result",
]


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
    return event.model_dump_json(by_alias=True)


def usage_line(event: ResultEvent) -> str | None:
    """One human line on what a processed or failed attempt used and cost (``None`` for
    other events, and for events from workers that report no usage)."""
    if not isinstance(event, StemsProcessed | StemsFailed) or event.usage is None:
        return None
    usage = event.usage
    outcome = (
        f"processed ({len(event.stems)} stems)"
        if isinstance(event, StemsProcessed)
        else f"failed ({event.error.code}, attempt {event.attempt})"
    )
    audio = "?" if usage.audio_seconds is None else f"{usage.audio_seconds:.1f}"
    cost = (
        "no price (STEM_COST_PER_HOUR unset)"
        if usage.cost_usd is None
        else (f"${usage.cost_usd:.6f}")
    )
    if isinstance(event, StemsProcessed) and event.reused_from is not None:
        outcome += f" reusing the stems of job {event.reused_from}"
    return (
        f"job {event.job_id} {outcome}: audio {audio} s, worker {usage.worker_seconds:.1f} s, "
        f"device {usage.device_seconds:.1f} s on {usage.device}, cost {cost}"
    )


def is_final(event: ResultEvent) -> bool:
    return isinstance(event, StemsProcessed) or (isinstance(event, StemsFailed) and event.final)


def wait_for_result(
    settings: Settings,
    results: tuple[Any, str],
    job_id: str,
    timeout: float,
    *,
    on_event: Callable[[ResultEvent], None] | None = None,
) -> ResultEvent:
    """Wait for the final event of ``job_id`` (``stems.processed``, or a final
    ``stems.failed``); ``on_event`` sees each of the job's events until then, in arrival
    order (``stems.progress`` included), from the subscriber's threads."""
    client, name = results
    seen: list[ResultEvent] = []
    done = threading.Event()
    lock = threading.Lock()

    def receive(event: ResultEvent) -> None:
        if event.job_id != job_id:
            return
        with lock:  # callbacks run on several threads; nothing is shown after the end
            if done.is_set():
                return
            if on_event is not None:
                on_event(event)
            seen.append(event)
            if is_final(event):
                done.set()

    with ResultSubscriber(settings.require_project(), name, on_event=receive, subscriber=client):
        if not done.wait(timeout):
            raise WaitTimeout(f"no final result for job {job_id} within {timeout:.0f} s")
    return seen[-1]


def show_progress(bar: Bar) -> Callable[[ResultEvent], None]:
    """An ``on_event`` for :func:`wait_for_result` that moves ``bar`` with the job's events:
    ``stems.processing`` starts an attempt, ``stems.progress`` moves the bar, the final
    event ends it."""

    def show(event: ResultEvent) -> None:
        if isinstance(event, StemsProcessing):
            bar.update(phase=f"processing (attempt {event.attempt})")
        elif isinstance(event, StemsProgress):
            bar.update(event.percent / 100, phase="separating")
        elif isinstance(event, StemsProcessed):
            bar.finish("processed")
        elif event.final:
            bar.finish(f"failed: {event.error.code}")
        else:
            bar.update(phase=f"attempt {event.attempt} failed ({event.error.code}); retrying")

    return show
