"""Separation: the local model folder, and parity with ``demucs.api.Separator``.

The hub weights cannot be fetched here, so the model is the tiny random-weight HTDemucs
that ``write_local_model`` saves, loaded through Demucs' own ``get_model`` under the
production name ``htdemucs_6s``. Parity on the same model and input stands in for quality.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
import torch
from demucs.api import Separator as ReferenceSeparator
from demucs.htdemucs import HTDemucs
from demucs.pretrained import get_model

from consumer.errors import DeviceOutOfMemory, ModelLoadError
from consumer.separation import DemucsSeparator, SeparationCancelled, resolve_device
from devkit.models import HTDEMUCS_6S_SOURCES, build_model, write_local_model
from stem_contracts import model_version

MODEL = "htdemucs_6s"
RATE = 44100
# Chunks are 7.8 s long, 5.85 s apart (overlap 0.25): 7 s is two chunks, overlap-added.
TWO_CHUNK_SECONDS = 7.0

Audio = npt.NDArray[np.float32]


def clip(seconds: float, *, seed: int = 0, channels: int = 2) -> Audio:
    """A few tones plus noise, slightly different per channel."""
    length = round(seconds * RATE)
    rng = np.random.default_rng(seed)
    t = np.arange(length) / RATE
    tones = sum(np.sin(2 * np.pi * f * t) / (k + 1) for k, f in enumerate((110.0, 440.0, 1250.0)))
    mono = 0.3 * tones + 0.05 * rng.standard_normal(length)
    out = np.stack([mono * (1.0 - 0.1 * c) for c in range(channels)])
    return out.astype(np.float32)


def reference_stems(repo: Path, mix: Audio, *, shifts: int = 0) -> dict[str, Audio]:
    reference = ReferenceSeparator(
        model=MODEL, repo=repo, device="cpu", shifts=shifts, overlap=0.25, split=True
    )
    _, stems = reference.separate_tensor(torch.from_numpy(mix), RATE)
    return {name: stem.numpy() for name, stem in stems.items()}


def max_abs_diff(ours: dict[str, Audio], theirs: dict[str, Audio]) -> float:
    assert list(ours) == list(theirs)
    return max(float(np.abs(ours[k] - theirs[k]).max()) for k in ours)


class ForwardCounter:
    """Counts forward passes of a model (one per 7.8 s chunk)."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.calls = 0
        self._handle = model.register_forward_pre_hook(self._hook)

    def _hook(self, *_: object) -> None:
        self.calls += 1

    def remove(self) -> None:
        self._handle.remove()


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_local_model(tmp_path_factory.mktemp("models"), MODEL, size="tiny", seed=0)


@pytest.fixture(scope="module")
def separator(repo: Path) -> DemucsSeparator:
    """One chunk per forward pass, so chunk-level behaviour can be observed."""
    return DemucsSeparator.load(
        MODEL, repo=repo, device="cpu", overlap=0.25, shifts=0, batch_size=1
    )


@pytest.fixture
def forwards(separator: DemucsSeparator) -> Iterator[ForwardCounter]:
    counter = ForwardCounter(separator.model)
    yield counter
    counter.remove()


@pytest.fixture(scope="module")
def two_chunk_run(separator: DemucsSeparator) -> tuple[Audio, dict[str, Audio], list[float]]:
    """One separation of a two-chunk clip, shared by the tests that inspect it."""
    mix = clip(TWO_CHUNK_SECONDS, seed=1)
    reports: list[float] = []
    stems = separator.separate(mix, progress=reports.append)
    return mix, stems, reports


# --- the local model folder -----------------------------------------------------------


def test_tiny_model_loads_through_demucs_get_model_as_htdemucs_6s_shaped(repo: Path) -> None:
    model = get_model(MODEL, repo=repo)

    assert isinstance(model, HTDemucs)
    assert tuple(model.sources) == HTDEMUCS_6S_SOURCES
    assert HTDEMUCS_6S_SOURCES == ("drums", "bass", "other", "vocals", "guitar", "piano")
    assert model.depth == 4
    assert model.segment == Fraction(39, 5)
    assert (model.samplerate, model.audio_channels) == (44100, 2)


