"""``python -m bench cpu-path``: faster CPU forwards of htdemucs_6s, and what they cost in
fidelity.

Variants of one forward pass over the same 7.8 s segments (a synthetic track, normalised
chunk by chunk as ``DemucsSeparator`` does), alternating within each repetition:

- ``fp32``: eager PyTorch, ``inference_mode`` — what the worker runs on a CPU today;
- ``bf16-autocast``: the same under ``torch.autocast("cpu", torch.bfloat16)``;
- ``torchscript``: ``torch.jit.trace`` + ``freeze`` + ``optimize_for_inference`` (oneDNN
  fusions), fp32;
- ``onnxruntime``: the model's network exported to ONNX (``torch.onnx.export``) and run
  by ONNX Runtime;
- ``openvino-f32`` / ``openvino-bf16``: the worker's ``STEM_CPU_RUNTIME=openvino`` with
  ``STEM_PRECISION`` fp32 / bf16 — the model's network exported by ``torch.export`` and
  compiled by OpenVINO (``consumer.separation.openvino.compile_network``, the code the
  worker runs; ``INFERENCE_PRECISION_HINT`` f32 / bf16).

The whole model does not export: its spectrogram is complex (``torch.stft`` /
``view_as_complex`` / ``istft``), which ``torch.onnx.export`` and OpenVINO's converter
refuse (what each said is in the report). So the graph runtimes run the *network* — from
the CaC spectrogram and the waveform in, to the six stems' spectrograms and waveforms out
— and the STFT, the complex re-assembly and the iSTFT stay in PyTorch
(``consumer.separation.openvino``: ``Network``, ``split_forward``: HTDemucs 4.1.0's
``forward``, cut in three). The split is checked against the model's own forward before
anything is timed.

Speed: per forward, this process's CPU time (all threads) and wall time; ratios to fp32
paired rep by rep (run back to back, so drift on a shared box cancels) and as a ratio of
medians. Fidelity: per stem, SNR of each variant's output against fp32's over all
segments; the criterion is ≥ 1.3× fp32's speed with every stem ≥ 40 dB.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import statistics
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, cast

import numpy as np
import numpy.typing as npt
import soundfile as sf
import torch
import torch.nn.functional as F
from demucs.htdemucs import HTDemucs
from rich.console import Console
from rich.table import Table

from bench.costs import _cpu_s
from bench.fidelity import snr_db
from bench.runtime import environment
from bench.workload import DEFAULT_CACHE_DIR, synth_track
from consumer.separation import Precision
from consumer.separation.openvino import Network, NetworkFn, compile_network, split_forward
from devkit.models import build_model

__all__ = ["main", "run_cpu_path"]

_RESULTS: Final = Path(__file__).resolve().parent / "results"
DEFAULT_JSON: Final = _RESULTS / "cpu-path.json"
SPEEDUP_TARGET: Final = 1.3
SNR_TARGET_DB: Final = 40.0
Forward = Callable[[torch.Tensor], torch.Tensor]


# --- the variants ------------------------------------------------------------------------------


@dataclass
class Variant:
    name: str
    forward: Forward | None = None
    error: str | None = None  # why it could not be built
    cpu_s: list[float] = field(default_factory=list)  # per forward, one entry per rep (mean)
    wall_s: list[float] = field(default_factory=list)
    outputs: list[npt.NDArray[np.float32]] = field(default_factory=list)
    build_s: float = 0.0


def _eager(model: HTDemucs) -> Forward:
    def forward(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return cast(torch.Tensor, model(x))

    return forward


def _autocast(model: HTDemucs) -> Forward:
    def forward(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
            return cast(torch.Tensor, model(x)).float()

    return forward


def _torchscript(model: HTDemucs, example: torch.Tensor) -> Forward:
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(model, example, check_trace=False)  # type: ignore[no-untyped-call]
        frozen = torch.jit.optimize_for_inference(torch.jit.freeze(traced.eval()))

    def forward(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return cast(torch.Tensor, frozen(x))

    return forward


def _network_inputs(model: HTDemucs, example: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        return model._magnitude(model._spec(example)), example


@contextlib.contextmanager
def _no_mha_fastpath() -> Iterator[None]:
    """Plain attention ops instead of ``aten::_native_multi_head_attention`` (no ONNX
    symbolic exists for that fused op)."""
    before = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(before)


def _export_onnx(model: HTDemucs, example: torch.Tensor, path: Path) -> None:
    with warnings.catch_warnings(), torch.no_grad(), _no_mha_fastpath():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            Network(model).eval(),
            _network_inputs(model, example),
            str(path),
            input_names=["spec", "mix"],
            output_names=["stems_spec", "stems_wave"],
            opset_version=17,
            dynamo=False,
        )


def _onnxruntime(model: HTDemucs, onnx_path: Path, threads: int) -> Forward:
    import onnxruntime as ort  # optional: the "cpu-path" extra

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])

    def network(spec: torch.Tensor, mix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x, xt = session.run(None, {"spec": spec.numpy(), "mix": mix.numpy()})
        return torch.from_numpy(x), torch.from_numpy(xt)

    return _wrapped(model, network)


def _openvino(model: HTDemucs, threads: int, precision: Precision) -> Forward:
    """What the worker runs with ``STEM_CPU_RUNTIME=openvino`` (optional: the extra)."""
    return _wrapped(model, compile_network(model, precision=precision, threads=threads))


def _wrapped(model: HTDemucs, network: NetworkFn) -> Forward:
    def forward(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return split_forward(model, network, x)

    return forward


def _openvino_direct_error(model: HTDemucs, example: torch.Tensor) -> str | None:
    """What OpenVINO's PyTorch converter says about the *whole* model (recorded, not used)."""
    import openvino as ov

    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            traced = torch.jit.trace(model, example, check_trace=False)  # type: ignore[no-untyped-call]
            ov.convert_model(traced, example_input=example)
    except Exception as exc:
        return _summary(exc)
    return None


