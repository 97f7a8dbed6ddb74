# The same topics and subscriptions as `stemctl infra apply` (infra/provision.py), field for
# field: tests/deploy/test_terraform.py compares them with desired_subscriptions(). Apply
# both against one project and `stemctl infra apply --dry-run` reports everything "ok".

locals {
  # infra/provision.py DLQ_RETENTION_S: the longest retention a subscription allows.
  dlq_retention = "604800s"
}

resource "google_pubsub_topic" "jobs" {
  name       = var.jobs_topic
  labels     = var.labels
  depends_on = [google_project_service.apis]
}

resource "google_pubsub_topic" "results" {
  name       = var.results_topic
  labels     = var.labels
  depends_on = [google_project_service.apis]
}

resource "google_pubsub_topic" "dlq" {
  name       = var.dlq_topic
  labels     = var.labels
  depends_on = [google_project_service.apis]
}

resource "google_pubsub_subscription" "jobs" {
  name   = var.jobs_subscription
  topic  = google_pubsub_topic.jobs.id
  labels = var.labels

  # The worker's lease manager extends this while a job runs, so a dead worker's job comes
  # back after at most one deadline.
  ack_deadline_seconds = var.ack_deadline_s

  dead_letter_policy {
    dead_letter_topic     = google_pubsub_topic.dlq.id
    max_delivery_attempts = var.max_delivery_attempts
  }

  retry_policy {
    minimum_backoff = "${var.min_retry_backoff_s}s"
    maximum_backoff = "${var.max_retry_backoff_s}s"
  }

  # Never expire: an idle fleet (scaled to zero) must not lose its subscription after 31 days.
  expiration_policy {
    ttl = ""
  }

  lifecycle {
    precondition {
      condition     = var.min_retry_backoff_s <= var.max_retry_backoff_s
      error_message = "min_retry_backoff_s must not exceed max_retry_backoff_s."
    }
  }
}

resource "google_pubsub_subscription" "dlq" {
  name   = var.dlq_subscription
  topic  = google_pubsub_topic.dlq.id
  labels = var.labels

  ack_deadline_seconds       = 60
  message_retention_duration = local.dlq_retention

  # Never expire: nobody pulls the DLQ for weeks when all is well, and a topic without a
  # subscription drops what is published to it.
  expiration_policy {
    ttl = ""
  }
}
