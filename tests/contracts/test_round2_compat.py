"""Round 2's additions are additive: readers of stem-contracts 1.0 accept the new events, new
readers accept old events, and every optional field says whether its ``None`` is left out
(not given) or written as ``null`` (a value in its own right).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

import jsonschema
import pytest
from pydantic import BaseModel

from stem_contracts import (
    ErrorInfo,
    Job,
    SourceInfo,
    StemFile,
    StemsFailed,
    StemsProcessed,
    StemsProcessing,
    StemsProgress,
    Usage,
    decode_event,
    encode,
)

RELEASED_1_0: Final = Path(__file__).parent / "data" / "result-event.v1.0.0.json"
"""The result-event schema as stem-contracts 1.0.0 shipped it (commit ad26929)."""

MEANINGFUL_NULLS: Final = {
    (StemFile, "loudness_lufs"),  # nothing passed the BS.1770 gates
    (StemFile, "peak_dbfs"),  # digital silence
    (Usage, "audio_seconds"),  # the source was never decoded
    (Usage, "cost_usd"),  # no price configured
}

PREFIX = "gs://stem-output/stems/t/j"


def stem(name: str = "vocals", **analysis: object) -> StemFile:
    return StemFile(
        name=name,
        uri=f"{PREFIX}/{name}.mp3",
        format="mp3",
        content_type="audio/mpeg",
        size_bytes=1,
        duration_seconds=1.0,
        sample_rate=44100,
        channels=2,
        sha256="0" * 64,
        **analysis,
    )


USAGE = Usage(audio_seconds=None, device_seconds=0, worker_seconds=1.5, device="cpu", cost_usd=None)
PROCESSED = StemsProcessed(
    job_id="j",
    track_id="t",
    attempt=1,
    model_version="demucs-htdemucs-6s",
    stems=(
        stem(loudness_lufs=None, peak_dbfs=None, silent=True, peaks_uri=f"{PREFIX}/v.peaks.json"),
        stem("drums", loudness_lufs=-14.2, peak_dbfs=-0.5, silent=False),
    ),
    source=SourceInfo(
        uri="gs://stem-staging/a.wav", duration_seconds=1, sample_rate=44100, channels=2
    ),
    processing_time_ms=10,
    completed_at=datetime(2026, 12, 2, tzinfo=UTC),
    usage=USAGE,
)
FAILED = StemsFailed(
    job_id="j",
    track_id="t",
    attempt=2,
    error=ErrorInfo(code="source_missing", message="gone", retryable=False),
    final=True,
    failed_at=datetime(2026, 12, 2, tzinfo=UTC),
    usage=USAGE,
)


@pytest.mark.parametrize("event", [PROCESSED, FAILED], ids=["processed", "failed"])
def test_release_1_0_readers_accept_the_new_events(event: StemsProcessed | StemsFailed) -> None:
    data, _ = encode(event)
    jsonschema.validate(json.loads(data), json.loads(RELEASED_1_0.read_text()))


def test_meaningful_nulls_are_on_the_wire_and_unknowns_are_not() -> None:
    body = json.loads(encode(PROCESSED)[0])

    assert body["usage"]["costUsd"] is None
    assert body["usage"]["audioSeconds"] is None
    silent, drums = body["stems"]
    assert (silent["loudnessLufs"], silent["peakDbfs"], silent["silent"]) == (None, None, True)
    assert "peaksUri" not in drums  # not given: left out
    assert "correlationId" not in body
    assert decode_event(encode(PROCESSED)[0]) == PROCESSED


def test_an_event_of_release_1_0_reads_as_one_without_analysis_or_usage() -> None:
    body = json.loads(encode(PROCESSED)[0])
    del body["usage"]
    for item in body["stems"]:
        for key in ("loudnessLufs", "peakDbfs", "silent", "peaksUri"):
            item.pop(key, None)

    old = decode_event(json.dumps(body).encode())

    assert isinstance(old, StemsProcessed)
    assert old.usage is None
    assert all(s.silent is None and s.loudness_lufs is None for s in old.stems)
    # re-encoded, it does not claim measures it never had
    assert "loudnessLufs" not in json.loads(encode(old)[0])["stems"][0]


WIRE_MODELS: Final[tuple[type[BaseModel], ...]] = (
    Job,
    StemsProcessing,
    StemsProgress,
    StemsProcessed,
    StemsFailed,
    StemFile,
    SourceInfo,
    Usage,
    ErrorInfo,
)


def test_every_optional_field_decides_what_its_none_means() -> None:
    undecided = [
        f"{model.__name__}.{name}"
        for model in WIRE_MODELS
        for name, field in model.model_fields.items()
        if field.default is None
        and field.exclude_if is None
        and (model, name) not in MEANINGFUL_NULLS
        and not any((base, name) in MEANINGFUL_NULLS for base in model.__mro__)
    ]
    assert undecided == [], (
        "None of these fields is written as null: use _unset() (left out when None) "
        "or list the field in MEANINGFUL_NULLS"
    )
