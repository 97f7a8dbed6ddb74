"""Reporting a failed attempt: ``stems.failed``, the dead letter, and ack or nack.

The disposition comes from :func:`consumer.disposition.decide`; this module carries it out.
When the outcome cannot even be reported (the publish of ``stems.failed`` or of the dead
letter is not confirmed) the message is nacked: Pub/Sub redelivers it rather than lose it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Final

from consumer.delivery import Delivery, Outcome
from consumer.disposition import Action, Disposition, decide
from consumer.errors import PublishFailed
from consumer.events import EventPublisher, JobIds
from stem_contracts import ErrorInfo, StemsFailed, Usage

__all__ = ["REASON_ATTRIBUTES", "dead_letter_attributes", "report_failure"]

_log = logging.getLogger(__name__)

# Pub/Sub refuses an attribute value over 1024 bytes (bytes, not characters), and a
# message with more than 100 attributes.
_MAX_ATTRIBUTE_BYTES: Final = 1024
_MAX_ATTRIBUTES: Final = 100
_IDENTIFYING_ATTRIBUTES: Final = ("jobId", "trackId", "schemaVersion", "traceparent")
REASON_ATTRIBUTES: Final = ("errorCode", "errorMessage", "deliveryAttempt")
"""What a dead letter of ours carries besides the original attributes."""


def _truncate_utf8(text: str, max_bytes: int) -> str:
    """``text`` cut to at most ``max_bytes`` of UTF-8, never inside a character."""
    return text.encode()[:max_bytes].decode(errors="ignore")


def dead_letter_attributes(
    original: Mapping[str, str], disposition: Disposition, delivery_attempt: int
) -> dict[str, str]:
    """The original attributes plus the reason, within Pub/Sub's attribute limit.

    A message may already carry the maximum; its reason matters more than its last
    extra attributes (the body is kept whole, and the identifying attributes first).
    """
    reasons = dict(
        zip(
            REASON_ATTRIBUTES,
            (
                disposition.code,
                _truncate_utf8(disposition.message, _MAX_ATTRIBUTE_BYTES),
                str(delivery_attempt),
            ),
            strict=True,
        )
    )
    kept = {k: v for k, v in original.items() if k not in reasons}
    room = _MAX_ATTRIBUTES - len(reasons)
    if len(kept) > room:
        order = sorted(kept, key=lambda k: k not in _IDENTIFYING_ATTRIBUTES)  # stable
        kept = {k: kept[k] for k in order[:room]}
    return {**kept, **reasons}


def report_failure(
    events: EventPublisher,
    delivery: Delivery,
    ids: JobIds | None,
    error: Exception,
    *,
    max_delivery_attempts: int,
    usage: Usage | None = None,
) -> tuple[Disposition, Outcome]:
    """Decide what ``error`` means for this delivery, report it, and say ack or nack.

    ``ids`` is ``None`` for a body without readable ids: it gets a dead letter (or a
    retry) but no ``stems.failed``, which would have nobody to name. ``usage`` is what
    the attempt used, reported on its ``stems.failed``.
    """
    disposition = decide(error, delivery.delivery_attempt, max_delivery_attempts)
    try:
        if ids is not None:
            events.publish_result(
                StemsFailed(
                    **ids.header(delivery.delivery_attempt),
                    error=ErrorInfo(
                        code=disposition.code,
                        message=disposition.message,
                        retryable=disposition.retryable,
                    ),
                    final=disposition.final,
                    failed_at=datetime.now(UTC),
                    usage=usage,
                )
            )
        if disposition.action is Action.DEAD_LETTER:
            events.dead_letter(
                delivery.data,
                dead_letter_attributes(delivery.attributes, disposition, delivery.delivery_attempt),
            )
            return disposition, Outcome.ACK
        if disposition.action is Action.ACK:
            return disposition, Outcome.ACK
    except PublishFailed:
        _log.exception("could not report a failed job", extra={"messageId": delivery.message_id})
    return disposition, Outcome.NACK
