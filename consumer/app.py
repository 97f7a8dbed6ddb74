"""Composition root of a worker: settings → model, clients, handler, runner."""

from __future__ import annotations

import logging
import signal
from types import FrameType

from consumer import gcp
from consumer.events import PubSubEventPublisher
from consumer.handler import JobHandler
from consumer.runner import Worker
from consumer.separation import DemucsSeparator, Separator
from consumer.settings import Settings
from consumer.storage import GcsBlobStore
from consumer.telemetry import Health, Metrics, TelemetryServer, configure_tracing

__all__ = ["build_worker", "load_separator", "run_worker"]

_log = logging.getLogger(__name__)


def load_separator(settings: Settings, metrics: Metrics | None = None) -> DemucsSeparator:
    """Load the model once, at start; the worker reports ready only after this."""
    separator = DemucsSeparator.load(
        settings.model,
        repo=settings.model_repo,
        device=settings.device,
        overlap=settings.segment_overlap,
        segment=settings.segment_seconds,
        shifts=settings.shifts,
        batch_size=settings.segment_batch,
        precision=settings.precision,
        cpu_runtime=settings.cpu_runtime,
    )
    if metrics is not None:
        metrics.model_load.set(separator.load_seconds)
        metrics.model_info.labels(
            settings.model, separator.model_version, str(separator.device)
        ).set(1)
    _log.info(
        "model loaded",
        extra={
            "model": settings.model,
            "modelVersion": separator.model_version,
            "device": str(separator.device),
            "loadSeconds": round(separator.load_seconds, 3),
        },
    )
    return separator


def warn_if_buckets_unrestricted(settings: Settings) -> bool:
    """Log a warning when a worker on real GCP may touch any bucket (empty
    ``STEM_ALLOWED_BUCKETS``, which DESIGN.md allows); the emulators are exempt."""
    if settings.allowed_buckets or settings.using_emulators:
        return False
    _log.warning(
        "STEM_ALLOWED_BUCKETS is empty: jobs may read and write any bucket this service "
        "account can reach; set it to the staging and output buckets"
    )
    return True


def build_worker(
    settings: Settings,
    separator: Separator | None = None,
    *,
    metrics: Metrics | None = None,
    health: Health | None = None,
) -> Worker:
    """A ready-to-run worker; ``separator`` defaults to the model the settings name."""
    project = settings.require_project()
    separator = separator or load_separator(settings, metrics)
    warn_if_buckets_unrestricted(settings)
    events = PubSubEventPublisher(
        gcp.publisher_client(settings),
        project=project,
        results_topic=settings.results_topic,
        dlq_topic=settings.dlq_topic,
    )
    handler = JobHandler(
        settings,
        store=GcsBlobStore(gcp.storage_client(settings)),
        events=events,
        separator=separator,
        metrics=metrics,
    )
    return Worker(
        settings, handler, gcp.subscriber_client(settings), on_stopped=events.close, health=health
    )


def _exit_during_start_up(signum: int, frame: FrameType | None) -> None:
    del frame
    _log.info("signal during start-up: exiting", extra={"signal": signal.Signals(signum).name})
    raise SystemExit(0)


def run_worker(settings: Settings) -> int:
    """``stemctl worker``: telemetry up first (so probes answer "not ready" while the model
    loads), then the model, then pulling until a signal; returns the exit code."""
    settings.require_project()
    # Until the worker exists there is nothing in flight: a signal during start-up (a model
    # load can take a while) just exits, cleanly.
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, _exit_during_start_up)
    configure_tracing(settings)
    metrics, health = Metrics(), Health()
    server = (
        TelemetryServer(metrics, health, settings.metrics_port).start()
        if settings.metrics_port
        else None
    )
    try:
        separator = load_separator(settings, metrics)
        health.set(model_loaded=True)
        worker = build_worker(settings, separator, metrics=metrics, health=health)
        worker.install_signal_handlers()
        return worker.run()
    finally:
        if server is not None:
            server.stop()
