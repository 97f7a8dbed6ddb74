"""Observability of a worker: Prometheus metrics, OpenTelemetry tracing, and the
``/metrics``, ``/healthz``, ``/readyz`` endpoints on ``STEM_METRICS_PORT``.

Metric names follow Prometheus conventions (``_total`` counters, ``_seconds`` and
``_bytes`` units, bounded label sets: outcomes, error codes and stages are closed sets).
Every worker has its own :class:`Metrics` on its own registry, so tests can read them.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Final

from opentelemetry import trace
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from consumer.settings import Settings

__all__ = [
    "STAGES",
    "Health",
    "IntakeMetrics",
    "Metrics",
    "TelemetryServer",
    "configure_tracing",
]

_log = logging.getLogger(__name__)

# The *_created series (a timestamp per label set) double the scrape and no dashboard uses
# them.
disable_created_metrics()  # type: ignore[no-untyped-call]

STAGES: Final = ("download", "decode", "separate", "encode", "upload", "publish")
"""The stages of a job, as timed and traced."""

_DURATION_BUCKETS: Final = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1200)
_RATIO_BUCKETS: Final = (0.25, 0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000)
_ATTEMPT_BUCKETS: Final = (1, 2, 3, 4, 5, 10, 20, 50, 100)


class _GpuCollector(Collector):
    """GPU memory, read at scrape time (nothing when no CUDA device is in use)."""

    def collect(self) -> Iterator[Metric]:
        try:
            import torch
        except ImportError:  # pragma: no cover - torch is a dependency of the worker
            return
        if not torch.cuda.is_available() or not torch.cuda.is_initialized():  # type: ignore[no-untyped-call]
            return
        family = GaugeMetricFamily(
            "stem_gpu_memory_bytes", "GPU memory held by this worker.", labels=["device", "kind"]
        )
        for index in range(torch.cuda.device_count()):
            name = f"cuda:{index}"
            family.add_metric([name, "allocated"], float(torch.cuda.memory_allocated(index)))
            family.add_metric([name, "reserved"], float(torch.cuda.memory_reserved(index)))
            family.add_metric([name, "peak"], float(torch.cuda.max_memory_allocated(index)))
        yield family


class Metrics:
    """The worker's Prometheus metrics, on a registry of its own."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.jobs = Counter(
            "stem_jobs",
            "Jobs by outcome: processed, duplicate (manifest existed), cancelled, dead_lettered, "
            "retried.",
            ["outcome", "error_code"],
            registry=r,
        )
        self.job_duration = Histogram(
            "stem_job_duration_seconds",
            "Wall time of one delivery, from pull to ack/nack.",
            ["outcome"],
            buckets=_DURATION_BUCKETS,
            registry=r,
        )
        self.stage_duration = Histogram(
            "stem_stage_duration_seconds",
            "Time in each stage of a job.",
            ["stage"],
            buckets=_DURATION_BUCKETS,
            registry=r,
        )
        self.queue_wait = Histogram(
            "stem_queue_wait_seconds",
            "From the job's publish time to the start of this delivery.",
            buckets=_DURATION_BUCKETS,
            registry=r,
        )
        self.audio_seconds = Counter(
            "stem_audio_seconds", "Seconds of source audio separated.", registry=r
        )
        self.realtime_factor = Histogram(
            "stem_realtime_factor",
            "Audio seconds per wall second of a processed job (higher is faster).",
            buckets=_RATIO_BUCKETS,
            registry=r,
        )
        self.device_seconds = Counter(
            "stem_device_seconds",
            "Separation wall time on the device, every attempt (usage.deviceSeconds).",
            registry=r,
        )
        self.cost_usd = Counter(
            "stem_cost_usd",
            "usage.costUsd of every attempt (only when STEM_COST_PER_HOUR is set).",
            registry=r,
        )
        self.reused = Counter(
            "stem_jobs_reused",
            "Processed jobs answered by server-side copies of an earlier job's stems "
            "(same reuse key): no separation ran.",
            registry=r,
        )
        self.in_flight = Gauge("stem_jobs_in_flight", "Deliveries being worked on.", registry=r)
        self.delivery_attempt = Histogram(
            "stem_delivery_attempt",
            "Pub/Sub delivery attempt of each delivery (1 = first).",
            buckets=_ATTEMPT_BUCKETS,
            registry=r,
        )
        self.model_load = Gauge(
            "stem_model_load_seconds", "How long loading the model took.", registry=r
        )
        self.model_info = Gauge(
            "stem_model_info",
            "The model this worker serves (value 1).",
            ["model", "model_version", "device"],
            registry=r,
        )
        r.register(_GpuCollector())

    def render(self) -> bytes:
        return generate_latest(self.registry)


