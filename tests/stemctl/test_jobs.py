"""``stemctl jobs cancel`` and ``stemctl jobs delete`` against fake-gcs-server (issue 18)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from consumer.settings import Settings
from stemctl.cli import app
from tests.support.settings_env import settings_environment

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


def stemctl(settings: Settings, *args: str, input: str | None = None) -> Result:
    return CliRunner().invoke(
        app, list(args), env=settings_environment(settings), input=input, catch_exceptions=False
    )


def _pointer(job_id: str) -> bytes:
    return json.dumps(
        {
            "jobId": job_id,
            "manifestUri": f"gs://b/stems/t/{job_id}/manifest.json",
            "createdAt": "2026-12-01T10:00:00Z",
        }
    ).encode()


def _objects(gcs: Any, bucket: str) -> set[str]:
    return {blob.name for blob in gcs.list_blobs(bucket)}


def test_jobs_delete_removes_exactly_that_jobs_objects(provisioned: Settings, gcs: Any) -> None:
    """Given job-1's stems, peaks files, manifest, reuse pointer and cancel marker beside a
    neighbour whose id starts the same, a pointer to another job and an unreadable pointer,
    when `jobs delete job-1 --track-id track-1 --yes` runs, then only job-1's are gone."""
    bucket = gcs.bucket(provisioned.output_bucket)
    mine = {
        "stems/track-1/job-1/vocals.wav",
        "stems/track-1/job-1/vocals.peaks.json",
        "stems/track-1/job-1/no_vocals.wav",
        "stems/track-1/job-1/manifest.json",
        "_reuse/aaaa.json",
        "_cancel/job-1",
    }
    theirs = {
        "stems/track-1/job-10/vocals.wav",
        "stems/track-1/job-10/manifest.json",
        "stems/track-2/job-1/vocals.wav",
        "_reuse/bbbb.json",
        "_reuse/cccc.json",
        "_cancel/job-10",
    }
    for name in mine | theirs:
        body = b"x"
        if name.startswith("_reuse/"):
            body = {"aaaa": _pointer("job-1"), "bbbb": _pointer("job-10")}.get(
                name[len("_reuse/") : -len(".json")], b"not json"
            )
        bucket.blob(name).upload_from_string(body)

    result = stemctl(provisioned, "jobs", "delete", "job-1", "--track-id", "track-1", "--yes")

    assert result.exit_code == 0, result.output
    assert "4 objects under" in result.output
    assert "1 reuse pointers, a cancel marker" in result.output
    assert "deleted 6 objects" in result.output
    assert _objects(gcs, provisioned.output_bucket) == theirs


def test_jobs_delete_asks_first_and_keeps_everything_on_no(provisioned: Settings, gcs: Any) -> None:
    bucket = gcs.bucket(provisioned.output_bucket)
    bucket.blob("stems/t/j/vocals.mp3").upload_from_string(b"x")

    result = stemctl(provisioned, "jobs", "delete", "j", "--track-id", "t", input="n\n")

    assert result.exit_code == 1
    assert _objects(gcs, provisioned.output_bucket) == {"stems/t/j/vocals.mp3"}


def test_jobs_cancel_writes_one_marker_per_job(provisioned: Settings, gcs: Any) -> None:
    result = stemctl(provisioned, "jobs", "cancel", "a", "b", "--reason", "duplicate upload")

    assert result.exit_code == 0, result.output
    assert _objects(gcs, provisioned.output_bucket) == {"_cancel/a", "_cancel/b"}
    body = json.loads(gcs.bucket(provisioned.output_bucket).blob("_cancel/a").download_as_bytes())
    assert (body["jobId"], body["reason"]) == ("a", "duplicate upload")
    assert "cancelledAt" in body


def test_jobs_cancel_refuses_an_invalid_job_id(provisioned: Settings, gcs: Any) -> None:
    result = stemctl(provisioned, "jobs", "cancel", "../x")

    assert result.exit_code == 1
    assert "is not a job id" in result.output
    assert _objects(gcs, provisioned.output_bucket) == set()
