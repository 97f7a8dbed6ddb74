"""Topic and subscription names of the fleet (the defaults; deployments may rename them)."""

from __future__ import annotations

from typing import Final

__all__ = [
    "DLQ_SUBSCRIPTION",
    "DLQ_TOPIC",
    "JOBS_SUBSCRIPTION",
    "JOBS_TOPIC",
    "RESULTS_TOPIC",
    "UPLOADS_SUBSCRIPTION",
    "UPLOADS_TOPIC",
]

JOBS_TOPIC: Final = "stem-separate"
"""Jobs are published here by the ingestion service."""
JOBS_SUBSCRIPTION: Final = "stem-separate"
"""The workers' subscription (dead-letter policy → ``stem-dlq``)."""
RESULTS_TOPIC: Final = "stem-results"
"""``stems.processing`` / ``stems.processed`` / ``stems.failed`` events."""
DLQ_TOPIC: Final = "stem-dlq"
"""Dead-lettered jobs: ours (with ``errorCode``) and Pub/Sub's (delivery limit)."""
DLQ_SUBSCRIPTION: Final = "stem-dlq"
"""Holds the dead letters until an operator replays or purges them."""
UPLOADS_TOPIC: Final = "stem-uploads"
"""GCS ``OBJECT_FINALIZE`` notifications of the staging bucket's uploads prefix."""
UPLOADS_SUBSCRIPTION: Final = "stem-uploads"
"""``stemctl intake``'s subscription (dead-letter policy → ``stem-dlq``)."""
