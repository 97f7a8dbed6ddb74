"""The reuse key and pointer checks, as pure logic (DESIGN.md "Reuse"); the end-to-end
behaviour on the emulators is in ``test_reuse_emulator.py``."""

from __future__ import annotations

import hashlib
import json
import time
from datetime import UTC, datetime
from typing import Any

import pytest

from consumer.reuse import SHA256_METADATA, ReuseIndex, output_settings, reuse_key
from consumer.settings import Settings
from stem_contracts import HTDEMUCS_6S_STEMS, Job, SourceInfo, StemFile, StemsProcessed, Usage
from tests.support.fakes import InMemoryBlobStore, StoredObject

SOURCE_SHA = "a" * 64
SOURCES = HTDEMUCS_6S_STEMS


def _job(**fields: Any) -> Job:
    return Job(job_id="j1", track_id="t1", source_uri="gs://stage/in/a.wav", **fields)


def _key(job: Job | None = None, settings: Settings | None = None, sha: str = SOURCE_SHA) -> str:
    return reuse_key(sha, job or _job(), SOURCES, settings or Settings())


@pytest.mark.parametrize(
    "changed",
    [
        {"format": "wav"},
        {"mp3_bitrate": 192},
        {"stems": ("vocals",)},
        {"model": "htdemucs"},
        {"stems": ("vocals", "no_vocals")},
        {"clip_mode": "clamp"},
        {"sample_rate": "source"},
        {"sample_rate": 48000},
    ],
)
def test_every_output_option_of_the_job_changes_the_key(changed: dict[str, Any]) -> None:
    assert _key(_job(**changed)) != _key()


def test_the_sample_format_and_clip_mode_of_a_wav_job_change_the_key() -> None:
    wav = _key(_job(format="wav"))
    pcm24 = _key(_job(format="wav", sample_format="pcm24"))
    float32 = _key(_job(format="wav", sample_format="float32"))
    unclipped = _key(_job(format="wav", sample_format="float32", clip_mode="none"))

    assert len({wav, pcm24, float32, unclipped}) == 4


@pytest.mark.parametrize(
    "changed",
    [
        {"segment_overlap": 0.5},
        {"shifts": 1},
        {"precision": "bf16"},
        {"mp3_quality": 5},
        {"model_repo": "/models/other"},
        {"silence_lufs": -40.0},
        {"waveform_points": 500},
        {"segment_seconds": 3.0},
        {"cpu_runtime": "openvino"},
    ],
)
def test_every_worker_setting_that_changes_the_output_changes_the_key(
    changed: dict[str, Any],
) -> None:
    assert _key(settings=Settings(**changed)) != _key()


def test_output_settings_lists_each_output_setting_once() -> None:
    assert set(output_settings(Settings())) == {
        "STEM_MODEL_REPO",
        "STEM_SEGMENT_OVERLAP",
        "STEM_SHIFTS",
        "STEM_SEGMENT_SECONDS",
        "STEM_PRECISION",
        "STEM_CPU_RUNTIME",
        "STEM_MP3_QUALITY",
        "STEM_SILENCE_LUFS",
        "STEM_WAVEFORM_POINTS",
    }


def test_throughput_settings_ids_and_names_do_not_change_the_key() -> None:
    other = Job(
        job_id="j2",
        track_id="t2",
        source_uri="gs://stage/in/other name.wav",
        correlation_id="c",
        reuse=False,
    )
    assert _key(other, Settings(segment_batch=4, encode_workers=3, device="cpu")) == _key()


def test_the_same_stems_in_any_order_or_implicitly_all_are_one_key() -> None:
    assert _key(_job(stems=("vocals", "drums"))) == _key(_job(stems=("drums", "vocals")))
    assert _key(_job(stems=tuple(reversed(SOURCES)))) == _key(_job())


def test_other_source_bytes_are_another_key() -> None:
    assert _key(sha="b" * 64) != _key()


def _earlier(store: InMemoryBlobStore, *, stems: tuple[str, ...] = ("drums",)) -> StemsProcessed:
    prefix = "gs://out/stems/t0/j0"
    files = []
    for name in stems:
        uri = f"{prefix}/{name}.mp3"
        data = name.encode() * 10
        store.objects[uri] = StoredObject(data, "audio/mpeg", {SHA256_METADATA: _sha(data)})
        files.append(
            StemFile(
                name=name,
                uri=uri,
                format="mp3",
                content_type="audio/mpeg",
                size_bytes=len(data),
                duration_seconds=1.0,
                sample_rate=44100,
                channels=2,
                sha256=_sha(data),
            )
        )
    event = StemsProcessed(
        job_id="j0",
        track_id="t0",
        attempt=1,
        model_version="demucs-htdemucs-6s",
        stems=tuple(files),
        source=SourceInfo(
            uri="gs://stage/in/a.wav", duration_seconds=1, sample_rate=44100, channels=2
        ),
        processing_time_ms=10,
        completed_at=datetime.now(UTC),
    )
    store.put(f"{prefix}/manifest.json", event.model_dump_json().encode())
    return event


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _find(store: InMemoryBlobStore, job: Job) -> Any:
    return ReuseIndex(store, "out").find(
        "k", job, model_version="demucs-htdemucs-6s", sources=SOURCES
    )


