"""``stemctl`` as an operator runs it: real child processes on the real emulators.

The worker runs as ``stemctl worker`` in a process of its own (its own session, so a
leftover is killed with its whole group) under an environment built from a
:class:`Settings` object, on the tiny local model. Tests wait on what the processes say —
JSON log lines on stderr, result events on ``stem-results`` — not on sleeps: a
``stems.progress`` below 100 % means the separation is under way with chunks still to
run, and that is when the worker is signalled.

The workers of the signal tests reach the emulator through
:class:`~tests.support.pubsub_relay.PubSubRelay`. The emulator never forgets a streaming pull whose
client has gone — cancelled, exited or killed — and goes on handing messages to it: after a
worker is killed, each redelivery goes to the dead stream or the live one at random, one
ack deadline (10 s) a round, and after five the job is dead-lettered: measured with plain
subscribers (``python -m tests.support.dead_streams``), 2 killed workers' messages in 24 never
reached the live subscriber, and a test that waited 75 s for the job failed in CI. Real
Pub/Sub drops a stream whose client is gone, and so does the relay, which forwards
everything else (acks, nacks, lease extensions, publishes) byte for byte: with it the job
comes back as attempt 2 once the dead worker's lease lapses, as it would in production.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import pytest

from consumer.settings import Settings
from stem_contracts import (
    Job,
    ResultEvent,
    ResultSubscriber,
    StemsFailed,
    StemsProcessed,
    StemsProcessing,
    StemsProgress,
    decode_event,
)
from tests.support.helpers import kill_group
from tests.support.pubsub_relay import PubSubRelay
from tests.support.settings_env import settings_environment
from tests.support.worker_fixtures import MODEL, Results

pytestmark = pytest.mark.integration

STEMCTL = Path(sys.executable).with_name("stemctl")

LONG_CLIP_S = 16.0
"""Three 7.8 s chunks (overlap 0.25): after the first ``stems.progress`` two forward
passes remain, about 1.1 s on a 2-core CPU — longer than :data:`SHORT_GRACE_S`."""
SHORT_GRACE_S = 0.2
READY_TIMEOUT_S = 60.0
"""Start-up is mostly importing torch and demucs (2-4 s here); generous for a busy CI box."""
REDELIVERY_TIMEOUT_S = 45.0
"""A lapsed lease (10 s) and a separation of :data:`LONG_CLIP_S` (~3 s), on a busy CI box."""


class Stemctl:
    """A ``stemctl`` child process; its stdout and stderr lines are collected as they come."""

    def __init__(self, settings: Settings, *args: str) -> None:
        self.args = args
        self.process = subprocess.Popen(
            [str(STEMCTL), *args],
            env=settings_environment(settings),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,  # a process group of its own: kill() ends all of it
        )
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        assert self.process.stdout is not None
        assert self.process.stderr is not None
        self._readers = [
            threading.Thread(target=self._read, args=(stream, lines), daemon=True)
            for stream, lines in (
                (self.process.stdout, self.stdout),
                (self.process.stderr, self.stderr),
            )
        ]
        for reader in self._readers:
            reader.start()

    @staticmethod
    def _read(stream: IO[str], lines: list[str]) -> None:
        with stream:  # closed at EOF, once the process group has exited
            for line in stream:
                lines.append(line.rstrip("\n"))

    def _describe(self) -> str:
        tail = "\n".join(self.stderr[-40:])
        return f"stemctl {' '.join(self.args)} (exit {self.process.poll()}); stderr:\n{tail}"

    def messages(self) -> list[str]:
        """The ``message`` of each JSON log line on stderr so far, in order."""
        found = []
        for line in list(self.stderr):
            with contextlib.suppress(ValueError):
                record = json.loads(line)
                if isinstance(record, dict) and "message" in record:
                    found.append(str(record["message"]))
        return found

    def _wait_until(self, done: Callable[[], bool], what: str, timeout_s: float) -> None:
        """Until ``done()``; fails at once if the process exits first."""
        deadline = time.monotonic() + timeout_s
        while not done():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"no {what} from {self._describe()}")
            time.sleep(0.05)

    def wait_for_log(self, message: str, timeout_s: float) -> None:
        """Until a JSON log line on stderr says ``message``."""
        self._wait_until(lambda: message in self.messages(), f"log {message!r}", timeout_s)

    def wait_for_stdout(self, match: Callable[[str], bool], timeout_s: float) -> None:
        """Until a line on stdout matches."""
        self._wait_until(lambda: any(map(match, list(self.stdout))), "such stdout", timeout_s)

    def send(self, signum: int) -> None:
        self.process.send_signal(signum)

    def wait(self, timeout_s: float) -> int:
        """The exit code, once both pipes are drained; fails if it runs past ``timeout_s``."""
        try:
            code = self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"still running after {timeout_s} s: {self._describe()}") from None
        for reader in self._readers:
            reader.join(10)
        return code

    def kill(self) -> None:
        """SIGKILL the whole process group (a crash, or teardown of a leftover)."""
        kill_group(self.process)
        for reader in self._readers:
            reader.join(10)


@pytest.fixture
def stemctl() -> Iterator[Callable[..., Stemctl]]:
    """Start ``stemctl ARGS…`` under given settings; whatever still runs is killed after."""
    started: list[Stemctl] = []

    def start(settings: Settings, *args: str) -> Stemctl:
        started.append(Stemctl(settings, *args))
        return started[-1]

    yield start
    for child in started:
        child.kill()


@pytest.fixture
def spawn_worker(stemctl: Callable[..., Stemctl]) -> Callable[[Settings], Stemctl]:
    """``stemctl worker`` under given settings, returned once it is pulling."""

    def spawn(settings: Settings) -> Stemctl:
        worker = stemctl(settings, "worker")
        worker.wait_for_log("worker pulling", READY_TIMEOUT_S)
        return worker

    return spawn


@pytest.fixture
def relay(worker_settings: Settings) -> Iterator[PubSubRelay]:
    """A relay in front of the session's emulator (see the module docstring). It never
    deals a message out again itself: afterwards, it must have found none stranded, so
    every redelivery a test saw was the emulator's, at the end of the worker's own lease."""
    assert worker_settings.pubsub_emulator_host is not None
    with PubSubRelay(
        worker_settings.pubsub_emulator_host, lease_s=worker_settings.ack_deadline_s
    ) as relay:
        yield relay
    assert (relay.redealt, relay.stranded) == (0, 0), "the emulator stranded a message"


@pytest.fixture
def long_settings(worker_settings: Settings, relay: PubSubRelay) -> Settings:
    """Worker settings for :data:`LONG_CLIP_S` of audio, with progress after every chunk,
    reaching Pub/Sub through the relay (the test itself publishes and listens directly)."""
    return worker_settings.model_copy(
        update={
            "device": "cpu",
            "max_audio_seconds": 60.0,
            "max_audio_bytes": 20 * 1024 * 1024,
            "progress_interval_s": 0.01,
            "pubsub_emulator_host": relay.host,
        }
    )


@pytest.fixture
def long_job(
    long_settings: Settings,
    clip: Callable[..., Path],
    stage: Callable[[Path, str, str], str],
) -> Job:
    """A job on :data:`LONG_CLIP_S` of staged audio (not yet published)."""
    source = stage(clip("wav", LONG_CLIP_S), long_settings.staging_bucket, "in/long.wav")
    return Job(job_id="long-1", track_id="track-1", source_uri=source, model=MODEL, format="wav")


@pytest.fixture
def mid_separation(long_settings: Settings, pubsub_clients: Any) -> Iterator[Callable[[Job], None]]:
    """Wait until attempt 1 of a job reports progress short of 100 %: chunks remain to run.

    A streaming pull of its own on ``stem-results`` (subscribed before any job is
    published) sees a progress event within ~0.1 s; the polled ``results`` can lag by a
    second, longer than the two forward passes left.
    """
    _, subscriber = pubsub_clients
    project = long_settings.require_project()
    subscriber.create_subscription(
        request={
            "name": subscriber.subscription_path(project, "test-progress"),
            "topic": f"projects/{project}/topics/{long_settings.results_topic}",
        }
    )
    first: dict[str, StemsProgress] = {}
    seen = threading.Condition()

    def on_progress(event: StemsProgress) -> None:
        with seen:
            if event.attempt == 1:
                first.setdefault(event.job_id, event)
                seen.notify_all()

    def wait(job: Job) -> None:
        with seen:
            assert seen.wait_for(lambda: job.job_id in first, 30), "no stems.progress"
        assert first[job.job_id].percent < 100, first[job.job_id]

    with ResultSubscriber(project, "test-progress", on_progress=on_progress, subscriber=subscriber):
        yield wait


def wait_for_event(
    results: Results,
    job_id: str,
    match: Callable[[ResultEvent], bool],
    timeout_s: float = 30.0,
) -> ResultEvent:
    """The job's first result event that ``match`` accepts, waiting for it if need be."""
    deadline = time.monotonic() + timeout_s
    while True:
        found = [event for event in results.for_job(job_id) if match(event)]
        if found:
            return found[0]
        assert time.monotonic() < deadline, f"no such event for {job_id}: {results.for_job(job_id)}"
        results.settle(0.05)


