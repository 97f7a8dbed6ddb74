"""The chaos run: a fleet of real workers under kills, storage faults and poison.

``run_chaos`` starts ``workers`` real ``stemctl worker`` processes against the Pub/Sub
emulator and, through a fault-injecting proxy, fake-gcs-server; submits ``jobs`` jobs
at once (a fifth poison of every kind, see :mod:`tests.chaos.catalogue`); SIGKILLs a random
worker every few seconds and starts another in its place, until every job has ended or
the drain timeout passes. Then it stops the fleet with SIGTERM and checks the promise:

- every good job has a ``stems.processed`` whose objects exist and match their sha256;
- every poison job is in ``stem-dlq`` with its reason (``errorCode``);
- no job is unaccounted for; duplicates are allowed, and counted;
- no storage request touched a bucket outside ``STEM_ALLOWED_BUCKETS`` (writes: only the
  output bucket), no object lies outside a good job's prefix, no secret reached a log.

Why good jobs cannot be dead-lettered by Pub/Sub here: the subscription allows
``max_delivery_attempts`` = 100 deliveries. A kill costs a job one delivery (the
dead worker's lease lapses and the relay deals the redelivery to a live worker),
and a storage call fails only after four faulted tries (about 1e-4 per call at 10 %), so
within the drain timeout no good job gets anywhere near 100; the report shows the most any
job needed. A good job in ``stem-dlq`` is therefore a failure whatever its reason.

The workers reach the Pub/Sub emulator through :class:`~tests.support.pubsub_relay.PubSubRelay`,
which deals out streaming pulls with flow control and drops the streams of killed workers,
as Pub/Sub does and the emulator does not (see there); storage goes through
:class:`~tests.support.faults.FaultyProxy`.

Run it alone, at any size, with its own emulators::

    python -m tests.chaos.run --jobs 500 --workers 3 --figures build/reliability/long
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from consumer import gcp
from consumer.intake import build_intake, upload_job_id
from consumer.settings import Settings
from stem_contracts import Job, split_gcs_uri
from tests.chaos.catalogue import (
    LIMITS,
    MODEL,
    POISON_KINDS,
    Context,
    Submission,
    counts,
    make_submissions,
    stage_sources,
)
from tests.chaos.fleet import Fleet
from tests.chaos.ledger import Ledger, check_buckets, check_requests, check_stems, find_leaks
from tests.reliability.environment import provision, results_subscription
from tests.support.faults import FAULTS, Fault, FaultyProxy, random_faults
from tests.support.pubsub_relay import PubSubRelay
from tests.support.worker_fixtures import Results

__all__ = ["ChaosConfig", "ChaosReport", "chaos_settings", "run_chaos"]

Log = Callable[[str], None]
THREAD_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
"""Three workers on two cores: one torch thread each, or they only fight for the cores."""


@dataclass(frozen=True)
class ChaosConfig:
    jobs: int = 60
    workers: int = 3
    poison_fraction: float = 0.2
    kill_every_s: float = 3.0
    """Mean interval between SIGKILLs (each interval drawn from 0.5-1.5 times this), or
    the workers' start-up time when that is longer: a fleet killed faster than it can
    start again does no work at all, and that proves nothing (CPUs differ twofold)."""
    max_kills: int = 0
    """Kills in all (0: until every job has ended)."""
    fault_rate: float = 0.10
    fault_kinds: tuple[Fault, ...] = FAULTS
    seed: int = 0
    drain_timeout_s: float = 240.0
    max_delivery_attempts: int = 100
    window: int = 0
    """Submissions unfinished at any time (0: all at once, the backlog a burst leaves)."""
    ready_timeout_s: float = 120.0
    """For a worker to load its model; generous, as start-ups overlap on a busy box."""
    uploads: int = 0
    """Good jobs that arrive as uploads: objects written under ``STEM_UPLOADS_PREFIX``,
    turned into jobs by an intake from fake-gcs-server's notifications (``base`` must be
    the project and staging bucket fake-gcs-server notifies)."""


@dataclass
class ChaosReport:
    config: ChaosConfig
    good: int = 0
    poison: int = 0
    lost: list[str] = field(default_factory=list)
    wrong: dict[str, str] = field(default_factory=dict)
    stem_problems: list[str] = field(default_factory=list)
    request_problems: list[str] = field(default_factory=list)
    bucket_problems: list[str] = field(default_factory=list)
    leaks: list[str] = field(default_factory=list)
    handler_crashes: int = 0
    processed_duplicates: int = 0
    jobs_with_duplicates: int = 0
    recomputed_jobs: int = 0
    uploads: int = 0
    reused_jobs: int = 0
    """Good jobs answered by server-side copies of an earlier job's stems (same reuse key)."""
    dead_letter_duplicates: int = 0
    unknown_dead_letters: int = 0
    retried: dict[str, int] = field(default_factory=dict)
    max_attempt: int = 0
    kills: int = 0
    kill_every_s: float = 0.0
    """The mean interval between kills the run used (see ``ChaosConfig.kill_every_s``)."""
    abandoned_by_kills: int = 0
    redealt_by_relay: int = 0
    """Messages of killed workers the emulator never redelivered (the relay did): a finding
    about the emulator, reported, never counted as the fleet's success."""
    worker_starts: int = 0
    start_up_s: list[float] = field(default_factory=list)
    storage_requests: int = 0
    faults: dict[str, int] = field(default_factory=dict)
    drain_s: float = 0.0
    drained: bool = False
    peak_rss_bytes: int = 0
    exit_codes: list[int | None] = field(default_factory=list)
    log_lines: int = 0
    lost_trails: dict[str, list[str]] = field(default_factory=dict)
    """For each lost submission: its kind, message id, and the worker log lines naming it."""

    def failures(self) -> list[str]:
        """Everything that breaks the promise (empty when the run kept it)."""
        found = [
            "lost: " + "\n    ".join([key, *self.lost_trails.get(key, [])]) for key in self.lost
        ]
        found += [f"{key}: {problem}" for key, problem in self.wrong.items()]
        found += self.stem_problems + self.request_problems + self.bucket_problems
        found += [f"secret in a log line: {line}" for line in self.leaks]
        if self.handler_crashes:
            found.append(f"{self.handler_crashes} 'handler crashed' log lines")
        if self.unknown_dead_letters:
            found.append(f"{self.unknown_dead_letters} dead letters of no submission")
        if any(code != 0 for code in self.exit_codes):
            found.append(f"workers did not all exit 0 on SIGTERM: {self.exit_codes}")
        return found

    def rows(self) -> list[tuple[str, str]]:
        """The report as (figure, value) rows for the results table."""
        c = self.config
        faults = sum(self.faults.values())
        by_kind = ", ".join(f"{k} {v}" for k, v in sorted(self.faults.items())) or "none"
        retried = ", ".join(f"{k} {v}" for k, v in sorted(self.retried.items())) or "none"
        pct = 100 * faults / max(self.storage_requests, 1)
        codes = sorted({str(code) for code in self.exit_codes})
        return [
            (
                "Chaos: load held",
                f"{self.good + self.poison} jobs ({self.good} good 1 s clips, {self.poison} "
                f"poison of {len(POISON_KINDS)} kinds), "
                + (f"{c.window} unfinished at a time" if c.window else "submitted at once")
                + f", on {c.workers} workers",
            ),
            (
                "Chaos: uploads",
                f"{self.uploads} of the good jobs arrived as uploads (GCS notification → "
                "stemctl intake → job)",
            ),
            (
                "Chaos: storage faults injected",
                f"{faults} of {self.storage_requests} requests ({pct:.1f} %): {by_kind}",
            ),
            (
                "Chaos: kills survived",
                f"{self.kills} SIGKILLs (a ready worker every ~{self.kill_every_s:.1f} s); "
                f"{self.abandoned_by_kills} jobs held by a killed worker "
                + (
                    f"(FINDING: {self.redealt_by_relay} of them stranded by the emulator after "
                    "their lease, rescued by the test relay, not by Pub/Sub semantics); "
                    if self.redealt_by_relay
                    else "(all redelivered by the emulator after their lease); "
                )
                + f"{self.worker_starts} worker starts, start-up median "
                f"{statistics.median(self.start_up_s or [0]):.1f} s, "
                f"max {max(self.start_up_s or [0]):.1f} s",
            ),
            ("Chaos: lost", str(len(self.lost))),
            ("Chaos: wrong outcome", str(len(self.wrong))),
            (
                "Chaos: duplicates",
                f"{self.processed_duplicates} extra stems.processed on "
                f"{self.jobs_with_duplicates} jobs ({self.recomputed_jobs} recomputed); "
                f"{self.dead_letter_duplicates} extra dead letters",
            ),
            (
                "Chaos: reuse",
                f"{self.reused_jobs} of {self.good} good jobs answered by copies of an earlier "
                "job's stems (no separation), checked like the rest",
            ),
            ("Chaos: attempts failed and retried", retried),
            (
                "Chaos: most deliveries of one job",
                f"{self.max_attempt} (dead-letter limit {c.max_delivery_attempts})",
            ),
            ("Chaos: drain time", f"{self.drain_s:.0f} s" + ("" if self.drained else " (TIMEOUT)")),
            ("Chaos: peak worker RSS", f"{self.peak_rss_bytes / 2**20:.0f} MiB"),
            (
                "Chaos: access outside allowed buckets / stray objects",
                f"{len(self.request_problems)} / {len(self.bucket_problems)}",
            ),
            ("Chaos: secrets in logs", f"{len(self.leaks)} of {self.log_lines} lines"),
            ("Chaos: clean exit on SIGTERM", f"{len(self.exit_codes)} workers, exit {codes}"),
        ]

    def figures(self) -> dict[str, Any]:
        data = asdict(self)
        data["config"] = asdict(self.config)
        return {"title": "chaos", "rows": self.rows(), "data": data, "bad_inputs": self.poison}


