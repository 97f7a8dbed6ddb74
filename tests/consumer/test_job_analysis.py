"""What a job's events tell the catalog and finance: stem analysis, waveforms, usage.

The handler on in-memory fakes (tests/consumer/rig.py) with real decoding and encoding; the
reference values are computed here from the stems as they were written (decoded back), so
the checks hold for the stems a catalog really gets.
"""

from __future__ import annotations

import io
import json

import numpy as np
import numpy.typing as npt
import pyloudnorm
import pytest
import soundfile as sf

from consumer.errors import StorageUnavailable
from consumer.handler import Outcome
from consumer.telemetry import Metrics
from stem_contracts import HTDEMUCS_6S_STEMS, StemsProcessed, decode_event
from tests.consumer.rig import DEFAULT_PREFIX, OUTPUT_BUCKET, STAGING, MakeRig, Rig, make_job
from tests.support.fakes import CountingSeparator

RATE = 44100


def wav(samples: npt.NDArray[np.float32]) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, samples.T, RATE, subtype="FLOAT", format="WAV")
    return buffer.getvalue()


def sine(dbfs: float, seconds: float) -> npt.NDArray[np.float32]:
    t = np.arange(int(seconds * RATE)) / RATE
    return np.tile((10 ** (dbfs / 20) * np.sin(2 * np.pi * 1000 * t)).astype(np.float32), (2, 1))


def run(rig: Rig, samples: npt.NDArray[np.float32], **job: object) -> StemsProcessed:
    uri = f"{STAGING}/signal.wav"
    rig.store.put(uri, wav(samples), "audio/wav")
    assert rig.handle(make_job(source_uri=uri, **job)) is Outcome.ACK
    return rig.processed()


def decoded(rig: Rig, uri: str) -> npt.NDArray[np.float64]:
    samples, rate = sf.read(io.BytesIO(rig.store.objects[uri].data), dtype="float64")
    assert rate == RATE
    return np.asarray(samples)


def test_a_silent_source_gives_silent_stems_with_no_loudness_and_no_peak(rig: Rig) -> None:
    event = run(rig, np.zeros((2, 2 * RATE), np.float32))

    assert [s.name for s in event.stems] == list(HTDEMUCS_6S_STEMS)
    for stem in event.stems:
        assert (stem.silent, stem.loudness_lufs, stem.peak_dbfs) == (True, None, None)
    # ...and the wire says so explicitly: null, not absent
    body = json.loads(rig.store.objects[f"{DEFAULT_PREFIX}/manifest.json"].data)
    assert body["stems"][0]["loudnessLufs"] is None
    assert "peakDbfs" in body["stems"][0]


def test_a_known_signal_through_the_identity_gets_the_reference_loudness_and_peak(
    make_rig: MakeRig,
) -> None:
    rig = make_rig(CountingSeparator(shares={"vocals": 1.0}))  # vocals = the mix, rest silent
    event = run(rig, sine(-20, 3.0), format="wav")

    by_name = {s.name: s for s in event.stems}
    vocals = decoded(rig, by_name["vocals"].uri)
    reference = pyloudnorm.Meter(RATE).integrated_loudness(vocals)
    assert by_name["vocals"].loudness_lufs == pytest.approx(reference, abs=0.5)
    assert by_name["vocals"].loudness_lufs == pytest.approx(-20.0, abs=0.5)
    assert by_name["vocals"].peak_dbfs == pytest.approx(
        20 * np.log10(np.abs(vocals).max()), abs=0.5
    )
    assert by_name["vocals"].silent is False
    assert all(by_name[name].silent for name in HTDEMUCS_6S_STEMS if name != "vocals")


def test_silence_threshold_comes_from_the_setting(make_rig: MakeRig) -> None:
    rig = make_rig(CountingSeparator(shares={"vocals": 1.0}), silence_lufs=-10.0)
    event = run(rig, sine(-20, 2.0))

    vocals = next(s for s in event.stems if s.name == "vocals")
    assert vocals.loudness_lufs is not None
    assert vocals.loudness_lufs < -10
    assert vocals.silent is True


