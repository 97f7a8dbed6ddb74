"""``python -m bench gpu-check`` (run by ``bench/gpu_check.sh``): what one GPU does with
htdemucs_6s, in a few minutes, as one table and one JSON for the capacity model.

1. **Reference**: Demucs' own ``apply_model`` (one segment per forward, fp32) on the
   track, with ``separate_tensor``'s normalisation — the stems every variant is compared
   with.
2. **Separation**: the fleet's ``DemucsSeparator`` (``separate_blocks``, the worker's
   path) at batch 1 and at the batch it sizes itself (``STEM_SEGMENT_BATCH=0``), fp32 and
   bf16: audio seconds per wall second (a warm-up pass first, then ``--reps`` timed
   passes; the stems are copied to the host, so the GPU is done when a pass ends), peak
   GPU memory, and per stem the SNR against the reference.
3. **End to end in-process**: the production ``JobHandler`` (bench's in-process pipeline:
   local-disk store, events encoded and dropped) with six MP3 320k stems, the fastest
   precision whose stems pass (≥ 40 dB), auto batch, the machine's CPUs encoding;
   ``--e2e-jobs`` jobs through two threads, as ``STEM_MAX_IN_FLIGHT=2`` leases them.

``--device cpu`` runs the same on the CPU (bf16 only where the separator accepts it);
``--smoke`` shrinks everything (tiny model, 2 s of audio, one rep) to test the script.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Final, cast

import numpy as np
import numpy.typing as npt
import soundfile as sf
import torch
from demucs.apply import apply_model
from rich.console import Console
from rich.table import Table

from bench.fidelity import snr_db
from bench.measure import ForwardTimer, StageLog
from bench.runtime import environment
from bench.workload import MODEL_NAME, model_folder, synth_track
from consumer.separation import DemucsSeparator
from consumer.settings import Settings
from devkit.models import ModelSize

__all__ = ["main", "run_gpu_check"]

_RESULTS: Final = Path(__file__).resolve().parent / "results" / "gpu-check"
MIN_SNR_DB: Final = 40.0
_DAY_S: Final = 86_400.0
Audio = npt.NDArray[np.float32]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _reference(separator: DemucsSeparator, mix: Audio) -> Audio:
    """``demucs.api.Separator.separate_tensor``'s path: normalise, ``apply_model`` fp32
    one segment per forward, undo the normalisation. ``[sources, channels, frames]``."""
    wav = torch.from_numpy(mix)
    ref = wav.mean(0)
    mean, std = ref.mean(), ref.std() + 1e-8
    with torch.inference_mode():
        out = apply_model(
            separator.model,
            ((wav - mean) / std)[None],
            shifts=0,
            split=True,
            overlap=separator.overlap,
            device=separator.device,
        )
    stems: Audio = (out * std + mean)[0].numpy()
    return stems


def _separate(separator: DemucsSeparator, mix: Audio) -> Audio:
    blocks = [block for _, block in separator.separate_blocks(mix)]
    return np.concatenate(blocks, axis=-1)


def _measure_separation(
    repo: Path,
    device: str,
    precision: str,
    batch: int,
    mix: Audio,
    reference: Audio,
    reps: int,
) -> dict[str, Any]:
    row: dict[str, Any] = {"precision": precision, "batch_setting": batch or "auto"}
    try:
        separator = DemucsSeparator.load(
            MODEL_NAME,
            repo=repo,
            device=cast(Any, device),
            batch_size=batch,
            precision=cast(Any, precision),
        )  # on CUDA the load warms up, and sizes the batch when asked to (batch 0)
    except Exception as exc:  # a precision this build refuses on this device
        return row | {"skipped": f"{type(exc).__name__}: {exc}"}
    target = separator.device
    row["batch"] = separator.batch_size
    seconds = mix.shape[1] / separator.sample_rate
    try:
        _separate(separator, mix[:, : separator.sample_rate * 8])  # warm-up at this batch
        if target.type == "cuda":
            torch.cuda.reset_peak_memory_stats(target)
            base = torch.cuda.memory_allocated(target)
        walls = []
        stems: Audio | None = None
        for _ in range(reps):
            _sync(target)
            started = time.perf_counter()
            stems = _separate(separator, mix)
            _sync(target)
            walls.append(time.perf_counter() - started)
    except torch.OutOfMemoryError as exc:
        return row | {"skipped": f"out of memory: {exc}"}
    assert stems is not None
    snrs = {name: snr_db(reference[i], stems[i]) for i, name in enumerate(separator.sources)}
    finite = [v for v in snrs.values() if math.isfinite(v)]
    row |= {
        "audio_s_per_s": round(seconds / float(np.median(walls)), 2),
        "wall_s": [round(w, 3) for w in walls],
        "min_snr_db": round(min(finite), 2) if finite else None,
        "snr_db_by_stem": {k: (round(v, 2) if math.isfinite(v) else None) for k, v in snrs.items()},
        "identical_to_reference": not finite,
    }
    if target.type == "cuda":
        row["peak_gpu_mib"] = round(torch.cuda.max_memory_allocated(target) / 2**20, 1)
        row["peak_gpu_mib_over_model"] = round(
            (torch.cuda.max_memory_allocated(target) - base) / 2**20, 1
        )
    del separator
    if target.type == "cuda":
        torch.cuda.empty_cache()
    return row


def _end_to_end(
    repo: Path,
    device: str,
    precision: str,
    track: Path,
    jobs: int,
    workdir: Path,
) -> dict[str, Any]:
    """``jobs`` six-stem MP3 jobs through the production handler, two at a time."""
    from bench.fleet import InProcessPipeline

    settings = Settings.model_validate(
        {
            "model": MODEL_NAME,
            "model_repo": repo,
            "device": device,
            "precision": precision,
            "shifts": 0,
            "segment_batch": 0,
            "job_timeout_s": _DAY_S,
            "max_audio_seconds": _DAY_S,
            "metrics_port": 0,
            "progress_interval_s": 0,
        }
    )
    from consumer.app import load_separator

    separator = load_separator(settings)
    timer = ForwardTimer(separator.model, cuda=separator.device.type == "cuda")
    stage_log = StageLog()
    pipelines = [
        InProcessPipeline(
            settings, separator, forward=timer, stage_log=stage_log, workdir=workdir / f"slot{i}"
        )
        for i in range(2)
    ]
    with stage_log.capture():
        single = pipelines[0].run(track, 0)  # one job alone: its latency and stage split
        started = time.perf_counter()
        cpu0 = time.process_time()
        with ThreadPoolExecutor(2) as pool:
            results = list(pool.map(lambda i: pipelines[i % 2].run(track, 100 + i), range(jobs)))
        wall = time.perf_counter() - started
        cpu = time.process_time() - cpu0
    audio = sum(r.audio_seconds for r in results)
    return {
        "precision": precision,
        "batch": separator.batch_size,
        "jobs": jobs,
        "track_s": single.audio_seconds,
        "audio_s_per_s": round(audio / wall, 2),
        "single_job_audio_s_per_s": round(single.throughput, 2),
        "single_job_stages_s": {k: round(v, 3) for k, v in single.stages.items()},
        "process_cpu_s_per_audio_s": round(cpu / audio, 4),
        "cpus": os.cpu_count(),
        "encode_workers": settings.encode_workers or os.cpu_count(),
    }


def run_gpu_check(
    *,
    device: str,
    size: ModelSize,
    seconds: float,
    e2e_seconds: float,
    e2e_jobs: int,
    reps: int,
    cache_dir: Path,
    console: Console,
) -> dict[str, Any]:
    started = time.perf_counter()
    repo = model_folder(size, cache_dir)
    track = synth_track(seconds, cache_dir)
    mix = np.ascontiguousarray(sf.read(track, dtype="float32", always_2d=True)[0].T)
    base = DemucsSeparator.load(MODEL_NAME, repo=repo, device=cast(Any, device), batch_size=1)
    target = base.device
    console.print(f"device {target}: reference (apply_model fp32) on {seconds:g} s")
    reference = _reference(base, mix)
    del base
    rows: list[dict[str, Any]] = []
    for precision in ("fp32", "bf16"):
        for batch in (1, 0):
            if batch == 0 and target.type == "cpu":
                skipped = "the auto batch is 1 on a CPU (the row above)"
                rows.append({"precision": precision, "batch_setting": "auto", "skipped": skipped})
                continue
            row = _measure_separation(repo, device, precision, batch, mix, reference, reps)
            rows.append(row)
            console.print(
                f"  {precision} batch {row.get('batch', row['batch_setting'])}: "
                + (row.get("skipped") or f"{row['audio_s_per_s']} audio-s/s")
            )
    passing = [
        r
        for r in rows
        if "audio_s_per_s" in r and (r["min_snr_db"] is None or r["min_snr_db"] >= MIN_SNR_DB)
    ]
    best = max(passing, key=lambda r: r["audio_s_per_s"])
    console.print(
        f"end to end: {e2e_jobs} jobs of {e2e_seconds:g} s, {best['precision']}, auto batch"
    )
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        e2e = _end_to_end(
            repo,
            device,
            best["precision"],
            synth_track(e2e_seconds, cache_dir),
            e2e_jobs,
            Path(tmp),
        )
    env = environment(target)
    if target.type == "cuda":
        env["cuda"] = torch.version.cuda
        env["gpu_memory_mib"] = round(torch.cuda.get_device_properties(target).total_memory / 2**20)
    return {
        "kind": "gpu-check",
        "environment": env,
        "options": {
            "device": device,
            "model": size,
            "seconds": seconds,
            "e2e_seconds": e2e_seconds,
            "e2e_jobs": e2e_jobs,
            "reps": reps,
        },
        "reference": "demucs.apply.apply_model, fp32, batch 1, shifts 0, overlap 0.25",
        "separation": rows,
        "end_to_end": e2e,
        "elapsed_s": round(time.perf_counter() - started, 1),
    }


def print_gpu_check(console: Console, report: dict[str, Any]) -> None:
    env = report["environment"]
    table = Table(
        title=f"htdemucs_6s ({report['options']['model']}) on {env.get('gpu', env['device'])}"
    )
    for column in (
        "precision",
        "batch",
        "audio-s / wall-s",
        "min SNR dB vs fp32 apply_model",
        "peak GPU MiB",
    ):
        table.add_column(column, justify="right")
    for row in report["separation"]:
        if "skipped" in row:
            table.add_row(
                row["precision"], str(row["batch_setting"]), "skipped", row["skipped"][:50], ""
            )
            continue
        snr = "identical" if row["identical_to_reference"] else f"{row['min_snr_db']:.1f}"
        table.add_row(
            row["precision"],
            f"{row['batch']}" + (" (auto)" if row["batch_setting"] == "auto" else ""),
            f"{row['audio_s_per_s']:.1f}",
            snr,
            str(row.get("peak_gpu_mib", "—")),
        )
    console.print(table)
    e2e = report["end_to_end"]
    console.print(
        f"end to end in-process, six MP3 320k stems, {e2e['cpus']} CPUs, {e2e['jobs']} x "
        f"{e2e['track_s']:.0f} s jobs two at a time ({e2e['precision']}, batch {e2e['batch']}): "
        f"{e2e['audio_s_per_s']:.1f} audio-s/s "
        f"(one job alone {e2e['single_job_audio_s_per_s']:.1f}; "
        f"{e2e['process_cpu_s_per_audio_s']:.3f} CPU-s per audio-s)"
    )
    console.print(f"stages of one job (s): {e2e['single_job_stages_s']}")
    console.print(f"elapsed {report['elapsed_s']} s")


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "device"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench gpu-check", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--model", choices=("full", "tiny"), default="full")
    parser.add_argument("--seconds", type=float, default=120.0, help="separation track (120)")
    parser.add_argument("--e2e-seconds", type=float, default=240.0, help="end-to-end track (240)")
    parser.add_argument("--e2e-jobs", type=int, default=4, help="end-to-end jobs (4)")
    parser.add_argument("--reps", type=int, default=2, help="timed passes per variant (2)")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch intra-op threads (default: torch's)"
    )
    parser.add_argument(
        "--smoke", action="store_true", help="tiny model, 2 s, 1 rep, 2 jobs, 1 thread"
    )
    parser.add_argument("--out", type=Path, default=_RESULTS, help=f"JSON folder ({_RESULTS})")
    parser.add_argument("--cache-dir", type=Path, default=None, help="model folders and tracks")
    ns = parser.parse_args(argv)
    if ns.smoke:
        ns.model, ns.seconds, ns.e2e_seconds, ns.e2e_jobs, ns.reps = "tiny", 2.0, 2.0, 2, 1
        # One thread: on a busy CI machine a descheduled OpenMP thread stalls the other.
        ns.threads = ns.threads or 1
    if ns.threads:
        torch.set_num_threads(ns.threads)
    if ns.device == "cuda" and not torch.cuda.is_available():
        parser.error("no CUDA device here (use --device cpu for a smoke run)")
    console = Console(highlight=False, width=None if sys.stdout.isatty() else 132)
    with tempfile.TemporaryDirectory(prefix="gpu-check-cache-") as tmp:
        report = run_gpu_check(
            device=ns.device,
            size=ns.model,
            seconds=ns.seconds,
            e2e_seconds=ns.e2e_seconds,
            e2e_jobs=ns.e2e_jobs,
            reps=ns.reps,
            cache_dir=ns.cache_dir or Path(tmp),
            console=console,
        )
    print_gpu_check(console, report)
    name = _slug(str(report["environment"].get("gpu") or report["environment"]["device"]))
    ns.out.mkdir(parents=True, exist_ok=True)
    path = ns.out / f"gpu-check-{name}-{report['options']['model']}.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    console.print(f"JSON: {path}")
    return 0
