"""The intake's decision, as pure logic: which notification is which job, which is none,
which is dead-lettered (end to end on the emulators: ``test_intake_emulator.py``)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from typing import Any

import pytest

from consumer.delivery import Delivery, Outcome
from consumer.errors import InvalidMessage
from consumer.intake import (
    Skipped,
    UploadIntake,
    job_for_notification,
    track_id_for,
    upload_job_id,
)
from consumer.settings import Settings
from consumer.telemetry import IntakeMetrics
from stem_contracts import ID_PATTERN, Job
from tests.support.fakes import RecordingEventPublisher

SETTINGS = Settings(staging_bucket="stage")


def _notification(
    name: str = "incoming/song.wav",
    *,
    generation: str = "17",
    event: str = "OBJECT_FINALIZE",
    bucket: str = "stage",
    **metadata: str,
) -> tuple[dict[str, str], bytes]:
    """What fake-gcs-server (and GCS) publish, as seen in the experiment of issue 13."""
    attributes = {
        "eventType": event,
        "bucketId": bucket,
        "objectId": name,
        "objectGeneration": generation,
        "payloadFormat": "JSON_API_V1",
    }
    resource: dict[str, Any] = {
        "kind": "storage#object",
        "bucket": bucket,
        "name": name,
        "generation": generation,
        "timeCreated": "2026-12-02T13:29:08.515Z",
    }
    if metadata:
        resource["metadata"] = metadata
    return attributes, json.dumps(resource).encode()


def _job(*args: Any, **kwargs: Any) -> Job:
    decision = job_for_notification(*_notification(*args, **kwargs), SETTINGS)
    assert isinstance(decision, Job), decision
    return decision


def test_metadata_keys_become_the_job_fields() -> None:
    job = _job(
        trackId="trk-1",
        format="flac",
        stems="vocals, drums",
        mp3Bitrate="192",
        model="htdemucs_6s",
        correlationId="c-1",
        reuse="false",
    )
    assert job.track_id == "trk-1"
    assert (job.format, job.stems, job.mp3_bitrate) == ("flac", ("vocals", "drums"), 192)
    assert (job.correlation_id, job.reuse, job.model) == ("c-1", False, "htdemucs_6s")
    assert job.source_uri == "gs://stage/incoming/song.wav"
    assert job.submitted_at is not None


def test_the_output_options_come_from_the_metadata_too() -> None:
    job = _job(format="wav", sampleFormat="float32", clipMode="none", sampleRate="48000")
    assert (job.sample_format, job.clip_mode, job.sample_rate) == ("float32", "none", 48000)
    assert _job(sampleRate="source").sample_rate == "source"


def test_without_metadata_the_job_has_the_contract_defaults() -> None:
    job = _job("incoming/a/Song.MP3")
    assert (job.format, job.stems, job.mp3_bitrate, job.reuse) == ("mp3", None, 320, True)
    assert job.track_id == "Song"
    assert job.output_uri is None


def test_without_a_model_in_the_metadata_the_job_asks_for_the_fleet_s_model() -> None:
    settings = Settings(staging_bucket="stage", model="htdemucs_ft")
    decision = job_for_notification(*_notification(), settings)
    assert isinstance(decision, Job)
    assert decision.model == "htdemucs_ft"


def test_the_job_id_is_the_same_for_the_same_generation_and_new_for_a_new_one() -> None:
    assert _job(generation="1").job_id == _job(generation="1").job_id
    assert _job(generation="1").job_id != _job(generation="2").job_id
    assert upload_job_id("b", "x/y", "1") != upload_job_id("b", "x", "y/1")
    assert _job().job_id == upload_job_id("stage", "incoming/song.wav", "17")


@pytest.mark.parametrize(
    ("name", "given", "expected"),
    [
        ("incoming/My Song (live).wav", None, "My-Song-live"),
        ("incoming/x.wav", "trk-ok_1.2", "trk-ok_1.2"),
        ("incoming/x.wav", "no spaces allowed", "x"),
        ("incoming/..wav", None, None),  # nothing usable: the job id stands in
        ("incoming/" + "a" * 300 + ".wav", None, "a" * 128),
    ],
)
def test_the_track_id_is_the_metadata_s_when_valid_else_the_file_name_made_valid(
    name: str, given: str | None, expected: str | None
) -> None:
    metadata = {"trackId": given} if given is not None else {}
    track = track_id_for(name, metadata, "upload-1")
    assert track == (expected or "upload-1")
    assert re.match(ID_PATTERN, track)


@pytest.mark.parametrize(
    ("notification", "why"),
    [
        (_notification("incoming/notes.txt"), "not a .wav"),
        (_notification("incoming/cover.jpg"), "not a .wav"),
        (_notification(event="OBJECT_DELETE"), "not OBJECT_FINALIZE"),
        (_notification("elsewhere/song.wav"), "outside the uploads prefix"),
        (_notification(bucket="other"), "outside the uploads prefix"),
    ],
)
def test_notifications_that_are_no_job_are_skipped_with_a_reason(
    notification: tuple[dict[str, str], bytes], why: str
) -> None:
    decision = job_for_notification(*notification, SETTINGS)
    assert isinstance(decision, Skipped)
    assert why in decision.reason


@pytest.mark.parametrize(
    ("metadata", "named"),
    [
        ({"format": "ogg"}, "format"),
        ({"mp3Bitrate": "100"}, "mp3Bitrate"),
        ({"stems": "vocals,kazoo"}, "kazoo"),
        ({"reuse": "perhaps"}, "reuse"),
        ({"model": "not a model!"}, "model"),
    ],
)
def test_invalid_metadata_is_an_invalid_message_naming_the_field(
    metadata: dict[str, str], named: str
) -> None:
    with pytest.raises(InvalidMessage, match=named) as raised:
        job_for_notification(*_notification(**metadata), SETTINGS)
    assert "gs://stage/incoming/song.wav" in raised.value.message


def test_a_notification_without_the_object_resource_is_an_invalid_message() -> None:
    attributes, _ = _notification()
    with pytest.raises(InvalidMessage, match="JSON_API_V1"):
        job_for_notification(attributes, b"", SETTINGS)


def test_the_intake_runs_without_torch_or_demucs() -> None:
    code = (
        "import sys, consumer.intake, stemctl.cli; "
        "bad = [m for m in ('torch', 'demucs') if m in sys.modules]; "
        "sys.exit(f'imported {bad}') if bad else None"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr


class _Jobs:
    """Stands in for JobPublisher in these unit tests: records, or fails to confirm."""

    def __init__(self, *, fail: bool = False) -> None:
        self.published: list[Job] = []
        self._fail = fail

    def publish(self, job: Job) -> str:
        if self._fail:
            raise TimeoutError("no confirmation (test)")
        self.published.append(job)
        return "m-1"


def _intake(jobs: _Jobs, events: RecordingEventPublisher) -> tuple[UploadIntake, IntakeMetrics]:
    metrics = IntakeMetrics()
    intake = UploadIntake(SETTINGS, jobs=jobs, events=events, metrics=metrics)  # type: ignore[arg-type]
    return intake, metrics


def _delivery(*args: Any, message_id: str = "n-1", attempt: int = 1, **kwargs: Any) -> Delivery:
    attributes, data = _notification(*args, **kwargs)
    return Delivery(data, attributes, message_id=message_id, delivery_attempt=attempt)


def _count(metrics: IntakeMetrics, outcome: str) -> float:
    return metrics.registry.get_sample_value("stem_intake_total", {"outcome": outcome}) or 0.0


def test_a_job_whose_publish_is_not_confirmed_is_nacked_so_the_notification_returns() -> None:
    intake, metrics = _intake(_Jobs(fail=True), RecordingEventPublisher())

    outcome = intake.handle(_delivery())

    assert outcome is Outcome.NACK
    assert _count(metrics, "retried") == 1
    assert _count(metrics, "job") == 0


def test_a_dead_letter_that_is_not_confirmed_is_nacked_and_a_confirmed_one_acked() -> None:
    events = RecordingEventPublisher()
    events.fail_next("dead_letter")
    intake, metrics = _intake(_Jobs(), events)
    bad = _delivery(format="ogg", attempt=2)

    assert intake.handle(bad) is Outcome.NACK
    assert intake.handle(bad) is Outcome.ACK

    [letter] = events.dead_letters
    assert letter.attributes["errorCode"] == "invalid_message"
    assert letter.attributes["deliveryAttempt"] == "2"
    assert letter.attributes["objectId"] == "incoming/song.wav"  # the notification's own
    assert json.loads(letter.data)["metadata"] == {"format": "ogg"}
    assert (_count(metrics, "retried"), _count(metrics, "dead_lettered")) == (1, 1)


def test_a_published_job_acks_and_an_ignored_object_acks_without_a_job() -> None:
    jobs = _Jobs()
    intake, metrics = _intake(jobs, RecordingEventPublisher())

    assert intake.handle(_delivery()) is Outcome.ACK
    assert intake.handle(_delivery("incoming/a.txt")) is Outcome.ACK

    assert [job.source_uri for job in jobs.published] == ["gs://stage/incoming/song.wav"]
    assert (_count(metrics, "job"), _count(metrics, "ignored")) == (1, 1)
