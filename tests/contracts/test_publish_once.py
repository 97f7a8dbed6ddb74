"""A publish is retried by the Pub/Sub client alone: ``JobPublisher`` never sends a job twice.

The client (``PublisherClient.publish``) already retries a batch until its deadline. A second
retry layer around it would publish the same job again whenever a confirmation is slow — a
duplicate job, a second GPU pass. These tests stand a recording client in for the real one
(the point is what *our* code asks of the client, not what Pub/Sub does).
"""

from __future__ import annotations

import pytest
from google.api_core import exceptions as gexc
from google.api_core import retry as gretry

from stem_contracts import Job, JobPublisher
from stem_contracts import publisher as publisher_module
from tests.support.pubsub_stub import StalledClient


def _job() -> Job:
    return Job(job_id="job-1", track_id="trk-1", source_uri="gs://staging/song.flac")


def test_a_publish_never_confirmed_is_sent_once_and_raises(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(publisher_module, "_CONFIRM_SLACK_S", 0.05)
    client = StalledClient()
    jobs = JobPublisher("p", publisher=client, publish_timeout_s=0.2)
    with jobs, pytest.raises(TimeoutError):
        jobs.publish(_job())
    assert len(client.calls) == 1


def test_a_transient_failure_reported_by_the_client_is_not_republished() -> None:
    client = StalledClient(error=gexc.ServiceUnavailable("down"))  # type: ignore[no-untyped-call]
    jobs = JobPublisher("p", publisher=client)
    with jobs, pytest.raises(gexc.ServiceUnavailable):
        jobs.publish(_job())
    assert len(client.calls) == 1


def test_the_client_is_given_the_retry_policy_and_its_deadline() -> None:
    client = StalledClient(error=gexc.ServiceUnavailable("down"))  # type: ignore[no-untyped-call]
    jobs = JobPublisher("p", publisher=client, publish_timeout_s=7.0)
    with jobs, pytest.raises(gexc.ServiceUnavailable):
        jobs.publish(_job())
    retry = client.calls[0]["retry"]
    assert isinstance(retry, gretry.Retry)
    assert retry.timeout == 7.0
    assert retry._predicate(gexc.ServiceUnavailable("x"))  # type: ignore[no-untyped-call]
    assert not retry._predicate(gexc.PermissionDenied("x"))  # type: ignore[no-untyped-call]
