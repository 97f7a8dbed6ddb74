"""``python -m bench`` (``make bench``): see bench/README.md.

``python -m bench [options]`` runs the side-by-side benchmark; a first argument naming a
subcommand runs that instead: ``costs`` (per-core CPU costs), ``analysis`` (the stem
analysis against the MP3 encode beside it), ``capacity`` (the capacity
model and docs/capacity.md), ``cpu-path`` (faster CPU forwards), ``gpu-check`` (what
bench/gpu_check.sh runs).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Sequence

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


def _subcommand(name: str) -> Callable[[Sequence[str]], int] | None:
    # Imported on demand: each pulls in what only it needs.
    if name == "costs":
        from bench.costs import main as costs

        return costs
    if name == "analysis":
        from bench.costs import analysis_main

        return analysis_main
    if name == "capacity":
        from bench.capacity import main as capacity

        return capacity
    if name == "cpu-path":
        from bench.cpu_path import main as cpu_path

        return cpu_path
    if name == "gpu-check":
        from bench.gpu_check import main as gpu_check

        return gpu_check
    return None


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and (command := _subcommand(args[0])) is not None:
        _configure_logging()
        return command(args[1:])
    options = parse_args(args)
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
