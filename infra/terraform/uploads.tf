# Uploads as a job source (DESIGN.md "Uploads as a job source"): the staging bucket notifies
# finalised objects under var.uploads_prefix to the uploads topic; `stemctl intake` (its own
# Deployment, its own Google service account) turns each into a job on the jobs topic.
# The same topic and subscription as `stemctl infra apply`, which also creates the
# notification config on real GCP (idempotently) — apply either, or both.

resource "google_pubsub_topic" "uploads" {
  name       = var.uploads_topic
  labels     = var.labels
  depends_on = [google_project_service.apis]
}

resource "google_pubsub_subscription" "uploads" {
  name   = var.uploads_subscription
  topic  = google_pubsub_topic.uploads.id
  labels = var.labels

  ack_deadline_seconds = var.ack_deadline_s

  # A notification the intake can neither turn into a job nor dead-letter itself (its
  # publishes keep failing) reaches stem-dlq here, like a job.
  dead_letter_policy {
    dead_letter_topic     = google_pubsub_topic.dlq.id
    max_delivery_attempts = var.max_delivery_attempts
  }

  retry_policy {
    minimum_backoff = "${var.min_retry_backoff_s}s"
    maximum_backoff = "${var.max_retry_backoff_s}s"
  }

  expiration_policy {
    ttl = ""
  }
}

# GCS publishes notifications as its own service agent, which needs publisher on the topic
# before the notification config can be created.
data "google_storage_project_service_account" "gcs" {
  project = var.project_id
}

resource "google_pubsub_topic_iam_member" "gcs_agent_publishes_uploads" {
  topic  = google_pubsub_topic.uploads.name
  role   = "roles/pubsub.publisher"
  member = "serviceAccount:${data.google_storage_project_service_account.gcs.email_address}"
}

resource "google_storage_notification" "uploads" {
  bucket             = google_storage_bucket.staging.name
  topic              = google_pubsub_topic.uploads.id
  payload_format     = "JSON_API_V1"
  event_types        = ["OBJECT_FINALIZE"]
  object_name_prefix = var.uploads_prefix
  depends_on         = [google_pubsub_topic_iam_member.gcs_agent_publishes_uploads]
}

# --- the intake's identity: pull notifications, publish jobs and dead letters -------------

locals {
  intake_member = "serviceAccount:${google_service_account.intake.email}"
}

resource "google_service_account" "intake" {
  account_id   = "stem-intake"
  display_name = "stem-fleet intake"
  description  = "stemctl intake: pull upload notifications, publish jobs and dead letters."
  depends_on   = [google_project_service.apis]
}

resource "google_service_account_iam_member" "intake_workload_identity" {
  service_account_id = google_service_account.intake.name
  role               = "roles/iam.workloadIdentityUser"
  member             = "serviceAccount:${local.workload_pool}[${var.k8s_namespace}/${var.k8s_intake_service_account}]"
}

resource "google_pubsub_subscription_iam_member" "intake_pulls_uploads" {
  subscription = google_pubsub_subscription.uploads.name
  role         = "roles/pubsub.subscriber"
  member       = local.intake_member
}

resource "google_pubsub_topic_iam_member" "intake_publishes_jobs" {
  topic  = google_pubsub_topic.jobs.name
  role   = "roles/pubsub.publisher"
  member = local.intake_member
}

resource "google_pubsub_topic_iam_member" "intake_publishes_dead_letters" {
  topic  = google_pubsub_topic.dlq.name
  role   = "roles/pubsub.publisher"
  member = local.intake_member
}

# The Pub/Sub service agent moves undeliverable notifications to the DLQ.
resource "google_pubsub_subscription_iam_member" "pubsub_agent_forwards_uploads" {
  subscription = google_pubsub_subscription.uploads.name
  role         = "roles/pubsub.subscriber"
  member       = local.pubsub_service_agent
}

output "intake_service_account" {
  description = "Annotate the intake's Kubernetes service account with this (iam.gke.io/gcp-service-account)."
  value       = google_service_account.intake.email
}
