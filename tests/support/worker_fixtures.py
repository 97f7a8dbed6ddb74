"""Fixtures for worker tests: the tiny local model, an in-process worker, audio clips,
and a results subscription that collects events per job — all on the real emulators.

A module, not a conftest, because several suites use them (``tests/consumer``,
``tests/reliability``, ``tests/chaos``): their conftests import the fixtures they need.
The root conftest cannot register it for everyone, since ``tests/contracts`` also runs
in a virtualenv without the fleet packages."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

import pytest
import soundfile as sf

from consumer.audio import encode as encode_audio
from consumer.runner import Worker
from consumer.separation import DemucsSeparator
from consumer.settings import Settings
from consumer.telemetry import Health, IntakeMetrics, Metrics, TelemetryServer
from devkit.models import write_local_model
from devkit.synth import multi_instrument_mix
from stem_contracts import Job, ResultEvent, StemsFailed, StemsProcessed, decode_event, encode
from tests.support.helpers import pull

MODEL = "htdemucs_6s"


@pytest.fixture(scope="session")
def model_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small HTDemucs with htdemucs_6s's sources, saved where get_model(repo=) reads it."""
    return write_local_model(tmp_path_factory.mktemp("models"), MODEL, size="tiny")


@pytest.fixture(scope="session")
def separator(model_repo: Path) -> DemucsSeparator:
    """One loaded model for the session (its ``separations`` counter only grows)."""
    return DemucsSeparator.load(MODEL, repo=model_repo, device="cpu")


@pytest.fixture
def worker_settings(provisioned: Settings, model_repo: Path) -> Settings:
    return provisioned.model_copy(
        update={
            "model": MODEL,
            "model_repo": model_repo,
            "max_audio_seconds": 10.0,
            "max_audio_bytes": 5 * 1024 * 1024,
            "shutdown_grace_s": 5.0,
        }
    )


@pytest.fixture
def start_worker(
    separator: DemucsSeparator,
) -> Iterator[Callable[[Settings], Worker]]:
    """Start an in-process worker (real streaming pull, real Demucs) for given settings."""
    from consumer.app import build_worker

    running: list[tuple[Worker, threading.Thread]] = []

    def start(settings: Settings) -> Worker:
        worker = build_worker(settings, separator)
        thread = threading.Thread(target=worker.run, daemon=True)
        thread.start()
        assert worker.ready.wait(10), "worker did not become ready"
        running.append((worker, thread))
        return worker

    yield start
    for worker, thread in running:
        worker.request_stop("test over")
        thread.join(30)


@pytest.fixture
def start_intake() -> Iterator[Callable[[Settings], tuple[Worker, IntakeMetrics]]]:
    """Start an in-process ``stemctl intake`` (real streaming pull of stem-uploads)."""
    from consumer.intake import build_intake

    running: list[tuple[Worker, threading.Thread]] = []

    def start(settings: Settings) -> tuple[Worker, IntakeMetrics]:
        metrics = IntakeMetrics()
        intake = build_intake(settings, metrics=metrics)
        thread = threading.Thread(target=intake.run, daemon=True)
        thread.start()
        assert intake.ready.wait(10), "intake did not become ready"
        running.append((intake, thread))
        return intake, metrics

    yield start
    for intake, thread in running:
        intake.request_stop("test over")
        thread.join(30)


class StartObservedWorker(Protocol):
    def __call__(
        self, settings: Settings, *, load_model: bool = False
    ) -> tuple[Worker, Metrics, TelemetryServer]: ...


@pytest.fixture
def observed_worker(separator: DemucsSeparator) -> Iterator[StartObservedWorker]:
    """An in-process worker with its metrics and telemetry endpoints on a free port.

    ``load_model=True`` loads the model as ``stemctl worker`` does (``load_separator``, a
    second load of the tiny model), so ``stem_model_load_seconds`` and ``stem_model_info``
    are set too; otherwise the session's loaded model is reused.
    """
    from consumer.app import build_worker, load_separator

    started: list[tuple[Worker, threading.Thread, TelemetryServer]] = []

    def start(
        settings: Settings, *, load_model: bool = False
    ) -> tuple[Worker, Metrics, TelemetryServer]:
        metrics, health = Metrics(), Health()
        server = TelemetryServer(metrics, health, 0, host="127.0.0.1").start()
        model = load_separator(settings, metrics) if load_model else separator
        health.set(model_loaded=True)
        worker = build_worker(settings, model, metrics=metrics, health=health)
        thread = threading.Thread(target=worker.run, daemon=True)
        thread.start()
        assert worker.ready.wait(10)
        started.append((worker, thread, server))
        return worker, metrics, server

    yield start
    for worker, thread, server in started:
        worker.request_stop("test over")
        thread.join(30)
        server.stop()


