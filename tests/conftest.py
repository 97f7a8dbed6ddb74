"""Shared fixtures: the real Pub/Sub emulator and fake-gcs-server, once per session.

Every test gets its own project id and bucket names, so tests never see each other's
topics, subscriptions or objects although they share the two servers. Imports of the
fleet packages stay inside fixtures: ``tests/contracts`` also runs in a virtualenv that
has only ``stem-contracts``.
"""

from __future__ import annotations

import importlib.util
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pytest

# The worker fixtures (tiny local model, in-process worker, clips, staging, results) for
# every test directory that needs them — registered only where the fleet's dependencies are
# installed: ``tests/contracts`` also runs in a virtualenv that has only ``stem-contracts``
# (the fleet's source folders are on the path there too, demucs is not).
if importlib.util.find_spec("demucs") is not None:
    pytest_plugins = ["tests.support.worker_fixtures"]

if TYPE_CHECKING:
    from consumer.settings import Settings


@pytest.fixture(scope="session", autouse=True)
def _clean_environment() -> None:
    """Tests must not pick up a developer's STEM_* or Google settings."""
    for name in list(os.environ):
        if name.startswith("STEM_") or name in (
            "GOOGLE_CLOUD_PROJECT",
            "PUBSUB_EMULATOR_HOST",
            "STORAGE_EMULATOR_HOST",
        ):
            del os.environ[name]


@pytest.fixture(scope="session", autouse=True)
def _tracing() -> None:
    """Record spans in memory for the whole session, in every test alike.

    A tracer provider can be installed once per process; installing it up front (rather
    than in the first test that needs it) keeps tests independent of their order — with a
    provider, every publish carries a ``traceparent`` attribute. The contracts-only
    virtualenv has no SDK: there the API's no-op tracer stays.
    """
    try:
        from opentelemetry import trace
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    except ImportError:
        return
    from tests.support.spans import EXPORTER

    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(EXPORTER))
    trace.set_tracer_provider(provider)


UPLOADS_PROJECT = "uploads-test"
"""The one project whose staging bucket fake-gcs-server notifies (its ``-event.*`` flags
name one project and one bucket for the whole server)."""
UPLOADS_BUCKET = "uploads-staging"


@dataclass(frozen=True)
class Emulators:
    pubsub_host: str
    storage_url: str
    uploads_project: str = UPLOADS_PROJECT
    """Objects of ``uploads_bucket`` under ``incoming/`` are notified to this project's
    ``stem-uploads`` topic (every other bucket of every test stays silent)."""
    uploads_bucket: str = UPLOADS_BUCKET


@pytest.fixture(scope="session")
def emulators() -> Iterator[Emulators]:
    """Start both servers on free loopback ports; point the client libraries at them.

    fake-gcs-server notifies uploads of one bucket (``UPLOADS_BUCKET``) as GCS does,
    to the emulator's ``UPLOADS_PROJECT``: the ``uploads_settings`` fixture's tests.
    """
    from devkit.emulators import FakeGcsServer, GcsNotifications, PubSubEmulator

    with PubSubEmulator() as pubsub:
        notify = GcsNotifications(pubsub.host, UPLOADS_PROJECT, UPLOADS_BUCKET)
        with FakeGcsServer(notifications=notify) as gcs:
            os.environ["PUBSUB_EMULATOR_HOST"] = pubsub.host
            os.environ["STORAGE_EMULATOR_HOST"] = gcs.url
            try:
                yield Emulators(pubsub.host, gcs.url)
            finally:
                del os.environ["PUBSUB_EMULATOR_HOST"]
                del os.environ["STORAGE_EMULATOR_HOST"]


@pytest.fixture
def unique() -> str:
    """A short id that makes this test's resource names its own."""
    return uuid.uuid4().hex[:10]


@pytest.fixture
def settings(emulators: Emulators, unique: str) -> Settings:
    """Settings for an isolated project and buckets on the shared emulators.

    Retry backoff is the shortest Pub/Sub allows so redelivery tests stay fast.
    """
    from tests.support.settings_env import isolated_settings

    return isolated_settings(emulators.pubsub_host, emulators.storage_url, unique)


@pytest.fixture
def uploads_settings(emulators: Emulators, unique: str) -> Settings:
    """Settings on the project and staging bucket fake-gcs-server notifies, emptied of the
    topics and subscriptions an earlier test left (tests share that one project, not
    their objects: each gets its own output bucket, and names its uploads uniquely)."""
    from google.cloud import pubsub_v1

    from tests.support.settings_env import isolated_settings

    project = f"projects/{emulators.uploads_project}"
    publisher, subscriber = pubsub_v1.PublisherClient(), pubsub_v1.SubscriberClient()
    try:
        for sub in subscriber.list_subscriptions(request={"project": project}):
            subscriber.delete_subscription(request={"subscription": sub.name})
        for topic in publisher.list_topics(request={"project": project}):
            publisher.delete_topic(request={"topic": topic.name})
    finally:
        publisher.stop()
        subscriber.close()
    return isolated_settings(emulators.pubsub_host, emulators.storage_url, unique).model_copy(
        update={"project": emulators.uploads_project, "staging_bucket": emulators.uploads_bucket}
    )


@pytest.fixture
def provisioned(settings: Settings) -> Settings:
    """``settings`` after ``infra apply``: topics, subscriptions and buckets exist."""
    from consumer import gcp
    from infra.provision import apply

    apply(
        settings,
        publisher=gcp.publisher_client(settings),
        subscriber=gcp.subscriber_client(settings),
        storage_client=gcp.storage_client(settings),
    )
    return settings


@pytest.fixture
def pubsub_clients(emulators: Emulators) -> Iterator[tuple[object, object]]:
    """A (publisher, subscriber) pair on the emulator, closed after the test."""
    from google.cloud import pubsub_v1

    publisher = pubsub_v1.PublisherClient()
    subscriber = pubsub_v1.SubscriberClient()
    try:
        yield publisher, subscriber
    finally:
        publisher.stop()
        publisher.transport.close()
        subscriber.close()


@pytest.fixture
def gcs(settings: Settings) -> object:
    """A storage client on fake-gcs-server."""
    from consumer import gcp

    return gcp.storage_client(settings)