@pytest.mark.parametrize("fmt", ["wav", "mp3"])
def test_each_stem_has_a_waveform_that_brackets_the_stem_as_written(
    make_rig: MakeRig, fmt: str
) -> None:
    rig = make_rig(waveform_points=400)
    samples = np.random.default_rng(3).uniform(-0.8, 0.8, (2, 2 * RATE)).astype(np.float32)
    event = run(rig, samples, format=fmt)

    manifest = json.loads(rig.store.objects[f"{DEFAULT_PREFIX}/manifest.json"].data)
    for stem, listed in zip(event.stems, manifest["stems"], strict=True):
        assert stem.peaks_uri == f"{DEFAULT_PREFIX}/{stem.name}.peaks.json"
        assert listed["peaksUri"] == stem.peaks_uri  # the manifest lists it
        stored = rig.store.objects[stem.peaks_uri]
        assert stored.content_type == "application/json"
        doc = json.loads(stored.data)
        assert (doc["version"], doc["channels"], doc["bits"]) == (2, 1, 8)
        assert doc["sample_rate"] == stem.sample_rate
        assert doc["length"] == len(doc["data"]) // 2 <= 400
        assert all(-128 <= v <= 127 for v in doc["data"])
        if fmt == "wav":  # lossless: every pixel brackets the written samples
            mono = decoded(rig, stem.uri).mean(axis=1)
            pairs = np.asarray(doc["data"]).reshape(-1, 2) / 128
            per = doc["samples_per_pixel"]
            tolerance = 1 / 32768  # the 16-bit rounding of the written stem
            for index, (low, high) in enumerate(pairs):
                chunk = mono[index * per : (index + 1) * per]
                assert low - tolerance <= chunk.min()
                assert chunk.max() <= high + tolerance


# --- usage -------------------------------------------------------------------------------


def test_a_processed_job_reports_its_usage_without_a_price(rig: Rig) -> None:
    rig.handle(make_job())
    usage = rig.processed().usage

    assert usage is not None
    assert usage.audio_seconds == pytest.approx(1.0)
    assert usage.device == "cpu"
    assert 0 < usage.device_seconds <= usage.worker_seconds
    assert usage.cost_usd is None
    body = json.loads(rig.store.objects[f"{DEFAULT_PREFIX}/manifest.json"].data)
    assert body["usage"]["costUsd"] is None  # null: no price known


def test_with_a_price_the_cost_is_worker_seconds_times_price(make_rig: MakeRig) -> None:
    metrics = Metrics()
    rig = make_rig(metrics=metrics, cost_per_hour=3.6)
    rig.handle(make_job())
    usage = rig.processed().usage

    assert usage is not None
    assert usage.cost_usd is not None
    assert usage.cost_usd == pytest.approx(usage.worker_seconds * 3.6 / 3600)
    assert metrics.registry.get_sample_value("stem_cost_usd_total") == pytest.approx(usage.cost_usd)
    assert metrics.registry.get_sample_value("stem_device_seconds_total") == pytest.approx(
        usage.device_seconds, abs=1e-3
    )


def test_a_failed_attempt_reports_its_usage_too(make_rig: MakeRig) -> None:
    metrics = Metrics()
    rig = make_rig(metrics=metrics, cost_per_hour=1.0)
    rig.store.fail_next("upload", StorageUnavailable("503"), times=100)

    assert rig.handle(make_job()) is Outcome.NACK
    usage = rig.failed().usage

    assert usage is not None
    assert usage.audio_seconds == pytest.approx(1.0)  # decoded before the upload failed
    assert usage.device_seconds > 0
    assert usage.cost_usd == pytest.approx(usage.worker_seconds / 3600)
    assert metrics.registry.get_sample_value("stem_cost_usd_total") == pytest.approx(usage.cost_usd)


def test_a_job_refused_before_decoding_has_no_audio_seconds_and_no_device_time(
    rig: Rig,
) -> None:
    rig.handle(make_job(source_uri=f"{STAGING}/missing.wav"))
    usage = rig.failed().usage

    assert usage is not None
    assert (usage.audio_seconds, usage.device_seconds) == (None, 0.0)


def test_a_redelivered_finished_job_republishes_the_usage_of_the_run_that_did_the_work(
    rig: Rig,
) -> None:
    rig.handle(make_job())
    first = rig.processed()
    rig.handle(make_job(), attempt=2)

    assert rig.separator.calls == 1
    assert rig.processed() == first
    assert decode_event(rig.store.objects[f"{DEFAULT_PREFIX}/manifest.json"].data) == first


def test_old_manifests_without_analysis_still_answer_a_redelivery(rig: Rig) -> None:
    rig.handle(make_job())
    body = json.loads(rig.store.objects[f"{DEFAULT_PREFIX}/manifest.json"].data)
    for stem in body["stems"]:
        for key in ("loudnessLufs", "peakDbfs", "silent", "peaksUri"):
            del stem[key]
    del body["usage"]
    rig.store.put(f"{DEFAULT_PREFIX}/manifest.json", json.dumps(body).encode())

    rig.handle(make_job(), attempt=2)

    assert rig.separator.calls == 1
    republished = rig.processed()
    assert republished.usage is None
    assert republished.stems[0].silent is None
    assert OUTPUT_BUCKET in republished.stems[0].uri
