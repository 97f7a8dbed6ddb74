"""What one measured run produced: timings, memory, and (optionally) the float stems."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from bench.measure import Usage

__all__ = ["STAGES", "BenchError", "Captured", "RunResult"]

STAGES: Final = ("submit", "download", "decode", "separate", "encode", "upload", "publish")
"""The stages in pipeline order (``submit``: staging and publishing the job, e2e only).
The handler times the others itself, summing each stage over the threads that ran it.
``other`` in a report is the run's wall time minus the sum of the stages: job validation,
the manifest check, ``stems.processing``, temporary files; in e2e also Pub/Sub delivery
both ways. It is negative when stages overlapped (e.g. stems encoded in parallel)."""


class BenchError(RuntimeError):
    """A pipeline did not do its job (a failed job, a timeout): the numbers would be void."""


@dataclass(frozen=True, eq=False)
class Captured:
    """The separation's input and float output, before any encoding (for parity)."""

    mix: npt.NDArray[np.float32]
    stems: dict[str, npt.NDArray[np.float32]]


@dataclass
class RunResult:
    """One pipeline run on one track."""

    mode: str
    rep: int
    audio_seconds: float
    wall_s: float
    forward_s: float
    forward_calls: int
    stages: dict[str, float]
    usage: Usage
    extra: dict[str, float] = field(default_factory=dict)
    captured: Captured | None = None

    @property
    def throughput(self) -> float:
        """Audio seconds separated per wall-clock second."""
        return self.audio_seconds / self.wall_s

    @property
    def overhead_s(self) -> float:
        """Everything but the model's forward passes."""
        return self.wall_s - self.forward_s

    @property
    def overhead_s_per_audio_min(self) -> float:
        return self.overhead_s / (self.audio_seconds / 60.0)

    def to_json(self) -> dict[str, Any]:
        stages: dict[str, float] = {
            name: round(self.stages[name], 4) for name in STAGES if name in self.stages
        }
        stages.update(
            {k: round(v, 4) for k, v in self.stages.items() if k not in STAGES}
        )  # anything a newer handler times too
        # Negative when stages overlapped (the handler sums each stage over its threads:
        # six stems encoded in parallel count six times).
        stages["other"] = round(self.wall_s - sum(self.stages.values()), 4)
        usage = self.usage
        return {
            "mode": self.mode,
            "rep": self.rep,
            "audio_seconds": self.audio_seconds,
            "wall_s": round(self.wall_s, 4),
            "throughput": round(self.throughput, 4),
            "forward_s": round(self.forward_s, 4),
            "forward_calls": self.forward_calls,
            "overhead_s": round(self.overhead_s, 4),
            "overhead_s_per_audio_min": round(self.overhead_s_per_audio_min, 4),
            "stages_s": stages,
            "rss_before_mb": round(usage.rss_before_mb, 1),
            "peak_rss_mb": round(usage.peak_rss_mb, 1),
            "rss_growth_mb": round(usage.rss_growth_mb, 1),
            "rss_method": usage.method,
            "gpu_peak_allocated_mb": _round(usage.gpu_peak_allocated_mb),
            "gpu_peak_reserved_mb": _round(usage.gpu_peak_reserved_mb),
            "process_cpu_s": round(usage.cpu_s, 3),
            "cpu_pressure": None if usage.cpu_pressure is None else round(usage.cpu_pressure, 3),
            **{k: round(v, 4) for k, v in self.extra.items()},
        }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)
