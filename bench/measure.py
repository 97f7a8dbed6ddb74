"""Instruments the benchmark puts around the code it measures, without changing that code.

- :class:`ForwardTimer`: time spent inside a model's forward passes (module hooks).
- :class:`UsageProbe`: over a block, this process's peak resident memory and CPU time,
  the machine's CPU pressure (Linux ``/proc``), and peak CUDA memory on a GPU.
- :class:`StageLog`: the per-stage timings the job handler logs with its ``job processed``
  record, captured by a logging handler.
"""

from __future__ import annotations

import contextlib
import logging
import resource
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "ForwardTimer",
    "HandlerRecord",
    "StageLog",
    "Usage",
    "UsageProbe",
    "rss_mb",
]

_PROC_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")
_PSI_CPU = Path("/proc/pressure/cpu")


class ForwardTimer:
    """Accumulates wall time spent inside ``module.forward`` (hooks on ``__call__``).

    On CUDA the device is synchronised at both ends of each forward so that the time is
    the kernels' and not just their launch; ``apply_model`` copies every chunk's result to
    the host right after the forward anyway, so this moves a wait rather than adding one.
    """

    def __init__(self, module: torch.nn.Module, *, cuda: bool = False) -> None:
        self.total_s = 0.0
        self.calls = 0
        self._cuda = cuda
        self._started: float | None = None
        self._handles = [
            module.register_forward_pre_hook(self._before),
            module.register_forward_hook(self._after),
        ]

    def _before(self, module: torch.nn.Module, args: Any) -> None:
        del module, args
        if self._cuda:
            torch.cuda.synchronize()
        self._started = time.perf_counter()

    def _after(self, module: torch.nn.Module, args: Any, output: Any) -> None:
        del module, args, output
        if self._cuda:
            torch.cuda.synchronize()
        if self._started is not None:
            self.total_s += time.perf_counter() - self._started
            self.calls += 1
            self._started = None

    def reset(self) -> None:
        self.total_s = 0.0
        self.calls = 0

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()


def _status_kb(field_name: str) -> int | None:
    try:
        text = _PROC_STATUS.read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1])
    return None


def rss_mb() -> float:
    """This process's resident set size now, in MiB (0 where /proc is unavailable)."""
    kb = _status_kb("VmRSS")
    return (kb or 0) / 1024


@dataclass
class Usage:
    """What :class:`UsageProbe` measured over one block (memory in MiB)."""

    rss_before_mb: float = 0.0
    peak_rss_mb: float = 0.0
    method: str = ""
    gpu_peak_allocated_mb: float | None = None
    gpu_peak_reserved_mb: float | None = None
    cpu_s: float = 0.0
    """CPU time of this process (all threads, user + system) over the block."""
    cpu_pressure: float | None = None
    """Share of the block's wall time in which some runnable task on the machine waited
    for a CPU (``/proc/pressure/cpu``): near 0 on an idle machine; high means other
    work competed with the benchmark and its timings are inflated."""

    @property
    def rss_growth_mb(self) -> float:
        return max(0.0, self.peak_rss_mb - self.rss_before_mb)


def _cpu_pressure_us() -> int | None:
    try:
        first = _PSI_CPU.read_text().splitlines()[0]  # "some avg10=... total=<us>"
    except (OSError, IndexError):
        return None
    total = first.rsplit("total=", 1)[-1]
    return int(total) if total.isdigit() else None


