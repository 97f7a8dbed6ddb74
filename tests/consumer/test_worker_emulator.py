"""The worker end to end: real streaming pull on the Pub/Sub emulator, real objects on
fake-gcs-server, real Demucs (its own loader and apply path) on a tiny local model.

Every job here ends either as ``stems.processed`` or in ``stem-dlq`` with a reason; each
test says which.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
import torch

from consumer.runner import Worker
from consumer.separation import DemucsSeparator
from consumer.settings import Settings
from stem_contracts import (
    HTDEMUCS_6S_STEMS,
    Job,
    StemsFailed,
    StemsProcessed,
    StemsProcessing,
    decode_event,
    split_gcs_uri,
)
from tests.support.faults import FaultyProxy, fail_first
from tests.support.helpers import mpeg1_layer3_headers
from tests.support.worker_fixtures import MODEL, Results

pytestmark = pytest.mark.integration

StartWorker = Callable[[Settings], Worker]


def _job(settings: Settings, source_uri: str, job_id: str = "job-1", **fields: Any) -> Job:
    return Job(job_id=job_id, track_id="track-1", source_uri=source_uri, model=MODEL, **fields)


def _object(gcs: Any, uri: str) -> bytes:
    bucket, name = split_gcs_uri(uri)
    data: bytes = gcs.bucket(bucket).blob(name).download_as_bytes()
    return data


@pytest.mark.parametrize(
    ("source_fmt", "stem_fmt"),
    [("wav", "mp3"), ("flac", "wav"), ("mp3", "flac")],
)
def test_a_job_in_each_format_ends_as_stems_processed_with_verified_objects(
    worker_settings: Settings,
    start_worker: StartWorker,
    results: Results,
    publish: Callable[..., str],
    clip: Callable[..., Path],
    stage: Callable[[Path, str, str], str],
    gcs: Any,
    source_fmt: str,
    stem_fmt: str,
) -> None:
    source = stage(clip(source_fmt, 1.5), worker_settings.staging_bucket, f"in/a.{source_fmt}")
    start_worker(worker_settings)

    publish(_job(worker_settings, source, format=stem_fmt, correlation_id="corr-7"))
    event = results.wait_final("job-1")

    # Then: processing came first, and the processed event describes real objects.
    assert isinstance(results.for_job("job-1")[0], StemsProcessing)
    assert isinstance(event, StemsProcessed), event
    assert event.model_version == "demucs-htdemucs-6s"
    assert event.correlation_id == "corr-7"
    assert [s.name for s in event.stems] == list(HTDEMUCS_6S_STEMS)
    prefix = f"gs://{worker_settings.output_bucket}/stems/track-1/job-1"
    source_seconds = 1.5 if source_fmt != "mp3" else event.source.duration_seconds
    assert event.source.duration_seconds == pytest.approx(source_seconds, abs=0.06)
    for stem in event.stems:
        data = _object(gcs, stem.uri)
        assert stem.uri == f"{prefix}/{stem.name}.{stem_fmt}"
        assert hashlib.sha256(data).hexdigest() == stem.sha256
        assert len(data) == stem.size_bytes
        assert stem.duration_seconds == pytest.approx(event.source.duration_seconds, abs=1e-3)
        assert (stem.sample_rate, stem.channels) == (44100, 2)
        blob = gcs.bucket(worker_settings.output_bucket).get_blob(split_gcs_uri(stem.uri)[1])
        assert blob.content_type == stem.content_type
        # analysed: a measured stem of a random-weight model, and its waveform beside it
        assert stem.silent is not None
        assert stem.peak_dbfs is not None
        assert stem.peaks_uri == f"{prefix}/{stem.name}.peaks.json"
        waveform = json.loads(_object(gcs, stem.peaks_uri))
        assert (waveform["version"], waveform["bits"]) == (2, 8)
        assert waveform["length"] == len(waveform["data"]) // 2 > 0
    assert event.usage is not None
    assert event.usage.device == "cpu"
    assert event.usage.audio_seconds == pytest.approx(event.source.duration_seconds)
    assert 0 < event.usage.device_seconds < event.usage.worker_seconds
    manifest = _object(gcs, f"{prefix}/manifest.json")
    assert decode_event(manifest) == event


def test_mp3_stems_are_constant_bitrate_at_the_requested_rate(
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

    publish(_job(worker_settings, source, job_id="j320"))
    publish(_job(worker_settings, source, job_id="j128", mp3_bitrate=128, stems=("vocals",)))
    default, low = results.wait_final("j320"), results.wait_final("j128")

    assert isinstance(default, StemsProcessed)
    assert isinstance(low, StemsProcessed)
    for event, kbps in ((default, 320), (low, 128)):
        for stem in event.stems:
            headers = mpeg1_layer3_headers(_object(gcs, stem.uri))
            assert {(rate, hz) for _, rate, hz in headers} == {(kbps, 44100)}
    assert [s.name for s in low.stems] == ["vocals"]


def test_stems_equal_the_reference_demucs_separator(
    worker_settings: Settings,
    start_worker: StartWorker,
    results: Results,
    publish: Callable[..., str],
    clip: Callable[..., Path],
    stage: Callable[[Path, str, str], str],
    gcs: Any,
    model_repo: Path,
) -> None:
    """Parity: the fleet's wav stems equal demucs.api.Separator's on the same model and
    input, after Demucs' own writer steps (prevent_clip rescale, 16-bit PCM)."""
    import demucs.api
    from demucs.audio import prevent_clip

    path = clip("wav", 2.0)
    source = stage(path, worker_settings.staging_bucket, "in/a.wav")
    start_worker(worker_settings)
    publish(_job(worker_settings, source, format="wav"))
    event = results.wait_final("job-1")
    assert isinstance(event, StemsProcessed)

    reference = demucs.api.Separator(
        model=MODEL, repo=model_repo, device="cpu", shifts=0, overlap=0.25, split=True
    )
    mix, rate = sf.read(path, dtype="float32", always_2d=True)
    _, stems = reference.separate_tensor(torch.from_numpy(mix.T.copy()), rate)
    for stem in event.stems:
        ours, _ = sf.read(__import__("io").BytesIO(_object(gcs, stem.uri)), dtype="float32")
        theirs = prevent_clip(stems[stem.name], mode="rescale").clamp(-1, 1).numpy().T
        # One 16-bit step of quantisation, plus float noise.
        assert np.abs(ours - theirs).max() <= 2 / 32767, stem.name


