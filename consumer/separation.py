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
from collections.abc import Callable, Mapping
from fractions import Fraction
from pathlib import Path
from typing import Any, Literal, Protocol, cast

import numpy as np
import numpy.typing as npt
import torch
from demucs.apply import BagOfModels, apply_model
from demucs.htdemucs import HTDemucs
from demucs.pretrained import get_model

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
Audio = npt.NDArray[np.float32]
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
    ) -> DemucsSeparator:
        """Load ``name`` with ``demucs.pretrained.get_model`` and place it on ``device``.

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
            )
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
