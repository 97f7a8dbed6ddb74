"""Settings: the inference options (STEM_PRECISION, STEM_CPU_RUNTIME) and the MP3 default."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from consumer.settings import Settings


def test_defaults_are_fp32_torch_and_lame_q3(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("STEM_PRECISION", "STEM_CPU_RUNTIME", "STEM_MP3_QUALITY"):
        monkeypatch.delenv(name, raising=False)
    settings = Settings()
    assert (settings.precision, settings.cpu_runtime, settings.mp3_quality) == ("fp32", "torch", 3)


def test_cpu_runtime_is_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STEM_CPU_RUNTIME", "openvino")
    monkeypatch.setenv("STEM_PRECISION", "bf16")
    settings = Settings()
    assert (settings.cpu_runtime, settings.precision) == ("openvino", "bf16")


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"cpu_runtime": "onnx"}, "cpu_runtime"),
        ({"precision": "int8"}, "precision"),
        ({"device": "cpu", "precision": "fp16"}, "STEM_PRECISION=fp16 needs CUDA"),
        ({"cpu_runtime": "openvino", "precision": "fp16"}, "runs STEM_PRECISION fp32 or bf16"),
        ({"cpu_runtime": "openvino", "shifts": 1}, "needs STEM_SHIFTS=0"),
    ],
)
def test_inference_settings_that_cannot_run_are_refused(
    values: dict[str, object], message: str
) -> None:
    with pytest.raises(ValidationError, match=message):
        Settings.model_validate(values)


@pytest.mark.parametrize(
    "values",
    [
        {"device": "cpu", "precision": "bf16"},
        {"device": "cpu", "cpu_runtime": "openvino", "precision": "bf16"},
        {"device": "auto", "precision": "fp16"},  # auto may be CUDA: decided at load
        {"device": "cuda", "cpu_runtime": "openvino"},  # ignored on CUDA
    ],
)
def test_inference_settings_that_can_run_are_accepted(values: dict[str, object]) -> None:
    Settings.model_validate(values)