def test_writing_the_same_model_again_keeps_the_file(repo: Path) -> None:
    path = repo / f"{MODEL}.th"
    before = path.stat().st_mtime_ns

    write_local_model(repo, MODEL, size="tiny", seed=0)

    assert path.stat().st_mtime_ns == before


def test_another_seed_rewrites_the_model_with_other_weights(tmp_path: Path) -> None:
    write_local_model(tmp_path, "m", seed=0)
    first = get_model("m", repo=tmp_path).state_dict()

    write_local_model(tmp_path, "m", seed=1)
    second = get_model("m", repo=tmp_path).state_dict()

    assert not all(torch.equal(first[k], second[k]) for k in first)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.th"]


def test_a_name_demucs_would_misread_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="checksum"):
        write_local_model(tmp_path, "htdemucs-6s")


def test_full_size_model_has_the_htdemucs_6s_parameter_count() -> None:
    model = build_model(size="full")

    parameters = sum(p.numel() for p in model.parameters())

    print(f"full htdemucs_6s-shaped model: {parameters:,} parameters")
    assert 26_000_000 <= parameters <= 28_000_000
    assert parameters == 27_414_996
    assert isinstance(model, HTDemucs)
    assert model.crosstransformer.layers[0].self_attn.embed_dim == 384
    assert model.bottom_channels == 0


def test_model_version_is_the_name_with_dashes() -> None:
    assert model_version("htdemucs_6s") == "demucs-htdemucs-6s"
    assert model_version("htdemucs") == "demucs-htdemucs"


# --- loading ----------------------------------------------------------------------------


def test_separator_describes_its_model(separator: DemucsSeparator) -> None:
    assert separator.sources == HTDEMUCS_6S_SOURCES
    assert (separator.sample_rate, separator.audio_channels) == (44100, 2)
    assert separator.model_version == "demucs-htdemucs-6s"
    assert separator.device.type == "cpu"  # the fixture asks for the CPU, GPU or not
    assert separator.load_seconds > 0


def test_a_model_missing_from_the_folder_is_a_model_load_error_naming_it(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match=str(tmp_path)) as raised:
        DemucsSeparator.load(MODEL, repo=tmp_path, device="cpu")

    assert raised.value.code == "model_load_failed"
    assert "no network" in raised.value.message


def test_a_missing_model_folder_is_a_model_load_error_naming_it(tmp_path: Path) -> None:
    folder = tmp_path / "absent"

    with pytest.raises(ModelLoadError, match=str(folder)):
        DemucsSeparator.load(MODEL, repo=folder, device="cpu")


def test_a_segment_longer_than_the_trained_one_is_refused(repo: Path) -> None:
    with pytest.raises(ModelLoadError, match="trained"):
        DemucsSeparator.load(MODEL, repo=repo, device="cpu", segment=10.0)


