"""Figures the reliability suite measures, kept as JSON for the results table.

Each measurement (the chaos run, the soak, the long track, the bad-input and security
tests) produces ``{"title": ..., "rows": [[figure, value], ...], "data": {...}}``, plus
``"bad_inputs"``: how many bad inputs it tried, when it tried any. Tests
write it with :func:`record` into the folder named by ``$RELIABILITY_FIGURES`` (nothing
is written when it is unset, e.g. in a plain ``make test``); the long-mode script writes
into a folder of its own. :mod:`tests.reliability.report` renders a folder as the table
in ``docs/reliability.md``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Final

__all__ = ["FIGURES_ENV", "ORDER", "read_figures", "record", "write_figures"]

FIGURES_ENV: Final = "RELIABILITY_FIGURES"
ORDER: Final = (
    "chaos",
    "soak",
    "soak-demucs",
    "track",
    "bad-input-handler",
    "bad-input-worker",
    "security",
)
"""Table order of the measurements; others follow in name order."""


def write_figures(folder: Path, name: str, figures: dict[str, Any]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.json"
    path.write_text(json.dumps(figures, indent=2, default=str) + "\n")
    return path


def record(name: str, figures: dict[str, Any]) -> Path | None:
    """Write ``figures`` as ``{name}.json`` into ``$RELIABILITY_FIGURES``, when it is set."""
    folder = os.environ.get(FIGURES_ENV)
    return write_figures(Path(folder), name, figures) if folder else None


def read_figures(folder: Path) -> list[tuple[str, dict[str, Any]]]:
    """(name, figures) of every measurement in ``folder``, in table order."""
    found = {path.stem: json.loads(path.read_text()) for path in folder.glob("*.json")}

    def rank(name: str) -> tuple[int, str]:
        return (ORDER.index(name) if name in ORDER else len(ORDER), name)

    return [(name, found[name]) for name in sorted(found, key=rank)]
