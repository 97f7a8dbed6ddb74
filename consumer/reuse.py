"""Reuse: answer a job with server-side copies of an earlier job's stems (DESIGN.md "Reuse").

After the source is downloaded and before it is separated, the worker computes the job's
**reuse key** (:func:`reuse_key`): sha256 over the source bytes' sha256, the model, the
format, the MP3 bitrate, the sorted stems and every worker setting that changes the
stems' bytes (:func:`output_settings`). ``{OUTPUT_BUCKET}/_reuse/{key}.json`` —
``{"jobId", "manifestUri", "createdAt"}`` — points to the manifest of the job that
produced those stems. The pointer is trusted only when that manifest still answers the
key (model version, stems, format) and every stem object still exists with the size and
sha256 the manifest records (the sha256 travels as the object's custom metadata, written
when the stem was uploaded and kept by a copy: checking it needs no download). Anything
else — no pointer, an unreadable one, a manifest gone, a stem deleted or overwritten — is
a *stale* pointer: the job separates, and its own pointer replaces the stale one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import PurePosixPath
from typing import Any, Final

from pydantic import BaseModel, ConfigDict, ValidationError
from pydantic.alias_generators import to_camel

from consumer.errors import SourceMissing, StemError
from consumer.events import EventHeader
from consumer.manifest import MANIFEST_NAME, wanted_stems, write_manifest
from consumer.settings import Settings
from consumer.storage import BlobStore, join_uri
from stem_contracts import (
    ContractError,
    Job,
    StemsProcessed,
    Usage,
    decode_event,
    split_gcs_uri,
)

__all__ = [
    "REUSE_PREFIX",
    "SHA256_METADATA",
    "Pointer",
    "ReuseIndex",
    "output_settings",
    "reuse_key",
]

_log = logging.getLogger(__name__)

REUSE_PREFIX: Final = "_reuse"
"""Where pointers live in the output bucket: ``_reuse/{key}.json``."""
SHA256_METADATA: Final = "sha256"
"""The custom-metadata key of a stem object that records its sha256."""


def output_settings(settings: Settings) -> dict[str, object]:
    """Every worker setting that changes the bytes of the stems, by its environment name.

    Add a setting here when it changes the output (e.g. a silence threshold or a sample
    format): jobs under different values must not share stems. Throughput knobs
    (``STEM_SEGMENT_BATCH``, ``STEM_ENCODE_WORKERS``) and the device change at most the
    float rounding, as between any two GPUs, and are left out.
    """
    return {
        "STEM_MODEL_REPO": str(settings.model_repo) if settings.model_repo else None,
        "STEM_SEGMENT_OVERLAP": settings.segment_overlap,
        "STEM_SHIFTS": settings.shifts,
        "STEM_SEGMENT_SECONDS": settings.segment_seconds,
        "STEM_PRECISION": settings.precision,
        "STEM_CPU_RUNTIME": settings.cpu_runtime,  # another graph runtime, other floats
        "STEM_MP3_QUALITY": settings.mp3_quality,
        # the analysis written beside the stems: the silent flags and the peaks.json
        "STEM_SILENCE_LUFS": settings.silence_lufs,
        "STEM_WAVEFORM_POINTS": settings.waveform_points,
    }


def reuse_key(source_sha256: str, job: Job, sources: Sequence[str], settings: Settings) -> str:
    """The reuse key of ``job`` on a source whose bytes hash to ``source_sha256``."""
    material = {
        "source": source_sha256,
        "model": job.model,
        "format": job.format,
        "mp3Bitrate": job.mp3_bitrate,
        # All stems by default and the same stems named explicitly are the same request.
        "stems": sorted(wanted_stems(job, sources)),
        # the output options; "source" resolves the same way for the same source bytes
        "sampleFormat": job.sample_format,
        "clipMode": job.clip_mode,
        "sampleRate": job.sample_rate,
        "settings": output_settings(settings),
    }
    canonical = json.dumps(material, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


class Pointer(BaseModel):
    """The body of ``_reuse/{key}.json`` (the shared format decided for the fleet)."""

    model_config = ConfigDict(
        frozen=True, alias_generator=to_camel, validate_by_name=True, serialize_by_alias=True
    )

    job_id: str
    manifest_uri: str
    created_at: datetime


class ReuseIndex:
    """The pointers in ``{bucket}/_reuse/`` and the copying of stems they point to."""

    def __init__(self, store: BlobStore, bucket: str) -> None:
        self._store = store
        self._bucket = bucket

    def pointer_uri(self, key: str) -> str:
        return f"gs://{self._bucket}/{REUSE_PREFIX}/{key}.json"

    def find(
        self, key: str, job: Job, *, model_version: str, sources: Sequence[str]
    ) -> tuple[Pointer, Mapping[str, Any]] | None:
        """The pointer and the earlier manifest (raw JSON, so fields this code does not
        know survive the copy) when they still hold; ``None`` when there is none or it is
        stale."""
        data = self._store.read_bytes(self.pointer_uri(key))
        if data is None:
            return None
        why: str | None = "pointer unreadable"
        try:
            pointer = Pointer.model_validate_json(data)
            why = "manifest missing"
            raw = self._store.read_bytes(pointer.manifest_uri)
            if raw is not None:
                manifest = json.loads(raw)
                earlier = decode_event(raw)
                why = self._stale_because(earlier, manifest, job, model_version, sources)
                if why is None:
                    return pointer, manifest
        except (ValidationError, ContractError, ValueError) as exc:
            why = f"{why}: {exc}"
        _log.info("stale reuse pointer; separating", extra={"jobId": job.job_id, "reason": why})
        return None

    def _stale_because(
        self,
        earlier: object,
        manifest: Mapping[str, Any],
        job: Job,
        model_version: str,
        sources: Sequence[str],
    ) -> str | None:
        if not isinstance(earlier, StemsProcessed):
            return "manifest is not a stems.processed event"
        if earlier.model_version != model_version:
            return f"made by {earlier.model_version}"
        if [s.name for s in earlier.stems] != wanted_stems(job, sources) or any(
            s.format != job.format for s in earlier.stems
        ):
            return "manifest holds other stems or another format"
        for stem in earlier.stems:
            info = self._store.stat(stem.uri)
            if info is None:
                return f"{stem.uri} is gone"
            if info.size_bytes != stem.size_bytes:
                return f"{stem.uri} is {info.size_bytes} bytes, not {stem.size_bytes}"
            if info.metadata.get(SHA256_METADATA) != stem.sha256:
                return f"{stem.uri} does not record sha256 {stem.sha256}"
        for uri in _other_uris(manifest):
            if self._store.stat(uri) is None:
                return f"{uri} is gone"
        return None

    def copy(
        self,
        pointer: Pointer,
        manifest: Mapping[str, Any],
        job: Job,
        prefix: str,
        header: EventHeader,
        *,
        started: float,
        usage: Callable[[float], Usage],
    ) -> StemsProcessed | None:
        """Copy the earlier job's objects under ``prefix`` and write this job's manifest;
        ``None`` when an object vanished meanwhile (the job separates instead).

        ``usage(audio_seconds)`` gives this attempt's usage once the copies are done (no
        device time); ``started`` is when the attempt began (``time.monotonic()``)."""
        stems = []
        try:
            for stem in manifest["stems"]:
                copied = dict(stem)
                for name, value in stem.items():
                    if _is_object_uri(name, value):
                        copied[name] = join_uri(prefix, PurePosixPath(value).name)
                        self._store.copy(value, copied[name])
                stems.append(copied)
        except SourceMissing as exc:
            _log.warning(
                "reused object vanished while copying; separating",
                extra={"jobId": job.job_id, "error": exc.message},
            )
            return None
        event = StemsProcessed.model_validate(
            {
                **header,
                "model_version": manifest["modelVersion"],
                "stems": stems,
                "source": {**manifest["source"], "uri": job.source_uri},
                "processing_time_ms": int((time.monotonic() - started) * 1000),
                "completed_at": datetime.now(UTC),
                "reused_from": pointer.job_id,
                # the same bytes: the earlier job's decoded duration is this source's
                "usage": usage(float(manifest["source"]["durationSeconds"])),
            }
        )
        write_manifest(self._store, prefix, event)
        return event

    def remember(self, key: str, event: StemsProcessed, prefix: str) -> None:
        """Point ``key`` at ``event``'s manifest (written before). Best effort: a job whose
        stems are written is done even when its pointer cannot be."""
        pointer = Pointer(
            job_id=event.job_id,
            manifest_uri=join_uri(prefix, MANIFEST_NAME),
            created_at=datetime.now(UTC),
        )
        try:
            self._store.write_bytes(
                self.pointer_uri(key),
                pointer.model_dump_json().encode(),
                content_type="application/json",
            )
        except StemError as exc:
            _log.warning(
                "reuse pointer not written", extra={"jobId": event.job_id, "error": exc.message}
            )


def _is_object_uri(name: str, value: object) -> bool:
    """``uri`` and any ``…Uri`` field of a stem (e.g. ``peaksUri``) name an object."""
    return (name == "uri" or name.endswith("Uri")) and isinstance(value, str)


def _other_uris(manifest: Mapping[str, Any]) -> list[str]:
    """The objects a manifest references besides the stems themselves (``peaksUri``…)."""
    uris = []
    for stem in manifest.get("stems", ()):
        for name, value in stem.items():
            if name != "uri" and _is_object_uri(name, value):
                split_gcs_uri(value)
                uris.append(value)
    return uris
