"""``stemctl submit --wait``: the job's ``stems.progress`` events move a progress bar — plain
lines on stderr off a terminal — and its final event is printed on stdout."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

from consumer.runner import Worker
from consumer.settings import Settings
from stem_contracts import StemsProcessed, decode_event
from stemctl.cli import app
from tests.support.settings_env import settings_environment

pytestmark = pytest.mark.integration


def test_wait_shows_the_jobs_progress_events_then_prints_its_result(
    worker_settings: Settings,
    start_worker: Callable[[Settings], Worker],
    clip: Callable[..., Path],
) -> None:
    # A worker that reports progress at every chance it gets, on a node with a price.
    start_worker(
        worker_settings.model_copy(update={"progress_interval_s": 0.001, "cost_per_hour": 2.5})
    )

    result = CliRunner().invoke(
        app,
        ["submit", str(clip("wav", 1.5)), "--track-id", "t1", "--job-id", "j1", "--wait"],
        env=settings_environment(worker_settings),
        catch_exceptions=False,
    )

    assert result.exit_code == 0, result.output
    lines = result.stderr.splitlines()
    assert lines[:1] == ["job j1: processing (attempt 1)"], result.output
    assert any(re.fullmatch(r"job j1: separating \d+ %", line) for line in lines[1:-1]), lines
    assert lines[-2] == "job j1: processed"
    final = decode_event(result.stdout.splitlines()[-1].encode())
    assert isinstance(final, StemsProcessed)
    assert final.job_id == "j1"
    # ...and what it used and cost, from the event's usage
    assert final.usage is not None
    assert final.usage.cost_usd is not None
    assert lines[-1] == (
        f"job j1 processed (6 stems): audio 1.5 s, worker {final.usage.worker_seconds:.1f} s, "
        f"device {final.usage.device_seconds:.1f} s on cpu, cost ${final.usage.cost_usd:.6f}"
    )
