"""Hypothesis strategies for what producers might put on ``stem-separate``.

Bodies range from arbitrary bytes and arbitrary JSON to jobs that are valid or nearly
so — a field missing, of the wrong type, out of range, or a URI built from pieces that
try to leave a bucket or prefix (``..``, ``%2F``, backslashes, control characters,
absolute paths, other schemes). Attributes are what Pub/Sub accepts on a message
(keys 1-256 bytes not starting with ``goog``, values up to 1024 bytes, at most 100).
"""

from __future__ import annotations

import json
from typing import Any, Final

from hypothesis import strategies as st

from stem_contracts import HTDEMUCS_6S_STEMS

__all__ = ["attributes", "json_values", "messages", "path", "uri"]

MAX_ATTRIBUTES: Final = 100
"""Pub/Sub's limit on attributes per message."""

_TOKENS: Final = (
    *"abcXYZ019-_.~ é∕?#",
    "..",
    ".",
    "%2F",
    "%2f",
    "%2e%2e",
    "%252F",
    "%5C",
    "\\",
    "/",
    "//",
    "\x00",
    "\n",
    "%00",
)

ids = st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9._-]{0,15}\Z")
path = st.lists(st.sampled_from(_TOKENS), min_size=1, max_size=6).map("".join)
"""Object paths made of ordinary characters and the pieces that try to escape."""


def uri(buckets: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    """``gs://bucket/path`` — and some that are not gs:// at all."""
    schemes = st.sampled_from(["gs://"] * 6 + ["https://storage.googleapis.com/", "s3://", ""])
    return st.builds(lambda s, b, p: f"{s}{b}/{p}", schemes, buckets, path)


json_values: st.SearchStrategy[Any] = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=8,
)


def _job_fields(sources: list[str], output_bucket: str) -> st.SearchStrategy[dict[str, Any]]:
    buckets = st.sampled_from([output_bucket, "forbidden-bucket", "Bad_Bucket", "x"])
    return st.fixed_dictionaries(
        {
            "jobId": ids,
            "trackId": ids,
            "sourceUri": st.sampled_from(sources) | uri(st.sampled_from(["stem-staging", "x"])),
        },
        optional={
            "outputUri": uri(buckets),
            "model": st.sampled_from(["htdemucs_6s", "htdemucs_6s", "htdemucs", "../x"]),
            "stems": st.lists(st.sampled_from([*HTDEMUCS_6S_STEMS, "kazoo"]), max_size=7),
            "format": st.sampled_from(["mp3", "wav", "flac", "ogg", 3]),
            "mp3Bitrate": st.sampled_from([96, 128, 320, 100, 0, "320"]),
            "correlationId": st.text(max_size=300),
            "submittedAt": st.sampled_from(["2026-01-01T00:00:00Z", "2026-01-01T00:00:00", "x"]),
            "schemaVersion": st.sampled_from([1, 1, 2, "1"]),
            "unknownField": json_values,
        },
    )


def messages(sources: list[str], output_bucket: str) -> st.SearchStrategy[bytes]:
    """Message bodies: mostly (nearly) valid jobs, then anything at all."""
    fields = _job_fields(sources, output_bucket)
    broken = st.tuples(fields, st.text(min_size=1, max_size=12), json_values).map(
        lambda t: {**t[0], t[1]: t[2]}
    )
    return st.one_of(
        fields.map(lambda d: json.dumps(d).encode()),
        broken.map(lambda d: json.dumps(d).encode()),
        json_values.map(lambda v: json.dumps(v).encode()),
        st.binary(max_size=64),
        st.text(max_size=64).map(str.encode),
    )


def _fits(key: str, value: str) -> bool:
    return (
        1 <= len(key.encode()) <= 256 and not key.startswith("goog") and len(value.encode()) <= 1024
    )


attribute_keys = st.text(min_size=1, max_size=12) | st.sampled_from(
    ["jobId", "trackId", "errorCode", "errorMessage", "deliveryAttempt", "traceparent"]
)

attributes: st.SearchStrategy[dict[str, str]] = st.one_of(
    st.dictionaries(attribute_keys, st.text(max_size=40), max_size=6),
    # As many as Pub/Sub allows on one message.
    st.integers(MAX_ATTRIBUTES - 5, MAX_ATTRIBUTES).map(
        lambda n: {f"k{i}": "v" * (i % 7) for i in range(n)}
    ),
    st.just({"big": "é" * 512}),
).map(lambda d: {k: v for k, v in d.items() if _fits(k, v)})
