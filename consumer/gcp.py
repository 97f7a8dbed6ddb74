"""Client factories: the one place that turns settings into Google Cloud clients."""

from __future__ import annotations

from google.auth.credentials import AnonymousCredentials
from google.cloud import pubsub_v1, storage

from consumer.settings import Settings

__all__ = ["publisher_client", "storage_client", "subscriber_client"]


def storage_client(settings: Settings) -> storage.Client:
    """A GCS client; against fake-gcs-server it uses anonymous credentials."""
    if settings.storage_emulator_host:
        # The endpoint comes from the settings object (not the library's own reading of
        # the environment) so tests can put a fault-injecting proxy in front of it.
        return storage.Client(
            project=settings.project or "stem-local",
            credentials=AnonymousCredentials(),  # type: ignore[no-untyped-call]
            client_options={"api_endpoint": settings.storage_emulator_host},
        )
    return storage.Client(project=settings.project)


def publisher_client(
    settings: Settings, batch_settings: pubsub_v1.types.BatchSettings | None = None
) -> pubsub_v1.PublisherClient:
    """A publisher; PUBSUB_EMULATOR_HOST is honoured by the library itself."""
    del settings  # the emulator endpoint comes from the environment, read by the library
    if batch_settings is None:
        return pubsub_v1.PublisherClient()
    return pubsub_v1.PublisherClient(batch_settings=batch_settings)


def subscriber_client(settings: Settings) -> pubsub_v1.SubscriberClient:
    """A subscriber; PUBSUB_EMULATOR_HOST is honoured by the library itself."""
    del settings
    return pubsub_v1.SubscriberClient()
