"""One job, from message bytes to a published outcome. No Pub/Sub or GCS types in here.

The steps, in order (DESIGN.md "Delivery semantics"):

1. decode and validate the job (contract, allowed buckets, model, stems);
2. publish ``stems.processing``;
3. if ``{outputUri}/manifest.json`` exists, republish its ``stems.processed`` and stop —
   a redelivered finished job costs no separation;
4. download the source (size cap from metadata and while streaming; crc32c verified);
5. decode (duration cap before decoding all), resample, mono → stereo;
6. separate (one job at a time on the device: ``separation_lock``);
7. encode each requested stem, upload it, write ``manifest.json`` last (completion marker);
8. publish ``stems.processed``; only then is the message acked.

Any failure goes through :func:`consumer.disposition.decide`; if the failure cannot even be
reported (the publish of ``stems.failed`` or of the dead letter fails) the message is
nacked, so nothing is lost.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import enum
import json
import logging
import os
import re
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

from opentelemetry import context as otel_context
from opentelemetry import trace

from consumer import audio
from consumer._memory import release_free_memory
from consumer.disposition import Action, Disposition, decide
from consumer.errors import (
    BucketNotAllowed,
    InvalidMessage,
    JobTimeout,
    PublishFailed,
    StemError,
    StemNotInModel,
    TransientError,
)
from consumer.events import EventPublisher
from consumer.separation import SeparationCancelled, Separator
from consumer.settings import Settings
from consumer.stems import DEFAULT_MEMORY_LIMIT_BYTES, StemSpool
from consumer.storage import BlobStore, join_uri
from consumer.telemetry import Metrics
from stem_contracts import (
    ID_PATTERN,
    ContractError,
    ErrorInfo,
    Job,
    SourceInfo,
    StemFile,
    StemsFailed,
    StemsProcessed,
    StemsProcessing,
    StemsProgress,
    decode_event,
    decode_job,
    split_gcs_uri,
)
from stem_contracts.tracing import extract_context

__all__ = ["Delivery", "HandlerConfig", "JobHandler", "Outcome", "WorkerShutdown"]

_log = logging.getLogger(__name__)
_tracer = trace.get_tracer("consumer")

MANIFEST_NAME: Final = "manifest.json"
_ID: Final = re.compile(ID_PATTERN)
_SOURCE_SUFFIXES: Final = {".wav": "wav", ".mp3": "mp3", ".flac": "flac"}
# Pub/Sub refuses an attribute value over 1024 bytes (bytes, not characters), and a
# message with more than 100 attributes.
_MAX_ATTRIBUTE_BYTES: Final = 1024
_MAX_ATTRIBUTES: Final = 100
_IDENTIFYING_ATTRIBUTES: Final = ("jobId", "trackId", "schemaVersion", "traceparent")


class WorkerShutdown(TransientError):
    """The worker is shutting down and the grace period ran out before the job finished."""

    code = "worker_shutdown"


class Outcome(enum.Enum):
    ACK = "ack"
    NACK = "nack"


@dataclass(frozen=True)
class Delivery:
    """One delivery of a message, stripped of Pub/Sub types."""

    data: bytes
    attributes: Mapping[str, str]
    message_id: str
    delivery_attempt: int = 1
    publish_time: datetime | None = None


@dataclass(frozen=True)
class HandlerConfig:
    """The part of the settings a job needs."""

    output_bucket: str
    allowed_buckets: frozenset[str] = frozenset()
    model: str = "htdemucs_6s"
    max_audio_seconds: float = 1200.0
    max_audio_bytes: int = 500 * 1024 * 1024
    job_timeout_s: float = 900.0
    max_delivery_attempts: int = 5
    progress_interval_s: float = 0.0
    encode_workers: int = 0
    """Stems encoded in parallel (0 = one per CPU core)."""
    mp3_quality: int = 2
    """LAME's -q (2: what Demucs' own writer uses)."""
    spool_memory_bytes: int = DEFAULT_MEMORY_LIMIT_BYTES
    """Stems larger than this in total are spooled to disk instead of kept in memory."""
    workdir: Path | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> HandlerConfig:
        return cls(
            output_bucket=settings.output_bucket,
            allowed_buckets=settings.allowed_buckets,
            model=settings.model,
            max_audio_seconds=settings.max_audio_seconds,
            max_audio_bytes=settings.max_audio_bytes,
            job_timeout_s=settings.job_timeout_s,
            max_delivery_attempts=settings.max_delivery_attempts,
            progress_interval_s=settings.progress_interval_s,
            encode_workers=settings.encode_workers,
            mp3_quality=settings.mp3_quality,
        )


@dataclass(frozen=True)
class _JobIds:
    """Who a failure is about, for ``stems.failed`` — even when the job itself is invalid."""

    job_id: str
    track_id: str
    correlation_id: str | None

    @classmethod
    def of(cls, job: Job | None, data: bytes) -> _JobIds | None:
        if job is not None:
            return cls(job.job_id, job.track_id, job.correlation_id)
        # An invalid job whose ids are still readable gets a stems.failed too, so the
        # catalog can move the track out of "queued".
        try:
            body = json.loads(data)
        except (ValueError, UnicodeDecodeError):
            return None
        if not isinstance(body, dict):
            return None
        job_id, track_id = body.get("jobId"), body.get("trackId")
        correlation = body.get("correlationId")
        if not all(isinstance(v, str) and _ID.match(v) for v in (job_id, track_id)):
            return None
        return cls(
            str(job_id),
            str(track_id),
            correlation if isinstance(correlation, str) and len(correlation) <= 256 else None,
        )


@dataclass
class _Attempt:
    """Book-keeping for one attempt: timings per stage and the deadline."""

    deadline: float
    stop_requested: Callable[[], bool]
    metrics: Metrics | None = None
    stages: dict[str, float] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def check(self) -> None:
        if self.stop_requested():
            raise WorkerShutdown("worker shutting down; the job will be redelivered")
        if time.monotonic() > self.deadline:
            raise JobTimeout("job exceeded STEM_JOB_TIMEOUT_S")

    def cancelled(self) -> bool:
        return self.stop_requested() or time.monotonic() > self.deadline


@contextlib.contextmanager
def _timed(attempt: _Attempt, stage: str) -> Iterator[None]:
    """Time the block as ``stage``: a child span, the attempt's log record, the histogram."""
    start = time.monotonic()
    try:
        with _tracer.start_as_current_span(f"stem.{stage}"):
            yield
    finally:
        elapsed = time.monotonic() - start
        with attempt.lock:  # encodes and uploads run in parallel threads
            attempt.stages[stage] = attempt.stages.get(stage, 0.0) + elapsed
        if attempt.metrics is not None:
            attempt.metrics.stage_duration.labels(stage).observe(elapsed)


