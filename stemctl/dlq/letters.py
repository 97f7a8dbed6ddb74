"""The dead-letter queue's pure core: what a dead letter is, and what a command does with it.

No Pub/Sub types: :class:`DeadLetter` reads a message — who it is about, why it is there
(:class:`Reason`), how often it was replayed; :class:`Filters` and :class:`Selection` decide
what an operator's command acts on; :func:`replay_attributes` is the replay plan of one
message; :func:`parse_duration`, :func:`format_age`, :class:`Pacer` and :func:`window_size`
shape the command's pace and output. The edge is :mod:`stemctl.dlq.subscription`.

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
import math
import re
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final, Literal

from consumer import reporting

__all__ = [
    "DELIVERY_LIMIT",
    "PUBSUB_DEAD_LETTER_PREFIX",
    "REASON_ATTRIBUTES",
    "DeadLetter",
    "DlqError",
    "Filters",
    "Pacer",
    "Reason",
    "Selection",
    "chunks",
    "format_age",
    "parse_duration",
    "replay_attributes",
    "window_size",
]

REASON_ATTRIBUTES: Final = frozenset(reporting.REASON_ATTRIBUTES)
"""What the worker adds when it dead-letters a job (``consumer.reporting``)."""
PUBSUB_DEAD_LETTER_PREFIX: Final = "CloudPubSubDeadLetterSource"
"""Pub/Sub's own dead-letter attributes: ``…DeliveryCount``, ``…Subscription``,
``…SubscriptionProject``, ``…TopicPublishTime``."""
DELIVERY_LIMIT: Final = "delivery_limit"
"""The error code shown for messages Pub/Sub moved after too many deliveries."""
REPLAY_COUNT: Final = "replayCount"
REPLAYED_FROM: Final = "replayedFrom"


class DlqError(RuntimeError):
    """A DLQ command cannot go on; the message says why in one line."""


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


def chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
