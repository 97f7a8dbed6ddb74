"""Resource bounds of one worker process: a soak of many small jobs, and one long track.

Both run a worker as a child process on the emulators and read it from ``/proc`` —
resident memory (``VmRSS``) and its high-water mark (``VmHWM``), threads, open file
descriptors — so nothing the test process itself holds is counted. The worker's
``TMPDIR`` is a folder of the run's own, so leftover temporary files can be counted too.

- :func:`run_soak`: ``jobs`` one-second jobs (formats and stem subsets varying), RSS read
  after each completed job; the slope of RSS over jobs, fitted after a warm-up, says
  whether memory grows per job. ``separator="stand-in"`` runs everything but the model
  (:mod:`tests.reliability.standin_worker`); ``"demucs"`` is ``stemctl worker`` with the
  tiny Demucs model.
- :func:`run_track`: one track of ``seconds`` through ``stemctl worker``; its peak RSS
  against :func:`track_memory_bound`.
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

import soundfile as sf

from consumer import gcp
from consumer.settings import Settings
from consumer.stems import DEFAULT_MEMORY_LIMIT_BYTES
from devkit.synth import multi_instrument_mix
from stem_contracts import Job, StemsProcessed
from tests.chaos.catalogue import MODEL
from tests.chaos.fleet import STEMCTL_WORKER, ProcStats, WorkerProcess
from tests.reliability.environment import provision, publish_jobs, results_subscription
from tests.support.worker_fixtures import Results

__all__ = [
    "LONG_TRACK_LIMIT_BYTES",
    "MAX_SLOPE_BYTES_PER_JOB",
    "SeparatorKind",
    "SoakReport",
    "TrackReport",
    "rss_slope",
    "run_soak",
    "run_track",
    "track_memory_bound",
]

Log = Callable[[str], None]
SeparatorKind = Literal["stand-in", "demucs"]
STANDIN_WORKER: Final = (sys.executable, "-m", "tests.reliability.standin_worker")
THREAD_ENV: Final = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
MIB: Final = 2**20

MAX_SLOPE_BYTES_PER_JOB: Final = 32 * 1024
"""Allowed growth of the RSS floor: a leak of one 1 s stem per job would be ~350 KiB/job,
allocator noise stays far below."""
LONG_TRACK_LIMIT_BYTES: Final = int(2.5 * 2**30)
"""The stated bound for a 10-minute track on a CPU worker (tiny model, batch 2)."""

MODEL_WORKING_SET_BYTES: Final = int(1.25 * 2**30)
"""Host memory the tiny HTDemucs needs for one batch of two 7.8 s segments on a CPU
(transformer activations and allocator slack): measured 0.9 GiB above an idle worker."""


def track_memory_bound(idle_rss_bytes: int, seconds: float) -> int:
    """The peak RSS a worker may reach on a track of ``seconds`` (CPU, tiny model).

    An idle worker (model loaded), plus the model's working set for one batch, plus the
    host buffers a track needs: the decoded mix (float32 stereo at 44.1 kHz) about three
    times over — the mix, its normalised copy, the decoder's buffer — and the six stems
    while they fit ``DEFAULT_MEMORY_LIMIT_BYTES`` (beyond that they are spooled to disk).
    """
    mix = int(seconds * 44_100 * 2 * 4)
    stems = 6 * mix if 6 * mix <= DEFAULT_MEMORY_LIMIT_BYTES else 0
    return idle_rss_bytes + MODEL_WORKING_SET_BYTES + 3 * mix + stems


def rss_slope(samples: list[tuple[int, int]], windows: int = 10) -> float:
    """Bytes per job: the least-squares slope of the RSS *floor* over jobs done.

    RSS swings by hundreds of MiB within a job (a forward pass allocates, then the
    allocator hands memory back), so a sample's value depends on when it was taken. The
    lowest sample in each of ``windows`` consecutive windows is what the worker keeps
    between jobs; a leak raises that floor.
    """
    if len(samples) < 2:
        return 0.0
    size = max(1, len(samples) // windows)
    floor = [min(samples[i : i + size], key=lambda s: s[1]) for i in range(0, len(samples), size)]
    xs = [float(x) for x, _ in floor]
    ys = [float(y) for _, y in floor]
    return float(statistics.linear_regression(xs, ys).slope) if len(set(xs)) > 1 else 0.0


def _worker_settings(base: Settings, model_repo: Path) -> Settings:
    return base.model_copy(
        update={
            "model": MODEL,
            "model_repo": model_repo,
            "device": "cpu",
            "progress_interval_s": 0.0,
            "encode_workers": 2,
            "max_in_flight": 2,
        }
    )


def _write_track(path: Path, seconds: float) -> Path:
    """``seconds`` of the synthetic mix as 16-bit FLAC, written ten seconds at a time."""
    block = multi_instrument_mix(min(seconds, 10.0), 44_100)
    with sf.SoundFile(path, "w", 44_100, 2, format="FLAC", subtype="PCM_16") as out:
        left = int(seconds * 44_100)
        while left > 0:
            out.write(block[:, :left].T)
            left -= block.shape[1]
    return path


def _spawn(settings: Settings, separator: SeparatorKind, tmpdir: Path) -> WorkerProcess:
    tmpdir.mkdir(parents=True, exist_ok=True)
    worker = WorkerProcess(
        settings,
        STEMCTL_WORKER if separator == "demucs" else STANDIN_WORKER,
        extra_env={**THREAD_ENV, "TMPDIR": str(tmpdir)},
        name=f"soak-{separator}",
    )
    worker.wait_for_log("worker pulling", 120)
    return worker


@dataclass
class SoakReport:
    separator: SeparatorKind
    jobs: int
    processed: int = 0
    wall_s: float = 0.0
    samples: list[tuple[int, int]] = field(default_factory=list)
    """(jobs done, RSS bytes) after each job."""
    slope_bytes_per_job: float = 0.0
    growth_bytes: int = 0
    """What the slope amounts to over the jobs after the warm-up."""
    first: ProcStats | None = None
    last: ProcStats | None = None
    max_fds: int = 0
    max_threads: int = 0
    temp_left: list[str] = field(default_factory=list)
    exit_code: int | None = None
    exit_s: float | None = None
    """From SIGTERM to the worker's exit (None: it had not exited when the wait ended)."""
    warm_up: int = 0
    peak_rss_bytes: int = 0

    @property
    def name(self) -> str:
        return "soak" if self.separator == "stand-in" else "soak-demucs"

    def rows(self) -> list[tuple[str, str]]:
        what = "stand-in model" if self.separator == "stand-in" else "tiny Demucs"
        first, last = self.first, self.last
        assert first is not None
        assert last is not None
        return [
            (
                f"Soak ({what}): load",
                f"{self.processed}/{self.jobs} one-second jobs through one worker "
                f"in {self.wall_s:.0f} s",
            ),
            (
                f"Soak ({what}): RSS slope",
                f"{self.slope_bytes_per_job / 1024:+.1f} KiB/job (floor, after a warm-up of "
                f"{self.warm_up} jobs: {self.growth_bytes / MIB:+.1f} MiB over the rest); "
                f"{first.rss_bytes / MIB:.0f} MiB idle, {self.peak_rss_bytes / MIB:.0f} MiB peak",
            ),
            (
                f"Soak ({what}): fds / threads",
                f"{first.open_fds} → {last.open_fds} (max {self.max_fds}) / "
                f"{first.threads} → {last.threads} (max {self.max_threads})",
            ),
            (f"Soak ({what}): temporary files left", str(len(self.temp_left))),
            (
                f"Soak ({what}): exit after SIGTERM",
                f"{self.exit_s} s, code {self.exit_code}" if self.exit_s is not None else "none",
            ),
        ]

    def figures(self) -> dict[str, Any]:
        return {"title": self.name, "rows": self.rows(), "data": asdict(self)}


