"""The README's configuration table names every ``STEM_`` setting the worker reads."""

from __future__ import annotations

import re
from pathlib import Path

from consumer.settings import Settings

README = Path(__file__).resolve().parents[2] / "README.md"


def test_every_stem_setting_is_in_the_readme_configuration_table() -> None:
    text = README.read_text(encoding="utf-8")
    table = text[text.index("## Configuration") :]
    table = table[: table.index("\n## ")]
    documented = set(re.findall(r"`([A-Z][A-Z0-9_]+)`", table))
    own = {
        name.upper()
        for name, field in Settings.model_fields.items()
        if field.validation_alias is None  # the STEM_-prefixed ones
    }

    assert sorted(own - documented) == []