def _onnx_direct_error(model: HTDemucs, example: torch.Tensor, path: Path) -> str | None:
    """What ``torch.onnx.export`` says about the whole model (recorded, not used)."""
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            with _no_mha_fastpath():
                torch.onnx.export(model, (example,), str(path), opset_version=17, dynamo=False)
    except Exception as exc:
        return _summary(exc)
    return None


def _summary(exc: BaseException) -> str:
    lines = [line for line in str(exc).splitlines() if line.strip()]
    text = " / ".join(lines[:6])
    return f"{type(exc).__name__}: {text[:600]}"


def _build(name: str, make: Callable[[], Forward]) -> Variant:
    started = time.perf_counter()
    try:
        forward = make()
    except Exception as exc:
        return Variant(name, error=_summary(exc) + "\n" + traceback.format_exc(limit=2)[-400:])
    return Variant(name, forward, build_s=time.perf_counter() - started)


# --- the run ---------------------------------------------------------------------------------


def _segments(model: HTDemucs, seconds: float, cache_dir: Path) -> list[torch.Tensor]:
    """The track's chunks as ``DemucsSeparator`` feeds them: normalised by the mono
    reference's mean and std, 7.8 s each, 25 % overlap, the last zero-padded."""
    wav, _ = sf.read(synth_track(seconds, cache_dir), dtype="float32", always_2d=True)
    mix = torch.from_numpy(wav.T.copy())
    ref = mix.mean(0)
    mix = (mix - ref.mean()) / (ref.std() + 1e-8)
    length = int(model.segment * model.samplerate)
    stride = int(0.75 * length)
    chunks = []
    for offset in range(0, mix.shape[-1], stride):
        chunk = mix[:, offset : offset + length]
        chunks.append(F.pad(chunk, (0, length - chunk.shape[-1]))[None])
    return chunks


def _timed(variant: Variant, segments: Sequence[torch.Tensor], keep: bool) -> None:
    assert variant.forward is not None
    cpu0, wall0 = _cpu_s(), time.perf_counter()
    outputs = [variant.forward(segment) for segment in segments]
    cpu, wall = _cpu_s() - cpu0, time.perf_counter() - wall0
    variant.cpu_s.append(cpu / len(segments))
    variant.wall_s.append(wall / len(segments))
    if keep:
        variant.outputs = [o.detach().float().numpy() for o in outputs]


