output "worker_service_account" {
  description = "Annotate the worker's Kubernetes service account with this (iam.gke.io/gcp-service-account)."
  value       = google_service_account.worker.email
}

output "autoscaler_service_account" {
  description = "Annotate KEDA's operator service account (or the metrics adapter's) with this."
  value       = google_service_account.autoscaler.email
}

output "staging_bucket" {
  value = google_storage_bucket.staging.name
}

output "output_bucket" {
  value = google_storage_bucket.output.name
}

# The worker's environment for what this configuration decided. Write it into the overlay's
# worker.env (README, "Deploying to GKE"), so the pods run with the subscription's values.
output "worker_env" {
  description = "STEM_* / GOOGLE_CLOUD_PROJECT settings matching these resources."
  value = {
    GOOGLE_CLOUD_PROJECT       = var.project_id
    STEM_JOBS_TOPIC            = google_pubsub_topic.jobs.name
    STEM_JOBS_SUBSCRIPTION     = google_pubsub_subscription.jobs.name
    STEM_RESULTS_TOPIC         = google_pubsub_topic.results.name
    STEM_DLQ_TOPIC             = google_pubsub_topic.dlq.name
    STEM_DLQ_SUBSCRIPTION      = google_pubsub_subscription.dlq.name
    STEM_UPLOADS_TOPIC         = google_pubsub_topic.uploads.name
    STEM_UPLOADS_SUBSCRIPTION  = google_pubsub_subscription.uploads.name
    STEM_UPLOADS_PREFIX        = var.uploads_prefix
    STEM_STAGING_BUCKET        = google_storage_bucket.staging.name
    STEM_OUTPUT_BUCKET         = google_storage_bucket.output.name
    STEM_ALLOWED_BUCKETS       = "${google_storage_bucket.staging.name},${google_storage_bucket.output.name}"
    STEM_MAX_DELIVERY_ATTEMPTS = tostring(var.max_delivery_attempts)
    STEM_ACK_DEADLINE_S        = tostring(var.ack_deadline_s)
    STEM_MIN_RETRY_BACKOFF_S   = tostring(var.min_retry_backoff_s)
    STEM_MAX_RETRY_BACKOFF_S   = tostring(var.max_retry_backoff_s)
  }
}
