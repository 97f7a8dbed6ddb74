"""Observability on the real emulators: /metrics scraped over HTTP, one trace from the
publisher through the worker to the result subscriber, readiness phases, progress events."""

from __future__ import annotations

import itertools
import json
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client.parser import text_string_to_metric_families

from consumer.app import build_worker, load_separator
from consumer.runner import Worker
from consumer.settings import Settings
from consumer.telemetry import Health, Metrics, TelemetryServer
from stem_contracts import Job, JobPublisher, ResultSubscriber, StemsProcessed, StemsProgress
from tests.support.spans import EXPORTER
from tests.support.worker_fixtures import MODEL, Results

pytestmark = pytest.mark.integration


def _get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return int(response.status), response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def test_metrics_scraped_after_three_jobs_moved_by_the_right_amounts(
    worker_settings: Settings,
    observed_worker: Callable[[Settings], tuple[Worker, Metrics, TelemetryServer]],
    results: Results,
    publish: Callable[..., str],
    clip: Callable[..., Path],
    stage: Callable[[Path, str, str], str],
) -> None:
    source = stage(clip("wav", 1.5), worker_settings.staging_bucket, "in/a.wav")
    _, _, server = observed_worker(worker_settings)

    for job_id in ("m1", "m2"):
        publish(Job(job_id=job_id, track_id="t", source_uri=source, model=MODEL))
    missing = f"gs://{worker_settings.staging_bucket}/in/none.wav"
    publish(Job(job_id="m3", track_id="t", source_uri=missing, model=MODEL))
    for job_id in ("m1", "m2"):
        assert isinstance(results.wait_final(job_id), StemsProcessed)
    results.wait_dead_letter("m3")
    results.settle(0.5)

    status, text = _get(server.port, "/metrics")
    assert status == 200
    got = _samples(text)
    assert got[("stem_jobs_total", (("error_code", "none"), ("outcome", "processed")))] == 2
    dead = (("error_code", "source_missing"), ("outcome", "dead_lettered"))
    assert got[("stem_jobs_total", dead)] == 1
    stage_counts = {
        dict(labels)["stage"]: value
        for (name, labels), value in got.items()
        if name == "stem_stage_duration_seconds_count"
    }
    # Per processed job: one download/decode/separate/publish, six encodes, six stem uploads
    # plus the manifest; the dead-lettered job got as far as its download attempt.
    assert stage_counts == {
        "download": 3,
        "decode": 2,
        "separate": 2,
        "encode": 12,
        "upload": 14,
        "publish": 2,
    }
    assert got[("stem_audio_seconds_total", ())] == pytest.approx(3.0, abs=0.01)
    assert got[("stem_realtime_factor_count", ())] == 2
    assert got[("stem_delivery_attempt_count", ())] == 3
    assert got[("stem_delivery_attempt_bucket", (("le", "1.0"),))] == 3
    assert got[("stem_queue_wait_seconds_count", ())] == 3
    assert got[("stem_job_duration_seconds_count", (("outcome", "processed"),))] == 2
    assert got[("stem_jobs_in_flight", ())] == 0


def test_readiness_follows_the_worker_through_its_phases(
    worker_settings: Settings, model_repo: Path
) -> None:
    metrics, health = Metrics(), Health()
    with TelemetryServer(metrics, health, 0, host="127.0.0.1") as server:
        # Given a worker process that has only just started: not ready, but alive.
        assert _get(server.port, "/readyz") == (503, "model not loaded\n")
        assert _get(server.port, "/healthz")[0] == 200

        separator = load_separator(worker_settings, metrics)
        health.set(model_loaded=True)
        assert _get(server.port, "/readyz") == (503, "not pulling\n")

        worker = build_worker(worker_settings, separator, metrics=metrics, health=health)
        thread = threading.Thread(target=worker.run, daemon=True)
        thread.start()
        assert worker.ready.wait(10)
        assert _get(server.port, "/readyz") == (200, "ready\n")
        assert _get(server.port, "/healthz")[0] == 200

        worker.request_stop("test")
        assert _get(server.port, "/readyz") == (503, "shutting down\n")
        thread.join(30)
        status, text = _get(server.port, "/metrics")
        assert status == 200
        assert _samples(text)[("stem_model_load_seconds", ())] > 0
        info = [k for k in _samples(text) if k[0] == "stem_model_info"]
        assert info == [
            (
                "stem_model_info",
                (("device", "cpu"), ("model", MODEL), ("model_version", "demucs-htdemucs-6s")),
            )
        ]


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """The session's span recorder (tests/conftest.py installs it), emptied for this test."""
    EXPORTER.clear()
    yield EXPORTER
    EXPORTER.clear()


