"""``stemctl model``: fetch and inspect the Demucs model weights."""

from __future__ import annotations

import typer

__all__ = ["model_app"]

model_app = typer.Typer(help="Fetch and inspect model weights.", no_args_is_help=True)
