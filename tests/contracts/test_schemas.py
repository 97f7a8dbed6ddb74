"""The checked-in JSON Schemas are exactly what the models generate."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from stem_contracts.schemas import json_schemas, render

SCHEMA_DIR = Path(__file__).resolve().parents[2] / "contracts" / "schemas"


@pytest.mark.parametrize("name", sorted(json_schemas()))
def test_checked_in_schema_matches_the_models(name: str) -> None:
    path = SCHEMA_DIR / name
    assert path.exists(), f"{path} missing: run `make schemas`"
    assert path.read_text(encoding="utf-8") == render(json_schemas()[name]), (
        f"{name} drifted from the models: run `make schemas` and commit the result"
    )


def test_no_stale_schema_files_are_left_behind() -> None:
    assert {p.name for p in SCHEMA_DIR.glob("*.json")} == set(json_schemas())


def test_job_schema_states_the_wire_rules() -> None:
    schema = json.loads((SCHEMA_DIR / "job.v1.json").read_text())
    props = schema["properties"]
    assert set(schema["required"]) == {"jobId", "trackId", "sourceUri"}
    assert props["mp3Bitrate"]["enum"] == [96, 112, 128, 160, 192, 224, 256, 320]
    assert props["jobId"]["pattern"] == "^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
    assert props["format"]["enum"] == ["mp3", "wav", "flac"]


def test_event_schema_discriminates_on_event_type() -> None:
    schema = json.loads((SCHEMA_DIR / "result-event.v1.json").read_text())
    assert schema["discriminator"]["propertyName"] == "eventType"
    assert set(schema["discriminator"]["mapping"]) == {
        "stems.processing",
        "stems.progress",
        "stems.processed",
        "stems.failed",
    }
