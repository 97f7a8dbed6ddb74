"""bench/gpu_check.sh, run as on a GPU machine but on this CPU with a tiny model: every
step of the check runs and its JSON has what the capacity model reads."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.gpu_wheels import runtime_requirements

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(120)
def test_gpu_check_smoke_on_cpu_writes_the_table_and_json(tmp_path: Path) -> None:
    # This Python has the project installed: no wheels (bench/wheels, if made here, are
    # for the GPU machine's Python).
    env = {**os.environ, "PYTHON": sys.executable, "GPU_CHECK_WHEELS": str(tmp_path)}
    done = subprocess.run(
        [
            "bash",
            str(ROOT / "bench" / "gpu_check.sh"),
            "--device",
            "cpu",
            "--smoke",
            "--out",
            str(tmp_path),
            "--cache-dir",
            str(tmp_path / "cache"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=110,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    [path] = tmp_path.glob("gpu-check-*.json")
    report = json.loads(path.read_text())
    rows = {(r["precision"], r["batch_setting"]): r for r in report["separation"]}
    assert rows[("fp32", 1)]["audio_s_per_s"] > 0
    # The fleet's batched path equals apply_model on the CPU within float tolerance.
    fp32 = rows[("fp32", 1)]
    assert fp32["identical_to_reference"] or fp32["min_snr_db"] > 60
    assert report["end_to_end"]["audio_s_per_s"] > 0
    assert report["end_to_end"]["jobs"] == 2
    assert "audio-s / wall-s" in done.stdout


def test_the_carried_wheels_leave_torch_and_numpy_to_the_gpu_machine() -> None:
    wanted = runtime_requirements()
    assert {"demucs", "lameenc", "soundfile", "pydantic", "google-cloud-pubsub"} <= set(wanted)
    assert not {"torch", "numpy", "triton", "stem-fleet"} & set(wanted)
