# The APIs the fleet uses. Left enabled on destroy: other things in the project may use them.
resource "google_project_service" "apis" {
  for_each = toset([
    "iam.googleapis.com",
    "monitoring.googleapis.com", # the autoscaler reads the subscription backlog here
    "pubsub.googleapis.com",
    "storage.googleapis.com",
  ])
  project            = var.project_id
  service            = each.value
  disable_on_destroy = false
}
