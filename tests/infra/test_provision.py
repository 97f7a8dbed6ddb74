"""`infra apply` against the real Pub/Sub emulator and fake-gcs-server."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from consumer import gcp
from consumer.settings import Settings
from infra.provision import apply, desired_lifecycle
from tests.support.helpers import pull

pytestmark = pytest.mark.integration


def _apply(settings: Settings, *, dry_run: bool = False) -> list[tuple[str, str, str]]:
    changes = apply(
        settings,
        dry_run=dry_run,
        publisher=gcp.publisher_client(settings),
        subscriber=gcp.subscriber_client(settings),
        storage_client=gcp.storage_client(settings),
    )
    return [(c.action, c.kind, c.name) for c in changes]


def test_apply_twice_creates_once_and_then_changes_nothing(settings: Settings) -> None:
    dry = _apply(settings, dry_run=True)
    first = _apply(settings)
    second = _apply(settings)

    assert dry == first
    assert {(kind, name) for _, kind, name in first} == {
        ("topic", "stem-separate"),
        ("topic", "stem-results"),
        ("topic", "stem-dlq"),
        ("topic", "stem-uploads"),
        ("subscription", "stem-separate"),
        ("subscription", "stem-dlq"),
        ("subscription", "stem-uploads"),
        ("bucket", settings.staging_bucket),
        ("bucket", settings.output_bucket),
    }
    assert {action for action, _, _ in first} == {"create"}
    assert {action for action, _, _ in second} == {"ok"}


def test_dry_run_changes_nothing(settings: Settings, pubsub_clients: Any) -> None:
    _apply(settings, dry_run=True)
    publisher, _ = pubsub_clients
    topics = list(publisher.list_topics(request={"project": f"projects/{settings.project}"}))
    assert topics == []


def test_subscription_read_back_has_dead_letter_and_retry_policies(
    provisioned: Settings, pubsub_clients: Any
) -> None:
    _, subscriber = pubsub_clients
    project = provisioned.project
    sub = subscriber.get_subscription(
        subscription=subscriber.subscription_path(project, "stem-separate")
    )
    assert sub.topic == f"projects/{project}/topics/stem-separate"
    assert sub.dead_letter_policy.dead_letter_topic == f"projects/{project}/topics/stem-dlq"
    assert sub.dead_letter_policy.max_delivery_attempts == 5
    assert sub.retry_policy.minimum_backoff.total_seconds() == provisioned.min_retry_backoff_s
    assert sub.retry_policy.maximum_backoff.total_seconds() == provisioned.max_retry_backoff_s
    assert sub.ack_deadline_seconds == provisioned.ack_deadline_s
    # Never expires: a fleet scaled to zero must not lose its subscription after 31 idle days.
    assert "expiration_policy" in sub
    assert not sub.expiration_policy.ttl
    dlq = subscriber.get_subscription(
        subscription=subscriber.subscription_path(project, "stem-dlq")
    )
    assert dlq.topic == f"projects/{project}/topics/stem-dlq"
    assert "expiration_policy" in dlq
    assert not dlq.expiration_policy.ttl


def test_the_uploads_subscription_dead_letters_to_the_dlq_with_a_retry_policy(
    provisioned: Settings, pubsub_clients: Any
) -> None:
    _, subscriber = pubsub_clients
    project = provisioned.project
    sub = subscriber.get_subscription(
        subscription=subscriber.subscription_path(project, "stem-uploads")
    )
    assert sub.topic == f"projects/{project}/topics/stem-uploads"
    assert sub.dead_letter_policy.dead_letter_topic == f"projects/{project}/topics/stem-dlq"
    assert sub.dead_letter_policy.max_delivery_attempts == provisioned.max_delivery_attempts
    assert "retry_policy" in sub
    assert sub.retry_policy.maximum_backoff.total_seconds() == provisioned.max_retry_backoff_s
    assert "expiration_policy" in sub
    assert not sub.expiration_policy.ttl


def test_apply_updates_a_drifted_subscription_in_place(provisioned: Settings) -> None:
    changed = provisioned.model_copy(update={"max_delivery_attempts": 9})
    assert ("update", "subscription", "stem-separate") in _apply(changed)
    assert ("ok", "subscription", "stem-separate") in _apply(changed)


def test_message_nacked_on_every_delivery_reaches_the_dlq_with_dead_letter_attributes(
    provisioned: Settings, pubsub_clients: Any
) -> None:
    publisher, subscriber = pubsub_clients
    project = provisioned.project
    topic = publisher.topic_path(project, "stem-separate")
    jobs_sub = subscriber.subscription_path(project, "stem-separate")
    dlq_sub = subscriber.subscription_path(project, "stem-dlq")
    message_id = publisher.publish(topic, b"poison", jobId="j-poison").result()

    # The emulator forwards to the DLQ when it would make delivery number N+1, so keep
    # pulling (and nacking) the source subscription until the dead letter shows up.
    deliveries: list[int] = []
    dead: list[Any] = []
    deadline = time.monotonic() + 60
    while not dead and time.monotonic() < deadline:
        response = subscriber.pull(
            request={"subscription": jobs_sub, "max_messages": 1, "return_immediately": True},
            timeout=5,
        )
        for received in response.received_messages:
            deliveries.append(received.delivery_attempt)
            subscriber.modify_ack_deadline(
                request={
                    "subscription": jobs_sub,
                    "ack_ids": [received.ack_id],
                    "ack_deadline_seconds": 0,
                }
            )
        dead = pull(subscriber, dlq_sub, 1, timeout_s=0.2)

    assert len(dead) == 1, f"not dead-lettered after deliveries {deliveries}"
    [dead_message] = dead
    assert deliveries == list(range(1, provisioned.max_delivery_attempts + 1))
    assert dead_message.message.data == b"poison"
    attributes = dict(dead_message.message.attributes)
    assert attributes["jobId"] == "j-poison"
    assert attributes["CloudPubSubDeadLetterSourceSubscription"] == "stem-separate"
    assert attributes["CloudPubSubDeadLetterSourceDeliveryCount"] == "5"
    assert "CloudPubSubDeadLetterSourceTopicPublishTime" in attributes
    assert message_id  # the original id is confirmed; the DLQ copy gets its own


# --- bucket lifecycle (issue 18) -------------------------------------------------------------


def _rules(rules: Any) -> set[str]:
    return {json.dumps(dict(rule), sort_keys=True) for rule in rules}


def test_lifecycle_rules_follow_the_retention_settings(settings: Settings) -> None:
    default = desired_lifecycle(settings)
    assert _rules(default[settings.staging_bucket]) == _rules(
        [
            {"action": {"type": "Delete"}, "condition": {"age": 8}},
            {"action": {"type": "AbortIncompleteMultipartUpload"}, "condition": {"age": 1}},
        ]
    )
    cancel_markers = {
        "action": {"type": "Delete"},
        "condition": {"age": 1, "matchesPrefix": ["_cancel/"]},
    }
    assert _rules(default[settings.output_bucket]) == _rules(
        [
            {"action": {"type": "AbortIncompleteMultipartUpload"}, "condition": {"age": 1}},
            cancel_markers,
        ]
    )  # stems are kept
    expiring = desired_lifecycle(
        settings.model_copy(update={"staging_retention_days": 30, "output_retention_days": 90})
    )
    assert {"action": {"type": "Delete"}, "condition": {"age": 30}} in expiring[
        settings.staging_bucket
    ]
    assert {"action": {"type": "Delete"}, "condition": {"age": 90}} in expiring[
        settings.output_bucket
    ]


def test_apply_sets_lifecycle_rules_where_the_storage_server_keeps_them(
    settings: Settings, gcs: Any
) -> None:
    """fake-gcs-server (1.x) answers a bucket patch but stores no lifecycle configuration:
    apply then says so instead of reporting a change on every run. A server that keeps
    the rules must hold exactly the desired ones."""
    _apply(settings)
    changes = {
        c.name: c
        for c in apply(
            settings,
            publisher=gcp.publisher_client(settings),
            subscriber=gcp.subscriber_client(settings),
            storage_client=gcp.storage_client(settings),
        )
        if c.kind == "bucket"
    }

    for name, wanted in desired_lifecycle(settings).items():
        kept = _rules(gcs.get_bucket(name).lifecycle_rules)
        assert changes[name].action == "ok"
        if kept:
            assert kept == _rules(wanted)
            assert changes[name].detail.startswith("lifecycle: ")
        else:
            assert changes[name].detail.startswith("this storage server keeps no lifecycle rules")
        assert "Delete _cancel/* after 1d" in changes[settings.output_bucket].detail


class _Notification:
    """What ``apply`` reads of a GCS notification config (a stand-in for the real GCS
    API, which fake-gcs-server does not have: this checks apply's decisions only)."""

    def __init__(self, bucket: _Bucket, **fields: Any) -> None:
        self._bucket = bucket
        self.topic_name = fields["topic_name"]
        self.topic_project = fields["topic_project"]
        self.event_types = fields.get("event_types")
        self.blob_name_prefix = fields.get("blob_name_prefix")
        self.payload_format = fields.get("payload_format")

    def create(self) -> None:
        self._bucket.configs.append(self)

    def delete(self) -> None:
        self._bucket.configs.remove(self)


class _Bucket:
    def __init__(self) -> None:
        self.configs: list[_Notification] = []

    def list_notifications(self) -> list[_Notification]:
        return list(self.configs)

    def notification(self, **fields: Any) -> _Notification:
        return _Notification(self, **fields)


class _Storage:
    def __init__(self) -> None:
        self.staging = _Bucket()

    def bucket(self, name: str) -> _Bucket:
        assert name == "stem-staging"
        return self.staging


def test_the_upload_notification_is_created_once_and_a_drifted_one_replaced(
    settings: Settings, pubsub_clients: Any
) -> None:
    from infra.provision import apply

    settings = settings.model_copy(update={"staging_bucket": "stem-staging"})
    publisher, subscriber = pubsub_clients
    client = _Storage()
    other = client.staging.notification(topic_name="someone-else", topic_project="p")
    other.create()

    def run(dry_run: bool = False) -> list[str]:
        changes = apply(
            settings,
            dry_run=dry_run,
            publisher=publisher,
            subscriber=subscriber,
            notification_client=client,
        )
        return [c.action for c in changes if c.kind == "notification"]

    assert run(dry_run=True) == ["create"]
    assert client.staging.configs == [other]
    assert run() == ["create"]
    assert run() == ["ok"]
    ours = client.staging.configs[1]
    assert (ours.topic_project, ours.topic_name) == (settings.project, "stem-uploads")
    assert (ours.event_types, ours.blob_name_prefix, ours.payload_format) == (
        ["OBJECT_FINALIZE"],
        "incoming/",
        "JSON_API_V1",
    )
    # A config to our topic with another prefix is replaced; the other topic's is kept.
    ours.blob_name_prefix = "elsewhere/"
    assert run() == ["update"]
    assert run() == ["ok"]
    assert [c.topic_name for c in client.staging.configs] == ["someone-else", "stem-uploads"]
    assert client.staging.configs[1].blob_name_prefix == "incoming/"
