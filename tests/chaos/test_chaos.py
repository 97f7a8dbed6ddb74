"""The chaos run at CI size: the promise kept under kills, storage faults and poison.

Three real worker processes, 60 one-second jobs (22 of them poison, one of every kind in
:mod:`tests.chaos.catalogue`) plus 8 that arrive as uploads through the intake, a ready
worker SIGKILLed about every 3 s and replaced, and 10 % of storage requests failing (503,
dropped before or after the server acted, responses cut off half-way). Good jobs repeat
sources and options, so many are answered by reuse (copies), checked like the rest. The
figures go to the results table (``$RELIABILITY_FIGURES``, see
``tests/reliability/report.py``).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from consumer.settings import Settings
from tests.chaos.catalogue import POISON_KINDS
from tests.chaos.run import ChaosConfig, run_chaos
from tests.reliability.figures import record

pytestmark = pytest.mark.integration


@pytest.mark.timeout(420)
def test_under_kills_faults_and_poison_every_job_is_processed_or_dead_lettered_with_its_reason(
    uploads_settings: Settings, model_repo: Path, tmp_path: Path
) -> None:
    config = ChaosConfig(jobs=60, workers=3, kill_every_s=3.0, fault_rate=0.10, seed=0, uploads=8)

    report = run_chaos(config, uploads_settings, model_repo=model_repo, workdir=tmp_path)
    record("chaos", report.figures())
    print("\n".join(f"{name}: {value}" for name, value in report.rows()))

    # The promise: nothing lost, every end the right one, no access it should not have.
    assert report.drained, f"not drained in {config.drain_timeout_s} s: {report.lost}"
    assert report.failures() == []
    assert report.poison >= len(POISON_KINDS)
    # And it really was chaos: kills that hit jobs, faults of every kind, and the good
    # jobs far from the delivery limit that would dead-letter them.
    assert report.kills >= 5
    assert set(report.faults) == set(config.fault_kinds)
    assert sum(report.faults.values()) >= 0.05 * report.storage_requests
    assert report.max_attempt < config.max_delivery_attempts // 4
    # Reuse is in the mix: good kinds repeat the same source and options, so later ones
    # are answered by copies (their objects checked like any other job's).
    assert report.reused_jobs >= 5
    # ...and uploads: jobs made by the intake from fake-gcs-server's notifications.
    assert report.uploads == 8
