"""Resource bounds of a worker process: memory flat over many jobs, no leftover files,
and a long track within a stated memory bound (see :mod:`tests.reliability.soak`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from consumer.settings import Settings
from tests.reliability.figures import record
from tests.reliability.soak import MAX_SLOPE_BYTES_PER_JOB, MIB, run_soak, run_track

pytestmark = pytest.mark.integration


@pytest.mark.timeout(240)
def test_rss_stays_flat_and_no_temporary_file_or_descriptor_is_left_over_200_jobs(
    settings: Settings, model_repo: Path, tmp_path: Path
) -> None:
    """200 one-second jobs (mp3/wav/flac, all stems or two) through one worker process.

    Honest scope: the worker here is :mod:`tests.reliability.standin_worker` — the real
    runner, streaming pull, GCS adapter, publishers, decoding, spooling and encoding,
    with the model replaced by ``tests.support.fakes.CountingSeparator`` so 200 jobs fit a CI
    budget on two cores. The same soak on ``stemctl worker`` with the real (tiny) Demucs
    model is part of the long mode (``python -m tests.reliability.long_run``).
    """
    report = run_soak(
        settings, jobs=200, separator="stand-in", model_repo=model_repo, workdir=tmp_path
    )
    record(report.name, report.figures())
    print("\n".join(f"{name}: {value}" for name, value in report.rows()))

    assert report.processed == 200
    assert report.exit_code == 0
    assert report.slope_bytes_per_job <= MAX_SLOPE_BYTES_PER_JOB
    assert report.temp_left == []
    assert report.first is not None
    assert report.last is not None
    assert report.last.open_fds <= report.first.open_fds + 8
    assert report.last.threads <= report.first.threads + 8


@pytest.mark.timeout(240)
def test_a_one_minute_track_peaks_within_the_memory_bound_that_holds_the_ten_minute_run(
    settings: Settings, model_repo: Path, tmp_path: Path
) -> None:
    """``stemctl worker`` with the tiny Demucs model on a 60 s track: peak RSS (the
    kernel's high-water mark) within ``track_memory_bound``. The long mode runs the same
    on a 10-minute track, where the stems no longer fit in memory and are spooled."""
    report = run_track(settings, seconds=60, model_repo=model_repo, workdir=tmp_path)
    record("track", report.figures())
    print("\n".join(f"{name}: {value}" for name, value in report.rows()))

    assert report.processed
    assert report.peak_rss_bytes <= report.bound_bytes, (
        f"peak {report.peak_rss_bytes / MIB:.0f} MiB > bound {report.bound_bytes / MIB:.0f} MiB"
    )
    assert report.temp_left == []
