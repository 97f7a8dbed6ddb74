"""Deterministic test music: a few seconds of drums, bass, 'vocals', guitar and piano.

Used by ``stemctl demo``, the benchmarks and the tests. Not art: each part has the
spectral shape of its instrument (noise bursts, low sine, vibrato with formants, plucked
string, decaying harmonics), so a separation has something to separate.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

__all__ = ["instrument_parts", "multi_instrument_mix"]


def _plucked(
    freq: float, length: int, rate: int, rng: np.random.Generator
) -> npt.NDArray[np.float64]:
    # Karplus-Strong: a noise burst through a damped delay line sounds like a string.
    period = max(2, int(rate / freq))
    out = np.zeros(length)
    buf = rng.uniform(-1, 1, period)
    for i in range(length):
        out[i] = buf[i % period]
        buf[i % period] = 0.996 * 0.5 * (buf[i % period] + buf[(i + 1) % period])
    return out


def instrument_parts(
    seconds: float, sample_rate: int = 44100, *, seed: int = 0
) -> dict[str, npt.NDArray[np.float64]]:
    """The mix's five parts, each stereo float64 ``[2, frames]`` and panned as mixed
    (drums, bass, vocals, guitar, piano): stem-like material for encoder measurements.
    Their sum, in this order, is :func:`multi_instrument_mix` before its normalisation."""
    rng = np.random.default_rng(seed)
    n = max(1, int(seconds * sample_rate))
    t = np.arange(n) / sample_rate
    beat = 0.5  # 120 bpm
    phase = (t % beat) / beat

    kick = np.sin(2 * np.pi * 55 * t * (1 + 2 * np.exp(-phase * 30))) * np.exp(-phase * 12)
    hats = rng.standard_normal(n) * np.exp(-(((t + beat / 2) % beat) / beat) * 40) * 0.3
    drums = kick + hats

    roots = np.array([55.0, 55.0, 73.4, 49.0])
    bar = (t // (4 * beat)).astype(int) % len(roots)
    bass = 0.6 * np.sin(2 * np.pi * roots[bar] * t)

    vib = 220 * (1 + 0.01 * np.sin(2 * np.pi * 5.5 * t))
    voice_phase = 2 * np.pi * np.cumsum(vib) / sample_rate
    vocals = sum(np.sin(k * voice_phase) / k**1.5 for k in range(1, 8)) * 0.4
    vocals *= 0.5 + 0.5 * np.sin(2 * np.pi * 0.5 * t) ** 2

    guitar = np.zeros(n)
    step = int(beat * sample_rate)
    for i, start in enumerate(range(0, n, step)):
        note = _plucked(196.0 * (1.5 if i % 3 else 1.0), min(step, n - start), sample_rate, rng)
        guitar[start : start + len(note)] += note * 0.4

    piano = np.zeros(n)
    for start in range(0, n, 2 * step):
        length = min(2 * step, n - start)
        tt = np.arange(length) / sample_rate
        tone = sum(np.sin(2 * np.pi * 261.6 * k * tt) / k**2 for k in range(1, 6))
        piano[start : start + length] += tone * np.exp(-tt * 3) * 0.4

    # (part, left gain, right gain), in the order the mix sums them.
    panned = (
        ("drums", drums, 1, 1),
        ("bass", bass, 1, 1),
        ("vocals", vocals, 0.8, 0.8),
        ("guitar", guitar, 1.0, 0.6),
        ("piano", piano, 0.6, 1.0),
    )
    return {name: np.stack([left * part, right * part]) for name, part, left, right in panned}


def multi_instrument_mix(
    seconds: float, sample_rate: int = 44100, *, seed: int = 0
) -> npt.NDArray[np.float32]:
    """A stereo float32 ``[2, frames]`` mix, the same for the same arguments."""
    parts = iter(instrument_parts(seconds, sample_rate, seed=seed).values())
    mix = next(parts).copy()
    for part in parts:
        mix += part
    mix /= max(1.0, float(np.abs(mix).max()) / 0.9)
    return mix.astype(np.float32)
