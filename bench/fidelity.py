"""Objective distances between a reference signal and a lossy copy of it.

Pure functions over arrays, used by ``bench costs`` (an MP3 decoded back against the PCM
it was made from) and ``bench cpu-path`` (stems of a faster forward against fp32's):

- :func:`align`: the lag that lines a decoded MP3 up with its source (LAME's streaming
  API writes no gapless tag, so decoders play the encoder delay: 1105 samples at 44.1 kHz;
  an ffmpeg-written file carries a LAME tag that a decoder may honour instead).
- :func:`snr_db`: ``10·log10(Σref² / Σ(x−ref)²)``: what share of the signal the error is.
  An MP3 at 320 kbit/s puts its noise where the ear does not hear it, so its SNR is low
  (~20–30 dB) and says little alone; the *difference* between two encoder settings on the
  same material is what it is used for here.
- :func:`log_spectral_distance_db`: the RMS, over STFT frames and bins up to a cut-off, of
  the difference of the two log power spectra (dB): it weights quiet bands as much as
  loud ones, where SNR is dominated by the loudest.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["align", "log_spectral_distance_db", "snr_db"]

Signal = npt.NDArray[np.floating[Any]]


def _mono(x: Signal) -> npt.NDArray[np.float64]:
    array = np.asarray(x, dtype=np.float64)
    return array.mean(axis=0) if array.ndim == 2 else array


def align(reference: Signal, delayed: Signal, *, max_lag: int = 4096, window: int = 1 << 17) -> int:
    """The lag ``d`` (``0 <= d <= max_lag``) for which ``delayed[..., d:]`` best matches
    ``reference`` (cross-correlation of the mono sums over their first ``window`` frames)."""
    ref = _mono(reference)[:window]
    sig = _mono(delayed)[: window + max_lag]
    if len(ref) == 0 or len(sig) == 0:
        raise ValueError("cannot align empty signals")
    size = 1 << math.ceil(math.log2(len(ref) + len(sig)))
    corr = np.fft.irfft(np.fft.rfft(sig, size) * np.conj(np.fft.rfft(ref, size)), size)
    return int(np.argmax(corr[: max_lag + 1]))


def _overlap(reference: Signal, other: Signal) -> tuple[npt.NDArray[np.float64], ...]:
    ref = np.asarray(reference, dtype=np.float64)
    oth = np.asarray(other, dtype=np.float64)
    if ref.ndim != oth.ndim or ref.shape[:-1] != oth.shape[:-1]:
        raise ValueError(f"shapes differ: {ref.shape} vs {oth.shape}")
    n = min(ref.shape[-1], oth.shape[-1])
    return ref[..., :n], oth[..., :n]


def snr_db(reference: Signal, other: Signal) -> float:
    """SNR of ``other`` against ``reference`` over their common length, in dB
    (``inf`` when identical)."""
    ref, oth = _overlap(reference, other)
    noise = float(np.sum((oth - ref) ** 2))
    signal = float(np.sum(ref * ref))
    if noise == 0.0:
        return math.inf
    return 10.0 * math.log10(signal / noise) if signal > 0 else -math.inf


def log_spectral_distance_db(
    reference: Signal,
    other: Signal,
    sample_rate: int,
    *,
    n_fft: int = 2048,
    max_hz: float = 16_000.0,
    floor_db: float = -100.0,
) -> float:
    """RMS difference of the log power spectra (dB) over frames and bins below ``max_hz``
    (Hann windows, hop ``n_fft // 2``, mono sum). Power under ``floor_db`` relative to the
    reference's loudest bin is raised to it, so silence does not dominate."""
    ref, oth = (_mono(x) for x in _overlap(reference, other))
    hop = n_fft // 2
    frames = (len(ref) - n_fft) // hop + 1
    if frames < 1:
        raise ValueError(f"signals shorter than one {n_fft}-point frame")
    index = np.arange(n_fft)[None, :] + hop * np.arange(frames)[:, None]
    window = np.hanning(n_fft)
    bins = int(max_hz / sample_rate * n_fft) + 1
    spectra = [np.abs(np.fft.rfft(x[index] * window, axis=-1)[:, :bins]) ** 2 for x in (ref, oth)]
    floor = float(spectra[0].max()) * 10 ** (floor_db / 10) or np.finfo(np.float64).tiny
    ref_db, oth_db = (10 * np.log10(np.maximum(s, floor)) for s in spectra)
    return float(np.sqrt(np.mean((ref_db - oth_db) ** 2)))
