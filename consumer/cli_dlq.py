"""``stemctl dlq``: inspect, replay and purge the dead-letter queue."""

from __future__ import annotations

import typer

__all__ = ["dlq_app"]

dlq_app = typer.Typer(
    help="Inspect, replay and purge dead-lettered jobs (stem-dlq).", no_args_is_help=True
)
