"""Loading a Demucs model, choosing its device, and what both separation paths share.

Shared by :mod:`~consumer.separation.reference` and :mod:`~consumer.separation.batched`:
the one normalisation (``demucs.api.Separator.separate_tensor``'s, by the mono reference's
mean and standard deviation) and the one mapping of a device's out-of-memory error onto
the error tree.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path
from typing import Literal, Protocol, cast

import torch
from demucs.apply import BagOfModels
from demucs.htdemucs import HTDemucs
from demucs.pretrained import get_model

from consumer.errors import DeviceOutOfMemory, ModelLoadError

__all__ = [
    "CpuRuntime",
    "DemucsModel",
    "Device",
    "Precision",
    "default_batch_size",
    "describe_device",
    "load_model",
    "normalisation",
    "out_of_memory",
    "resolve_device",
    "segment_lengths",
]

Device = Literal["auto", "cuda", "cpu"]
Precision = Literal["fp32", "bf16", "fp16"]
CpuRuntime = Literal["torch", "openvino"]

# demucs.api.Separator.separate_tensor adds this to the reference's standard deviation.
_STD_EPSILON = 1e-8


class DemucsModel(Protocol):
    """What this package reads of a Demucs model or bag of models (demucs is untyped)."""

    sources: list[str]
    samplerate: int
    audio_channels: int

    def to(self, device: torch.device) -> object: ...


class _SingleModel(DemucsModel, Protocol):
    """A model that is not a bag: it has the segment it was trained on, in seconds."""

    segment: float | Fraction


def describe_device(device: torch.device) -> str:
    """What ``usage.device`` says: ``cpu``, or ``cuda:`` and the GPU's name."""
    if device.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(device)}"
    return device.type


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


def load_model(name: str, repo: Path | None) -> DemucsModel:
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
    return cast(DemucsModel, loaded)


def segment_lengths(model: DemucsModel, segment: float | None) -> list[int]:
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


def default_batch_size(device: torch.device) -> int:
    """Segments per forward pass before anything is measured.

    On a CPU batching buys nothing (the cores are busy either way) and measured slower
    (bench/: batch 2 vs 1 on the full model); on CUDA ``warm_up`` measures and replaces it.
    """
    return 1 if device.type == "cpu" else 4


def normalisation(wav: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(mean, std)`` of the mono reference: ``separate_tensor``'s normalisation, applied
    as ``(wav - mean) / std`` before the model and undone after it."""
    ref = wav.mean(0)
    return ref.mean(), ref.std() + _STD_EPSILON


def out_of_memory(device: torch.device, length: int, exc: BaseException) -> DeviceOutOfMemory:
    """The error a job ends with when ``device`` ran out of memory (its cache emptied, so
    the next job starts clean)."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return DeviceOutOfMemory(f"{device} ran out of memory separating {length} samples: {exc}")
