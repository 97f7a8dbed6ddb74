"""``JobPublisher``: how other services submit separation jobs."""

from __future__ import annotations

import base64
import json
import logging
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Final, Literal

import google_crc32c
from google.api_core import exceptions as gexc
from google.cloud import pubsub_v1, storage
from google.cloud.pubsub_v1.types import BatchSettings
from opentelemetry import trace

from stem_contracts import topics
from stem_contracts.codec import encode
from stem_contracts.models import CONTENT_TYPES, DEFAULT_MODEL, ID_PATTERN, Job
from stem_contracts.retry import TRANSIENT_ERRORS, api_retry, retrying
from stem_contracts.tracing import inject_trace_attributes

__all__ = [
    "CANCEL_PREFIX",
    "TRANSIENT_ERRORS",
    "JobPublisher",
    "StagingError",
    "SubmittedJob",
    "cancel_marker_name",
    "crc32c_b64",
]

_log = logging.getLogger(__name__)
_tracer = trace.get_tracer("stem_contracts")

CANCEL_PREFIX: Final = "_cancel/"
"""Cancel markers live at ``{OUTPUT_BUCKET}/_cancel/{jobId}`` (expired after a day)."""


def cancel_marker_name(job_id: str) -> str:
    """The object name of ``job_id``'s cancel marker in the output bucket."""
    if not re.match(ID_PATTERN, job_id):
        raise ValueError(f"{job_id!r} is not a job id ({ID_PATTERN})")
    return CANCEL_PREFIX + job_id


# How much longer than the client's own retry deadline a publish's confirmation is awaited.
_CONFIRM_SLACK_S: Final = 5.0


class StagingError(RuntimeError):
    """A local file could not be staged in GCS (bad file, or the upload did not verify)."""


@dataclass(frozen=True)
class SubmittedJob:
    """A job that the server confirmed: the job as published and its Pub/Sub message id."""

    job: Job
    message_id: str


def crc32c_b64(data_or_path: bytes | Path) -> str:
    """The base64 big-endian CRC32C of bytes or a file, as GCS reports it."""
    checksum = google_crc32c.Checksum()
    if isinstance(data_or_path, bytes):
        checksum.update(data_or_path)
    else:
        with data_or_path.open("rb") as file:
            for chunk in iter(lambda: file.read(1 << 20), b""):
                checksum.update(chunk)
    return base64.b64encode(checksum.digest()).decode()


