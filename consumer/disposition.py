"""What to do with a message whose job failed: one pure function, tested as a table."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from consumer.errors import FatalWorkerError, JobCancelled, PermanentError, StemError

__all__ = ["Action", "Disposition", "decide"]


class Action(enum.Enum):
    DEAD_LETTER = "dead_letter"
    """Publish to stem-dlq with the reason, then ack: retrying cannot help."""
    ACK = "ack"
    """Ack: the job ended as somebody asked (cancelled); nothing to retry or dead-letter."""
    RETRY = "retry"
    """Nack: Pub/Sub redelivers after the retry backoff, and dead-letters at the limit."""


@dataclass(frozen=True)
class Disposition:
    action: Action
    code: str
    message: str
    retryable: bool
    final: bool
    """True when no further attempt will follow (goes into ``stems.failed``)."""
    worker_must_exit: bool = False


def decide(error: BaseException, delivery_attempt: int, max_delivery_attempts: int) -> Disposition:
    """The disposition of ``error`` on delivery ``delivery_attempt`` (1-based).

    - a cancelled job is acked, final, whatever the attempt: it is not an error to keep;
    - permanent errors are dead-lettered by us, at once, whatever the attempt;
    - transient and unknown errors are retried; the attempt that reaches the
      delivery-attempt limit is ``final`` (Pub/Sub dead-letters it after the nack);
    - a fatal worker error also retries the *message* (the job may be fine) but tells the
      worker to exit.
    """
    message = error.message if isinstance(error, StemError) else f"{type(error).__name__}: {error}"
    code = error.code if isinstance(error, StemError) else "internal_error"
    if isinstance(error, JobCancelled):
        return Disposition(Action.ACK, code, message, retryable=False, final=True)
    if isinstance(error, PermanentError):
        return Disposition(Action.DEAD_LETTER, code, message, retryable=False, final=True)
    last = delivery_attempt >= max_delivery_attempts
    if isinstance(error, FatalWorkerError):
        return Disposition(
            Action.RETRY, code, message, retryable=True, final=last, worker_must_exit=True
        )
    return Disposition(Action.RETRY, code, message, retryable=True, final=last)
