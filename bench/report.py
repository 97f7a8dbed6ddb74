"""Turning runs into the report: per-mode summaries, ratios, targets, a table and JSON."""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Final

from rich.console import Console
from rich.table import Table

from bench.options import Options
from bench.parity import Parity
from bench.results import STAGES, RunResult

__all__ = [
    "PARITY_MIN_SNR_DB",
    "build_report",
    "print_report",
    "print_rss_report",
    "write_json",
]

PARITY_MIN_SNR_DB: Final = 60.0
# The targets the optimisation is judged on (bench/README.md): CPU, full-size model,
# a 30 s clip, MP3 at 320 kbit/s.
_RATIO_TARGET: Final = 1.3
_OVERHEAD_TARGET_S_PER_MIN: Final = 1.5
RSS_GROWTH_TARGET_MB: Final = 1536.0
# Median share of wall time with some task waiting for a CPU above which a run is flagged.
_CONTENDED: Final = 0.2
# ... and at or below which a run counts as quiet (ratios over quiet pairs are reported).
_QUIET: Final = 0.1


def _median(runs: Sequence[RunResult], value: Callable[[RunResult], float]) -> float:
    return statistics.median(value(r) for r in runs)


def _summary(runs: Sequence[RunResult]) -> dict[str, Any]:
    stages = sorted({k for r in runs for k in r.to_json()["stages_s"]}, key=_stage_order)
    gpu = [r.usage.gpu_peak_allocated_mb for r in runs if r.usage.gpu_peak_allocated_mb]
    throughput = [r.throughput for r in runs]
    return {
        "reps": len(runs),
        "audio_seconds": runs[0].audio_seconds,
        "throughput_median": round(statistics.median(throughput), 4),
        "throughput_min": round(min(throughput), 4),
        "throughput_max": round(max(throughput), 4),
        "wall_s_median": round(_median(runs, lambda r: r.wall_s), 4),
        "forward_s_median": round(_median(runs, lambda r: r.forward_s), 4),
        "forward_calls": runs[0].forward_calls,
        "overhead_s_median": round(_median(runs, lambda r: r.overhead_s), 4),
        "overhead_s_per_audio_min_median": round(
            _median(runs, lambda r: r.overhead_s_per_audio_min), 4
        ),
        "stages_s_median": {
            name: round(statistics.median(r.to_json()["stages_s"].get(name, 0.0) for r in runs), 4)
            for name in stages
        },
        "peak_rss_mb_max": round(max(r.usage.peak_rss_mb for r in runs), 1),
        "cpu_cores_used_median": round(_median(runs, lambda r: r.usage.cpu_s / r.wall_s), 3),
        "cpu_pressure_median": (
            round(statistics.median(pressures), 3) if (pressures := _pressures(runs)) else None
        ),
        "gpu_peak_allocated_mb_max": round(max(gpu), 1) if gpu else None,
    }


def _pressures(runs: Sequence[RunResult]) -> list[float]:
    return [r.usage.cpu_pressure for r in runs if r.usage.cpu_pressure is not None]


def _quiet(run: RunResult) -> bool:
    pressure = run.usage.cpu_pressure
    return pressure is not None and pressure <= _QUIET


def _stage_order(name: str) -> tuple[int, str]:
    order = (*STAGES, "other")
    return (order.index(name) if name in order else len(order) - 1, name)


def _ratios(by_mode: dict[str, list[RunResult]]) -> dict[str, Any]:
    reference = by_mode.get("reference")
    if not reference:
        return {}
    out: dict[str, Any] = {}
    ref_median = statistics.median(r.throughput for r in reference)
    ref_by_rep = {r.rep: r.throughput for r in reference}
    quiet_ref = {r.rep for r in reference if _quiet(r)}
    for mode in ("inprocess", "e2e"):
        runs = by_mode.get(mode)
        if not runs:
            continue
        # Paired by repetition: the two ran back to back, so machine drift cancels out.
        paired = [r.throughput / ref_by_rep[r.rep] for r in runs if r.rep in ref_by_rep]
        quiet = [r.throughput / ref_by_rep[r.rep] for r in runs if r.rep in quiet_ref and _quiet(r)]
        out[f"{mode}_vs_reference"] = {
            "of_medians": round(statistics.median(r.throughput for r in runs) / ref_median, 4),
            "paired_median": round(statistics.median(paired), 4) if paired else None,
            "paired": [round(p, 4) for p in paired],
            # Only the reps in which neither run competed with other work for the CPUs.
            "paired_quiet": [round(p, 4) for p in quiet],
        }
    return out


