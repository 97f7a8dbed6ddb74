"""``python -m bench capacity``: throughput and cost per audio hour of node shapes, written
to ``docs/capacity.md`` with a plot.

Inputs, all in the repository:

- ``bench/measurements/costs.json`` (``python -m bench costs``): per-core CPU costs of
  decoding, the separator's host work and encoding a stem, by MP3 ``-q``;
- ``bench/measurements/cpu-path.json`` (``python -m bench cpu-path``): the CPU forward's
  cost, fp32 and bf16, for CPU-only nodes;
- ``bench/measurements/flops.json``: the model's FLOPs per audio second (counted here
  with ``torch.utils.flop_counter`` when missing or with ``--recount-flops``);
- ``bench/measurements/gpu/*.json`` (``bench/gpu_check.sh`` on a GPU machine): measured
  separation rates; a shape whose GPU has one uses it, the others get an **estimate**:
  ``efficiency × dense bf16 peak / FLOPs per audio second``, labelled as such;
- ``bench/prices.toml``: node shapes and dated list prices (to be re-checked).

Each shape's end-to-end rate comes from :mod:`bench.worker_model` (the worker's real
pipelining: two jobs in flight, one separation at a time, the shared encode pool), at the
worker's current settings and at the best settings found by a small search.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Final

from rich.console import Console

from bench.worker_model import JobCosts, SimResult, WorkerShape, simulate

__all__ = ["Shape", "main", "plan"]

_BENCH: Final = Path(__file__).resolve().parent
MEASUREMENTS: Final = _BENCH / "measurements"
PRICES: Final = _BENCH / "prices.toml"
DOC: Final = _BENCH.parent / "docs" / "capacity.md"
PLOT: Final = _BENCH.parent / "docs" / "capacity.png"

GPU_EFFICIENCY: Final = 0.10
"""Assumed share of the GPU's dense bf16 peak the batched bf16 forward achieves (an
assumption, not a measurement: replaced by gpu_check.sh's figure where one exists)."""
EFFICIENCY_BAND: Final = (0.03, 0.30)
RESERVED_CPU: Final = 0.5
"""vCPUs a GKE node keeps from pods: kubelet/system reservation and daemonsets."""
CPU_POD_VCPUS: Final = 4
"""CPU-only nodes run one worker per this many vCPUs (one separation at a time per
worker; torch's scaling beyond a few threads on this model is unmeasured here)."""
TRACK_S: Final = 240.0
CPU_PATHS: Final = {
    "fp32": "fp32 eager, the default",
    "bf16-autocast": "bf16 autocast, STEM_PRECISION=bf16",
    "openvino-bf16": "OpenVINO bf16, STEM_CPU_RUNTIME=openvino",
}
"""The CPU forwards planned for CPU-only nodes (``bench cpu-path`` variants)."""
CURRENT_IN_FLIGHT: Final = 2
MIN_SNR_DB: Final = 40.0


@dataclass(frozen=True)
class Shape:
    machine: str
    vcpus: int
    memory_gib: int
    usd_per_hour: float
    cpu_family: str
    accelerator: str | None = None


@dataclass(frozen=True)
class DeviceRate:
    audio_s_per_s: float | None  # None on CPU nodes (the CPU separates)
    source: str  # "measured: FILE" or "estimate: ..."
    precision: str
    band: tuple[float, float] | None = None


@dataclass(frozen=True)
class Plan:
    shape: Shape
    device: DeviceRate
    quality: int
    current: SimResult
    best: SimResult
    best_in_flight: int
    best_encode_workers: int
    pods: int
    pod_vcpus: float
    cpu_bound_rate: float
    """Audio-s per s if the CPU pipeline alone were the limit (all usable vCPUs busy)."""

    @property
    def usd_per_audio_hour_current(self) -> float:
        return self.shape.usd_per_hour / (self.current.throughput * self.pods)

    @property
    def usd_per_audio_hour_best(self) -> float:
        return self.shape.usd_per_hour / (self.best.throughput * self.pods)


# --- inputs ------------------------------------------------------------------------------