def chaos_settings(base: Settings, model_repo: Path, config: ChaosConfig) -> Settings:
    """The fleet's settings for a run: the catalogue's limits, the allow-list, the tiny
    model, and delivery attempts enough that kills cannot dead-letter a good job."""
    return base.model_copy(
        update={
            "model": MODEL,
            "model_repo": model_repo,
            "device": "cpu",
            "allowed_buckets": frozenset({base.staging_bucket, base.output_bucket}),
            "max_audio_seconds": LIMITS.max_audio_seconds,
            "max_audio_bytes": LIMITS.max_audio_bytes,
            "max_delivery_attempts": config.max_delivery_attempts,
            "progress_interval_s": 0.0,
            "encode_workers": 1,
            "shutdown_grace_s": 10.0,
        }
    )


def forbidden_bucket(settings: Settings) -> str:
    """A bucket that exists, holds a valid clip, and is not in the allow-list."""
    return f"forbidden-{settings.output_bucket}"


class _Submitter:
    """Publishes submissions in order, keeping at most ``window`` of them unfinished (all at
    once when ``window`` is the number of submissions)."""

    def __init__(self, settings: Settings, submissions: list[Submission], window: int) -> None:
        self._publisher = gcp.publisher_client(settings)
        self._topic = self._publisher.topic_path(settings.require_project(), settings.jobs_topic)
        self._pending = list(submissions)
        self._window = window
        self.published: list[Submission] = []
        self.message_ids: dict[str, str] = {}
        """Submission key → the message id Pub/Sub gave it (to find it in worker logs)."""

    def top_up(self, ledger: Ledger) -> None:
        unfinished = sum(not ledger.ended(s) for s in self.published)
        batch = self._pending[: max(0, self._window - unfinished)]
        del self._pending[: len(batch)]
        futures = [self._publisher.publish(self._topic, s.data, **s.attributes) for s in batch]
        for submission, future in zip(batch, futures, strict=True):
            self.message_ids[submission.key] = future.result(60)
        self.published += batch

    def close(self) -> None:
        self._publisher.stop()


