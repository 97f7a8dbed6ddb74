"""Separating a mix into stems: the ``Separator`` protocol and its Demucs implementation.

``DemucsSeparator`` loads a model with Demucs' own loader (``demucs.pretrained.get_model``)
and separates with Demucs' own apply path (``demucs.apply.apply_model``), reproducing
``demucs.api.Separator.separate_tensor`` step for step, so its stems equal the reference
API's within float tolerance (tested). Facts about ``apply_model`` (Demucs 4.1.0) that
shape this module:

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

import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from fractions import Fraction
from pathlib import Path
from typing import Any, Literal, Protocol, cast

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F
from demucs.apply import BagOfModels, apply_model
from demucs.htdemucs import HTDemucs
from demucs.pretrained import get_model
from demucs.utils import center_trim

from consumer.errors import DeviceOutOfMemory, ModelLoadError
from stem_contracts import model_version as _model_version

__all__ = [
    "DemucsSeparator",
    "Device",
    "SeparationCancelled",
    "Separator",
    "resolve_device",
]

logger = logging.getLogger(__name__)

Device = Literal["auto", "cuda", "cpu"]
Precision = Literal["fp32", "bf16", "fp16"]
_MAX_BATCH = 32
Audio = npt.NDArray[np.float32]
Stems = npt.NDArray[np.float32]
"""``[sources, channels, frames]``, sources in the model's order."""
ProgressFn = Callable[[float], None]
CancelledFn = Callable[[], bool]

# demucs.api.Separator.separate_tensor adds this to the reference's standard deviation.
_STD_EPSILON = 1e-8


class _DemucsModel(Protocol):
    """What this module reads of a Demucs model or bag of models (demucs is untyped)."""

    sources: list[str]
    samplerate: int
    audio_channels: int

    def to(self, device: torch.device) -> object: ...


class _SingleModel(_DemucsModel, Protocol):
    """A model that is not a bag: it has the segment it was trained on, in seconds."""

    segment: float | Fraction


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


def resolve_device(pref: str) -> torch.device:
    """``auto`` → ``cuda`` when a CUDA device is available, else ``cpu``.

    Asking for ``cuda`` on a machine without one is a broken worker, not a bad job.
    """
    if pref == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if pref == "cuda":
        if not torch.cuda.is_available():
            raise ModelLoadError("device 'cuda' was requested but no CUDA device is available")
        return torch.device("cuda")
    if pref == "cpu":
        return torch.device("cpu")
    raise ValueError(f"unknown device {pref!r}; expected 'auto', 'cuda' or 'cpu'")


