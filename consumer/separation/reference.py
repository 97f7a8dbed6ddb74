"""Demucs' own path: ``demucs.apply.apply_model``, exactly as ``demucs.api.Separator`` runs it.

Used for what the batched path does not cover (a bag of models, ``shifts > 0``), and as the
reference the batched path is tested against. Facts about ``apply_model`` (Demucs 4.1.0):

- With ``split=True`` it cuts the mix into chunks of the model's ``segment`` (7.8 s for
  HTDemucs), ``overlap`` apart, and runs one chunk per forward pass (batch 1) in a Python
  loop; each result is copied back to the mix's device (here the host) and overlap-added
  there with a triangular window. HTDemucs pads a shorter chunk to its full segment, so a
  smaller ``segment`` saves no compute.
- ``shifts > 0`` separates ``shifts`` randomly offset copies and averages them; the offsets
  come from Python's **global** ``random`` module. Results are reproducible only if the
  caller seeds ``random`` (``shifts=0`` is deterministic). This module does not reseed it.
- Its ``callback`` is called under a lock at the start and end of every chunk. An exception
  raised from it cancels the remaining chunks and propagates (``apply_model`` catches
  ``BaseException`` only to shut its pool down, then re-raises). That is how progress and
  cancellation work here: cancellation takes effect at the next chunk boundary, so its
  latency is at most one forward pass.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, cast

import torch
from demucs.apply import apply_model

from consumer.separation.base import CancelledFn, ProgressFn, SeparationCancelled
from consumer.separation.loading import DemucsModel, normalisation, out_of_memory

__all__ = ["chunk_count", "separate_with_apply_model"]


def chunk_count(
    segments: Sequence[int], length: int, *, overlap: float, shifts: int, rate: int
) -> int:
    """How many forward passes ``apply_model`` runs (an upper bound when shifting).

    A shifted pass covers ``length`` plus up to half a second, so its chunk count is
    bounded by that of ``length + rate // 2``.
    """
    passes = max(shifts, 1)
    covered = length + (int(0.5 * rate) if shifts else 0)
    total = 0
    for segment_length in segments:
        stride = int((1 - overlap) * segment_length)
        total += passes * len(range(0, covered, stride))
    return total


def separate_with_apply_model(
    model: DemucsModel,
    wav: torch.Tensor,
    *,
    device: torch.device,
    segment: float | None,
    segments: Sequence[int],
    overlap: float,
    shifts: int,
    progress: ProgressFn | None,
    cancelled: CancelledFn | None,
) -> torch.Tensor:
    """``[sources, channels, frames]`` on the host, from ``apply_model``: one chunk per
    forward pass. Raises ``SeparationCancelled`` or ``DeviceOutOfMemory``."""
    length = wav.shape[-1]
    total = chunk_count(segments, length, overlap=overlap, shifts=shifts, rate=model.samplerate)
    tracker = _Progress(total, progress, cancelled)
    try:
        with torch.inference_mode():
            mean, std = normalisation(wav)
            out = cast(
                torch.Tensor,
                apply_model(
                    model,
                    ((wav - mean) / std)[None],
                    segment=segment,
                    shifts=shifts,
                    split=True,
                    overlap=overlap,
                    device=device,
                    callback=tracker.on_chunk,
                ),
            )
            out = out * std + mean
    except torch.OutOfMemoryError as exc:
        raise out_of_memory(device, length, exc) from exc
    tracker.finish()
    return out[0]


class _Progress:
    """Turns ``apply_model``'s chunk callbacks into progress fractions and cancellation."""

    def __init__(self, total: int, progress: ProgressFn | None, cancelled: CancelledFn | None):
        self._total = max(total, 1)
        self._progress = progress
        self._cancelled = cancelled
        self._done = 0
        self._reported = 0.0

    def on_chunk(self, info: Mapping[str, Any]) -> None:
        if self._cancelled is not None and self._cancelled():
            # Raised inside apply_model, which cancels the remaining chunks and re-raises.
            # A dedicated type (rather than the KeyboardInterrupt the demucs docs suggest)
            # means a real Ctrl-C is never mistaken for a cancellation, nor the reverse.
            raise SeparationCancelled("separation cancelled")
        if info.get("state") == "end":
            self._done += 1
            # Shifted passes may run fewer chunks than counted: the last one reports 1.0.
            self._report(min(self._done / self._total, 1.0))

    def finish(self) -> None:
        self._report(1.0)

    def _report(self, fraction: float) -> None:
        if self._progress is not None and fraction > self._reported:
            self._reported = fraction
            self._progress(fraction)
