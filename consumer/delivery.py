"""One delivery of a job message, and what is woven around every attempt at it.

:func:`observe` is the one place for the cross-cutting work of a delivery — the job's span
(continuing the publisher's trace), the metrics, the log lines, the deadline and the stage
timings — so the handler only orchestrates. It yields the :class:`Attempt` the handler and
the pipeline check (``check()``: shutdown or deadline) and time (``timed(stage)``), and on
the way out records how the attempt ended (:meth:`Attempt.succeeded` /
:meth:`Attempt.failed`).
"""

from __future__ import annotations

import contextlib
import enum
import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

from opentelemetry import trace

from consumer._memory import release_free_memory
from consumer.disposition import Action, Disposition
from consumer.errors import JobCancelled, JobTimeout, StemError, WorkerShutdown
from consumer.telemetry import Metrics
from stem_contracts import StemsProcessed, Usage
from stem_contracts.tracing import extract_context

__all__ = ["Attempt", "Delivery", "Outcome", "observe"]

_log = logging.getLogger(__name__)
_tracer = trace.get_tracer("consumer")


class Outcome(enum.Enum):
    ACK = "ack"
    NACK = "nack"


@dataclass(frozen=True)
class Delivery:
    """One delivery of a message, stripped of Pub/Sub types."""

    data: bytes
    attributes: Mapping[str, str]
    message_id: str
    delivery_attempt: int = 1
    publish_time: datetime | None = None


@dataclass
class Attempt:
    """One attempt at a delivery: its deadline, its stage timings, and how it ended."""

    delivery: Delivery
    deadline: float
    stop_requested: Callable[[], bool]
    metrics: Metrics | None = None
    started: float = field(default_factory=time.monotonic)
    stages: dict[str, float] = field(default_factory=dict)
    label: str = "retried"
    """``processed``, ``duplicate``, ``cancelled``, ``dead_lettered`` or ``retried`` (the
    metric's label)."""
    code: str = "internal_error"
    audio_seconds: float | None = None
    """The decoded source's duration, once it is known."""
    device_seconds: float = 0.0
    """Wall time spent separating on the device (:meth:`on_device`)."""
    cancel_requested: Callable[[], bool] | None = None
    """Whether somebody cancelled the job (its cancel marker); set once the job is known."""
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _log_extra: dict[str, object] = field(init=False)

    def __post_init__(self) -> None:
        # The ids from the attributes: known before (and even without) a valid body.
        self._log_extra = {
            "messageId": self.delivery.message_id,
            "deliveryAttempt": self.delivery.delivery_attempt,
            "jobId": self.delivery.attributes.get("jobId"),
            "trackId": self.delivery.attributes.get("trackId"),
        }

    def check(self) -> None:
        """Raise when the job must stop: the worker is shutting down, time is up, or the
        job was cancelled."""
        if self.stop_requested():
            raise WorkerShutdown("worker shutting down; the job will be redelivered")
        if time.monotonic() > self.deadline:
            raise JobTimeout("job exceeded STEM_JOB_TIMEOUT_S")
        if self.cancel_requested is not None and self.cancel_requested():
            raise JobCancelled("job cancelled (its cancel marker exists)")

    def cancelled(self) -> bool:
        """Whether the job must stop (what ``check`` raises for); the separator asks this
        between segment batches."""
        return (
            self.stop_requested()
            or time.monotonic() > self.deadline
            or (self.cancel_requested is not None and self.cancel_requested())
        )

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    @contextlib.contextmanager
    def timed(self, stage: str) -> Iterator[None]:
        """Time the block as ``stage``: a child span, the attempt's log record, the histogram."""
        start = time.monotonic()
        try:
            with _tracer.start_as_current_span(f"stem.{stage}"):
                yield
        finally:
            elapsed = time.monotonic() - start
            with self._lock:  # encodes and uploads run in parallel threads
                self.stages[stage] = self.stages.get(stage, 0.0) + elapsed
            if self.metrics is not None:
                self.metrics.stage_duration.labels(stage).observe(elapsed)

    @contextlib.contextmanager
    def on_device(self) -> Iterator[None]:
        """Count the block as device time (``usage.deviceSeconds``)."""
        start = time.monotonic()
        try:
            yield
        finally:
            with self._lock:
                self.device_seconds += time.monotonic() - start

    def usage(self, device: str, cost_per_hour: float | None) -> Usage:
        """What this attempt has used so far; ``costUsd`` from the node's hourly price."""
        worker_seconds = round(self.elapsed(), 3)
        return Usage(
            audio_seconds=None if self.audio_seconds is None else round(self.audio_seconds, 6),
            device_seconds=round(self.device_seconds, 3),
            worker_seconds=worker_seconds,
            device=device,
            cost_usd=None if cost_per_hour is None else worker_seconds * cost_per_hour / 3600,
        )

    def _count(self, usage: Usage | None) -> None:
        if self.metrics is None or usage is None:
            return
        self.metrics.device_seconds.inc(usage.device_seconds)
        if usage.cost_usd is not None:
            self.metrics.cost_usd.inc(usage.cost_usd)

    def succeeded(self, event: StemsProcessed, *, duplicate: bool) -> None:
        """The job's ``stems.processed`` is published (``duplicate``: from its manifest)."""
        self.label, self.code = ("duplicate" if duplicate else "processed"), "none"
        elapsed = self.elapsed()
        if self.metrics is not None and not duplicate:
            self._count(event.usage)
        if self.metrics is not None and not duplicate and event.reused_from is not None:
            self.metrics.reused.inc()
        elif self.metrics is not None and not duplicate:
            self.metrics.audio_seconds.inc(event.source.duration_seconds)
            self.metrics.realtime_factor.observe(event.source.duration_seconds / max(elapsed, 1e-6))
        _log.info(
            "job already processed" if duplicate else "job processed",
            extra={
                **self._log_extra,
                "durationMs": int(elapsed * 1000),
                "audioSeconds": event.source.duration_seconds,
                "reusedFrom": event.reused_from,
                "stages": {k: round(v, 4) for k, v in self.stages.items()},
            },
        )

    def failed(
        self,
        error: Exception,
        disposition: Disposition,
        outcome: Outcome,
        usage: Usage | None = None,
    ) -> None:
        """The attempt failed; ``outcome`` is what the message gets, ``usage`` what it
        used (reported on its ``stems.failed``)."""
        self._count(usage)
        if disposition.action is Action.ACK:
            self.label = "cancelled"
        else:
            self.label = "dead_lettered" if outcome is Outcome.ACK else "retried"
        self.code = disposition.code
        _log.log(
            logging.WARNING if outcome is Outcome.ACK else logging.ERROR,
            "job failed",
            extra={
                **self._log_extra,
                "errorCode": disposition.code,
                "error": disposition.message,
                "outcome": outcome.value,
                "durationMs": int(self.elapsed() * 1000),
                "stages": self.stages,
            },
            exc_info=(type(error), error, error.__traceback__)
            if not isinstance(error, StemError)
            else None,
        )


