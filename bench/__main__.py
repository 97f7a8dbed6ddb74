"""``python -m bench`` (``make bench``): see bench/README.md."""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence

from rich.console import Console

from bench.options import parse_args
from bench.report import print_report, print_rss_report, write_json
from bench.results import BenchError
from bench.rss import run_rss, run_rss_child
from bench.runtime import configure_torch
from bench.side_by_side import run_side_by_side


def _configure_logging() -> None:
    # Warnings and errors of the code under test reach the console; the INFO records the
    # benchmark reads (the handler's stage timings) are captured, not printed.
    console = logging.StreamHandler(sys.stderr)
    console.setLevel(logging.WARNING)
    console.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.WARNING, handlers=[console], force=True)


def main(argv: Sequence[str] | None = None) -> int:
    options = parse_args(argv)
    _configure_logging()
    configure_torch(options)
    if options.rss_child is not None:
        return run_rss_child(options, options.rss_child)
    # A log file or a pipe gets the full table too (rich would assume 80 columns).
    console = Console(highlight=False, width=None if sys.stdout.isatty() else 132)
    try:
        if options.rss_only:
            report = run_rss(options, console)
            print_rss_report(console, report)
        else:
            report = run_side_by_side(options, console)
            print_report(console, report)
    except BenchError as exc:
        console.print(f"[red]benchmark failed:[/] {exc}")
        return 1
    write_json(report, options.json_path)
    console.print(f"JSON report: {options.json_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