def final_outcomes(results: Results, job_id: str) -> list[ResultEvent]:
    """The job's final events after a short settle (at-least-once: there should be one)."""
    results.settle(0.5)
    return [
        event
        for event in results.for_job(job_id)
        if isinstance(event, StemsProcessed) or (isinstance(event, StemsFailed) and event.final)
    ]


def test_the_child_environment_reproduces_the_settings(
    long_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = long_settings.model_copy(update={"shutdown_grace_s": SHORT_GRACE_S})
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://elsewhere:4318")  # a developer's
    env = settings_environment(settings)
    assert "OTEL_EXPORTER_OTLP_ENDPOINT" not in env  # unset in the settings: not passed on

    for key in set(os.environ) - set(env):
        monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert Settings() == settings


# --- signals ----------------------------------------------------------------------------


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    ("grace_s", "finishes"),
    [
        pytest.param(30.0, True, id="finishes-within-grace"),
        pytest.param(SHORT_GRACE_S, False, id="nacks-when-grace-runs-out"),
    ],
)
def test_sigterm_mid_job_finishes_or_nacks_and_exits_zero_and_the_job_is_not_lost(
    long_settings: Settings,
    spawn_worker: Callable[[Settings], Stemctl],
    results: Results,
    publish: Callable[..., str],
    long_job: Job,
    mid_separation: Callable[[Job], None],
    grace_s: float,
    finishes: bool,
) -> None:
    # Given a worker in the middle of separating a job
    settings = long_settings.model_copy(update={"shutdown_grace_s": grace_s})
    worker = spawn_worker(settings)
    publish(long_job)
    mid_separation(long_job)

    # When it gets SIGTERM
    worker.send(signal.SIGTERM)

    # Then it exits 0 within the grace, plus a forward pass and the flush (generous: a
    # forward pass takes 0.5 s here, but seconds on a CPU shared with other work)
    assert worker.wait(grace_s + 15) == 0
    logged = worker.messages()
    assert logged.index("stopping") < logged.index("worker stopped")
    if finishes:
        # … having finished the job first: one attempt, no failure.
        assert logged.index("stopping") < logged.index("job processed")
        event = results.wait_final(long_job.job_id, timeout_s=10)
        assert isinstance(event, StemsProcessed), event
        assert event.attempt == 1
        assert not [e for e in results.for_job(long_job.job_id) if isinstance(e, StemsFailed)]
    else:
        # … having reported the interrupted attempt as retryable and nacked it,
        assert "job processed" not in logged
        failed = wait_for_event(results, long_job.job_id, lambda e: isinstance(e, StemsFailed))
        assert isinstance(failed, StemsFailed)
        assert (failed.attempt, failed.error.code, failed.error.retryable, failed.final) == (
            1,
            "worker_shutdown",
            True,
            False,
        )
        # so the next worker completes it.
        spawn_worker(settings)
        event = results.wait_final(long_job.job_id, timeout_s=REDELIVERY_TIMEOUT_S)
        assert isinstance(event, StemsProcessed), event
        assert event.attempt == 2
    assert final_outcomes(results, long_job.job_id) == [event]