def test_a_pointer_to_a_manifest_whose_stems_all_hold_is_found() -> None:
    store = InMemoryBlobStore()
    event = _earlier(store)
    ReuseIndex(store, "out").remember("k", event, "gs://out/stems/t0/j0")
    pointer = json.loads(store.objects["gs://out/_reuse/k.json"].data)
    assert set(pointer) == {"jobId", "manifestUri", "createdAt"}

    found = _find(store, _job(stems=("drums",)))

    assert found is not None
    assert found[0].job_id == "j0"


@pytest.mark.parametrize(
    "damage",
    [
        "pointer garbage",
        "manifest gone",
        "stem gone",
        "size differs",
        "sha256 missing",
        "other stems",
    ],
)
def test_a_stale_pointer_is_not_found(damage: str) -> None:
    store = InMemoryBlobStore()
    event = _earlier(store)
    ReuseIndex(store, "out").remember("k", event, "gs://out/stems/t0/j0")
    stem = "gs://out/stems/t0/j0/drums.mp3"
    job = _job(stems=("drums",))
    if damage == "pointer garbage":
        store.put("gs://out/_reuse/k.json", b"{not json")
    elif damage == "manifest gone":
        del store.objects["gs://out/stems/t0/j0/manifest.json"]
    elif damage == "stem gone":
        del store.objects[stem]
    elif damage == "size differs":  # even with the sha256 recorded as before
        store.objects[stem] = StoredObject(b"x", "audio/mpeg", store.objects[stem].metadata)
    elif damage == "sha256 missing":
        store.put(stem, store.objects[stem].data)  # same bytes, written without metadata
    else:
        job = _job(stems=("drums", "bass"))

    assert _find(store, job) is None


def test_copy_brings_every_object_the_manifest_references_under_the_new_prefix() -> None:
    store = InMemoryBlobStore()
    event = _earlier(store, stems=("drums", "vocals"))
    raw = json.loads(store.objects["gs://out/stems/t0/j0/manifest.json"].data)
    for stem in raw["stems"]:  # a field this code does not know: stem analysis' peaks
        stem["peaksUri"] = stem["uri"].replace(".mp3", ".peaks.json")
        store.put(stem["peaksUri"], b"{}")
    store.put("gs://out/stems/t0/j0/manifest.json", json.dumps(raw).encode())
    ReuseIndex(store, "out").remember("k", event, "gs://out/stems/t0/j0")
    job = _job(stems=("drums", "vocals"))
    found = _find(store, job)
    assert found is not None

    pointer, manifest = found
    copied = ReuseIndex(store, "out").copy(
        pointer,
        manifest,
        job,
        "gs://out/stems/t1/j1",
        {"job_id": "j1", "track_id": "t1", "correlation_id": None, "attempt": 1},
        started=time.monotonic(),
        usage=lambda seconds: Usage(
            audio_seconds=seconds, device_seconds=0, worker_seconds=0.5, device="cpu", cost_usd=None
        ),
    )

    assert copied is not None
    assert copied.reused_from == "j0"
    assert copied.usage is not None
    assert copied.usage.audio_seconds == 1  # the earlier job's source duration: same bytes
    assert [s.uri for s in copied.stems] == [
        "gs://out/stems/t1/j1/drums.mp3",
        "gs://out/stems/t1/j1/vocals.mp3",
    ]
    assert sorted(store.calls_of("copy")) == sorted(
        f"gs://out/stems/t0/j0/{name}"
        for name in ("drums.mp3", "vocals.mp3", "drums.peaks.json", "vocals.peaks.json")
    )
    for name in ("drums.peaks.json", "vocals.peaks.json", "manifest.json"):
        assert f"gs://out/stems/t1/j1/{name}" in store.objects
    assert copied.source.uri == job.source_uri
    # The stale check covers those objects too.
    del store.objects["gs://out/stems/t0/j0/vocals.peaks.json"]
    assert _find(store, job) is None