def run_soak(
    base: Settings,
    *,
    jobs: int,
    separator: SeparatorKind,
    model_repo: Path,
    workdir: Path,
    warm_up_fraction: float = 0.25,
    timeout_s: float = 240.0,
    log: Log = print,
) -> SoakReport:
    """``jobs`` small jobs through one worker process; see the module docstring."""
    report = SoakReport(separator, jobs)
    settings = _worker_settings(base, model_repo)
    provision(settings)
    gcs = gcp.storage_client(settings)
    clip = workdir / "clip.wav"
    sf.write(clip, multi_instrument_mix(1.0, 44_100).T, 44_100, subtype="PCM_16")
    gcs.bucket(settings.staging_bucket).blob("in/clip.wav").upload_from_filename(str(clip))
    source = f"gs://{settings.staging_bucket}/in/clip.wav"
    tmpdir = workdir / "tmp"
    with results_subscription(settings, "soak-results") as results:
        worker = _spawn(settings, separator, tmpdir)
        _soak(report, settings, source, results, worker, log, timeout_s)
    report.warm_up = warm = int(jobs * warm_up_fraction)
    steady = [(n, rss) for n, rss in report.samples if n > warm]
    report.slope_bytes_per_job = rss_slope(steady)
    report.growth_bytes = int(report.slope_bytes_per_job * (report.processed - warm))
    report.temp_left = sorted(str(p.relative_to(tmpdir)) for p in tmpdir.rglob("*"))
    return report