@pytest.mark.timeout(120)
def test_sigkill_mid_job_is_completed_by_a_second_worker(
    long_settings: Settings,
    spawn_worker: Callable[[Settings], Stemctl],
    results: Results,
    publish: Callable[..., str],
    long_job: Job,
    mid_separation: Callable[[Job], None],
) -> None:
    first = spawn_worker(long_settings)
    publish(long_job)
    mid_separation(long_job)

    first.kill()
    assert first.process.returncode == -signal.SIGKILL
    assert "job processed" not in first.messages()
    spawn_worker(long_settings)

    # The dead worker's lease lapses within an ack deadline; with no manifest written,
    # the second worker separates the job from the start.
    event = results.wait_final(long_job.job_id, timeout_s=REDELIVERY_TIMEOUT_S)
    assert isinstance(event, StemsProcessed), event
    assert event.attempt == 2
    assert not [e for e in results.for_job(long_job.job_id) if isinstance(e, StemsFailed)]
    assert final_outcomes(results, long_job.job_id) == [event]


@pytest.mark.timeout(90)
def test_second_signal_exits_at_once(
    long_settings: Settings,
    spawn_worker: Callable[[Settings], Stemctl],
    results: Results,
    publish: Callable[..., str],
    long_job: Job,
    mid_separation: Callable[[Job], None],
) -> None:
    # A grace so long that only the forced exit can end the process in time.
    worker = spawn_worker(long_settings.model_copy(update={"shutdown_grace_s": 60.0}))
    publish(long_job)
    mid_separation(long_job)

    worker.send(signal.SIGTERM)
    # Two signals sent back to back may merge into one pending signal: send the second
    # once the first has been handled.
    worker.wait_for_log("stopping", 10)
    sent = time.monotonic()
    worker.send(signal.SIGTERM)

    assert worker.wait(5) == 130
    assert time.monotonic() - sent < 5
    logged = worker.messages()
    assert "second signal: exiting now" in logged
    assert "job processed" not in logged
    assert "worker stopped" not in logged


