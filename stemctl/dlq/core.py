"""The dead-letter queue (``stem-dlq``): what is in it, and replaying or dropping it safely.

The pure core (no Pub/Sub types) reads a dead letter — who it is about, why it is there,
how often it was replayed — and decides what an operator's command does with it:
:class:`DeadLetter`, :class:`Reason`, :class:`Filters`, :class:`Selection`,
:func:`replay_attributes`, :func:`parse_duration`, :func:`format_age`, :class:`Pacer`.

The edge is :class:`DlqSubscription` (synchronous pull) and :func:`republish`.

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

**Replay never loses a message.** A replayed message is published to ``stem-separate``,
the server's confirmation awaited, and only then is the DLQ copy acked; a failed publish
releases the copy. A crash between the two leaves a duplicate, never a gap.

**What a replayed message carries.** The original data and the original attributes
(``jobId``, ``trackId``, ``schemaVersion``, ``traceparent``, anything the publisher set),
*minus* the reason the dead-lettering added — our ``errorCode``/``errorMessage``/
``deliveryAttempt`` and Pub/Sub's ``CloudPubSubDeadLetterSource*`` — so a job that fails
again is dead-lettered with a fresh, true reason; *plus* ``replayCount`` (previous count
+ 1, which survives a second dead-lettering because the worker and Pub/Sub both keep the
job's attributes) and ``replayedFrom`` (the DLQ message id it was replayed from).
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import math
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import Any, Final, Literal, Self

from google.api_core import exceptions as gexc

from stem_contracts.retry import api_retry

__all__ = [
    "PUBSUB_DEAD_LETTER_PREFIX",
    "REASON_ATTRIBUTES",
    "DeadLetter",
    "DlqError",
    "DlqSubscription",
    "Filters",
    "Pacer",
    "Reason",
    "Replayed",
    "Selection",
    "check_topic",
    "format_age",
    "parse_duration",
    "replay_attributes",
    "republish",
    "window_size",
]

_log = logging.getLogger(__name__)

REASON_ATTRIBUTES: Final = frozenset({"errorCode", "errorMessage", "deliveryAttempt"})
"""What the worker adds when it dead-letters a job (consumer.handler)."""
PUBSUB_DEAD_LETTER_PREFIX: Final = "CloudPubSubDeadLetterSource"
"""Pub/Sub's own dead-letter attributes: ``…DeliveryCount``, ``…Subscription``,
``…SubscriptionProject``, ``…TopicPublishTime``."""
DELIVERY_LIMIT: Final = "delivery_limit"
"""The error code shown for messages Pub/Sub moved after too many deliveries."""
REPLAY_COUNT: Final = "replayCount"
REPLAYED_FROM: Final = "replayedFrom"


class DlqError(RuntimeError):
    """A DLQ command cannot go on; the message says why in one line."""


# --- the pure core ----------------------------------------------------------------------


@dataclass(frozen=True)
class Reason:
    """Why a message is in the DLQ, and who put it there."""

    code: str
    message: str
    delivery_attempts: int | None
    source: str
    """Pub/Sub's source subscription, ``worker`` for ours, ``-`` when nobody said."""