class DemucsSeparator:
    """A Demucs model (single model or bag) behind the ``Separator`` protocol.

    ``separate`` calls are serialised by a lock: one model, one device, one chunk at a time.
    ``separations`` counts calls, so tests can prove that a stem was not recomputed.
    """

    def __init__(
        self,
        model: _DemucsModel,
        *,
        name: str,
        device: torch.device,
        overlap: float = 0.25,
        shifts: int = 0,
        segment: float | None = None,
        load_seconds: float = 0.0,
        batch_size: int = 0,
        precision: Precision = "fp32",
    ) -> None:
        if not 0.0 <= overlap < 1.0:
            raise ValueError(f"overlap must be in [0, 1), got {overlap}")
        if shifts < 0:
            raise ValueError(f"shifts must be >= 0, got {shifts}")
        self._model = model
        self._name = name
        self._sources = tuple(model.sources)
        self._sample_rate = int(model.samplerate)
        self._audio_channels = int(model.audio_channels)
        self._segments = _segment_lengths(model, segment)
        self.device = device
        self.overlap = overlap
        self.shifts = shifts
        self.segment = segment
        self.load_seconds = load_seconds
        self.separations = 0
        self._lock = threading.Lock()
        if precision != "fp32" and device.type != "cuda":
            raise ValueError(f"precision {precision} needs a CUDA device (this one is {device})")
        self.precision: Precision = precision
        self.batch_size = batch_size if batch_size > 0 else _default_batch_size(device)

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
        warm_up: bool | None = None,
    ) -> DemucsSeparator:
        """Load ``name`` with ``demucs.pretrained.get_model`` and place it on ``device``.

        ``batch_size`` segments go through the model per forward pass (0 = chosen for the
        device: measured against free memory on CUDA). ``warm_up`` (default: on CUDA) runs
        one batch at load so the first job does not pay for kernel selection.

        ``repo=None`` is the hub (and its cache); a folder is a local Demucs model folder.
        Any failure is a ``ModelLoadError``: without its model the worker cannot run.
        """
        started = time.perf_counter()
        target = resolve_device(device)
        model = _load_model(name, repo)
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
                load_seconds=time.perf_counter() - started,
                batch_size=batch_size,
                precision=precision,
            )
            if warm_up if warm_up is not None else target.type == "cuda":
                separator.warm_up(auto_batch=batch_size <= 0)
            separator.load_seconds = time.perf_counter() - started
        except ValueError as exc:
            raise ModelLoadError(f"model {name}: {exc}") from exc
        logger.info(
            "model loaded",
            extra={
                "model": name,
                "device": str(target),
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
        if self.batched:
            blocks = [
                block
                for _, block in self.separate_blocks(mix, progress=progress, cancelled=cancelled)
            ]
            stems = np.concatenate(blocks, axis=-1)
            return {source: stems[index] for index, source in enumerate(self._sources)}
        return self._separate_with_apply_model(mix, progress=progress, cancelled=cancelled)

    def _separate_with_apply_model(
        self,
        mix: Audio,
        *,
        progress: ProgressFn | None = None,
        cancelled: CancelledFn | None = None,
    ) -> dict[str, Audio]:
        """Demucs' own ``apply_model`` path: one chunk per forward pass (bags, shifts)."""
        wav = self._as_tensor(mix)
        length = wav.shape[-1]
        tracker = _Progress(self._chunk_count(length), progress, cancelled)
        with self._lock:
            self.separations += 1
            try:
                with torch.inference_mode():
                    # Exactly separate_tensor's normalisation: by the mono reference's
                    # mean and standard deviation, undone after the model.
                    ref = wav.mean(0)
                    mean = ref.mean()
                    std = ref.std() + _STD_EPSILON
                    out = cast(
                        torch.Tensor,
                        apply_model(
                            self._model,
                            ((wav - mean) / std)[None],
                            segment=self.segment,
                            shifts=self.shifts,
                            split=True,
                            overlap=self.overlap,
                            device=self.device,
                            callback=tracker.on_chunk,
                        ),
                    )
                    out = out * std + mean
            except torch.OutOfMemoryError as exc:
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
                raise DeviceOutOfMemory(
                    f"{self.device} ran out of memory separating {length} samples: {exc}"
                ) from exc
        tracker.finish()
        stems = out[0].numpy()
        return {source: stems[index] for index, source in enumerate(self._sources)}

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

    def _chunk_count(self, length: int) -> int:
        """How many forward passes ``apply_model`` runs (an upper bound when shifting).

        A shifted pass covers ``length`` plus up to half a second, so its chunk count is
        bounded by that of ``length + samplerate // 2``.
        """
        passes = max(self.shifts, 1)
        covered = length + (int(0.5 * self._sample_rate) if self.shifts else 0)
        total = 0
        for segment_length in self._segments:
            stride = int((1 - self.overlap) * segment_length)
            total += passes * len(range(0, covered, stride))
        return total

    # --- batched, streamed separation ----------------------------------------------------

    @property
    def batched(self) -> bool:
        """Whether segments are batched; otherwise ``apply_model`` runs one per pass.

        Batching covers the fleet's configuration (one HTDemucs, no random shifts);
        a bag of models or ``shifts > 0`` take Demucs' own ``apply_model`` path unchanged.
        """
        return isinstance(self._model, HTDemucs) and self.shifts == 0

    def separate_blocks(
        self,
        mix: Audio,
        *,
        progress: ProgressFn | None = None,
        cancelled: CancelledFn | None = None,
    ) -> Iterator[tuple[int, Stems]]:
        """See ``Separator.separate_blocks``.

        The batched path does what ``apply_model(split=True)`` does — the same chunk
        offsets, the same context padding of each chunk (``TensorChunk.padded``), the same
        triangular overlap-add weights, accumulated in the same order — but runs
        ``batch_size`` chunks per forward pass and hands back each stretch of the output as
        soon as no later chunk can touch it. Memory is bounded by the batch, not the track.
        """
        if not self.batched:
            stems = self.separate(mix, progress=progress, cancelled=cancelled)
            yield 0, np.stack([stems[source] for source in self._sources])
            return
        wav = self._as_tensor(mix)
        with self._lock:
            self.separations += 1
            yield from self._batched_blocks(wav, progress, cancelled)

    def _batched_blocks(
        self,
        wav: torch.Tensor,
        progress: ProgressFn | None,
        cancelled: CancelledFn | None,
    ) -> Iterator[tuple[int, Stems]]:
        model = cast(HTDemucs, self._model)
        [segment_length] = self._segments
        length = wav.shape[-1]
        stride = int((1 - self.overlap) * segment_length)
        offsets = list(range(0, length, stride))
        # separate_tensor's normalisation by the mono reference, undone on the way out.
        # Applied chunk by chunk (in _forward): a normalised copy of a long track would
        # double its memory.
        ref = wav.mean(0)
        mean = ref.mean()
        std = ref.std() + _STD_EPSILON
        del ref
        # apply_model's transition weights (transition_power 1): a triangle, max 1.
        weight = torch.cat(
            [
                torch.arange(1, segment_length // 2 + 1),
                torch.arange(segment_length - segment_length // 2, 0, -1),
            ]
        ).float()
        weight = weight / weight.max()
        sources, channels = len(self._sources), wav.shape[0]
        window = segment_length + self.batch_size * stride
        out = torch.zeros(sources, channels, window)
        sum_weight = torch.zeros(window)
        flushed = 0  # frames before this are final and handed out
        done = 0
        batch = self.batch_size
        index = 0
        while index < len(offsets):
            if cancelled is not None and cancelled():
                raise SeparationCancelled("separation cancelled")
            group = offsets[index : index + batch]
            try:
                results = self._forward(model, wav, group, segment_length, mean, std)
            except torch.OutOfMemoryError as exc:
                if batch == 1:
                    raise self._oom(length, exc) from exc
                # Back off and remember: the next job starts at the size that fitted.
                batch = self.batch_size = max(1, batch // 2)
                torch.cuda.empty_cache()
                logger.warning("out of memory: segment batch reduced", extra={"batch": batch})
                continue
            for offset, chunk_out in zip(group, results, strict=True):
                chunk_length = chunk_out.shape[-1]
                at = offset - flushed
                out[..., at : at + chunk_length] += weight[:chunk_length] * chunk_out
                sum_weight[at : at + chunk_length] += weight[:chunk_length]
            index += len(group)
            done += len(group)
            if progress is not None:
                progress(done / len(offsets))
            final = offsets[index] if index < len(offsets) else length
            n = final - flushed
            block = out[..., :n] / sum_weight[:n]
            yield flushed, (block * std + mean).numpy()
            # Slide the window: what is not final yet moves to the front.
            out = torch.cat([out[..., n:], torch.zeros(sources, channels, n)], dim=-1)
            sum_weight = torch.cat([sum_weight[n:], torch.zeros(n)])
            flushed = final

    def _forward(
        self,
        model: HTDemucs,
        wav: torch.Tensor,
        offsets: list[int],
        segment_length: int,
        mean: torch.Tensor | float = 0.0,
        std: torch.Tensor | float = 1.0,
    ) -> list[torch.Tensor]:
        """One forward pass over the chunks at ``offsets``; each result trimmed back to its
        chunk, on the host (``[sources, channels, chunk_length]``).

        Each chunk is what ``TensorChunk(normalised, offset, L).padded(L)`` gives: centred
        in ``L`` samples of context, zero-padded past the ends of the track — normalised
        here, chunk by chunk, before the padding (so the padding stays zero).
        """
        length = wav.shape[-1]
        inputs, lengths = [], []
        for offset in offsets:
            chunk_length = min(segment_length, length - offset)
            start = offset - (segment_length - chunk_length) // 2
            end = start + segment_length
            inside = (wav[..., max(0, start) : min(length, end)] - mean) / std
            inputs.append(F.pad(inside, (max(0, -start), max(0, end - length))))
            lengths.append(chunk_length)
        batch = torch.stack(inputs)
        del inputs
        cuda = self.device.type == "cuda"
        if cuda:
            batch = batch.pin_memory().to(self.device, non_blocking=True)
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.precision)
        with (
            torch.inference_mode(),
            torch.autocast("cuda", dtype=dtype, enabled=cuda and dtype is not None),
        ):
            result = model(batch)
        host = result.float().to("cpu")
        return [center_trim(host[i], n) for i, n in enumerate(lengths)]

    def _oom(self, length: int, exc: BaseException) -> DeviceOutOfMemory:
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        return DeviceOutOfMemory(
            f"{self.device} ran out of memory separating {length} samples: {exc}"
        )

    def warm_up(self, *, auto_batch: bool = False) -> None:
        """Run the model once so the first job does not pay for kernel selection; with
        ``auto_batch`` on CUDA, size the segment batch from the memory one chunk takes."""
        if not self.batched:
            return
        [segment_length] = self._segments
        silence = torch.zeros(self._audio_channels, segment_length)
        model = cast(HTDemucs, self._model)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            base = torch.cuda.memory_allocated(self.device)
        self._forward(model, silence, [0], segment_length)
        if self.device.type == "cuda" and auto_batch:
            per_chunk = max(torch.cuda.max_memory_allocated(self.device) - base, 1)
            free, _ = torch.cuda.mem_get_info(self.device)
            # Half the free memory, so a second process or fragmentation still fits.
            self.batch_size = int(max(1, min(_MAX_BATCH, (free // 2) // per_chunk)))
            logger.info(
                "segment batch sized to the device",
                extra={"batch": self.batch_size, "perChunkBytes": per_chunk, "freeBytes": free},
            )
            self._forward(model, silence, [0] * self.batch_size, segment_length)


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


def _default_batch_size(device: torch.device) -> int:
    # On a CPU batching buys nothing (the cores are busy either way) and measured slower
    # (bench/: batch 2 vs 1 on the full model); on CUDA warm_up() measures and replaces this.
    return 1 if device.type == "cpu" else 4


def _load_model(name: str, repo: Path | None) -> _DemucsModel:
    """``get_model`` with its failures (including its ``sys.exit``) as ``ModelLoadError``."""
    where = "the hub or its cache" if repo is None else str(repo)
    if repo is not None and not repo.is_dir():
        raise ModelLoadError(f"model {name}: model folder {repo} does not exist")
    try:
        loaded: object = get_model(name, repo=repo)
    except SystemExit as exc:
        # demucs.utils.fatal prints and calls sys.exit from library code.
        raise ModelLoadError(f"model {name} could not be loaded from {where}") from exc
    except Exception as exc:
        hint = "" if repo is None else "; there is no network fallback for a local folder"
        raise ModelLoadError(
            f"model {name} not found or unreadable in {where}{hint}: {exc}"
        ) from exc
    if not isinstance(loaded, torch.nn.Module) or not hasattr(loaded, "sources"):
        raise ModelLoadError(f"model {name} from {where} is not a Demucs model: {type(loaded)}")
    return cast(_DemucsModel, loaded)


def _segment_lengths(model: _DemucsModel, segment: float | None) -> list[int]:
    """The chunk length, in samples, that ``apply_model`` uses for each model in the bag.

    Also checks ``segment``: longer than an HTDemucs model was trained on, its transformer
    would see a sequence it was never trained for (``demucs.separate`` refuses it too).
    """
    members = cast(
        list[_SingleModel],
        list(model.models) if isinstance(model, BagOfModels) else [model],
    )
    lengths = []
    for member in members:
        trained = member.segment
        if segment is not None:
            if segment <= 0:
                raise ValueError(f"segment must be positive, got {segment}")
            if isinstance(member, HTDemucs) and segment > float(trained):
                raise ValueError(
                    f"segment {segment} s is longer than the {float(trained)} s "
                    "the model was trained on"
                )
        lengths.append(int(member.samplerate * (segment if segment is not None else trained)))
    return lengths
