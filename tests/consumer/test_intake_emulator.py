"""Uploads as a job source, end to end: fake-gcs-server publishes real ``OBJECT_FINALIZE``
notifications to the Pub/Sub emulator, an in-process ``stemctl intake`` turns them into
jobs, an in-process worker separates them with real Demucs on the tiny model.

Every test here runs in the one project fake-gcs-server notifies (``uploads_settings``).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from consumer.intake import upload_job_id
from consumer.runner import Worker
from consumer.separation import DemucsSeparator
from consumer.settings import Settings
from consumer.telemetry import IntakeMetrics
from devkit.emulators import wait_for
from stem_contracts import Job, StemsProcessed, decode_job
from stemctl.cli import app
from tests.support.helpers import pull
from tests.support.spans import EXPORTER
from tests.support.worker_fixtures import Results

pytestmark = pytest.mark.integration

StartWorker = Callable[[Settings], Worker]
StartIntake = Callable[[Settings], tuple[Worker, IntakeMetrics]]


@pytest.fixture
def settings(uploads_settings: Settings) -> Settings:
    """The whole module runs in the project whose staging bucket is notified."""
    return uploads_settings


def upload(gcs: Any, bucket: str, name: str, data: bytes, **metadata: str) -> str:
    """Upload like an ingestion client would; returns the new object's generation."""
    blob = gcs.bucket(bucket).blob(name)
    if metadata:
        blob.metadata = metadata
    blob.upload_from_string(data)
    return str(blob.generation)


class Tap:
    """A subscription of the test's own on a topic: what was published to it."""

    def __init__(self, subscriber: Any, settings: Settings, topic: str, name: str) -> None:
        self._subscriber = subscriber
        self.path = subscriber.subscription_path(settings.project, name)
        subscriber.create_subscription(
            request={"name": self.path, "topic": f"projects/{settings.project}/topics/{topic}"}
        )

    def messages(self, count: int = 100, timeout_s: float = 1.0) -> list[Any]:
        return [r.message for r in pull(self._subscriber, self.path, count, timeout_s=timeout_s)]


@pytest.fixture
def jobs_tap(worker_settings: Settings, pubsub_clients: Any) -> Tap:
    """Every job published to stem-separate (created before any upload)."""
    return Tap(pubsub_clients[1], worker_settings, worker_settings.jobs_topic, "jobs-tap")


@pytest.fixture
def uploads_tap(worker_settings: Settings, pubsub_clients: Any) -> Tap:
    """Every notification fake-gcs-server publishes (beside the intake's subscription)."""
    return Tap(pubsub_clients[1], worker_settings, worker_settings.uploads_topic, "uploads-tap")


def intake_count(metrics: IntakeMetrics, outcome: str) -> float:
    value = metrics.registry.get_sample_value("stem_intake_total", {"outcome": outcome})
    return value or 0.0


def _job_of(span: Any) -> object:
    return (span.attributes or {}).get("stem.job_id")


@pytest.fixture
def clean_spans() -> None:
    EXPORTER.clear()


def test_an_upload_becomes_a_job_whose_stems_follow_the_object_metadata(
    worker_settings: Settings,
    start_worker: StartWorker,
    start_intake: StartIntake,
    results: Results,
    clip: Callable[..., Path],
    gcs: Any,
    unique: str,
    clean_spans: None,
) -> None:
    start_worker(worker_settings)
    _, metrics = start_intake(worker_settings)
    bucket, name = worker_settings.staging_bucket, f"incoming/{unique}/My Song (live).wav"

    generation = upload(
        gcs,
        bucket,
        name,
        clip("wav", 1.5).read_bytes(),
        trackId="trk-42",
        format="flac",
        stems="vocals, drums",
        correlationId="corr-up-1",
    )
    job_id = upload_job_id(bucket, name, generation)
    event = results.wait_final(job_id)

    # Then: the stems are the ones the metadata asked for, for the metadata's track.
    assert isinstance(event, StemsProcessed), event
    assert event.track_id == "trk-42"
    assert event.correlation_id == "corr-up-1"
    assert [s.name for s in event.stems] == ["drums", "vocals"]
    assert {s.format for s in event.stems} == {"flac"}
    assert event.source.uri == f"gs://{bucket}/{name}"
    assert event.stems[0].uri.startswith(
        f"gs://{worker_settings.output_bucket}/stems/trk-42/{job_id}/"
    )
    assert intake_count(metrics, "job") == 1
    # And the intake's span began the trace the worker's job span continues.
    spans = EXPORTER.get_finished_spans()
    (intake_span,) = (s for s in spans if s.name == "stem.intake" and _job_of(s) == job_id)
    (job_span,) = (s for s in spans if s.name == "stem.job" and _job_of(s) == job_id)
    assert intake_span.parent is None
    assert job_span.context.trace_id == intake_span.context.trace_id


