"""The environment variables behind :class:`Settings`, for tests that start processes
(``stemctl`` children) or check deployment files against the settings' names."""

from __future__ import annotations

import os
import uuid
from typing import Any

from pydantic import AliasChoices

from consumer.settings import Settings


def env_names(name: str, field: Any) -> list[str]:
    """Every environment variable that sets ``name``, the preferred one first."""
    alias = field.validation_alias
    if isinstance(alias, AliasChoices):
        return [str(choice) for choice in alias.choices]
    if isinstance(alias, str):
        return [alias]
    return [f"{Settings.model_config.get('env_prefix', '')}{name}".upper()]


def settings_environment(settings: Settings) -> dict[str, str]:
    """The environment under which ``Settings()`` in a child process equals ``settings``.

    Built from the fields themselves, so a field added to the settings reaches the child
    without this function changing; variables the settings leave unset are removed.
    """
    env = dict(os.environ)
    for name, field in Settings.model_fields.items():
        names = env_names(name, field)
        for key in names:
            env.pop(key, None)
        value = getattr(settings, name)
        if value is not None:
            env[names[0]] = ",".join(sorted(value)) if isinstance(value, frozenset) else str(value)
    return env


def settings_env_names() -> frozenset[str]:
    """Every environment variable ``Settings`` reads: ``STEM_`` + field, or its aliases."""
    return frozenset(
        name
        for field_name, field in Settings.model_fields.items()
        for name in env_names(field_name, field)
    )


def isolated_settings(pubsub_host: str, storage_url: str, unique: str | None = None) -> Settings:
    """Settings for a project and buckets of their own (as the ``settings`` fixture)."""
    unique = unique or uuid.uuid4().hex[:10]
    return Settings(
        project=f"test-{unique}",
        pubsub_emulator_host=pubsub_host,
        storage_emulator_host=storage_url,
        staging_bucket=f"staging-{unique}",
        output_bucket=f"output-{unique}",
        min_retry_backoff_s=0,
        max_retry_backoff_s=0,
        ack_deadline_s=10,
        metrics_port=0,
    )
