"""The distances bench uses to judge lossy copies (MP3 -q levels, faster forwards)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from bench.fidelity import align, log_spectral_distance_db, snr_db
from devkit.synth import instrument_parts, multi_instrument_mix


def test_align_finds_an_encoder_delay() -> None:
    mix = multi_instrument_mix(2.0)
    delayed = np.concatenate([np.zeros((2, 1105), np.float32), mix], axis=1)
    assert align(mix, delayed) == 1105


def test_snr_is_infinite_for_a_copy_and_falls_with_the_noise() -> None:
    mix = multi_instrument_mix(1.0).astype(np.float64)
    noise = np.random.default_rng(0).standard_normal(mix.shape) * 1e-3
    assert snr_db(mix, mix) == math.inf
    assert snr_db(mix, mix + noise) > snr_db(mix, mix + 10 * noise) + 19


def test_log_spectral_distance_is_zero_for_a_copy_and_grows_with_damage() -> None:
    mix = multi_instrument_mix(1.0)
    noise = np.random.default_rng(1).standard_normal(mix.shape).astype(np.float32)
    assert log_spectral_distance_db(mix, mix, 44_100) == 0.0
    slight = log_spectral_distance_db(mix, mix + 1e-4 * noise, 44_100)
    heavy = log_spectral_distance_db(mix, mix + 1e-2 * noise, 44_100)
    assert 0 < slight < heavy


def test_shapes_must_agree() -> None:
    with pytest.raises(ValueError, match="shapes differ"):
        snr_db(np.zeros((2, 10)), np.zeros((1, 10)))


def test_the_mix_is_the_normalised_sum_of_its_parts() -> None:
    """devkit.synth: instrument_parts are the stems of multi_instrument_mix."""
    parts = instrument_parts(1.5, seed=3)
    total = np.sum(list(parts.values()), axis=0)
    total /= max(1.0, float(np.abs(total).max()) / 0.9)
    assert list(parts) == ["drums", "bass", "vocals", "guitar", "piano"]
    np.testing.assert_allclose(
        total.astype(np.float32), multi_instrument_mix(1.5, seed=3), atol=1e-6
    )
