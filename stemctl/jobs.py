"""``stemctl jobs``: cancel jobs, and delete one job's objects.

Cancelling writes the job's marker ``{STEM_OUTPUT_BUCKET}/_cancel/{jobId}`` through
``JobPublisher.cancel`` (the same call other services make). Deleting removes everything
under the job's output prefix — stems, their peaks files, ``manifest.json`` — its cancel
marker, and every reuse pointer ``_reuse/*.json`` whose ``jobId`` is the job, so no later
job is answered with stems that are gone.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Annotated

import typer
from google.cloud import storage

from consumer import gcp
from consumer.settings import Settings
from stem_contracts import ID_PATTERN, JobPublisher, cancel_marker_name, split_gcs_uri
from stemctl.support import CommandFailed, load_settings, operator_errors

__all__ = ["REUSE_PREFIX", "JobObjects", "delete_job", "find_job_objects", "jobs_app"]

REUSE_PREFIX = "_reuse/"
"""Reuse pointers: ``{OUTPUT_BUCKET}/_reuse/{key}.json`` with the producing ``jobId``."""

jobs_app = typer.Typer(help="Cancel jobs; delete a job's stems.", no_args_is_help=True)


@dataclass(frozen=True)
class JobObjects:
    """What ``jobs delete`` removes for one job: object names per bucket."""

    prefix: str
    """``gs://bucket/prefix/`` the job's stems live under."""
    outputs: list[storage.Blob]
    pointers: list[storage.Blob]
    marker: storage.Blob | None


def _pointer_job_id(blob: storage.Blob) -> str | None:
    try:
        body = json.loads(blob.download_as_bytes())
    except ValueError:
        return None
    job_id = body.get("jobId") if isinstance(body, dict) else None
    return job_id if isinstance(job_id, str) else None


def find_job_objects(
    client: storage.Client, settings: Settings, job_id: str, track_id: str, output_uri: str | None
) -> JobObjects:
    """The objects of ``job_id``: under its output prefix (``output_uri``, else the default
    ``stems/{trackId}/{jobId}``), its reuse pointers and its cancel marker."""
    import re

    for name, value in (("job id", job_id), ("track id", track_id)):
        if not re.match(ID_PATTERN, value):
            raise CommandFailed(f"{value!r} is not a valid {name}")
    uri = output_uri or f"gs://{settings.output_bucket}/stems/{track_id}/{job_id}"
    bucket_name, path = split_gcs_uri(uri.rstrip("/"))
    if not path:
        raise CommandFailed(f"{uri}: refusing to delete a whole bucket")
    prefix = path + "/"
    outputs = list(client.list_blobs(bucket_name, prefix=prefix))
    output_bucket = client.bucket(settings.output_bucket)
    pointers = [
        blob
        for blob in client.list_blobs(settings.output_bucket, prefix=REUSE_PREFIX)
        if blob.name.endswith(".json") and _pointer_job_id(blob) == job_id
    ]
    marker = output_bucket.get_blob(cancel_marker_name(job_id))
    return JobObjects(f"gs://{bucket_name}/{prefix}", outputs, pointers, marker)


def delete_job(found: JobObjects) -> int:
    """Delete what :func:`find_job_objects` found; returns how many objects were deleted.
    Pointers go first: a reader never follows one to stems already gone."""
    deleted = 0
    for blob in [*found.pointers, *found.outputs, *([found.marker] if found.marker else [])]:
        try:
            blob.delete()
        except Exception as exc:
            if getattr(exc, "code", None) != 404:
                raise
            continue
        deleted += 1
    return deleted


@jobs_app.command("cancel")
@operator_errors
def cancel(
    job_ids: Annotated[list[str], typer.Argument(help="Jobs to cancel.", metavar="JOBID...")],
    reason: Annotated[
        str | None, typer.Option("--reason", help="Recorded in the cancel marker.")
    ] = None,
) -> None:
    """Cancel jobs: queued, running or not yet published (they end as stems.failed
    `cancelled` and leave no stems; a finished job stays finished)."""
    settings = load_settings()
    with JobPublisher(
        settings.require_project(),
        topic=settings.jobs_topic,
        output_bucket=settings.output_bucket,
        publisher=gcp.publisher_client(settings),
        storage_client=gcp.storage_client(settings),
    ) as jobs:
        for job_id in job_ids:
            try:
                uri = jobs.cancel(job_id, reason=reason)
            except ValueError as exc:
                raise CommandFailed(str(exc)) from exc
            typer.echo(f"cancelled {job_id} ({uri})")


@jobs_app.command("delete")
@operator_errors
def delete(
    job_id: Annotated[str, typer.Argument(help="The job whose objects to delete.")],
    track_id: Annotated[str, typer.Option("--track-id", help="The job's trackId.")],
    output_uri: Annotated[
        str | None,
        typer.Option("--output-uri", help="The job's outputUri, when it set one."),
    ] = None,
    yes: Annotated[bool, typer.Option("--yes", help="Delete without asking.")] = False,
) -> None:
    """Delete one job's stems, peaks files and manifest, its reuse pointers and its cancel
    marker."""
    settings = load_settings()
    client = gcp.storage_client(settings)
    found = find_job_objects(client, settings, job_id, track_id, output_uri)
    total = len(found.outputs) + len(found.pointers) + (found.marker is not None)
    if total == 0:
        typer.echo(f"nothing to delete for {job_id} under {found.prefix}")
        return
    typer.echo(
        f"{job_id}: {len(found.outputs)} objects under {found.prefix}, "
        f"{len(found.pointers)} reuse pointers, {'a' if found.marker else 'no'} cancel marker"
    )
    if not yes and not typer.confirm("delete them?", default=False):
        raise typer.Exit(code=1)
    typer.echo(f"deleted {delete_job(found)} objects")
