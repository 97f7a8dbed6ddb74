"""Uploads as a job source: ``stemctl intake`` (DESIGN.md "Uploads as a job source").

GCS notifies every finalised object of the staging bucket's uploads prefix to topic
``stem-uploads`` (``OBJECT_FINALIZE``, payload ``JSON_API_V1``: attributes ``eventType``,
``bucketId``, ``objectId``, ``objectGeneration``, ``payloadFormat``; data = the object
resource, its custom ``metadata`` included). The intake is a small CPU consumer of the
``stem-uploads`` subscription that turns each notification into at most one job on
``stem-separate``:

- a ``.wav``/``.mp3``/``.flac`` object → a job: ``jobId`` from bucket, object and
  generation (:func:`upload_job_id`: a redelivered notification gives the same job, an
  overwritten object — a new generation — a new one); ``trackId`` from the custom metadata
  ``trackId`` when it is a valid id, else from the file name (:func:`track_id_for`);
  ``format``, ``stems`` (comma list), ``mp3Bitrate``, ``model`` (default: the fleet's,
  ``STEM_MODEL``), ``correlationId``, ``reuse`` and the output options ``sampleFormat``,
  ``clipMode``, ``sampleRate`` from custom metadata keys of those names;
- any other notification (another object type, another event, outside the prefix) is
  acked and counted;
- a notification whose metadata makes no valid job (``format: ogg``…) is published to
  ``stem-dlq`` with ``errorCode``/``errorMessage`` (``stemctl dlq ls`` shows why) and acked;
- the job is acked only once its publish is confirmed; an unconfirmed publish (or dead
  letter) is nacked, and Pub/Sub's dead-letter policy bounds the retries.

The decision is the pure :func:`job_for_notification`; :class:`UploadIntake` carries it out,
and the streaming pull, flow control and graceful shutdown are the worker's own
(:class:`consumer.runner.Worker` on another subscription). Nothing here imports the model:
the intake runs without torch.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import signal
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import PurePosixPath
from types import FrameType
from typing import Any, Final

from opentelemetry import trace

from consumer import gcp
from consumer.delivery import Delivery, Outcome
from consumer.disposition import decide
from consumer.errors import InvalidMessage
from consumer.events import EventPublisher, PubSubEventPublisher
from consumer.reporting import dead_letter_attributes
from consumer.runner import Worker
from consumer.settings import Settings
from consumer.telemetry import Health, IntakeMetrics, TelemetryServer, configure_tracing
from stem_contracts import ID_PATTERN, ContractError, Job, JobPublisher, decode_job

__all__ = [
    "AUDIO_SUFFIXES",
    "JOB_METADATA_KEYS",
    "Skipped",
    "UploadIntake",
    "build_intake",
    "job_for_notification",
    "run_intake",
    "track_id_for",
    "upload_job_id",
]

_log = logging.getLogger(__name__)
_tracer = trace.get_tracer("consumer.intake")

AUDIO_SUFFIXES: Final = frozenset({".wav", ".mp3", ".flac"})
"""Objects that become jobs (by the name's suffix, case-insensitive)."""
JOB_METADATA_KEYS: Final = (
    "format",
    "stems",
    "mp3Bitrate",
    "model",
    "correlationId",
    "reuse",
    # the output options (DESIGN.md "Output options, cancel, retention")
    "sampleFormat",
    "clipMode",
    "sampleRate",
)
"""Custom-metadata keys copied into the job (``trackId`` is handled on its own)."""
_ID: Final = re.compile(ID_PATTERN)
_NOT_ID_CHARS: Final = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True)
class Skipped:
    """A notification that is no job, and why (acked and counted)."""

    reason: str


def upload_job_id(bucket: str, name: str, generation: str) -> str:
    """The job of one generation of one object: the same notification always gives the
    same id (a redelivery is one job), a new generation a new one."""
    digest = hashlib.sha256(f"{bucket}\n{name}\n{generation}".encode()).hexdigest()
    return f"upload-{digest[:32]}"


