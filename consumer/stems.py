"""Holding separated stems between the separator and the encoders.

Separation streams blocks in time order; encoding needs each stem whole *and* its peak
(Demucs' writer scales a stem that would clip by its peak, ``prevent_clip("rescale")``, so
the peak must be known before the first sample is encoded). ``StemSpool`` keeps the wanted
stems in memory when they are small and spools them to float32 files in the job's
temporary directory when they are not, so a long track's stems never sit in RAM at once.

A complement stem ``no_<source>`` is the sum of the model's other sources, block by block
(Demucs' ``--two-stems`` with ``--other-method add``); it gets its own peak and scale,
as Demucs' writer gives it.

The job's ``clipMode`` is Demucs' ``--clip-mode``: ``rescale`` (the default, and what the
fleet did before the option existed) divides a stem by ``max(1.01 * peak, 1)``; ``clamp``
clamps its samples to ±0.99 as ``prevent_clip(mode="clamp")`` does; ``none`` leaves them.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import BinaryIO, Final, Literal

import numpy as np
import numpy.typing as npt

from consumer.audio import BlockSource
from stem_contracts import complement_of

__all__ = ["DEFAULT_MEMORY_LIMIT_BYTES", "ClipMode", "StemSpool", "clip_scale"]

ClipMode = Literal["rescale", "clamp", "none"]
_CLAMP_LIMIT: Final = 0.99  # demucs.audio.prevent_clip(mode="clamp")

DEFAULT_MEMORY_LIMIT_BYTES: Final = 512 * 1024 * 1024
"""Stems up to this size in total stay in memory (six stereo stems of ~4 minutes)."""


def clip_scale(peak: float) -> float:
    """The factor ``demucs.audio.prevent_clip(mode="rescale")`` applies to a stem."""
    return 1.0 / max(1.01 * peak, 1.0)


def _limited(
    block: npt.NDArray[np.float32], scale: np.float32, clamp: bool
) -> npt.NDArray[np.float32]:
    if clamp:
        return np.clip(block, -_CLAMP_LIMIT, _CLAMP_LIMIT)
    return block if scale == 1 else block * scale


class _ArrayStem:
    def __init__(self, samples: npt.NDArray[np.float32], scale: float, clamp: bool) -> None:
        self._samples = samples
        self._scale = np.float32(scale)
        self._clamp = clamp
        self.shape: tuple[int, int] = (samples.shape[0], samples.shape[1])

    def blocks(self, block_frames: int) -> Iterator[npt.NDArray[np.float32]]:
        for start in range(0, self.shape[1], block_frames):
            block = self._samples[:, start : start + block_frames]
            yield _limited(block, self._scale, self._clamp)


class _FileStem:
    """A stem spooled as interleaved float32 ``[frames, channels]``, read back in blocks."""

    def __init__(self, path: Path, channels: int, frames: int, scale: float, clamp: bool) -> None:
        self._path = path
        self._scale = np.float32(scale)
        self._clamp = clamp
        self.shape: tuple[int, int] = (channels, frames)

    def blocks(self, block_frames: int) -> Iterator[npt.NDArray[np.float32]]:
        channels = self.shape[0]
        with self._path.open("rb") as file:
            while True:
                data = np.fromfile(file, dtype=np.float32, count=block_frames * channels)
                if data.size == 0:
                    return
                block = data.reshape(-1, channels).T
                yield _limited(block, self._scale, self._clamp)


class StemSpool:
    """The wanted stems of one job, written block by block, read back as block sources."""

    def __init__(
        self,
        folder: Path,
        sources: Sequence[str],
        wanted: Sequence[str],
        *,
        channels: int,
        frames: int,
        memory_limit_bytes: int = DEFAULT_MEMORY_LIMIT_BYTES,
    ) -> None:
        # Each wanted stem as the sources it sums: one for a source, the others for no_<source>.
        self._index: dict[str, list[int]] = {}
        for name in wanted:
            left_out = complement_of(name)
            if left_out is None:
                self._index[name] = [sources.index(name)]
            else:
                skip = sources.index(left_out)
                self._index[name] = [i for i in range(len(sources)) if i != skip]
        self._channels = channels
        self._frames = frames
        self.in_memory = len(wanted) * channels * frames * 4 <= memory_limit_bytes
        self._arrays: dict[str, npt.NDArray[np.float32]] = {}
        self._files: dict[str, BinaryIO] = {}
        self._paths: dict[str, Path] = {}
        for name in wanted:
            if self.in_memory:
                self._arrays[name] = np.empty((channels, frames), dtype=np.float32)
            else:
                self._paths[name] = folder / f"{name}.f32"
                self._files[name] = self._paths[name].open("wb")
        self._peaks = dict.fromkeys(wanted, 0.0)
        self._written = 0

    def write(self, start: int, block: npt.NDArray[np.float32]) -> None:
        """Add ``block`` (``[sources, channels, n]``, all sources) at frame ``start``."""
        if start != self._written:
            raise ValueError(f"blocks must arrive in order: expected {self._written}, got {start}")
        n = block.shape[-1]
        for name, indices in self._index.items():
            stem = block[indices[0]] if len(indices) == 1 else block[indices].sum(axis=0)
            self._peaks[name] = max(self._peaks[name], float(np.abs(stem).max(initial=0.0)))
            if self.in_memory:
                self._arrays[name][:, start : start + n] = stem
            else:
                np.ascontiguousarray(stem.T).tofile(self._files[name])
        self._written += n

    def close(self) -> None:
        """Stop writing (idempotent; also on failure)."""
        for file in self._files.values():
            file.close()

    def check_complete(self) -> None:
        """Every frame of the track was written: the separator tiled it."""
        if self._written != self._frames:
            raise ValueError(f"spool got {self._written} of {self._frames} frames")

    def source(self, name: str, clip_mode: ClipMode = "rescale") -> BlockSource:
        """Stem ``name`` as a block source, kept from clipping as Demucs' writer would with
        ``--clip-mode clip_mode``."""
        scale = clip_scale(self._peaks[name]) if clip_mode == "rescale" else 1.0
        clamp = clip_mode == "clamp"
        if self.in_memory:
            return _ArrayStem(self._arrays[name], scale, clamp)
        return _FileStem(self._paths[name], self._channels, self._frames, scale, clamp)

    def release(self, name: str) -> None:
        """Free a stem once it is encoded (memory, or its spool file)."""
        self._arrays.pop(name, None)
        path = self._paths.pop(name, None)
        if path is not None:
            path.unlink(missing_ok=True)