def test_a_file_name_becomes_the_track_id_when_the_metadata_has_no_valid_one(
    worker_settings: Settings,
    start_intake: StartIntake,
    jobs_tap: Tap,
    gcs: Any,
    unique: str,
) -> None:
    start_intake(worker_settings)
    name = f"incoming/{unique}/Über Track #1.mp3"
    upload(gcs, worker_settings.staging_bucket, name, b"not decoded here", trackId="bad id!")

    jobs: list[Job] = []

    def published() -> bool:
        jobs.extend(decode_job(m.data) for m in jobs_tap.messages())
        return bool(jobs)

    assert wait_for(published, 20)
    assert jobs[0].track_id == "ber-Track-1"
    assert jobs[0].reuse is True
    assert jobs[0].format == "mp3"


def test_a_redelivered_notification_is_the_same_job_and_a_new_generation_a_new_one(
    worker_settings: Settings,
    start_worker: StartWorker,
    start_intake: StartIntake,
    results: Results,
    jobs_tap: Tap,
    uploads_tap: Tap,
    pubsub_clients: Any,
    clip: Callable[..., Path],
    gcs: Any,
    unique: str,
    separator: DemucsSeparator,
) -> None:
    start_worker(worker_settings)
    start_intake(worker_settings)
    bucket, name = worker_settings.staging_bucket, f"incoming/{unique}/twice.flac"
    separations = separator.separations

    first_generation = upload(gcs, bucket, name, clip("flac", 1.0).read_bytes(), format="wav")
    first = upload_job_id(bucket, name, first_generation)
    assert isinstance(results.wait_final(first), StemsProcessed)
    # When: Pub/Sub delivers the very same notification again (at-least-once).
    [notification] = uploads_tap.messages(1, timeout_s=10)
    publisher = pubsub_clients[0]
    topic = publisher.topic_path(worker_settings.project, worker_settings.uploads_topic)
    publisher.publish(topic, notification.data, **notification.attributes).result()
    results.settle(3.0)

    # Then: two jobs were published, both the same job, and it was separated once.
    jobs = [decode_job(m.data) for m in jobs_tap.messages(2, timeout_s=10)]
    assert [job.job_id for job in jobs] == [first, first]
    processed = [e for e in results.for_job(first) if isinstance(e, StemsProcessed)]
    assert len(processed) == 2
    assert processed[0].stems == processed[1].stems
    assert separator.separations == separations + 1

    # When: the object is overwritten (a new generation), with other bytes.
    second_generation = upload(gcs, bucket, name, clip("flac", 1.2).read_bytes(), format="wav")
    second = upload_job_id(bucket, name, second_generation)
    assert second != first
    assert isinstance(results.wait_final(second), StemsProcessed)
    assert separator.separations == separations + 2


def test_an_object_that_is_not_audio_is_acked_and_counted_and_makes_no_job(
    worker_settings: Settings,
    start_intake: StartIntake,
    jobs_tap: Tap,
    gcs: Any,
    unique: str,
) -> None:
    intake, metrics = start_intake(worker_settings)

    upload(gcs, worker_settings.staging_bucket, f"incoming/{unique}/notes.txt", b"liner notes")

    assert wait_for(lambda: intake_count(metrics, "ignored") == 1, 20)
    assert intake_count(metrics, "job") == 0
    assert jobs_tap.messages(timeout_s=1.0) == []
    # And it was acked: with the intake stopped, nothing comes back on its subscription.
    intake.request_stop("test")
    subscriber = jobs_tap._subscriber
    uploads = subscriber.subscription_path(
        worker_settings.project, worker_settings.uploads_subscription
    )
    assert pull(subscriber, uploads, 1, timeout_s=12.0, ack=False) == []


def test_invalid_metadata_dead_letters_the_notification_with_a_reason_dlq_ls_shows(
    worker_settings: Settings,
    start_intake: StartIntake,
    jobs_tap: Tap,
    gcs: Any,
    unique: str,
) -> None:
    _, metrics = start_intake(worker_settings)
    bucket, name = worker_settings.staging_bucket, f"incoming/{unique}/song.wav"

    upload(gcs, bucket, name, b"RIFF", trackId="trk-ogg", format="ogg")

    assert wait_for(lambda: intake_count(metrics, "dead_lettered") == 1, 20)
    assert jobs_tap.messages(timeout_s=1.0) == []
    listed = CliRunner().invoke(
        app,
        ["dlq", "ls", "--json"],
        env={"GOOGLE_CLOUD_PROJECT": worker_settings.project},
        catch_exceptions=False,
    )
    assert listed.exit_code == 0, listed.output
    [letter] = [json.loads(line) for line in listed.stdout.splitlines()]
    assert letter["errorCode"] == "invalid_message"
    assert "format" in letter["errorMessage"]
    assert f"gs://{bucket}/{name}" in letter["errorMessage"]