class IntakeMetrics:
    """``stemctl intake``'s Prometheus metrics, on a registry of its own."""

    OUTCOMES: Final = ("job", "ignored", "dead_lettered", "retried")

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.notifications = Counter(
            "stem_intake",
            "Upload notifications by outcome: job (published to stem-separate), ignored "
            "(not audio, not a finalised upload), dead_lettered (metadata makes no valid "
            "job), retried (publish not confirmed; nacked).",
            ["outcome"],
            registry=self.registry,
        )
        for outcome in self.OUTCOMES:  # every series exists from the start, at 0
            self.notifications.labels(outcome)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class Health:
    """Liveness and readiness, set by the worker as it goes through its phases."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.model_loaded = False
        self.pulling = False
        self.stopping = False

    def live(self) -> bool:
        """The process is not wedged: before start-up completes, or while pulling."""
        with self._lock:
            return self.pulling or not self.model_loaded or self.stopping

    def ready(self) -> tuple[bool, str]:
        with self._lock:
            if self.stopping:
                return False, "shutting down"
            if not self.model_loaded:
                return False, "model not loaded"
            if not self.pulling:
                return False, "not pulling"
            return True, "ready"

    def set(self, **flags: bool) -> None:
        with self._lock:
            for name, value in flags.items():
                if not hasattr(self, name):
                    raise AttributeError(name)
                setattr(self, name, value)


class TelemetryServer:
    """``/metrics``, ``/healthz`` and ``/readyz`` over HTTP (port 0 = any free port)."""

    def __init__(
        self, metrics: Metrics | IntakeMetrics, health: Health, port: int, host: str = "0.0.0.0"
    ):
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                pass  # probes every few seconds would drown the logs

            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    self._send(200, owner.metrics.render(), "text/plain; version=0.0.4")
                elif path == "/healthz":
                    ok = owner.health.live()
                    self._send(200 if ok else 503, b"ok\n" if ok else b"pull loop dead\n")
                elif path == "/readyz":
                    ok, why = owner.health.ready()
                    self._send(200 if ok else 503, (why + "\n").encode())
                else:
                    self._send(404, b"not found\n")

            def _send(self, status: int, body: bytes, ctype: str = "text/plain") -> None:
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.metrics = metrics
        self.health = health
        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self.port: int = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="telemetry-http", daemon=True
        )

    def start(self) -> TelemetryServer:
        self._thread.start()
        _log.info("telemetry endpoints up", extra={"port": self.port})
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> TelemetryServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def configure_tracing(settings: Settings) -> None:
    """Install a tracer provider when the standard ``OTEL_*`` variables ask for one.

    ``OTEL_TRACES_EXPORTER=otlp`` (or an ``OTEL_EXPORTER_OTLP_*ENDPOINT`` set) exports over
    OTLP/HTTP; ``console`` prints spans; unset or ``none`` installs nothing — the API's
    no-op tracer still carries the incoming ``traceparent`` through to result events.
    """
    exporter_name = settings.otel_traces_exporter
    if exporter_name is None:
        exporter_name = "otlp" if settings.otel_exporter_otlp_endpoint else "none"
    if exporter_name == "none":
        return
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import (
        BatchSpanProcessor,
        ConsoleSpanExporter,
        SpanExporter,
    )

    exporter: SpanExporter
    if exporter_name == "otlp":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter()  # endpoint, headers: the standard OTEL_* variables
    elif exporter_name == "console":
        exporter = ConsoleSpanExporter()
    else:
        raise RuntimeError(f"OTEL_TRACES_EXPORTER={exporter_name}: use otlp, console or none")
    provider = TracerProvider(resource=Resource.create({SERVICE_NAME: settings.otel_service_name}))
    provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
