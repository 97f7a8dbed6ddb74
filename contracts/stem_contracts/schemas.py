"""JSON Schemas generated from the models, for services written in other languages.

The checked-in copies live in ``contracts/schemas/``; regenerate them with
``python -m stem_contracts.schemas write contracts/schemas`` (``make schemas``) and a test
fails when they drift from the models.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter

from stem_contracts.models import Job, ResultEvent

__all__ = ["json_schemas", "render"]

_BASE_ID = "https://stem-fleet.dev/schemas/"


def json_schemas() -> dict[str, dict[str, Any]]:
    """The schema of every wire message, keyed by file name."""
    job = Job.model_json_schema(by_alias=True, mode="validation")
    event = TypeAdapter(ResultEvent).json_schema(by_alias=True, mode="validation")
    out: dict[str, dict[str, Any]] = {}
    for name, title, schema in (
        ("job.v1.json", "stem-fleet Job v1", job),
        ("result-event.v1.json", "stem-fleet result event v1", event),
    ):
        out[name] = {
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "$id": _BASE_ID + name,
            "title": title,
            **{k: v for k, v in schema.items() if k != "title"},
        }
    return out


def render(schema: dict[str, Any]) -> str:
    """The canonical text of a schema file (sorted keys, 2-space indent, final newline)."""
    return json.dumps(schema, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    """``write DIR`` regenerates the files; ``check DIR`` exits 1 when any differs."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2 or args[0] not in ("write", "check"):
        print("usage: python -m stem_contracts.schemas write|check DIR", file=sys.stderr)
        return 2
    command, folder = args[0], Path(args[1])
    stale = []
    for name, schema in json_schemas().items():
        path = folder / name
        text = render(schema)
        if command == "write":
            folder.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
        elif not path.exists() or path.read_text(encoding="utf-8") != text:
            stale.append(name)
    if stale:
        print(f"schemas out of date: {', '.join(stale)} (run make schemas)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
