"""One job, from message bytes to a published outcome. No Pub/Sub or GCS types in here.

The handler only orchestrates (DESIGN.md "Delivery semantics"):

1. decode and validate the job (contract, allowed buckets, model, stems);
2. publish ``stems.processing``;
3. if ``{outputUri}/manifest.json`` answers this job, republish its ``stems.processed`` and
   stop — a redelivered finished job costs no separation (:mod:`consumer.manifest`);
4. otherwise run the pipeline: download, decode, separate, encode, upload, manifest last
   (:mod:`consumer.pipeline`). From here on the job's cancel marker
   ``{STEM_OUTPUT_BUCKET}/_cancel/{jobId}`` is checked — now, between segment batches and
   before each stem and the manifest; a cancelled job's stems are deleted and it ends as
   ``stems.failed`` ``cancelled``, acked (a finished job stays finished);
5. publish ``stems.processed``; only then is the message acked.

Any failure is reported by :func:`consumer.reporting.report_failure` (the disposition of
:func:`consumer.disposition.decide`). Span, metrics, logs and the deadline around it all
are :func:`consumer.delivery.observe`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path

from consumer.delivery import Delivery, Outcome, observe
from consumer.errors import BucketNotAllowed, InvalidMessage, JobCancelled, StorageUnavailable
from consumer.events import EventPublisher, JobIds, progress_reporter
from consumer.manifest import check_stems, existing_result, output_prefix, remove_stems
from consumer.pipeline import Pipeline
from consumer.reporting import report_failure
from consumer.reuse import REUSE_PREFIX, ReuseIndex
from consumer.separation import Separator
from consumer.settings import Settings
from consumer.stems import DEFAULT_MEMORY_LIMIT_BYTES
from consumer.storage import BlobStore
from consumer.telemetry import Metrics
from stem_contracts import (
    CANCEL_PREFIX,
    ContractError,
    Job,
    StemsProcessing,
    cancel_marker_name,
    decode_job,
    split_gcs_uri,
)

__all__ = ["Delivery", "JobHandler", "Outcome"]

_log = logging.getLogger(__name__)


class JobHandler:
    """Runs jobs against a blob store, an event publisher and a separator."""

    def __init__(
        self,
        settings: Settings,
        *,
        store: BlobStore,
        events: EventPublisher,
        separator: Separator,
        separation_lock: threading.Lock | None = None,
        metrics: Metrics | None = None,
        workdir: Path | None = None,
        spool_memory_bytes: int = DEFAULT_MEMORY_LIMIT_BYTES,
    ) -> None:
        """``workdir`` holds each job's temporary directory (default: the system's);
        stems larger than ``spool_memory_bytes`` in total are spooled to disk."""
        self.settings = settings
        self.metrics = metrics
        self._store = store
        self._events = events
        self._separator = separator
        self._pipeline = Pipeline(
            settings,
            store=store,
            separator=separator,
            separation_lock=separation_lock,
            workdir=workdir,
            spool_memory_bytes=spool_memory_bytes,
            reuse=ReuseIndex(store, settings.output_bucket),
        )
        self.fatal_error: BaseException | None = None
        """Set when a job hit an error that means this worker cannot go on."""

    def handle(
        self, delivery: Delivery, *, stop_requested: Callable[[], bool] = lambda: False
    ) -> Outcome:
        """Run one delivery to its end; returns whether to ack or nack the message.

        The job's span continues the trace of the ``traceparent`` attribute (the
        publisher's), and the result events carry this span's context onwards.
        """
        with observe(
            delivery,
            timeout_s=self.settings.job_timeout_s,
            stop_requested=stop_requested,
            metrics=self.metrics,
        ) as attempt:
            job: Job | None = None
            try:
                job = self._decode(delivery)
                # Checked once ``job`` is known, so that a refused job still gets its
                # stems.failed: only an undecodable body has no job ids to report against.
                self._validate(job)
                header = JobIds.of(job).header(delivery.delivery_attempt)
                self._events.publish_result(StemsProcessing(**header))
                prefix = output_prefix(job, self.settings.output_bucket)
                event = existing_result(
                    self._store,
                    job,
                    prefix,
                    model_version=self._separator.model_version,
                    sources=self._separator.sources,
                    model_rate=self._separator.sample_rate,
                )
                duplicate = event is not None
                if event is None:
                    attempt.cancel_requested = self._cancel_marker(job)
                    progress = progress_reporter(
                        self._events, header, self.settings.progress_interval_s
                    )
                    try:
                        attempt.check()  # cancelled before it arrived
                        event = self._pipeline.run(job, prefix, header, attempt, progress=progress)
                    except JobCancelled:
                        removed = remove_stems(self._store, job, prefix, self._separator.sources)
                        _log.info(
                            "job cancelled",
                            extra={"jobId": job.job_id, "removedObjects": len(removed)},
                        )
                        raise
                with attempt.timed("publish"):
                    self._events.publish_result(event)
            except Exception as exc:
                ids = JobIds.of(job) if job is not None else JobIds.from_body(delivery.data)
                usage = attempt.usage(self._separator.device_name, self.settings.cost_per_hour)
                disposition, outcome = report_failure(
                    self._events,
                    delivery,
                    ids,
                    exc,
                    max_delivery_attempts=self.settings.max_delivery_attempts,
                    usage=usage,
                )
                if disposition.worker_must_exit and self.fatal_error is None:
                    self.fatal_error = exc  # the runner stops pulling and exits non-zero
                attempt.failed(exc, disposition, outcome, usage)
                return outcome
            attempt.succeeded(event, duplicate=duplicate)
            return Outcome.ACK

    def _cancel_marker(self, job: Job) -> Callable[[], bool]:
        """Whether ``job``'s cancel marker exists; once seen, it stays seen. A failed look
        counts as "not cancelled": the next check looks again."""
        uri = f"gs://{self.settings.output_bucket}/{cancel_marker_name(job.job_id)}"
        seen = False

        def cancelled() -> bool:
            nonlocal seen
            if not seen:
                try:
                    seen = self._store.stat(uri) is not None
                except StorageUnavailable:
                    _log.warning("cancel marker check failed", extra={"jobId": job.job_id})
            return seen

        return cancelled

    @staticmethod
    def _decode(delivery: Delivery) -> Job:
        try:
            return decode_job(delivery.data)
        except ContractError as exc:
            raise InvalidMessage(f"invalid job: {exc}") from exc

    def _validate(self, job: Job) -> None:
        for uri in (job.source_uri, output_prefix(job, self.settings.output_bucket)):
            bucket, _ = split_gcs_uri(uri)
            if not self.settings.bucket_allowed(bucket):
                raise BucketNotAllowed(f"bucket {bucket} is not in STEM_ALLOWED_BUCKETS")
        bucket, path = split_gcs_uri(output_prefix(job, self.settings.output_bucket))
        top = path.strip("/").split("/", 1)[0]
        reserved = {REUSE_PREFIX.strip("/"), CANCEL_PREFIX.strip("/")}
        if bucket == self.settings.output_bucket and top in reserved:
            # The fleet's own bookkeeping: stems there could overwrite reuse pointers or
            # cancel markers (and be deleted by their lifecycle rule).
            raise InvalidMessage(
                f"outputUri gs://{bucket}/{top}/… is reserved for the fleet's {top} objects"
            )
        if job.model != self.settings.model:
            raise InvalidMessage(
                f"model {job.model} is not served by this fleet (it runs {self.settings.model})"
            )
        check_stems(job.stems, job.model, self._separator.sources)