def _soak(
    report: SoakReport,
    settings: Settings,
    source: str,
    results: Results,
    worker: WorkerProcess,
    log: Log,
    timeout_s: float,
) -> None:
    jobs, separator = report.jobs, report.separator
    try:
        report.first = worker.stats()
        formats = ("mp3", "wav", "flac")
        batch = [
            Job(
                job_id=f"soak-{i:04d}",
                track_id="soak",
                source_uri=source,
                model=MODEL,
                format=formats[i % 3],
                stems=None if i % 4 else ("vocals", "bass"),
            )
            for i in range(jobs)
        ]
        started = time.monotonic()
        publish_jobs(settings, batch)
        done: set[str] = set()
        deadline = started + timeout_s
        while len(done) < jobs and time.monotonic() < deadline:
            results.settle(0.2)
            now_done = {e.job_id for e in results.events if isinstance(e, StemsProcessed)}
            if len(now_done) > len(done):
                done = now_done
                stats = worker.stats()
                if stats is not None:
                    report.samples.append((len(done), stats.rss_bytes))
                    report.max_fds = max(report.max_fds, stats.open_fds)
                    report.max_threads = max(report.max_threads, stats.threads)
                    report.last = stats
                if len(done) % 50 == 0:
                    log(f"soak ({separator}): {len(done)}/{jobs}")
        report.wall_s = time.monotonic() - started
        report.processed = len(done)
        final = worker.stats()
        report.peak_rss_bytes = final.peak_rss_bytes if final is not None else 0
        worker.send_term()
        term_at = time.monotonic()
        # Usually ~2 s; the wait is long because on a loaded 2-core box a shutdown once
        # took over 60 s (the streaming pull's close or the publishers' flush: the report
        # keeps the time, so a slow exit shows up even when it passes).
        report.exit_code = worker.wait(120)
        if report.exit_code is not None:
            report.exit_s = round(time.monotonic() - term_at, 1)
    finally:
        if worker.alive():
            worker.kill()


@dataclass
class TrackReport:
    seconds: float
    processed: bool = False
    wall_s: float = 0.0
    idle_rss_bytes: int = 0
    peak_rss_bytes: int = 0
    bound_bytes: int = 0
    temp_left: list[str] = field(default_factory=list)

    def rows(self) -> list[tuple[str, str]]:
        minutes = self.seconds / 60
        return [
            (
                f"Long track: {minutes:g} min, peak RSS",
                f"{self.peak_rss_bytes / MIB:.0f} MiB (bound {self.bound_bytes / MIB:.0f} MiB; "
                f"idle worker {self.idle_rss_bytes / MIB:.0f} MiB); processed in "
                f"{self.wall_s:.0f} s",
            ),
        ]

    def figures(self) -> dict[str, Any]:
        return {"title": "track", "rows": self.rows(), "data": asdict(self)}


def run_track(
    base: Settings,
    *,
    seconds: float,
    model_repo: Path,
    workdir: Path,
    timeout_s: float = 900.0,
) -> TrackReport:
    """One track of ``seconds`` (FLAC source, mp3 stems) through ``stemctl worker``."""
    report = TrackReport(seconds)
    settings = _worker_settings(base, model_repo).model_copy(
        update={"max_audio_seconds": max(seconds + 60, 1200.0), "job_timeout_s": timeout_s}
    )
    provision(settings)
    gcs = gcp.storage_client(settings)
    track = _write_track(workdir / "track.flac", seconds)
    gcs.bucket(settings.staging_bucket).blob("in/track.flac").upload_from_filename(str(track))
    track.unlink()
    tmpdir = workdir / "tmp"
    with results_subscription(settings, "track-results") as results:
        _track(report, settings, seconds, results, _spawn(settings, "demucs", tmpdir), timeout_s)
    report.temp_left = sorted(str(p.relative_to(tmpdir)) for p in tmpdir.rglob("*"))
    return report


def _track(
    report: TrackReport,
    settings: Settings,
    seconds: float,
    results: Results,
    worker: WorkerProcess,
    timeout_s: float,
) -> None:
    try:
        idle = worker.stats()
        assert idle is not None
        report.idle_rss_bytes = idle.rss_bytes
        report.bound_bytes = track_memory_bound(idle.rss_bytes, seconds)
        job = Job(
            job_id="long-track",
            track_id="long",
            source_uri=f"gs://{settings.staging_bucket}/in/track.flac",
            model=MODEL,
        )
        started = time.monotonic()
        publish_jobs(settings, [job])
        event = results.wait_final(job.job_id, timeout_s=timeout_s)
        report.wall_s = time.monotonic() - started
        report.processed = isinstance(event, StemsProcessed)
        stats = worker.stats()
        assert stats is not None
        report.peak_rss_bytes = stats.peak_rss_bytes
    finally:
        worker.kill()
