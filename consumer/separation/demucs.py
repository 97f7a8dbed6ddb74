"""``DemucsSeparator``: a Demucs model behind the ``Separator`` protocol.

It loads with Demucs' own loader (``demucs.pretrained.get_model``, :mod:`.loading`) and
separates either through Demucs' own ``apply_model`` (:mod:`.reference`) or, for the
fleet's configuration (one HTDemucs, no random shifts), through the batched rewrite of it
(:mod:`.batched`). Both reproduce ``demucs.api.Separator.separate_tensor`` step for step,
so the stems equal the reference API's within float tolerance (tested) at the default
precision (fp32) and CPU runtime (torch). On a CPU, bf16 autocast and OpenVINO
(:mod:`.openvino`) are opt-in: faster where the CPU supports them, close to fp32 but not
equal (``python -m bench cpu-path``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import cast

import numpy as np
import torch
from demucs.htdemucs import HTDemucs

from consumer.errors import ModelLoadError
from consumer.separation.base import Audio, CancelledFn, ProgressFn, Stems
from consumer.separation.batched import BatchedHTDemucs
from consumer.separation.loading import (
    CpuRuntime,
    DemucsModel,
    Device,
    Precision,
    default_batch_size,
    describe_device,
    load_model,
    resolve_device,
    segment_lengths,
)
from consumer.separation.openvino import NetworkFn, compile_network, require_openvino
from consumer.separation.reference import separate_with_apply_model
from stem_contracts import model_version as _model_version

__all__ = ["DemucsSeparator"]

_log = logging.getLogger(__name__)


class DemucsSeparator:
    """A Demucs model (single model or bag) behind the ``Separator`` protocol.

    Separations are serialised by a lock: one model, one device, one chunk at a time.
    ``separations`` counts them, so tests can prove that a stem was not recomputed.
    """

    def __init__(
        self,
        model: DemucsModel,
        *,
        name: str,
        device: torch.device,
        overlap: float = 0.25,
        shifts: int = 0,
        segment: float | None = None,
        load_seconds: float = 0.0,
        batch_size: int = 0,
        precision: Precision = "fp32",
        cpu_runtime: CpuRuntime = "torch",
    ) -> None:
        if not 0.0 <= overlap < 1.0:
            raise ValueError(f"overlap must be in [0, 1), got {overlap}")
        if shifts < 0:
            raise ValueError(f"shifts must be >= 0, got {shifts}")
        # bf16 runs on CPUs too (fast with AVX512-BF16 or AMX); fp16 autocast on a CPU is
        # slow and not what fp16 is for.
        if precision == "fp16" and device.type != "cuda":
            raise ValueError(f"precision {precision} needs a CUDA device (this one is {device})")
        on_openvino = cpu_runtime == "openvino" and device.type == "cpu"
        if precision == "bf16" and device.type == "cpu" and not on_openvino and not _cpu_has_bf16():
            _log.warning(
                "precision bf16 on a CPU without AVX512-BF16 or AMX: emulated, likely slower "
                "than fp32 (python -m bench cpu-path measures it)"
            )
        self._model = model
        self._name = name
        self._sources = tuple(model.sources)
        self._sample_rate = int(model.samplerate)
        self._audio_channels = int(model.audio_channels)
        self._segments = segment_lengths(model, segment)
        self.device = device
        self.overlap = overlap
        self.shifts = shifts
        self.segment = segment
        self.load_seconds = load_seconds
        self.precision: Precision = precision
        self.separations = 0
        self._lock = threading.Lock()
        # STEM_CPU_RUNTIME=openvino: the network compiled once, here (ignored on CUDA).
        network: NetworkFn | None = None
        self.cpu_runtime: CpuRuntime = "torch"
        if on_openvino:
            if not isinstance(model, HTDemucs) or shifts:
                raise ValueError("cpu_runtime openvino runs one HTDemucs with shifts=0 only")
            network = compile_network(model, precision=precision, threads=torch.get_num_threads())
            self.cpu_runtime = "openvino"
        # Batching covers the fleet's configuration (one HTDemucs, no random shifts); a bag
        # of models or shifts > 0 take Demucs' own apply_model path unchanged.
        self._batched = (
            BatchedHTDemucs(
                model,
                device=device,
                segment_length=self._segments[0],
                overlap=overlap,
                batch_size=batch_size if batch_size > 0 else default_batch_size(device),
                precision=precision,
                network=network,
            )
            if isinstance(model, HTDemucs) and shifts == 0
            else None
        )

    @classmethod
    def load(
        cls,
        name: str,
        *,
        repo: Path | None,
        device: Device = "auto",
        overlap: float = 0.25,
        shifts: int = 0,
        segment: float | None = None,
        batch_size: int = 0,
        precision: Precision = "fp32",
        cpu_runtime: CpuRuntime = "torch",
        warm_up: bool | None = None,
    ) -> DemucsSeparator:
        """Load ``name`` with ``demucs.pretrained.get_model`` and place it on ``device``.

        ``batch_size`` segments go through the model per forward pass (0 = chosen for the
        device: measured against free memory on CUDA). ``warm_up`` (default: on CUDA) runs
        one batch at load so the first job does not pay for kernel selection.

        ``cpu_runtime`` openvino compiles the model's network with OpenVINO on a CPU (bf16
        with ``precision`` bf16); it is ignored on CUDA.

        ``repo=None`` is the hub (and its cache); a folder is a local Demucs model folder.
        Any failure is a ``ModelLoadError``: without its model the worker cannot run.
        """
        started = time.perf_counter()
        target = resolve_device(device)
        if cpu_runtime == "openvino" and target.type == "cpu":
            require_openvino()  # before the model loads: a missing package fails fast
        model = load_model(name, repo)
        try:
            model.to(target)
        except torch.OutOfMemoryError as exc:
            raise ModelLoadError(f"model {name} does not fit on {target}: {exc}") from exc
        try:
            separator = cls(
                model,
                name=name,
                device=target,
                overlap=overlap,
                shifts=shifts,
                segment=segment,
                batch_size=batch_size,
                precision=precision,
                cpu_runtime=cpu_runtime,
            )
            if warm_up if warm_up is not None else target.type == "cuda":
                separator.warm_up(auto_batch=batch_size <= 0)
            separator.load_seconds = time.perf_counter() - started
        except ValueError as exc:
            raise ModelLoadError(f"model {name}: {exc}") from exc
        _log.info(
            "model loaded",
            extra={
                "model": name,
                "device": str(target),
                "precision": precision,
                "cpuRuntime": separator.cpu_runtime,
                "sources": separator.sources,
                "loadSeconds": round(separator.load_seconds, 3),
            },
        )
        return separator

    @property
    def model(self) -> torch.nn.Module:
        """The loaded Demucs model (or bag), e.g. to hook or time it."""
        return cast(torch.nn.Module, self._model)

    @property
    def sources(self) -> tuple[str, ...]:
        return self._sources

    @property
    def sample_rate(self) -> int:
        return self._sample_rate

    @property
    def audio_channels(self) -> int:
        return self._audio_channels

    @property
    def model_version(self) -> str:
        return _model_version(self._name)

    @property
    def device_name(self) -> str:
        return describe_device(self.device)

    @property
    def batched(self) -> bool:
        """Whether segments are batched; otherwise ``apply_model`` runs one per pass."""
        return self._batched is not None

    @property
    def batch_size(self) -> int:
        """Segments per forward pass (1 on Demucs' own path)."""
        return self._batched.batch_size if self._batched is not None else 1

    def separate(
        self,
        mix: Audio,
        *,
        progress: ProgressFn | None = None,
        cancelled: CancelledFn | None = None,
    ) -> dict[str, Audio]:
        """See ``Separator.separate``. Same result as ``demucs.api.Separator.separate_tensor``.

        Raises ``SeparationCancelled``, ``DeviceOutOfMemory`` (the GPU ran out of memory;
        its cache is emptied first), or ``ValueError`` for audio of the wrong shape.
        """
        blocks = [b for _, b in self.separate_blocks(mix, progress=progress, cancelled=cancelled)]
        stems = blocks[0] if len(blocks) == 1 else np.concatenate(blocks, axis=-1)
        return {source: stems[index] for index, source in enumerate(self._sources)}

    def separate_blocks(
        self,
        mix: Audio,
        *,
        progress: ProgressFn | None = None,
        cancelled: CancelledFn | None = None,
    ) -> Iterator[tuple[int, Stems]]:
        """See ``Separator.separate_blocks``: streamed on the batched path, one block of
        the whole track on Demucs' own."""
        wav = self._as_tensor(mix)
        with self._lock:
            self.separations += 1
            if self._batched is not None:
                yield from self._batched.blocks(wav, progress, cancelled)
                return
            stems = separate_with_apply_model(
                self._model,
                wav,
                device=self.device,
                segment=self.segment,
                segments=self._segments,
                overlap=self.overlap,
                shifts=self.shifts,
                progress=progress,
                cancelled=cancelled,
            )
        yield 0, stems.numpy()

    def warm_up(self, *, auto_batch: bool = False) -> None:
        """Run the model once so the first job does not pay for kernel selection; with
        ``auto_batch`` on CUDA, size the segment batch from the memory one chunk takes."""
        if self._batched is not None:
            self._batched.warm_up(auto_batch=auto_batch)

    def _as_tensor(self, mix: Audio) -> torch.Tensor:
        array = np.asarray(mix, dtype=np.float32)
        if array.ndim != 2 or array.shape[0] != self._audio_channels or array.shape[1] < 2:
            raise ValueError(
                f"mix must be float32 [{self._audio_channels}, samples >= 2], "
                f"got shape {array.shape}"
            )
        if not (array.flags.writeable and array.flags.c_contiguous):
            # torch.from_numpy warns on read-only arrays and refuses negative strides.
            array = array.copy()
        return torch.from_numpy(array)


def _cpu_has_bf16() -> bool:
    """Whether this CPU has bf16 instructions (AVX512-BF16 or AMX) for bf16 autocast."""
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # torch.cpu, private
    return any(bool(getattr(torch.cpu, name, lambda: True)()) for name in probes)