def _targets(
    options: Options,
    device: str,
    summaries: dict[str, dict[str, Any]],
    ratios: dict[str, Any],
    parity: Parity | None,
) -> dict[str, Any]:
    conditions = {
        "device": "cpu",
        "model": "full",
        "seconds": 30.0,
        "mp3_bitrate": 320,
        "dtype": "fp32",
    }
    actual = {
        "device": device,
        "model": options.model,
        "seconds": options.seconds,
        "mp3_bitrate": options.mp3_bitrate,
        "dtype": options.dtype,
    }
    targets: dict[str, Any] = {
        "conditions": conditions,
        "conditions_met": all(actual[k] == v for k, v in conditions.items()),
    }
    ratio = ratios.get("inprocess_vs_reference", {}).get("of_medians")
    if ratio is not None:
        targets["inprocess_throughput_ratio"] = {
            "value": ratio,
            "target": f">= {_RATIO_TARGET}",
            "met": ratio >= _RATIO_TARGET,
        }
    if parity is not None:
        worst = parity.min_snr_db
        targets["parity_min_snr_db"] = {
            "value": "identical" if worst is None else round(worst, 2),
            "target": f">= {PARITY_MIN_SNR_DB}",
            "met": parity.ok(PARITY_MIN_SNR_DB),
        }
    inprocess = summaries.get("inprocess")
    if inprocess is not None:
        overhead = inprocess["overhead_s_per_audio_min_median"]
        targets["inprocess_overhead_s_per_audio_min"] = {
            "value": overhead,
            "target": f"<= {_OVERHEAD_TARGET_S_PER_MIN}",
            "met": overhead <= _OVERHEAD_TARGET_S_PER_MIN,
        }
    return targets


def build_report(
    options: Options,
    environment: dict[str, Any],
    runs: Sequence[RunResult],
    parity: Parity | None,
    load_seconds: dict[str, float],
) -> dict[str, Any]:
    by_mode: dict[str, list[RunResult]] = {}
    for run in runs:
        by_mode.setdefault(run.mode, []).append(run)
    summaries = {mode: _summary(rs) for mode, rs in by_mode.items()}
    ratios = _ratios(by_mode)
    return {
        "kind": "side-by-side",
        "options": _options_json(options),
        "environment": environment,
        "model_load_s": {k: round(v, 3) for k, v in load_seconds.items()},
        "summary": summaries,
        "ratios": ratios,
        "parity": parity.to_json(PARITY_MIN_SNR_DB) if parity is not None else None,
        "targets": _targets(options, environment["device"], summaries, ratios, parity),
        "runs": [r.to_json() for r in runs],
    }


def _options_json(options: Options) -> dict[str, Any]:
    return {
        "seconds": options.seconds,
        "model": options.model,
        "reps": options.reps,
        "modes": list(options.modes),
        "device": options.device,
        "threads": options.threads,
        "dtype": options.dtype,
        "warmup": options.warmup,
        "overlap": options.overlap,
        "mp3_bitrate": options.mp3_bitrate,
        "seed": options.seed,
        "fleet_settings": dict(options.fleet_settings),
    }