@contextlib.contextmanager
def observe(
    delivery: Delivery,
    *,
    timeout_s: float,
    stop_requested: Callable[[], bool],
    metrics: Metrics | None,
) -> Iterator[Attempt]:
    """Everything around one attempt at ``delivery``: span, metrics, logs, deadline."""
    attempt = Attempt(delivery, time.monotonic() + timeout_s, stop_requested, metrics)
    # A worker that dies mid-job logs nothing else about it: this line is what ties a
    # redelivery (deliveryAttempt > 1) to the attempt that was lost.
    _log.info("job received", extra=attempt._log_extra)
    if metrics is not None:
        metrics.in_flight.inc()
        metrics.delivery_attempt.observe(delivery.delivery_attempt)
        if delivery.publish_time is not None:
            wait = (datetime.now(UTC) - delivery.publish_time).total_seconds()
            metrics.queue_wait.observe(max(0.0, wait))
    with _tracer.start_as_current_span(
        "stem.job",
        context=extract_context(delivery.attributes),
        kind=trace.SpanKind.CONSUMER,
        attributes={
            "messaging.system": "gcp_pubsub",
            "messaging.message.id": delivery.message_id,
            "stem.job_id": delivery.attributes.get("jobId", ""),
            "stem.delivery_attempt": delivery.delivery_attempt,
        },
    ) as span:
        try:
            yield attempt
        finally:
            if metrics is not None:
                metrics.in_flight.dec()
            release_free_memory()  # a long-lived worker's RSS should not ratchet up
            span.set_attribute("stem.outcome", attempt.label)
            if attempt.code != "none":
                span.set_status(trace.Status(trace.StatusCode.ERROR, attempt.code))
    if metrics is not None:
        metrics.jobs.labels(attempt.label, attempt.code).inc()
        metrics.job_duration.labels(attempt.label).observe(attempt.elapsed())
