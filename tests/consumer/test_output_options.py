"""Issue 18 end to end: complement stems, output fidelity and cancel — real streaming pull
on the Pub/Sub emulator, real objects on fake-gcs-server, real Demucs on the tiny model.

The closing note's figures come from here: run with ``-s`` and the float32 job's event,
the vocals + no_vocals check and the cancel timings are printed.
"""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import soundfile as sf
from typer.testing import CliRunner

from consumer import gcp
from consumer.app import build_worker, load_separator
from consumer.runner import Worker
from consumer.settings import Settings
from stem_contracts import (
    HTDEMUCS_6S_STEMS,
    Job,
    JobPublisher,
    StemsFailed,
    StemsProcessed,
    StemsProgress,
    split_gcs_uri,
)
from stemctl.cli import app
from tests.support.settings_env import settings_environment
from tests.support.worker_fixtures import MODEL, Results

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

StartWorker = Callable[[Settings], Worker]


def _job(source_uri: str, job_id: str, **fields: Any) -> Job:
    return Job(job_id=job_id, track_id="track-1", source_uri=source_uri, model=MODEL, **fields)


def _object(gcs: Any, uri: str) -> bytes:
    bucket, name = split_gcs_uri(uri)
    data: bytes = gcs.bucket(bucket).blob(name).download_as_bytes()
    return data


def _samples(gcs: Any, uri: str) -> npt.NDArray[np.float32]:
    data, _ = sf.read(io.BytesIO(_object(gcs, uri)), dtype="float32", always_2d=True)
    return np.asarray(data, dtype=np.float32)


def _names_under(gcs: Any, bucket: str, prefix: str) -> list[str]:
    return sorted(blob.name for blob in gcs.list_blobs(bucket, prefix=prefix))


# --- complement stems and float32 --------------------------------------------------------


def test_vocals_and_no_vocals_in_float32_sum_to_the_six_stems_of_a_full_job(
    worker_settings: Settings,
    start_worker: StartWorker,
    results: Results,
    publish: Callable[..., str],
    clip: Callable[..., Path],
    stage: Callable[[Path, str, str], str],
    gcs: Any,
) -> None:
    source = stage(clip("wav", 1.5), worker_settings.staging_bucket, "in/a.wav")
    start_worker(worker_settings)
    # clipMode none: any rescaling would scale each stem by its own peak, and sums with it.
    options: dict[str, Any] = {"format": "wav", "sample_format": "float32", "clip_mode": "none"}

    publish(_job(source, "full", **options))
    publish(_job(source, "duo", stems=("no_vocals", "vocals"), **options))
    full, duo = results.wait_final("full", 180), results.wait_final("duo", 180)

    assert isinstance(full, StemsProcessed), full
    assert isinstance(duo, StemsProcessed), duo
    print("\nstems.processed of the duo job:\n" + duo.model_dump_json(by_alias=True, indent=2))
    # Sources first, then complements, whatever order the job named them in.
    assert [s.name for s in duo.stems] == ["vocals", "no_vocals"]
    six = {s.name: _samples(gcs, s.uri) for s in full.stems}
    vocals, no_vocals = (_samples(gcs, s.uri) for s in duo.stems)
    for stem in duo.stems:
        data = _object(gcs, stem.uri)
        assert stem.sample_format == "float32"
        assert sf.info(io.BytesIO(data)).subtype == "FLOAT"
        # WAVE_FORMAT_IEEE_FLOAT (3) in the fmt chunk: a float file, not PCM.
        assert data[12:16] == b"fmt "
        assert int.from_bytes(data[20:22], "little") == 3
        assert stem.duration_seconds == pytest.approx(1.5, abs=1e-3)

    others = sum(six[name] for name in HTDEMUCS_6S_STEMS if name != "vocals")
    everything = sum(six[name] for name in HTDEMUCS_6S_STEMS)
    complement_error = float(np.abs(no_vocals - others).max())
    total_error = float(np.abs(vocals + no_vocals - everything).max())
    print(
        f"max |no_vocals - sum(other five)| = {complement_error:.3g}; "
        f"max |vocals + no_vocals - sum(six)| = {total_error:.3g}; "
        f"peak of no_vocals {float(np.abs(no_vocals).max()):.3g}"
    )
    assert np.abs(no_vocals).max() > 0.01  # a real signal, not silence compared to silence
    assert complement_error < 1e-5
    assert total_error < 1e-5
    np.testing.assert_array_equal(vocals, six["vocals"])