def test_one_trace_runs_from_the_publisher_through_the_worker_to_the_subscriber(
    spans: InMemorySpanExporter,
    worker_settings: Settings,
    start_worker: Callable[[Settings], Worker],
    pubsub_clients: Any,
    gcs: Any,
    clip: Callable[..., Path],
) -> None:
    _, subscriber = pubsub_clients
    project = worker_settings.project
    assert project is not None
    subscriber.create_subscription(
        request={
            "name": subscriber.subscription_path(project, "catalog"),
            "topic": f"projects/{project}/topics/stem-results",
        }
    )
    start_worker(worker_settings)
    processed = threading.Event()

    # When: the ingestion service submits inside its own span; the catalog subscribes.
    tracer = trace.get_tracer("ingestion")
    with (
        ResultSubscriber(project, "catalog", on_processed=lambda e: processed.set()),
        JobPublisher(
            project, staging_bucket=worker_settings.staging_bucket, storage_client=gcs
        ) as jobs,
    ):
        with tracer.start_as_current_span("ingest") as root:
            jobs.submit_file(clip("wav", 1.0), track_id="t", job_id="traced", model=MODEL)
        assert processed.wait(60)
        trace_id = root.get_span_context().trace_id

    # Then: every span of that trace, linked parent to child across the emulator.
    def wait_spans() -> list[ReadableSpan]:
        for _ in range(100):
            found = [s for s in spans.get_finished_spans() if s.context.trace_id == trace_id]
            # The catalog's span can finish before the worker's job span (which ends after
            # its publish is confirmed): wait for both.
            if {"stems.processed receive", "stem.job"} <= {s.name for s in found}:
                return found
            threading.Event().wait(0.1)
        return found

    traced = wait_spans()
    by_name = {s.name: s for s in traced}
    publish = by_name["stem-separate publish"]
    job = by_name["stem.job"]
    receive = by_name["stems.processed receive"]
    assert publish.parent is not None
    assert publish.parent.span_id == root.get_span_context().span_id
    assert job.parent is not None
    assert job.parent.span_id == publish.context.span_id
    assert job.kind is trace.SpanKind.CONSUMER
    for stage_name in ("download", "decode", "separate", "encode", "upload", "publish"):
        stage_span = by_name[f"stem.{stage_name}"]
        assert stage_span.parent is not None
        assert stage_span.parent.span_id == job.context.span_id
    # The result event carried the worker's context: the catalog's span is the job's child
    # (published from inside the publish stage).
    assert receive.parent is not None
    assert receive.parent.span_id in {
        job.context.span_id,
        by_name["stem.publish"].context.span_id,
    }
    assert job.attributes is not None
    assert job.attributes["stem.outcome"] == "processed"


def test_progress_events_arrive_in_order_and_no_faster_than_the_interval(
    worker_settings: Settings,
    start_worker: Callable[[Settings], Worker],
    results: Results,
    publish: Callable[..., str],
    clip: Callable[..., Path],
    stage: Callable[[Path, str, str], str],
) -> None:
    interval = 0.3
    settings = worker_settings.model_copy(
        update={"progress_interval_s": interval, "max_audio_seconds": 60.0}
    )
    # 16 s of audio = 3 overlapping 7.8 s chunks: a progress callback after each.
    source = stage(clip("flac", 16.0, rate=22050, channels=1), settings.staging_bucket, "in/l.flac")
    start_worker(settings)

    publish(Job(job_id="long", track_id="t", source_uri=source, model=MODEL))
    assert isinstance(results.wait_final("long", timeout_s=120), StemsProcessed)
    results.settle(0.5)

    progress = sorted(
        (e for e in results.for_job("long") if isinstance(e, StemsProgress)),
        key=lambda e: e.reported_at,
    )
    assert progress, "no stems.progress event"
    percents = [e.percent for e in progress]
    assert percents == sorted(percents)
    assert all(0 < p <= 100 for p in percents)
    gaps = [
        (b.reported_at - a.reported_at).total_seconds() for a, b in itertools.pairwise(progress)
    ]
    assert all(gap >= interval - 0.01 for gap in gaps), gaps
    processed = next(e for e in results.for_job("long") if isinstance(e, StemsProcessed))
    assert all(e.reported_at <= processed.completed_at for e in progress)
    assert json.loads(progress[0].model_dump_json(by_alias=True))["eventType"] == "stems.progress"


def test_progress_events_are_off_when_the_interval_is_zero(
    worker_settings: Settings,
    start_worker: Callable[[Settings], Worker],
    results: Results,
    publish: Callable[..., str],
    clip: Callable[..., Path],
    stage: Callable[[Path, str, str], str],
) -> None:
    settings = worker_settings.model_copy(update={"progress_interval_s": 0.0})
    source = stage(clip("wav", 8.0, rate=16000, channels=1), settings.staging_bucket, "in/a.wav")
    start_worker(settings)
    publish(Job(job_id="quiet", track_id="t", source_uri=source, model=MODEL))
    assert isinstance(results.wait_final("quiet"), StemsProcessed)
    # Awaited, not slept for: a whole second job goes through the same worker and its
    # publisher after the first one's events, so any progress of the first has arrived.
    publish(Job(job_id="quiet-2", track_id="t", source_uri=source, model=MODEL))
    assert isinstance(results.wait_final("quiet-2"), StemsProcessed)
    assert not [e for e in results.for_job("quiet") if isinstance(e, StemsProgress)]
