"""Local Demucs model folders: writing them, and naming the models they hold.

Production loads ``htdemucs_6s`` from the hub. This build environment has no network, so
tests and benchmarks write a model of the same class (``demucs.htdemucs.HTDemucs``) with the
same six sources and seeded random weights into a folder, in the package format Demucs'
own ``LocalRepo`` reads: ``{name}.th`` holding ``{"klass", "args", "kwargs", "state"}``.
``demucs.pretrained.get_model(name, repo=folder)`` then loads it through exactly the code
that loads the real weights, so everything after the load is the production path.

Two sizes:

- ``"full"``: the real ``htdemucs_6s`` architecture (27,414,996 parameters). Random weights
  cost exactly what the real ones do, so this is the one to time. The hyper-parameters are
  the HTDemucs defaults plus ``dconv_mode=3`` and ``segment=39/5``, as trained in Demucs'
  ``grids/mmi.py``. The check that these match the real model: saved in half precision
  like the hub file, the package is 54,995,811 bytes against the hub's 54,996,327 for
  ``5c90dfd2-34c22ccb.th`` (the rest is training metadata); ``dconv_mode=1`` would give
  53.9 MB.
- ``"tiny"``: same class, sources, ``depth=4``, STFT and 7.8 s segment, very few channels.
  ``depth`` stays 4 because each level divides the sequence the transformer attends over;
  with fewer levels that sequence, and the attention matrix with it, explodes. One forward
  pass (one 7.8 s chunk) is then dominated by the fixed cost of the 4096-point STFT/iSTFT
  of six stereo sources.
"""

from __future__ import annotations

import os
import re
from fractions import Fraction
from pathlib import Path
from typing import Any, Final, Literal, cast

import torch
from demucs.htdemucs import HTDemucs
from demucs.states import get_state

from stem_contracts import HTDEMUCS_6S_STEMS

__all__ = [
    "HTDEMUCS_6S_SOURCES",
    "ModelSize",
    "build_model",
    "model_kwargs",
    "write_local_model",
]

ModelSize = Literal["tiny", "full"]

HTDEMUCS_6S_SOURCES: Final = HTDEMUCS_6S_STEMS  # the wire contract owns the names and order
"""The real ``htdemucs_6s`` ``sources`` order: the order of the model's output tensor."""

_COMMON_KWARGS: Final[dict[str, Any]] = {
    "audio_channels": 2,
    "samplerate": 44100,
    # A Fraction, as in the real package: int(segment * samplerate) is then exact (343980).
    "segment": Fraction(39, 5),
    "nfft": 4096,
    "cac": True,
    "depth": 4,
    "growth": 2,
    "dconv_mode": 3,
    "bottom_channels": 0,
}

_SIZE_KWARGS: Final[dict[ModelSize, dict[str, Any]]] = {
    # 48 * 2**3 = 384-wide cross-transformer, 5 layers, 8 heads.
    "full": {"channels": 48, "t_layers": 5, "t_heads": 8, "t_hidden_scale": 4.0},
    # 4 * 2**3 = 32-wide transformer, one self- and one cross-attention layer. dconv_comp=2
    # keeps the DConv branch at least 2 channels wide (48 / 8 in the full model).
    "tiny": {
        "channels": 4,
        "dconv_comp": 2,
        "t_layers": 2,
        "t_heads": 2,
        "t_hidden_scale": 1.0,
    },
}

# LocalRepo reads "sig-checksum.th" as a checksummed file, so a "-" in a name would be
# taken for a checksum separator.
_NAME_PATTERN: Final = re.compile(r"[A-Za-z0-9_]+")
_METADATA_KEY: Final = "stem_fleet"


def model_kwargs(size: ModelSize) -> dict[str, Any]:
    """The ``HTDemucs`` keyword arguments of a model size (a fresh dict, sources included)."""
    return {"sources": list(HTDEMUCS_6S_SOURCES), **_COMMON_KWARGS, **_SIZE_KWARGS[size]}


def build_model(*, size: ModelSize = "tiny", seed: int = 0) -> torch.nn.Module:
    """An ``HTDemucs`` with the six ``htdemucs_6s`` sources and seeded random weights.

    The global torch RNG is forked, so building a model does not disturb callers' seeds.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = cast(torch.nn.Module, HTDemucs(**model_kwargs(size)))
    return model.eval()


def write_local_model(folder: Path, name: str, *, size: ModelSize = "tiny", seed: int = 0) -> Path:
    """Write ``{folder}/{name}.th`` for ``get_model(name, repo=folder)``; return ``folder``.

    Idempotent: an existing file written for the same size and seed is kept (the weights
    are a function of both), anything else at that path is replaced. The file is written
    under a temporary name and renamed, so a reader never sees half a model.
    """
    if not _NAME_PATTERN.fullmatch(name):
        raise ValueError(
            f"model name {name!r} must match [A-Za-z0-9_]+ (Demucs reads '-' "
            "in a model file name as a checksum separator)"
        )
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.th"
    wanted = {"size": size, "seed": seed}
    if path.is_file() and _written_for(path) == wanted:
        return folder

    model = build_model(size=size, seed=seed)
    args, kwargs = cast(tuple[tuple[Any, ...], dict[str, Any]], model._init_args_kwargs)
    package = {
        "klass": HTDemucs,
        "args": args,
        "kwargs": kwargs,
        # Demucs' own state getter; half precision, as serialize_model and the hub files do.
        "state": get_state(model, None, half=True),
        "training_args": {_METADATA_KEY: wanted},
    }
    # Not "*.th": LocalRepo must not pick up a file still being written.
    tmp = folder / f".{name}.{os.getpid()}.partial"
    try:
        torch.save(package, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return folder


def _written_for(path: Path) -> object:
    """The size and seed a file was written for, or None for any other file."""
    try:
        # mmap: the tensors are not read, only the pickled metadata.
        package = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
    except Exception:
        return None
    if not isinstance(package, dict):
        return None
    training_args = package.get("training_args")
    if not isinstance(training_args, dict):
        return None
    return training_args.get(_METADATA_KEY)
