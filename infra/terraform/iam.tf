# Who may do what. Every grant is on one topic, subscription or bucket, never the project,
# except the autoscaler's read access to Cloud Monitoring (metrics have no finer scope).
#
# The worker (Google service account stem-worker, used by the Kubernetes service account
# stem-fleet/stem-worker through Workload Identity):
#   pulls and acks stem-separate ............ roles/pubsub.subscriber on that subscription
#   publishes result events, dead letters ... roles/pubsub.publisher on stem-results, stem-dlq
#   reads staged sources .................... storage.objects.get on the staging bucket
#   writes stems and manifest.json .......... storage.objects.create + delete + get on output
#
# Why custom roles for the buckets:
# - The worker only reads objects it is told about: storage.objects.get. The predefined
#   "object reader" (roles/storage.objectViewer) also grants storage.objects.list, i.e.
#   enumerating every staged track, which nothing in the worker does.
# - roles/storage.objectCreator (storage.objects.create) is not enough for the output bucket:
#   a retried job uploads the same stems and manifest.json again, and replacing an existing
#   object also needs storage.objects.delete; and before separating, the worker reads
#   {outputUri}/manifest.json (a finished job is not recomputed), which needs
#   storage.objects.get. The smallest predefined role with all three, roles/storage.objectUser,
#   adds list, update (metadata and ACL-free edits), restore and more. So: exactly those three.
# Custom roles are project-level objects: the identity running Terraform needs
# roles/iam.roleAdmin, and a deleted role's id cannot be reused for 37 days.
#
# Job sources and outputs outside these two buckets need their own grants to stem-worker;
# STEM_ALLOWED_BUCKETS (terraform output worker_env) turns a job that points elsewhere into
# a clear `bucket_not_allowed` instead of a permission error retried five times.

locals {
  worker_member = "serviceAccount:${google_service_account.worker.email}"
  # Created when the Pub/Sub API is enabled; it moves messages to the dead-letter topic.
  pubsub_service_agent = "serviceAccount:service-${data.google_project.this.number}@gcp-sa-pubsub.iam.gserviceaccount.com"
  workload_pool        = "${var.project_id}.svc.id.goog"
}

data "google_project" "this" {
  project_id = var.project_id
}

resource "google_service_account" "worker" {
  account_id   = "stem-worker"
  display_name = "stem-fleet worker"
  description  = "stemctl worker pods: pull jobs, read sources, write stems, publish results."
  depends_on   = [google_project_service.apis]
}

resource "google_service_account_iam_member" "worker_workload_identity" {
  service_account_id = google_service_account.worker.name
  role               = "roles/iam.workloadIdentityUser"
  member             = "serviceAccount:${local.workload_pool}[${var.k8s_namespace}/${var.k8s_service_account}]"
}

# --- Pub/Sub: the worker ----------------------------------------------------------------------

resource "google_pubsub_subscription_iam_member" "worker_pulls_jobs" {
  subscription = google_pubsub_subscription.jobs.name
  role         = "roles/pubsub.subscriber"
  member       = local.worker_member
}

resource "google_pubsub_topic_iam_member" "worker_publishes_results" {
  topic  = google_pubsub_topic.results.name
  role   = "roles/pubsub.publisher"
  member = local.worker_member
}

resource "google_pubsub_topic_iam_member" "worker_publishes_dead_letters" {
  topic  = google_pubsub_topic.dlq.name
  role   = "roles/pubsub.publisher"
  member = local.worker_member
}

# --- Pub/Sub: the service agent, without which dead-lettering silently does nothing -----------

resource "google_pubsub_topic_iam_member" "pubsub_agent_publishes_dead_letters" {
  topic  = google_pubsub_topic.dlq.name
  role   = "roles/pubsub.publisher"
  member = local.pubsub_service_agent
}

resource "google_pubsub_subscription_iam_member" "pubsub_agent_acks_dead_lettered_jobs" {
  subscription = google_pubsub_subscription.jobs.name
  role         = "roles/pubsub.subscriber"
  member       = local.pubsub_service_agent
}

# --- Cloud Storage: the worker ---------------------------------------------------------------

resource "google_project_iam_custom_role" "source_reader" {
  role_id     = "stemFleetSourceReader"
  title       = "stem-fleet source reader"
  description = "Read objects by name (no listing): the worker's access to staged sources."
  permissions = ["storage.objects.get"]
  depends_on  = [google_project_service.apis]
}

resource "google_project_iam_custom_role" "stem_writer" {
  role_id     = "stemFleetStemWriter"
  title       = "stem-fleet stem writer"
  description = "Create, replace (delete) and read objects: the worker's access to its outputs."
  permissions = ["storage.objects.create", "storage.objects.delete", "storage.objects.get"]
  depends_on  = [google_project_service.apis]
}

resource "google_storage_bucket_iam_member" "worker_reads_staging" {
  bucket = google_storage_bucket.staging.name
  role   = google_project_iam_custom_role.source_reader.name
  member = local.worker_member
}

resource "google_storage_bucket_iam_member" "worker_writes_output" {
  bucket = google_storage_bucket.output.name
  role   = google_project_iam_custom_role.stem_writer.name
  member = local.worker_member
}

# --- the autoscaler: KEDA (or the metrics adapter) reads the subscription's backlog ----------

resource "google_service_account" "autoscaler" {
  account_id   = "stem-autoscaler"
  display_name = "stem-fleet autoscaler"
  description  = "KEDA / custom-metrics adapter: reads the stem-separate backlog from Cloud Monitoring."
  depends_on   = [google_project_service.apis]
}

resource "google_project_iam_member" "autoscaler_reads_metrics" {
  project = var.project_id
  role    = "roles/monitoring.viewer"
  member  = "serviceAccount:${google_service_account.autoscaler.email}"
}

resource "google_service_account_iam_member" "autoscaler_workload_identity" {
  for_each           = toset(var.autoscaler_k8s_service_accounts)
  service_account_id = google_service_account.autoscaler.name
  role               = "roles/iam.workloadIdentityUser"
  member             = "serviceAccount:${local.workload_pool}[${each.value}]"
}
