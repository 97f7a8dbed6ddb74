"""Encoding and decoding of Pub/Sub messages: body bytes plus string attributes."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Final, NamedTuple, TypeVar, get_args

from pydantic import TypeAdapter, ValidationError

from stem_contracts.models import (
    SCHEMA_VERSION,
    Job,
    ResultEvent,
    StemsFailed,
    StemsProcessed,
    StemsProcessing,
    StemsProgress,
)

__all__ = [
    "MAX_MESSAGE_BYTES",
    "ContractError",
    "FieldProblem",
    "decode_event",
    "decode_job",
    "encode",
]

MAX_MESSAGE_BYTES: Final = 1_000_000
"""Bodies larger than this are refused before parsing (Pub/Sub's own limit is 10 MB)."""

_EVENT_ADAPTER: Final[TypeAdapter[ResultEvent]] = TypeAdapter(ResultEvent)
_T = TypeVar("_T")
_EVENT_TYPES: Final = frozenset(
    variant.model_fields["event_type"].default
    for variant in get_args(get_args(ResultEvent)[0])  # Annotated[A | B | ..., Field]
)
"""The ``eventType`` tags of :data:`ResultEvent`'s variants."""


class FieldProblem(NamedTuple):
    """Which wire field is wrong (camelCase, dotted for nested fields) and why."""

    field: str
    reason: str


class ContractError(ValueError):
    """A message does not satisfy the wire contract.

    ``problems`` lists every ``(field, reason)`` found; ``str()`` names them all, e.g.
    ``"jobId: String should match pattern ...; mp3Bitrate: Input should be ≤ 320"``.
    """

    def __init__(self, problems: list[FieldProblem]) -> None:
        self.problems = problems
        super().__init__("; ".join(f"{p.field}: {p.reason}" for p in problems))

    @property
    def fields(self) -> list[str]:
        """The names of the offending wire fields (``"body"`` when it is not JSON at all)."""
        return [p.field for p in self.problems]

    @classmethod
    def of_body(cls, reason: str) -> ContractError:
        return cls([FieldProblem("body", reason)])

    @classmethod
    def from_validation(cls, exc: ValidationError) -> ContractError:
        problems = []
        for err in exc.errors(include_url=False):
            loc = list(err["loc"])
            # The discriminated union puts the variant tag first in the location.
            if loc and loc[0] in _EVENT_TYPES:
                loc = loc[1:]
            name = ""
            for part in loc:
                name += f"[{part}]" if isinstance(part, int) else f".{part}"
            problems.append(FieldProblem(name.lstrip(".") or "body", err["msg"]))
        return cls(problems)


def encode(
    message: Job | StemsProcessing | StemsProgress | StemsProcessed | StemsFailed,
) -> tuple[bytes, dict[str, str]]:
    """Encode a job or an event as ``(data, attributes)`` for ``PublisherClient.publish``.

    Jobs carry ``jobId``, ``trackId`` and ``schemaVersion`` attributes; events carry
    ``eventType``, ``jobId``, ``trackId`` and, on ``stems.processed``, ``modelVersion``,
    so subscribers can filter without parsing bodies.
    """
    data = message.model_dump_json(by_alias=True).encode()
    attributes = {
        "jobId": message.job_id,
        "trackId": message.track_id,
        "schemaVersion": str(SCHEMA_VERSION),
    }
    if not isinstance(message, Job):
        attributes["eventType"] = message.event_type
    if isinstance(message, StemsProcessed):
        attributes["modelVersion"] = message.model_version
    return data, attributes


def _load_json(data: bytes) -> object:
    if len(data) > MAX_MESSAGE_BYTES:
        raise ContractError.of_body(
            f"message is {len(data)} bytes, more than the {MAX_MESSAGE_BYTES} accepted"
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ContractError.of_body(f"not UTF-8 ({exc.reason} at byte {exc.start})") from exc
    try:
        value: object = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ContractError.of_body(f"not JSON ({exc.msg} at line {exc.lineno})") from exc
    if not isinstance(value, dict):
        raise ContractError.of_body(f"must be a JSON object, got {type(value).__name__}")
    return value


def _validate(validator: Callable[[object], _T], value: object) -> _T:
    try:
        return validator(value)
    except ValidationError as exc:
        raise ContractError.from_validation(exc) from exc


def decode_job(data: bytes, attributes: Mapping[str, str] | None = None) -> Job:
    """Decode a job body; raises :class:`ContractError` naming every bad field.

    ``attributes`` are accepted for symmetry with :func:`encode`; the body is the truth.
    """
    del attributes
    return _validate(Job.model_validate, _load_json(data))


def decode_event(data: bytes, attributes: Mapping[str, str] | None = None) -> ResultEvent:
    """Decode any result event body (dispatching on ``eventType``).

    Raises :class:`ContractError` for a malformed body or an unknown ``eventType``.
    """
    del attributes
    return _validate(_EVENT_ADAPTER.validate_python, _load_json(data))
