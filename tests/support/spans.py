"""The session's in-memory span exporter (installed by ``tests/conftest.py``)."""

from __future__ import annotations

from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

EXPORTER = InMemorySpanExporter()
"""Every finished span of the test session; tests ``clear()`` it before they look."""
