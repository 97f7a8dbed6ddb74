"""Reuse, end to end on the emulators with real Demucs on the tiny model: a job on audio
already separated with the same output options gets server-side copies of the earlier
stems, never a second separation — unless it asks not to, or the earlier stems are gone
or changed.

The session's separator counts its separations: "no separation ran" is that count not
moving while the job completes (the first job of each test runs the real model).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from consumer.intake import upload_job_id
from consumer.reuse import REUSE_PREFIX
from consumer.runner import Worker
from consumer.separation import DemucsSeparator
from consumer.settings import Settings
from consumer.telemetry import IntakeMetrics, Metrics, TelemetryServer
from stem_contracts import Job, StemsProcessed, split_gcs_uri
from tests.support.worker_fixtures import MODEL, Results, StartObservedWorker

pytestmark = pytest.mark.integration

StartIntake = Callable[[Settings], tuple[Worker, IntakeMetrics]]


@pytest.fixture
def settings(uploads_settings: Settings) -> Settings:
    """The project fake-gcs-server notifies uploads to (the last test uploads; the others
    need no notifications and run here as well as anywhere)."""
    return uploads_settings


def _object(gcs: Any, uri: str) -> bytes:
    bucket, name = split_gcs_uri(uri)
    data: bytes = gcs.bucket(bucket).blob(name).download_as_bytes()
    return data


def _pointers(gcs: Any, settings: Settings) -> list[dict[str, Any]]:
    blobs = gcs.list_blobs(settings.output_bucket, prefix=f"{REUSE_PREFIX}/")
    return [json.loads(blob.download_as_bytes()) for blob in blobs]


def _reused(metrics: Metrics) -> float:
    return metrics.registry.get_sample_value("stem_jobs_reused_total") or 0.0


def _job(source: str, job_id: str, **fields: Any) -> Job:
    return Job(job_id=job_id, track_id=f"trk-{job_id}", source_uri=source, model=MODEL, **fields)


@pytest.fixture
def worker(
    worker_settings: Settings, observed_worker: StartObservedWorker
) -> tuple[Worker, Metrics, TelemetryServer]:
    return observed_worker(worker_settings)


@pytest.fixture
def first(
    worker: tuple[Worker, Metrics, TelemetryServer],
    worker_settings: Settings,
    results: Results,
    publish: Callable[..., str],
    clip: Callable[..., Path],
    stage: Callable[[Path, str, str], str],
    separator: DemucsSeparator,
) -> StemsProcessed:
    """A first job, separated for real, whose pointer later jobs find; and a second copy
    of its audio under another name."""
    audio = clip("wav", 1.5)
    source = stage(audio, worker_settings.staging_bucket, "in/first.wav")
    stage(audio, worker_settings.staging_bucket, "in/copy of first.wav")
    before = separator.separations
    publish(_job(source, "job-first", stems=("vocals", "drums")))
    event = results.wait_final("job-first")
    assert isinstance(event, StemsProcessed), event
    assert event.reused_from is None
    assert separator.separations == before + 1
    return event


def test_the_same_audio_under_another_name_reuses_the_stems_without_separating(
    first: StemsProcessed,
    worker: tuple[Worker, Metrics, TelemetryServer],
    worker_settings: Settings,
    results: Results,
    publish: Callable[..., str],
    gcs: Any,
    separator: DemucsSeparator,
) -> None:
    _, metrics, _ = worker
    before = separator.separations
    copy = f"gs://{worker_settings.staging_bucket}/in/copy of first.wav"

    # The same stems asked for as all-but-implicitly (order differs): the same reuse key.
    publish(_job(copy, "job-second", stems=("drums", "vocals")))
    second = results.wait_final("job-second")

    assert isinstance(second, StemsProcessed), second
    assert second.reused_from == "job-first"
    assert separator.separations == before  # no separation ran
    assert _reused(metrics) == 1
    # Its own URIs, the same bytes and checksums, its own source and manifest.
    prefix = f"gs://{worker_settings.output_bucket}/stems/trk-job-second/job-second"
    assert [s.uri for s in second.stems] == [f"{prefix}/drums.mp3", f"{prefix}/vocals.mp3"]
    assert [s.sha256 for s in second.stems] == [s.sha256 for s in first.stems]
    for mine, theirs in zip(second.stems, first.stems, strict=True):
        assert _object(gcs, mine.uri) == _object(gcs, theirs.uri)
    assert second.source.uri == copy
    assert second.source.duration_seconds == first.source.duration_seconds
    manifest = json.loads(_object(gcs, f"{prefix}/manifest.json"))
    assert manifest["reusedFrom"] == "job-first"
    assert manifest["jobId"] == "job-second"
    # Usage: no device time, the audio it answers for; the waveforms were copied too.
    assert second.usage is not None
    assert second.usage.device_seconds == 0
    assert second.usage.audio_seconds == first.source.duration_seconds
    for mine, theirs in zip(second.stems, first.stems, strict=True):
        assert mine.peaks_uri == f"{prefix}/{mine.name}.peaks.json"
        assert theirs.peaks_uri is not None
        assert _object(gcs, mine.peaks_uri) == _object(gcs, theirs.peaks_uri)
        assert (mine.loudness_lufs, mine.silent) == (theirs.loudness_lufs, theirs.silent)


def test_a_job_with_reuse_false_separates_again(
    first: StemsProcessed,
    worker_settings: Settings,
    results: Results,
    publish: Callable[..., str],
    separator: DemucsSeparator,
) -> None:
    before = separator.separations
    copy = f"gs://{worker_settings.staging_bucket}/in/copy of first.wav"

    publish(_job(copy, "job-fresh", stems=("vocals", "drums"), reuse=False))
    event = results.wait_final("job-fresh")

    assert isinstance(event, StemsProcessed), event
    assert event.reused_from is None
    assert separator.separations == before + 1


def test_another_format_is_another_reuse_key(
    first: StemsProcessed,
    worker_settings: Settings,
    results: Results,
    publish: Callable[..., str],
    separator: DemucsSeparator,
) -> None:
    before = separator.separations
    copy = f"gs://{worker_settings.staging_bucket}/in/copy of first.wav"

    publish(_job(copy, "job-wav", stems=("vocals", "drums"), format="wav"))
    event = results.wait_final("job-wav")

    assert isinstance(event, StemsProcessed), event
    assert event.reused_from is None
    assert separator.separations == before + 1


@pytest.mark.parametrize("damage", ["deleted", "overwritten"])
def test_a_stale_pointer_is_ignored_and_replaced(
    first: StemsProcessed,
    worker_settings: Settings,
    results: Results,
    publish: Callable[..., str],
    gcs: Any,
    separator: DemucsSeparator,
    damage: str,
) -> None:
    bucket, name = split_gcs_uri(first.stems[1].uri)
    blob = gcs.bucket(bucket).blob(name)
    if damage == "deleted":
        blob.delete()
    else:  # same size, other bytes: only the sha256 can tell
        data = bytearray(blob.download_as_bytes())
        data[-1] ^= 0xFF
        blob.upload_from_string(bytes(data))
    assert [p["jobId"] for p in _pointers(gcs, worker_settings)] == ["job-first"]
    before = separator.separations
    copy = f"gs://{worker_settings.staging_bucket}/in/copy of first.wav"

    publish(_job(copy, "job-after", stems=("vocals", "drums")))
    event = results.wait_final("job-after")

    assert isinstance(event, StemsProcessed), event
    assert event.reused_from is None
    assert separator.separations == before + 1
    [pointer] = _pointers(gcs, worker_settings)
    assert pointer["jobId"] == "job-after"
    prefix = f"gs://{worker_settings.output_bucket}/stems/trk-job-after/job-after"
    assert pointer["manifestUri"] == f"{prefix}/manifest.json"


def test_the_same_bytes_uploaded_under_two_names_make_the_second_job_a_copy(
    worker: tuple[Worker, Metrics, TelemetryServer],
    worker_settings: Settings,
    start_intake: StartIntake,
    results: Results,
    clip: Callable[..., Path],
    gcs: Any,
    unique: str,
    separator: DemucsSeparator,
) -> None:
    start_intake(worker_settings)
    bucket = worker_settings.staging_bucket
    audio = clip("flac", 1.5).read_bytes()
    before = separator.separations
    ids = []
    for name in (f"incoming/{unique}/a.flac", f"incoming/{unique}/b.flac"):
        blob = gcs.bucket(bucket).blob(name)
        blob.metadata = {"format": "wav"}
        blob.upload_from_string(audio)
        ids.append(upload_job_id(bucket, name, str(blob.generation)))
        assert isinstance(results.wait_final(ids[-1]), StemsProcessed)

    one, two = (results.wait_final(job_id) for job_id in ids)
    assert isinstance(one, StemsProcessed)
    assert isinstance(two, StemsProcessed)
    assert one.reused_from is None
    assert two.reused_from == ids[0]
    assert [s.sha256 for s in two.stems] == [s.sha256 for s in one.stems]
    assert separator.separations == before + 1
    print(
        f"\nfirst  {one.job_id}: processingTimeMs={one.processing_time_ms}"
        f"\nsecond {two.job_id}: processingTimeMs={two.processing_time_ms} "
        f"reusedFrom={two.reused_from}"
    )


def test_gcs_copy_is_server_side_keeps_the_metadata_and_refuses_a_missing_source(
    provisioned: Settings, gcs: Any, tmp_path: Path
) -> None:
    from consumer.errors import SourceMissing
    from consumer.storage import GcsBlobStore

    store = GcsBlobStore(gcs)
    src = tmp_path / "vocals.mp3"
    src.write_bytes(b"\xff\xfb" + bytes(range(256)) * 64)
    bucket = provisioned.output_bucket
    store.upload(
        src, f"gs://{bucket}/a/vocals.mp3", content_type="audio/mpeg", metadata={"sha256": "x"}
    )

    info = store.copy(f"gs://{bucket}/a/vocals.mp3", f"gs://{bucket}/b/vocals.mp3")

    assert _object(gcs, f"gs://{bucket}/b/vocals.mp3") == src.read_bytes()
    assert info.metadata == {"sha256": "x"}
    assert info.content_type == "audio/mpeg"
    assert info.size_bytes == src.stat().st_size
    with pytest.raises(SourceMissing):
        store.copy(f"gs://{bucket}/a/gone.mp3", f"gs://{bucket}/b/gone.mp3")