def track_id_for(name: str, metadata: Mapping[str, str], job_id: str) -> str:
    """``trackId`` from the metadata when valid, else the file name made a valid id."""
    given = metadata.get("trackId")
    if given is not None and _ID.match(given):
        return given
    stem = PurePosixPath(name).stem
    made = _NOT_ID_CHARS.sub("-", stem).lstrip("._-")[:128].rstrip("._-")
    return made if made and _ID.match(made) else job_id


def _metadata_value(key: str, value: str) -> object:
    """A metadata string as the job field wants it (a wrong value stays a string, so the
    contract names it)."""
    text = value.strip()
    if key == "stems":
        return [part.strip() for part in text.split(",") if part.strip()]
    if key in ("mp3Bitrate", "sampleRate") and text.isdigit():
        return int(text)
    if key == "reuse" and text.lower() in ("true", "false"):
        return text.lower() == "true"
    return text


def job_for_notification(
    attributes: Mapping[str, str], data: bytes, settings: Settings
) -> Job | Skipped:
    """The job a GCS notification asks for, or why it is none.

    Raises :class:`~consumer.errors.InvalidMessage` (dead-lettered with its message) for
    an audio upload whose metadata makes no valid job, or a notification without the
    object resource (the notification config must use payload ``JSON_API_V1``).
    """
    event = attributes.get("eventType")
    if event != "OBJECT_FINALIZE":
        return Skipped(f"event {event or '(none)'} is not OBJECT_FINALIZE")
    bucket, name = attributes.get("bucketId", ""), attributes.get("objectId", "")
    if bucket != settings.staging_bucket or not name.startswith(settings.uploads_prefix):
        return Skipped(f"gs://{bucket}/{name} is outside the uploads prefix")
    if PurePosixPath(name).suffix.lower() not in AUDIO_SUFFIXES:
        return Skipped(f"{name} is not a .wav, .mp3 or .flac object")
    try:
        resource = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        resource = None
    if not isinstance(resource, dict):
        raise InvalidMessage(
            f"notification for gs://{bucket}/{name} carries no object resource "
            "(the notification config must use payload format JSON_API_V1)"
        )
    generation = str(attributes.get("objectGeneration") or resource.get("generation") or "")
    metadata: dict[str, str] = {str(k): str(v) for k, v in (resource.get("metadata") or {}).items()}
    job_id = upload_job_id(bucket, name, generation)
    fields: dict[str, Any] = {
        "jobId": job_id,
        "trackId": track_id_for(name, metadata, job_id),
        "sourceUri": f"gs://{bucket}/{name}",
        # The fleet's model unless the upload names one (the workers refuse other models).
        "model": settings.model,
    }
    fields.update(
        {key: _metadata_value(key, metadata[key]) for key in JOB_METADATA_KEYS if key in metadata}
    )
    if isinstance(resource.get("timeCreated"), str):
        fields["submittedAt"] = resource["timeCreated"]
    try:
        return decode_job(json.dumps(fields).encode())
    except ContractError as exc:
        raise InvalidMessage(f"metadata of gs://{bucket}/{name} makes no valid job: {exc}") from exc