def test_a_redelivered_finished_job_republishes_its_result_without_separating(
    worker_settings: Settings,
    start_worker: StartWorker,
    results: Results,
    publish: Callable[..., str],
    clip: Callable[..., Path],
    stage: Callable[[Path, str, str], str],
    separator: DemucsSeparator,
) -> None:
    source = stage(clip("wav", 1.0), worker_settings.staging_bucket, "in/a.wav")
    start_worker(worker_settings)
    job = _job(worker_settings, source)
    publish(job)
    first = results.wait_final("job-1")
    separations = separator.separations

    # When: the same job arrives again (at-least-once delivery, or a resubmission).
    publish(job)
    deadline = time.monotonic() + 60
    processed = [e for e in results.for_job("job-1") if isinstance(e, StemsProcessed)]
    while len(processed) < 2:
        assert time.monotonic() < deadline, "the second delivery got no stems.processed"
        results.settle(0.3)
        processed = [e for e in results.for_job("job-1") if isinstance(e, StemsProcessed)]

    # Then: the same stems.processed again, and no separation ran.
    assert processed[1] == first
    assert separator.separations == separations


# --- bad input: each ends in stem-dlq with a reason, and the worker goes on -------------


def _poison_cases() -> list[Any]:
    return [
        pytest.param("invalid_json", "invalid_message", id="invalid-json"),
        pytest.param("schema", "invalid_message", id="schema-violation"),
        pytest.param("missing", "source_missing", id="missing-source"),
        pytest.param("bucket", "bucket_not_allowed", id="bucket-not-allowed"),
        pytest.param("corrupt", "corrupt_audio", id="corrupt-audio"),
        pytest.param("too_long", "audio_too_long", id="too-long"),
        pytest.param("too_large", "audio_too_large", id="too-large"),
        pytest.param("unknown_stem", "invalid_message", id="unknown-stem-htdemucs_6s"),
        pytest.param("unknown_model", "invalid_message", id="model-not-served"),
    ]