def _cpu_time_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class UsageProbe:
    """Peak RSS (and peak CUDA memory), CPU time and CPU pressure over a ``with`` block.

    Linux keeps the peak RSS as ``VmHWM``; writing ``5`` to ``/proc/self/clear_refs``
    resets it to the current RSS, so each block gets a peak of its own even in one
    process. Where that is refused, a thread samples ``VmRSS`` every ``interval_s``
    instead (which can miss a short spike). Within one process, memory that the allocator
    kept from an earlier block counts as already resident: a fresh process per pipeline
    (``--rss-only``) is the clean measurement of growth.
    """

    def __init__(self, *, cuda: bool = False, interval_s: float = 0.01) -> None:
        self.result = Usage()
        self._cuda = cuda
        self._interval = interval_s
        self._stop = threading.Event()
        self._sampler: threading.Thread | None = None
        self._sampled_kb = 0
        self._started = 0.0
        self._cpu = 0.0
        self._pressure: int | None = None

    def __enter__(self) -> Usage:
        if self._cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        self.result.rss_before_mb = rss_mb()
        self._started = time.perf_counter()
        self._cpu = _cpu_time_s()
        self._pressure = _cpu_pressure_us()
        try:
            _CLEAR_REFS.write_text("5")
            self.result.method = "VmHWM"
        except OSError:
            self.result.method = "sampled"
            self._sampled_kb = _status_kb("VmRSS") or 0
            self._sampler = threading.Thread(target=self._sample, name="bench-rss", daemon=True)
            self._sampler.start()
        return self.result

    def _sample(self) -> None:
        while not self._stop.wait(self._interval):
            self._sampled_kb = max(self._sampled_kb, _status_kb("VmRSS") or 0)

    def __exit__(self, *exc: object) -> None:
        if self._sampler is not None:
            self._stop.set()
            self._sampler.join()
            peak_kb = max(self._sampled_kb, _status_kb("VmRSS") or 0)
        else:
            peak_kb = _status_kb("VmHWM") or 0
        self.result.peak_rss_mb = peak_kb / 1024
        wall = time.perf_counter() - self._started
        self.result.cpu_s = _cpu_time_s() - self._cpu
        pressure = _cpu_pressure_us()
        if pressure is not None and self._pressure is not None and wall > 0:
            self.result.cpu_pressure = (pressure - self._pressure) / 1e6 / wall
        if self._cuda:
            torch.cuda.synchronize()
            self.result.gpu_peak_allocated_mb = torch.cuda.max_memory_allocated() / 2**20
            self.result.gpu_peak_reserved_mb = torch.cuda.max_memory_reserved() / 2**20


@dataclass(frozen=True)
class HandlerRecord:
    """What the job handler logged at the end of one job."""

    stages: dict[str, float]
    duration_ms: float | None
    logged_at: float  # time.time() of the record: the end of the job's handling
    error: str | None = None  # set for "job failed"


class StageLog(logging.Handler):
    """Collects the ``job processed`` / ``job failed`` records of each delivery, by ``jobId``
    (logged by ``consumer.delivery``, which wraps every attempt of the handler).

    Attach with :meth:`capture`; that logger is lowered to INFO for the duration (what
    reaches the console is still decided by the console handler's own level).
    """

    def __init__(self, logger_name: str = "consumer.delivery") -> None:
        super().__init__(logging.INFO)
        self._logger_name = logger_name
        self._records: dict[str, HandlerRecord] = {}
        self._arrived = threading.Condition()

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        job_id = getattr(record, "jobId", None)
        stages = getattr(record, "stages", None)
        if message not in ("job processed", "job failed") or not isinstance(job_id, str):
            return
        duration = getattr(record, "durationMs", None)
        entry = HandlerRecord(
            {str(k): float(v) for k, v in (stages or {}).items()},
            float(duration) if isinstance(duration, int | float) else None,
            record.created,
            error=str(getattr(record, "error", "?")) if message == "job failed" else None,
        )
        with self._arrived:
            self._records[job_id] = entry
            self._arrived.notify_all()

    def wait_for(self, job_id: str, timeout_s: float = 10.0) -> HandlerRecord | None:
        """The record of ``job_id``; it is logged just after the result is published."""
        with self._arrived:
            self._arrived.wait_for(lambda: job_id in self._records, timeout_s)
            return self._records.pop(job_id, None)

    @contextlib.contextmanager
    def capture(self) -> Iterator[StageLog]:
        logger = logging.getLogger(self._logger_name)
        level = logger.level
        if logger.getEffectiveLevel() > logging.INFO:
            logger.setLevel(logging.INFO)
        logger.addHandler(self)
        try:
            yield self
        finally:
            logger.removeHandler(self)
            logger.setLevel(level)
