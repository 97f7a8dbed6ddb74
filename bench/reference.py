"""The reference: what a user of Demucs' own API would run for the same work.

``demucs.api.Separator`` loads the same model folder and separates the file exactly as
``Separator.separate_audio_file`` does (its loader, then ``separate_tensor``); each of
the six stems is then written with Demucs' own writer, ``demucs.audio.save_audio``, as
``demucs.separate`` does for ``--mp3`` (320 kbit/s, preset 2, ``clip="rescale"``).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from demucs.api import Separator
from demucs.audio import save_audio

from bench.measure import ForwardTimer, UsageProbe
from bench.results import Captured, RunResult

__all__ = ["ReferencePipeline"]


class ReferencePipeline:
    """``demucs.api.Separator`` + ``save_audio``, loaded once, run once per repetition."""

    mode = "reference"

    def __init__(
        self,
        model: str,
        repo: Path,
        *,
        device: torch.device,
        overlap: float,
        mp3_bitrate: int = 320,
    ) -> None:
        # shifts=0: the fleet's default, and deterministic (shifts>0 draws offsets from
        # Python's global random).
        self.separator = Separator(
            model=model, repo=repo, device=str(device), shifts=0, overlap=overlap, jobs=0
        )
        self.device = device
        self.mp3_bitrate = mp3_bitrate
        self.forward = ForwardTimer(self.separator.model, cuda=device.type == "cuda")

    def warm_up(self, track: Path) -> None:
        """One untimed separation (first passes pay for allocator and kernel set-up)."""
        self.separator.separate_audio_file(track)

    def run(self, track: Path, rep: int, *, capture: bool = False) -> RunResult:
        sep = self.separator
        self.forward.reset()
        with tempfile.TemporaryDirectory(prefix="bench-reference-") as tmp:
            out_dir = Path(tmp)
            with UsageProbe(cuda=self.device.type == "cuda") as usage:
                started = time.perf_counter()
                # separate_audio_file(track) is exactly these two calls; split to time them.
                wav = sep._load_audio(track)
                decoded = time.perf_counter()
                _, stems = sep.separate_tensor(wav, sep.samplerate)
                separated = time.perf_counter()
                for name, stem in stems.items():
                    save_audio(
                        stem,
                        out_dir / f"{name}.mp3",
                        samplerate=sep.samplerate,
                        bitrate=self.mp3_bitrate,
                        clip="rescale",
                        preset=2,
                    )
                finished = time.perf_counter()
        captured = None
        if capture:
            captured = Captured(
                mix=np.asarray(wav.numpy(), dtype=np.float32),
                stems={name: stem.numpy() for name, stem in stems.items()},
            )
        return RunResult(
            mode=self.mode,
            rep=rep,
            audio_seconds=wav.shape[-1] / sep.samplerate,
            wall_s=finished - started,
            forward_s=self.forward.total_s,
            forward_calls=self.forward.calls,
            stages={
                "decode": decoded - started,
                "separate": separated - decoded,
                "encode": finished - separated,
            },
            usage=usage,
            captured=captured,
        )
