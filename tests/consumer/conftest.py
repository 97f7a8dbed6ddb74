"""Fixtures of the handler tests: a handler on in-memory fakes (tests/consumer/rig.py)."""

from tests.consumer.rig import make_rig, rig, wav_bytes

__all__ = ["make_rig", "rig", "wav_bytes"]
