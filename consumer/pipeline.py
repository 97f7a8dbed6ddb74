"""The work of one job: download → decode → separate → encode and upload → manifest.

Everything happens in a temporary directory that is removed on every path. The device
runs one separation at a time (``separation_lock``): while one job separates, the other job
in flight downloads, decodes, encodes or uploads. Stems are encoded in parallel (LAME
releases the GIL: MP3-encoding six stems costs more CPU than a GPU needs to separate them),
each uploaded as soon as it is encoded, and ``manifest.json`` is written last.

The job's output options shape the encoding: ``clipMode`` (how each stem is kept from
clipping, :mod:`consumer.stems`), ``sampleFormat`` and ``sampleRate`` (stems resampled
with libsoxr when it differs from the model's, :func:`consumer.audio.resampled`).
"""

from __future__ import annotations

import concurrent.futures
import os
import tempfile
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

from opentelemetry import context as otel_context

from consumer import audio
from consumer.delivery import Attempt
from consumer.errors import UnsupportedAudio
from consumer.events import EventHeader
from consumer.manifest import stem_sample_format, stem_sample_rate, wanted_stems, write_manifest
from consumer.separation import SeparationCancelled, Separator
from consumer.settings import Settings
from consumer.stems import DEFAULT_MEMORY_LIMIT_BYTES, StemSpool
from consumer.storage import BlobStore, join_uri
from stem_contracts import Job, SourceInfo, StemFile, StemsProcessed, split_gcs_uri

__all__ = ["Pipeline", "source_file_name"]

_SOURCE_SUFFIXES: Final = {".wav": "wav", ".mp3": "mp3", ".flac": "flac"}


def source_file_name(source_uri: str) -> str:
    """The name of the pipeline's copy of the source: ``source`` plus the object's suffix
    when it is an audio one (the decoder's error messages begin with this name)."""
    suffix = Path(split_gcs_uri(source_uri)[1]).suffix.lower()
    return f"source{suffix if suffix in _SOURCE_SUFFIXES else ''}"


class Pipeline:
    """Runs a validated job to its ``stems.processed`` (written as the manifest, not yet
    published)."""

    def __init__(
        self,
        settings: Settings,
        *,
        store: BlobStore,
        separator: Separator,
        separation_lock: threading.Lock | None = None,
        workdir: Path | None = None,
        spool_memory_bytes: int = DEFAULT_MEMORY_LIMIT_BYTES,
    ) -> None:
        self._settings = settings
        self._store = store
        self._separator = separator
        self._separation_lock = separation_lock or threading.Lock()
        self._workdir = workdir
        self._spool_memory_bytes = spool_memory_bytes
        # Shared by the jobs in flight: at most one encode per core at a time.
        self._encoders = ThreadPoolExecutor(
            max_workers=settings.encode_workers or os.cpu_count() or 1,
            thread_name_prefix="encode",
        )

    def run(
        self,
        job: Job,
        prefix: str,
        header: EventHeader,
        attempt: Attempt,
        *,
        progress: Callable[[float], None] | None = None,
    ) -> StemsProcessed:
        """Separate ``job`` into its stems under ``prefix``; returns its manifest's event."""
        separator = self._separator
        with tempfile.TemporaryDirectory(prefix="stem-job-", dir=self._workdir) as tmp:
            workdir = Path(tmp)
            source_path = workdir / source_file_name(job.source_uri)

            with attempt.timed("download"):
                self._store.download(
                    job.source_uri, source_path, max_bytes=self._settings.max_audio_bytes
                )
            attempt.check()

            with attempt.timed("decode"):
                decoded = audio.decode(
                    source_path,
                    max_seconds=self._settings.max_audio_seconds,
                    target_rate=separator.sample_rate,
                    target_channels=separator.audio_channels,
                )
            attempt.check()

            source = decoded.source
            rate = stem_sample_rate(
                job, model_rate=separator.sample_rate, source_rate=source.sample_rate
            )
            if job.format == "mp3" and rate not in audio.MP3_SAMPLE_RATES:
                raise UnsupportedAudio(
                    f"mp3 stems at the source's {rate} Hz: MPEG-1 layer III needs 32000, "
                    "44100 or 48000 Hz (ask for wav/flac, or a sampleRate)"
                )
            wanted = wanted_stems(job, separator.sources)
            spool = StemSpool(
                workdir,
                separator.sources,
                wanted,
                channels=decoded.samples.shape[0],
                frames=decoded.samples.shape[1],
                memory_limit_bytes=self._spool_memory_bytes,
            )
            with attempt.timed("separate"), self._separation_lock:
                try:
                    for start, block in separator.separate_blocks(
                        decoded.samples, progress=progress, cancelled=attempt.cancelled
                    ):
                        spool.write(start, block)
                    spool.check_complete()
                except SeparationCancelled:
                    attempt.check()  # raises the reason: timeout or shutdown
                    raise
                finally:
                    spool.close()
            del decoded  # the mix is no longer needed
            files = self._encode_and_upload(job, prefix, spool, wanted, rate, workdir, attempt)

        event = StemsProcessed(
            **header,
            model_version=separator.model_version,
            stems=tuple(files),
            source=SourceInfo(
                uri=job.source_uri,
                duration_seconds=round(source.duration_seconds, 6),
                sample_rate=source.sample_rate,
                channels=source.channels,
            ),
            processing_time_ms=int(attempt.elapsed() * 1000),
            completed_at=datetime.now(UTC),
        )
        attempt.check()  # a job cancelled while encoding leaves no manifest
        with attempt.timed("upload"):
            write_manifest(self._store, prefix, event)
        return event

    def _encode_and_upload(
        self,
        job: Job,
        prefix: str,
        spool: StemSpool,
        wanted: list[str],
        rate: int,
        workdir: Path,
        attempt: Attempt,
    ) -> list[StemFile]:
        """Encode the stems in parallel at ``rate`` and upload each when it is done."""
        parent = otel_context.get_current()
        model_rate = self._separator.sample_rate

        def one(name: str) -> StemFile:
            token = otel_context.attach(parent)  # stage spans stay children of the job
            try:
                attempt.check()
                with attempt.timed("encode"):
                    encoded = audio.encode(
                        audio.resampled(spool.source(name, job.clip_mode), model_rate, rate),
                        rate,
                        job.format,
                        workdir / f"{name}.{job.format}",
                        mp3_bitrate=job.mp3_bitrate,
                        mp3_quality=self._settings.mp3_quality,
                        sample_format=job.sample_format,
                        clamp=job.clip_mode != "none",
                    )
                spool.release(name)
                uri = join_uri(prefix, f"{name}.{job.format}")
                with attempt.timed("upload"):
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
                    sample_format=stem_sample_format(job),
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
