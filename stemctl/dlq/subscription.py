"""The dead-letter queue's Pub/Sub edge: holding messages, settling them, replaying them.

**Holding, not peeking.** Pub/Sub has no "peek": reading a message leases it. Releasing a
message (ack deadline 0) makes the emulator redeliver it at once, so a loop that pulls,
releases, pulls again would see the same messages forever. Every message a command pulls
is therefore *held* — its lease extended in the background — until the command acks it
or, at the very end, releases it; the scan stops once a few pulls in a row bring nothing
new (messages are also de-duplicated by id, for lapsed leases and Pub/Sub's own duplicate
deliveries). On real Pub/Sub an empty immediate pull does not prove the subscription
empty, so there the scan waits longer before it ends (``idle_rounds``, ``idle_pause_s``).
Leases are the subscription's own ack deadline, extended by a background thread; a
``stemctl`` killed with SIGKILL releases nothing, and its messages come back once that
deadline passes (60 s as provisioned).

**Why synchronous pull, not the client's streaming ``subscribe()``.** The streaming pull
manager would hold and extend leases for us, but it is built to *consume*: it delivers at
its own pace under flow control (so a listing of N messages must be sized in advance), and
it cannot say "that was everything" — a scan would end on a guessed idle time. A command
needs a bounded scan that knows when it has seen the subscription once, and an exact set of
messages to ack or release at the end; the lease extension it needs is the ~20 lines of
``_extend_leases``. The client's machinery is used where it fits: every RPC takes the
library's own ``retry=`` (``stem_contracts.retry.api_retry``), and replay publishes through
``PublisherClient.publish`` and its retries, never a second layer.

**Replay never loses a message.** A replayed message is published to ``stem-separate``,
the server's confirmation awaited, and only then is the DLQ copy acked; a failed publish
releases the copy. A crash between the two leaves a duplicate, never a gap.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Final, Self

from google.api_core import exceptions as gexc

from stem_contracts.retry import api_retry
from stemctl.dlq.letters import DeadLetter, DlqError, Pacer, chunks, replay_attributes, window_size

__all__ = ["DlqSubscription", "Replayed", "check_topic", "republish"]

_log = logging.getLogger(__name__)

# Short and bounded: an operator wants a clear error quickly, not a minute of retries.
_RPC_TIMEOUT_S: Final = 30.0
_ACK_IDS_PER_CALL: Final = 1000  # well under the request-size limit


class DlqSubscription:
    """The DLQ subscription through synchronous pull (see "Holding, not peeking" above).

    Use as a context manager: leaving it releases every message still held.
    """

    def __init__(
        self,
        client: Any,
        path: str,
        *,
        lease_s: int,
        max_messages: int = 100,
        idle_rounds: int = 3,
        idle_pause_s: float = 0.1,
    ) -> None:
        self._client = client
        self.path = path
        self.lease_s = lease_s
        self._max_messages = max_messages
        self._idle_rounds = idle_rounds
        self._idle_pause_s = idle_pause_s
        # message id → every ack id it was delivered with (a lapsed lease brings a new one;
        # only the newest is guaranteed to work, the others are harmless).
        self._held: dict[str, list[str]] = {}
        # Held across the RPCs, so a lease extension can never land after a release.
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._leaser = threading.Thread(target=self._extend_leases, name="dlq-leaser", daemon=True)

    @classmethod
    def open(
        cls, client: Any, project: str, subscription: str, *, endpoint: str, **kwargs: Any
    ) -> DlqSubscription:
        """Check that the subscription exists; its ack deadline becomes the lease.

        ``endpoint`` (the emulator's host:port, or Pub/Sub's) is only named in errors.
        """
        path = client.subscription_path(project, subscription)
        try:
            sub = client.get_subscription(
                request={"subscription": path}, timeout=5.0, retry=api_retry(3.0)
            )
        except gexc.NotFound:
            raise DlqError(
                f"subscription {subscription} does not exist in project {project} — "
                "run `stemctl infra apply` first"
            ) from None
        except gexc.RetryError as exc:
            raise DlqError(f"Pub/Sub unreachable at {endpoint}: {exc.cause or exc}") from None
        return cls(client, path, lease_s=int(sub.ack_deadline_seconds) or 60, **kwargs)

    # --- context ---------------------------------------------------------------------------

    def __enter__(self) -> Self:
        self._leaser.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Stop extending leases and release every message still held (best effort)."""
        self._stop.set()
        if self._leaser.is_alive():
            self._leaser.join()
        with self._lock:
            held, self._held = self._held, {}
            ack_ids = [a for ids in held.values() for a in ids]
            try:
                self._modify(ack_ids, 0)
            except gexc.GoogleAPICallError as exc:
                _log.warning(
                    "could not release %d messages; they come back after %d s",
                    len(held),
                    self.lease_s,
                    extra={"error": str(exc)},
                )

    # --- reading ---------------------------------------------------------------------------

    def scan(self) -> Iterator[DeadLetter]:
        """Every message in the subscription, once each, held until acked or released.

        Stops after ``idle_rounds`` pulls in a row bring no message not already seen.
        Stop iterating early (a limit was reached) and the rest stays untouched.
        """
        seen: set[str] = set()
        idle = 0
        while idle < self._idle_rounds:
            response = self._client.pull(
                request={
                    "subscription": self.path,
                    "max_messages": self._max_messages,
                    # A blocking pull on an empty subscription waits seconds on the emulator.
                    "return_immediately": True,
                },
                timeout=_RPC_TIMEOUT_S,
                retry=api_retry(_RPC_TIMEOUT_S),
            )
            new: list[DeadLetter] = []
            with self._lock:
                for received in response.received_messages:
                    message_id = str(received.message.message_id)
                    self._held.setdefault(message_id, []).append(received.ack_id)
                    if message_id not in seen:
                        seen.add(message_id)
                        new.append(DeadLetter.from_message(received.message))
            if new:
                idle = 0
                yield from new
            else:
                idle += 1
                if idle < self._idle_rounds:
                    time.sleep(self._idle_pause_s)

    @property
    def held(self) -> int:
        with self._lock:
            return len(self._held)

    # --- settling --------------------------------------------------------------------------

    def ack(self, letters: Iterable[DeadLetter]) -> None:
        """Acknowledge (drop) these messages. Raises GoogleAPICallError if that fails."""
        with self._lock:
            ack_ids = self._take(letters)
            for chunk in chunks(ack_ids, _ACK_IDS_PER_CALL):
                self._client.acknowledge(
                    request={"subscription": self.path, "ack_ids": list(chunk)},
                    timeout=_RPC_TIMEOUT_S,
                    retry=api_retry(_RPC_TIMEOUT_S),
                )

    def release(self, letters: Iterable[DeadLetter]) -> None:
        """Make these messages deliverable again, now (best effort: else at the deadline)."""
        with self._lock:
            ack_ids = self._take(letters)
            try:
                self._modify(ack_ids, 0)
            except gexc.GoogleAPICallError as exc:
                _log.warning("could not release messages", extra={"error": str(exc)})

    def _take(self, letters: Iterable[DeadLetter]) -> list[str]:
        ack_ids: list[str] = []
        for letter in letters:
            ack_ids += self._held.pop(letter.message_id, [])
        return ack_ids

    def _modify(self, ack_ids: Sequence[str], deadline_s: int) -> None:
        for chunk in chunks(ack_ids, _ACK_IDS_PER_CALL):
            self._client.modify_ack_deadline(
                request={
                    "subscription": self.path,
                    "ack_ids": list(chunk),
                    "ack_deadline_seconds": deadline_s,
                },
                timeout=_RPC_TIMEOUT_S,
                retry=api_retry(_RPC_TIMEOUT_S),
            )

    def _extend_leases(self) -> None:
        # A third of the lease: two extensions may fail before a message slips away.
        while not self._stop.wait(max(self.lease_s / 3, 1.0)):
            with self._lock:
                ack_ids = [a for ids in self._held.values() for a in ids]
                try:
                    self._modify(ack_ids, self.lease_s)
                except gexc.GoogleAPICallError as exc:
                    _log.warning("could not extend DLQ leases", extra={"error": str(exc)})