class JobPublisher:
    """Publishes :class:`Job` messages to ``stem-separate``, optionally staging audio first.

    Example::

        with JobPublisher("my-project", staging_bucket="stem-staging") as jobs:
            submitted = jobs.submit_file(Path("song.flac"), track_id="trk-42")
            print(submitted.job.job_id, submitted.message_id)

    A publish is retried inside the Pub/Sub client (``stem_contracts.retry.api_retry``) for
    up to ``publish_timeout_s``, and never resent by this class: a confirmation that does
    not come raises, and the job may or may not have been published (submit it again with
    the same ``job_id``: the fleet answers a finished job from its manifest). Staging
    uploads retry transient errors ``attempts`` times with exponential backoff and jitter;
    anything else raises at once.
    ``batch_settings`` trades latency for throughput when submitting many jobs from
    several threads.
    """

    def __init__(
        self,
        project: str,
        *,
        topic: str = topics.JOBS_TOPIC,
        staging_bucket: str | None = None,
        output_bucket: str | None = None,
        batch_settings: BatchSettings | None = None,
        publish_timeout_s: float = 60.0,
        attempts: int = 5,
        publisher: pubsub_v1.PublisherClient | None = None,
        storage_client: storage.Client | None = None,
    ) -> None:
        self._project = project
        self._staging_bucket = staging_bucket
        self._output_bucket = output_bucket
        self._publisher = publisher or pubsub_v1.PublisherClient(
            batch_settings=batch_settings or BatchSettings()
        )
        self._storage = storage_client
        self._timeout = publish_timeout_s
        self._attempts = attempts
        self.topic_path: str = self._publisher.topic_path(project, topic)

    def publish(self, job: Job) -> str:
        """Publish ``job`` and wait for the server's confirmation; returns the message id.

        A ``traceparent`` attribute is added when an OpenTelemetry span is active. The
        client retries transient errors itself until ``publish_timeout_s``; this method
        publishes once and raises what the client reports (``TimeoutError`` when no
        confirmation came in time).
        """
        with _tracer.start_as_current_span(
            f"{topics.JOBS_TOPIC} publish",
            kind=trace.SpanKind.PRODUCER,
            attributes={"messaging.system": "gcp_pubsub", "stem.job_id": job.job_id},
        ):
            data, attributes = encode(job)
            inject_trace_attributes(attributes)
            future = self._publisher.publish(
                self.topic_path, data, retry=api_retry(self._timeout), **attributes
            )
            message_id: str = future.result(timeout=self._timeout + _CONFIRM_SLACK_S)
        _log.info("job published", extra={"jobId": job.job_id, "messageId": message_id})
        return message_id

    def stage_file(self, path: Path, *, track_id: str, job_id: str) -> str:
        """Upload a local wav/mp3/flac to the staging bucket; returns its ``gs://`` URI.

        The upload is crc32c-verified and create-only (``if_generation_match=0``), so a
        retried upload never overwrites somebody else's object.
        """
        if self._staging_bucket is None:
            raise StagingError("no staging bucket configured (staging_bucket=...)")
        fmt = path.suffix.lower().lstrip(".")
        if fmt not in CONTENT_TYPES:
            raise StagingError(f"{path.name}: only .wav, .mp3 and .flac files can be submitted")
        if not path.is_file():
            raise StagingError(f"{path}: no such file")
        client = self._storage or storage.Client(project=self._project)
        blob = client.bucket(self._staging_bucket).blob(f"uploads/{track_id}/{job_id}/source.{fmt}")
        expected = crc32c_b64(path)
        for attempt in retrying(
            attempts=self._attempts, max_wait_s=10.0, reraise=True, logger=_log
        ):
            with attempt:
                try:
                    blob.upload_from_filename(
                        str(path),
                        content_type=CONTENT_TYPES[fmt],
                        checksum="crc32c",
                        if_generation_match=0,
                        retry=None,  # tenacity owns retries here
                    )
                except gexc.PreconditionFailed:
                    blob.reload()  # an earlier attempt of ours may have landed
        if blob.crc32c != expected:
            raise StagingError(
                f"staged object gs://{blob.bucket.name}/{blob.name} has crc32c {blob.crc32c}, "
                f"the local file {expected}"
            )
        return f"gs://{blob.bucket.name}/{blob.name}"

    def submit_file(
        self,
        path: Path,
        *,
        track_id: str,
        job_id: str | None = None,
        output_uri: str | None = None,
        model: str = DEFAULT_MODEL,
        stems: Sequence[str] | None = None,
        format: Literal["mp3", "wav", "flac"] = "mp3",
        mp3_bitrate: int = 320,
        correlation_id: str | None = None,
        sample_format: Literal["pcm16", "pcm24", "float32"] = "pcm16",
        clip_mode: Literal["rescale", "clamp", "none"] = "rescale",
        sample_rate: int | Literal["source"] | None = None,
    ) -> SubmittedJob:
        """Stage ``path`` in the staging bucket and publish a job for it.

        The job is validated before anything is uploaded, so a bad id, bitrate or
        combination of output options costs no upload. ``job_id`` defaults to a random
        UUID.
        """
        job_id = job_id or uuid.uuid4().hex
        fmt = path.suffix.lower().lstrip(".") or "audio"
        planned = Job(
            job_id=job_id,
            track_id=track_id,
            source_uri=f"gs://{self._staging_bucket or 'unset'}/uploads/{track_id}/{job_id}/"
            f"source.{fmt}",
            output_uri=output_uri,
            model=model,
            stems=tuple(stems) if stems is not None else None,
            format=format,
            mp3_bitrate=mp3_bitrate,
            correlation_id=correlation_id,
            sample_format=sample_format,
            clip_mode=clip_mode,
            sample_rate=sample_rate,
        )
        source_uri = self.stage_file(path, track_id=track_id, job_id=job_id)
        job = planned.model_copy(update={"source_uri": source_uri})
        return SubmittedJob(job=job, message_id=self.publish(job))

    def cancel(self, job_id: str, *, reason: str | None = None) -> str:
        """Cancel a job: write its marker ``gs://{output_bucket}/_cancel/{jobId}``.

        A worker checks the marker when the job starts and between segment batches; the
        job then ends as ``stems.failed`` with error code ``cancelled`` and leaves no
        stems. A job not yet published is cancelled when it arrives; one already
        finished stays finished. Writing the marker again is harmless. Returns its URI.
        """
        if self._output_bucket is None:
            raise ValueError("no output bucket configured (output_bucket=...)")
        name = cancel_marker_name(job_id)
        body = {"jobId": job_id, "cancelledAt": datetime.now(UTC).isoformat()}
        if reason:
            body["reason"] = reason
        client = self._storage or storage.Client(project=self._project)
        blob = client.bucket(self._output_bucket).blob(name)
        for attempt in retrying(
            attempts=self._attempts, max_wait_s=10.0, reraise=True, logger=_log
        ):
            with attempt:
                blob.upload_from_string(
                    json.dumps(body), content_type="application/json", retry=None
                )
        _log.info("job cancelled", extra={"jobId": job_id})
        return f"gs://{self._output_bucket}/{name}"

    def close(self) -> None:
        """Flush pending batches and stop the publisher's background threads."""
        self._publisher.stop()

    def __enter__(self) -> JobPublisher:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
