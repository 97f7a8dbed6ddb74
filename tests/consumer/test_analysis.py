"""The stem analysis measured block by block equals the reference measured on whole stems.

The reference for loudness is pyloudnorm's ``Meter.integrated_loudness`` (BS.1770-4) on the
whole signal; the waveform is checked against the audiowaveform JSON format and against
the samples each pixel stands for.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import numpy.typing as npt
import pyloudnorm
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from consumer.analysis import LoudnessMeter, MeteredSource, StemMeter, WaveformBuilder
from consumer.audio import BlockSource

RATE = 44100


def sine(dbfs: float, seconds: float, *, hz: float = 1000.0) -> npt.NDArray[np.float32]:
    t = np.arange(int(seconds * RATE)) / RATE
    tone = 10 ** (dbfs / 20) * np.sin(2 * np.pi * hz * t)
    return np.tile(tone.astype(np.float32), (2, 1))


def noise(level: float, seconds: float, seed: int = 0) -> npt.NDArray[np.float32]:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((2, int(seconds * RATE))) * level).astype(np.float32)


def reference_lufs(samples: npt.NDArray[np.float32]) -> float:
    return float(pyloudnorm.Meter(RATE).integrated_loudness(samples.T.astype(np.float64)))


def measure(samples: npt.NDArray[np.float32], block: int = 4096, points: int = 2000) -> StemMeter:
    meter = StemMeter(RATE, samples.shape[0], samples.shape[1], points=points)
    for start in range(0, samples.shape[1], block):
        meter.add(samples[:, start : start + block])
    return meter


SIGNALS = {
    "-20 dBFS 1 kHz sine": sine(-20, 3.0),
    "noise": noise(0.1, 5.0),
    # 2 s of silence, 1 s of noise, a tail that is not a whole 100 ms: the gates matter
    "burst": np.concatenate(
        [np.zeros((2, 2 * RATE), np.float32), noise(0.3, 1.0), np.zeros((2, 12345), np.float32)],
        axis=1,
    ),
    "quiet then loud": np.concatenate([noise(0.001, 2.0), noise(0.5, 1.0, seed=1)], axis=1),
    # 15 dB apart: the quiet part is under the relative gate (-10 LU), above the absolute one
    "two levels": np.concatenate([noise(0.3, 1.0), noise(0.05, 2.0, seed=2)], axis=1),
}


@pytest.mark.parametrize("name", sorted(SIGNALS))
def test_loudness_equals_pyloudnorm_on_the_whole_signal(name: str) -> None:
    samples = SIGNALS[name]
    result = measure(samples).result(silence_lufs=-50)

    assert result.loudness_lufs is not None
    assert result.loudness_lufs == pytest.approx(reference_lufs(samples), abs=0.02)


def test_a_minus_20_dbfs_sine_has_its_textbook_loudness_and_peak() -> None:
    # BS.1770: a 0 dBFS 997 Hz sine in one channel reads -3.01 LKFS; both channels add 3 dB.
    result = measure(sine(-20, 3.0, hz=997)).result(silence_lufs=-50)

    assert result.loudness_lufs == pytest.approx(-20.0, abs=0.1)
    assert result.peak_dbfs == pytest.approx(-20.0, abs=0.01)
    assert result.silent is False


@settings(max_examples=25, deadline=None)
@given(block=st.integers(min_value=1, max_value=50_000))
def test_the_block_size_the_encoder_reads_with_changes_nothing(block: int) -> None:
    samples = SIGNALS["burst"]
    whole = measure(samples, block=samples.shape[1]).result(silence_lufs=-50)
    split = measure(samples, block=block).result(silence_lufs=-50)

    assert split.loudness_lufs == pytest.approx(whole.loudness_lufs, abs=1e-6)
    assert split.waveform == whole.waveform
    assert split.peak_dbfs == whole.peak_dbfs


def test_digital_silence_has_no_loudness_no_peak_and_is_silent() -> None:
    result = measure(np.zeros((2, 3 * RATE), np.float32)).result(silence_lufs=-50)

    assert (result.loudness_lufs, result.peak_dbfs, result.silent) == (None, None, True)


def test_a_stem_shorter_than_one_gating_block_has_no_loudness_but_a_peak() -> None:
    result = measure(sine(-6, 0.3)).result(silence_lufs=-50)

    assert result.loudness_lufs is None
    assert result.silent is True
    assert result.peak_dbfs == pytest.approx(-6.0, abs=0.01)


def test_silent_means_below_the_threshold_not_only_unmeasurable() -> None:
    quiet = noise(10 ** (-60 / 20), 2.0)  # about -57 LUFS: measurable, below -50
    result = measure(quiet).result(silence_lufs=-50)

    assert result.loudness_lufs is not None
    assert result.loudness_lufs < -50
    assert result.silent is True
    assert measure(quiet).result(silence_lufs=-65).silent is False


def test_more_than_three_channels_are_refused() -> None:
    with pytest.raises(ValueError, match="channel weights"):
        LoudnessMeter(RATE, 4)


# --- waveform --------------------------------------------------------------------------


@pytest.mark.parametrize(("frames", "points"), [(3 * RATE, 2000), (1000, 2000), (12345, 7)])
def test_the_waveform_is_audiowaveform_json_version_2(frames: int, points: int) -> None:
    samples = noise(0.5, frames / RATE)[:, :frames]
    builder = WaveformBuilder(RATE, frames, points)
    builder.add(samples)
    doc = builder.document()

    assert {k: doc[k] for k in ("version", "channels", "sample_rate", "bits")} == {
        "version": 2,
        "channels": 1,
        "sample_rate": RATE,
        "bits": 8,
    }
    data = doc["data"]
    assert isinstance(data, list)
    assert doc["length"] == len(data) // 2 == math.ceil(frames / int(str(doc["samples_per_pixel"])))
    assert len(data) % 2 == 0
    assert all(isinstance(v, int) and -128 <= v <= 127 for v in data)
    assert len(data) // 2 <= points  # "about points": never more


def test_each_pixel_brackets_the_samples_it_stands_for() -> None:
    samples = np.clip(SIGNALS["quiet then loud"], -0.99, 0.99)  # a stem as encoded: in range
    builder = WaveformBuilder(RATE, samples.shape[1], 500)
    for start in range(0, samples.shape[1], 3000):
        builder.add(samples[:, start : start + 3000])
    doc = builder.document()
    per_pixel = int(str(doc["samples_per_pixel"]))
    pairs = np.asarray(doc["data"]).reshape(-1, 2) / 128
    mono = samples.mean(axis=0)

    for index, (low, high) in enumerate(pairs):
        chunk = mono[index * per_pixel : (index + 1) * per_pixel]
        assert low <= chunk.min()
        assert chunk.max() <= high
        assert high - chunk.max() < 1 / 128
        assert chunk.min() - low < 1 / 128


class _Blocks:
    def __init__(self, samples: npt.NDArray[np.float32]) -> None:
        self._samples = samples
        self.shape = (samples.shape[0], samples.shape[1])

    def blocks(self, block_frames: int) -> Iterator[npt.NDArray[np.float32]]:
        for start in range(0, self._samples.shape[1], block_frames):
            yield self._samples[:, start : start + block_frames]


def test_the_metered_source_hands_on_every_block_unchanged_and_measures_them() -> None:
    samples = SIGNALS["noise"]
    inner: BlockSource = _Blocks(samples)
    meter = StemMeter(RATE, 2, samples.shape[1], points=100)
    source = MeteredSource(inner, meter)

    assert source.shape == samples.shape
    out = np.concatenate(list(source.blocks(10_000)), axis=1)

    np.testing.assert_array_equal(out, samples)
    assert meter.result(silence_lufs=-50).loudness_lufs == pytest.approx(
        reference_lufs(samples), abs=0.02
    )