class _Monkey(threading.Thread):
    """Kills a random worker every ``every_s`` on average, and starts another: the
    configured interval, or the workers' median start-up when that is longer (measured
    on the first starts, so call :meth:`start` once the fleet is ready)."""

    def __init__(self, fleet: Fleet, config: ChaosConfig) -> None:
        super().__init__(name="chaos-monkey", daemon=True)
        self._fleet = fleet
        self._config = config
        self._rng = random.Random(config.seed + 1)
        self.stopped = threading.Event()
        self.every_s = config.kill_every_s

    def start(self) -> None:
        startups = self._fleet.start_up_seconds()
        self.every_s = max(self._config.kill_every_s, statistics.median(startups or [0.0]))
        super().start()

    def run(self) -> None:
        every, limit = self.every_s, self._config.max_kills
        while not self.stopped.wait(self._rng.uniform(0.5, 1.5) * every):
            if limit and self._fleet.kills >= limit:
                return
            self._fleet.kill_and_replace(self._rng)


def run_chaos(
    config: ChaosConfig,
    base: Settings,
    *,
    model_repo: Path,
    workdir: Path,
    log: Log = print,
    worker_log: Path | None = None,
) -> ChaosReport:
    """One chaos run on the emulators ``base`` points at (its project must be fresh);
    ``worker_log``: where to keep every worker's log lines (``w{n}`` = its nth start)."""
    report = ChaosReport(config)
    settings = chaos_settings(base, model_repo, config)
    provision(settings)
    gcs = gcp.storage_client(settings)  # direct: set-up and checks never go through faults
    forbidden = forbidden_bucket(settings)
    gcs.create_bucket(forbidden)
    ctx = Context(
        settings.staging_bucket,
        settings.output_bucket,
        forbidden,
        stage_sources(gcs, settings.staging_bucket, forbidden, workdir / "sources"),
    )
    submissions = make_submissions(
        ctx, config.jobs, poison_fraction=config.poison_fraction, seed=config.seed
    )
    published = list(submissions)
    uploaded = _upload(gcs, settings, ctx, workdir / "uploads", config.uploads)
    submissions += uploaded
    report.uploads = len(uploaded)
    report.good, report.poison = counts(submissions)
    untouched = {
        bucket: {blob.name for blob in gcs.list_blobs(bucket)}
        for bucket in (settings.staging_bucket, forbidden)
    }

    rule = random_faults(config.fault_rate, seed=config.seed, kinds=config.fault_kinds)
    with (
        results_subscription(settings, "chaos-results") as results,
        FaultyProxy(settings.storage_emulator_host or "", rule) as proxy,
        # Declared: with kills every few seconds the emulator sometimes strands a killed
        # worker's job; the relay deals it out again, and the report counts it as a finding.
        PubSubRelay(settings.pubsub_emulator_host or "", rescue_stranded=True) as relay,
    ):
        fleet = Fleet(
            settings.model_copy(
                update={"storage_emulator_host": proxy.url, "pubsub_emulator_host": relay.host}
            ),
            config.workers,
            # A credential where an exporter would read it: it must not reach a log either.
            extra_env={**THREAD_ENV, "OTEL_EXPORTER_OTLP_HEADERS": f"authorization={ctx.canary}"},
        )
        monkey = _Monkey(fleet, config)
        intake = build_intake(settings) if uploaded else None
        intake_thread = threading.Thread(target=intake.run if intake else lambda: None)
        try:
            fleet.wait_ready(config.ready_timeout_s)
            log(f"chaos: {len(submissions)} jobs, {config.workers} workers ready")
            started = time.monotonic()
            intake_thread.start()  # the uploads' notifications wait in stem-uploads till now
            submitter = _Submitter(settings, published, config.window or len(published))
            monkey.start()
            try:
                ledger = _drain(
                    results, submitter, submissions, fleet, proxy, relay, started, config, log
                )
            finally:
                submitter.close()
            report.drain_s = time.monotonic() - started
            report.drained = not ledger.open()
            monkey.stopped.set()
            monkey.join()
            results.settle(2.0)  # duplicates still on their way
            fleet.wait_ready(config.ready_timeout_s)  # a replacement may still be starting
            report.exit_codes = fleet.stop(settings.shutdown_grace_s + 20)
        finally:
            monkey.stopped.set()
            fleet.kill_all()
            if intake is not None:
                intake.request_stop("chaos run over")
            if intake_thread.is_alive():
                intake_thread.join(30)
        requests = proxy.requests_seen()
        report.faults = proxy.fault_counts()
        report.abandoned_by_kills = relay.abandoned
        report.redealt_by_relay = relay.redealt

    ledger = Ledger(submissions)
    ledger.add(results.events, results.dead_letters)
    report.lost = [s.key for s in ledger.open()]
    report.wrong = ledger.wrong()
    report.processed_duplicates, report.jobs_with_duplicates = ledger.duplicate_processed()
    report.dead_letter_duplicates, _ = ledger.duplicate_dead_letters()
    report.recomputed_jobs = ledger.distinct_processed_bodies()
    report.reused_jobs = ledger.reused()
    report.unknown_dead_letters = ledger.unknown_dead_letters
    report.retried = dict(ledger.retried())
    report.max_attempt = ledger.max_attempt
    report.kills = fleet.kills
    report.kill_every_s = monkey.every_s
    report.worker_starts = len(fleet.incarnations)
    report.start_up_s = [round(s, 2) for s in fleet.start_up_seconds()]
    report.peak_rss_bytes = fleet.peak_rss_bytes
    report.storage_requests = len(requests)
    report.stem_problems = check_stems(ledger, gcs)
    report.request_problems = check_requests(
        requests,
        readable={settings.staging_bucket, settings.output_bucket},
        writable={settings.output_bucket},
    )
    report.bucket_problems = check_buckets(
        gcs, submissions, output_bucket=settings.output_bucket, untouched=untouched
    )
    lines = fleet.log_lines()
    report.log_lines = len(lines)
    if worker_log is not None:
        worker_log.write_text(
            "".join(f"{line.rstrip()}\n" for line in fleet.log_lines(numbered=True))
        )
    report.lost_trails = _trails(ledger.open(), submitter.message_ids, lines, relay.trail)
    report.leaks = find_leaks(lines, [ctx.canary])
    report.handler_crashes = sum("handler crashed" in line for line in lines)
    return report


