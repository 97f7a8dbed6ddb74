"""Where a job's stems go, and the completion marker that says they are all there.

A job's objects live under its output prefix — ``outputUri``, else
``gs://{STEM_OUTPUT_BUCKET}/stems/{trackId}/{jobId}``: ``{stem}.{format}`` for each stem,
then ``manifest.json`` (the ``stems.processed`` body) written last. A manifest therefore
means "finished"; a redelivered job whose manifest answers it is republished, not recomputed.

A manifest *answers* a job only when it is that job's result: same ``jobId``, source, model
version, stems and format. A shared ``outputUri`` must not hand one job another's event, and
after a model upgrade stale stems must not be served.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Final

from consumer.errors import StemNotInModel
from consumer.storage import BlobStore, join_uri
from stem_contracts import ContractError, Job, StemsProcessed, decode_event

__all__ = [
    "MANIFEST_NAME",
    "answers",
    "check_stems",
    "existing_result",
    "output_prefix",
    "wanted_stems",
    "write_manifest",
]

_log = logging.getLogger(__name__)

MANIFEST_NAME: Final = "manifest.json"


def output_prefix(job: Job, output_bucket: str) -> str:
    """The ``gs://`` prefix the job's objects are written under."""
    return job.output_uri or f"gs://{output_bucket}/stems/{job.track_id}/{job.job_id}"


def wanted_stems(job: Job, sources: Sequence[str]) -> list[str]:
    """The requested stems in the model's order (all of them by default)."""
    return [s for s in sources if s in (job.stems or ())] or list(sources)


def check_stems(stems: Sequence[str] | None, model: str, sources: Sequence[str]) -> None:
    """Refuse requested stems the model does not have (``StemNotInModel``)."""
    missing = [s for s in stems or () if s not in sources]
    if missing:
        raise StemNotInModel(
            f"stem {', '.join(missing)} not in model {model} (has {', '.join(sources)})"
        )


def answers(event: StemsProcessed, job: Job, *, model_version: str, sources: Sequence[str]) -> bool:
    """Whether ``event`` (a manifest) is the result of ``job`` on this model."""
    return (
        event.job_id == job.job_id
        and event.source.uri == job.source_uri
        and event.model_version == model_version
        and [stem.name for stem in event.stems] == wanted_stems(job, sources)
        and all(stem.format == job.format for stem in event.stems)
    )


def existing_result(
    store: BlobStore, job: Job, prefix: str, *, model_version: str, sources: Sequence[str]
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
        event, job, model_version=model_version, sources=sources
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
