locals {
  staging_bucket = coalesce(var.staging_bucket, "${var.project_id}-stem-staging")
  output_bucket  = coalesce(var.output_bucket, "${var.project_id}-stem-output")
}

# Sources staged by `JobPublisher.submit_file` / `stemctl submit FILE`. Transient by nature.
resource "google_storage_bucket" "staging" {
  name                        = local.staging_bucket
  location                    = var.region
  labels                      = var.labels
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"

  # Staged audio is deleted by its lifecycle rule anyway: no extra week of soft-deleted copies.
  soft_delete_policy {
    retention_duration_seconds = 0
  }

  lifecycle_rule {
    condition {
      age = var.staging_retention_days
    }
    action {
      type = "Delete"
    }
  }

  lifecycle_rule {
    condition {
      age = 1
    }
    action {
      type = "AbortIncompleteMultipartUpload"
    }
  }

  depends_on = [google_project_service.apis]
}

# Stems and manifest.json, under stems/{trackId}/{jobId}/ by default.
resource "google_storage_bucket" "output" {
  name                        = local.output_bucket
  location                    = var.region
  labels                      = var.labels
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"

  lifecycle_rule {
    condition {
      age = 1
    }
    action {
      type = "AbortIncompleteMultipartUpload"
    }
  }

  # Cancel markers (`stemctl jobs cancel`, JobPublisher.cancel): a day is enough for a job
  # cancelled before it was published to arrive (infra/provision.py CANCEL_MARKER_DAYS).
  lifecycle_rule {
    condition {
      age            = 1
      matches_prefix = ["_cancel/"]
    }
    action {
      type = "Delete"
    }
  }

  # Off by default: stems live as long as the catalog references them.
  dynamic "lifecycle_rule" {
    for_each = var.output_retention_days > 0 ? [var.output_retention_days] : []
    content {
      condition {
        age = lifecycle_rule.value
      }
      action {
        type = "Delete"
      }
    }
  }

  depends_on = [google_project_service.apis]
}