def _trails(
    lost: list[Submission],
    message_ids: dict[str, str],
    lines: list[str],
    relay_trail: Callable[[str], list[str]],
) -> dict[str, list[str]]:
    """What the relay saw and the workers logged of each lost submission (by message id
    or job id)."""
    trails = {}
    for submission in lost:
        message_id = message_ids.get(submission.key, "never published")
        needles = [f'"{message_id}"'] + (
            [f'"{submission.job.job_id}"'] if submission.job is not None else []
        )
        said = [line[:400] for line in lines if any(n in line for n in needles)]
        trails[submission.key] = [
            f"kind {submission.kind}, message {message_id}",
            *(f"relay {event}" for event in relay_trail(message_id)[-60:]),
            *said[-20:],
        ]
    return trails


def _upload(
    gcs: Any, settings: Settings, ctx: Context, workdir: Path, count: int
) -> list[Submission]:
    """Write ``count`` uploads (the catalogue's wav and mp3 clips, with job options in their
    custom metadata) under the uploads prefix; each is a good job the intake must make."""
    workdir.mkdir(parents=True, exist_ok=True)
    bucket = gcs.bucket(settings.staging_bucket)
    kinds = [
        ("upload_wav_to_mp3", "wav", {"format": "mp3"}),
        ("upload_mp3_two_stems_to_flac", "mp3", {"format": "flac", "stems": "vocals,drums"}),
    ]
    uploads = []
    for index in range(count):
        kind, source, options = kinds[index % len(kinds)]
        _, source_name = split_gcs_uri(ctx.sources[source])
        data = bucket.blob(source_name).download_as_bytes()
        blob = bucket.blob(f"{settings.uploads_prefix}chaos/upload-{index:04d}.{source}")
        blob.metadata = {"trackId": f"track-upload-{index:04d}", **options}
        blob.upload_from_string(data)
        job = Job(
            job_id=upload_job_id(bucket.name, blob.name, str(blob.generation)),
            track_id=blob.metadata["trackId"],
            source_uri=f"gs://{bucket.name}/{blob.name}",
            model=MODEL,
            format=options["format"],
            stems=tuple(options["stems"].split(",")) if "stems" in options else None,
        )
        uploads.append(
            Submission(
                key=f"upload-{index:04d}",
                kind=kind,
                data=b"",  # never published by the run: the intake makes the job
                attributes={},
                expected_code=None,
                job=job,
                output_prefix=ctx.default_prefix(job),
            )
        )
    return uploads


