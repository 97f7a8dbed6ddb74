"""Idempotent provisioning of the fleet's topics, subscriptions, (on the emulator) buckets and
(on real GCP) the staging bucket's upload notifications.

Buckets get the lifecycle rules the retention settings describe (:func:`desired_lifecycle`):
staged sources deleted after ``STEM_STAGING_RETENTION_DAYS``, stems after
``STEM_OUTPUT_RETENTION_DAYS`` when set, cancel markers (``_cancel/``) after a day. A
storage server that accepts the rules but does not keep them (fake-gcs-server 1.x stores
no lifecycle configuration) is reported as such, not as a change on every run.

``apply`` reads what exists, compares it with what the settings describe, and creates or
updates only what differs; a second run reports every resource as ``ok``. ``dry_run``
reports the same plan and changes nothing. The Terraform in ``infra/terraform`` describes
the same resources for real projects (plus IAM, which the emulator does not have).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from google.api_core import exceptions as gexc
from google.cloud import pubsub_v1, storage
from google.protobuf import duration_pb2, field_mask_pb2

from consumer.settings import Settings
from stem_contracts import CANCEL_PREFIX

__all__ = [
    "CANCEL_MARKER_DAYS",
    "DLQ_RETENTION_S",
    "UPLOAD_EVENT_TYPES",
    "UPLOAD_PAYLOAD_FORMAT",
    "Change",
    "ProvisioningError",
    "apply",
    "desired_lifecycle",
    "desired_subscriptions",
]

CANCEL_MARKER_DAYS = 1
"""Cancel markers are deleted a day after they are written: a job cancelled before it was
published is expected within a day."""

DLQ_RETENTION_S = 7 * 24 * 3600
"""Dead letters are kept for the longest retention Pub/Sub allows: 7 days."""

UPLOAD_EVENT_TYPES = ("OBJECT_FINALIZE",)
"""The GCS events that become jobs (DESIGN.md "Uploads as a job source")."""
UPLOAD_PAYLOAD_FORMAT = "JSON_API_V1"
"""The notification carries the object resource, custom metadata included."""

Action = Literal["create", "update", "ok"]


class ProvisioningError(RuntimeError):
    """The project holds something apply cannot fix in place (e.g. a sub on another topic)."""


@dataclass(frozen=True)
class Change:
    """One resource and what ``apply`` did (or, in a dry run, would do) to it."""

    action: Action
    kind: Literal["topic", "subscription", "bucket", "notification"]
    name: str
    detail: str = ""

    def __str__(self) -> str:
        text = f"{self.action:<7} {self.kind:<13} {self.name}"
        return f"{text}  ({self.detail})" if self.detail else text


# Pub/Sub deletes a subscription idle for 31 days by default: a fleet scaled to zero, or a
# quiet DLQ, would lose it — and messages published to a topic with no subscription are
# dropped. An expiration policy with no ttl means "never".
_NEVER_EXPIRE = pubsub_v1.types.ExpirationPolicy()


def _duration(seconds: int) -> duration_pb2.Duration:
    return duration_pb2.Duration(seconds=seconds)


def desired_subscriptions(settings: Settings, project: str) -> list[pubsub_v1.types.Subscription]:
    """The subscriptions the fleet needs, as Pub/Sub protos."""
    topic = f"projects/{project}/topics/"
    sub = f"projects/{project}/subscriptions/"

    def dead_lettering(name: str, topic_name: str) -> pubsub_v1.types.Subscription:
        """A work subscription: its deliveries dead-letter to stem-dlq, with backoff."""
        return pubsub_v1.types.Subscription(
            name=sub + name,
            topic=topic + topic_name,
            ack_deadline_seconds=settings.ack_deadline_s,
            dead_letter_policy=pubsub_v1.types.DeadLetterPolicy(
                dead_letter_topic=topic + settings.dlq_topic,
                max_delivery_attempts=settings.max_delivery_attempts,
            ),
            retry_policy=pubsub_v1.types.RetryPolicy(
                minimum_backoff=_duration(settings.min_retry_backoff_s),
                maximum_backoff=_duration(settings.max_retry_backoff_s),
            ),
            expiration_policy=_NEVER_EXPIRE,
        )

    jobs = dead_lettering(settings.jobs_subscription, settings.jobs_topic)
    dlq = pubsub_v1.types.Subscription(
        name=sub + settings.dlq_subscription,
        topic=topic + settings.dlq_topic,
        ack_deadline_seconds=60,
        message_retention_duration=_duration(DLQ_RETENTION_S),
        expiration_policy=_NEVER_EXPIRE,
    )
    # Upload notifications: a notification the intake cannot turn into a job and cannot
    # dead-letter itself (its publish keeps failing) reaches stem-dlq through this policy.
    uploads = dead_lettering(settings.uploads_subscription, settings.uploads_topic)
    return [jobs, dlq, uploads]


# The subscription fields apply manages (topic is fixed at creation).
_MANAGED_FIELDS = (
    "ack_deadline_seconds",
    "dead_letter_policy",
    "retry_policy",
    "message_retention_duration",
    "expiration_policy",
)


def _differences(
    want: pubsub_v1.types.Subscription, have: pubsub_v1.types.Subscription
) -> list[str]:
    diffs = []
    for field in _MANAGED_FIELDS:
        wanted = getattr(want, field)
        # Only compare what we set: an unset field in `want` leaves the server's default.
        if field != "ack_deadline_seconds" and field not in want:
            continue
        if wanted != getattr(have, field):
            diffs.append(field)
    return diffs


def _describe(sub: pubsub_v1.types.Subscription) -> str:
    parts = [f"ack_deadline={sub.ack_deadline_seconds}s"]
    if "dead_letter_policy" in sub:
        dlp = sub.dead_letter_policy
        parts.append(
            f"dead_letter→{dlp.dead_letter_topic.rsplit('/', 1)[-1]} "
            f"after {dlp.max_delivery_attempts} attempts"
        )
    if "retry_policy" in sub:
        rp = sub.retry_policy
        parts.append(
            f"retry backoff {rp.minimum_backoff.total_seconds():.0f}–"
            f"{rp.maximum_backoff.total_seconds():.0f}s"
        )
    if "message_retention_duration" in sub:
        parts.append(f"retention {sub.message_retention_duration.total_seconds() / 86400:.0f}d")
    if "expiration_policy" in sub and not sub.expiration_policy.ttl:
        parts.append("never expires")
    return ", ".join(parts)


def _apply_topics(
    settings: Settings, project: str, publisher: pubsub_v1.PublisherClient, dry_run: bool
) -> list[Change]:
    changes = []
    for name in (
        settings.jobs_topic,
        settings.results_topic,
        settings.dlq_topic,
        settings.uploads_topic,
    ):
        path = publisher.topic_path(project, name)
        try:
            publisher.get_topic(request={"topic": path})
        except gexc.NotFound:
            if not dry_run:
                # Another apply may win the race; that is the state we wanted anyway.
                with contextlib.suppress(gexc.AlreadyExists):
                    publisher.create_topic(request={"name": path})
            changes.append(Change("create", "topic", name))
        else:
            changes.append(Change("ok", "topic", name))
    return changes


def _apply_subscriptions(
    settings: Settings, project: str, subscriber: pubsub_v1.SubscriberClient, dry_run: bool
) -> list[Change]:
    changes = []
    for want in desired_subscriptions(settings, project):
        short = want.name.rsplit("/", 1)[-1]
        try:
            have = subscriber.get_subscription(request={"subscription": want.name})
        except gexc.NotFound:
            if not dry_run:
                with contextlib.suppress(gexc.AlreadyExists):
                    subscriber.create_subscription(request=want)
            changes.append(Change("create", "subscription", short, _describe(want)))
            continue
        if have.topic != want.topic:
            raise ProvisioningError(
                f"subscription {short} is attached to {have.topic}, not {want.topic}; "
                "a subscription cannot change topic: delete it and run apply again"
            )
        diffs = _differences(want, have)
        if not diffs:
            changes.append(Change("ok", "subscription", short, _describe(have)))
            continue
        if not dry_run:
            subscriber.update_subscription(
                request={
                    "subscription": want,
                    "update_mask": field_mask_pb2.FieldMask(paths=diffs),
                }
            )
        changes.append(
            Change("update", "subscription", short, f"{', '.join(diffs)} → {_describe(want)}")
        )
    return changes


def _rule(action: str, age: int, prefixes: tuple[str, ...] = ()) -> dict[str, Any]:
    condition: dict[str, Any] = {"age": age}
    if prefixes:
        condition["matchesPrefix"] = list(prefixes)
    return {"action": {"type": action}, "condition": condition}


def desired_lifecycle(settings: Settings) -> dict[str, list[dict[str, Any]]]:
    """The lifecycle rules of each bucket, as the JSON API writes them (the same rules as
    ``infra/terraform/storage.tf``)."""
    abort_uploads = _rule("AbortIncompleteMultipartUpload", 1)
    staging = [_rule("Delete", settings.staging_retention_days), abort_uploads]
    output = [abort_uploads, _rule("Delete", CANCEL_MARKER_DAYS, (CANCEL_PREFIX,))]
    if settings.output_retention_days is not None:
        output.append(_rule("Delete", settings.output_retention_days))
    if settings.staging_bucket == settings.output_bucket:  # one bucket: the shorter keeps both
        return {settings.staging_bucket: staging + output[1:]}
    return {settings.staging_bucket: staging, settings.output_bucket: output}


def _rule_set(rules: Any) -> set[str]:
    return {json.dumps(dict(rule), sort_keys=True) for rule in rules}


def _describe_rules(rules: Sequence[Mapping[str, Any]]) -> str:
    parts = []
    for rule in rules:
        condition = rule["condition"]
        where = "".join(f" {p}*" for p in condition.get("matchesPrefix", ()))
        parts.append(f"{rule['action']['type']}{where} after {condition['age']}d")
    return "lifecycle: " + ", ".join(parts)


def _apply_buckets(settings: Settings, client: storage.Client, dry_run: bool) -> list[Change]:
    changes = []
    for name, rules in sorted(desired_lifecycle(settings).items()):
        detail = _describe_rules(rules)
        bucket = client.lookup_bucket(name)
        if bucket is not None and _rule_set(bucket.lifecycle_rules) == _rule_set(rules):
            changes.append(Change("ok", "bucket", name, detail))
            continue
        action: Action = "create" if bucket is None else "update"
        if dry_run:
            changes.append(Change(action, "bucket", name, detail))
            continue
        if bucket is None:
            with contextlib.suppress(gexc.Conflict):
                client.create_bucket(name)
        bucket = client.bucket(name)
        bucket.lifecycle_rules = rules
        bucket.patch()
        kept = client.get_bucket(name).lifecycle_rules
        if _rule_set(kept) != _rule_set(rules):
            # fake-gcs-server answers the patch but keeps no lifecycle configuration.
            if action == "update":
                action = "ok"
            detail = "this storage server keeps no lifecycle rules; wanted " + detail
        changes.append(Change(action, "bucket", name, detail))
    return changes


def _notification_matches(
    notification: storage.notification.BucketNotification, settings: Settings, project: str
) -> bool:
    return (
        notification.topic_project == project
        and notification.topic_name == settings.uploads_topic
        and tuple(notification.event_types or ()) == UPLOAD_EVENT_TYPES
        and notification.blob_name_prefix == settings.uploads_prefix
        and notification.payload_format == UPLOAD_PAYLOAD_FORMAT
    )


def _apply_notification(
    settings: Settings, project: str, client: storage.Client, dry_run: bool
) -> list[Change]:
    """The staging bucket notifies finalised uploads to the uploads topic, once.

    A config to the uploads topic with another prefix, event types or payload is replaced
    (GCS cannot update one in place); configs to other topics are left alone.
    """
    bucket = client.bucket(settings.staging_bucket)
    name = f"{settings.staging_bucket} → {settings.uploads_topic}"
    detail = (
        f"{', '.join(UPLOAD_EVENT_TYPES)} under {settings.uploads_prefix}, {UPLOAD_PAYLOAD_FORMAT}"
    )
    ours = [
        n
        for n in bucket.list_notifications()
        if n.topic_project == project and n.topic_name == settings.uploads_topic
    ]
    if any(_notification_matches(n, settings, project) for n in ours):
        stale = [n for n in ours if not _notification_matches(n, settings, project)]
        if not dry_run:
            for notification in stale:  # a second config would notify every upload twice
                notification.delete()
        return [Change("update" if stale else "ok", "notification", name, detail)]
    if not dry_run:
        for notification in ours:
            notification.delete()
        bucket.notification(
            topic_name=settings.uploads_topic,
            topic_project=project,
            event_types=list(UPLOAD_EVENT_TYPES),
            blob_name_prefix=settings.uploads_prefix,
            payload_format=UPLOAD_PAYLOAD_FORMAT,
        ).create()
    return [Change("update" if ours else "create", "notification", name, detail)]


def apply(
    settings: Settings,
    *,
    dry_run: bool = False,
    publisher: pubsub_v1.PublisherClient,
    subscriber: pubsub_v1.SubscriberClient,
    storage_client: storage.Client | None = None,
    notification_client: storage.Client | None = None,
) -> list[Change]:
    """Bring topics, subscriptions, (given a storage client) buckets and their lifecycle
    rules, and (given a notification client) the staging bucket's upload notifications to
    the settings.

    Topics come first: a subscription's dead-letter topic must exist before it, and a
    notification's topic before the notification. Buckets are only managed when
    ``storage_client`` is given — the CLI passes one against fake-gcs-server; on real GCP
    buckets belong to Terraform (lifecycle rules, IAM). The notification config is only
    managed with ``notification_client`` — the CLI passes one on real GCP: fake-gcs-server
    has no notification API (it is started with its ``-event.*`` flags instead).
    """
    project = settings.require_project()
    changes = _apply_topics(settings, project, publisher, dry_run)
    changes += _apply_subscriptions(settings, project, subscriber, dry_run)
    if storage_client is not None:
        changes += _apply_buckets(settings, storage_client, dry_run)
    if notification_client is not None:
        changes += _apply_notification(settings, project, notification_client, dry_run)
    return changes