@pytest.mark.parametrize(("kind", "code"), _poison_cases())
def test_bad_input_is_dead_lettered_once_with_its_reason_and_the_worker_goes_on(
    worker_settings: Settings,
    start_worker: StartWorker,
    results: Results,
    publish: Callable[..., str],
    clip: Callable[..., Path],
    stage: Callable[[Path, str, str], str],
    tmp_path: Path,
    kind: str,
    code: str,
) -> None:
    settings = worker_settings.model_copy(
        update={
            "allowed_buckets": frozenset(
                {worker_settings.staging_bucket, worker_settings.output_bucket}
            ),
            "max_audio_seconds": 3.0,
            "max_audio_bytes": 600_000,
        }
    )
    bucket = settings.staging_bucket
    good = stage(clip("wav", 1.0), bucket, "in/good.wav")
    body: bytes
    if kind == "invalid_json":
        body = b"{this is not json"
    elif kind == "schema":
        body = json.dumps({"jobId": "bad", "trackId": "t", "sourceUri": "s3://x/y"}).encode()
    else:
        uri = {
            "missing": f"gs://{bucket}/in/nothing-here.wav",
            "bucket": "gs://someone-elses-bucket/in/a.wav",
        }.get(kind, good)
        if kind == "corrupt":
            noise = tmp_path / "noise.wav"
            noise.write_bytes(np.random.default_rng(0).bytes(20_000))
            uri = stage(noise, bucket, "in/noise.wav")
        if kind == "too_long":
            uri = stage(clip("flac", 4.0, rate=8000, channels=1), bucket, "in/long.flac")
        if kind == "too_large":
            big = tmp_path / "big.wav"
            sf.write(big, np.zeros((200_000, 2), dtype=np.float32), 44100, subtype="PCM_16")
            uri = stage(big, bucket, "in/big.wav")
        fields: dict[str, Any] = {"jobId": "bad", "trackId": "t", "sourceUri": uri}
        if kind == "unknown_stem":
            fields["stems"] = ["vocals", "kazoo"]
        if kind == "unknown_model":
            fields["model"] = "htdemucs_ft"
        else:
            fields["model"] = MODEL
        body = json.dumps(fields).encode()
    start_worker(settings)

    message_id = publish(body, jobId="bad", origin="test")
    publish(_job(settings, good, job_id="good"))

    dead = results.wait_dead_letter("bad")
    assert isinstance(results.wait_final("good"), StemsProcessed)
    results.settle(0.5)

    # The dead letter is the original message plus the reason.
    assert dead.data == body
    assert dead.attributes["errorCode"] == code
    assert dead.attributes["errorMessage"]
    assert dead.attributes["deliveryAttempt"] == "1"
    assert dead.attributes["origin"] == "test"
    assert len([m for m in results.dead_letters if m.attributes.get("jobId") == "bad"]) == 1
    # A message whose body still names a job (valid ids) also gets a final stems.failed.
    failed = [e for e in results.for_job("bad") if isinstance(e, StemsFailed)]
    if kind == "invalid_json":
        assert failed == []
    else:
        assert [(f.error.code, f.final, f.error.retryable) for f in failed] == [(code, True, False)]
    assert message_id


def test_a_transient_storage_failure_is_retried_and_the_job_succeeds(
    worker_settings: Settings,
    start_worker: StartWorker,
    results: Results,
    publish: Callable[..., str],
    clip: Callable[..., Path],
    stage: Callable[[Path, str, str], str],
    emulators: Any,
) -> None:
    source = stage(clip("wav", 1.0), worker_settings.staging_bucket, "in/a.wav")
    # Given: storage answers 503 to the first two downloads of the source.
    rule = fail_first(2, method="GET", path_contains="/in%2Fa.wav")
    with FaultyProxy(emulators.storage_url, rule) as proxy:
        start_worker(worker_settings.model_copy(update={"storage_emulator_host": proxy.url}))
        publish(_job(worker_settings, source))
        event = results.wait_final("job-1")

    assert isinstance(event, StemsProcessed)
    assert len(proxy.faults) == 2
    assert [e.event_type for e in results.for_job("job-1")] == [
        "stems.processing",
        "stems.processed",
    ]
