"""The stem spool: in memory or on disk, the encoders get the same samples, scaled as
Demucs' writer scales a stem that would clip."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch
from demucs.audio import prevent_clip

from consumer.audio import encode
from consumer.stems import ClipMode, StemSpool, clip_scale

SOURCES = ("drums", "bass", "other", "vocals", "guitar", "piano")


def _blocks(frames: int, seed: int = 0) -> list[tuple[int, np.ndarray]]:
    rng = np.random.default_rng(seed)
    stems = (rng.standard_normal((6, 2, frames)) * 0.4).astype(np.float32)
    stems[3] *= 4  # vocals would clip: they must be rescaled
    cuts = [0, 1000, 1001, 5000, frames]
    return [(a, stems[..., a:b]) for a, b in itertools.pairwise(cuts)]


def _joined(spool: StemSpool, name: str) -> np.ndarray:
    return np.concatenate(list(spool.source(name).blocks(777)), axis=-1)


@pytest.mark.parametrize("memory_limit", [1 << 30, 0], ids=["in-memory", "spooled-to-disk"])
def test_spool_returns_each_stem_rescaled_exactly_as_demucs_prevent_clip(
    tmp_path: Path, memory_limit: int
) -> None:
    blocks = _blocks(9000)
    spool = StemSpool(
        tmp_path,
        SOURCES,
        ["vocals", "bass"],
        channels=2,
        frames=9000,
        memory_limit_bytes=memory_limit,
    )
    for start, block in blocks:
        spool.write(start, block)
    spool.close()
    spool.check_complete()

    assert spool.in_memory is (memory_limit > 0)
    for name in ("vocals", "bass"):
        whole = np.concatenate([b[SOURCES.index(name)] for _, b in blocks], axis=-1)
        expected = prevent_clip(torch.from_numpy(whole), mode="rescale").numpy()
        np.testing.assert_allclose(_joined(spool, name), expected, rtol=1e-6, atol=1e-7)
    assert clip_scale(0.5) == 1.0


def test_spooled_and_in_memory_stems_encode_to_identical_files(tmp_path: Path) -> None:
    outputs = []
    for limit in (1 << 30, 0):
        folder = tmp_path / str(limit)
        folder.mkdir()
        spool = StemSpool(
            folder, SOURCES, ["guitar"], channels=2, frames=9000, memory_limit_bytes=limit
        )
        for start, block in _blocks(9000, seed=3):
            spool.write(start, block)
        spool.close()
        outputs.append(encode(spool.source("guitar"), 44100, "flac", folder / "g.flac").sha256)
    assert outputs[0] == outputs[1]


def test_released_stems_leave_no_spool_file(tmp_path: Path) -> None:
    spool = StemSpool(tmp_path, SOURCES, ["drums"], channels=2, frames=9000, memory_limit_bytes=0)
    for start, block in _blocks(9000):
        spool.write(start, block)
    spool.close()
    assert list(tmp_path.glob("*.f32"))
    spool.release("drums")
    assert not list(tmp_path.glob("*.f32"))


def test_blocks_out_of_order_are_refused(tmp_path: Path) -> None:
    spool = StemSpool(tmp_path, SOURCES, ["drums"], channels=2, frames=9000)
    with pytest.raises(ValueError, match="in order"):
        spool.write(10, np.zeros((6, 2, 5), dtype=np.float32))


def test_an_incomplete_track_is_detected(tmp_path: Path) -> None:
    spool = StemSpool(tmp_path, SOURCES, ["drums"], channels=2, frames=9000)
    spool.write(0, np.zeros((6, 2, 5), dtype=np.float32))
    spool.close()
    with pytest.raises(ValueError, match="5 of 9000"):
        spool.check_complete()


# --- complements and clip modes (issue 18) -------------------------------------------------


@pytest.mark.parametrize("memory_limit", [1 << 30, 0], ids=["in-memory", "spooled-to-disk"])
def test_a_complement_is_the_sum_of_the_other_sources_scaled_by_its_own_peak(
    tmp_path: Path, memory_limit: int
) -> None:
    """Demucs' ``--two-stems vocals`` (``--other-method add``): ``no_vocals`` = the other
    five sources added, then kept from clipping as one stem."""
    blocks = _blocks(9000)
    spool = StemSpool(
        tmp_path,
        SOURCES,
        ["vocals", "no_vocals"],
        channels=2,
        frames=9000,
        memory_limit_bytes=memory_limit,
    )
    for start, block in blocks:
        spool.write(start, block)
    spool.close()

    whole = np.concatenate([b for _, b in blocks], axis=-1)
    others = whole[[i for i, name in enumerate(SOURCES) if name != "vocals"]].sum(axis=0)
    np.testing.assert_allclose(_joined_as(spool, "no_vocals", "none"), others, atol=1e-6)
    expected = prevent_clip(torch.from_numpy(others), mode="rescale").numpy()
    np.testing.assert_allclose(_joined(spool, "no_vocals"), expected, rtol=1e-5, atol=1e-6)


def _joined_as(spool: StemSpool, name: str, mode: ClipMode) -> np.ndarray:
    return np.concatenate(list(spool.source(name, mode).blocks(777)), axis=-1)


@pytest.mark.parametrize("mode", ["clamp", "none"])
def test_clip_modes_clamp_and_none_are_demucs_prevent_clip(tmp_path: Path, mode: ClipMode) -> None:
    blocks = _blocks(9000)
    spool = StemSpool(tmp_path, SOURCES, ["vocals"], channels=2, frames=9000)
    for start, block in blocks:
        spool.write(start, block)
    whole = np.concatenate([b[SOURCES.index("vocals")] for _, b in blocks], axis=-1)
    assert np.abs(whole).max() > 1  # it would clip

    expected = prevent_clip(torch.from_numpy(whole), mode=mode).numpy()
    np.testing.assert_array_equal(_joined_as(spool, "vocals", mode), expected)
