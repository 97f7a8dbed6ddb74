"""``stemctl separate``: the worker's pipeline on local files — its decoder, the model loaded
as a worker loads it (the tiny model folder of the worker fixtures), real Demucs, its
encoders and its manifest — with no Pub/Sub and no GCS.

The parity test runs the same clip through an in-process worker on the real emulators and
compares the stems byte for byte (sha256): separate is the worker, not a twin of it."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
import torch
from typer.testing import CliRunner, Result

from consumer.runner import Worker
from consumer.settings import Settings
from stem_contracts import HTDEMUCS_6S_STEMS, Job, StemsProcessed, decode_event, split_gcs_uri
from stemctl.cli import app
from stemctl.display import human_size
from stemctl.model import weights_cached
from stemctl.support import track_ids
from tests.support.worker_fixtures import MODEL, Results

STEMCTL = Path(sys.executable).with_name("stemctl")


def separate(*args: str | Path, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(app, ["separate", *map(str, args)], env=env, catch_exceptions=False)


def tiny(model_repo: Path) -> list[str | Path]:
    """The options that load the worker fixtures' model, as ``worker_settings`` does."""
    return ["--model", MODEL, "--repo", model_repo, "--device", "cpu"]


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _written(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def _expected(fmt: str) -> list[str]:
    """Each stem, its waveform (peaks.json) and the manifest."""
    return sorted(
        [
            *(f"{stem}.{fmt}" for stem in HTDEMUCS_6S_STEMS),
            *(f"{stem}.peaks.json" for stem in HTDEMUCS_6S_STEMS),
            "manifest.json",
        ]
    )


@pytest.mark.integration
@pytest.mark.parametrize(
    ("source_fmt", "stem_fmt"),
    [("wav", "mp3"), ("mp3", "wav"), ("flac", "flac")],
)
def test_separate_writes_the_very_stems_the_worker_writes_for_the_same_clip(
    model_repo: Path,
    worker_settings: Settings,
    start_worker: Callable[[Settings], Worker],
    results: Results,
    publish: Callable[..., str],
    clip: Callable[..., Path],
    stage: Callable[[Path, str, str], str],
    gcs: Any,
    tmp_path: Path,
    source_fmt: str,
    stem_fmt: str,
) -> None:
    source = clip(source_fmt, 1.5)
    out = tmp_path / "out"

    # When: separate runs on the local file...
    result = separate(source, "--out", out, "--format", stem_fmt, *tiny(model_repo))

    # Then: the folder holds the stems and the manifest, which describes them.
    assert result.exit_code == 0, result.output
    folder = out / track_ids([source])[0]
    assert _written(folder) == _expected(stem_fmt)
    local = decode_event((folder / "manifest.json").read_bytes())
    assert isinstance(local, StemsProcessed)
    assert local.model_version == "demucs-htdemucs-6s"
    assert local.source.uri == f"gs://local{source}"
    for stem in local.stems:
        path = folder / f"{stem.name}.{stem_fmt}"
        assert stem.uri == f"gs://local{path}"
        assert _sha256(path.read_bytes()) == stem.sha256
    # The summary table names the file, its folder and the stems' size in binary units.
    (row,) = [line for line in result.stdout.splitlines() if line.startswith(source.name)]
    assert row.endswith(str(folder))
    assert f" {human_size(sum(stem.size_bytes for stem in local.stems))} " in row

    # ...and the worker runs on the same clip, format and model folder.
    uri = stage(source, worker_settings.staging_bucket, f"in/a.{source_fmt}")
    start_worker(worker_settings)
    publish(Job(job_id="job-1", track_id="t1", source_uri=uri, model=MODEL, format=stem_fmt))
    event = results.wait_final("job-1")
    assert isinstance(event, StemsProcessed), event

    def stored(uri: str) -> bytes:
        bucket, name = split_gcs_uri(uri)
        data: bytes = gcs.bucket(bucket).blob(name).download_as_bytes()
        return data

    # Then: byte for byte the same stems.
    worker_stems = {stem.name: _sha256(stored(stem.uri)) for stem in event.stems}
    local_stems = {
        stem.name: _sha256((folder / f"{stem.name}.{stem_fmt}").read_bytes())
        for stem in local.stems
    }
    assert local_stems == worker_stems
    assert local.source.duration_seconds == event.source.duration_seconds


def test_bad_files_get_one_line_each_and_the_good_ones_are_still_written(
    model_repo: Path, clip: Callable[..., Path], tmp_path: Path
) -> None:
    good_wav, good_mp3 = clip("wav", 1.5), clip("mp3", 1.5)
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(np.random.default_rng(7).bytes(20_000))
    missing = tmp_path / "missing.flac"
    unsupported = tmp_path / "vorbis.ogg"
    sf.write(unsupported, np.zeros((44100, 2), dtype=np.float32), 44100, format="OGG")
    too_long = clip("flac", 3.0)
    out = tmp_path / "out"

    result = separate(
        good_wav,
        corrupt,
        missing,
        unsupported,
        too_long,
        good_mp3,
        "--out",
        out,
        *tiny(model_repo),
        env={"STEM_MAX_AUDIO_SECONDS": "2.5"},
    )

    assert result.exit_code == 1, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("stemctl: ")]
    assert len(errors) == 4, result.stderr
    for bad, code in [
        (corrupt, "corrupt_audio"),
        (missing, "source_missing"),
        (unsupported, "unsupported_audio"),
        (too_long, "audio_too_long"),
    ]:
        (line,) = [line for line in errors if line.startswith(f"stemctl: {bad}: ")]
        assert line.endswith(f"[{code}]")
        assert "source." not in line  # the pipeline's name for its copy stays inside
    assert "2 of 6 files separated" in result.stderr
    good = track_ids([good_wav, good_mp3])
    assert sorted(p.name for p in out.iterdir()) == sorted(good)
    for track in good:
        assert _written(out / track) == _expected("mp3")


