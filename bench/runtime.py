"""Set-up shared by every benchmark process: threads, the fleet's settings, the facts of
the machine that a report has to carry to be comparable with another."""

from __future__ import annotations

import datetime as dt
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError

from bench.options import Options
from bench.results import BenchError
from bench.workload import MODEL_NAME
from consumer.settings import Settings

__all__ = ["configure_torch", "environment", "fleet_settings"]

_DAY_S = 24 * 3600.0
# What the fleet's Settings calls its inference precision, newest name first.
_PRECISION_FIELDS = ("precision", "dtype")


def configure_torch(options: Options) -> None:
    if options.threads is not None:
        torch.set_num_threads(options.threads)


def fleet_settings(options: Options, model_repo: Path) -> Settings:
    """The worker's settings for the benchmark, independent of this shell's ``STEM_*``.

    Limits are lifted so a long CPU run is not cut off by the production job timeout.
    ``--dtype`` goes to the settings' precision field (the separator is loaded from them
    by ``consumer.app.load_separator``); ``--set KEY=VALUE`` overrides any other field.
    """
    values: dict[str, Any] = {
        "model": MODEL_NAME,
        "model_repo": model_repo,
        "device": options.device,
        "segment_overlap": options.overlap,
        "shifts": 0,
        "job_timeout_s": _DAY_S,
        "max_audio_seconds": max(1200.0, options.seconds + 60.0),
        "metrics_port": 0,
    }
    precision = next((f for f in _PRECISION_FIELDS if f in Settings.model_fields), None)
    if precision is not None:
        values[precision] = options.dtype
    elif options.dtype != "fp32":
        raise BenchError(
            f"--dtype {options.dtype}: the fleet's Settings has no precision field "
            f"(looked for {', '.join(_PRECISION_FIELDS)}); only fp32 runs"
        )
    for key, value in options.fleet_settings:
        if key not in Settings.model_fields:
            raise BenchError(f"--set {key}: the fleet's Settings has no field {key!r}")
        values[key] = value
    # model_validate, not Settings(...): the environment must not change what is measured.
    try:
        return Settings.model_validate(values)
    except ValidationError as exc:
        raise BenchError(f"invalid fleet settings: {exc}") from exc


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(
            ["git", *args], capture_output=True, text=True, timeout=10, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return out.strip()


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


# The CPU features a CPU forward's speed depends on (bf16: AVX512-BF16 or AMX).
_CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")


def _cpu_flags() -> list[str] | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                present = set(line.split(":", 1)[1].split())
                return [flag for flag in _CPU_FLAGS if flag in present]
    except OSError:
        pass
    return None


def environment(device: torch.device) -> dict[str, Any]:
    """What a number in the report depends on besides the code."""
    status = _git("status", "--porcelain")
    info: dict[str, Any] = {
        "timestamp": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "git_commit": _git("rev-parse", "--short", "HEAD"),
        "git_dirty": bool(status) if status is not None else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "demucs": metadata.version("demucs"),
        "cpu": _cpu_model(),
        "cpu_flags": _cpu_flags(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "device": str(device),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info