# --- fidelity ----------------------------------------------------------------------------


def test_pcm24_stems_are_24_bit_and_a_48_khz_source_gives_48_khz_stems(
    worker_settings: Settings,
    start_worker: StartWorker,
    results: Results,
    publish: Callable[..., str],
    clip: Callable[..., Path],
    stage: Callable[[Path, str, str], str],
    gcs: Any,
) -> None:
    source = stage(clip("wav", 1.5), worker_settings.staging_bucket, "in/a.wav")
    source_48k = stage(clip("flac", 1.5, 48000), worker_settings.staging_bucket, "in/b.flac")
    start_worker(worker_settings)

    for fmt in ("wav", "flac"):
        publish(_job(source, f"{fmt}24", format=fmt, sample_format="pcm24", stems=("vocals",)))
    publish(_job(source_48k, "at48", format="wav", sample_rate="source", stems=("vocals",)))

    for fmt, subtype in (("wav", "WAV"), ("flac", "FLAC")):
        event = results.wait_final(f"{fmt}24", 180)
        assert isinstance(event, StemsProcessed), event
        (stem,) = event.stems
        data = _object(gcs, stem.uri)
        info = sf.info(io.BytesIO(data))
        assert (info.format, info.subtype) == (subtype, "PCM_24")
        assert (stem.sample_format, stem.sample_rate) == ("pcm24", 44100)
        # Really 24 bits: libsndfile hands 24-bit samples back in the top of an int32; the
        # byte below a 16-bit sample's precision is used.
        ints, _ = sf.read(io.BytesIO(data), dtype="int32")
        assert np.any(ints & 0xFF00)

    event = results.wait_final("at48", 180)
    assert isinstance(event, StemsProcessed), event
    (stem,) = event.stems
    info = sf.info(io.BytesIO(_object(gcs, stem.uri)))
    assert event.source.sample_rate == 48000
    assert (stem.sample_rate, info.samplerate) == (48000, 48000)
    assert info.frames == 72000  # 1.5 s at 48 kHz
    assert stem.duration_seconds == pytest.approx(1.5, abs=1e-6)
    assert (stem.sample_format, info.subtype) == ("pcm16", "PCM_16")


def test_invalid_output_options_and_unknown_stems_are_dead_lettered_with_the_reason(
    worker_settings: Settings,
    start_worker: StartWorker,
    results: Results,
    publish: Callable[..., str],
) -> None:
    start_worker(worker_settings)
    source = f"gs://{worker_settings.staging_bucket}/in/a.wav"  # never read
    bodies = {
        "flac-float": ('"format": "flac", "sampleFormat": "float32"', "sampleFormat"),
        "clip-none": ('"format": "wav", "clipMode": "none"', "clipMode"),
        "mp3-rate": ('"sampleRate": 22050', "sampleRate"),
        "kazoo": ('"stems": ["vocals", "no_kazoo"]', "no_kazoo"),
    }
    for job_id, (fields, _) in bodies.items():
        body = (
            f'{{"schemaVersion": 1, "jobId": "{job_id}", "trackId": "t", '
            f'"sourceUri": "{source}", {fields}}}'
        )
        publish(body.encode(), jobId=job_id, trackId="t")

    for job_id, (_, named) in bodies.items():
        event = results.wait_final(job_id)
        assert isinstance(event, StemsFailed), event
        assert (event.error.code, event.final, event.error.retryable) == (
            "invalid_message",
            True,
            False,
        )
        assert named in event.error.message
        dead = results.wait_dead_letter(job_id)
        assert dead.attributes["errorCode"] == "invalid_message"
        assert named in dead.attributes["errorMessage"]


