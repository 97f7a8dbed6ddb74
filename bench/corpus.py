"""Stem-like material for the encoder and decoder measurements (``bench costs``).

What the worker encodes are stems: one instrument each, some sparse, some dense. The
corpus is :func:`devkit.synth.instrument_parts` for a few seeds — drums, bass,
vocals, guitar and piano, each stereo and panned as mixed, scaled by the factor that
brings their sum (the mix) to a 0.9 peak — so the stems of one seed sum to that seed's
mix, as a separation's do. The mixes are the decoder's input.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from devkit.synth import instrument_parts

__all__ = ["Corpus", "build_corpus"]

Audio = npt.NDArray[np.float32]


@dataclass(frozen=True, eq=False)
class Corpus:
    """``stems[(seed, part)]`` and ``mixes[seed]``, float32 ``[2, frames]``."""

    sample_rate: int
    stems: dict[tuple[int, str], Audio]
    mixes: dict[int, Audio]

    @property
    def stem_minutes(self) -> float:
        return float(sum(s.shape[1] for s in self.stems.values())) / self.sample_rate / 60.0

    @property
    def mix_minutes(self) -> float:
        return float(sum(m.shape[1] for m in self.mixes.values())) / self.sample_rate / 60.0


def build_corpus(
    seconds: float, *, seeds: tuple[int, ...] = (0,), sample_rate: int = 44_100
) -> Corpus:
    """Five stems and one mix per seed, each ``seconds`` long."""
    stems: dict[tuple[int, str], Audio] = {}
    mixes: dict[int, Audio] = {}
    for seed in seeds:
        parts = instrument_parts(seconds, sample_rate, seed=seed)
        mix = np.sum(list(parts.values()), axis=0)
        scale = 1.0 / max(1.0, float(np.abs(mix).max()) / 0.9)
        mixes[seed] = (mix * scale).astype(np.float32)
        for name, part in parts.items():
            stems[(seed, name)] = (part * scale).astype(np.float32)
    return Corpus(sample_rate, stems, mixes)
