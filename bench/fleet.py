"""The fleet's own pipeline, measured two ways.

- :class:`InProcessPipeline`: the production ``JobHandler`` on a job message, with a
  local-disk blob store and an event publisher that encodes and drops events, so what is
  timed is the worker's own work (download, decode, separate, encode, upload, publish)
  without any server.
- :class:`EndToEndPipeline`: the real thing on one machine, as ``stemctl demo`` runs it:
  the Pub/Sub emulator and fake-gcs-server, ``infra.provision.apply``, a worker built by
  ``consumer.app.build_worker`` pulling in a thread of this process, a job submitted with
  ``JobPublisher.submit_file`` and ``stems.processed`` awaited on a results subscription
  (``stemctl.results.results_subscription``) by one long-lived ``ResultSubscriber``.

Both use one ``DemucsSeparator`` (loaded by ``consumer.app.load_separator``) so that the
model, its warm state and its forward-timing hooks are shared.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Self, cast
from unittest import mock

import numpy as np
import numpy.typing as npt

from bench.measure import ForwardTimer, HandlerRecord, StageLog, UsageProbe
from bench.results import BenchError, Captured, RunResult
from bench.workload import MODEL_NAME
from consumer import gcp
from consumer.app import build_worker
from consumer.errors import AudioTooLarge, SourceMissing
from consumer.events import ResultEvent
from consumer.handler import Delivery, JobHandler, Outcome
from consumer.separation import DemucsSeparator, Separator
from consumer.settings import Settings
from consumer.storage import BlobInfo
from devkit.emulators import FakeGcsServer, PubSubEmulator
from infra.provision import apply
from stem_contracts import (
    Job,
    JobPublisher,
    ResultSubscriber,
    StemsProcessed,
    encode,
    split_gcs_uri,
)
from stem_contracts import ResultEvent as AnyResult
from stemctl.results import is_final, results_subscription

__all__ = ["EndToEndPipeline", "InProcessPipeline"]

Audio = npt.NDArray[np.float32]

_TRACK_ID = "bench-track"


def _job_id(mode: str, rep: int) -> str:
    return f"bench-{mode}-{rep}-{uuid.uuid4().hex[:8]}"


def _handler_record(stage_log: StageLog, job_id: str) -> HandlerRecord:
    record = stage_log.wait_for(job_id)
    if record is None:
        raise BenchError(f"job {job_id}: the handler logged no 'job processed' record")
    if record.error is not None:
        raise BenchError(f"job {job_id} failed: {record.error}")
    return record


class _CapturingSeparator:
    """Stands in front of the fleet's separator; keeps the last input and float output
    when ``capture`` is set, whichever of ``separate`` / ``separate_blocks`` the handler
    calls. Everything else is the separator's own (``__getattr__``).

    ``separate``'s stems are kept by reference (the handler only reads them); streamed
    blocks are copied, since a producer may reuse their buffer. Only a capturing run pays
    for that copy.
    """

    def __init__(self, inner: DemucsSeparator) -> None:
        self.inner = inner
        self.capture = False
        self.captured: Captured | None = None

    def __getattr__(self, name: str) -> Any:
        if name == "inner":  # not set yet (e.g. while copying): no recursion
            raise AttributeError(name)
        return getattr(self.inner, name)

    def separate(self, mix: Audio, **kwargs: Any) -> dict[str, Audio]:
        stems: dict[str, Audio] = self.inner.separate(mix, **kwargs)
        if self.capture:
            self.captured = Captured(mix=mix, stems=dict(stems))
        return stems

    def separate_blocks(self, mix: Audio, **kwargs: Any) -> Iterator[tuple[int, Any]]:
        blocks: Iterator[tuple[int, Any]] = self.inner.separate_blocks(mix, **kwargs)
        if not self.capture:
            yield from blocks
            return
        kept: list[tuple[int, Any]] = []
        for start, block in blocks:
            kept.append((start, np.array(block, copy=True)))
            yield start, block
        kept.sort(key=lambda item: item[0])
        stems = np.concatenate([block for _, block in kept], axis=-1)
        self.captured = Captured(
            mix=mix, stems={name: stems[i] for i, name in enumerate(self.inner.sources)}
        )


class _DiskBlobStore:
    """A ``BlobStore`` over a local folder (``gs://b/name`` → ``root/b/name``).

    Local files rather than memory, so that a ten-minute source and its stems do not
    count towards the worker's resident memory as they would not in production.
    """

    def __init__(self, root: Path) -> None:
        self._root = root

    def _path(self, uri: str) -> Path:
        bucket, name = split_gcs_uri(uri)
        return self._root / bucket / name

    def put(self, uri: str, src: Path) -> None:
        path = self._path(uri)
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, path)

    def remove(self, bucket: str) -> None:
        shutil.rmtree(self._root / bucket, ignore_errors=True)

    def stat(self, uri: str) -> BlobInfo | None:
        path = self._path(uri)
        if not path.is_file():
            return None
        return BlobInfo(uri, path.stat().st_size, None, None)

    def download(self, uri: str, dest: Path, *, max_bytes: int) -> BlobInfo:
        info = self.stat(uri)
        if info is None:
            raise SourceMissing(f"{uri} does not exist")
        if info.size_bytes > max_bytes:
            raise AudioTooLarge(f"{uri} is {info.size_bytes} bytes, over {max_bytes}")
        shutil.copyfile(self._path(uri), dest)
        return info

    def upload(
        self,
        src: Path,
        uri: str,
        *,
        content_type: str,
        metadata: Mapping[str, str] | None = None,
    ) -> BlobInfo:
        # No custom metadata kept: stems never carry a sha256 here, so a reuse pointer is
        # always stale and every benchmarked job really separates.
        del metadata
        self.put(uri, src)
        return BlobInfo(uri, src.stat().st_size, None, content_type)

    def copy(self, src_uri: str, dest_uri: str) -> BlobInfo:
        if self.stat(src_uri) is None:
            raise SourceMissing(f"{src_uri} does not exist")
        self.put(dest_uri, self._path(src_uri))
        info = self.stat(dest_uri)
        assert info is not None
        return info

    def read_bytes(self, uri: str) -> bytes | None:
        path = self._path(uri)
        return path.read_bytes() if path.is_file() else None

    def delete(self, uri: str) -> bool:
        path = self._path(uri)
        existed = path.is_file()
        path.unlink(missing_ok=True)
        return existed

    def write_bytes(self, uri: str, data: bytes, *, content_type: str) -> None:
        path = self._path(uri)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


class _DroppingEvents:
    """An ``EventPublisher`` that encodes every event as the Pub/Sub adapter does, keeps
    the last result per job, and sends nothing."""

    def __init__(self) -> None:
        self.last: dict[str, ResultEvent] = {}

    def publish_result(self, event: ResultEvent) -> None:
        encode(event)
        self.last[event.job_id] = event

    def publish_progress(self, event: Any) -> None:
        encode(event)

    def dead_letter(self, data: bytes, attributes: Mapping[str, str]) -> None:
        del data, attributes


class InProcessPipeline:
    """``JobHandler.handle`` on a job message; no servers."""

    mode = "inprocess"
    _STAGING = "bench-staging"

    def __init__(
        self,
        settings: Settings,
        separator: DemucsSeparator,
        *,
        forward: ForwardTimer,
        stage_log: StageLog,
        workdir: Path,
        mp3_bitrate: int = 320,
    ) -> None:
        self._separator = _CapturingSeparator(separator)
        self._store = _DiskBlobStore(workdir / "gcs")
        self._events = _DroppingEvents()
        self._forward = forward
        self._stage_log = stage_log
        self._cuda = separator.device.type == "cuda"
        self._output_bucket = settings.output_bucket
        self._mp3_bitrate = mp3_bitrate
        self.handler = JobHandler(
            settings,
            store=self._store,
            events=self._events,
            separator=cast(Separator, self._separator),
        )

    def run(self, track: Path, rep: int, *, capture: bool = False) -> RunResult:
        job_id = _job_id(self.mode, rep)
        source_uri = f"gs://{self._STAGING}/uploads/{_TRACK_ID}/{job_id}/source.wav"
        self._store.put(source_uri, track)  # staging is the submitter's cost: not timed
        job = Job(
            job_id=job_id,
            track_id=_TRACK_ID,
            source_uri=source_uri,
            model=MODEL_NAME,
            format="mp3",
            mp3_bitrate=self._mp3_bitrate,
        )
        data, attributes = encode(job)
        delivery = Delivery(data=data, attributes=attributes, message_id=job_id)
        self._separator.capture = capture
        self._separator.captured = None
        self._forward.reset()
        try:
            with UsageProbe(cuda=self._cuda) as usage:
                started = time.perf_counter()
                outcome = self.handler.handle(delivery)
                wall = time.perf_counter() - started
            stages = _handler_record(self._stage_log, job_id).stages
        finally:
            self._separator.capture = False
            self._store.remove(self._STAGING)
            self._store.remove(self._output_bucket)
        event = self._events.last.pop(job_id, None)
        if outcome is not Outcome.ACK or not isinstance(event, StemsProcessed):
            raise BenchError(f"in-process job {job_id} ended with {outcome}: {event}")
        return RunResult(
            mode=self.mode,
            rep=rep,
            audio_seconds=event.source.duration_seconds,
            wall_s=wall,
            forward_s=self._forward.total_s,
            forward_calls=self._forward.calls,
            stages=stages,
            usage=usage,
            captured=self._separator.captured,
        )


class _FinalResults:
    """A long-lived subscriber's callback: the final result event of every job, by id.

    One subscriber for the whole run, as a catalog service would have: opening a fresh
    streaming pull per job on the same subscription (``stemctl.results.wait_for_result``)
    delayed deliveries by a minute and more on the emulator when done repeatedly.
    """

    def __init__(self) -> None:
        self._final: dict[str, AnyResult] = {}
        self._arrived = threading.Condition()

    def on_event(self, event: AnyResult) -> None:
        if is_final(event):
            with self._arrived:
                self._final[event.job_id] = event
                self._arrived.notify_all()

    def wait(self, job_id: str, timeout_s: float) -> AnyResult:
        with self._arrived:
            if not self._arrived.wait_for(lambda: job_id in self._final, timeout_s):
                raise BenchError(f"no final result for e2e job {job_id} within {timeout_s:.0f} s")
            return self._final.pop(job_id)


class EndToEndPipeline:
    """Emulators + provisioning + an in-process worker; one submitted job per run.

    Use as a context manager: entering starts everything (not timed), leaving stops the
    worker and the servers.
    """

    mode = "e2e"

    def __init__(
        self,
        settings: Settings,
        separator: DemucsSeparator,
        *,
        forward: ForwardTimer,
        stage_log: StageLog,
        timeout_s: float,
        mp3_bitrate: int = 320,
    ) -> None:
        self._base_settings = settings
        self._separator = separator
        self._forward = forward
        self._stage_log = stage_log
        self._timeout_s = timeout_s
        self._mp3_bitrate = mp3_bitrate
        self._stack = contextlib.ExitStack()
        self._settings: Settings | None = None
        self._results = _FinalResults()
        self._jobs: JobPublisher | None = None

    def __enter__(self) -> Self:
        stack = self._stack.__enter__()
        try:
            pubsub = stack.enter_context(PubSubEmulator())
            gcs = stack.enter_context(FakeGcsServer())
            # The Google client libraries read these themselves.
            stack.enter_context(
                mock.patch.dict(
                    os.environ,
                    {"PUBSUB_EMULATOR_HOST": pubsub.host, "STORAGE_EMULATOR_HOST": gcs.url},
                )
            )
            settings = self._base_settings.model_copy(
                update={
                    "project": "stem-bench",
                    "pubsub_emulator_host": pubsub.host,
                    "storage_emulator_host": gcs.url,
                    "metrics_port": 0,
                }
            )
            apply(
                settings,
                publisher=gcp.publisher_client(settings),
                subscriber=gcp.subscriber_client(settings),
                storage_client=gcp.storage_client(settings),
            )
            worker = build_worker(settings, self._separator)
            thread = threading.Thread(target=worker.run, name="bench-worker", daemon=True)
            thread.start()

            def stop_worker() -> None:
                worker.request_stop("bench finished")
                thread.join(60)

            stack.callback(stop_worker)
            if not worker.ready.wait(60):
                raise BenchError("the worker did not start pulling within 60 s")
            client, subscription = stack.enter_context(results_subscription(settings))
            stack.enter_context(
                ResultSubscriber(
                    settings.require_project(),
                    subscription,
                    on_event=self._results.on_event,
                    subscriber=client,
                )
            )
            self._jobs = stack.enter_context(
                JobPublisher(
                    settings.require_project(),
                    staging_bucket=settings.staging_bucket,
                    storage_client=gcp.storage_client(settings),
                )
            )
            self._settings = settings
        except BaseException:
            stack.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    def run(self, track: Path, rep: int) -> RunResult:
        if self._settings is None or self._jobs is None:
            raise RuntimeError("EndToEndPipeline.run outside its with block")
        job_id = _job_id(self.mode, rep)
        self._forward.reset()
        with UsageProbe(cuda=self._separator.device.type == "cuda") as usage:
            started = time.perf_counter()
            started_epoch = time.time()
            self._jobs.submit_file(
                track,
                track_id=_TRACK_ID,
                job_id=job_id,
                model=MODEL_NAME,
                format="mp3",
                mp3_bitrate=self._mp3_bitrate,
            )
            submitted = time.perf_counter()
            final = self._results.wait(job_id, self._timeout_s)
            wall = time.perf_counter() - started
            received_epoch = time.time()
        if not isinstance(final, StemsProcessed):
            raise BenchError(f"e2e job {job_id} failed: {final.model_dump_json(by_alias=True)}")
        record = _handler_record(self._stage_log, job_id)
        stages = {"submit": submitted - started, **record.stages}
        worker_s = (record.duration_ms or final.processing_time_ms) / 1000
        submitted_epoch = started_epoch + stages["submit"]
        # Wall-clock stamps, one process: the job waited for the worker this long after it
        # was published, and the result took this long to reach the subscriber.
        queue_s = record.logged_at - worker_s - submitted_epoch
        result_delivery_s = received_epoch - record.logged_at
        return RunResult(
            mode=self.mode,
            rep=rep,
            audio_seconds=final.source.duration_seconds,
            wall_s=wall,
            forward_s=self._forward.total_s,
            forward_calls=self._forward.calls,
            stages=stages,
            usage=usage,
            extra={
                "worker_s": worker_s,
                "queue_s": queue_s,
                "result_delivery_s": result_delivery_s,
            },
        )
