"""The worker's event publisher reports an unconfirmed publish; it never sends it twice.

A second send would be a duplicate ``stems.processed`` at best, and for a dead letter a
duplicate job in ``stem-dlq``. The Pub/Sub client retries transient errors itself, until
the deadline it is given; a recording client stands in for it here.
"""

from __future__ import annotations

import pytest
from google.api_core import exceptions as gexc
from google.api_core import retry as gretry

from consumer import events as events_module
from consumer.errors import PublishFailed
from consumer.events import PubSubEventPublisher
from stem_contracts import StemsProcessing
from tests.support.pubsub_stub import StalledClient


def _publisher(client: StalledClient, timeout_s: float = 0.2) -> PubSubEventPublisher:
    return PubSubEventPublisher(
        client,
        project="p",
        results_topic="stem-results",
        dlq_topic="stem-dlq",
        timeout_s=timeout_s,
    )


def test_an_unconfirmed_result_event_is_publish_failed_after_one_send(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(events_module, "_CONFIRM_SLACK_S", 0.05)
    client = StalledClient()
    with pytest.raises(PublishFailed, match="not confirmed: TimeoutError"):
        _publisher(client).publish_result(
            StemsProcessing(job_id="j", track_id="t", correlation_id=None, attempt=1)
        )
    assert len(client.calls) == 1


def test_a_dead_letter_the_client_gave_up_on_is_sent_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    client = StalledClient(error=gexc.DeadlineExceeded("slow"))  # type: ignore[no-untyped-call]
    with pytest.raises(PublishFailed, match="DeadlineExceeded"):
        _publisher(client, timeout_s=9.0).dead_letter(b"{}", {"errorCode": "corrupt_audio"})
    assert len(client.calls) == 1
    retry = client.calls[0]["retry"]
    assert isinstance(retry, gretry.Retry)
    assert retry.timeout == 9.0