def load_shapes(
    path: Path = PRICES,
) -> tuple[list[Shape], dict[str, dict[str, Any]], dict[str, Any]]:
    data = tomllib.loads(path.read_text())
    shapes = [Shape(**entry) for entry in data["shapes"]]
    return shapes, data["accelerators"], data["meta"]


def job_costs(costs: dict[str, Any], quality: int) -> JobCosts:
    """Per-audio-second costs from ``bench costs``' report, for MP3 320k at ``quality``."""
    ops = {op["name"]: op for op in costs["ops"]}
    derived = costs["derived"]
    decode = derived["decode_core_s_per_audio_min"]
    host = derived["separator_host_core_s_per_audio_min"]
    encode = next(
        op["core_s_per_min"]
        for op in costs["ops"]
        if op["group"] == "mp3"
        and op.get("encoder") == "consumer.audio.encode"
        and op.get("quality") == quality
    )
    crc = ops["crc32c of mp3 bytes"]["core_s_per_min"]
    # The whole-handler figures in the report are not used: the tiny random model's stems
    # are not music, and LAME's effort depends on the material (bench/README.md).
    return JobCosts(
        decode_core_s=decode / 60,
        host_core_s=host / 60,
        encode_core_s=(encode + 2 * crc) / 60,
    )


def gpu_measurements(folder: Path = MEASUREMENTS / "gpu") -> list[dict[str, Any]]:
    if not folder.is_dir():
        return []
    return [json.loads(p.read_text()) | {"_file": p.name} for p in sorted(folder.glob("*.json"))]


def device_rate(
    accelerator: str,
    spec: dict[str, Any],
    flops_per_audio_s: float,
    measured: Sequence[dict[str, Any]],
) -> DeviceRate:
    """The separation rate of one GPU: measured (best precision whose stems pass the
    parity threshold, at the auto-sized batch) or estimated from FLOPs."""
    wanted = spec["name"].lower()
    for report in measured:
        gpu = str(report.get("environment", {}).get("gpu", "")).lower()
        if not gpu or not all(word in gpu for word in wanted.split()[1:2]):
            continue
        runs = [
            r
            for r in report.get("separation", [])
            if r.get("min_snr_db") is None or r["min_snr_db"] >= MIN_SNR_DB
        ]
        if runs:
            top = max(runs, key=lambda r: r["audio_s_per_s"])
            return DeviceRate(
                top["audio_s_per_s"],
                f"measured: {report['_file']} (batch {top['batch']})",
                top["precision"],
            )
    peak = spec["bf16_dense_tflops"] * 1e12
    low, high = (e * peak / flops_per_audio_s for e in EFFICIENCY_BAND)
    return DeviceRate(
        GPU_EFFICIENCY * peak / flops_per_audio_s,
        f"estimate: {GPU_EFFICIENCY:.0%} of {spec['bf16_dense_tflops']:g} TFLOPS bf16",
        "bf16",
        band=(low, high),
    )


def cpu_forward_core_s(cpu_path: dict[str, Any], variant: str) -> float:
    """CPU core-seconds of forward passes per audio second (7.8 s segment, 5.85 s stride)."""
    row = next(r for r in cpu_path["variants"] if r["name"] == variant)
    return float(row["cpu_s_per_forward"]) / (0.75 * 39 / 5)


# --- the plan ------------------------------------------------------------------------------


def _search(
    costs: JobCosts, cores: float, *, forward_threads: int = 1
) -> tuple[SimResult, int, int]:
    """Smallest (in_flight, encode_workers) within 2 % of the best throughput found."""
    grid = []
    workers = sorted({w for w in (2, 4, 6, 8, 12, 16, 24, 32, 48) if w <= max(2, 2 * cores)})
    for in_flight in (2, 3, 4):
        for w in workers:
            shape = WorkerShape(cores, w, in_flight, forward_threads)
            grid.append((simulate(costs, shape, track_s=TRACK_S), in_flight, w))
    top = max(r.throughput for r, _, _ in grid)
    return min(
        (item for item in grid if item[0].throughput >= 0.98 * top), key=lambda i: (i[1], i[2])
    )


