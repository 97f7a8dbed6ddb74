"""Fixtures of the reliability suite (beside the worker fixtures every suite gets from
``tests/support/worker_fixtures.py``): a tally that records a test's figures for the
results table once the test is over."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

import pytest

from tests.reliability.figures import record


class Tally:
    """Counts and rows a test gathers; written as ``{name}.json`` figures at teardown.

    Hypothesis runs a test body once per example; the tally outlives them all, so it can
    count examples (``counts``) and the test adds its rows once, at the end.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.counts: Counter[str] = Counter()
        self.rows: list[tuple[str, str]] = []
        self.bad_inputs = 0

    def row(self, figure: str, value: object) -> None:
        self.rows.append((figure, str(value)))


@pytest.fixture
def tally(request: pytest.FixtureRequest) -> Iterator[Tally]:
    """Figures of this test (recorded only when it added rows; a failed run of
    ``make reliability`` stops before the table is rendered)."""
    found = Tally(request.node.name.split("[")[0])
    yield found
    if found.rows:
        record(
            found.name,
            {
                "title": found.name,
                "rows": found.rows,
                "data": dict(found.counts),
                "bad_inputs": found.bad_inputs,
            },
        )
