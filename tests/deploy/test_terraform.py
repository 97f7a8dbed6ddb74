"""infra/terraform: parsed with python-hcl2 (no terraform binary, no cloud), and held to
what `stemctl infra apply` creates (infra.provision.desired_subscriptions), the settings'
defaults and bounds, and least privilege for the worker."""

from __future__ import annotations

import re
from typing import Any

import pytest

from infra.provision import DLQ_RETENTION_S, desired_lifecycle, desired_subscriptions
from tests.deploy.support import Terraform, default_settings
from tests.support.settings_env import settings_env_names

PROJECT = "tf-project"


@pytest.fixture(scope="module")
def tf() -> Terraform:
    return Terraform.load()


def _block(body: dict[str, Any], name: str) -> dict[str, Any]:
    (block,) = body[name]
    return dict(block)


def _seconds(duration: str) -> int:
    match = re.fullmatch(r"(\d+)s", duration)
    assert match, f"not a duration in seconds: {duration!r}"
    return int(match.group(1))


def _subscription_by_name(tf: Terraform, name: str) -> dict[str, Any]:
    found = [
        body
        for body in tf.resources_of("google_pubsub_subscription").values()
        if tf.resolve(body["name"]) == name
    ]
    assert len(found) == 1, f"{len(found)} subscriptions named {name}"
    return found[0]


def test_topics_are_the_settings_topics(tf: Terraform) -> None:
    settings = default_settings()
    names = {tf.resolve(body["name"]) for body in tf.resources_of("google_pubsub_topic").values()}
    assert names == {
        settings.jobs_topic,
        settings.results_topic,
        settings.dlq_topic,
        settings.uploads_topic,
    }


def test_subscriptions_are_the_ones_infra_apply_creates(tf: Terraform) -> None:
    """Field by field what `stemctl infra apply` manages, with both sides' defaults."""
    wanted = desired_subscriptions(default_settings(), PROJECT)
    assert len(tf.resources_of("google_pubsub_subscription")) == len(wanted)
    for want in wanted:
        name = want.name.rsplit("/", 1)[-1]
        have = _subscription_by_name(tf, name)
        assert tf.resolve(have["topic"]) == want.topic.rsplit("/", 1)[-1], name
        assert tf.resolve(have["ack_deadline_seconds"]) == want.ack_deadline_seconds, name

        if "dead_letter_policy" in want:
            policy = _block(have, "dead_letter_policy")
            assert (
                tf.resolve(policy["dead_letter_topic"])
                == (want.dead_letter_policy.dead_letter_topic.rsplit("/", 1)[-1])
            )
            assert tf.resolve(policy["max_delivery_attempts"]) == (
                want.dead_letter_policy.max_delivery_attempts
            )
        else:
            assert "dead_letter_policy" not in have, name

        if "retry_policy" in want:
            retry = _block(have, "retry_policy")
            minimum = want.retry_policy.minimum_backoff.total_seconds()
            maximum = want.retry_policy.maximum_backoff.total_seconds()
            assert _seconds(tf.resolve(retry["minimum_backoff"])) == minimum
            assert _seconds(tf.resolve(retry["maximum_backoff"])) == maximum
        else:
            assert "retry_policy" not in have, name

        if "expiration_policy" in want:  # infra apply does not set it (yet): see below
            ttl = want.expiration_policy.ttl.total_seconds()
            assert _seconds(_block(have, "expiration_policy")["ttl"] or "0s") == ttl, name

        if "message_retention_duration" in want:
            retention = want.message_retention_duration.total_seconds()
            assert _seconds(tf.resolve(have["message_retention_duration"])) == retention
        else:
            assert "message_retention_duration" not in have, name


def test_the_dlq_keeps_dead_letters_as_long_as_pubsub_allows(tf: Terraform) -> None:
    dlq = _subscription_by_name(tf, default_settings().dlq_subscription)
    assert _seconds(tf.resolve(dlq["message_retention_duration"])) == DLQ_RETENTION_S


