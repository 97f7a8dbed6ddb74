"""Render measured figures as a results table in ``docs/reliability.md``.

``python -m tests.reliability.report FIGURES --section ci --out docs/reliability.md``
reads every ``*.json`` in FIGURES (written by the suite, see :mod:`tests.reliability.figures`)
and replaces one section of the document — ``ci`` (the CI-sized suite) or ``long`` (the
release check) — leaving the rest of the document (its prose) as it is.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from tests.reliability.figures import read_figures

__all__ = ["render_section", "update_document"]

SECTIONS: Final = {
    "ci": "CI-sized run (`make reliability`)",
    "long": "Long run (`make reliability-long`)",
}
_DOC_PATH: Final = Path("docs/reliability.md")


def _machine() -> str:
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain"], capture_output=True, text=True)
        commit += " + local changes" if dirty.stdout.strip() else ""
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    return (
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {os.cpu_count()} CPU cores "
        f"({platform.machine()}, Python {platform.python_version()}), commit {commit}"
    )


def render_section(section: str, figures: list[tuple[str, dict[str, Any]]], note: str = "") -> str:
    lines = [f"## {SECTIONS[section]}", "", f"Measured {_machine()}.", ""]
    if note:
        lines += [note, ""]
    lines += ["| Figure | Value |", "|---|---|"]
    tried = sum(int(measured.get("bad_inputs", 0)) for _, measured in figures)
    if tried:
        lines.append(f"| Bad inputs tried, all measurements | {tried} |")
    for _, measured in figures:
        for name, value in measured["rows"]:
            lines.append(f"| {name} | {str(value).replace('|', '/')} |")
    return "\n".join(lines) + "\n"


def _markers(section: str) -> tuple[str, str]:
    return f"<!-- reliability:{section}:begin -->", f"<!-- reliability:{section}:end -->"


def update_document(path: Path, section: str, body: str) -> None:
    """Replace ``section`` of the document at ``path``, leaving the rest as it is."""
    text = path.read_text()  # checked in: its prose says how the figures are obtained
    begin, end = _markers(section)
    head, found, rest = text.partition(begin)
    if not found:
        raise SystemExit(f"{path} has no {begin} marker")
    _, found, tail = rest.partition(end)
    if not found:
        raise SystemExit(f"{path} has no {end} marker")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"{head}{begin}\n{body}{end}{tail}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Render reliability figures into a table.")
    parser.add_argument("figures", type=Path, help="folder of *.json figures")
    parser.add_argument("--section", choices=sorted(SECTIONS), required=True)
    parser.add_argument("--out", type=Path, default=_DOC_PATH)
    parser.add_argument("--note", default="", help="a sentence printed above the table")
    args = parser.parse_args(argv)
    figures = read_figures(args.figures)
    if not figures:
        print(f"no figures in {args.figures}", file=sys.stderr)
        return 1
    body = render_section(args.section, figures, args.note)
    update_document(args.out, args.section, body)
    print(body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
