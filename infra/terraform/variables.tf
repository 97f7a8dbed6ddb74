# Names and numbers default to consumer/settings.py's defaults, and the bounds in the
# validations are its bounds: tests/deploy/test_terraform.py fails when the two drift.
# The worker must run with the same values (STEM_MAX_DELIVERY_ATTEMPTS decides when a
# failure is reported as final): take them from `terraform output worker_env`.

variable "project_id" {
  description = "The project that holds the topics, subscriptions, buckets and service accounts."
  type        = string
}

variable "region" {
  description = "Location of the buckets; put them in the GKE cluster's region."
  type        = string
  default     = "us-central1"
}

variable "labels" {
  description = "Labels on every resource that takes them."
  type        = map(string)
  default     = { app = "stem-fleet" }
}

# --- topics and subscriptions (STEM_JOBS_TOPIC ... STEM_DLQ_SUBSCRIPTION) ------------------

variable "jobs_topic" {
  description = "STEM_JOBS_TOPIC: where jobs are published."
  type        = string
  default     = "stem-separate"
}

variable "jobs_subscription" {
  description = "STEM_JOBS_SUBSCRIPTION: what the workers pull (and KEDA scales on)."
  type        = string
  default     = "stem-separate"
}

variable "results_topic" {
  description = "STEM_RESULTS_TOPIC: stems.processing / stems.processed / stems.failed."
  type        = string
  default     = "stem-results"
}

variable "dlq_topic" {
  description = "STEM_DLQ_TOPIC: dead letters, from Pub/Sub's policy and from the worker."
  type        = string
  default     = "stem-dlq"
}

variable "dlq_subscription" {
  description = "STEM_DLQ_SUBSCRIPTION: keeps dead letters for `stemctl dlq`."
  type        = string
  default     = "stem-dlq"
}

# --- uploads (STEM_UPLOADS_TOPIC, STEM_UPLOADS_SUBSCRIPTION, STEM_UPLOADS_PREFIX) --------------

variable "uploads_topic" {
  description = "STEM_UPLOADS_TOPIC: where the staging bucket notifies finalised uploads."
  type        = string
  default     = "stem-uploads"
}

variable "uploads_subscription" {
  description = "STEM_UPLOADS_SUBSCRIPTION: what `stemctl intake` pulls."
  type        = string
  default     = "stem-uploads"
}

variable "uploads_prefix" {
  description = "STEM_UPLOADS_PREFIX: objects of the staging bucket under it become jobs."
  type        = string
  default     = "incoming/"
}

variable "max_delivery_attempts" {
  description = "STEM_MAX_DELIVERY_ATTEMPTS: deliveries before Pub/Sub dead-letters a job."
  type        = number
  default     = 5
  validation {
    condition     = var.max_delivery_attempts >= 5 && var.max_delivery_attempts <= 100
    error_message = "Pub/Sub allows 5 to 100 delivery attempts."
  }
}

variable "ack_deadline_s" {
  description = "STEM_ACK_DEADLINE_S: the jobs subscription's ack deadline; the worker extends its leases."
  type        = number
  default     = 60
  validation {
    condition     = var.ack_deadline_s >= 10 && var.ack_deadline_s <= 600
    error_message = "Pub/Sub allows an ack deadline of 10 to 600 seconds."
  }
}

variable "min_retry_backoff_s" {
  description = "STEM_MIN_RETRY_BACKOFF_S: retry_policy minimum backoff, seconds."
  type        = number
  default     = 10
  validation {
    condition     = var.min_retry_backoff_s >= 0 && var.min_retry_backoff_s <= 600
    error_message = "Pub/Sub allows a minimum backoff of 0 to 600 seconds."
  }
}

variable "max_retry_backoff_s" {
  description = "STEM_MAX_RETRY_BACKOFF_S: retry_policy maximum backoff, seconds."
  type        = number
  default     = 300
  validation {
    condition     = var.max_retry_backoff_s >= 0 && var.max_retry_backoff_s <= 600
    error_message = "Pub/Sub allows a maximum backoff of 0 to 600 seconds."
  }
}

# --- buckets ------------------------------------------------------------------------------

variable "staging_bucket" {
  description = "STEM_STAGING_BUCKET. Default: \"<project_id>-stem-staging\" (bucket names are global)."
  type        = string
  default     = null
}

variable "output_bucket" {
  description = "STEM_OUTPUT_BUCKET. Default: \"<project_id>-stem-output\"."
  type        = string
  default     = null
}

variable "staging_retention_days" {
  description = <<-EOT
    Staged sources are deleted after this many days. Keep it above the dead-letter retention
    (7 days): `stemctl dlq replay` re-runs a job from its staged source.
  EOT
  type        = number
  default     = 8
  validation {
    condition     = var.staging_retention_days > 7
    error_message = "Staged sources must outlive dead letters (7 days), or replays find no source."
  }
}

variable "output_retention_days" {
  description = "Stems are deleted after this many days; 0 keeps them (the catalog owns them)."
  type        = number
  default     = 0
  validation {
    condition     = var.output_retention_days >= 0
    error_message = "output_retention_days is a number of days, 0 for no expiry."
  }
}

# --- identities -----------------------------------------------------------------------------

variable "k8s_namespace" {
  description = "Namespace of the worker's Kubernetes service account (infra/k8s)."
  type        = string
  default     = "stem-fleet"
}

variable "k8s_service_account" {
  description = "The worker's Kubernetes service account, bound to the worker's Google one."
  type        = string
  default     = "stem-worker"
}

variable "k8s_intake_service_account" {
  description = "The intake's Kubernetes service account, bound to the intake's Google one."
  type        = string
  default     = "stem-intake"
}

variable "autoscaler_k8s_service_accounts" {
  description = <<-EOT
    "namespace/name" of each Kubernetes service account that reads the subscription backlog
    from Cloud Monitoring: KEDA's operator, and/or the Custom Metrics Stackdriver Adapter
    ("custom-metrics/custom-metrics-stackdriver-adapter") for the plain-HPA alternative.
  EOT
  type        = list(string)
  default     = ["keda/keda-operator"]
}
