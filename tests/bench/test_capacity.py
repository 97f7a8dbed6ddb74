"""The capacity model's plumbing: inputs read, devices rated, shapes planned, doc written."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from bench.capacity import (
    DeviceRate,
    Shape,
    device_rate,
    job_costs,
    k8s_resources,
    load_shapes,
    plan,
    render,
    write_plot,
)


def _costs_report() -> dict[str, Any]:
    def op(name: str, group: str, value: float, **meta: Any) -> dict[str, Any]:
        return {"name": name, "group": group, "core_s_per_min": value, **meta}

    return {
        "environment": {"git_commit": "abc", "cpu": "test", "cpu_count": 2, "timestamp": "now"},
        "ops": [
            op("crc32c of mp3 bytes", "hash", 0.001),
            op("mp3 q2", "mp3", 1.2, encoder="consumer.audio.encode", quality=2),
            op("mp3 q7", "mp3", 0.6, encoder="consumer.audio.encode", quality=7),
        ],
        "derived": {
            "decode_core_s_per_audio_min": 0.3,
            "separator_host_core_s_per_audio_min": 0.2,
            "pipeline_core_s_per_audio_min_measured_whole": {"mp3 -q 2": 8.0},
        },
    }


def test_job_costs_are_the_sum_of_the_measured_parts() -> None:
    costs = job_costs(_costs_report(), 2)
    assert costs.encode_core_s == pytest.approx((1.2 + 0.002) / 60)
    assert costs.decode_core_s == pytest.approx(0.3 / 60)
    assert costs.cpu_core_s() * 60 == pytest.approx(0.3 + 0.2 + 6 * 1.202)


def test_prices_are_dated_with_sources_and_every_gpu_shape_has_its_accelerator() -> None:
    shapes, accelerators, meta = load_shapes()
    assert meta["written"]
    assert meta["sources"]
    assert "re-check" in meta["recheck"]
    assert {s.machine for s in shapes} >= {"g2-standard-8", "a3-highgpu-1g", "c3-standard-44"}
    assert all(s.accelerator in accelerators for s in shapes if s.accelerator)


def test_a_gpu_without_a_measurement_gets_a_labelled_estimate() -> None:
    spec = {"name": "NVIDIA L4", "bf16_dense_tflops": 100.0}
    rate = device_rate("L4", spec, 1e9, measured=[])
    assert rate.source.startswith("estimate")
    assert rate.audio_s_per_s == pytest.approx(0.10 * 100e12 / 1e9)


def test_a_measured_gpu_uses_its_fastest_run_whose_stems_pass() -> None:
    spec = {"name": "NVIDIA L4", "bf16_dense_tflops": 100.0}
    report = {
        "_file": "gpu-check-nvidia-l4-full.json",
        "environment": {"gpu": "NVIDIA L4"},
        "separation": [
            {"precision": "fp32", "batch": 8, "audio_s_per_s": 100.0, "min_snr_db": None},
            {"precision": "bf16", "batch": 8, "audio_s_per_s": 300.0, "min_snr_db": 45.0},
            {"precision": "fp16", "batch": 8, "audio_s_per_s": 400.0, "min_snr_db": 20.0},
        ],
    }
    rate = device_rate("L4", spec, 1e9, measured=[report])
    assert rate.audio_s_per_s == 300.0
    assert rate.source.startswith("measured")


def test_plans_and_document_for_a_gpu_and_a_cpu_shape(tmp_path: Path) -> None:
    costs = job_costs(_costs_report(), 2)
    gpu = Shape("g2-standard-8", 8, 32, 0.85, "x", "L4")
    cpu = Shape("c3-standard-8", 8, 32, 0.40, "x")
    plans = [
        plan(gpu, costs, DeviceRate(40.0, "estimate: test", "bf16"), quality=2),
        plan(cpu, costs, DeviceRate(None, "the CPU", "fp32"), quality=2, cpu_forward=0.5),
    ]
    assert plans[0].best.throughput == pytest.approx(40.0, rel=0.02)  # the device binds
    assert plans[1].pods == 1
    assert plans[1].best.throughput < 8 / 0.5
    assert k8s_resources(plans[0])["cpu"] == "7"
    meta = {
        "pricing": "p",
        "region": "r",
        "prices_as_of": "d",
        "written": "w",
        "recheck": "re-check",
        "sources": ["u"],
    }
    doc = render(plans, meta=meta, costs_report=_costs_report(), qualities=[2], plot_name="p.png")
    assert "| g2-standard-8 | 8 | L4 |" in doc
    assert "*estimate*" in doc
    write_plot(plans, tmp_path / "p.png", 2)
    assert (tmp_path / "p.png").stat().st_size > 1000
