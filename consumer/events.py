"""Publishing what happened to a job: result events and dead letters.

``EventPublisher`` is the protocol the handler talks to; ``PubSubEventPublisher`` is the
adapter. Every publish waits for the server's confirmation — the handler acks a job only
after its outcome is durably published. Transient errors are retried inside the Pub/Sub
client (its own ``retry=``, up to ``timeout_s``) and a publish is never sent twice from
here: an unconfirmed one is ``PublishFailed``, the job is nacked, and the redelivery
reports again (a duplicate event at worst, which readers drop by ``jobId``).
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, Protocol, Self, TypedDict

from google.cloud import pubsub_v1

from consumer.errors import PublishFailed
from stem_contracts import (
    ID_PATTERN,
    Job,
    StemsFailed,
    StemsProcessed,
    StemsProcessing,
    StemsProgress,
    encode,
)
from stem_contracts.retry import api_retry
from stem_contracts.tracing import inject_trace_attributes

__all__ = ["EventHeader", "EventPublisher", "JobIds", "PubSubEventPublisher", "ResultEvent"]

_log = logging.getLogger(__name__)

ResultEvent = StemsProcessing | StemsProcessed | StemsFailed
# How much longer than the client's own retry deadline a confirmation is awaited.
_CONFIRM_SLACK_S: Final = 5.0
_ID: Final = re.compile(ID_PATTERN)


class EventHeader(TypedDict):
    """The fields every event about a job starts with, built once (:meth:`JobIds.header`)
    and spread into each event's model."""

    job_id: str
    track_id: str
    correlation_id: str | None
    attempt: int


@dataclass(frozen=True)
class JobIds:
    """Who an event is about — known even for an invalid job when its ids are readable."""

    job_id: str
    track_id: str
    correlation_id: str | None

    @classmethod
    def of(cls, job: Job) -> Self:
        return cls(job.job_id, job.track_id, job.correlation_id)

    @classmethod
    def from_body(cls, data: bytes) -> Self | None:
        """The ids of a job that failed validation, so the catalog can still move its track
        out of "queued"; ``None`` when the body has no valid ``jobId`` and ``trackId``."""
        try:
            body = json.loads(data)
        except (ValueError, UnicodeDecodeError):
            return None
        if not isinstance(body, dict):
            return None
        job_id, track_id = body.get("jobId"), body.get("trackId")
        correlation = body.get("correlationId")
        if not all(isinstance(v, str) and _ID.match(v) for v in (job_id, track_id)):
            return None
        return cls(
            str(job_id),
            str(track_id),
            correlation if isinstance(correlation, str) and len(correlation) <= 256 else None,
        )

    def header(self, attempt: int) -> EventHeader:
        """The event header of delivery ``attempt``."""
        return EventHeader(
            job_id=self.job_id,
            track_id=self.track_id,
            correlation_id=self.correlation_id,
            attempt=attempt,
        )


class EventPublisher(Protocol):
    """Where the handler reports outcomes. Both calls return only once confirmed."""

    def publish_result(self, event: ResultEvent) -> None:
        """Publish a result event to ``stem-results``."""
        ...

    def dead_letter(self, data: bytes, attributes: Mapping[str, str]) -> None:
        """Publish a job's original message (plus reason attributes) to ``stem-dlq``."""
        ...

    def publish_progress(self, event: StemsProgress) -> None:
        """Publish a progress event without waiting: best effort, never blocks the job."""
        ...


class PubSubEventPublisher:
    """:class:`EventPublisher` on Pub/Sub topics."""

    def __init__(
        self,
        client: pubsub_v1.PublisherClient,
        *,
        project: str,
        results_topic: str,
        dlq_topic: str,
        timeout_s: float = 60.0,
    ) -> None:
        self._client = client
        self._results = client.topic_path(project, results_topic)
        self._dlq = client.topic_path(project, dlq_topic)
        self._timeout = timeout_s

    def _publish(self, topic: str, data: bytes, attributes: Mapping[str, str]) -> str:
        try:
            future = self._client.publish(topic, data, retry=api_retry(self._timeout), **attributes)
            message_id: str = future.result(self._timeout + _CONFIRM_SLACK_S)
        except Exception as exc:  # whatever it was, the publish is not confirmed
            raise PublishFailed(
                f"publish to {topic} not confirmed: {type(exc).__name__}: {exc}"
            ) from exc
        return message_id

    def publish_result(self, event: ResultEvent) -> None:
        data, attributes = encode(event)
        self._publish(self._results, data, inject_trace_attributes(attributes))

    def dead_letter(self, data: bytes, attributes: Mapping[str, str]) -> None:
        self._publish(self._dlq, data, attributes)

    def publish_progress(self, event: StemsProgress) -> None:
        data, attributes = encode(event)
        future = self._client.publish(self._results, data, **inject_trace_attributes(attributes))

        def log_failure(done: Any) -> None:
            if done.exception() is not None:
                _log.warning(
                    "progress event not published",
                    extra={"jobId": event.job_id, "error": str(done.exception())},
                )

        future.add_done_callback(log_failure)

    def close(self) -> None:
        """Flush anything batched and stop the client's threads."""
        self._client.stop()


def progress_reporter(
    events: EventPublisher, header: EventHeader, interval_s: float
) -> Callable[[float], None] | None:
    """A callback publishing ``stems.progress`` at most once every ``interval_s``
    (``None`` when progress is off: ``interval_s`` 0)."""
    if interval_s <= 0:
        return None
    last = time.monotonic()

    def report(fraction: float) -> None:
        nonlocal last
        now = time.monotonic()
        if now - last < interval_s:
            return
        last = now
        events.publish_progress(
            StemsProgress(
                **header,
                percent=round(min(max(fraction, 0.0), 1.0) * 100, 1),
                reported_at=datetime.now(UTC),
            )
        )

    return report
