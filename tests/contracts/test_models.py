"""The wire models: round trips, defaults, and every validation rule naming its field."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from stem_contracts import (
    ContractError,
    ErrorInfo,
    SourceInfo,
    StemFile,
    StemsFailed,
    StemsProcessed,
    StemsProcessing,
    StemsProgress,
    decode_event,
    decode_job,
    encode,
    model_version,
)

VALID_JOB = {
    "schemaVersion": 1,
    "jobId": "job-1",
    "trackId": "track.42",
    "sourceUri": "gs://stem-staging/uploads/track.42/song.flac",
}
SHA = "a" * 64


def _processed() -> StemsProcessed:
    return StemsProcessed(
        job_id="job-1",
        track_id="track-1",
        correlation_id="corr-9",
        attempt=2,
        model_version="demucs-htdemucs-6s",
        stems=(
            StemFile(
                name="vocals",
                uri="gs://out-bucket/stems/track-1/job-1/vocals.mp3",
                format="mp3",
                content_type="audio/mpeg",
                size_bytes=1234,
                duration_seconds=3.0,
                sample_rate=44100,
                channels=2,
                sha256=SHA,
            ),
        ),
        source=SourceInfo(
            uri="gs://in-bucket/a.wav", duration_seconds=3.0, sample_rate=48000, channels=1
        ),
        processing_time_ms=4100,
        completed_at=datetime(2026, 11, 22, 12, 0, tzinfo=UTC),
    )


def test_job_round_trips_with_camel_case_on_the_wire_and_defaults_filled() -> None:
    job = decode_job(json.dumps(VALID_JOB).encode())
    assert job.model == "htdemucs_6s"
    assert job.format == "mp3"
    assert job.mp3_bitrate == 320
    assert job.stems is None
    data, attributes = encode(job)
    wire = json.loads(data)
    assert wire["jobId"] == "job-1"
    assert wire["sourceUri"] == VALID_JOB["sourceUri"]
    assert "job_id" not in wire
    assert attributes == {"jobId": "job-1", "trackId": "track.42", "schemaVersion": "1"}
    assert decode_job(data) == job


@pytest.mark.parametrize(
    "event",
    [
        StemsProcessing(job_id="j-1", track_id="t-1", attempt=1),
        StemsProgress(
            job_id="j-1",
            track_id="t-1",
            attempt=1,
            percent=42.5,
            reported_at=datetime(2026, 1, 1, tzinfo=UTC),
        ),
        _processed(),
        StemsFailed(
            job_id="j-1",
            track_id="t-1",
            attempt=5,
            error=ErrorInfo(code="corrupt_audio", message="bad header", retryable=False),
            final=True,
            failed_at=datetime(2026, 1, 1, tzinfo=UTC),
        ),
    ],
    ids=["processing", "progress", "processed", "failed"],
)
def test_every_result_event_round_trips_and_carries_its_type_attribute(
    event: StemsProcessing | StemsProgress | StemsProcessed | StemsFailed,
) -> None:
    data, attributes = encode(event)
    assert decode_event(data) == event
    assert attributes["eventType"] == event.event_type
    assert attributes["jobId"] == event.job_id
    assert json.loads(data)["eventType"] == event.event_type


def test_processed_event_has_model_version_attribute_and_camel_case_stem_fields() -> None:
    data, attributes = encode(_processed())
    assert attributes["modelVersion"] == "demucs-htdemucs-6s"
    stem = json.loads(data)["stems"][0]
    assert set(stem) == {
        "name",
        "uri",
        "format",
        "contentType",
        "sizeBytes",
        "durationSeconds",
        "sampleRate",
        "channels",
        "sha256",
    }


def test_readers_ignore_unknown_fields_for_rolling_upgrades() -> None:
    body = {**VALID_JOB, "priority": "high", "newNested": {"x": 1}}
    assert decode_job(json.dumps(body).encode()).job_id == "job-1"


def test_models_are_frozen() -> None:
    job = decode_job(json.dumps(VALID_JOB).encode())
    with pytest.raises(ValueError, match="frozen"):
        job.job_id = "other"  # type: ignore[misc]


def test_model_version_maps_underscores_to_dashes() -> None:
    assert model_version("htdemucs_6s") == "demucs-htdemucs-6s"


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"jobId": ""}, "jobId"),
        ({"jobId": "-starts-with-dash"}, "jobId"),
        ({"jobId": "has space"}, "jobId"),
        ({"jobId": "x" * 129}, "jobId"),
        ({"trackId": "a/b"}, "trackId"),
        ({"jobId": None}, "jobId"),
        ({"sourceUri": "s3://bucket/key"}, "sourceUri"),
        ({"sourceUri": "gs://bucket-only"}, "sourceUri"),
        ({"sourceUri": "gs://Upper/key"}, "sourceUri"),
        ({"sourceUri": "gs://ok-bucket/../escape"}, "sourceUri"),
        ({"sourceUri": "gs://ok-bucket/a/%2e%2e/b"}, "sourceUri"),
        ({"outputUri": "gs://ok-bucket/a%2Fb"}, "outputUri"),
        ({"outputUri": "gs://ok-bucket//abs"}, "outputUri"),
        ({"outputUri": "gs://ok-bucket/a\nb"}, "outputUri"),
        ({"format": "ogg"}, "format"),
        ({"mp3Bitrate": 95}, "mp3Bitrate"),
        ({"mp3Bitrate": 321}, "mp3Bitrate"),
        ({"mp3Bitrate": 100}, "mp3Bitrate"),
        ({"mp3Bitrate": "loud"}, "mp3Bitrate"),
        ({"schemaVersion": 2}, "schemaVersion"),
        ({"stems": ["vocals", "kazoo"]}, "stems"),
        ({"stems": []}, "stems"),
        ({"stems": ["vocals", "vocals"]}, "stems"),
        ({"stems": ["Vocals"]}, "stems"),
        ({"model": "../evil"}, "model"),
        ({"submittedAt": "yesterday"}, "submittedAt"),
        ({"submittedAt": "2026-11-22T10:00:00"}, "submittedAt"),
        ({"correlationId": "c" * 257}, "correlationId"),
    ],
)
def test_invalid_job_is_rejected_naming_the_field(change: dict[str, object], field: str) -> None:
    body = {**VALID_JOB, **change}
    with pytest.raises(ContractError) as caught:
        decode_job(json.dumps(body).encode())
    assert caught.value.fields == [field] or (field == "stems" and "stems" in str(caught.value)), (
        str(caught.value)
    )
    assert field in str(caught.value)


@pytest.mark.parametrize("missing", ["jobId", "trackId", "sourceUri"])
def test_missing_required_field_is_named(missing: str) -> None:
    body = {k: v for k, v in VALID_JOB.items() if k != missing}
    with pytest.raises(ContractError) as caught:
        decode_job(json.dumps(body).encode())
    assert caught.value.fields == [missing]
    assert "Field required" in str(caught.value)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"\xff\xfe not utf-8", "not UTF-8"),
        (b"{not json", "not JSON"),
        (b"[1, 2]", "must be a JSON object"),
        (b'"a string"', "must be a JSON object"),
        (b" " * 1_000_001, "more than the"),
    ],
)
def test_a_body_that_is_not_a_json_object_is_rejected_as_body(data: bytes, reason: str) -> None:
    with pytest.raises(ContractError) as caught:
        decode_job(data)
    assert caught.value.fields == ["body"]
    assert reason in str(caught.value)


def test_stems_of_a_model_the_contract_does_not_know_are_left_to_the_worker() -> None:
    job = decode_job(json.dumps({**VALID_JOB, "model": "my_model", "stems": ["kazoo"]}).encode())
    assert job.stems == ("kazoo",)


def test_unknown_event_type_is_a_contract_error_naming_event_type() -> None:
    body = {"eventType": "stems.exploded", "jobId": "j", "trackId": "t", "attempt": 1}
    with pytest.raises(ContractError) as caught:
        decode_event(json.dumps(body).encode())
    assert "eventType" in str(caught.value)


def test_processed_event_requires_a_sha256_per_stem() -> None:
    data, _ = encode(_processed())
    body = json.loads(data)
    body["stems"][0]["sha256"] = "not-a-hash"
    with pytest.raises(ContractError) as caught:
        decode_event(json.dumps(body).encode())
    assert "stems[0].sha256" in caught.value.fields


# --- output options (issue 18) -------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "named"),
    [
        (
            {"format": "mp3", "sampleFormat": "pcm24"},
            "sampleFormat: pcm24 is not available for mp3",
        ),
        ({"format": "flac", "sampleFormat": "float32"}, "sampleFormat: float32 is not available"),
        ({"format": "wav", "clipMode": "none"}, "clipMode: none needs sampleFormat float32"),
        ({"format": "wav", "sampleFormat": "pcm24", "clipMode": "none"}, "clipMode"),
        ({"format": "wav", "clipMode": "tanh"}, "clipMode"),
        ({"format": "wav", "sampleFormat": "pcm32"}, "sampleFormat"),
        ({"format": "mp3", "sampleRate": 22050}, "sampleRate: mp3 stems need"),
        ({"format": "wav", "sampleRate": 7999}, "sampleRate"),
        ({"format": "wav", "sampleRate": 192001}, "sampleRate"),
        ({"format": "wav", "sampleRate": "original"}, "sampleRate"),
        ({"stems": ["vocals", "no_kazoo"]}, "no_kazoo not in model htdemucs_6s"),
        ({"stems": ["no_no_vocals"]}, "no_no_vocals not in model"),
    ],
)
def test_invalid_output_options_are_rejected_with_the_reason(
    change: dict[str, object], named: str
) -> None:
    with pytest.raises(ContractError) as caught:
        decode_job(json.dumps({**VALID_JOB, **change}).encode())
    assert named in str(caught.value)


@pytest.mark.parametrize(
    "change",
    [
        {"stems": ["vocals", "no_vocals"]},
        {"stems": ["no_drums", "bass", "no_piano"]},
        {"format": "wav", "sampleFormat": "float32", "clipMode": "none", "sampleRate": "source"},
        {"format": "flac", "sampleFormat": "pcm24", "clipMode": "clamp", "sampleRate": 96000},
        {"format": "mp3", "sampleRate": 48000},
        {"format": "mp3", "sampleRate": 44100},
        {"format": "mp3", "sampleRate": 32000},
        {"format": "wav", "sampleFormat": "pcm24"},
        {"format": "wav", "sampleRate": 8000},
        {"format": "flac", "sampleRate": 192000},
        {"format": "mp3", "sampleRate": "source"},  # checked against the source by the worker
    ],
)
def test_valid_output_options_are_accepted(change: dict[str, object]) -> None:
    job = decode_job(json.dumps({**VALID_JOB, **change}).encode())
    for key, value in change.items():
        got = job.model_dump(by_alias=True)[key]
        assert (list(got) if isinstance(got, tuple) else got) == value


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"format": "mp3", "sampleFormat": "pcm24"},
            "sampleFormat: pcm24 is not available for mp3 (only wav, flac)",
        ),
        (
            {"format": "flac", "sampleFormat": "float32"},
            "sampleFormat: float32 is not available for flac (only wav)",
        ),
        (
            {"format": "wav", "clipMode": "none"},
            "clipMode: none needs sampleFormat float32 (pcm16 cannot hold samples beyond full "
            "scale)",
        ),
        (
            {"format": "mp3", "sampleRate": 22050},
            "sampleRate: mp3 stems need 32000, 44100 or 48000 Hz, not 22050",
        ),
    ],
)
def test_each_impossible_combination_gets_its_whole_reason(
    change: dict[str, object], message: str
) -> None:
    with pytest.raises(ContractError) as caught:
        decode_job(json.dumps({**VALID_JOB, **change}).encode())
    assert str(caught.value) == f"body: Value error, {message}"


def test_an_unknown_complement_is_named_beside_the_models_sources() -> None:
    with pytest.raises(ContractError) as caught:
        decode_job(json.dumps({**VALID_JOB, "stems": ["no_kazoo"]}).encode())
    assert (
        "stems: no_kazoo not in model htdemucs_6s (has drums, bass, other, vocals, guitar, "
        "piano, and no_<source> for each)"
    ) in str(caught.value)


def test_output_options_default_to_the_fleets_behaviour_before_them() -> None:
    job = decode_job(json.dumps(VALID_JOB).encode())
    assert (job.sample_format, job.clip_mode, job.sample_rate) == ("pcm16", "rescale", None)
