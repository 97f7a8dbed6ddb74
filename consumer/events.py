"""Publishing what happened to a job: result events and dead letters.

``EventPublisher`` is the protocol the handler talks to; ``PubSubEventPublisher`` is the
adapter. Every publish waits for the server's confirmation — the handler acks a job only
after its outcome is durably published. Transient errors are retried inside the Pub/Sub
client (its own ``retry=``, up to ``timeout_s``) and a publish is never sent twice from
here: an unconfirmed one is ``PublishFailed``, the job is nacked, and the redelivery
reports again (a duplicate event at worst, which readers drop by ``jobId``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, Final, Protocol

from google.cloud import pubsub_v1

from consumer.errors import PublishFailed
from stem_contracts import StemsFailed, StemsProcessed, StemsProcessing, StemsProgress, encode
from stem_contracts.retry import api_retry
from stem_contracts.tracing import inject_trace_attributes

__all__ = ["EventPublisher", "PubSubEventPublisher", "ResultEvent"]

_log = logging.getLogger(__name__)

ResultEvent = StemsProcessing | StemsProcessed | StemsFailed
# How much longer than the client's own retry deadline a confirmation is awaited.
_CONFIRM_SLACK_S: Final = 5.0


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
