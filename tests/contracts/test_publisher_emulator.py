"""JobPublisher and ResultSubscriber against the real Pub/Sub emulator and fake-gcs-server."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import google_crc32c
import pytest

from stem_contracts import (
    Job,
    JobPublisher,
    ResultSubscriber,
    StagingError,
    StemsFailed,
    StemsProcessing,
    decode_job,
    encode,
)
from tests.support.helpers import pull

pytestmark = pytest.mark.integration


@pytest.fixture
def jobs(provisioned: Any, pubsub_clients: Any, gcs: Any) -> JobPublisher:
    publisher, _ = pubsub_clients
    return JobPublisher(
        provisioned.project,
        topic=provisioned.jobs_topic,
        staging_bucket=provisioned.staging_bucket,
        publisher=publisher,
        storage_client=gcs,
    )


def test_published_job_arrives_with_its_data_and_attributes(
    jobs: JobPublisher, provisioned: Any, pubsub_clients: Any
) -> None:
    _, subscriber = pubsub_clients
    job = Job(job_id="job-1", track_id="track-1", source_uri="gs://some-bucket/a.wav")

    message_id = jobs.publish(job)

    [received] = pull(
        subscriber, subscriber.subscription_path(provisioned.project, "stem-separate"), 1
    )
    assert received.message.message_id == message_id
    assert decode_job(received.message.data) == job
    # (plus traceparent/tracestate when a tracer provider records the publish span)
    attributes = dict(received.message.attributes)
    assert {k: v for k, v in attributes.items() if k not in ("traceparent", "tracestate")} == {
        "jobId": "job-1",
        "trackId": "track-1",
        "schemaVersion": "1",
    }


def test_traceparent_attribute_is_injected_when_a_span_is_active(
    jobs: JobPublisher, provisioned: Any, pubsub_clients: Any
) -> None:
    from opentelemetry.sdk.trace import TracerProvider

    _, subscriber = pubsub_clients
    tracer = TracerProvider().get_tracer("test")
    with tracer.start_as_current_span("ingest") as span:
        jobs.publish(Job(job_id="job-t", track_id="trk", source_uri="gs://some-bucket/a.wav"))
        trace_id = format(span.get_span_context().trace_id, "032x")

    [received] = pull(
        subscriber, subscriber.subscription_path(provisioned.project, "stem-separate"), 1
    )
    traceparent = received.message.attributes["traceparent"]
    assert traceparent.split("-")[1] == trace_id


def test_submit_file_stages_the_exact_bytes_with_crc32c_and_content_type(
    jobs: JobPublisher, provisioned: Any, pubsub_clients: Any, gcs: Any, tmp_path: Path
) -> None:
    _, subscriber = pubsub_clients
    audio = tmp_path / "Song Name.FLAC"
    payload = bytes(range(256)) * 4000  # not audio: staging does not decode
    audio.write_bytes(payload)

    submitted = jobs.submit_file(audio, track_id="trk-9", job_id="job-9", format="wav")

    assert submitted.job.source_uri == (
        f"gs://{provisioned.staging_bucket}/uploads/trk-9/job-9/source.flac"
    )
    blob = gcs.bucket(provisioned.staging_bucket).get_blob("uploads/trk-9/job-9/source.flac")
    assert blob.download_as_bytes() == payload
    expected_crc = google_crc32c.Checksum(payload).digest()
    import base64

    assert base64.b64decode(blob.crc32c) == expected_crc
    assert blob.content_type == "audio/flac"
    [received] = pull(
        subscriber, subscriber.subscription_path(provisioned.project, "stem-separate"), 1
    )
    job = decode_job(received.message.data)
    assert job.source_uri == submitted.job.source_uri
    assert job.format == "wav"


def test_submit_file_refuses_unsupported_extensions_before_uploading(
    jobs: JobPublisher, tmp_path: Path, gcs: Any, provisioned: Any
) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("hello")
    with pytest.raises(StagingError, match=r"only \.wav, \.mp3 and \.flac"):
        jobs.submit_file(path, track_id="trk-1")
    assert list(gcs.list_blobs(provisioned.staging_bucket)) == []


def test_submit_file_validates_the_job_before_uploading(
    jobs: JobPublisher, tmp_path: Path, gcs: Any, provisioned: Any
) -> None:
    path = tmp_path / "a.wav"
    path.write_bytes(b"RIFF")
    with pytest.raises(ValueError, match=r"mp3_bitrate|mp3Bitrate"):
        jobs.submit_file(path, track_id="trk-1", mp3_bitrate=1000)
    assert list(gcs.list_blobs(provisioned.staging_bucket)) == []


def test_submit_file_refuses_impossible_output_options_before_uploading(
    jobs: JobPublisher, tmp_path: Path, gcs: Any, provisioned: Any
) -> None:
    path = tmp_path / "a.wav"
    path.write_bytes(b"RIFF")
    with pytest.raises(ValueError, match="sampleFormat: float32 is not available for flac"):
        jobs.submit_file(path, track_id="trk-1", format="flac", sample_format="float32")
    assert list(gcs.list_blobs(provisioned.staging_bucket)) == []


def test_cancel_writes_the_jobs_marker_in_the_output_bucket(
    provisioned: Any, pubsub_clients: Any, gcs: Any
) -> None:
    publisher, _ = pubsub_clients
    jobs = JobPublisher(
        provisioned.project,
        output_bucket=provisioned.output_bucket,
        publisher=publisher,
        storage_client=gcs,
    )

    uri = jobs.cancel("job-7", reason="wrong take")
    jobs.cancel("job-7")  # again: harmless

    assert uri == f"gs://{provisioned.output_bucket}/_cancel/job-7"
    [blob] = gcs.list_blobs(provisioned.output_bucket)
    assert blob.name == "_cancel/job-7"
    assert json.loads(blob.download_as_bytes())["jobId"] == "job-7"
    with pytest.raises(ValueError, match="not a job id"):
        jobs.cancel("../job-7")


def test_cancel_needs_an_output_bucket(jobs: JobPublisher) -> None:
    with pytest.raises(ValueError, match="no output bucket"):
        jobs.cancel("job-7")


def test_result_subscriber_dispatches_by_type_and_survives_a_malformed_event(
    provisioned: Any, pubsub_clients: Any, caplog: pytest.LogCaptureFixture
) -> None:
    publisher, subscriber = pubsub_clients
    topic = publisher.topic_path(provisioned.project, provisioned.results_topic)
    sub_path = subscriber.subscription_path(provisioned.project, "catalog")
    subscriber.create_subscription(request={"name": sub_path, "topic": topic})

    processing: list[StemsProcessing] = []
    failed: list[StemsFailed] = []
    done = threading.Event()

    def on_failed(event: StemsFailed) -> None:
        failed.append(event)
        done.set()

    bad_id = publisher.publish(topic, b"{not json").result()
    publisher.publish(topic, json.dumps({"eventType": "stems.processing"}).encode()).result()
    data, attrs = encode(StemsProcessing(job_id="j1", track_id="t1", attempt=1))
    publisher.publish(topic, data, **attrs).result()
    failed_event = StemsFailed.model_validate(
        {
            "jobId": "j1",
            "trackId": "t1",
            "attempt": 1,
            "final": True,
            "failedAt": "2026-11-22T10:00:00Z",
            "error": {"code": "corrupt_audio", "message": "bad", "retryable": False},
        }
    )
    data, attrs = encode(failed_event)
    publisher.publish(topic, data, **attrs).result()

    with (
        caplog.at_level("ERROR"),
        ResultSubscriber(
            provisioned.project,
            "catalog",
            on_processing=processing.append,
            on_failed=on_failed,
            subscriber=subscriber,
        ),
    ):
        assert done.wait(20)
        # ordering is not guaranteed: give the processing event a moment too
        deadline = threading.Event()
        for _ in range(50):
            if processing:
                break
            deadline.wait(0.1)

    assert [e.job_id for e in processing] == ["j1"]
    assert failed == [failed_event]
    malformed = [r for r in caplog.records if r.getMessage() == "malformed result event dropped"]
    assert {getattr(r, "messageId", None) for r in malformed} >= {bad_id}
    assert len(malformed) == 2
