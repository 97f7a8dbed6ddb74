"""How ``stemctl`` shows things: sizes and durations in human units, tables, progress.

On a terminal, rich tables and a progress bar per task; anywhere else (a pipe, a log file,
a test), aligned plain columns and a plain line per step, so the output stays greppable.
Tables go to stdout; progress goes to stderr, beside the one-line errors.
"""

from __future__ import annotations

import contextlib
import sys
import threading
from collections.abc import Collection, Iterator, Sequence
from typing import Final, Protocol

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    TaskID,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

__all__ = [
    "Bar",
    "Bars",
    "human_duration",
    "human_size",
    "print_table",
    "progress_bars",
    "terminal",
]

_SIZE_UNITS: Final = ("KiB", "MiB", "GiB", "TiB")
_PLAIN_STEP: Final = 25
"""Off a terminal, a task's percentage is printed each time it passes a multiple of this."""


def terminal() -> bool:
    """Whether stdout is a terminal (rich tables, progress bars)."""
    return sys.stdout.isatty()


def human_size(size_bytes: int) -> str:
    """``10590617`` → ``10.1 MiB``: binary units with one decimal; bytes below 1 KiB."""
    if size_bytes < 1024:
        return f"{size_bytes} B"
    value = float(size_bytes)
    for unit in _SIZE_UNITS:
        value /= 1024
        if round(value, 1) < 1024 or unit == _SIZE_UNITS[-1]:
            break
    return f"{value:.1f} {unit}"


def human_duration(seconds: float) -> str:
    """``4.04`` → ``4.0 s``; ``205`` → ``3:25``; ``3725`` → ``1:02:05``."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes}:{secs:02d}"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


def print_table(
    columns: Sequence[str],
    rows: Sequence[Sequence[str]],
    *,
    title: str | None = None,
    right: Collection[str] = (),
) -> None:
    """A table on stdout: rich on a terminal, aligned plain columns elsewhere.
    ``right`` names the columns to align right (numbers)."""
    if terminal():
        table = Table(title=title, title_justify="left")
        for column in columns:
            table.add_column(
                column, justify="right" if column in right else "left", overflow="fold"
            )
        for row in rows:
            table.add_row(*row)
        Console().print(table)
        return
    widths = [max(len(str(row[i])) for row in [columns, *rows]) for i in range(len(columns))]
    if title:
        typer.echo(title)
    for row in [columns, *rows]:
        cells = [
            cell.rjust(width) if column in right else cell.ljust(width)
            for column, cell, width in zip(columns, row, widths, strict=True)
        ]
        typer.echo("  ".join(cells).rstrip())


class Bar(Protocol):
    """The progress of one task: how far (0–1) and in which phase."""

    def update(self, fraction: float | None = None, *, phase: str | None = None) -> None: ...

    def finish(self, phase: str = "done") -> None: ...


class Bars(Protocol):
    def add(self, name: str, *, phase: str = "") -> Bar: ...


@contextlib.contextmanager
def progress_bars() -> Iterator[Bars]:
    """Progress bars on stderr: one rich bar per task on a terminal, else a plain line
    whenever a task changes phase or passes a multiple of 25 %. Updates may come from
    any thread."""
    console = Console(stderr=True)
    if not console.is_terminal:
        yield _PlainBars()
        return
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        TextColumn("{task.fields[phase]}"),
        TimeElapsedColumn(),
        console=console,
    ) as progress:
        yield _RichBars(progress)


class _RichBar:
    def __init__(self, progress: Progress, task: TaskID) -> None:
        self._progress = progress
        self._task = task

    def update(self, fraction: float | None = None, *, phase: str | None = None) -> None:
        completed = None if fraction is None else min(max(fraction, 0.0), 1.0)
        if phase is None:
            self._progress.update(self._task, completed=completed)
        else:
            self._progress.update(self._task, completed=completed, phase=phase)

    def finish(self, phase: str = "done") -> None:
        self._progress.update(self._task, completed=1.0, phase=phase)
        self._progress.stop_task(self._task)


class _RichBars:
    def __init__(self, progress: Progress) -> None:
        self._progress = progress

    def add(self, name: str, *, phase: str = "") -> Bar:
        return _RichBar(self._progress, self._progress.add_task(name, total=1.0, phase=phase))


class _PlainBar:
    def __init__(self, name: str, lock: threading.Lock, phase: str) -> None:
        self._name = name
        self._lock = lock
        self._phase = phase  # not printed: a line says what happened, not what waits
        self._step = -1

    def _line(self, text: str) -> None:
        typer.echo(f"{self._name}: {text}", err=True)

    def update(self, fraction: float | None = None, *, phase: str | None = None) -> None:
        with self._lock:
            changed = phase is not None and phase != self._phase
            if changed:
                self._phase, self._step = phase or "", -1
            if fraction is None:
                if changed:
                    self._line(self._phase)
                return
            percent = round(min(max(fraction, 0.0), 1.0) * 100)
            if percent // _PLAIN_STEP > self._step:
                self._step = percent // _PLAIN_STEP
                self._line(f"{self._phase} {percent} %".strip())

    def finish(self, phase: str = "done") -> None:
        with self._lock:
            self._line(phase)


class _PlainBars:
    def __init__(self) -> None:
        self._lock = threading.Lock()

    def add(self, name: str, *, phase: str = "") -> Bar:
        return _PlainBar(name, self._lock, phase)
