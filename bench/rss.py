"""``--rss-only``: peak resident memory of a pipeline on a long track, one process each.

The parent prepares the model folder and the track, then starts ``python -m bench
--rss-child MODE`` for each mode, one after the other. A child loads its model, notes its
RSS (the loaded model's footprint), runs the pipeline once and reports, as one JSON line
on stdout, its peak RSS (``VmHWM``, reset after the load) and the growth over that
footprint. Fresh processes keep one pipeline's allocations from hiding another's peak.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Final

from rich.console import Console

from bench.fleet import InProcessPipeline
from bench.measure import ForwardTimer, StageLog, rss_mb
from bench.options import Mode, Options
from bench.reference import ReferencePipeline
from bench.report import RSS_GROWTH_TARGET_MB
from bench.results import BenchError, RunResult
from bench.runtime import environment, fleet_settings
from bench.workload import MODEL_NAME, model_folder, synth_track
from consumer.app import load_separator
from consumer.separation import resolve_device

__all__ = ["run_rss", "run_rss_child"]

_MARKER: Final = "BENCH-RSS-RESULT "


def run_rss_child(options: Options, mode: Mode) -> int:
    """Measure one pipeline in this (fresh) process; print the result line."""
    device = resolve_device(options.device)
    folder = model_folder(options.model, options.cache_dir)
    track = synth_track(options.seconds, options.cache_dir, seed=options.seed)
    rss_start = rss_mb()
    result: RunResult
    with tempfile.TemporaryDirectory(prefix="stem-bench-rss-") as tmp:
        if mode == "reference":
            reference = ReferencePipeline(
                MODEL_NAME,
                folder,
                device=device,
                overlap=options.overlap,
                mp3_bitrate=options.mp3_bitrate,
            )
            rss_loaded = rss_mb()
            result = reference.run(track, 0)
        else:
            settings = fleet_settings(options, folder)
            separator = load_separator(settings)
            forward = ForwardTimer(separator.model, cuda=separator.device.type == "cuda")
            with StageLog().capture() as stage_log:
                pipeline = InProcessPipeline(
                    settings,
                    separator,
                    forward=forward,
                    stage_log=stage_log,
                    workdir=Path(tmp),
                    mp3_bitrate=options.mp3_bitrate,
                )
                rss_loaded = rss_mb()
                result = pipeline.run(track, 0)
    line = {
        "mode": mode,
        "rss_at_start_mb": round(rss_start, 1),
        "rss_after_load_mb": round(rss_loaded, 1),
        "peak_rss_mb": round(result.usage.peak_rss_mb, 1),
        "rss_growth_over_loaded_mb": round(result.usage.peak_rss_mb - rss_loaded, 1),
        "rss_method": result.usage.method,
        "run": result.to_json(),
        "environment": environment(device),
    }
    print(_MARKER + json.dumps(line), flush=True)
    return 0


def _child(options: Options, mode: Mode) -> dict[str, Any]:
    command = [sys.executable, "-m", "bench", *options.child_args(mode)]
    started = time.monotonic()
    completed = subprocess.run(
        command, stdout=subprocess.PIPE, text=True, check=False, timeout=6 * 3600
    )
    for line in completed.stdout.splitlines():
        if line.startswith(_MARKER):
            result: dict[str, Any] = json.loads(line[len(_MARKER) :])
            result["process_wall_s"] = round(time.monotonic() - started, 1)
            return result
    raise BenchError(
        f"the {mode} RSS process exited with {completed.returncode} and no result "
        f"({' '.join(command)})"
    )


def run_rss(options: Options, console: Console) -> dict[str, Any]:
    with console.status("writing the model folder and the test track (cached)…"):
        model_folder(options.model, options.cache_dir)
        synth_track(options.seconds, options.cache_dir, seed=options.seed)
    measured: dict[str, Any] = {}
    environment_info: dict[str, Any] = {}
    for mode in options.modes:
        with console.status(f"{mode}: {options.seconds:g} s track in a fresh process…"):
            child = _child(options, mode)
        run = child["run"]
        measured[mode] = {
            "audio_seconds": run["audio_seconds"],
            "wall_s": run["wall_s"],
            "throughput": run["throughput"],
            "forward_s": run["forward_s"],
            "stages_s": run["stages_s"],
            "rss_at_start_mb": child["rss_at_start_mb"],
            "rss_after_load_mb": child["rss_after_load_mb"],
            "peak_rss_mb": child["peak_rss_mb"],
            "rss_growth_over_loaded_mb": child["rss_growth_over_loaded_mb"],
            "rss_method": child["rss_method"],
            "process_wall_s": child["process_wall_s"],
        }
        console.print(
            f"{mode}: peak {child['peak_rss_mb']:.0f} MiB, "
            f"{child['rss_growth_over_loaded_mb']:.0f} MiB over the loaded model "
            f"({child['rss_after_load_mb']:.0f} MiB); {run['wall_s']:.1f} s"
        )
        environment_info = child["environment"]
    growth = measured.get("inprocess", {}).get("rss_growth_over_loaded_mb")
    conditions_met = options.model == "full" and options.seconds >= 600
    return {
        "kind": "rss",
        "options": {
            "seconds": options.seconds,
            "model": options.model,
            "modes": list(options.modes),
            "device": options.device,
            "threads": options.threads,
            "dtype": options.dtype,
            "mp3_bitrate": options.mp3_bitrate,
            "fleet_settings": dict(options.fleet_settings),
        },
        "environment": environment_info,
        "rss": measured,
        "targets": {
            "conditions": {"model": "full", "seconds": 600.0},
            "conditions_met": conditions_met,
            **(
                {
                    "inprocess_rss_growth_mb": {
                        "value": growth,
                        "target": f"<= {RSS_GROWTH_TARGET_MB:.0f}",
                        "met": growth <= RSS_GROWTH_TARGET_MB,
                    }
                }
                if growth is not None
                else {}
            ),
        },
    }
