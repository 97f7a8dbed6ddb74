"""What the job handler needs from a separation model: the ``Separator`` protocol."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Protocol

import numpy as np
import numpy.typing as npt

__all__ = ["Audio", "CancelledFn", "ProgressFn", "SeparationCancelled", "Separator", "Stems"]

Audio = npt.NDArray[np.float32]
"""``[channels, frames]`` float32 audio."""
Stems = npt.NDArray[np.float32]
"""``[sources, channels, frames]``, sources in the model's order."""
ProgressFn = Callable[[float], None]
CancelledFn = Callable[[], bool]


class SeparationCancelled(Exception):
    """``cancelled()`` returned true during a separation; the handler decides what it means."""


class Separator(Protocol):
    """What the job handler needs from a separation model."""

    @property
    def sources(self) -> tuple[str, ...]:
        """The stems ``separate`` returns, in the model's order."""
        ...

    @property
    def sample_rate(self) -> int: ...

    @property
    def audio_channels(self) -> int: ...

    @property
    def model_version(self) -> str:
        """What the result event names as the model, e.g. ``demucs-htdemucs-6s``."""
        ...

    @property
    def device_name(self) -> str:
        """What ``usage.device`` says, e.g. ``cpu`` or ``cuda:NVIDIA H100 80GB HBM3``."""
        ...

    def separate(
        self,
        mix: Audio,
        *,
        progress: ProgressFn | None = None,
        cancelled: CancelledFn | None = None,
    ) -> dict[str, Audio]:
        """Separate float32 ``[channels, samples]`` audio at ``sample_rate``.

        Returns ``{source: float32 [channels, samples]}`` for every source. ``progress``
        receives a fraction in 0..1 after each segment, ending at 1.0; when ``cancelled()``
        turns true the separation stops at the next segment with ``SeparationCancelled``.
        """
        ...

    def separate_blocks(
        self,
        mix: Audio,
        *,
        progress: ProgressFn | None = None,
        cancelled: CancelledFn | None = None,
    ) -> Iterator[tuple[int, Stems]]:
        """Like ``separate``, streamed: ``(start_frame, float32 [sources, channels, n])``
        blocks in time order that tile the track, so a long track never has all its stems
        in memory at once."""
        ...