def test_subscriptions_never_expire(tf: Terraform) -> None:
    # Pub/Sub deletes a subscription after 31 idle days by default; a fleet scaled to zero,
    # and a healthy DLQ, are idle for that long.
    for name, body in tf.resources_of("google_pubsub_subscription").items():
        assert _block(body, "expiration_policy")["ttl"] == "", name


_SETTINGS_VARIABLES = (
    "jobs_topic",
    "jobs_subscription",
    "results_topic",
    "dlq_topic",
    "dlq_subscription",
    "uploads_topic",
    "uploads_subscription",
    "uploads_prefix",
    "max_delivery_attempts",
    "ack_deadline_s",
    "min_retry_backoff_s",
    "max_retry_backoff_s",
)


@pytest.mark.parametrize("name", _SETTINGS_VARIABLES)
def test_variable_default_is_the_settings_default(tf: Terraform, name: str) -> None:
    assert tf.variable(name) == getattr(default_settings(), name)


@pytest.mark.parametrize(
    "name",
    ["max_delivery_attempts", "ack_deadline_s", "min_retry_backoff_s", "max_retry_backoff_s"],
)
def test_variable_validation_has_the_settings_bounds(tf: Terraform, name: str) -> None:
    from consumer.settings import Settings

    bounds = {
        kind: getattr(meta, kind)
        for meta in Settings.model_fields[name].metadata
        for kind in ("ge", "le")
        if getattr(meta, kind, None) is not None
    }
    assert set(bounds) == {"ge", "le"}
    (validation,) = tf.variables[name]["validation"]
    condition = re.sub(r"\s+", " ", validation["condition"])
    assert f"var.{name} >= {bounds['ge']}" in condition
    assert f"var.{name} <= {bounds['le']}" in condition


def test_worker_env_output_sets_only_settings_variables_from_the_same_resources(
    tf: Terraform,
) -> None:
    env = tf.outputs["worker_env"]["value"]
    assert set(env) <= settings_env_names()
    settings = default_settings()
    for key in (
        "JOBS_SUBSCRIPTION",
        "RESULTS_TOPIC",
        "DLQ_TOPIC",
        "DLQ_SUBSCRIPTION",
        "UPLOADS_TOPIC",
        "UPLOADS_SUBSCRIPTION",
    ):
        assert tf.resolve(env[f"STEM_{key}"]) == getattr(settings, key.lower())
    for key in ("MAX_DELIVERY_ATTEMPTS", "ACK_DEADLINE_S", "MIN_RETRY_BACKOFF_S"):
        assert env[f"STEM_{key}"] == f"${{tostring(var.{key.lower()})}}"
    assert "STEM_MAX_RETRY_BACKOFF_S" in env
    assert env["GOOGLE_CLOUD_PROJECT"] == "${var.project_id}"


# --- IAM ------------------------------------------------------------------------------------

WORKER = "${local.worker_member}"
PUBSUB_AGENT = "${local.pubsub_service_agent}"


def _grants(tf: Terraform, member: str) -> set[tuple[str, str, str]]:
    """(resource type, target, role) of every IAM member resource granting to ``member``."""
    targets = {
        "google_pubsub_subscription_iam_member": "subscription",
        "google_pubsub_topic_iam_member": "topic",
        "google_storage_bucket_iam_member": "bucket",
        "google_project_iam_member": "project",
        "google_service_account_iam_member": "service_account_id",
    }
    grants = set()
    for kind, attribute in targets.items():
        for body in tf.resources_of(kind).values():
            if body["member"] == member:
                grants.add((kind, body[attribute], body["role"]))
    return grants


