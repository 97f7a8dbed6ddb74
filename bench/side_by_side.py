"""The default benchmark: every selected pipeline on the same track, alternating, N reps.

Order within a repetition rotates (rep 0: reference, inprocess, e2e; rep 1: inprocess,
e2e, reference; ...), so no pipeline always runs first or right after another. Parity is
computed from the first repetition, where the fleet's and the reference's float stems
are kept; later repetitions keep nothing.
"""

from __future__ import annotations

import contextlib
import tempfile
import time
from pathlib import Path
from typing import Any, Protocol

from rich.console import Console

from bench.fleet import EndToEndPipeline, InProcessPipeline
from bench.measure import ForwardTimer, StageLog
from bench.options import Mode, Options
from bench.parity import Parity, compare
from bench.reference import ReferencePipeline
from bench.report import build_report
from bench.results import Captured, RunResult
from bench.runtime import environment, fleet_settings
from bench.workload import MODEL_NAME, model_folder, synth_track
from consumer.app import load_separator
from consumer.separation import resolve_device

__all__ = ["run_side_by_side"]

_WARMUP_SECONDS = 5.0  # one model segment: one forward pass


class _Pipeline(Protocol):
    mode: str

    def run(self, track: Path, rep: int, *, capture: bool = False) -> RunResult: ...


class _EndToEnd:
    """Adapts ``EndToEndPipeline.run`` (no float stems to capture) to ``_Pipeline``."""

    mode = "e2e"

    def __init__(self, pipeline: EndToEndPipeline) -> None:
        self._pipeline = pipeline

    def run(self, track: Path, rep: int, *, capture: bool = False) -> RunResult:
        del capture
        return self._pipeline.run(track, rep)


def _rotated(modes: tuple[Mode, ...], rep: int) -> list[Mode]:
    shift = rep % len(modes)
    return list(modes[shift:] + modes[:shift])


def _line(result: RunResult, reps: int) -> str:
    rep = "warm-up" if result.rep < 0 else f"rep {result.rep + 1}/{reps}"
    pressure = result.usage.cpu_pressure
    return (
        f"{rep:>9} {result.mode:<9} {result.audio_seconds:5.1f} s audio in "
        f"{result.wall_s:6.2f} s ({result.throughput:.3f}×); forward {result.forward_s:6.2f} s"
        f" ({result.forward_calls}); overhead {result.overhead_s:5.2f} s; "
        f"RSS {result.usage.peak_rss_mb:.0f} MiB"
        + ("" if pressure is None else f"; CPU pressure {pressure:.0%}")
    )


def run_side_by_side(options: Options, console: Console) -> dict[str, Any]:
    device = resolve_device(options.device)
    folder = model_folder(options.model, options.cache_dir)
    track = synth_track(options.seconds, options.cache_dir, seed=options.seed)
    warm_track = synth_track(min(_WARMUP_SECONDS, options.seconds), options.cache_dir)
    settings = fleet_settings(options, folder)
    console.print(f"model folder {folder} ({options.model}); track {track}")

    pipelines: dict[str, _Pipeline] = {}
    load_seconds: dict[str, float] = {}
    runs: list[RunResult] = []
    parity: Parity | None = None
    with (
        contextlib.ExitStack() as stack,
        tempfile.TemporaryDirectory(prefix="stem-bench-") as tmp,
    ):
        stage_log = stack.enter_context(StageLog().capture())
        if "reference" in options.modes:
            with console.status("loading the reference (demucs.api.Separator)…"):
                started = time.perf_counter()
                reference = ReferencePipeline(
                    MODEL_NAME,
                    folder,
                    device=device,
                    overlap=options.overlap,
                    mp3_bitrate=options.mp3_bitrate,
                )
                load_seconds["reference"] = time.perf_counter() - started
            stack.callback(reference.forward.remove)
            pipelines["reference"] = reference
        if "inprocess" in options.modes or "e2e" in options.modes:
            with console.status("loading the fleet's separator…"):
                separator = load_separator(settings)
            load_seconds["fleet"] = separator.load_seconds
            forward = ForwardTimer(separator.model, cuda=separator.device.type == "cuda")
            stack.callback(forward.remove)
            if "inprocess" in options.modes:
                pipelines["inprocess"] = InProcessPipeline(
                    settings,
                    separator,
                    forward=forward,
                    stage_log=stage_log,
                    workdir=Path(tmp),
                    mp3_bitrate=options.mp3_bitrate,
                )
            if "e2e" in options.modes:
                with console.status("starting the Pub/Sub emulator, fake-gcs-server, a worker…"):
                    e2e = stack.enter_context(
                        EndToEndPipeline(
                            settings,
                            separator,
                            forward=forward,
                            stage_log=stage_log,
                            timeout_s=options.timeout_s,
                            mp3_bitrate=options.mp3_bitrate,
                        )
                    )
                pipelines["e2e"] = _EndToEnd(e2e)

        for _ in range(options.warmup):
            for mode in options.modes:
                with console.status(f"warm-up: {mode}…"):
                    console.print(_line(pipelines[mode].run(warm_track, -1), options.reps))

        want_parity = {"reference", "inprocess"} <= set(options.modes)
        for rep in range(options.reps):
            captured: dict[str, Captured] = {}
            for mode in _rotated(options.modes, rep):
                capture = want_parity and parity is None and mode in ("reference", "inprocess")
                with console.status(f"rep {rep + 1}/{options.reps}: {mode}…"):
                    result = pipelines[mode].run(track, rep, capture=capture)
                if result.captured is not None:
                    captured[mode] = result.captured
                    result.captured = None
                runs.append(result)
                console.print(_line(result, options.reps))
            if len(captured) == 2:
                parity = compare(captured["reference"], captured["inprocess"])
    return build_report(options, environment(device), runs, parity, load_seconds)
