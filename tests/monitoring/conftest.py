"""The worker fixtures (tiny local model, in-process worker with its /metrics, staging,
results) for the monitoring tests."""

from tests.worker_fixtures import (  # noqa: F401 - fixtures, registered by import
    clip,
    model_repo,
    observed_worker,
    publish,
    results,
    separator,
    stage,
    worker_settings,
)
