"""Render measured figures as a results table in ``docs/reliability.md``.

``python -m tests.reliability.report FIGURES --section ci --out docs/reliability.md``
reads every ``*.json`` in FIGURES (written by the suite, see :mod:`tests.reliability.figures`)
and replaces one section of the document — ``ci`` (the CI-sized suite) or ``long`` (the
release check) — leaving the other as it was. The document is created when missing.
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
_HEADER: Final = """# Reliability and security: measured

The promise: under load, faults and bad input, every job ends as `stems.processed` or in
`stem-dlq` with a reason — nothing lost — and nobody reads or writes where they should
not. The tables below are written by the suite itself; how each figure is obtained is
described under them.

"""
_FOOTER: Final = """
## How the figures are obtained

- **Chaos** (`tests/chaos/`): real `stemctl worker` processes on the Pub/Sub emulator and
  fake-gcs-server. A ready worker is SIGKILLed at random intervals (0.5-1.5 x the mean)
  and replaced; storage requests pass a proxy (`tests/faults.py`) that fails a seeded
  random tenth of them — `503`, the connection dropped before the server acted
  (`drop`), after it acted (`drop_after`), or the response cut off half-way
  (`truncate`). A fifth of the jobs (at least one of each) are poison of every kind in
  `tests/chaos/catalogue.py`. *Lost* counts jobs with neither a `stems.processed` nor a
  dead letter when the run ends; *wrong outcome* counts good jobs dead-lettered, poison
  processed, and dead letters without the catalogued `errorCode`; every `stems.processed`
  is checked against the objects (sha256 and size) and its `manifest.json`. Duplicates
  are extra `stems.processed` events for a job (at-least-once: a redelivered finished job
  republishes its manifest); *recomputed* counts jobs whose duplicates differ, i.e. were
  separated twice. The subscription allows 100 deliveries, so kills cannot move a good
  job to `stem-dlq` (the most any job needed is reported).
- The workers reach the emulator through `tests/chaos/pubsub_relay.py`: the emulator
  ignores subscriber flow control and keeps handing messages to the streams of killed
  workers (measured: 0 of 30 messages delivered in 120 s after 8 subscribers went away),
  which real Pub/Sub does not do. The relay deals streaming pulls out as Pub/Sub does;
  acks, nacks, lease extensions, delivery attempts and dead-lettering stay the emulator's.
- **Soak** (`tests/reliability/soak.py`): one worker process, RSS read from `/proc` after
  every job; the slope is fitted to the RSS *floor* (the lowest reading in each tenth of
  the run, after a warm-up quarter), since within a job RSS swings by the size of a
  forward pass. The CI soak uses the real worker with a stand-in for the model
  (`tests/reliability/standin_worker.py`); the long run adds the same soak on
  `stemctl worker` with the tiny Demucs model.
- **Long track**: one job on `stemctl worker` (tiny Demucs model, CPU, one torch thread);
  the peak is the kernel's high-water mark (`VmHWM`). The bound is
  `tests.reliability.soak.track_memory_bound`: idle worker + 1.25 GiB model working set +
  3 x the decoded mix + the six stems while they fit 512 MiB (beyond that they are
  spooled to disk); the 10-minute track is also held to a flat 2.5 GiB. Measured with the
  tiny model on a CPU: the real `htdemucs_6s` adds its weights (~110 MB) and, on a GPU,
  keeps its activations in device memory instead.
- **Bad input** (`tests/reliability/test_bad_input.py`): hypothesis bodies and attributes
  against the job handler (in-memory fakes) and against the real worker on the emulators.
- **Security** (`tests/reliability/test_security.py`): one of every catalogue kind through
  a worker whose storage requests are recorded; canary secrets (a bearer token in an
  attribute, a signed URL's signature, free text in bodies, an OTLP header in the
  environment of the chaos workers) searched for in every log line at INFO.
"""


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
    """Replace ``section`` of the document at ``path`` (created when missing)."""
    if path.exists():
        text = path.read_text()
    else:
        blocks = [
            "\n".join(
                [*_markers(name)[:1], f"## {title}", "", "(not measured yet)", _markers(name)[1]]
            )
            for name, title in SECTIONS.items()
        ]
        text = _HEADER + "\n\n".join(blocks) + "\n" + _FOOTER
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