# --- start-up failure -------------------------------------------------------------------


@pytest.mark.timeout(90)
@pytest.mark.parametrize("folder", ["empty", "missing"])
def test_worker_exits_1_with_a_clear_message_when_the_model_cannot_load(
    settings: Settings,
    stemctl: Callable[..., Stemctl],
    tmp_path: Path,
    folder: str,
) -> None:
    repo = tmp_path / "models"
    if folder == "empty":
        repo.mkdir()
    worker = stemctl(
        settings.model_copy(update={"model": MODEL, "model_repo": repo, "device": "cpu"}),
        "worker",
    )

    assert worker.wait(60) == 1
    lines = [line for line in worker.stderr if line.strip()]
    assert len(lines) == 1, "\n".join(worker.stderr)
    assert lines[0].startswith(f"stemctl: model {MODEL}")
    assert str(repo) in lines[0]
    assert not worker.stdout


# --- the operator's other commands ------------------------------------------------------


@pytest.mark.timeout(90)
def test_submit_wait_prints_the_processed_event(
    worker_settings: Settings,
    start_worker: Callable[[Settings], Any],
    stemctl: Callable[..., Stemctl],
    clip: Callable[..., Path],
) -> None:
    start_worker(worker_settings)
    source = clip("wav", 1.5)

    submit = stemctl(
        worker_settings,
        *("submit", str(source), "--track-id", "t", "--job-id", "cli-1", "--format", "wav"),
        *("--wait", "--timeout", "60"),
    )

    assert submit.wait(75) == 0, submit.stderr
    assert submit.stdout[0].startswith("submitted job cli-1 ")
    event = decode_event(submit.stdout[-1].encode())
    assert isinstance(event, StemsProcessed), event
    assert (event.job_id, event.track_id, event.attempt) == ("cli-1", "t", 1)
    assert event.source.uri.startswith(f"gs://{worker_settings.staging_bucket}/")
    assert len(event.stems) == 6