# --- cancel --------------------------------------------------------------------------------


def _assert_cancelled(results: Results, job_id: str, gcs: Any, settings: Settings) -> StemsFailed:
    event = results.wait_final(job_id, 180)
    assert isinstance(event, StemsFailed), event
    assert (event.error.code, event.final, event.error.retryable) == ("cancelled", True, False)
    prefix = f"stems/track-1/{job_id}/"
    assert _names_under(gcs, settings.output_bucket, prefix) == []
    results.settle(1.0)
    assert [m for m in results.dead_letters if m.attributes.get("jobId") == job_id] == []
    return event


def test_a_job_cancelled_before_it_is_published_ends_cancelled_and_the_worker_goes_on(
    worker_settings: Settings,
    start_worker: StartWorker,
    results: Results,
    publish: Callable[..., str],
    clip: Callable[..., Path],
    stage: Callable[[Path, str, str], str],
    gcs: Any,
) -> None:
    source = stage(clip("wav", 1.0), worker_settings.staging_bucket, "in/a.wav")
    start_worker(worker_settings)
    with JobPublisher(
        worker_settings.require_project(),
        output_bucket=worker_settings.output_bucket,
        publisher=gcp.publisher_client(worker_settings),
        storage_client=gcs,
    ) as jobs:
        marker = jobs.cancel("early", reason="wrong file")
    assert marker == f"gs://{worker_settings.output_bucket}/_cancel/early"

    publish(_job(source, "early", format="wav"))
    event = _assert_cancelled(results, "early", gcs, worker_settings)
    print(f"\ncancelled before publishing: {event.model_dump_json(by_alias=True)}")

    publish(_job(source, "after", format="wav", stems=("vocals",)))
    assert isinstance(results.wait_final("after", 180), StemsProcessed)


@pytest.fixture
def short_segment_worker(worker_settings: Settings) -> Iterator[Worker]:
    """A worker whose model separates 1 s segments, one per batch: a 2 s clip takes three
    batches, so a cancel can land between them."""
    settings = worker_settings.model_copy(
        update={"segment_seconds": 1.0, "segment_batch": 1, "progress_interval_s": 0.001}
    )
    worker = build_worker(settings, load_separator(settings))
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    assert worker.ready.wait(10)
    yield worker
    worker.request_stop("test over")
    thread.join(30)


def test_a_job_cancelled_mid_separation_stops_within_a_batch_and_leaves_no_objects(
    worker_settings: Settings,
    short_segment_worker: Worker,
    results: Results,
    publish: Callable[..., str],
    clip: Callable[..., Path],
    stage: Callable[[Path, str, str], str],
    gcs: Any,
) -> None:
    source = stage(clip("wav", 2.0), worker_settings.staging_bucket, "in/a.wav")
    publish(_job(source, "long", format="wav"))

    # When: the first stems.progress arrives (one batch done), the operator cancels.
    deadline = time.monotonic() + 120
    while not any(isinstance(e, StemsProgress) for e in results.for_job("long")):
        assert time.monotonic() < deadline, results.for_job("long")
        results.settle(0.1)
    cli = CliRunner().invoke(
        app,
        ["jobs", "cancel", "long", "--reason", "test"],
        env=settings_environment(worker_settings),
        catch_exceptions=False,
    )
    cancelled_at = time.monotonic()
    assert cli.exit_code == 0, cli.output
    assert "cancelled long" in cli.output

    results.wait_final("long", 180)
    took = time.monotonic() - cancelled_at
    event = _assert_cancelled(results, "long", gcs, worker_settings)
    percents = [e.percent for e in results.for_job("long") if isinstance(e, StemsProgress)]
    print(
        f"\nevents of the cancelled job: {[e.event_type for e in results.for_job('long')]}"
        f"\nprogress seen: {percents}; cancel → stems.failed observed after {took:.2f} s"
        f"\n{event.model_dump_json(by_alias=True)}"
    )
    assert max(percents) < 100  # the separation did not run to its end