def check_topic(publisher: Any, project: str, topic: str, *, endpoint: str) -> str:
    """The topic's path, once it is known to exist (replaying into nothing would fail)."""
    path: str = publisher.topic_path(project, topic)
    try:
        publisher.get_topic(request={"topic": path}, timeout=5.0, retry=api_retry(3.0))
    except gexc.NotFound:
        raise DlqError(
            f"topic {topic} does not exist in project {project} — run `stemctl infra apply` first"
        ) from None
    except gexc.RetryError as exc:
        raise DlqError(f"Pub/Sub unreachable at {endpoint}: {exc.cause or exc}") from None
    return path


@dataclass(frozen=True)
class Replayed:
    """What became of one message: its new id on the jobs topic, or why not."""

    letter: DeadLetter
    new_message_id: str | None = None
    error: str | None = None
    dlq_copy_kept: bool = False
    """The publish was confirmed but the ack of the DLQ copy failed: it will come back."""

    @property
    def ok(self) -> bool:
        return self.new_message_id is not None


# Errors after which every further publish would fail the same way.
_ABORT_ERRORS: Final = (gexc.NotFound, gexc.PermissionDenied, gexc.Unauthenticated)


def republish(
    letters: Sequence[DeadLetter],
    *,
    dlq: DlqSubscription,
    publisher: Any,
    topic_path: str,
    rate: float | None = None,
    timeout_s: float = 60.0,
    on_result: Callable[[Replayed], None] = lambda _: None,
) -> list[Replayed]:
    """Publish each letter to ``topic_path``; ack its DLQ copy only once confirmed.

    Works in windows of :func:`window_size`: publish the window (paced to ``rate`` per
    second), wait for every confirmation, ack the confirmed copies, release the failed
    ones. Stops early (the rest stays held, and is released by the caller's ``dlq``) when
    a failure means every further publish would fail too (topic gone, no permission).
    """
    pacer = Pacer(rate)
    outcomes: list[Replayed] = []
    for window in chunks(letters, window_size(rate)):
        pending: list[tuple[DeadLetter, Any]] = []
        failed: list[Replayed] = []
        for letter in window:
            pacer.wait()
            try:
                future = publisher.publish(
                    topic_path,
                    letter.data,
                    retry=api_retry(timeout_s),  # the client retries; never a second publish
                    **replay_attributes(letter),
                )
            except Exception as exc:  # refused before sending (e.g. an attribute too large)
                failed.append(Replayed(letter, error=f"{type(exc).__name__}: {exc}"))
            else:
                pending.append((letter, future))
        confirmed: list[Replayed] = []
        abort: BaseException | None = None
        for letter, future in pending:
            try:
                confirmed.append(Replayed(letter, new_message_id=str(future.result(timeout_s))))
            except Exception as exc:  # not confirmed: the DLQ copy must stay
                failed.append(Replayed(letter, error=f"{type(exc).__name__}: {exc}"))
                if isinstance(exc, _ABORT_ERRORS):
                    abort = exc
        dlq.release(r.letter for r in failed)
        if confirmed:
            try:
                dlq.ack(r.letter for r in confirmed)
            except gexc.GoogleAPICallError as exc:
                # Republished but still in the DLQ: a duplicate later, never a loss.
                _log.warning("could not ack replayed DLQ copies", extra={"error": str(exc)})
                confirmed = [
                    Replayed(r.letter, r.new_message_id, dlq_copy_kept=True) for r in confirmed
                ]
        for outcome in (*confirmed, *failed):
            outcomes.append(outcome)
            on_result(outcome)
        if abort is not None:
            break
    return outcomes
