"""``ResultSubscriber``: typed callbacks for the events on ``stem-results``."""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import TimeoutError as FutureTimeout
from types import TracebackType
from typing import Any

from google.cloud import pubsub_v1
from google.cloud.pubsub_v1.subscriber.message import Message
from google.cloud.pubsub_v1.types import FlowControl
from opentelemetry import trace

from stem_contracts.codec import ContractError, decode_event
from stem_contracts.models import (
    ResultEvent,
    StemsFailed,
    StemsProcessed,
    StemsProcessing,
    StemsProgress,
)
from stem_contracts.tracing import extract_context

__all__ = ["ResultSubscriber"]

_log = logging.getLogger(__name__)
_tracer = trace.get_tracer("stem_contracts")


class ResultSubscriber:
    """Subscribes to a subscription on ``stem-results`` and dispatches by ``eventType``.

    Example (a catalog service)::

        def register(event: StemsProcessed) -> None:
            catalog.upsert(event.job_id, [s.uri for s in event.stems])  # idempotent by jobId

        with ResultSubscriber("my-project", "catalog-results", on_processed=register) as sub:
            sub.run()

    A handler that returns acks the message; one that raises nacks it (Pub/Sub redelivers
    it). A malformed event is logged with its message id and acked — it cannot get
    better by redelivery — and the subscriber goes on. Delivery is at-least-once:
    deduplicate by ``jobId``. ``on_event`` sees every valid event, before the typed handler.
    """

    def __init__(
        self,
        project: str,
        subscription: str,
        *,
        on_processing: Callable[[StemsProcessing], None] | None = None,
        on_processed: Callable[[StemsProcessed], None] | None = None,
        on_failed: Callable[[StemsFailed], None] | None = None,
        on_progress: Callable[[StemsProgress], None] | None = None,
        on_event: Callable[[ResultEvent], None] | None = None,
        flow_control: FlowControl | None = None,
        subscriber: pubsub_v1.SubscriberClient | None = None,
    ) -> None:
        self._client = subscriber or pubsub_v1.SubscriberClient()
        self._owns_client = subscriber is None
        self.subscription_path: str = self._client.subscription_path(project, subscription)
        self._handlers: dict[str, Callable[[Any], None] | None] = {
            "stems.processing": on_processing,
            "stems.processed": on_processed,
            "stems.failed": on_failed,
            "stems.progress": on_progress,
        }
        self._on_event = on_event
        self._flow_control = flow_control or FlowControl(max_messages=100)
        self._future: pubsub_v1.subscriber.futures.StreamingPullFuture | None = None

    def _dispatch(self, message: Message) -> None:
        attributes = dict(message.attributes)
        try:
            event = decode_event(message.data)
        except ContractError as exc:
            _log.error(
                "malformed result event dropped",
                extra={"messageId": message.message_id, "error": str(exc)},
            )
            message.ack()
            return
        with _tracer.start_as_current_span(
            f"{event.event_type} receive",
            context=extract_context(attributes),
            kind=trace.SpanKind.CONSUMER,
            attributes={"stem.job_id": event.job_id, "messaging.message.id": message.message_id},
        ):
            try:
                if self._on_event is not None:
                    self._on_event(event)
                handler = self._handlers[event.event_type]
                if handler is not None:
                    handler(event)
            except Exception:
                _log.exception(
                    "result handler failed; message will be redelivered",
                    extra={"messageId": message.message_id, "jobId": event.job_id},
                )
                message.nack()
                return
        message.ack()

    def start(self) -> pubsub_v1.subscriber.futures.StreamingPullFuture:
        """Start streaming pull in the background; returns the pull future."""
        if self._future is None:
            self._future = self._client.subscribe(
                self.subscription_path, self._dispatch, flow_control=self._flow_control
            )
        return self._future

    def run(self, timeout: float | None = None) -> None:
        """Block dispatching events until ``stop()``, an error, or ``timeout`` seconds."""
        future = self.start()
        try:
            future.result(timeout=timeout)
        except FutureTimeout:
            self.stop()

    def stop(self) -> None:
        """Stop pulling; in-flight callbacks finish first."""
        if self._future is not None:
            self._future.cancel()
            self._future.result()
            self._future = None

    def close(self) -> None:
        self.stop()
        if self._owns_client:
            self._client.close()

    def __enter__(self) -> ResultSubscriber:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