def _truncate_utf8(text: str, max_bytes: int) -> str:
    """``text`` cut to at most ``max_bytes`` of UTF-8, never inside a character."""
    return text.encode()[:max_bytes].decode(errors="ignore")


def _dead_letter_attributes(
    original: Mapping[str, str], reasons: Mapping[str, str]
) -> dict[str, str]:
    """The original attributes plus the reasons, within Pub/Sub's attribute limit.

    A message may already carry the maximum; its reason matters more than its last
    extra attributes (the body is kept whole, and the identifying attributes first).
    """
    kept = {k: v for k, v in original.items() if k not in reasons}
    room = _MAX_ATTRIBUTES - len(reasons)
    if len(kept) > room:
        order = sorted(kept, key=lambda k: k not in _IDENTIFYING_ATTRIBUTES)  # stable
        kept = {k: kept[k] for k in order[:room]}
    return {**kept, **reasons}


class JobHandler:
    """Runs jobs against a blob store, an event publisher and a separator."""

    def __init__(
        self,
        config: HandlerConfig,
        *,
        store: BlobStore,
        events: EventPublisher,
        separator: Separator,
        separation_lock: threading.Lock | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.config = config
        self.metrics = metrics
        self._store = store
        self._events = events
        self._separator = separator
        # A device runs one separation at a time; the other in-flight job meanwhile
        # downloads, decodes, encodes or uploads.
        self._separation_lock = separation_lock or threading.Lock()
        # Shared by the jobs in flight: at most one encode per core at a time.
        self._encoders = ThreadPoolExecutor(
            max_workers=config.encode_workers or os.cpu_count() or 1,
            thread_name_prefix="encode",
        )
        self.fatal_error: BaseException | None = None
        """Set when a job hit an error that means this worker cannot go on."""

    # --- the entry point -----------------------------------------------------------------

    def handle(
        self, delivery: Delivery, *, stop_requested: Callable[[], bool] = lambda: False
    ) -> Outcome:
        """Run one delivery to its end; returns whether to ack or nack the message.

        The job's span continues the trace of the ``traceparent`` attribute (the
        publisher's), and the result events carry this span's context onwards.
        """
        metrics = self.metrics
        if metrics is not None:
            metrics.in_flight.inc()
            metrics.delivery_attempt.observe(delivery.delivery_attempt)
            if delivery.publish_time is not None:
                wait = (datetime.now(UTC) - delivery.publish_time).total_seconds()
                metrics.queue_wait.observe(max(0.0, wait))
        started = time.monotonic()
        with _tracer.start_as_current_span(
            "stem.job",
            context=extract_context(delivery.attributes),
            kind=trace.SpanKind.CONSUMER,
            attributes={
                "messaging.system": "gcp_pubsub",
                "messaging.message.id": delivery.message_id,
                "stem.job_id": delivery.attributes.get("jobId", ""),
                "stem.delivery_attempt": delivery.delivery_attempt,
            },
        ) as span:
            try:
                outcome, label, code = self._handle(delivery, stop_requested, started)
            finally:
                if metrics is not None:
                    metrics.in_flight.dec()
                release_free_memory()  # a long-lived worker's RSS should not ratchet up
            span.set_attribute("stem.outcome", label)
            if code != "none":
                span.set_status(trace.Status(trace.StatusCode.ERROR, code))
        if metrics is not None:
            metrics.jobs.labels(label, code).inc()
            metrics.job_duration.labels(label).observe(time.monotonic() - started)
        return outcome

    def _handle(
        self, delivery: Delivery, stop_requested: Callable[[], bool], started: float
    ) -> tuple[Outcome, str, str]:
        attempt = _Attempt(started + self.config.job_timeout_s, stop_requested, self.metrics)
        log_extra: dict[str, object] = {
            "messageId": delivery.message_id,
            "deliveryAttempt": delivery.delivery_attempt,
            "jobId": delivery.attributes.get("jobId"),
            "trackId": delivery.attributes.get("trackId"),
        }
        # A worker that dies mid-job logs nothing else about it: this line is what ties a
        # redelivery (deliveryAttempt > 1) to the attempt that was lost.
        _log.info("job received", extra=log_extra)
        job: Job | None = None
        duplicate = False
        try:
            job = self._decode(delivery)
            # Checked once ``job`` is known, so that a refused job still gets its
            # stems.failed: only an undecodable body has no job ids to report against.
            self._validate(job)
            self._events.publish_result(
                StemsProcessing(
                    job_id=job.job_id,
                    track_id=job.track_id,
                    correlation_id=job.correlation_id,
                    attempt=delivery.delivery_attempt,
                )
            )
            event = self._existing_result(job, delivery)
            duplicate = event is not None
            if event is None:
                event = self._run(job, delivery, attempt, started)
            with _timed(attempt, "publish"):
                self._events.publish_result(event)
        except Exception as exc:
            disposition, outcome = self._fail(delivery, _JobIds.of(job, delivery.data), exc)
            _log.log(
                logging.WARNING if outcome is Outcome.ACK else logging.ERROR,
                "job failed",
                extra={
                    **log_extra,
                    "errorCode": disposition.code,
                    "error": disposition.message,
                    "outcome": outcome.value,
                    "durationMs": int((time.monotonic() - started) * 1000),
                    "stages": attempt.stages,
                },
                exc_info=not isinstance(exc, StemError),
            )
            label = "dead_lettered" if outcome is Outcome.ACK else "retried"
            return outcome, label, disposition.code
        elapsed = time.monotonic() - started
        if self.metrics is not None and not duplicate:
            self.metrics.audio_seconds.inc(event.source.duration_seconds)
            self.metrics.realtime_factor.observe(event.source.duration_seconds / max(elapsed, 1e-6))
        _log.info(
            "job already processed" if duplicate else "job processed",
            extra={
                **log_extra,
                "durationMs": int(elapsed * 1000),
                "audioSeconds": event.source.duration_seconds,
                "stages": {k: round(v, 4) for k, v in attempt.stages.items()},
            },
        )
        return Outcome.ACK, "duplicate" if duplicate else "processed", "none"

    # --- the steps -------------------------------------------------------------------------

    @staticmethod
    def _decode(delivery: Delivery) -> Job:
        try:
            return decode_job(delivery.data)
        except ContractError as exc:
            raise InvalidMessage(f"invalid job: {exc}") from exc

    def _validate(self, job: Job) -> None:
        for uri in (job.source_uri, self._output_prefix(job)):
            bucket, _ = split_gcs_uri(uri)
            if self.config.allowed_buckets and bucket not in self.config.allowed_buckets:
                raise BucketNotAllowed(f"bucket {bucket} is not in STEM_ALLOWED_BUCKETS")
        if job.model != self.config.model:
            raise InvalidMessage(
                f"model {job.model} is not served by this fleet (it runs {self.config.model})"
            )
        missing = [s for s in job.stems or () if s not in self._separator.sources]
        if missing:
            raise StemNotInModel(
                f"stem {', '.join(missing)} not in model {job.model} "
                f"(has {', '.join(self._separator.sources)})"
            )

    def _output_prefix(self, job: Job) -> str:
        return job.output_uri or (
            f"gs://{self.config.output_bucket}/stems/{job.track_id}/{job.job_id}"
        )

    def _existing_result(self, job: Job, delivery: Delivery) -> StemsProcessed | None:
        data = self._store.read_bytes(join_uri(self._output_prefix(job), MANIFEST_NAME))
        if data is None:
            return None
        try:
            event = decode_event(data)
        except ContractError:
            _log.warning("unreadable manifest; recomputing", extra={"jobId": job.job_id})
            return None
        if not isinstance(event, StemsProcessed) or not self._same_job(event, job):
            _log.warning(
                "manifest from another job or model at this prefix; recomputing",
                extra={"jobId": job.job_id, "messageId": delivery.message_id},
            )
            return None
        _log.info(
            "job already processed; republishing its result",
            extra={"jobId": job.job_id, "messageId": delivery.message_id},
        )
        return event

    def _same_job(self, event: StemsProcessed, job: Job) -> bool:
        """The manifest answers this job: same id, source, model, format and stems (a
        reused jobId with another source must not get the old job's stems)."""
        wanted = self._wanted_stems(job)
        return (
            event.job_id == job.job_id
            and event.source.uri == job.source_uri
            and event.model_version == self._separator.model_version
            and [stem.name for stem in event.stems] == wanted
            and all(stem.format == job.format for stem in event.stems)
        )

    def _wanted_stems(self, job: Job) -> list[str]:
        """The requested stems in the model's order (all of them by default)."""
        return [s for s in self._separator.sources if s in (job.stems or ())] or list(
            self._separator.sources
        )

    def _run(
        self, job: Job, delivery: Delivery, attempt: _Attempt, started: float
    ) -> StemsProcessed:
        suffix = Path(split_gcs_uri(job.source_uri)[1]).suffix.lower()
        with tempfile.TemporaryDirectory(prefix="stem-job-", dir=self.config.workdir) as tmp:
            workdir = Path(tmp)
            source_path = workdir / f"source{suffix if suffix in _SOURCE_SUFFIXES else ''}"

            with _timed(attempt, "download"):
                self._store.download(
                    job.source_uri, source_path, max_bytes=self.config.max_audio_bytes
                )
            attempt.check()

            with _timed(attempt, "decode"):
                decoded = audio.decode(
                    source_path,
                    max_seconds=self.config.max_audio_seconds,
                    target_rate=self._separator.sample_rate,
                    target_channels=self._separator.audio_channels,
                )
            attempt.check()

            source = decoded.source
            wanted = self._wanted_stems(job)
            spool = StemSpool(
                workdir,
                self._separator.sources,
                wanted,
                channels=decoded.samples.shape[0],
                frames=decoded.samples.shape[1],
                memory_limit_bytes=self.config.spool_memory_bytes,
            )
            with _timed(attempt, "separate"), self._separation_lock:
                try:
                    for start, block in self._separator.separate_blocks(
                        decoded.samples,
                        progress=self._progress_reporter(job, delivery),
                        cancelled=attempt.cancelled,
                    ):
                        spool.write(start, block)
                    spool.check_complete()
                except SeparationCancelled:
                    attempt.check()  # raises the reason: timeout or shutdown
                    raise
                finally:
                    spool.close()
            del decoded  # the mix is no longer needed
            files = self._encode_and_upload(job, spool, wanted, workdir, attempt)

        event = StemsProcessed(
            job_id=job.job_id,
            track_id=job.track_id,
            correlation_id=job.correlation_id,
            attempt=delivery.delivery_attempt,
            model_version=self._separator.model_version,
            stems=tuple(files),
            source=SourceInfo(
                uri=job.source_uri,
                duration_seconds=round(source.duration_seconds, 6),
                sample_rate=source.sample_rate,
                channels=source.channels,
            ),
            processing_time_ms=int((time.monotonic() - started) * 1000),
            completed_at=datetime.now(UTC),
        )
        with _timed(attempt, "upload"):
            self._store.write_bytes(
                join_uri(self._output_prefix(job), MANIFEST_NAME),
                event.model_dump_json(by_alias=True, exclude_none=True).encode(),
                content_type="application/json",
            )
        return event

    def _encode_and_upload(
        self, job: Job, spool: StemSpool, wanted: list[str], workdir: Path, attempt: _Attempt
    ) -> list[StemFile]:
        """Encode the stems in parallel (LAME releases the GIL: MP3 encoding of six stems
        costs more CPU than a GPU needs to separate them) and upload each when it is done."""
        prefix = self._output_prefix(job)
        parent = otel_context.get_current()

        def one(name: str) -> StemFile:
            token = otel_context.attach(parent)  # stage spans stay children of the job
            try:
                attempt.check()
                with _timed(attempt, "encode"):
                    encoded = audio.encode(
                        spool.source(name),
                        self._separator.sample_rate,
                        job.format,
                        workdir / f"{name}.{job.format}",
                        mp3_bitrate=job.mp3_bitrate,
                        mp3_quality=self.config.mp3_quality,
                    )
                spool.release(name)
                uri = join_uri(prefix, f"{name}.{job.format}")
                with _timed(attempt, "upload"):
                    self._store.upload(encoded.path, uri, content_type=encoded.content_type)
                encoded.path.unlink()
                return StemFile(
                    name=name,
                    uri=uri,
                    format=job.format,
                    content_type=encoded.content_type,
                    size_bytes=encoded.size_bytes,
                    duration_seconds=round(encoded.duration_seconds, 6),
                    sample_rate=encoded.sample_rate,
                    channels=encoded.channels,
                    sha256=encoded.sha256,
                )
            finally:
                otel_context.detach(token)

        futures = [self._encoders.submit(one, name) for name in wanted]
        try:
            return [future.result() for future in futures]
        except BaseException:
            for future in futures:
                future.cancel()
            # Let running encodes finish before the temporary directory goes away.
            concurrent.futures.wait(futures)
            raise

    def _progress_reporter(self, job: Job, delivery: Delivery) -> Callable[[float], None] | None:
        """A progress callback publishing ``stems.progress`` at most once an interval."""
        interval = self.config.progress_interval_s
        if interval <= 0:
            return None
        last = time.monotonic()

        def report(fraction: float) -> None:
            nonlocal last
            now = time.monotonic()
            if now - last < interval:
                return
            last = now
            self._events.publish_progress(
                StemsProgress(
                    job_id=job.job_id,
                    track_id=job.track_id,
                    correlation_id=job.correlation_id,
                    attempt=delivery.delivery_attempt,
                    percent=round(min(max(fraction, 0.0), 1.0) * 100, 1),
                    reported_at=datetime.now(UTC),
                )
            )

        return report

    # --- failure ---------------------------------------------------------------------------

    def _fail(
        self, delivery: Delivery, ids: _JobIds | None, error: Exception
    ) -> tuple[Disposition, Outcome]:
        disposition = decide(error, delivery.delivery_attempt, self.config.max_delivery_attempts)
        if disposition.worker_must_exit and self.fatal_error is None:
            self.fatal_error = error  # the runner stops pulling and exits non-zero
        try:
            if ids is not None:
                self._events.publish_result(self._failed_event(ids, delivery, disposition))
            if disposition.action is Action.DEAD_LETTER:
                self._events.dead_letter(
                    delivery.data,
                    _dead_letter_attributes(
                        delivery.attributes,
                        {
                            "errorCode": disposition.code,
                            "errorMessage": _truncate_utf8(
                                disposition.message, _MAX_ATTRIBUTE_BYTES
                            ),
                            "deliveryAttempt": str(delivery.delivery_attempt),
                        },
                    ),
                )
                return disposition, Outcome.ACK
        except PublishFailed:
            # The outcome could not be recorded: let Pub/Sub redeliver rather than lose it.
            _log.exception(
                "could not report a failed job", extra={"messageId": delivery.message_id}
            )
        return disposition, Outcome.NACK

    @staticmethod
    def _failed_event(ids: _JobIds, delivery: Delivery, disposition: Disposition) -> StemsFailed:
        return StemsFailed(
            job_id=ids.job_id,
            track_id=ids.track_id,
            correlation_id=ids.correlation_id,
            attempt=delivery.delivery_attempt,
            error=ErrorInfo(
                code=disposition.code,
                message=disposition.message,
                retryable=disposition.retryable,
            ),
            final=disposition.final,
            failed_at=datetime.now(UTC),
        )
