"""The work of one job: download → decode → separate → encode, analyse and upload → manifest.

Everything happens in a temporary directory that is removed on every path. The device
runs one separation at a time (``separation_lock``): while one job separates, the other job
in flight downloads, decodes, encodes or uploads. Stems are encoded in parallel (LAME
releases the GIL: MP3-encoding six stems costs more CPU than a GPU needs to separate them),
each measured on the way to its encoder (loudness, peak, waveform: :mod:`consumer.analysis`)
and uploaded with its ``peaks.json`` as soon as it is encoded; ``manifest.json`` is written
last.

The job's output options shape the encoding: ``clipMode`` (how each stem is kept from
clipping, :mod:`consumer.stems`), ``sampleFormat`` and ``sampleRate`` (stems resampled
with libsoxr when it differs from the model's, :func:`consumer.audio.resampled`); the
analysis measures the stem as written, at its output rate.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
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
from consumer.analysis import MeteredSource, StemMeter
from consumer.delivery import Attempt
from consumer.errors import UnsupportedAudio
from consumer.events import EventHeader
from consumer.manifest import stem_sample_format, stem_sample_rate, wanted_stems, write_manifest
from consumer.reuse import SHA256_METADATA, ReuseIndex, reuse_key
from consumer.separation import SeparationCancelled, Separator
from consumer.settings import Settings
from consumer.stems import DEFAULT_MEMORY_LIMIT_BYTES, StemSpool
from consumer.storage import BlobStore, join_uri
from stem_contracts import Job, SourceInfo, StemFile, StemsProcessed, Usage, split_gcs_uri

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
        reuse: ReuseIndex | None = None,
    ) -> None:
        """``reuse``: where reuse pointers live (DESIGN.md "Reuse"); ``None`` = never
        reuse and write no pointers (``stemctl separate`` on local files)."""
        self._settings = settings
        self._store = store
        self._separator = separator
        self._separation_lock = separation_lock or threading.Lock()
        self._workdir = workdir
        self._spool_memory_bytes = spool_memory_bytes
        self._reuse = reuse
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

            key = None
            if self._reuse is not None:
                # Computed for every job, so a ``reuse: false`` job still leaves its pointer.
                with source_path.open("rb") as file:
                    source_sha256 = hashlib.file_digest(file, "sha256").hexdigest()
                key = reuse_key(source_sha256, job, separator.sources, self._settings)
                found = (
                    self._reuse.find(
                        key,
                        job,
                        model_version=separator.model_version,
                        sources=separator.sources,
                    )
                    if job.reuse
                    else None
                )
                if found is not None:
                    with attempt.timed("upload"):
                        reused = self._reuse.copy(
                            *found,
                            job,
                            prefix,
                            header,
                            started=attempt.started,
                            usage=lambda seconds: self._reused_usage(attempt, seconds),
                        )
                    if reused is not None:
                        return reused

            with attempt.timed("decode"):
                decoded = audio.decode(
                    source_path,
                    max_seconds=self._settings.max_audio_seconds,
                    target_rate=separator.sample_rate,
                    target_channels=separator.audio_channels,
                )
            attempt.check()
            attempt.audio_seconds = decoded.source.duration_seconds

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
            with attempt.timed("separate"), self._separation_lock, attempt.on_device():
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
            usage=attempt.usage(separator.device_name, self._settings.cost_per_hour),
        )
        attempt.check()  # a job cancelled while encoding leaves no manifest
        with attempt.timed("upload"):
            write_manifest(self._store, prefix, event)
            if key is not None and self._reuse is not None:
                self._reuse.remember(key, event, prefix)  # after the manifest it points to
        return event

    def _reused_usage(self, attempt: Attempt, audio_seconds: float) -> Usage:
        attempt.audio_seconds = audio_seconds
        return attempt.usage(self._separator.device_name, self._settings.cost_per_hour)

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
        """Encode and analyse the stems in parallel at ``rate``; upload each (and its
        waveform) when it is done."""
        parent = otel_context.get_current()
        model_rate = self._separator.sample_rate
        settings = self._settings

        def one(name: str) -> StemFile:
            token = otel_context.attach(parent)  # stage spans stay children of the job
            try:
                attempt.check()
                stem = audio.resampled(spool.source(name, job.clip_mode), model_rate, rate)
                meter = StemMeter(rate, *stem.shape, points=settings.waveform_points)
                with attempt.timed("encode"):
                    encoded = audio.encode(
                        MeteredSource(stem, meter),
                        rate,
                        job.format,
                        workdir / f"{name}.{job.format}",
                        mp3_bitrate=job.mp3_bitrate,
                        mp3_quality=settings.mp3_quality,
                        sample_format=job.sample_format,
                        clamp=job.clip_mode != "none",
                    )
                    analysis = meter.result(silence_lufs=settings.silence_lufs)
                spool.release(name)
                uri = join_uri(prefix, f"{name}.{job.format}")
                peaks_uri = join_uri(prefix, f"{name}.peaks.json")
                with attempt.timed("upload"):
                    self._store.upload(
                        encoded.path,
                        uri,
                        content_type=encoded.content_type,
                        # What a later job checks before reusing this stem (consumer.reuse).
                        metadata={SHA256_METADATA: encoded.sha256},
                    )
                    self._store.write_bytes(
                        peaks_uri,
                        json.dumps(analysis.waveform, separators=(",", ":")).encode(),
                        content_type="application/json",
                    )
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
                    loudness_lufs=analysis.loudness_lufs,
                    peak_dbfs=analysis.peak_dbfs,
                    silent=analysis.silent,
                    peaks_uri=peaks_uri,
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