def _stem_snrs(reference: Variant, other: Variant, sources: Sequence[str]) -> dict[str, float]:
    ref = np.concatenate(reference.outputs, axis=-1)[0]  # [sources, channels, frames]
    out = np.concatenate(other.outputs, axis=-1)[0]
    return {name: snr_db(ref[i], out[i]) for i, name in enumerate(sources)}


@contextlib.contextmanager
def _threads(n: int) -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def run_cpu_path(
    *,
    seconds: float,
    reps: int,
    threads: int,
    variants: Sequence[str],
    cache_dir: Path,
    console: Console,
    size: str = "full",
) -> dict[str, Any]:
    with _threads(threads), tempfile.TemporaryDirectory(prefix="bench-cpu-path-") as tmp:
        model = cast(HTDemucs, build_model(size="full" if size == "full" else "tiny"))
        segments = _segments(model, seconds, cache_dir)
        example = segments[0]
        onnx_path = Path(tmp) / "network.onnx"
        notes: dict[str, Any] = {}
        # The split must be the model: checked before anything is timed.
        with torch.inference_mode():
            whole = model(example)
            split = split_forward(model, Network(model), example)
        notes["split_forward_max_abs_diff"] = float((whole - split).abs().max())
        built: dict[str, Variant] = {}
        if "onnxruntime" in variants:
            started = time.perf_counter()
            try:
                _export_onnx(model, example, onnx_path)
                notes["onnx_export_s"] = round(time.perf_counter() - started, 1)
                notes["onnx_bytes"] = onnx_path.stat().st_size
            except Exception as exc:
                notes["onnx_export_error"] = _summary(exc)
            notes["whole_model_onnx_export"] = (
                _onnx_direct_error(model, example, Path(tmp) / "whole.onnx") or "ok"
            )
        if any(v.startswith("openvino") for v in variants):
            with contextlib.suppress(ImportError):
                notes["whole_model_openvino_convert"] = (
                    _openvino_direct_error(model, example) or "ok"
                )
        makers: dict[str, Callable[[], Forward]] = {
            "fp32": lambda: _eager(model),
            "bf16-autocast": lambda: _autocast(model),
            "torchscript": lambda: _torchscript(model, example),
            "onnxruntime": lambda: _onnxruntime(model, onnx_path, threads),
            "openvino-f32": lambda: _openvino(model, threads, "fp32"),
            "openvino-bf16": lambda: _openvino(model, threads, "bf16"),
        }
        for name in ("fp32", *[v for v in variants if v != "fp32"]):
            built[name] = _build(name, makers[name])
            status = built[name].error or f"built in {built[name].build_s:.1f} s"
            console.print(f"{name}: {status.splitlines()[0]}")
        ready = [v for v in built.values() if v.forward is not None]
        for variant in ready:  # warm-up: first-call allocations, kernel choice
            assert variant.forward is not None
            variant.forward(example)
        for rep in range(reps):
            order = ready[rep % len(ready) :] + ready[: rep % len(ready)]
            for variant in order:
                _timed(variant, segments, keep=rep == 0)
            console.print(
                f"rep {rep + 1}/{reps}: "
                + ", ".join(f"{v.name} {v.wall_s[-1]:.2f} s" for v in ready)
            )
        report = _report(built, model.sources, notes, threads, len(segments))
    report["environment"] = environment(torch.device("cpu"))
    report["options"] = {
        "seconds": seconds,
        "reps": reps,
        "threads": threads,
        "segments": len(segments),
        "model": size,
    }
    return report


