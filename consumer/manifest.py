"""Where a job's stems go, and the completion marker that says they are all there.

A job's objects live under its output prefix — ``outputUri``, else
``gs://{STEM_OUTPUT_BUCKET}/stems/{trackId}/{jobId}``: ``{stem}.{format}`` for each stem,
then ``manifest.json`` (the ``stems.processed`` body) written last. A manifest therefore
means "finished"; a redelivered job whose manifest answers it is republished, not recomputed.

A manifest *answers* a job only when it is that job's result: same ``jobId``, source, model
version, stems, format, sample format and sample rate. A shared ``outputUri`` must not hand
one job another's event, and after a model upgrade stale stems must not be served.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Final, Literal

from consumer.errors import StemNotInModel
from consumer.storage import BlobStore, join_uri
from stem_contracts import (
    COMPLEMENT_PREFIX,
    ContractError,
    Job,
    StemsProcessed,
    complement_of,
    decode_event,
)

__all__ = [
    "MANIFEST_NAME",
    "answers",
    "check_stems",
    "existing_result",
    "output_prefix",
    "remove_stems",
    "stem_sample_format",
    "stem_sample_rate",
    "wanted_stems",
    "write_manifest",
]

_log = logging.getLogger(__name__)

MANIFEST_NAME: Final = "manifest.json"


def output_prefix(job: Job, output_bucket: str) -> str:
    """The ``gs://`` prefix the job's objects are written under."""
    return job.output_uri or f"gs://{output_bucket}/stems/{job.track_id}/{job.job_id}"


def wanted_stems(job: Job, sources: Sequence[str]) -> list[str]:
    """The requested stems (all sources by default): sources in the model's order, then
    the complements ``no_<source>`` in the order of their sources."""
    if not job.stems:
        return list(sources)
    requested = set(job.stems)
    return [s for s in sources if s in requested] + [
        COMPLEMENT_PREFIX + s for s in sources if COMPLEMENT_PREFIX + s in requested
    ]


def check_stems(stems: Sequence[str] | None, model: str, sources: Sequence[str]) -> None:
    """Refuse requested stems the model does not have (``StemNotInModel``); ``no_<source>``
    is known for every source."""
    missing = [s for s in stems or () if (complement_of(s) or s) not in sources]
    if missing:
        raise StemNotInModel(
            f"stem {', '.join(missing)} not in model {model} (has {', '.join(sources)}, "
            f"and {COMPLEMENT_PREFIX}<source> for each)"
        )


def remove_stems(store: BlobStore, job: Job, prefix: str, sources: Sequence[str]) -> list[str]:
    """Delete what an unfinished attempt at ``job`` may have written under ``prefix`` — its
    stems and their peaks files, nothing else (an ``outputUri`` may be shared); returns the
    URIs deleted."""
    names = [f"{stem}.{job.format}" for stem in wanted_stems(job, sources)]
    names += [f"{stem}.peaks.json" for stem in wanted_stems(job, sources)]
    return [uri for uri in (join_uri(prefix, n) for n in names) if store.delete(uri)]


def stem_sample_rate(job: Job, *, model_rate: int, source_rate: int) -> int:
    """The sample rate of the job's stems: the model's unless ``sampleRate`` says otherwise."""
    if job.sample_rate is None:
        return model_rate
    return source_rate if job.sample_rate == "source" else job.sample_rate


def stem_sample_format(job: Job) -> Literal["pcm16", "pcm24", "float32"] | None:
    """The ``sampleFormat`` a stem object reports: the job's for wav/flac, none for mp3."""
    return None if job.format == "mp3" else job.sample_format


def answers(
    event: StemsProcessed,
    job: Job,
    *,
    model_version: str,
    sources: Sequence[str],
    model_rate: int,
) -> bool:
    """Whether ``event`` (a manifest) is the result of ``job`` on this model."""
    rate = stem_sample_rate(job, model_rate=model_rate, source_rate=event.source.sample_rate)
    sample_format = stem_sample_format(job)
    return (
        event.job_id == job.job_id
        and event.source.uri == job.source_uri
        and event.model_version == model_version
        and [stem.name for stem in event.stems] == wanted_stems(job, sources)
        and all(stem.format == job.format for stem in event.stems)
        and all(stem.sample_rate == rate for stem in event.stems)
        # Manifests from before sampleFormat existed hold pcm16 wav/flac.
        and all(
            (stem.sample_format or ("pcm16" if stem.format != "mp3" else None)) == sample_format
            for stem in event.stems
        )
    )


def existing_result(
    store: BlobStore,
    job: Job,
    prefix: str,
    *,
    model_version: str,
    sources: Sequence[str],
    model_rate: int,
) -> StemsProcessed | None:
    """The ``stems.processed`` of an earlier attempt at ``job``, when its manifest is under
    ``prefix`` and answers the job; ``None`` (recompute) otherwise."""
    data = store.read_bytes(join_uri(prefix, MANIFEST_NAME))
    if data is None:
        return None
    try:
        event = decode_event(data)
    except ContractError:
        _log.warning("unreadable manifest; recomputing", extra={"jobId": job.job_id})
        return None
    if not isinstance(event, StemsProcessed) or not answers(
        event, job, model_version=model_version, sources=sources, model_rate=model_rate
    ):
        _log.warning(
            "manifest from another job or model at this prefix; recomputing",
            extra={"jobId": job.job_id},
        )
        return None
    _log.info("job already processed; republishing its result", extra={"jobId": job.job_id})
    return event


def write_manifest(store: BlobStore, prefix: str, event: StemsProcessed) -> None:
    """Write the completion marker: the last object of a job."""
    store.write_bytes(
        join_uri(prefix, MANIFEST_NAME),
        event.model_dump_json(by_alias=True).encode(),
        content_type="application/json",
    )
