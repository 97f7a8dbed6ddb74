"""The release check: the reliability measurements at full size, on emulators of its own.

``python -m tests.reliability.long_run --jobs 500 --workers 3 --out docs/reliability.md``

1. the chaos run (:mod:`tests.chaos.run`) with ``--jobs`` jobs;
2. the soak with the stand-in model (``--soak-jobs`` x 5) and with the tiny Demucs model
   on ``stemctl worker`` (``--soak-jobs``);
3. one track of ``--track-seconds`` (10 minutes) on ``stemctl worker``.

Each is held to the same bounds as the CI-sized tests (the 10-minute track also to the
stated 2.5 GiB); the figures go to ``--figures`` and into the ``long`` section of
``--out``. Exit code 1 when any bound or the promise is broken.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from devkit.models import write_local_model
from tests.chaos.catalogue import MODEL
from tests.chaos.run import ChaosConfig, run_chaos
from tests.reliability.environment import local_emulators
from tests.reliability.figures import read_figures, write_figures
from tests.reliability.report import render_section, update_document
from tests.reliability.soak import (
    LONG_TRACK_LIMIT_BYTES,
    MAX_SLOPE_BYTES_PER_JOB,
    MIB,
    SeparatorKind,
    SoakReport,
    run_soak,
    run_track,
)
from tests.support.settings_env import isolated_settings


def _log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def _soak_failures(report: SoakReport) -> list[str]:
    found = []
    if report.processed != report.jobs:
        found.append(f"{report.name}: {report.processed}/{report.jobs} processed")
    if report.slope_bytes_per_job > MAX_SLOPE_BYTES_PER_JOB:
        found.append(
            f"{report.name}: RSS floor grows {report.slope_bytes_per_job / 1024:.0f} KiB/job"
        )
    if report.temp_left:
        found.append(f"{report.name}: temporary files left: {report.temp_left[:5]}")
    if report.exit_code != 0:
        found.append(f"{report.name}: exit code {report.exit_code} on SIGTERM")
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=500)
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--kill-every", type=float, default=3.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--soak-jobs", type=int, default=200)
    parser.add_argument("--track-seconds", type=float, default=600.0)
    parser.add_argument("--figures", type=Path, default=Path("build/reliability/long"))
    parser.add_argument("--out", type=Path, default=Path("docs/reliability.md"))
    parser.add_argument("--note", default="")
    args = parser.parse_args(argv)

    failures: list[str] = []
    started = time.monotonic()
    for stale in args.figures.glob("*.json"):
        stale.unlink()
    with tempfile.TemporaryDirectory(prefix="reliability-") as tmp, local_emulators() as hosts:
        workdir = Path(tmp)
        repo = write_local_model(workdir / "models", MODEL, size="tiny")

        def step(name: str) -> Path:
            folder = workdir / name
            folder.mkdir()
            return folder

        _log(f"chaos: {args.jobs} jobs, {args.workers} workers")
        config = ChaosConfig(
            jobs=args.jobs,
            workers=args.workers,
            kill_every_s=args.kill_every,
            seed=args.seed,
            drain_timeout_s=max(ChaosConfig.drain_timeout_s, 1.5 * args.jobs),
        )
        chaos = run_chaos(
            config, isolated_settings(*hosts), model_repo=repo, workdir=step("chaos"), log=_log
        )
        write_figures(args.figures, "chaos", chaos.figures())
        failures += chaos.failures() + ([] if chaos.drained else ["chaos: not drained"])

        soaks: tuple[tuple[SeparatorKind, int], ...] = (
            ("stand-in", 5 * args.soak_jobs),
            ("demucs", args.soak_jobs),
        )
        for separator, jobs in soaks:
            _log(f"soak: {jobs} jobs, {separator}")
            soak = run_soak(
                isolated_settings(*hosts),
                jobs=jobs,
                separator=separator,
                model_repo=repo,
                workdir=step(f"soak-{separator}"),
                timeout_s=max(240.0, 3.0 * jobs),
                log=_log,
            )
            write_figures(args.figures, soak.name, soak.figures())
            failures += _soak_failures(soak)

        _log(f"track: {args.track_seconds:g} s")
        track = run_track(
            isolated_settings(*hosts),
            seconds=args.track_seconds,
            model_repo=repo,
            workdir=step("track"),
        )
        write_figures(args.figures, "track", track.figures())
        if not track.processed:
            failures.append("track: not processed")
        limit = min(track.bound_bytes, LONG_TRACK_LIMIT_BYTES)
        if track.peak_rss_bytes > limit:
            failures.append(
                f"track: peak {track.peak_rss_bytes / MIB:.0f} MiB > {limit / MIB:.0f} MiB"
            )

    note = args.note or f"Wall time of the whole run: {(time.monotonic() - started) / 60:.0f} min."
    body = render_section("long", read_figures(args.figures), note)
    update_document(args.out, "long", body)
    print(body)
    for failure in failures:
        print("FAIL", failure, file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
