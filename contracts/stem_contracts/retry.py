"""Every retry policy of stem-fleet, built from one list of transient errors.

Two kinds of call, two kinds of policy — never both on the same call:

- **Calls that retry themselves** take a ``google.api_core`` :func:`api_retry` through their
  own ``retry=``/``timeout=`` parameters: ``PublisherClient.publish()`` (its batch is
  retried inside the client until the deadline) and the GAPIC calls of the DLQ commands.
  Wrapping ``publish()`` in a second, outer retry would publish the same message again
  while the first attempt may still be in flight — a duplicate job. A publish whose
  confirmation does not come within the deadline is reported, never resent.
- **Calls made with ``retry=None``** (every storage transfer: crc32c verification and the
  size cap must see each attempt) are retried by tenacity, :func:`retrying`.

Both retry exactly :data:`TRANSIENT_ERRORS`: the service or the network hiccupped.
"""

from __future__ import annotations

import logging
from typing import Final

import requests
from google.api_core import exceptions as gexc
from google.api_core import retry as gretry
from tenacity import (
    Retrying,
    before_sleep_log,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential,
    wait_random,
)

__all__ = ["TRANSIENT_ERRORS", "api_retry", "retrying"]

_log = logging.getLogger(__name__)

TRANSIENT_ERRORS: Final[tuple[type[BaseException], ...]] = (
    gexc.ServiceUnavailable,
    gexc.DeadlineExceeded,
    gexc.InternalServerError,
    gexc.BadGateway,
    gexc.GatewayTimeout,
    gexc.TooManyRequests,  # gRPC's ResourceExhausted is a subclass
    gexc.Aborted,
    ConnectionError,
    TimeoutError,
    # requests' errors are not the builtin ones; storage raises them on resets.
    requests.ConnectionError,
    requests.Timeout,
    # A connection cut off in the middle of a response body (what the storage library's
    # own retry policy also retries).
    requests.exceptions.ChunkedEncodingError,
)
"""Errors worth retrying in place: the service or the network hiccupped."""


def retrying(
    *,
    attempts: int,
    also: tuple[type[BaseException], ...] = (),
    max_wait_s: float = 5.0,
    reraise: bool = False,
    logger: logging.Logger = _log,
) -> Retrying:
    """A tenacity policy for a call made with ``retry=None``: ``attempts`` tries of the
    transient errors (and ``also``), exponential backoff with jitter, a warning per retry.

    With ``reraise`` the last error itself escapes; otherwise tenacity's ``RetryError``,
    whose ``last_attempt`` says what happened.
    """
    return Retrying(
        retry=retry_if_exception_type((*TRANSIENT_ERRORS, *also)),
        stop=stop_after_attempt(attempts),
        wait=wait_exponential(multiplier=0.2, max=max_wait_s) + wait_random(0, 0.3),
        before_sleep=before_sleep_log(logger, logging.WARNING),
        reraise=reraise,
    )


_API_TRANSIENT: Final = tuple(e for e in TRANSIENT_ERRORS if issubclass(e, gexc.GoogleAPICallError))


def api_retry(deadline_s: float, *, initial_s: float = 0.2, maximum_s: float = 5.0) -> gretry.Retry:
    """A ``google.api_core`` retry for a client call's own ``retry=`` parameter: the
    transient API errors, retried until ``deadline_s`` from the first attempt."""
    return gretry.Retry(
        predicate=gretry.if_exception_type(*_API_TRANSIENT),
        initial=initial_s,
        maximum=maximum_s,
        timeout=deadline_s,
    )