@pytest.fixture
def clip(tmp_path: Path) -> Callable[..., Path]:
    """Write a short generated multi-instrument clip in a given format."""

    def make(fmt: str = "wav", seconds: float = 1.5, rate: int = 44100, channels: int = 2) -> Path:
        mix = multi_instrument_mix(seconds, rate)[:channels]
        path = tmp_path / f"clip-{fmt}-{seconds}-{rate}-{channels}.{fmt}"
        if fmt == "mp3":
            encode_audio(mix, rate, "mp3", path)
        else:
            sf.write(path, mix.T, rate, subtype="PCM_16", format=fmt.upper())
        return path

    return make


@pytest.fixture
def stage(gcs: Any) -> Callable[[Path, str, str], str]:
    """Upload a local file to bucket/name on fake-gcs-server; returns its gs:// URI."""

    def upload(path: Path, bucket: str, name: str) -> str:
        gcs.bucket(bucket).blob(name).upload_from_filename(str(path))
        return f"gs://{bucket}/{name}"

    return upload


class Results:
    """Collects result events and dead letters of the test's project."""

    def __init__(self, subscriber: Any, results_sub: str, dlq_sub: str) -> None:
        self._subscriber = subscriber
        self._results_sub = results_sub
        self._dlq_sub = dlq_sub
        self.events: list[ResultEvent] = []
        self.dead_letters: list[Any] = []

    def _drain(self) -> None:
        for received in pull(self._subscriber, self._results_sub, 100, timeout_s=0.2):
            self.events.append(decode_event(received.message.data))
        self.dead_letters += [
            r.message for r in pull(self._subscriber, self._dlq_sub, 100, timeout_s=0.2)
        ]

    def for_job(self, job_id: str) -> list[ResultEvent]:
        return [e for e in self.events if e.job_id == job_id]

    def wait_final(self, job_id: str, timeout_s: float = 60.0) -> ResultEvent:
        """The job's final event: ``stems.processed`` or ``stems.failed`` with final=true."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self._drain()
            for event in self.for_job(job_id):
                if isinstance(event, StemsProcessed) or (
                    isinstance(event, StemsFailed) and event.final
                ):
                    return event
            time.sleep(0.1)
        raise AssertionError(f"no final event for {job_id}; got {self.for_job(job_id)}")

    def wait_dead_letter(self, job_id: str, timeout_s: float = 30.0) -> Any:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self._drain()
            found = [m for m in self.dead_letters if m.attributes.get("jobId") == job_id]
            if found:
                return found[0]
            time.sleep(0.1)
        raise AssertionError(f"{job_id} not in stem-dlq")

    def settle(self, seconds: float = 1.0) -> None:
        """Collect whatever else arrives within ``seconds``."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self._drain()
            time.sleep(0.1)


@pytest.fixture
def results(worker_settings: Settings, pubsub_clients: Any) -> Results:
    """Subscriptions on stem-results (created before any job is published) and stem-dlq."""
    _, subscriber = pubsub_clients
    project = worker_settings.project
    path = subscriber.subscription_path(project, "test-results")
    subscriber.create_subscription(
        request={"name": path, "topic": f"projects/{project}/topics/stem-results"}
    )
    return Results(subscriber, path, subscriber.subscription_path(project, "stem-dlq"))


@pytest.fixture
def publish(worker_settings: Settings, pubsub_clients: Any) -> Callable[..., str]:
    """Publish a Job (or raw bytes + attributes) to stem-separate; returns the message id."""
    publisher, _ = pubsub_clients
    topic = publisher.topic_path(worker_settings.project, worker_settings.jobs_topic)

    def send(job: Job | bytes, **attributes: str) -> str:
        if isinstance(job, Job):
            data, attrs = encode(job)
            attributes = {**attrs, **attributes}
        else:
            data = job
        message_id: str = publisher.publish(topic, data, **attributes).result()
        return message_id

    return send