class UploadIntake:
    """Turns one notification delivery into a published job, a dead letter or nothing.

    Has the shape :class:`consumer.runner.Worker` drives (``handle``, ``fatal_error``).
    """

    def __init__(
        self,
        settings: Settings,
        *,
        jobs: JobPublisher,
        events: EventPublisher,
        metrics: IntakeMetrics | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self._jobs = jobs
        self._events = events
        self.fatal_error: BaseException | None = None  # nothing here is fatal to the process

    def handle(
        self, delivery: Delivery, *, stop_requested: Callable[[], bool] = lambda: False
    ) -> Outcome:
        del stop_requested  # one publish: nothing long to interrupt
        attrs = delivery.attributes
        target = f"gs://{attrs.get('bucketId', '')}/{attrs.get('objectId', '')}"
        log: dict[str, Any] = {
            "messageId": delivery.message_id,
            "deliveryAttempt": delivery.delivery_attempt,
            "object": target,
            "generation": attrs.get("objectGeneration"),
        }
        # A new trace: the upload is where the job's story begins, and the job's
        # traceparent (set by the publish inside this span) carries it to the worker.
        with _tracer.start_as_current_span(
            "stem.intake",
            kind=trace.SpanKind.CONSUMER,
            attributes={
                "messaging.system": "gcp_pubsub",
                "messaging.message.id": delivery.message_id,
                "stem.object": target,
            },
        ) as span:
            outcome, label = self._handle(delivery, log)
            span.set_attribute("stem.intake.outcome", label)
        if self.metrics is not None:
            self.metrics.notifications.labels(label).inc()
        return outcome

    def _handle(self, delivery: Delivery, log: dict[str, Any]) -> tuple[Outcome, str]:
        try:
            decision = job_for_notification(delivery.attributes, delivery.data, self.settings)
        except InvalidMessage as exc:
            return self._dead_letter(delivery, exc, log)
        if isinstance(decision, Skipped):
            _log.info("upload ignored", extra={**log, "reason": decision.reason})
            return Outcome.ACK, "ignored"
        job = decision
        log |= {"jobId": job.job_id, "trackId": job.track_id}
        trace.get_current_span().set_attribute("stem.job_id", job.job_id)
        try:
            message_id = self._jobs.publish(job)
        except Exception as exc:  # not confirmed: the notification comes back
            _log.error("job not published; nacking", extra={**log, "error": repr(exc)})
            return Outcome.NACK, "retried"
        _log.info("upload became a job", extra={**log, "jobMessageId": message_id})
        return Outcome.ACK, "job"

    def _dead_letter(
        self, delivery: Delivery, error: InvalidMessage, log: dict[str, Any]
    ) -> tuple[Outcome, str]:
        disposition = decide(error, delivery.delivery_attempt, self.settings.max_delivery_attempts)
        attributes = dead_letter_attributes(
            delivery.attributes, disposition, delivery.delivery_attempt
        )
        try:
            self._events.dead_letter(delivery.data, attributes)
        except Exception as exc:
            _log.error("dead letter not published; nacking", extra={**log, "error": repr(exc)})
            return Outcome.NACK, "retried"
        _log.warning(
            "upload dead-lettered",
            extra={**log, "errorCode": disposition.code, "error": disposition.message},
        )
        return Outcome.ACK, "dead_lettered"


def build_intake(
    settings: Settings,
    *,
    metrics: IntakeMetrics | None = None,
    health: Health | None = None,
) -> Worker:
    """A ready-to-run intake: the worker's pull loop on ``STEM_UPLOADS_SUBSCRIPTION``."""
    project = settings.require_project()
    publisher = gcp.publisher_client(settings)
    events = PubSubEventPublisher(
        publisher,
        project=project,
        results_topic=settings.results_topic,
        dlq_topic=settings.dlq_topic,
    )
    intake = UploadIntake(
        settings,
        jobs=JobPublisher(project, topic=settings.jobs_topic, publisher=publisher),
        events=events,
        metrics=metrics,
    )
    return Worker(
        settings,
        intake,
        gcp.subscriber_client(settings),
        subscription=settings.uploads_subscription,
        on_stopped=events.close,
        health=health,
    )


def _exit_during_start_up(signum: int, frame: FrameType | None) -> None:
    del frame, signum
    raise SystemExit(0)


def run_intake(settings: Settings) -> int:
    """``stemctl intake``: telemetry, then pulling notifications until a signal."""
    settings.require_project()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, _exit_during_start_up)
    configure_tracing(settings)
    metrics, health = IntakeMetrics(), Health()
    health.set(model_loaded=True)  # the intake loads no model
    server = (
        TelemetryServer(metrics, health, settings.metrics_port).start()
        if settings.metrics_port
        else None
    )
    try:
        intake = build_intake(settings, metrics=metrics, health=health)
        intake.install_signal_handlers()
        return intake.run()
    finally:
        if server is not None:
            server.stop()