def plan(
    shape: Shape,
    costs: JobCosts,
    device: DeviceRate,
    *,
    quality: int,
    cpu_forward: float | None = None,
) -> Plan:
    usable = shape.vcpus - RESERVED_CPU
    if device.audio_s_per_s is None:
        if cpu_forward is None:
            raise ValueError(f"{shape.machine}: a CPU node needs the CPU forward's cost")
        pods = max(1, int(usable // CPU_POD_VCPUS))
        pod_cores = usable / pods
        costs = replace(costs, device_s=None, forward_core_s=cpu_forward)
        threads = max(1, round(pod_cores))
        current = simulate(
            costs,
            WorkerShape(pod_cores, max(1, round(pod_cores)), CURRENT_IN_FLIGHT, threads),
            track_s=TRACK_S,
        )
        best, in_flight, workers = _search(costs, pod_cores, forward_threads=threads)
        cpu_bound = usable / costs.cpu_core_s()
    else:
        pods, pod_cores = 1, usable
        costs = replace(costs, device_s=1.0 / device.audio_s_per_s)
        # Today's default: STEM_ENCODE_WORKERS=0 = os.cpu_count(), which in a container
        # is the node's vCPU count.
        current = simulate(
            costs, WorkerShape(usable, shape.vcpus, CURRENT_IN_FLIGHT), track_s=TRACK_S
        )
        best, in_flight, workers = _search(costs, usable)
        cpu_bound = usable / costs.cpu_core_s()
    return Plan(
        shape, device, quality, current, best, in_flight, workers, pods, pod_cores, cpu_bound
    )


def k8s_resources(p: Plan) -> dict[str, str]:
    """Requests that reserve what the worker uses at its best rate (whole vCPUs, the rest
    of the node for the system), a memory limit from the measured growth."""
    cpu = max(1, math.floor(p.pod_vcpus))
    memory = "16Gi" if p.shape.memory_gib >= 32 else f"{max(4, p.shape.memory_gib // 2)}Gi"
    return {"cpu": str(cpu), "memory_request": memory, "memory_limit": "24Gi"}


# --- the document ----------------------------------------------------------------------------


def _header(*cells: str) -> list[str]:
    return ["| " + " | ".join(cells) + " |", "|" + "---|" * len(cells)]


def _fmt_rate(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:.1f}"


def _vcpu_price(shapes: Sequence[Shape]) -> tuple[str, float]:
    """The cheapest list price of one vCPU among the CPU-only shapes (memory included)."""
    cpu = [s for s in shapes if s.accelerator is None]
    best = min(cpu, key=lambda s: s.usd_per_hour / s.vcpus)
    return best.machine, best.usd_per_hour / best.vcpus


def render(
    plans: Sequence[Plan],
    *,
    meta: dict[str, Any],
    costs_report: dict[str, Any],
    qualities: Sequence[int],
    plot_name: str,
    flops: dict[str, Any] | None = None,
    cpu_forward: dict[str, float] | None = None,
    costs_by_quality: dict[int, JobCosts] | None = None,
) -> str:
    env = costs_report.get("environment", {})
    measured = any(p.device.source.startswith("measured") for p in plans)
    out = [
        "# Capacity: throughput and cost per audio hour by node shape",
        "",
        "Generated by `python -m bench capacity` (`bench/capacity.py`): do not edit by hand;",
        "change the inputs and re-run. Inputs: `bench/measurements/costs.json` (per-core CPU",
        f"costs, measured at commit {env.get('git_commit', '?')} on a {env.get('cpu', '?')} VM",
        f"with {env.get('cpu_count', '?')} vCPUs, {env.get('timestamp', '?')}),",
        "`bench/measurements/cpu-path.json`",
        "(the CPU forward), `bench/measurements/flops.json`, `bench/measurements/gpu/*.json` (GPU",
        "measurements from `bench/gpu_check.sh`: "
        + ("see the device column)" if measured else "none yet)"),
        "and `bench/prices.toml`.",
        "",
        f"> **Prices**: {meta['pricing']}, {meta['region']}, as of {meta['prices_as_of']}, written",
        f"> {meta['written']}. They {meta['recheck']}: {', '.join(meta['sources'])}.",
        "",
    ]
    if not measured:
        out += [
            "> **No GPU was measured.** Every GPU rate below is an *estimate*: "
            f"{GPU_EFFICIENCY:.0%} of the GPU's",
            "> dense bf16 peak divided by the model's FLOPs per audio second. Run",
            "> `bench/gpu_check.sh` on each GPU (bench/README.md) and copy its JSON to",
            "> `bench/measurements/gpu/` to replace them.",
            "",
        ]
    if costs_by_quality:
        out += [
            "## What one second of audio costs",
            "",
            "| | " + " | ".join(f"MP3 320k `-q {q}`" for q in costs_by_quality) + " |",
            "|---|" + "---|" * len(costs_by_quality),
        ]
        rows: list[tuple[str, Callable[[JobCosts], float]]] = [
            ("decode (mean of wav/flac/mp3), core-ms", lambda c: 1000 * c.decode_core_s),
            (
                "separator host work (one thread, during separation), core-ms",
                lambda c: 1000 * c.host_core_s,
            ),
            ("encode six stems (+ sha256, crc32c), core-ms", lambda c: 6000 * c.encode_core_s),
            ("CPU pipeline total, core-ms", lambda c: 1000 * c.cpu_core_s()),
            ("audio-s per s one vCPU sustains", lambda c: 1 / c.cpu_core_s()),
        ]
        for label, value in rows:
            out.append(
                f"| {label} | "
                + " | ".join(f"{value(c):.1f}" for c in costs_by_quality.values())
                + " |"
            )
        out.append("")
        if flops is not None:
            out.append(
                f"The model: {flops['flops_per_segment'] / 1e9:.0f} GFLOP per 7.8 s segment "
                f"(`torch.utils.flop_counter`), {flops['flops_per_audio_s'] / 1e9:.1f} GFLOP per "
                f"audio second at overlap {flops['overlap']}."
            )
        if cpu_forward:
            out.append(
                "On a CPU the forward passes cost "
                + ", ".join(f"{k}: {v:.2f} core-s" for k, v in cpu_forward.items())
                + " per audio second (`bench cpu-path`, this box)."
            )
        out.append("")
    out += [
        "## End to end, per node",
        "",
        "Seconds of audio finished per wall second (= audio hours per hour),",
        f"{TRACK_S / 60:.0f}-minute tracks with a backlog, six MP3 320k stems, from",
        "`bench/worker_model.py` (the worker's pipelining). *now*: today's settings —",
        "`STEM_MAX_IN_FLIGHT=2`, `STEM_ENCODE_WORKERS=0`,",
        "which is `os.cpu_count()`, i.e. the node's vCPUs inside a container. *tuned*: the",
        "smallest in-flight count and encode pool within 2 % of the best found. *CPU-bound rate*:",
        f"all vCPUs but {RESERVED_CPU} busy with the pipeline. Sorted by tuned $ per audio hour.",
        "",
    ]
    for quality in qualities:
        rows_q = sorted(
            (p for p in plans if p.quality == quality), key=lambda p: p.usd_per_audio_hour_best
        )
        out += [
            f"### MP3 `-q {quality}`",
            "",
            *_header(
                "node",
                "vCPUs",
                "device",
                "$/h",
                "device rate",
                "CPU-bound rate",
                "now: rate (bound)",
                "now: $/audio-h",
                "tuned: in-flight, encoders",
                "tuned: rate (bound)",
                "tuned: $/audio-h",
            ),
        ]
        for p in rows_q:
            device = p.shape.accelerator or f"CPU ({p.pods} × {p.pod_vcpus:.1f}-vCPU workers)"
            if p.device.audio_s_per_s is None:
                rate = "(the CPU)"
            else:
                kind = "*estimate*" if p.device.source.startswith("estimate") else "measured"
                rate = f"{_fmt_rate(p.device.audio_s_per_s)} {kind}"
            out.append(
                f"| {p.shape.machine} | {p.shape.vcpus} | {device} | {p.shape.usd_per_hour:.2f} "
                f"| {rate} | {_fmt_rate(p.cpu_bound_rate)} "
                f"| {_fmt_rate(p.current.throughput * p.pods)} ({p.current.bound}) "
                f"| {p.usd_per_audio_hour_current:.3f} "
                f"| {p.best_in_flight}, {p.best_encode_workers} "
                f"| {_fmt_rate(p.best.throughput * p.pods)} ({p.best.bound}) "
                f"| {p.usd_per_audio_hour_best:.3f} |"
            )
        out.append("")
    out += [f"![throughput and cost per audio hour by node shape]({plot_name})", ""]
    last = [p for p in plans if p.quality == qualities[-1]]
    out += [
        f"## Settings per shape (MP3 `-q {qualities[-1]}`)",
        "",
        "One worker pod per GPU node; on CPU-only nodes one worker per "
        f"{CPU_POD_VCPUS} vCPUs. Requests reserve the",
        "vCPUs the worker keeps busy (the node's allocatable CPU, so nothing else is scheduled",
        "onto cores the encoders need); no CPU limit (CFS throttling would stall the",
        "encoders in bursts); the memory limit is unchanged from `infra/k8s` (the worker's",
        "growth over the loaded model is ~1.2 GiB on a 10-minute track, bench/README.md).",
        "",
        *_header(
            "node",
            "`STEM_MAX_IN_FLIGHT`",
            "`STEM_ENCODE_WORKERS`",
            "pods",
            "cpu request",
            "memory request / limit",
        ),
    ]
    for p in sorted(last, key=lambda p: p.usd_per_audio_hour_best):
        res = k8s_resources(p)
        out.append(
            f"| {p.shape.machine} | {p.best_in_flight} | {p.best_encode_workers} | {p.pods} "
            f"| {res['cpu']} | {res['memory_request']} / {res['memory_limit']} |"
        )
    out.append("")
    out += _split_section(last, costs_by_quality, qualities[-1])
    out += _sensitivity_section(last, costs_by_quality, qualities[-1])
    out += [
        "## What the model leaves out",
        "",
        "- Download and upload transfer time (a few seconds per four-minute track, overlapped",
        "  with other jobs' work), the GIL (the encoders and decoders release it), memory",
        "  bandwidth, and Pub/Sub/GCS latency.",
        "- Hyper-threading: GCP vCPUs are hyperthreads; with every vCPU busy, two threads share",
        "  a physical core and each runs slower than the per-vCPU costs measured here (which",
        "  come from a 2-vCPU VM on a shared host). Treat CPU-bound rates as upper bounds.",
        "- The vCPUs' own speed: the costs were measured on this box's CPU; Cascade Lake (g2, a2)",
        "  vCPUs are likely slower, Sapphire Rapids (a3, c3) similar or faster. c3's AMX could",
        "  make a bf16 CPU forward much faster than the box `bench cpu-path` ran on shows",
        "  (avx512_bf16, no AMX); on a CPU without bf16 instructions (AVX2 only) bf16 is",
        "  emulated and slower than fp32 (bench/README.md).",
        "- CPU-node workers: torch's scaling beyond a few threads on this model is unmeasured",
        "  here (2 vCPUs); the model assumes perfect scaling within a "
        f"{CPU_POD_VCPUS}-vCPU worker.",
        "",
    ]
    return "\n".join(out)


def _split_section(
    plans: Sequence[Plan], costs_by_quality: dict[int, JobCosts] | None, quality: int
) -> list[str]:
    if not costs_by_quality:
        return []
    costs = costs_by_quality[quality]
    gpu = [p for p in plans if p.device.audio_s_per_s is not None]
    if not gpu:
        return []
    shapes = [p.shape for p in plans]
    cheapest, vcpu_usd = _vcpu_price(shapes)
    encode = 6 * costs.encode_core_s
    cap = 1 / costs.host_core_s
    out = [
        "## Splitting encoding off the GPU node (not built; what the numbers imply)",
        "",
        f"At MP3 `-q {quality}` one audio second needs {1000 * costs.cpu_core_s():.0f} core-ms "
        "of CPU, "
        f"{1000 * encode:.0f} of them encoding. A GPU node keeps its GPU busy only with",
        "`device rate × CPU cost` vCPUs (+ the reserve). Encoding elsewhere would ship the six",
        "stems as 16-bit PCM (6 × 2 ch × 2 B × 44.1 kHz = 1.06 MB per audio second; FLAC about",
        "halves it for little CPU) and pay for the encoders' vCPUs there: "
        f"{cheapest} at ${vcpu_usd:.4f} per vCPU-hour gives "
        f"${encode * vcpu_usd:.4f} per audio hour of encoding.",
        "",
        f"One worker separates at most 1 / host work = {cap:.0f} audio-s per s whatever the",
        "GPU: the separator's own host work (normalising, chunk assembly, overlap-add, the",
        "copy to the spool) runs on one thread while the job holds the device (measured with",
        "torch on one thread; its intra-op threads may spread some of it). The rates below",
        "are capped there; past it, a faster GPU needs several workers per GPU, or that work",
        "taken off the separation's critical path.",
        "",
        *_header(
            "node",
            "rate (device, capped)",
            "vCPUs needed to keep up",
            "vCPUs it has",
            "$/audio-h today (tuned)",
            f"$/audio-h GPU-bound + encoding on {cheapest}",
            "stems to ship, MB/s",
        ),
    ]
    for p in sorted(gpu, key=lambda p: p.usd_per_audio_hour_best):
        rate = min(p.device.audio_s_per_s or 0.0, cap)
        needed = rate * costs.cpu_core_s() + RESERVED_CPU
        gpu_only = p.shape.usd_per_hour / rate + encode * vcpu_usd
        out.append(
            f"| {p.shape.machine} | {_fmt_rate(rate)} | {needed:.0f} | {p.shape.vcpus} "
            f"| {p.usd_per_audio_hour_best:.4f} | {gpu_only:.4f} | {rate * 1.06:.0f} |"
        )
    out += [
        "",
        "(The GPU-bound column assumes the GPU node then needs only decode and the separator's",
        "host work, and that its remaining vCPUs suffice for those; shipping and receiving the",
        "stems costs CPU not counted here.)",
        "",
    ]
    return out


def _sensitivity_section(
    plans: Sequence[Plan], costs_by_quality: dict[int, JobCosts] | None, quality: int
) -> list[str]:
    estimated = [p for p in plans if p.device.band is not None]
    if not estimated or not costs_by_quality:
        return []
    costs = costs_by_quality[quality]
    low, high = EFFICIENCY_BAND
    out = [
        "## How much the GPU estimate matters",
        "",
        f"The estimate assumes {GPU_EFFICIENCY:.0%} of the dense bf16 peak. At {low:.0%} and "
        f"{high:.0%} instead (tuned settings, same CPU costs):",
        "",
        *_header(
            "node",
            f"device rate at {(band := f'{low:.0%} / {GPU_EFFICIENCY:.0%} / {high:.0%}')}",
            f"end-to-end rate at {band}",
            f"bound at {low:.0%}",
        ),
    ]
    for p in sorted(estimated, key=lambda p: p.shape.machine):
        assert p.device.band is not None
        assert p.device.audio_s_per_s is not None
        lo_rate, hi_rate = p.device.band
        results = []
        for rate in (lo_rate, p.device.audio_s_per_s, hi_rate):
            device = replace(p.device, audio_s_per_s=rate, band=None)
            results.append(plan(p.shape, costs, device, quality=quality))
        out.append(
            f"| {p.shape.machine} "
            f"| {' / '.join(_fmt_rate(r) for r in (lo_rate, p.device.audio_s_per_s, hi_rate))} "
            f"| {' / '.join(_fmt_rate(r.best.throughput) for r in results)} "
            f"| {results[0].best.bound} |"
        )
    out.append("")
    return out


TODAY: Final = "today's in-flight, encoders"


def write_plot(plans: Sequence[Plan], path: Path, quality: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = sorted(
        (p for p in plans if p.quality == quality), key=lambda p: p.usd_per_audio_hour_best
    )
    names = [p.shape.machine for p in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.8))
    y = range(len(rows))
    left.barh([i + 0.2 for i in y], [p.current.throughput * p.pods for p in rows], 0.4, label=TODAY)
    left.barh([i - 0.2 for i in y], [p.best.throughput * p.pods for p in rows], 0.4, label="tuned")
    left.set_yticks(list(y), names)
    left.set_xlabel("audio seconds per second")
    left.set_xscale("log")
    left.legend()
    left.set_title("throughput (GPU rates: estimates unless measured)")
    right.barh([i + 0.2 for i in y], [p.usd_per_audio_hour_current for p in rows], 0.4, label=TODAY)
    right.barh([i - 0.2 for i in y], [p.usd_per_audio_hour_best for p in rows], 0.4, label="tuned")
    right.set_yticks(list(y), names)
    right.set_xlabel("USD per audio hour (list prices, re-check)")
    right.set_xscale("log")
    right.legend()
    right.set_title(f"cost, six MP3 320k stems, -q {quality}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _load_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise SystemExit(f"{path} is missing: run the command that writes it (see bench/README.md)")
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench capacity", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--costs", type=Path, default=MEASUREMENTS / "costs.json")
    parser.add_argument("--cpu-path", type=Path, default=MEASUREMENTS / "cpu-path.json")
    parser.add_argument("--flops", type=Path, default=MEASUREMENTS / "flops.json")
    parser.add_argument("--recount-flops", action="store_true")
    parser.add_argument(
        "--qualities",
        default="2,3",
        help="MP3 -q values to plan for (2: Demucs' own writer, 3: STEM_MP3_QUALITY's "
        "default, chosen by bench costs)",
    )
    parser.add_argument("--out", type=Path, default=DOC)
    ns = parser.parse_args(argv)
    console = Console(highlight=False, width=None if sys.stdout.isatty() else 132)
    costs_report = _load_json(ns.costs)
    cpu_path = _load_json(ns.cpu_path)
    if ns.recount_flops or not ns.flops.is_file():
        from bench.flops import count_flops

        ns.flops.parent.mkdir(parents=True, exist_ok=True)
        ns.flops.write_text(json.dumps(count_flops(), indent=2) + "\n")
    flops = _load_json(ns.flops)
    shapes, accelerators, meta = load_shapes()
    measured = gpu_measurements()
    qualities = [int(q) for q in ns.qualities.split(",")]
    plans = []
    by_quality = {q: job_costs(costs_report, q) for q in qualities}
    forward = {
        name: cpu_forward_core_s(cpu_path, name)
        for name in CPU_PATHS
        if any(r["name"] == name and "cpu_s_per_forward" in r for r in cpu_path["variants"])
    }
    for quality in qualities:
        costs = by_quality[quality]
        for shape in shapes:
            if shape.accelerator is None:
                # The default fp32 eager forward, and the opt-in faster CPU paths
                # (STEM_PRECISION=bf16, STEM_CPU_RUNTIME=openvino) as rows of their own.
                for variant, label in CPU_PATHS.items():
                    if variant not in forward:
                        continue
                    named = (
                        shape
                        if variant == "fp32"
                        else replace(shape, machine=f"{shape.machine} ({label})")
                    )
                    device = DeviceRate(None, f"the CPU ({variant})", variant)
                    plans.append(
                        plan(named, costs, device, quality=quality, cpu_forward=forward[variant])
                    )
            else:
                device = device_rate(
                    shape.accelerator,
                    accelerators[shape.accelerator],
                    flops["flops_per_audio_s"],
                    measured,
                )
                plans.append(plan(shape, costs, device, quality=quality))
    doc = render(
        plans,
        meta=meta,
        costs_report=costs_report,
        qualities=qualities,
        plot_name=ns.out.with_suffix(".png").name,
        flops=flops,
        cpu_forward=forward,
        costs_by_quality=by_quality,
    )
    ns.out.parent.mkdir(parents=True, exist_ok=True)
    ns.out.write_text(doc)
    write_plot(plans, ns.out.with_suffix(".png"), qualities[-1])
    console.print(doc)
    return 0