def _int_or_none(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


@dataclass(frozen=True, eq=False)
class DeadLetter:
    """One message in the DLQ, stripped of Pub/Sub types."""

    message_id: str
    data: bytes
    attributes: Mapping[str, str]
    publish_time: datetime
    """When it reached the DLQ (the DLQ message's publish time)."""

    @classmethod
    def from_message(cls, message: Any) -> DeadLetter:
        """From a ``google.pubsub_v1.types.PubsubMessage``."""
        published = message.publish_time
        return cls(
            message_id=str(message.message_id),
            data=bytes(message.data),
            attributes=dict(message.attributes),
            publish_time=datetime.fromtimestamp(published.timestamp(), UTC),
        )

    def _body_field(self, name: str) -> str | None:
        try:
            body = json.loads(self.data)
        except (ValueError, UnicodeDecodeError):
            return None
        value = body.get(name) if isinstance(body, dict) else None
        return value if isinstance(value, str) else None

    @property
    def job_id(self) -> str | None:
        """The ``jobId`` attribute, else the body's ``jobId`` (a raw message may lack one)."""
        return self.attributes.get("jobId") or self._body_field("jobId")

    @property
    def track_id(self) -> str | None:
        return self.attributes.get("trackId") or self._body_field("trackId")

    @property
    def replay_count(self) -> int:
        count = _int_or_none(self.attributes.get(REPLAY_COUNT))
        return max(count, 0) if count is not None else 0

    @property
    def replayed_from(self) -> str | None:
        return self.attributes.get(REPLAYED_FROM)

    @property
    def reason(self) -> Reason:
        attrs = self.attributes
        pubsub_count = _int_or_none(attrs.get(f"{PUBSUB_DEAD_LETTER_PREFIX}DeliveryCount"))
        pubsub_source = attrs.get(f"{PUBSUB_DEAD_LETTER_PREFIX}Subscription")
        if "errorCode" in attrs:  # ours: the worker decided it was permanent
            return Reason(
                code=attrs["errorCode"],
                message=attrs.get("errorMessage", ""),
                delivery_attempts=_int_or_none(attrs.get("deliveryAttempt")),
                source="worker",
            )
        if pubsub_count is not None or pubsub_source is not None:
            deliveries = f"{pubsub_count} deliveries" if pubsub_count else "too many deliveries"
            return Reason(
                code=DELIVERY_LIMIT,
                message=f"Pub/Sub gave up after {deliveries}",
                delivery_attempts=pubsub_count,
                source=pubsub_source or "-",
            )
        return Reason("unknown", "no reason recorded on the message", None, "-")

    def age(self, now: datetime) -> timedelta:
        return max(now - self.publish_time, timedelta(0))

    def summary(self, now: datetime) -> dict[str, Any]:
        """One row of ``dlq ls``: a flat, JSON-ready object (camelCase, like the wire)."""
        reason = self.reason
        return {
            "messageId": self.message_id,
            "jobId": self.job_id,
            "trackId": self.track_id,
            "errorCode": reason.code,
            "errorMessage": reason.message,
            "deliveryAttempts": reason.delivery_attempts,
            "source": reason.source,
            "publishTime": self.publish_time.isoformat(timespec="milliseconds"),
            "ageSeconds": int(self.age(now).total_seconds()),
            "replayCount": self.replay_count,
            "replayedFrom": self.replayed_from,
        }

    def detail(self, now: datetime) -> dict[str, Any]:
        """Everything about the message (``dlq show``): the summary, attributes and data.

        The data is the parsed JSON body when it is JSON, else its text when it is UTF-8,
        else base64 — ``dataEncoding`` says which.
        """
        data: Any
        try:
            data, encoding = self.data.decode(), "text"
        except UnicodeDecodeError:
            data, encoding = base64.b64encode(self.data).decode(), "base64"
        else:
            with contextlib.suppress(ValueError):
                data, encoding = json.loads(data), "json"
        return {
            **self.summary(now),
            "attributes": dict(sorted(self.attributes.items())),
            "dataEncoding": encoding,
            "dataBytes": len(self.data),
            "data": data,
        }


def replay_attributes(letter: DeadLetter) -> dict[str, str]:
    """The attributes a replayed message is published with (see the module docstring)."""
    kept = {
        key: value
        for key, value in letter.attributes.items()
        if key not in REASON_ATTRIBUTES and not key.startswith(PUBSUB_DEAD_LETTER_PREFIX)
    }
    kept[REPLAY_COUNT] = str(letter.replay_count + 1)
    kept[REPLAYED_FROM] = letter.message_id
    return kept


_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")
_UNIT_SECONDS: Final = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(text: str) -> timedelta:
    """``30s``, ``30m``, ``2h``, ``1d``, ``1w`` and sums like ``1h30m``; ValueError otherwise."""
    compact = text.strip().lower().replace(" ", "")
    parts = _DURATION_PART.findall(compact)
    if not compact or "".join(n + u for n, u in parts) != compact:
        raise ValueError(
            f"{text!r} is not a duration: use a number and a unit s/m/h/d/w, e.g. 30m, 2h, 1d"
        )
    return timedelta(seconds=sum(float(n) * _UNIT_SECONDS[u] for n, u in parts))


def format_age(age: timedelta) -> str:
    """A short age for a table: ``45s``, ``12m``, ``3h05m``, ``2d04h``."""
    seconds = int(age.total_seconds())
    if seconds < 60:
        return f"{seconds}s"
    minutes, hours, days = seconds // 60, seconds // 3600, seconds // 86400
    if hours == 0:
        return f"{minutes}m"
    if days == 0:
        return f"{hours}h{minutes % 60:02d}m" if minutes % 60 else f"{hours}h"
    return f"{days}d{hours % 24:02d}h" if hours % 24 else f"{days}d"


@dataclass(frozen=True)
class Filters:
    """Which messages a command acts on: OR within one kind, AND across kinds; empty = all."""

    job_ids: frozenset[str] = frozenset()
    message_ids: frozenset[str] = frozenset()
    error_codes: frozenset[str] = frozenset()
    older_than: timedelta | None = None

    def matches(self, letter: DeadLetter, now: datetime) -> bool:
        if self.job_ids and letter.job_id not in self.job_ids:
            return False
        if self.message_ids and letter.message_id not in self.message_ids:
            return False
        if self.error_codes and letter.reason.code not in self.error_codes:
            return False
        return self.older_than is None or letter.age(now) >= self.older_than

    def describe(self) -> str:
        parts = [
            *(f"jobId={j}" for j in sorted(self.job_ids)),
            *(f"messageId={m}" for m in sorted(self.message_ids)),
            *(f"errorCode={c}" for c in sorted(self.error_codes)),
        ]
        if self.older_than is not None:
            parts.append(f"older than {format_age(self.older_than)}")
        return ", ".join(parts) or "all messages"


Verdict = Literal["selected", "refused", "untouched"]


@dataclass
class Selection:
    """Sorts scanned messages into what a command acts on, refuses, and leaves alone.

    ``max_replays`` (replay only) refuses messages already replayed that many times, unless
    ``force``. ``limit`` caps the selected messages; once :attr:`full`, the scan stops and
    anything else offered is left alone.
    """

    filters: Filters
    now: datetime
    limit: int | None = None
    max_replays: int | None = None
    force: bool = False
    selected: list[DeadLetter] = field(default_factory=list)
    refused: list[DeadLetter] = field(default_factory=list)
    untouched: list[DeadLetter] = field(default_factory=list)

    @property
    def full(self) -> bool:
        return self.limit is not None and len(self.selected) >= self.limit

    def offer(self, letter: DeadLetter) -> Verdict:
        if self.full or not self.filters.matches(letter, self.now):
            self.untouched.append(letter)
            return "untouched"
        if self.over_max_replays(letter):
            self.refused.append(letter)
            return "refused"
        self.selected.append(letter)
        return "selected"

    def over_max_replays(self, letter: DeadLetter) -> bool:
        return (
            self.max_replays is not None
            and not self.force
            and letter.replay_count >= self.max_replays
        )


class Pacer:
    """At most ``rate`` calls of :meth:`wait` per second (None = no limit)."""

    def __init__(
        self,
        rate: float | None,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if rate is not None and rate <= 0:
            raise ValueError("rate must be positive")
        self._interval = 1.0 / rate if rate else 0.0
        self._clock = clock
        self._sleep = sleep
        self._next: float | None = None

    def wait(self) -> None:
        now = self._clock()
        if self._next is not None and now < self._next:
            self._sleep(self._next - now)
            now = self._next
        self._next = now + self._interval


def window_size(rate: float | None, maximum: int = 50) -> int:
    """How many publishes may be in flight before their DLQ copies are acked.

    About one second's worth at ``rate``, so an interrupted replay leaves at most that
    many duplicates; unlimited rate → ``maximum``.
    """
    if rate is None:
        return maximum
    return max(1, min(maximum, math.floor(rate)))


def _chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


# --- the Pub/Sub edge -------------------------------------------------------------------

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
            for chunk in _chunks(ack_ids, _ACK_IDS_PER_CALL):
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
        for chunk in _chunks(ack_ids, _ACK_IDS_PER_CALL):
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
    for window in _chunks(letters, window_size(rate)):
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