def _report(
    built: dict[str, Variant],
    sources: Sequence[str],
    notes: dict[str, Any],
    threads: int,
    segments: int,
) -> dict[str, Any]:
    base = built["fp32"]
    rows = []
    for variant in built.values():
        row: dict[str, Any] = {"name": variant.name}
        if variant.forward is None or not variant.cpu_s:
            row["error"] = variant.error
            rows.append(row)
            continue
        paired_wall = [b / v for b, v in zip(base.wall_s, variant.wall_s, strict=True)]
        paired_cpu = [b / v for b, v in zip(base.cpu_s, variant.cpu_s, strict=True)]
        snrs = _stem_snrs(base, variant, sources) if variant is not base else {}
        finite = [s for s in snrs.values() if math.isfinite(s)]
        worst = min(finite) if finite else None
        speed = statistics.median(paired_wall)
        row |= {
            "cpu_s_per_forward": round(statistics.median(variant.cpu_s), 3),
            "wall_s_per_forward": round(statistics.median(variant.wall_s), 3),
            "speedup_wall_paired": [round(r, 3) for r in paired_wall],
            "speedup_wall": round(speed, 3),
            "speedup_cpu": round(statistics.median(paired_cpu), 3),
            "speedup_wall_of_medians": round(
                statistics.median(base.wall_s) / statistics.median(variant.wall_s), 3
            ),
            "build_s": round(variant.build_s, 1),
            "snr_db_by_stem": {
                k: (round(v, 2) if math.isfinite(v) else None) for k, v in snrs.items()
            },
            "min_snr_db": None if worst is None else round(worst, 2),
        }
        if variant is not base:
            row["qualifies"] = bool(
                speed >= SPEEDUP_TARGET
                and statistics.median(paired_cpu) >= SPEEDUP_TARGET
                and (worst is None or worst >= SNR_TARGET_DB)
            )
        rows.append(row)
    return {
        "kind": "cpu-path",
        "criterion": {"speedup": SPEEDUP_TARGET, "min_snr_db": SNR_TARGET_DB},
        "variants": rows,
        "notes": notes,
        "threads": threads,
        "segments": segments,
    }


def print_cpu_path(console: Console, report: dict[str, Any]) -> None:
    table = Table(
        title=f"one 7.8 s forward, {report['threads']} thread(s), {report['segments']} segments"
        f" x {report['options']['reps']} reps (medians; speed-ups paired per rep)"
    )
    for column in ("variant", "wall s", "CPU s", "× wall", "× CPU", "min SNR dB", "qualifies"):
        table.add_column(column, justify="left" if column == "variant" else "right")
    for row in report["variants"]:
        if "error" in row:
            table.add_row(row["name"], "—", "—", "—", "—", "—", (row["error"] or "")[:60])
            continue
        table.add_row(
            row["name"],
            f"{row['wall_s_per_forward']:.2f}",
            f"{row['cpu_s_per_forward']:.2f}",
            f"{row['speedup_wall']:.2f}",
            f"{row['speedup_cpu']:.2f}",
            "—" if row["min_snr_db"] is None else f"{row['min_snr_db']:.1f}",
            {True: "yes", False: "no"}.get(row.get("qualifies"), ""),
        )
    console.print(table)
    for key, value in report["notes"].items():
        console.print(f"{key}: {value}")


VARIANTS: Final = (
    "fp32",
    "bf16-autocast",
    "torchscript",
    "onnxruntime",
    "openvino-f32",
    "openvino-bf16",
)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench cpu-path", description="faster CPU forwards, speed and SNR"
    )
    parser.add_argument("--seconds", type=float, default=30.0, help="test track length (30)")
    parser.add_argument("--reps", type=int, default=3, help="repetitions (3)")
    parser.add_argument(
        "--threads", type=int, default=torch.get_num_threads(), help="torch/runtime threads"
    )
    parser.add_argument(
        "--variants", default=",".join(VARIANTS), help=f"comma list of {', '.join(VARIANTS)}"
    )
    parser.add_argument("--model", choices=("full", "tiny"), default="full")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON)
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE_DIR)
    ns = parser.parse_args(argv)
    variants = [v.strip() for v in ns.variants.split(",") if v.strip()]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variant(s): {', '.join(unknown)}")
    console = Console(highlight=False, width=None if sys.stdout.isatty() else 132)
    report = run_cpu_path(
        seconds=ns.seconds,
        reps=ns.reps,
        threads=ns.threads,
        variants=variants,
        cache_dir=ns.cache_dir,
        console=console,
        size=ns.model,
    )
    print_cpu_path(console, report)
    ns.json.parent.mkdir(parents=True, exist_ok=True)
    ns.json.write_text(json.dumps(report, indent=2) + "\n")
    console.print(f"JSON report: {ns.json}")
    return 0
