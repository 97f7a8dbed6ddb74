"""The worker fixtures (tiny local model, in-process worker, clips, staging, results)."""

from tests.worker_fixtures import (  # noqa: F401 - fixtures, registered by import
    clip,
    model_repo,
    observed_worker,
    publish,
    results,
    separator,
    stage,
    start_worker,
    worker_settings,
)
