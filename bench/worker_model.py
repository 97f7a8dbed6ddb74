"""A model of one worker's pipelining, for the capacity model: how many seconds of audio a
node separates per second, given what each stage costs.

It follows what ``consumer/runner.py`` and ``consumer/handler.py`` do:

- ``STEM_MAX_IN_FLIGHT`` jobs (2) are leased at once; a finished job's slot is refilled at
  once (a backlog is assumed: this is capacity, not latency under light load);
- a job decodes its source (one thread), then waits for the device — one separation at a
  time (the handler's separation lock) — then hands its six stems to the handler's shared
  encode pool of ``STEM_ENCODE_WORKERS`` threads (one stem per thread), and is done when
  the last stem is encoded and uploaded;
- separating on a GPU takes the device ``device_s`` seconds per audio second, while one
  host thread does the separator's own work (normalising, overlap-add, hand-over); on a
  CPU node the forward passes are CPU work too, on ``forward_threads`` threads;
- every thread that has work gets an equal share of the node's cores (processor sharing,
  as the kernel's fair scheduler gives threads without CPU limits).

The model is event-driven and exact for those rules. What it leaves out: download and
upload transfer time (seconds for a four-minute track, overlapped with other work), the
GIL (the encoders and the decoder release it), memory bandwidth, and hyper-threading
(two busy threads on one physical core each run slower than one alone: a node whose
vCPUs are all busy does less than ``cores`` times the per-vCPU figures).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

__all__ = ["JobCosts", "SimResult", "WorkerShape", "simulate"]

_EPS = 1e-9


@dataclass(frozen=True)
class JobCosts:
    """What one second of audio costs each stage."""

    decode_core_s: float
    """Decoding (and resampling) the source: core-seconds per audio second, one thread."""
    host_core_s: float
    """The separator's host work while separating, per audio second, one thread."""
    encode_core_s: float
    """Encoding one stem (with its hashes) per audio second, one thread per stem."""
    device_s: float | None = None
    """GPU seconds per audio second; ``None`` when the CPU separates."""
    forward_core_s: float = 0.0
    """CPU forward passes per audio second when the CPU separates (``device_s`` None)."""
    stems: int = 6

    def cpu_core_s(self) -> float:
        """All CPU work of one audio second."""
        return (
            self.decode_core_s
            + self.host_core_s
            + self.stems * self.encode_core_s
            + (self.forward_core_s if self.device_s is None else 0.0)
        )


@dataclass(frozen=True)
class WorkerShape:
    cores: float
    """vCPUs the worker may use."""
    encode_workers: int
    in_flight: int = 2
    forward_threads: int = 1
    """torch threads of a CPU separation (ignored on a GPU)."""


@dataclass(frozen=True)
class SimResult:
    throughput: float
    """Audio seconds finished per wall second, in the steady state."""
    device_busy: float
    """Share of the time a separation held the device (the handler's separation lock)."""
    gpu_busy: float
    """Share of the time the GPU itself computed (0 on a CPU node)."""
    cores_busy: float
    """Average cores in use."""
    job_s: float
    """Average time from a job's start to its end, steady state."""

    @property
    def bound(self) -> str:
        """What limits the rate: the GPU, the separation's single host thread (the lock is
        held while the GPU waits for it), the CPU forward on a CPU node, or the rest of
        the CPU pipeline (cores, or too few jobs in flight to keep the device fed)."""
        if self.gpu_busy >= 0.95:
            return "GPU"
        if self.device_busy >= 0.95:
            return "separation host thread" if self.gpu_busy > 0 else "CPU forward"
        return "CPU pipeline"


@dataclass(eq=False)
class _Task:
    job: _Job
    remaining: float
    on_device: bool = False


@dataclass(eq=False)
class _Job:
    index: int
    started: float
    pending: int = 0
    finished: float = math.nan
    stems_left: int = 0
    tasks: list[_Task] = field(default_factory=list)


