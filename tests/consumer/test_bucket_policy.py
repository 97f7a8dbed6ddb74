"""A worker on real GCP with an empty ``STEM_ALLOWED_BUCKETS`` says so at start-up.

DESIGN.md lets an empty list mean "any bucket" (the default, convenient on the
emulators); in production that is a misconfiguration an operator should see in the logs.
"""

from __future__ import annotations

import logging

import pytest

from consumer.app import warn_if_buckets_unrestricted
from consumer.settings import Settings


def test_warns_on_real_gcp_when_any_bucket_is_allowed(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="consumer.app"):
        # Explicit: the session's emulator fixture exports PUBSUB_EMULATOR_HOST.
        assert warn_if_buckets_unrestricted(Settings(project="prod", pubsub_emulator_host=None))
    assert "STEM_ALLOWED_BUCKETS is empty" in caplog.text


@pytest.mark.parametrize(
    ("allowed", "emulator"),
    [(frozenset({"stem-staging", "stem-output"}), None), (frozenset(), "127.0.0.1:8085")],
    ids=["allow-list set", "emulators"],
)
def test_quiet_when_restricted_or_on_emulators(
    allowed: frozenset[str], emulator: str | None, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="consumer.app"):
        assert not warn_if_buckets_unrestricted(
            Settings(project="p", allowed_buckets=allowed, pubsub_emulator_host=emulator)
        )
    assert not caplog.records