def test_worker_gets_exactly_its_five_grants_and_nothing_project_wide(tf: Terraform) -> None:
    assert _grants(tf, WORKER) == {
        (
            "google_pubsub_subscription_iam_member",
            "${google_pubsub_subscription.jobs.name}",
            "roles/pubsub.subscriber",
        ),
        (
            "google_pubsub_topic_iam_member",
            "${google_pubsub_topic.results.name}",
            "roles/pubsub.publisher",
        ),
        (
            "google_pubsub_topic_iam_member",
            "${google_pubsub_topic.dlq.name}",
            "roles/pubsub.publisher",
        ),
        (
            "google_storage_bucket_iam_member",
            "${google_storage_bucket.staging.name}",
            "${google_project_iam_custom_role.source_reader.name}",
        ),
        (
            "google_storage_bucket_iam_member",
            "${google_storage_bucket.output.name}",
            "${google_project_iam_custom_role.stem_writer.name}",
        ),
    }
    assert "google_service_account.worker.email" in tf.locals["worker_member"]


def test_bucket_roles_hold_only_the_object_permissions_the_worker_uses(tf: Terraform) -> None:
    roles = tf.resources_of("google_project_iam_custom_role")
    # Staging: read a named object (stat + download); no listing.
    assert set(roles["source_reader"]["permissions"]) == {"storage.objects.get"}
    # Output: create stems and manifest.json, replace them on a retried job (an overwrite
    # needs delete), read manifest.json (a redelivered finished job is not recomputed).
    assert set(roles["stem_writer"]["permissions"]) == {
        "storage.objects.create",
        "storage.objects.delete",
        "storage.objects.get",
    }


def test_pubsub_service_agent_can_move_jobs_to_the_dlq(tf: Terraform) -> None:
    assert _grants(tf, PUBSUB_AGENT) == {
        (
            "google_pubsub_topic_iam_member",
            "${google_pubsub_topic.dlq.name}",
            "roles/pubsub.publisher",
        ),
        (
            "google_pubsub_subscription_iam_member",
            "${google_pubsub_subscription.jobs.name}",
            "roles/pubsub.subscriber",
        ),
        (
            "google_pubsub_subscription_iam_member",
            "${google_pubsub_subscription.uploads.name}",
            "roles/pubsub.subscriber",
        ),
    }
    agent = tf.locals["pubsub_service_agent"]
    assert agent == (
        "serviceAccount:service-${data.google_project.this.number}"
        "@gcp-sa-pubsub.iam.gserviceaccount.com"
    )


def test_the_staging_bucket_notifies_finalised_uploads_to_the_uploads_topic(
    tf: Terraform,
) -> None:
    from infra.provision import UPLOAD_EVENT_TYPES, UPLOAD_PAYLOAD_FORMAT

    notification = tf.resource("google_storage_notification", "uploads")
    assert notification["bucket"] == "${google_storage_bucket.staging.name}"
    assert notification["topic"] == "${google_pubsub_topic.uploads.id}"
    assert notification["payload_format"] == UPLOAD_PAYLOAD_FORMAT
    assert tuple(notification["event_types"]) == UPLOAD_EVENT_TYPES
    assert notification["object_name_prefix"] == "${var.uploads_prefix}"
    # GCS's service agent may publish there, before the config is created.
    grant = tf.resource("google_pubsub_topic_iam_member", "gcs_agent_publishes_uploads")
    assert grant["topic"] == "${google_pubsub_topic.uploads.name}"
    assert grant["role"] == "roles/pubsub.publisher"
    assert "google_storage_project_service_account.gcs.email_address" in grant["member"]
    assert "${google_pubsub_topic_iam_member.gcs_agent_publishes_uploads}" in str(
        notification["depends_on"]
    )


def test_the_intake_gets_exactly_its_three_grants(tf: Terraform) -> None:
    assert _grants(tf, "${local.intake_member}") == {
        (
            "google_pubsub_subscription_iam_member",
            "${google_pubsub_subscription.uploads.name}",
            "roles/pubsub.subscriber",
        ),
        (
            "google_pubsub_topic_iam_member",
            "${google_pubsub_topic.jobs.name}",
            "roles/pubsub.publisher",
        ),
        (
            "google_pubsub_topic_iam_member",
            "${google_pubsub_topic.dlq.name}",
            "roles/pubsub.publisher",
        ),
    }


