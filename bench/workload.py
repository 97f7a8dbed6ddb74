"""What the benchmark feeds the pipelines: a model folder and a deterministic test track.

Both are cached under ``--cache-dir`` (default ``~/.cache/stem-fleet/bench``): writing the
full-size model takes a few seconds and synthesising ten minutes of audio about half a
minute, and neither changes between runs.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Final

import numpy as np
import soundfile as sf

from devkit.models import ModelSize, write_local_model
from devkit.synth import multi_instrument_mix

__all__ = ["DEFAULT_CACHE_DIR", "MODEL_NAME", "SAMPLE_RATE", "model_folder", "synth_track"]

MODEL_NAME: Final = "htdemucs_6s"
"""The name both pipelines load (``get_model(MODEL_NAME, repo=folder)``) and jobs ask for."""

SAMPLE_RATE: Final = 44_100
DEFAULT_CACHE_DIR: Final = Path.home() / ".cache" / "stem-fleet" / "bench"

# multi_instrument_mix's bars repeat every few seconds; a track is built from one
# synthesised block, tiled, so ten minutes cost no more to make than this much.
_BLOCK_SECONDS: Final = 60.0


def model_folder(size: ModelSize, cache_dir: Path) -> Path:
    """A local Demucs model folder holding ``MODEL_NAME`` at ``size`` (written once)."""
    return write_local_model(cache_dir / "models" / size, MODEL_NAME, size=size)


def synth_track(seconds: float, cache_dir: Path, *, seed: int = 0) -> Path:
    """A stereo 44.1 kHz 16-bit WAV of ``seconds``, the same bytes for the same arguments.

    The first minute is :func:`devkit.synth.multi_instrument_mix`; a longer track repeats
    it (the model's cost does not depend on the content, and the repetition keeps a
    ten-minute track quick to make).
    """
    if seconds <= 0:
        raise ValueError(f"seconds must be positive, got {seconds}")
    frames = round(seconds * SAMPLE_RATE)
    path = cache_dir / "audio" / f"mix-{frames}f-seed{seed}.wav"
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    block = multi_instrument_mix(min(seconds, _BLOCK_SECONDS), SAMPLE_RATE, seed=seed)
    repeats = -(-frames // block.shape[1])
    mix = np.tile(block, (1, repeats))[:, :frames]
    tmp = path.with_suffix(f".{os.getpid()}.partial")
    try:
        sf.write(tmp, mix.T, SAMPLE_RATE, subtype="PCM_16", format="WAV")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