def simulate(
    costs: JobCosts,
    shape: WorkerShape,
    *,
    track_s: float = 240.0,
    jobs: int = 40,
    warmup: int = 8,
) -> SimResult:
    """Run ``jobs`` tracks of ``track_s`` seconds through the worker; measure after the
    first ``warmup`` have finished."""
    if shape.cores <= 0 or shape.encode_workers < 1 or shape.in_flight < 1:
        raise ValueError(f"invalid worker shape {shape}")
    if jobs <= warmup:
        raise ValueError("jobs must exceed warmup")
    now = 0.0
    cpu_tasks: list[_Task] = []
    device_task: _Task | None = None
    device_queue: deque[_Job] = deque()
    encode_queue: deque[_Job] = deque()  # one entry per stem waiting for a pool thread
    encoding = 0
    separating: _Job | None = None
    started = 0
    done: list[_Job] = []
    device_time = 0.0
    gpu_time = 0.0
    core_time = 0.0
    marks: dict[str, float] = {}

    def start_job() -> None:
        nonlocal started
        job = _Job(started, now)
        started += 1
        task = _Task(job, costs.decode_core_s * track_s)
        job.pending = 1
        cpu_tasks.append(task)
        job.tasks = [task]

    def try_separate() -> None:
        nonlocal separating, device_task
        if separating is not None or not device_queue:
            return
        job = device_queue.popleft()
        separating = job
        tasks = [_Task(job, costs.host_core_s * track_s)]
        if costs.device_s is not None:
            device_task = _Task(job, costs.device_s * track_s, on_device=True)
            tasks.append(device_task)
        else:
            threads = max(1, shape.forward_threads)
            tasks += [_Task(job, costs.forward_core_s * track_s / threads) for _ in range(threads)]
        job.pending = len(tasks)
        cpu_tasks.extend(t for t in tasks if not t.on_device)

    def dispatch_encodes() -> None:
        nonlocal encoding
        while encode_queue and encoding < shape.encode_workers:
            job = encode_queue.popleft()
            encoding += 1
            cpu_tasks.append(_Task(job, costs.encode_core_s * track_s))

    def finish(task: _Task) -> None:
        nonlocal separating, device_task, encoding
        job = task.job
        if separating is job and job.stems_left == 0 and job.pending > 0:
            job.pending -= 1
            if task is device_task:
                device_task = None
            if job.pending == 0:
                separating = None
                job.stems_left = costs.stems
                encode_queue.extend([job] * costs.stems)
                try_separate()
            return
        if job.stems_left > 0:  # an encode
            encoding -= 1
            job.stems_left -= 1
            if job.stems_left == 0:
                job.finished = now
                done.append(job)
                if len(done) == warmup:
                    marks.update(t=now, device=device_time, gpu=gpu_time, cores=core_time)
                if started < jobs + shape.in_flight:
                    start_job()
            return
        job.pending -= 1  # the decode
        device_queue.append(job)
        try_separate()

    for _ in range(shape.in_flight):
        start_job()
    while len(done) < jobs:
        dispatch_encodes()
        share = min(1.0, shape.cores / len(cpu_tasks)) if cpu_tasks else 0.0
        running = [(t, share) for t in cpu_tasks]
        if device_task is not None:
            running.append((device_task, 1.0))
        if not running:
            raise RuntimeError("the model stalled: nothing runs and jobs remain")
        step = min(t.remaining / rate for t, rate in running if rate > 0)
        now += step
        if separating is not None:
            device_time += step
        if device_task is not None:
            gpu_time += step
        core_time += share * len(cpu_tasks) * step
        finished = []
        for task, rate in running:
            task.remaining -= rate * step
            if task.remaining <= _EPS:
                finished.append(task)
        for task in finished:
            if not task.on_device:
                cpu_tasks.remove(task)
            finish(task)
    window = done[warmup:]
    span = now - marks["t"]
    audio = track_s * len(window)
    return SimResult(
        throughput=audio / span,
        device_busy=(device_time - marks["device"]) / span,
        gpu_busy=(gpu_time - marks["gpu"]) / span,
        cores_busy=(core_time - marks["cores"]) / span,
        job_s=sum(j.finished - j.started for j in window) / len(window),
    )