def test_workload_identity_binds_the_kubernetes_service_accounts(tf: Terraform) -> None:
    assert tf.locals["workload_pool"] == "${var.project_id}.svc.id.goog"
    worker = tf.resource("google_service_account_iam_member", "worker_workload_identity")
    assert worker["service_account_id"] == "${google_service_account.worker.name}"
    assert worker["role"] == "roles/iam.workloadIdentityUser"
    assert worker["member"] == (
        "serviceAccount:${local.workload_pool}[${var.k8s_namespace}/${var.k8s_service_account}]"
    )
    autoscaler = tf.resource("google_service_account_iam_member", "autoscaler_workload_identity")
    assert autoscaler["member"] == "serviceAccount:${local.workload_pool}[${each.value}]"
    assert autoscaler["for_each"] == "${toset(var.autoscaler_k8s_service_accounts)}"
    metrics = tf.resource("google_project_iam_member", "autoscaler_reads_metrics")
    assert metrics["role"] == "roles/monitoring.viewer"
    assert "google_service_account.autoscaler.email" in metrics["member"]


# --- buckets --------------------------------------------------------------------------------


def _rules(body: dict[str, Any]) -> list[tuple[str, Any]]:
    return [
        (_block(rule, "action")["type"], _block(rule, "condition").get("age"))
        for rule in body.get("lifecycle_rule", [])
    ]


def test_buckets_are_private_and_clean_up_after_themselves(tf: Terraform) -> None:
    buckets = tf.resources_of("google_storage_bucket")
    assert set(buckets) == {"staging", "output"}
    for name, body in buckets.items():
        assert body["uniform_bucket_level_access"] is True, name
        assert body["public_access_prevention"] == "enforced", name
        assert ("AbortIncompleteMultipartUpload", 1) in _rules(body), name
    assert ("Delete", "${var.staging_retention_days}") in _rules(buckets["staging"])


def test_staged_sources_outlive_dead_letters(tf: Terraform) -> None:
    """`stemctl dlq replay` re-runs a job from its staged source."""
    assert tf.variable("staging_retention_days") * 86400 > DLQ_RETENTION_S
    (validation,) = tf.variables["staging_retention_days"]["validation"]
    assert f"> {DLQ_RETENTION_S // 86400}" in validation["condition"]


def _static_rules(tf: Terraform, body: dict[str, Any]) -> set[str]:
    """A bucket's static lifecycle rules (the dynamic output-retention rule aside) as
    ``action age [prefixes]`` strings, defaults resolved."""
    found = set()
    for rule in body.get("lifecycle_rule", []):
        condition = _block(rule, "condition")
        prefixes = condition.get("matches_prefix", [])
        found.add(f"{_block(rule, 'action')['type']} {tf.resolve(condition['age'])} {prefixes}")
    return found


def test_bucket_lifecycle_is_what_infra_apply_sets(tf: Terraform) -> None:
    """Issue 18: the same retention in Terraform as `stemctl infra apply` sets: staged
    sources after STEM_STAGING_RETENTION_DAYS, cancel markers after a day, stems kept
    unless STEM_OUTPUT_RETENTION_DAYS is set."""
    settings = default_settings()
    wanted = desired_lifecycle(settings)
    buckets = tf.resources_of("google_storage_bucket")
    assert tf.variable("staging_retention_days") == settings.staging_retention_days
    assert tf.variable("output_retention_days") == 0
    assert settings.output_retention_days is None
    for name, bucket in (
        (settings.staging_bucket, buckets["staging"]),
        (settings.output_bucket, buckets["output"]),
    ):
        expected = {
            f"{r['action']['type']} {r['condition']['age']} "
            f"{r['condition'].get('matchesPrefix', [])}"
            for r in wanted[name]
        }
        assert _static_rules(tf, bucket) == expected, name
    assert "Delete 1 ['_cancel/']" in _static_rules(tf, buckets["output"])
    (dynamic,) = buckets["output"]["dynamic"]
    assert "output_retention_days" in str(dynamic)