def _drain(
    results: Results,
    submitter: _Submitter,
    submissions: list[Submission],
    fleet: Fleet,
    proxy: FaultyProxy,
    relay: PubSubRelay,
    started: float,
    config: ChaosConfig,
    log: Log,
) -> Ledger:
    """Submit, and collect outcomes until every submission has one or the time is up."""
    deadline = started + config.drain_timeout_s
    next_note = started + 10
    last_change, last_remaining, dumped = started, len(submissions), False
    while True:
        ledger = Ledger(submissions)
        ledger.add(results.events, results.dead_letters)
        submitter.top_up(ledger)
        results.settle(0.5)
        fleet.sample()
        ledger = Ledger(submissions)
        ledger.add(results.events, results.dead_letters)
        remaining = len(ledger.open())
        now = time.monotonic()
        if now >= next_note or not remaining:
            log(
                f"chaos: t={now - started:.0f}s ended {len(submissions) - remaining}/"
                f"{len(submissions)}, kills {fleet.kills}, "
                f"faults {sum(proxy.fault_counts().values())}; relay {relay.stats()}"
                + (
                    "; open: " + ", ".join(f"{s.key} ({s.kind})" for s in ledger.open())
                    if remaining <= 10
                    else ""
                )
            )
            next_note = now + 10
        if remaining != last_remaining:
            last_change, last_remaining, dumped = now, remaining, False
        elif not dumped and now - last_change > 60 and remaining <= 30:
            # Stuck: say what the relay saw of each open message while it still runs.
            dumped = True
            for key, trail in _trails(
                ledger.open(), submitter.message_ids, fleet.log_lines(), relay.trail
            ).items():
                log(f"chaos: stuck {key}\n    " + "\n    ".join(trail))
        if not remaining or now >= deadline:
            return ledger


