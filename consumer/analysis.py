"""What a catalog needs to judge and draw a stem, measured while it is encoded.

A stem is read once, block by block, by its encoder (:mod:`consumer.stems` may have spooled
it to disk). :class:`MeteredSource` hands the same blocks to a :class:`StemMeter` on the
way, so the analysis costs no second read and never holds a stem whole:

- integrated loudness per ITU-R BS.1770-4 (:class:`LoudnessMeter`): pyloudnorm's
  K-weighting filters run block by block as one second-order-sections cascade with its
  state carried over, the sums of squares are kept per 100 ms (a quarter of a 400 ms
  gating block), and the absolute (−70 LUFS) and relative (−10 LU) gates are applied at
  the end. It gives pyloudnorm's
  ``Meter.integrated_loudness`` on the whole stem (tested), without the whole stem;
- the sample peak;
- waveform peaks in BBC audiowaveform's JSON format, version 2 (:class:`WaveformBuilder`):
  channels averaged to one (audiowaveform's default), min/max pairs at 8 bits, about
  ``points`` pixels per track — what peaks.js and similar players draw directly.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt

from consumer.audio import BlockSource

__all__ = [
    "ABSOLUTE_GATE_LUFS",
    "LoudnessMeter",
    "MeteredSource",
    "StemAnalysis",
    "StemMeter",
    "WaveformBuilder",
]

ABSOLUTE_GATE_LUFS: Final = -70.0
_RELATIVE_GATE_LU: Final = -10.0
_BLOCK_S: Final = 0.4
_QUARTERS: Final = 4  # 75 % overlap: a gating block is four consecutive 100 ms quarters
_OFFSET_DB: Final = -0.691


def _k_weighting(rate: int) -> npt.NDArray[np.float64]:
    """The two stages of BS.1770's K-weighting, as pyloudnorm's ``Meter`` builds them, as
    second-order sections (``[b0 b1 b2 a0 a1 a2]`` rows, each stage's gain in its ``b``)."""
    # Imported on first use: scipy.signal costs a worker 1-2 s of start-up (the chaos
    # run's kills measure start-up), and the first stem pays it once instead.
    from pyloudnorm.iirfilter import IIRfilter

    stages = [
        IIRfilter(4.0, 1 / np.sqrt(2), 1500.0, rate, "high_shelf"),
        IIRfilter(0.0, 0.5, 38.0, rate, "high_pass"),
    ]
    return np.array([np.concatenate([s.passband_gain * s.b, s.a]) for s in stages])


class LoudnessMeter:
    """BS.1770-4 integrated loudness of ``[channels, n]`` blocks fed in time order."""

    def __init__(self, sample_rate: int, channels: int) -> None:
        if channels > 3:
            raise ValueError("channel weights beyond L, R, C are not implemented")
        self._rate = sample_rate
        self._channels = channels
        self._frames = 0
        self._quarter = int(_BLOCK_S / _QUARTERS * sample_rate)
        import scipy.signal  # on first use, as in _k_weighting

        self._sosfilt = scipy.signal.sosfilt
        self._sos = _k_weighting(sample_rate)
        self._state = np.zeros((len(self._sos), channels, 2))
        self._quarters: list[npt.NDArray[np.float64]] = []  # sums of squares, [channels, k]
        self._partial = np.zeros((channels, 1))  # the quarter being filled: its sum so far
        self._partial_frames = 0

    def add(self, block: npt.NDArray[np.float32]) -> None:
        # float64 (the sections and state are): sosfilt filters a float64 copy of the block
        weighted, self._state = self._sosfilt(self._sos, block, axis=-1, zi=self._state)
        squares = np.square(weighted, out=weighted)
        start = 0
        if self._partial_frames:  # finish the quarter the last block began
            start = min(self._quarter - self._partial_frames, squares.shape[-1])
            self._partial += squares[:, :start].sum(axis=-1, keepdims=True)
            self._partial_frames += start
            if self._partial_frames == self._quarter:
                self._quarters.append(self._partial)
                self._partial, self._partial_frames = np.zeros((self._channels, 1)), 0
        whole = (squares.shape[-1] - start) // self._quarter * self._quarter
        if whole:
            quarters = squares[:, start : start + whole].reshape(self._channels, -1, self._quarter)
            self._quarters.append(quarters.sum(axis=-1))
        if rest := squares.shape[-1] - start - whole:
            self._partial = squares[:, -rest:].sum(axis=-1, keepdims=True)
            self._partial_frames = rest
        self._frames += block.shape[-1]

    def integrated(self) -> float | None:
        """LUFS, or ``None`` when no 400 ms block passes the gates (silence, or shorter
        than one block)."""
        duration = self._frames / self._rate
        blocks = round((duration - _BLOCK_S) / (_BLOCK_S / _QUARTERS)) + 1
        if blocks < 1 or self._frames < _BLOCK_S * self._rate:
            return None
        quarters = np.concatenate([*self._quarters, self._partial], axis=-1)
        needed = blocks + _QUARTERS - 1
        if quarters.shape[-1] < needed:  # the last blocks reach past the end: zeros
            quarters = np.pad(quarters, ((0, 0), (0, needed - quarters.shape[-1])))
        windows = np.lib.stride_tricks.sliding_window_view(quarters, _QUARTERS, axis=-1)
        power = windows[:, :blocks].sum(axis=-1) / (_BLOCK_S * self._rate)  # [channels, blocks]
        total = power.sum(axis=0)  # channel weights are 1.0 for L, R and C
        with np.errstate(divide="ignore"):
            block_lufs = _OFFSET_DB + 10 * np.log10(total)
        gated = block_lufs >= ABSOLUTE_GATE_LUFS
        if not gated.any():
            return None
        relative = _OFFSET_DB + 10 * np.log10(total[gated].mean()) + _RELATIVE_GATE_LU
        kept = (block_lufs > relative) & (block_lufs > ABSOLUTE_GATE_LUFS)
        if not kept.any():
            return None
        return float(_OFFSET_DB + 10 * np.log10(total[kept].mean()))


class WaveformBuilder:
    """Min/max pairs of the channel average, ``samples_per_pixel`` frames each, 8 bits.

    Each 8-bit value is rounded outwards (min down, max up), so a pixel's pair always
    brackets the samples it stands for.
    """

    def __init__(self, sample_rate: int, frames: int, points: int) -> None:
        self.sample_rate = sample_rate
        self.samples_per_pixel = max(1, math.ceil(frames / max(points, 1)))
        self._pending = np.zeros(0, dtype=np.float32)
        self._pairs: list[npt.NDArray[np.int16]] = []

    def add(self, block: npt.NDArray[np.float32]) -> None:
        mono = np.concatenate([self._pending, block.mean(axis=0, dtype=np.float32)])
        whole = mono.size // self.samples_per_pixel * self.samples_per_pixel
        if whole:
            self._pairs.append(self._quantise(mono[:whole].reshape(-1, self.samples_per_pixel)))
        self._pending = mono[whole:]

    @staticmethod
    def _quantise(pixels: npt.NDArray[np.float32]) -> npt.NDArray[np.int16]:
        low = np.floor(pixels.min(axis=1) * 128)
        high = np.ceil(pixels.max(axis=1) * 128)
        pairs = np.stack([low, high], axis=1).clip(-128, 127)
        return pairs.astype(np.int16).reshape(-1)

    def document(self) -> dict[str, object]:
        """The audiowaveform JSON (version 2) of everything added."""
        pairs = list(self._pairs)
        if self._pending.size:
            pairs.append(self._quantise(self._pending.reshape(1, -1)))
        data = np.concatenate(pairs) if pairs else np.zeros(0, dtype=np.int16)
        return {
            "version": 2,
            "channels": 1,
            "sample_rate": self.sample_rate,
            "samples_per_pixel": self.samples_per_pixel,
            "bits": 8,
            "length": data.size // 2,
            "data": data.tolist(),
        }


@dataclass(frozen=True)
class StemAnalysis:
    """A stem's measures, as they go on the wire."""

    loudness_lufs: float | None
    peak_dbfs: float | None
    silent: bool
    waveform: dict[str, object]


class StemMeter:
    """Loudness, sample peak and waveform of one stem, from its blocks in time order."""

    def __init__(self, sample_rate: int, channels: int, frames: int, *, points: int) -> None:
        self._loudness = LoudnessMeter(sample_rate, channels)
        self._waveform = WaveformBuilder(sample_rate, frames, points)
        self._peak = 0.0

    def add(self, block: npt.NDArray[np.float32]) -> None:
        self._loudness.add(block)
        self._waveform.add(block)
        self._peak = max(self._peak, float(np.abs(block).max(initial=0.0)))

    def result(self, *, silence_lufs: float) -> StemAnalysis:
        """The measures; ``silent`` when the loudness is unmeasurable or below
        ``silence_lufs``. Values are rounded to 0.01 dB."""
        lufs = self._loudness.integrated()
        peak = 20 * math.log10(self._peak) if self._peak > 0 else None
        return StemAnalysis(
            loudness_lufs=None if lufs is None else round(lufs, 2),
            peak_dbfs=None if peak is None else round(peak, 2),
            silent=lufs is None or lufs < silence_lufs,
            waveform=self._waveform.document(),
        )


class MeteredSource:
    """A block source that shows every block it hands out to a :class:`StemMeter`."""

    def __init__(self, source: BlockSource, meter: StemMeter) -> None:
        self._source = source
        self._meter = meter

    @property
    def shape(self) -> tuple[int, int]:
        return self._source.shape

    def blocks(self, block_frames: int) -> Iterator[npt.NDArray[np.float32]]:
        for block in self._source.blocks(block_frames):
            self._meter.add(block)
            yield block
