"""The local stand-ins for Google Cloud, for the reliability scripts run outside pytest.

Under pytest the session's ``emulators`` and ``settings`` fixtures (``tests/conftest.py``)
provide the same thing; these helpers let ``python -m tests.chaos.run`` and
``python -m tests.reliability.long_run`` start their own servers and settings of the same
shape: an isolated project, its own buckets, the shortest retry backoff and a 10 s ack
deadline.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from unittest import mock

import grpc
from google.cloud import pubsub_v1
from google.pubsub_v1.services.subscriber.transports import SubscriberGrpcTransport

from consumer import gcp
from consumer.settings import Settings
from devkit.emulators import FakeGcsServer, PubSubEmulator
from infra.provision import apply
from stem_contracts import Job, encode
from tests.support.worker_fixtures import Results

__all__ = [
    "local_emulators",
    "provision",
    "publish_jobs",
    "results_subscription",
    "unlimited_subscriber",
]


@contextmanager
def local_emulators() -> Iterator[tuple[str, str]]:
    """Start the Pub/Sub emulator and fake-gcs-server; yields (pubsub host, storage URL)."""
    with PubSubEmulator() as pubsub, FakeGcsServer() as storage:
        hosts = {"PUBSUB_EMULATOR_HOST": pubsub.host, "STORAGE_EMULATOR_HOST": storage.url}
        with mock.patch.dict(os.environ, hosts):
            yield pubsub.host, storage.url


def provision(settings: Settings) -> None:
    """``infra apply`` for ``settings``: topics, subscriptions (DLQ policy) and buckets."""
    publisher = gcp.publisher_client(settings)
    subscriber = gcp.subscriber_client(settings)
    try:
        apply(
            settings,
            publisher=publisher,
            subscriber=subscriber,
            storage_client=gcp.storage_client(settings),
        )
    finally:
        publisher.stop()
        subscriber.close()


def unlimited_subscriber(settings: Settings) -> pubsub_v1.SubscriberClient:
    """A subscriber that can receive messages of any size from the emulator.

    Against ``PUBSUB_EMULATOR_HOST`` the client library opens a bare insecure channel,
    which keeps gRPC's default 4 MiB receive limit (its channel to real Pub/Sub has
    none): one pull of a few dead-lettered oversized bodies would fail.
    """
    if not settings.pubsub_emulator_host:
        return gcp.subscriber_client(settings)
    channel = grpc.insecure_channel(
        settings.pubsub_emulator_host, options=[("grpc.max_receive_message_length", -1)]
    )
    return pubsub_v1.SubscriberClient(transport=SubscriberGrpcTransport(channel=channel))


@contextmanager
def results_subscription(settings: Settings, name: str) -> Iterator[Results]:
    """A fresh subscription on stem-results (enter it before publishing any job) and the
    project's stem-dlq subscription, read through the tests' ``Results`` helper."""
    subscriber = unlimited_subscriber(settings)
    project = settings.require_project()
    path = subscriber.subscription_path(project, name)
    subscriber.create_subscription(
        request={"name": path, "topic": f"projects/{project}/topics/{settings.results_topic}"}
    )
    try:
        yield Results(
            subscriber, path, subscriber.subscription_path(project, settings.dlq_subscription)
        )
    finally:
        subscriber.close()


def publish_jobs(settings: Settings, jobs: Iterable[Job]) -> None:
    """Publish ``jobs`` to stem-separate and wait until the emulator confirmed each."""
    publisher = gcp.publisher_client(settings)
    topic = publisher.topic_path(settings.require_project(), settings.jobs_topic)
    try:
        futures = []
        for job in jobs:
            data, attributes = encode(job)
            futures.append(publisher.publish(topic, data, **attributes))
        for future in futures:
            future.result(60)
    finally:
        publisher.stop()
