"""The long-running consumer: streaming pull, flow control, leases, graceful shutdown.

Lease management (STYLE.md §6): the subscription's ack deadline is short
(``STEM_ACK_DEADLINE_S``, 60 s) and the client library's leaser keeps extending it while a
job runs — each extension at most that long, for at most ``max_lease_s`` (the job timeout
plus slack). So a long job stays leased, and a worker that dies (crash, OOM kill, SIGKILL)
stops extending: its message is redelivered within one ack deadline.

Flow control holds ``STEM_MAX_IN_FLIGHT`` messages (2 by default): one job separates on
the device while the next downloads and decodes; the handler's separation lock keeps the
device to one job at a time.

Shutdown in phases (SIGTERM/SIGINT): stop pulling → in-flight jobs get
``STEM_SHUTDOWN_GRACE_S`` to finish, then are stopped and nacked → publishers flushed →
exit 0. A second signal exits at once (code 130).
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import Final, Protocol

from google.cloud import pubsub_v1
from google.cloud.pubsub_v1.subscriber.message import Message
from google.cloud.pubsub_v1.types import FlowControl

from consumer.delivery import Delivery, Outcome
from consumer.settings import Settings
from consumer.telemetry import Health

__all__ = ["MessageHandler", "Worker", "flow_control_for"]

_log = logging.getLogger(__name__)

FORCED_EXIT_CODE: Final = 130


def flow_control_for(settings: Settings) -> FlowControl:
    """Flow control sized to one device and the lease rules above."""
    return FlowControl(
        max_messages=settings.max_in_flight,
        max_bytes=64 * 1024 * 1024,
        max_lease_duration=settings.max_lease_s,
        min_duration_per_lease_extension=10,
        max_duration_per_lease_extension=settings.ack_deadline_s,
    )


class MessageHandler(Protocol):
    """What the pull loop hands each delivery to: the job handler
    (:class:`consumer.handler.JobHandler`) or the upload intake
    (:class:`consumer.intake.UploadIntake`)."""

    @property
    def fatal_error(self) -> BaseException | None:
        """Set when this process cannot go on (the loop stops and exits non-zero)."""
        ...

    def handle(
        self, delivery: Delivery, *, stop_requested: Callable[[], bool] = ...
    ) -> Outcome: ...


class Worker:
    """Pulls messages from a subscription (``STEM_JOBS_SUBSCRIPTION`` unless given) and
    hands each to its handler."""

    def __init__(
        self,
        settings: Settings,
        handler: MessageHandler,
        subscriber: pubsub_v1.SubscriberClient,
        *,
        subscription: str | None = None,
        on_stopped: Callable[[], None] | None = None,
        health: Health | None = None,
    ) -> None:
        self._settings = settings
        self._handler = handler
        self._subscription = subscription or settings.jobs_subscription
        self._subscriber = subscriber
        self._on_stopped = on_stopped
        self._future: pubsub_v1.subscriber.futures.StreamingPullFuture | None = None
        self._stop_at: float | None = None
        self._stopping = threading.Event()
        self._fatal = threading.Event()
        self._signals = 0
        self.ready = threading.Event()
        self.health = health or Health()
        self.in_flight = 0
        self._lock = threading.Lock()

    # --- the callback -------------------------------------------------------------------

    def _grace_over(self) -> bool:
        return self._stop_at is not None and time.monotonic() >= self._stop_at

    def _on_message(self, message: Message) -> None:
        if self._stopping.is_set() and self._grace_over():
            message.nack()
            return
        with self._lock:
            self.in_flight += 1
        try:
            delivery = Delivery(
                data=message.data,
                attributes=dict(message.attributes),
                message_id=message.message_id,
                # None without a dead-letter policy: then every delivery counts as the first.
                delivery_attempt=message.delivery_attempt or 1,
                publish_time=message.publish_time,
            )
            outcome = self._handler.handle(delivery, stop_requested=self._grace_over)
        except BaseException:
            # The handler reports every job failure itself; reaching here is a bug.
            _log.exception("handler crashed; nacking", extra={"messageId": message.message_id})
            message.nack()
            raise
        finally:
            with self._lock:
                self.in_flight -= 1
        if outcome is Outcome.ACK:
            message.ack()
        else:
            message.nack()
        if self._handler.fatal_error is not None and not self._fatal.is_set():
            self._fatal.set()
            self.request_stop("fatal worker error")

    # --- lifecycle ------------------------------------------------------------------------

    def request_stop(self, reason: str = "requested") -> None:
        """Phase 1 of shutdown: stop pulling; in-flight jobs get the grace period."""
        if self._stopping.is_set():
            return
        _log.info("stopping", extra={"reason": reason, "graceS": self._settings.shutdown_grace_s})
        self._stop_at = time.monotonic() + self._settings.shutdown_grace_s
        self._stopping.set()
        self.ready.clear()
        self.health.set(stopping=True)
        if self._future is not None:
            # Returns at once; the pull future resolves after in-flight callbacks finish
            # (await_callbacks_on_shutdown) and held-back messages are nacked.
            self._future.cancel()

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        del frame
        self._signals += 1
        if self._signals > 1:
            _log.warning("second signal: exiting now")
            os._exit(FORCED_EXIT_CODE)
        self.request_stop(signal.Signals(signum).name)

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)

    def run(self) -> int:
        """Pull until stopped; returns the process exit code."""
        path = self._subscriber.subscription_path(
            self._settings.require_project(), self._subscription
        )
        self._future = self._subscriber.subscribe(
            path,
            self._on_message,
            flow_control=flow_control_for(self._settings),
            await_callbacks_on_shutdown=True,
        )
        if self._stopping.is_set():  # a signal arrived before we subscribed
            self._future.cancel()
        self.ready.set()
        self.health.set(pulling=True)
        _log.info("worker pulling", extra={"subscription": path})
        exit_code = 0
        try:
            self._future.result()
        except Exception as exc:  # the stream died (e.g. subscription deleted)
            if not self._stopping.is_set():
                _log.error("streaming pull failed", extra={"error": str(exc)})
                exit_code = 1
        finally:
            self.ready.clear()
            self.health.set(pulling=False)
            if self._on_stopped is not None:
                self._on_stopped()
        if self._fatal.is_set():
            exit_code = 1
        _log.info("worker stopped", extra={"exitCode": exit_code})
        return exit_code
