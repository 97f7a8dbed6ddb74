"""Parity: the fleet's float stems against the reference's, for the same input and model.

Without real weights separation quality cannot be scored here; what stands in for it
(DESIGN.md) is that the fleet computes what ``demucs.api.Separator`` computes. Per stem:
the largest absolute difference and the SNR of the fleet's output against the
reference's, ``10·log10(Σ ref² / Σ (fleet − ref)²)`` dB (``None`` = bit-identical).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from bench.results import BenchError, Captured

__all__ = ["Parity", "StemParity", "compare"]


@dataclass(frozen=True)
class StemParity:
    name: str
    max_abs_diff: float
    snr_db: float | None  # None: identical

    def to_json(self) -> dict[str, Any]:
        return {
            "max_abs_diff": self.max_abs_diff,
            "snr_db": None if self.snr_db is None else round(self.snr_db, 2),
        }


@dataclass(frozen=True)
class Parity:
    input_max_abs_diff: float
    stems: tuple[StemParity, ...]

    @property
    def max_abs_diff(self) -> float:
        return max(s.max_abs_diff for s in self.stems)

    @property
    def min_snr_db(self) -> float | None:
        """The worst stem's SNR; ``None`` when every stem is bit-identical."""
        finite = [s.snr_db for s in self.stems if s.snr_db is not None]
        return min(finite) if finite else None

    def ok(self, min_snr_db: float) -> bool:
        worst = self.min_snr_db
        return worst is None or worst >= min_snr_db

    def to_json(self, min_snr_db: float) -> dict[str, Any]:
        worst = self.min_snr_db
        return {
            "input_max_abs_diff": self.input_max_abs_diff,
            "max_abs_diff": self.max_abs_diff,
            "min_snr_db": None if worst is None else round(worst, 2),
            "threshold_snr_db": min_snr_db,
            "ok": self.ok(min_snr_db),
            "stems": {s.name: s.to_json() for s in self.stems},
        }


def _snr_db(reference: npt.NDArray[np.float64], diff: npt.NDArray[np.float64]) -> float | None:
    noise = float(np.sum(diff * diff))
    if noise == 0.0:
        return None
    signal = float(np.sum(reference * reference))
    return 10.0 * math.log10(signal / noise) if signal > 0 else -math.inf


def compare(reference: Captured, fleet: Captured) -> Parity:
    """Compare two captured separations of the same track, stem by stem."""
    if set(reference.stems) != set(fleet.stems):
        raise BenchError(
            f"stems differ: reference {sorted(reference.stems)}, fleet {sorted(fleet.stems)}"
        )
    if reference.mix.shape != fleet.mix.shape:
        raise BenchError(f"inputs differ in shape: {reference.mix.shape} vs {fleet.mix.shape}")
    input_diff = float(np.max(np.abs(reference.mix.astype(np.float64) - fleet.mix)))
    stems = []
    for name, ref in reference.stems.items():
        ours = fleet.stems[name]
        if ref.shape != ours.shape:
            raise BenchError(f"stem {name}: shape {ref.shape} vs {ours.shape}")
        ref64 = ref.astype(np.float64)
        diff = ours.astype(np.float64) - ref64
        stems.append(StemParity(name, float(np.max(np.abs(diff))), _snr_db(ref64, diff)))
    return Parity(input_diff, tuple(stems))
