"""Fixtures of the chaos suite: the tiny local Demucs model the worker processes load."""

from tests.worker_fixtures import model_repo  # noqa: F401 - fixture, registered by import
