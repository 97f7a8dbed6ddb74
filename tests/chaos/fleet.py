"""Worker processes as an operator runs them, and a fleet of them to kill and restart.

Each worker is a child process of its own session (so a SIGKILL takes its whole group),
started under the environment that makes ``Settings()`` in the child equal the test's
settings (``settings_environment``, shared with the other process tests). Its stderr —
the JSON log lines — is collected as it comes and kept after the process is gone, so a
run can read what every incarnation of every worker said. Memory, threads and open files
are read from ``/proc`` while it runs.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from consumer.settings import Settings
from tests.support.helpers import kill_group
from tests.support.settings_env import settings_environment

__all__ = ["STEMCTL_WORKER", "Fleet", "ProcStats", "WorkerProcess", "proc_stats"]

STEMCTL_WORKER: tuple[str, ...] = (str(Path(sys.executable).with_name("stemctl")), "worker")
REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class ProcStats:
    """One reading of a process: resident memory now and at its peak, threads, open fds."""

    rss_bytes: int
    peak_rss_bytes: int
    threads: int
    open_fds: int


def proc_stats(pid: int) -> ProcStats | None:
    """Read ``/proc/PID``; None once the process is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)

    def kib(name: str) -> int:
        return int(fields.get(name, "0 kB").split()[0]) * 1024

    return ProcStats(kib("VmRSS"), kib("VmHWM"), int(fields.get("Threads", "0")), fds)


class WorkerProcess:
    """A worker child process whose stderr lines are collected as they come."""

    def __init__(
        self,
        settings: Settings,
        argv: Sequence[str] = STEMCTL_WORKER,
        *,
        extra_env: Mapping[str, str] | None = None,
        name: str = "worker",
    ) -> None:
        self.name = name
        self.argv = tuple(argv)
        env = settings_environment(settings)
        env.update(extra_env or {})
        # `python -m tests...` entry points import from the repository root.
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
        self.started = time.monotonic()
        self.process = subprocess.Popen(
            self.argv,
            env=env,
            cwd=REPO_ROOT,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            errors="replace",
            start_new_session=True,
        )
        self.lines: list[str] = []
        self.ready_at: float | None = None
        """When it logged "worker pulling" (model loaded, subscribed)."""
        assert self.process.stderr is not None
        self._reader = threading.Thread(target=self._read, args=(self.process.stderr,), daemon=True)
        self._reader.start()

    def _read(self, stream: IO[str]) -> None:
        with stream:
            for line in stream:
                self.lines.append(line.rstrip("\n"))
                if self.ready_at is None and '"worker pulling"' in line:
                    self.ready_at = time.monotonic()

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def messages(self) -> list[str]:
        """The ``message`` of each JSON log line so far."""
        found = []
        for line in list(self.lines):
            with contextlib.suppress(ValueError):
                record = json.loads(line)
                if isinstance(record, dict) and "message" in record:
                    found.append(str(record["message"]))
        return found

    @property
    def ready(self) -> bool:
        return self.ready_at is not None and self.alive()

    def wait_for_log(self, message: str, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while message not in self.messages():
            if not self.alive() or time.monotonic() > deadline:
                tail = "\n".join(self.lines[-30:])
                raise AssertionError(
                    f"{self.name}: no log {message!r} (exit {self.process.poll()}):\n{tail}"
                )
            time.sleep(0.05)

    def stats(self) -> ProcStats | None:
        return proc_stats(self.pid) if self.alive() else None

    def kill(self) -> None:
        """SIGKILL the whole process group: a crash, an OOM kill, a node lost."""
        kill_group(self.process, 30)
        self._reader.join(10)

    def send_term(self) -> None:
        """SIGTERM: the start of a graceful shutdown (a second one forces the exit)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGTERM)

    def wait(self, timeout_s: float) -> int | None:
        """The exit code, or None (then killed) if it runs past ``timeout_s``."""
        try:
            code = self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
            return None
        self._reader.join(10)
        return code


class Fleet:
    """``size`` workers on the same settings; any one can be killed and replaced."""

    def __init__(
        self,
        settings: Settings,
        size: int,
        *,
        argv: Sequence[str] = STEMCTL_WORKER,
        extra_env: Mapping[str, str] | None = None,
    ) -> None:
        self._settings = settings
        self._argv = tuple(argv)
        self._env = dict(extra_env or {})
        self._lock = threading.Lock()
        self.slots: list[WorkerProcess] = []
        self.incarnations: list[WorkerProcess] = []
        self.kills = 0
        self.peak_rss_bytes = 0
        for slot in range(size):
            self.slots.append(self._spawn(slot))

    def _spawn(self, slot: int) -> WorkerProcess:
        worker = WorkerProcess(
            self._settings,
            self._argv,
            extra_env=self._env,
            name=f"worker-{slot}.{len(self.incarnations)}",
        )
        self.incarnations.append(worker)
        return worker

    def wait_ready(self, timeout_s: float) -> None:
        for worker in list(self.slots):
            worker.wait_for_log("worker pulling", timeout_s)

    def kill_and_replace(self, rng: random.Random) -> WorkerProcess | None:
        """SIGKILL a random *ready* worker and start another in its slot.

        Only workers that are pulling are candidates: killing one still loading its model
        proves nothing about jobs, and on a small machine a fleet killed faster than it
        starts would never pull at all. None when no worker is ready yet.
        """
        with self._lock:
            ready = [slot for slot, worker in enumerate(self.slots) if worker.ready]
            if not ready:
                return None
            slot = rng.choice(ready)
            victim = self.slots[slot]
            self._sample(victim)
            victim.kill()
            self.kills += 1
            self.slots[slot] = self._spawn(slot)
            return victim

    def _sample(self, worker: WorkerProcess) -> None:
        stats = worker.stats()
        if stats is not None:
            self.peak_rss_bytes = max(self.peak_rss_bytes, stats.peak_rss_bytes)

    def sample(self) -> None:
        """Note the peak RSS of the live workers (the kernel's high-water mark)."""
        with self._lock:
            for worker in self.slots:
                self._sample(worker)

    def stop(self, timeout_s: float) -> list[int | None]:
        """SIGTERM every live worker; their exit codes (None: had to be killed)."""
        with self._lock:
            for worker in self.slots:
                self._sample(worker)
                worker.send_term()
            return [worker.wait(timeout_s) for worker in self.slots]

    def kill_all(self) -> None:
        """Teardown: whatever still runs is killed."""
        for worker in self.incarnations:
            if worker.alive():
                worker.kill()

    def start_up_seconds(self) -> list[float]:
        """How long each incarnation took from spawn to pulling (those that got there)."""
        return [w.ready_at - w.started for w in self.incarnations if w.ready_at is not None]

    def log_lines(self, *, numbered: bool = False) -> list[str]:
        """Every worker's log lines; ``numbered``: each prefixed ``w{n}``, n its start."""
        return [
            f"w{n} {line}" if numbered else line
            for n, worker in enumerate(self.incarnations)
            for line in worker.lines
        ]
