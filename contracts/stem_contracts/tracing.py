"""W3C trace context in message attributes (no SDK needed: the API is enough).

Used by the publisher, the result subscriber and the worker, so one trace runs from
ingestion through the worker to the catalog."""

from __future__ import annotations

from collections.abc import Mapping

from opentelemetry import context, propagate, trace

__all__ = ["extract_context", "inject_trace_attributes"]

_TRACE_KEYS = ("traceparent", "tracestate")


def inject_trace_attributes(attributes: dict[str, str]) -> dict[str, str]:
    """Add ``traceparent`` (and ``tracestate``) when a span is active; returns ``attributes``."""
    if not trace.get_current_span().get_span_context().is_valid:
        return attributes
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    attributes.update({k: v for k, v in carrier.items() if k in _TRACE_KEYS})
    return attributes


def extract_context(attributes: Mapping[str, str]) -> context.Context:
    """The remote span context carried by a message's attributes (empty when none)."""
    return propagate.extract({k: v for k, v in attributes.items() if k in _TRACE_KEYS})
