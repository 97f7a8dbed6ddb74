"""Composition root of a worker: settings → model, clients, handler, runner."""

from __future__ import annotations

import logging

from consumer import gcp
from consumer.events import PubSubEventPublisher
from consumer.handler import HandlerConfig, JobHandler
from consumer.runner import Worker
from consumer.separation import DemucsSeparator, Separator
from consumer.settings import Settings
from consumer.storage import GcsBlobStore

__all__ = ["build_worker", "load_separator"]

_log = logging.getLogger(__name__)


def load_separator(settings: Settings) -> DemucsSeparator:
    """Load the model once, at start; the worker reports ready only after this."""
    separator = DemucsSeparator.load(
        settings.model,
        repo=settings.model_repo,
        device=settings.device,
        overlap=settings.segment_overlap,
        shifts=settings.shifts,
    )
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


def build_worker(settings: Settings, separator: Separator | None = None) -> Worker:
    """A ready-to-run worker; ``separator`` defaults to the model the settings name."""
    project = settings.require_project()
    separator = separator or load_separator(settings)
    events = PubSubEventPublisher(
        gcp.publisher_client(settings),
        project=project,
        results_topic=settings.results_topic,
        dlq_topic=settings.dlq_topic,
    )
    handler = JobHandler(
        HandlerConfig.from_settings(settings),
        store=GcsBlobStore(gcp.storage_client(settings)),
        events=events,
        separator=separator,
    )
    return Worker(settings, handler, gcp.subscriber_client(settings), on_stopped=events.close)