def test_stems_the_model_lacks_and_bitrates_mp3_lacks_are_usage_errors(
    model_repo: Path, clip: Callable[..., Path], tmp_path: Path
) -> None:
    source, out = clip("wav", 1.0), tmp_path / "out"

    stems = separate(source, "--out", out, "--stems", "vocals,kazoo", *tiny(model_repo))
    bitrate = separate(source, "--out", out, "--mp3-bitrate", "100", *tiny(model_repo))

    assert stems.exit_code == 2, stems.output
    assert "kazoo not in model htdemucs_6s" in stems.output
    assert bitrate.exit_code == 2, bitrate.output
    assert "100 is not one of 96, 112, 128" in bitrate.output
    assert not out.exists()


def test_only_the_requested_stems_are_written(
    model_repo: Path, clip: Callable[..., Path], tmp_path: Path
) -> None:
    source, out = clip("wav", 1.0), tmp_path / "out"

    result = separate(
        source, "-o", out, "--stems", "vocals, bass", "--format", "wav", *tiny(model_repo)
    )

    assert result.exit_code == 0, result.output
    folder = out / track_ids([source])[0]
    assert _written(folder) == [
        "bass.peaks.json",
        "bass.wav",
        "manifest.json",
        "vocals.peaks.json",
        "vocals.wav",
    ]


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")
def test_a_missing_gpu_is_one_line_that_says_so(clip: Callable[..., Path], tmp_path: Path) -> None:
    result = separate(clip("wav", 1.0), "--out", tmp_path / "out", "--device", "cuda")

    assert result.exit_code == 1, result.output
    assert result.stderr.splitlines() == [
        "stemctl: device 'cuda' was requested but no CUDA device is available"
    ]


@pytest.mark.skipif(bool(weights_cached("htdemucs_6s")), reason="htdemucs_6s weights are cached")
def test_without_weights_or_network_it_fails_in_one_line_asking_for_a_model_folder(
    clip: Callable[..., Path], tmp_path: Path
) -> None:
    # A process of its own: the hub libraries read HF_HUB_OFFLINE and their cache folders
    # when imported. Offline mode only makes the (here certain) failure quick.
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_HOME": str(tmp_path / "hf"),
        "TORCH_HOME": str(tmp_path / "torch"),
    }
    out = tmp_path / "out"

    done = subprocess.run(
        [str(STEMCTL), "separate", str(clip("wav", 1.0)), "--out", str(out), "--device", "cpu"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert done.returncode == 1, done.stdout + done.stderr
    (failure,) = [line for line in done.stderr.splitlines() if line.startswith("stemctl: ")]
    assert "model htdemucs_6s" in failure
    assert "pass --repo DIR" in failure
    assert not out.exists()  # nothing written, and no stand-in model ran