def main(argv: list[str] | None = None) -> int:
    """``python -m tests.chaos.run``: a chaos run of any size on emulators of its own."""
    from devkit.models import write_local_model
    from tests.reliability.environment import local_emulators
    from tests.reliability.figures import write_figures
    from tests.support.settings_env import isolated_settings

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=ChaosConfig.jobs)
    parser.add_argument("--workers", type=int, default=ChaosConfig.workers)
    parser.add_argument("--kill-every", type=float, default=ChaosConfig.kill_every_s)
    parser.add_argument("--max-kills", type=int, default=ChaosConfig.max_kills)
    parser.add_argument("--fault-rate", type=float, default=ChaosConfig.fault_rate)
    parser.add_argument("--seed", type=int, default=ChaosConfig.seed)
    parser.add_argument(
        "--window", type=int, default=ChaosConfig.window, help="unfinished jobs (0: all at once)"
    )
    parser.add_argument("--drain-timeout", type=float, default=None)
    parser.add_argument("--figures", type=Path, help="write chaos.json figures into this folder")
    parser.add_argument("--worker-log", type=Path, help="keep every worker's log lines here")
    args = parser.parse_args(argv)
    config = ChaosConfig(
        jobs=args.jobs,
        workers=args.workers,
        kill_every_s=args.kill_every,
        max_kills=args.max_kills,
        fault_rate=args.fault_rate,
        seed=args.seed,
        window=args.window,
        # About twice what a 500-job run takes on 2 cores, and never less than the CI budget.
        drain_timeout_s=args.drain_timeout or max(ChaosConfig.drain_timeout_s, 1.5 * args.jobs),
    )
    with tempfile.TemporaryDirectory(prefix="chaos-") as tmp, local_emulators() as hosts:
        workdir = Path(tmp)
        repo = write_local_model(workdir / "models", MODEL, size="tiny")
        report = run_chaos(
            config,
            isolated_settings(*hosts),
            model_repo=repo,
            workdir=workdir,
            worker_log=args.worker_log,
        )
    for name, value in report.rows():
        print(f"{name:55} {value}")
    if args.figures:
        write_figures(args.figures, "chaos", report.figures())
    failures = report.failures()
    for failure in failures:
        print("FAIL", failure, file=sys.stderr)
    print(json.dumps({"failures": len(failures)}))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