@pytest.mark.timeout(90)
def test_results_tail_prints_events(
    worker_settings: Settings,
    start_worker: Callable[[Settings], Any],
    stemctl: Callable[..., Stemctl],
    publish: Callable[..., str],
    pubsub_clients: Any,
    clip: Callable[..., Path],
    stage: Callable[[Path, str, str], str],
) -> None:
    _, subscriber = pubsub_clients
    start_worker(worker_settings)
    source = stage(clip("wav", 1.5), worker_settings.staging_bucket, "in/tail.wav")
    tail = stemctl(worker_settings, "results", "tail", "--timeout", "60")
    # An event published before tail's own subscription exists never reaches it.
    project = f"projects/{worker_settings.project}"
    deadline = time.monotonic() + 30
    while not any(
        s.name.rsplit("/", 1)[-1].startswith("stemctl-")
        for s in subscriber.list_subscriptions(project=project)
    ):
        assert time.monotonic() < deadline, f"tail never subscribed: {tail.stderr}"
        time.sleep(0.1)
    short = stemctl(worker_settings, "results", "tail", "--timeout", "1")

    publish(Job(job_id="tail-1", track_id="t", source_uri=source, model=MODEL, format="wav"))

    # Each line printed is one event as JSON: the job's processing, then its result.
    tail.wait_for_stdout(lambda line: '"stems.processed"' in line, 60)
    tail.send(signal.SIGINT)  # Ctrl-C stops it cleanly
    assert tail.wait(15) == 0, tail.stderr
    events = [decode_event(line.encode()) for line in tail.stdout]
    assert [
        (type(e), e.attempt)
        for e in events
        if e.job_id == "tail-1" and not isinstance(e, StemsProgress)
    ] == [(StemsProcessing, 1), (StemsProcessed, 1)]
    # On stderr, for people: what the job used (the worker has no price: none is made up).
    assert any(
        line.startswith("job tail-1 processed (6 stems): audio 1.5 s, worker ")
        and line.endswith(" on cpu, cost no price (STEM_COST_PER_HOUR unset)")
        for line in tail.stderr
    ), tail.stderr
    # --timeout ends it by itself, too.
    assert short.wait(30) == 0, short.stderr
    assert all(decode_event(line.encode()) for line in short.stdout)


@pytest.mark.timeout(60)
def test_infra_apply_twice_creates_then_changes_nothing(
    settings: Settings, stemctl: Callable[..., Stemctl]
) -> None:
    first = stemctl(settings, "infra", "apply")
    assert first.wait(30) == 0, first.stderr
    second = stemctl(settings, "infra", "apply")
    assert second.wait(30) == 0, second.stderr

    created = [line.split()[2] for line in first.stdout if line.split()[:1] == ["create"]]
    assert {
        settings.jobs_topic,
        settings.results_topic,
        settings.dlq_topic,
        settings.jobs_subscription,
        settings.dlq_subscription,
        settings.staging_bucket,
        settings.output_bucket,
    } <= set(created)
    assert first.stdout[-1] == f"{len(created)} changed, 0 already as wanted"
    assert not [line for line in second.stdout if line.split()[:1] in (["create"], ["update"])]
    assert second.stdout[-1] == f"0 changed, {len(created)} already as wanted"
