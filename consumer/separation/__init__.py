"""Separating a mix into stems.

- :mod:`.base` — the ``Separator`` protocol the handler talks to;
- :mod:`.loading` — Demucs' loader, the device, and what both paths share (the one
  normalisation, the one out-of-memory error);
- :mod:`.reference` — Demucs' own ``apply_model`` path (bags, shifts; the parity reference);
- :mod:`.batched` — the batched, streamed rewrite of it for one HTDemucs;
- :mod:`.openvino` — the model's network compiled by OpenVINO for a CPU (optional);
- :mod:`.demucs` — ``DemucsSeparator``, which picks the path.
"""

from consumer.separation.base import (
    Audio,
    CancelledFn,
    ProgressFn,
    SeparationCancelled,
    Separator,
    Stems,
)
from consumer.separation.demucs import DemucsSeparator
from consumer.separation.loading import CpuRuntime, Device, Precision, resolve_device

__all__ = [
    "Audio",
    "CancelledFn",
    "CpuRuntime",
    "DemucsSeparator",
    "Device",
    "Precision",
    "ProgressFn",
    "SeparationCancelled",
    "Separator",
    "Stems",
    "resolve_device",
]