def write_json(report: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")


# --- the console ---------------------------------------------------------------------------


def _fmt(value: float | None, digits: int = 2) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def print_report(console: Console, report: dict[str, Any]) -> None:
    summaries: dict[str, dict[str, Any]] = report["summary"]
    env = report["environment"]
    opts = report["options"]
    title = (
        f"{opts['model']} model, {opts['seconds']:g} s track, MP3 {opts['mp3_bitrate']}k, "
        f"{env['device']}, {env['torch_threads']} torch threads, {opts['reps']} reps"
    )
    if opts["fleet_settings"]:
        title += ", fleet " + " ".join(f"{k}={v}" for k, v in opts["fleet_settings"].items())
    table = Table(title=f"throughput — {title}")
    for column in (
        "mode",
        "audio-s / wall-s\nmedian [min–max]",
        "wall s",
        "forward s\n(calls)",
        "overhead s",
        "overhead s\nper audio min",
        "peak RSS\nMiB",
        "GPU peak\nMiB",
        "CPU cores\nbusy",
        "CPU\npressure",
    ):
        table.add_column(column, justify="left" if column == "mode" else "right")
    contended = False
    for mode, s in summaries.items():
        pressure = s["cpu_pressure_median"]
        contended = contended or (pressure is not None and pressure > _CONTENDED)
        table.add_row(
            mode,
            f"{s['throughput_median']:.3f} [{s['throughput_min']:.3f}–{s['throughput_max']:.3f}]",
            _fmt(s["wall_s_median"]),
            f"{s['forward_s_median']:.2f} ({s['forward_calls']})",
            _fmt(s["overhead_s_median"]),
            _fmt(s["overhead_s_per_audio_min_median"]),
            _fmt(s["peak_rss_mb_max"], 0),
            _fmt(s["gpu_peak_allocated_mb_max"], 0),
            _fmt(s["cpu_cores_used_median"]),
            "–" if pressure is None else f"{pressure:.0%}",
        )
    console.print(table)
    if contended:
        console.print(
            "[yellow]CPU pressure: other work competed for the CPUs during these runs; "
            "absolute timings are inflated and noisy, ratios paired per rep less so.[/]"
        )

    stage_names = sorted(
        {k for s in summaries.values() for k in s["stages_s_median"]}, key=_stage_order
    )
    stages = Table(title="per-stage wall time, median s")
    stages.add_column("mode")
    for name in stage_names:
        stages.add_column(name, justify="right")
    for mode, s in summaries.items():
        stages.add_row(mode, *(_fmt(s["stages_s_median"].get(name), 3) for name in stage_names))
    console.print(stages)

    for key, ratio in report["ratios"].items():
        console.print(
            f"{key.replace('_', ' ')}: {ratio['of_medians']:.3f}× (ratio of medians); "
            f"paired per rep {', '.join(f'{p:.3f}' for p in ratio['paired'])}"
            + (
                f"; quiet pairs (CPU pressure <= {_QUIET:.0%}) "
                + ", ".join(f"{p:.3f}" for p in ratio["paired_quiet"])
                if ratio["paired_quiet"]
                else ""
            )
        )
    parity = report["parity"]
    if parity is not None:
        parity_table = Table(title="parity: fleet vs reference float stems (before encoding)")
        parity_table.add_column("stem")
        parity_table.add_column("max |diff|", justify="right")
        parity_table.add_column("SNR dB", justify="right")
        for name, stem in parity["stems"].items():
            snr = stem["snr_db"]
            parity_table.add_row(
                name, f"{stem['max_abs_diff']:.3g}", "identical" if snr is None else f"{snr:.1f}"
            )
        console.print(parity_table)
        console.print(f"input max |diff| (the two decoders): {parity['input_max_abs_diff']:.3g}")
    _print_targets(console, report["targets"])


def _print_targets(console: Console, targets: dict[str, Any]) -> None:
    note = "" if targets["conditions_met"] else " (this run is not under the target conditions)"
    console.print(f"[bold]targets[/]{note}:")
    for name, target in targets.items():
        if not isinstance(target, dict) or "met" not in target:
            continue
        mark = "[green]met[/]" if target["met"] else "[red]not met[/]"
        console.print(f"  {name}: {target['value']} (target {target['target']}) {mark}")


def print_rss_report(console: Console, report: dict[str, Any]) -> None:
    opts = report["options"]
    table = Table(
        title=f"peak RSS, {opts['model']} model, {opts['seconds']:g} s track, "
        f"each pipeline in a fresh process"
    )
    for column in (
        "mode",
        "wall s",
        "RSS after\nmodel load MiB",
        "peak RSS MiB",
        "growth over\nloaded model MiB",
        "target MiB",
    ):
        table.add_column(column, justify="left" if column == "mode" else "right")
    for mode, m in report["rss"].items():
        growth = m["rss_growth_over_loaded_mb"]
        colour = "green" if growth <= RSS_GROWTH_TARGET_MB else "red"
        table.add_row(
            mode,
            _fmt(m["wall_s"], 1),
            _fmt(m["rss_after_load_mb"], 0),
            _fmt(m["peak_rss_mb"], 0),
            f"[{colour}]{growth:.0f}[/]",
            f"<= {RSS_GROWTH_TARGET_MB:.0f}",
        )
    console.print(table)
