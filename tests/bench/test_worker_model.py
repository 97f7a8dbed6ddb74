"""The worker model behind the capacity figures: it must reproduce the bounds it claims."""

from __future__ import annotations

import pytest

from bench.worker_model import JobCosts, WorkerShape, simulate

GPU = JobCosts(decode_core_s=0.005, host_core_s=0.003, encode_core_s=0.02, device_s=1 / 50)


def test_a_slow_device_with_cores_to_spare_runs_at_the_device_rate() -> None:
    result = simulate(GPU, WorkerShape(cores=32, encode_workers=32, in_flight=3))
    assert result.throughput == pytest.approx(50, rel=0.01)
    assert result.bound == "GPU"


def test_with_two_in_flight_the_device_waits_for_the_next_decode() -> None:
    """Two leased jobs: while one encodes and the other separates, no third is decoding,
    so the device idles for a decode each job whenever encoding takes as long as
    separating: two jobs per decode + separate + encode."""
    result = simulate(GPU, WorkerShape(cores=32, encode_workers=32, in_flight=2))
    track = 240.0
    cycle = track * (GPU.decode_core_s + (GPU.device_s or 0) + GPU.encode_core_s)
    assert result.throughput == pytest.approx(2 * track / cycle, rel=0.01)
    assert result.device_busy < 0.95


def test_a_fast_device_is_held_back_by_the_cores() -> None:
    fast = JobCosts(0.005, 0.003, 0.02, device_s=1 / 2000)
    result = simulate(fast, WorkerShape(cores=4, encode_workers=4, in_flight=4))
    assert result.throughput == pytest.approx(4 / fast.cpu_core_s(), rel=0.02)
    assert result.cores_busy == pytest.approx(4, rel=0.02)
    assert result.bound == "CPU pipeline"


def test_two_jobs_in_flight_cap_the_encoding_a_big_node_can_do() -> None:
    """With two jobs leased, at most two jobs' six stems encode at once: 32 cores do not
    help beyond that, and a third job in flight does."""
    fast = JobCosts(0.005, 0.003, 0.02, device_s=1 / 2000)
    two = simulate(fast, WorkerShape(cores=32, encode_workers=32, in_flight=2))
    four = simulate(fast, WorkerShape(cores=32, encode_workers=32, in_flight=4))
    assert two.cores_busy < 14
    assert four.throughput > 1.5 * two.throughput


def test_the_separation_host_thread_caps_a_very_fast_gpu() -> None:
    """The separator's own host work (overlap-add, hand-over) runs on one thread while the
    device is held: past 1 / host_core_s audio-s per s a faster GPU only waits."""
    fast = JobCosts(0.0, 0.005, 0.0, device_s=1 / 2000)
    result = simulate(fast, WorkerShape(cores=64, encode_workers=64, in_flight=4))
    assert result.throughput == pytest.approx(1 / 0.005, rel=0.02)
    assert result.bound == "separation host thread"


def test_an_encode_pool_smaller_than_six_stems_serialises_them() -> None:
    fast = JobCosts(0.0, 0.0, 0.02, device_s=1 / 2000)
    one = simulate(fast, WorkerShape(cores=8, encode_workers=1, in_flight=2))
    assert one.throughput == pytest.approx(1 / (6 * 0.02), rel=0.02)


def test_on_a_cpu_node_the_forward_shares_the_cores_with_the_pipeline() -> None:
    cpu = JobCosts(0.005, 0.003, 0.02, device_s=None, forward_core_s=0.5)
    result = simulate(cpu, WorkerShape(cores=4, encode_workers=4, in_flight=2, forward_threads=4))
    assert result.throughput == pytest.approx(4 / cpu.cpu_core_s(), rel=0.03)


def test_nonsense_shapes_are_refused() -> None:
    with pytest.raises(ValueError, match="invalid worker shape"):
        simulate(GPU, WorkerShape(cores=0, encode_workers=1))