def test_auto_device_is_cpu_on_this_machine() -> None:
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto") == torch.device(expected)
    assert resolve_device("cpu") == torch.device("cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_asking_for_cuda_without_one_is_a_model_load_error() -> None:
    with pytest.raises(ModelLoadError, match="cuda"):
        resolve_device("cuda")


# --- parity with demucs.api.Separator ---------------------------------------------------


def test_stems_equal_the_reference_api_across_overlapping_chunks(
    two_chunk_run: tuple[Audio, dict[str, Audio], list[float]], repo: Path
) -> None:
    mix, ours, _ = two_chunk_run

    assert max_abs_diff(ours, reference_stems(repo, mix)) < 1e-5


def test_stems_equal_the_reference_api_on_odd_length_mono_duplicated_audio(
    separator: DemucsSeparator, repo: Path
) -> None:
    mono = clip(1.37, seed=2, channels=1)
    mix = np.repeat(mono, 2, axis=0)
    assert mix.shape[1] % 2 == 1

    ours = separator.separate(mix)

    assert max_abs_diff(ours, reference_stems(repo, mix)) < 1e-5


def test_stems_equal_the_reference_api_with_a_shift_when_random_is_seeded_alike(
    repo: Path,
) -> None:
    shifting = DemucsSeparator.load(MODEL, repo=repo, device="cpu", shifts=1)
    mix = clip(2.0, seed=3)

    random.seed(1234)
    ours = shifting.separate(mix)
    random.seed(1234)
    theirs = reference_stems(repo, mix, shifts=1)

    assert max_abs_diff(ours, theirs) < 1e-5


# --- the separate() contract --------------------------------------------------------------


def test_every_stem_has_the_shape_and_dtype_of_the_mix(
    two_chunk_run: tuple[Audio, dict[str, Audio], list[float]],
) -> None:
    mix, stems, _ = two_chunk_run

    assert tuple(stems) == HTDEMUCS_6S_SOURCES
    for stem in stems.values():
        assert stem.shape == mix.shape
        assert stem.dtype == np.float32


def test_progress_rises_after_each_chunk_to_one(
    two_chunk_run: tuple[Audio, dict[str, Audio], list[float]],
) -> None:
    _, _, reports = two_chunk_run

    assert reports == [0.5, 1.0]


def test_progress_reaches_one_when_a_shifted_pass_runs_fewer_chunks_than_counted(
    repo: Path,
) -> None:
    # Given 5.6 s of audio: a pass shifted by up to 0.5 s covers 5.6 to 6.1 s, so up to two
    # 5.85 s strides are counted; an offset of at least 0.25 s leaves one chunk to run.
    shifting = DemucsSeparator.load(MODEL, repo=repo, device="cpu", shifts=1)
    seed = next(s for s in range(100) if random.Random(s).randint(0, RATE // 2) >= RATE // 4)
    forwards = ForwardCounter(shifting.model)
    reports: list[float] = []

    random.seed(seed)
    shifting.separate(clip(5.6), progress=reports.append)

    assert forwards.calls == 1
    assert reports == [0.5, 1.0]


def test_read_only_audio_is_separated(separator: DemucsSeparator) -> None:
    mix = clip(0.5)
    mix.setflags(write=False)

    stems = separator.separate(mix)

    assert stems["vocals"].shape == mix.shape


def test_each_call_is_counted(separator: DemucsSeparator) -> None:
    before = separator.separations

    separator.separate(clip(0.5))

    assert separator.separations == before + 1


def test_cancellation_stops_at_the_next_chunk(
    separator: DemucsSeparator, forwards: ForwardCounter
) -> None:
    reports: list[float] = []

    with pytest.raises(SeparationCancelled):
        separator.separate(
            clip(TWO_CHUNK_SECONDS), progress=reports.append, cancelled=lambda: bool(reports)
        )

    assert forwards.calls == 1
    assert reports == [0.5]


def test_cancellation_before_the_first_chunk_runs_no_forward_pass(
    separator: DemucsSeparator, forwards: ForwardCounter
) -> None:
    with pytest.raises(SeparationCancelled):
        separator.separate(clip(1.0), cancelled=lambda: True)

    assert forwards.calls == 0


def test_a_real_keyboard_interrupt_is_not_taken_for_a_cancellation(
    separator: DemucsSeparator,
) -> None:
    def interrupt(_: float) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        separator.separate(clip(1.0), progress=interrupt, cancelled=lambda: False)


def test_device_out_of_memory_is_the_transient_device_oom(repo: Path) -> None:
    separator = DemucsSeparator.load(MODEL, repo=repo, device="cpu")

    def out_of_memory(*_: object) -> None:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    separator.model.register_forward_pre_hook(out_of_memory)

    with pytest.raises(DeviceOutOfMemory) as raised:
        separator.separate(clip(1.0))

    assert raised.value.code == "device_oom"
    assert raised.value.retryable


@pytest.mark.parametrize(
    "shape", [(2,), (1, RATE), (3, RATE), (2, 1), (2, 0)], ids=lambda s: "x".join(map(str, s))
)
def test_audio_of_the_wrong_shape_is_refused(
    separator: DemucsSeparator, shape: tuple[int, ...]
) -> None:
    with pytest.raises(ValueError, match="mix must be"):
        separator.separate(np.zeros(shape, dtype=np.float32))


# --- batching: several chunks per forward pass, streamed out in time order ------------


THREE_CHUNK_SECONDS = 14.0  # chunks at 0, 5.85 and 11.7 s; the last one short


@pytest.fixture(scope="module")
def three_chunk_reference(repo: Path) -> tuple[Audio, dict[str, Audio]]:
    mix = clip(THREE_CHUNK_SECONDS, seed=5)
    return mix, reference_stems(repo, mix)


@pytest.mark.parametrize("batch_size", [2, 3])
def test_batched_chunks_equal_the_reference_api(
    repo: Path, three_chunk_reference: tuple[Audio, dict[str, Audio]], batch_size: int
) -> None:
    """Any batch size (one that splits the chunks unevenly too) gives Demucs' stems."""
    batched = DemucsSeparator.load(MODEL, repo=repo, device="cpu", batch_size=batch_size)
    forwards = ForwardCounter(batched.model)
    mix, reference = three_chunk_reference

    ours = batched.separate(mix)

    assert forwards.calls == -(-3 // batch_size)  # ceil(3 chunks / batch)
    assert max_abs_diff(ours, reference) < 1e-5


def test_blocks_tile_the_track_in_order_and_equal_the_whole_separation(repo: Path) -> None:
    batched = DemucsSeparator.load(MODEL, repo=repo, device="cpu", batch_size=2)
    mix = clip(THREE_CHUNK_SECONDS, seed=6)

    blocks = list(batched.separate_blocks(mix))

    starts = [start for start, _ in blocks]
    lengths = [block.shape[-1] for _, block in blocks]
    assert starts == [0, *np.cumsum(lengths)[:-1].tolist()]
    assert sum(lengths) == mix.shape[-1]
    assert all(block.shape[:2] == (6, 2) for _, block in blocks)
    whole = batched.separate(mix)
    joined = np.concatenate([block for _, block in blocks], axis=-1)
    for index, source in enumerate(batched.sources):
        np.testing.assert_array_equal(joined[index], whole[source])


def test_a_batch_reports_progress_once_and_runs_one_forward_pass(repo: Path) -> None:
    batched = DemucsSeparator.load(MODEL, repo=repo, device="cpu", batch_size=2)
    forwards = ForwardCounter(batched.model)
    reports: list[float] = []

    batched.separate(clip(TWO_CHUNK_SECONDS), progress=reports.append)

    assert forwards.calls == 1
    assert reports == [1.0]


def test_cancellation_stops_between_batches(repo: Path) -> None:
    batched = DemucsSeparator.load(MODEL, repo=repo, device="cpu", batch_size=2)
    forwards = ForwardCounter(batched.model)
    reports: list[float] = []

    with pytest.raises(SeparationCancelled):
        batched.separate(
            clip(THREE_CHUNK_SECONDS), progress=reports.append, cancelled=lambda: bool(reports)
        )

    assert forwards.calls == 1
    assert reports == [pytest.approx(2 / 3)]


def test_shifts_take_demucs_own_apply_path(repo: Path) -> None:
    assert not DemucsSeparator.load(MODEL, repo=repo, device="cpu", shifts=1).batched
    assert DemucsSeparator.load(MODEL, repo=repo, device="cpu", shifts=0).batched


def test_fp16_needs_cuda(repo: Path) -> None:
    with pytest.raises(ModelLoadError, match="CUDA"):
        DemucsSeparator.load(MODEL, repo=repo, device="cpu", precision="fp16")
