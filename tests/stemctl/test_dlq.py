"""``stemctl dlq ls|show|replay|purge`` on the real Pub/Sub emulator (and, for the poison
job, a real worker with the tiny Demucs model).

The commands run in-process through Typer's runner, except where the process itself is
the point (SIGKILL mid-replay: a real ``stemctl`` child). Dead letters are either made by
the worker or Pub/Sub itself, or published to ``stem-dlq`` in exactly the shape those two
give them (``consumer.handler``; Pub/Sub's ``CloudPubSubDeadLetterSource*``, checked on the
emulator). What a test reads back it reads with a plain subscriber, never with the CLI.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from consumer.settings import Settings
from devkit.emulators import free_port
from stem_contracts import Job, StemsFailed, StemsProcessed, encode
from stemctl.cli import app
from stemctl.dlq import commands as cli_dlq
from stemctl.dlq.subscription import check_topic
from tests.support.helpers import pull
from tests.support.pubsub_relay import ACKNOWLEDGE, PUBLISH, PubSubRelay
from tests.support.worker_fixtures import MODEL, Results

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

STEMCTL = Path(sys.executable).with_name("stemctl")
PUBSUB_DEAD_LETTER: dict[str, Any] = {
    "CloudPubSubDeadLetterSourceDeliveryCount": "5",
    "CloudPubSubDeadLetterSourceSubscription": "stem-separate",
    "CloudPubSubDeadLetterSourceSubscriptionProject": "p",
    "CloudPubSubDeadLetterSourceTopicPublishTime": "2026-01-01T00:00:00.000Z",
}


# --- helpers ------------------------------------------------------------------------------


def stemctl(settings: Settings, *args: str, input: str | None = None) -> Result:
    """``stemctl ARGS`` in this process, under the settings' project."""
    env: dict[str, str | None] = {"GOOGLE_CLOUD_PROJECT": settings.project}
    return CliRunner().invoke(app, list(args), env=env, input=input, catch_exceptions=False)


def json_lines(result: Result) -> list[dict[str, Any]]:
    return [json.loads(line) for line in result.stdout.splitlines()]


class Dlq:
    """The test's own view of the topics: dead letters in, messages out (plain Pub/Sub)."""

    def __init__(self, settings: Settings, clients: tuple[Any, Any]) -> None:
        self.publisher, self.subscriber = clients
        project = settings.project
        self.topic = self.publisher.topic_path(project, settings.dlq_topic)
        self.subscription = self.subscriber.subscription_path(project, settings.dlq_subscription)
        self.jobs = self.subscriber.subscription_path(project, settings.jobs_subscription)

    def put(self, job_id: str, code: str | None = "source_missing", **attributes: str) -> str:
        """A dead letter as the worker makes it (or, with code None, bare); its message id."""
        job = Job(
            job_id=job_id,
            track_id=f"t-{job_id}",
            source_uri="gs://stem-staging/in/a.wav",
            model=MODEL,
        )
        data, attrs = encode(job)
        if code is not None:
            attrs |= {
                "errorCode": code,
                "errorMessage": f"{code}: {job_id}",
                "deliveryAttempt": "1",
            }
        message_id: str = self.publisher.publish(self.topic, data, **attrs, **attributes).result()
        return message_id

    def take(self, subscription: str, count: int = 100, timeout_s: float = 1.0) -> list[Any]:
        """Pull (and ack) up to ``count`` messages: what is deliverable right now."""
        return [r.message for r in pull(self.subscriber, subscription, count, timeout_s=timeout_s)]

    def take_dlq(self, count: int = 100, timeout_s: float = 1.0) -> dict[str, Any]:
        return {m.message_id: m for m in self.take(self.subscription, count, timeout_s)}

    def take_jobs(self, count: int = 100, timeout_s: float = 1.0) -> list[Any]:
        return self.take(self.jobs, count, timeout_s)

    def exactly(self, subscription: str, count: int) -> list[Any]:
        """The ``count`` messages deliverable now — checking that no more are."""
        messages = self.take(subscription, count, timeout_s=3.0) if count else []
        assert len(messages) == count, messages
        assert self.take(subscription, timeout_s=0.3) == []
        return messages

    def exactly_in_dlq(self, count: int) -> dict[str, Any]:
        return {m.message_id: m for m in self.exactly(self.subscription, count)}


@pytest.fixture
def dlq(provisioned: Settings, pubsub_clients: tuple[Any, Any]) -> Dlq:
    return Dlq(provisioned, pubsub_clients)


# --- the whole story: a poison job, fixed, replayed --------------------------------------


@pytest.fixture
def observed(worker_settings: Settings, pubsub_clients: tuple[Any, Any]) -> Results:
    """Result events, and copies of the dead letters on a subscription of the test's own —
    ``stem-dlq`` itself is left for ``stemctl dlq``."""
    _, subscriber = pubsub_clients
    project = worker_settings.project
    paths = []
    for name, topic in (("test-results", "stem-results"), ("test-dlq-copy", "stem-dlq")):
        path = subscriber.subscription_path(project, name)
        subscriber.create_subscription(
            request={"name": path, "topic": f"projects/{project}/topics/{topic}"}
        )
        paths.append(path)
    return Results(subscriber, *paths)


def test_a_poison_job_replayed_once_its_source_exists_is_processed_and_leaves_the_dlq(
    worker_settings: Settings,
    start_worker: Callable[[Settings], Any],
    observed: Results,
    publish: Callable[..., str],
    clip: Callable[..., Path],
    stage: Callable[[Path, str, str], str],
    dlq: Dlq,
) -> None:
    # Given two jobs dead-lettered by the worker because their sources are missing
    bucket = worker_settings.staging_bucket
    start_worker(worker_settings)
    for job_id in ("poison", "other"):
        publish(
            Job(
                job_id=job_id,
                track_id="trk",
                source_uri=f"gs://{bucket}/in/{job_id}.wav",
                model=MODEL,
            )
        )
    first_copy = {
        job_id: observed.wait_dead_letter(job_id).message_id for job_id in ("poison", "other")
    }
    failed = observed.wait_final("poison")
    assert isinstance(failed, StemsFailed)

    # When the source of one is uploaded and both are replayed
    stage(clip("wav", 1.0), bucket, "in/poison.wav")
    replay = stemctl(worker_settings, "dlq", "replay", "--job-id", "poison", "--job-id", "other")

    # Then the worker processes the fixed one, and only the other is back in the DLQ — with a
    # fresh reason, and the replay counted across its second dead-lettering
    assert replay.exit_code == 0, replay.output
    assert "replayed 2, skipped 0, failed 0" in replay.stdout
    deadline = time.monotonic() + 60
    while not any(isinstance(e, StemsProcessed) for e in observed.for_job("poison")):
        assert time.monotonic() < deadline, observed.for_job("poison")
        observed.settle(0.2)
    while not (rows := json_lines(stemctl(worker_settings, "dlq", "ls", "--json"))):
        assert time.monotonic() < deadline, "other did not come back"
        time.sleep(0.2)
    [row] = rows
    assert (row["jobId"], row["errorCode"], row["deliveryAttempts"]) == (
        "other",
        "source_missing",
        1,
    )
    assert (row["replayCount"], row["replayedFrom"]) == (1, first_copy["other"])
    assert set(dlq.exactly_in_dlq(1)) == {row["messageId"]}


# --- ls and show ----------------------------------------------------------------------------


def test_ls_lists_worker_and_pubsub_dead_letters_and_leaves_every_message_deliverable(
    provisioned: Settings, dlq: Dlq
) -> None:
    # Given dead letters from the worker, and one that Pub/Sub itself moved after 5 nacks
    ours = [dlq.put(f"job-{i}") for i in range(3)]
    dlq.publisher.publish(
        dlq.publisher.topic_path(provisioned.project, "stem-separate"),
        b'{"jobId": "x"}',
        jobId="nacked",
    ).result()
    nacks, listed = 0, list[dict[str, Any]]()
    deadline = time.monotonic() + 30
    while len(listed) < 4:
        # stem-separate allows 5 deliveries; the emulator moves the message when it would
        # deliver the 6th, so keep pulling (as a worker would) until it is in stem-dlq.
        assert time.monotonic() < deadline, f"not dead-lettered after {nacks} nacks: {listed}"
        for message in pull(dlq.subscriber, dlq.jobs, 1, timeout_s=0.3, ack=False):
            dlq.subscriber.modify_ack_deadline(
                request={
                    "subscription": dlq.jobs,
                    "ack_ids": [message.ack_id],
                    "ack_deadline_seconds": 0,
                }
            )
            nacks += 1
        if nacks >= 5:
            listed = json_lines(stemctl(provisioned, "dlq", "ls", "--json"))

    # When listed, as JSON and as a table
    table = stemctl(provisioned, "dlq", "ls")

    # Then each row says who, why, how often, from where
    rows = {row["jobId"]: row for row in listed}
    assert set(rows) == {"job-0", "job-1", "job-2", "nacked"}
    assert {rows[f"job-{i}"]["messageId"] for i in range(3)} == set(ours)
    assert rows["job-0"] | {"publishTime": None, "ageSeconds": None} == {
        "messageId": ours[0],
        "jobId": "job-0",
        "trackId": "t-job-0",
        "errorCode": "source_missing",
        "errorMessage": "source_missing: job-0",
        "deliveryAttempts": 1,
        "source": "worker",
        "publishTime": None,
        "ageSeconds": None,
        "replayCount": 0,
        "replayedFrom": None,
    }
    assert (rows["nacked"]["errorCode"], rows["nacked"]["deliveryAttempts"]) == (
        "delivery_limit",
        5,
    )
    assert rows["nacked"]["errorMessage"] == "Pub/Sub gave up after 5 deliveries"
    assert rows["nacked"]["source"] == "stem-separate"
    assert table.exit_code == 0
    header, *lines = table.stdout.splitlines()
    assert header.split()[:4] == ["MESSAGE", "ID", "JOB", "ID"]
    assert sorted(line.split()[1] for line in lines) == ["job-0", "job-1", "job-2", "nacked"]
    assert "4 messages in stem-dlq (source_missing 3, delivery_limit 1)" in table.stderr
    # … and nothing stays leased: everything is deliverable at once (the deadline is 60 s).
    dlq.exactly_in_dlq(4)


def test_ls_limit_shows_the_first_n_and_says_there_are_more(
    provisioned: Settings, dlq: Dlq
) -> None:
    for i in range(5):
        dlq.put(f"job-{i}")

    result = stemctl(provisioned, "dlq", "ls", "--limit", "2", "--json")

    assert len(json_lines(result)) == 2
    assert "more — raise --limit" in result.stderr
    dlq.exactly_in_dlq(5)


def test_show_prints_the_whole_message_by_message_id_or_job_id(
    provisioned: Settings, dlq: Dlq
) -> None:
    message_id = dlq.put("job-1", origin="ingest")
    dlq.put("job-2")

    by_id = stemctl(provisioned, "dlq", "show", message_id)
    by_job = json_lines(stemctl(provisioned, "dlq", "show", "job-1", "--json"))
    missing = stemctl(provisioned, "dlq", "show", "nope")

    assert by_id.exit_code == 0
    assert f"message      {message_id}" in by_id.stdout
    assert "reason       source_missing: source_missing: job-1" in by_id.stdout
    assert re.search(r"^  origin +ingest$", by_id.stdout, re.MULTILINE)
    assert '"sourceUri": "gs://stem-staging/in/a.wav"' in by_id.stdout
    [detail] = by_job
    assert detail["attributes"]["origin"] == "ingest"
    assert detail["data"]["jobId"] == "job-1"
    assert (missing.exit_code, missing.stderr.strip()) == (
        1,
        "stemctl: no message with id or jobId nope in stem-dlq",
    )
    dlq.exactly_in_dlq(2)


# --- replay -------------------------------------------------------------------------------


def test_replay_dry_run_changes_nothing(provisioned: Settings, dlq: Dlq) -> None:
    ids = {dlq.put(f"job-{i}") for i in range(3)}

    result = stemctl(provisioned, "dlq", "replay", "--dry-run")

    assert result.exit_code == 0, result.output
    planned = [line.split()[2] for line in result.stdout.splitlines() if line.startswith("would")]
    assert sorted(planned) == sorted(ids)
    assert "nothing changed" in result.stdout
    assert set(dlq.exactly_in_dlq(3)) == ids
    dlq.exactly(dlq.jobs, 0)


def test_replay_filters_and_limit_move_only_matching_messages_with_replay_attributes(
    provisioned: Settings, dlq: Dlq
) -> None:
    missing = {dlq.put(f"miss-{i}") for i in range(3)}
    corrupt = dlq.put("bad-1", "corrupt_audio", origin="ingest")
    moved_by_pubsub = dlq.put("slow-1", None, **PUBSUB_DEAD_LETTER)

    limited = stemctl(
        provisioned, "dlq", "replay", "--error-code", "source_missing", "--limit", "2"
    )
    by_job = stemctl(provisioned, "dlq", "replay", "--job-id", "bad-1", "--job-id", "slow-1")
    too_young = stemctl(provisioned, "dlq", "replay", "--older-than", "1h")

    assert [r.exit_code for r in (limited, by_job, too_young)] == [0, 0, 0]
    assert "replayed 2, skipped 0, failed 0 — at least " in limited.stdout
    assert "replayed 2, skipped 0, failed 0 — 1 other message left" in by_job.stdout
    assert "replayed 0, skipped 0, failed 0 — 1 other message left" in too_young.stdout
    replayed = {m.attributes["replayedFrom"]: m for m in dlq.exactly(dlq.jobs, 4)}
    left = dlq.exactly_in_dlq(1)
    assert len(replayed) == 4
    assert set(replayed) | set(left) == missing | {corrupt, moved_by_pubsub}
    assert set(left) < missing
    assert len(left) == 1
    # The job's own attributes travel; the reasons for the last dead-lettering do not.
    assert dict(replayed[corrupt].attributes) == {
        "jobId": "bad-1",
        "trackId": "t-bad-1",
        "schemaVersion": "1",
        "origin": "ingest",
        "replayCount": "1",
        "replayedFrom": corrupt,
    }
    assert set(replayed[moved_by_pubsub].attributes) == {
        "jobId", "trackId", "schemaVersion", "replayCount", "replayedFrom"
    }  # fmt: skip
    assert json.loads(replayed[corrupt].data)["jobId"] == "bad-1"


def test_replay_refuses_messages_past_max_replays_unless_forced(
    provisioned: Settings, dlq: Dlq
) -> None:
    tired = dlq.put("tired", replayCount="3", replayedFrom="old")
    fresh = dlq.put("fresh", replayCount="2")

    first = stemctl(provisioned, "dlq", "replay")
    stricter = stemctl(provisioned, "dlq", "replay", "--max-replays", "2")  # nothing left but tired
    forced = stemctl(provisioned, "dlq", "replay", "--force")

    assert first.exit_code == 0
    assert f"skipped      {tired}" in first.stdout
    assert "--max-replays 3" in first.stdout
    assert "replayed 1, skipped 1, failed 0" in first.stdout
    assert "replayed 0, skipped 1, failed 0" in stricter.stdout
    assert "replayed 1, skipped 0, failed 0" in forced.stdout
    counts = {
        m.attributes["replayedFrom"]: m.attributes["replayCount"] for m in dlq.exactly(dlq.jobs, 2)
    }
    assert counts == {fresh: "3", tired: "4"}
    dlq.exactly_in_dlq(0)


def test_a_publish_that_fails_keeps_the_dlq_copy_and_exits_non_zero(
    provisioned: Settings, dlq: Dlq, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = {dlq.put(f"job-{i}") for i in range(3)}
    real_check = check_topic

    def topic_vanishes(publisher: Any, *args: Any, **kwargs: Any) -> str:
        # Given the jobs topic deleted between the check and the publish
        path = real_check(publisher, *args, **kwargs)
        publisher.delete_topic(request={"topic": path})
        return path

    monkeypatch.setattr(cli_dlq, "check_topic", topic_vanishes)

    result = stemctl(provisioned, "dlq", "replay")

    assert result.exit_code == 1
    assert "failed" in result.stdout
    assert "NotFound" in result.stdout
    assert set(dlq.exactly_in_dlq(3)) == ids


# --- purge --------------------------------------------------------------------------------


def test_purge_drops_only_matching_messages_and_asks_first(
    provisioned: Settings, dlq: Dlq, monkeypatch: pytest.MonkeyPatch
) -> None:
    drop = dlq.put("drop-me")
    keep = {dlq.put("keep-1"), dlq.put("keep-2", "corrupt_audio")}

    refused = stemctl(provisioned, "dlq", "purge", "--job-id", "drop-me")  # not a terminal
    monkeypatch.setattr(cli_dlq, "_interactive", lambda: True)
    declined = stemctl(provisioned, "dlq", "purge", "--job-id", "drop-me", input="n\n")
    dry = stemctl(provisioned, "dlq", "purge", "--job-id", "drop-me", "--dry-run")
    confirmed = stemctl(provisioned, "dlq", "purge", "--job-id", "drop-me", input="y\n")

    assert refused.exit_code == 2
    assert "refusing to purge without --yes" in refused.stderr
    assert (declined.exit_code, dry.exit_code, confirmed.exit_code) == (1, 0, 0)
    assert "Drop 1 message from stem-dlq for good?" in declined.stdout
    assert "nothing dropped" in declined.stdout
    assert f"dropped      {drop}" in confirmed.stdout
    assert set(dlq.exactly_in_dlq(2)) == keep


def test_purge_yes_drops_without_asking(provisioned: Settings, dlq: Dlq) -> None:
    dlq.put("a", "corrupt_audio")
    dlq.put("b", "corrupt_audio")
    keep = dlq.put("c")

    result = stemctl(provisioned, "dlq", "purge", "--yes", "--error-code", "corrupt_audio")

    assert result.exit_code == 0
    assert "dropped 2 messages; 1 other message left in stem-dlq" in result.stdout
    assert set(dlq.exactly_in_dlq(1)) == {keep}


# --- a replay killed mid-batch loses nothing -------------------------------------------------


class Child:
    """A ``stemctl`` child process whose stdout lines are collected as they come."""

    def __init__(self, env: dict[str, str], *args: str) -> None:
        self.process = subprocess.Popen(
            [str(STEMCTL), *args],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        with self.process.stdout:
            for line in self.process.stdout:
                self.lines.append(line.rstrip("\n"))

    def kill(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(10)
        self._reader.join(10)


@pytest.fixture
def child() -> Iterator[Callable[..., Child]]:
    started: list[Child] = []

    def start(env: dict[str, str], *args: str) -> Child:
        started.append(Child(env, *args))
        return started[-1]

    yield start
    for process in started:
        process.kill()


def _where_jobs_end(
    dlq: Dlq,
    jobs: set[str],
    deadline: float,
    *,
    done: Callable[[set[str], set[str]], bool] = lambda replayed, in_dlq: True,
) -> tuple[set[str], set[str]]:
    """The jobs found on stem-separate and in stem-dlq, taken until every one is in one
    of them (and ``done`` holds); fails at ``deadline`` naming what is missing."""
    replayed: set[str] = set()
    in_dlq: set[str] = set()
    while replayed | in_dlq != jobs or not done(replayed, in_dlq):
        assert time.monotonic() < deadline, (
            sorted(jobs - replayed - in_dlq),
            sorted(replayed),
            sorted(in_dlq),
        )
        replayed |= {m.attributes["jobId"] for m in dlq.take_jobs(timeout_s=0.3)}
        in_dlq |= {m.attributes["jobId"] for m in dlq.take_dlq(timeout_s=0.3).values()}
    return replayed, in_dlq


def test_sigkill_mid_replay_loses_no_message(
    provisioned: Settings, dlq: Dlq, child: Callable[..., Child]
) -> None:
    # Given 50 dead letters, and a DLQ ack deadline of 10 s (so a dead replay's leases
    # lapse quickly)
    dlq.subscriber.update_subscription(
        request={
            "subscription": {"name": dlq.subscription, "ack_deadline_seconds": 10},
            "update_mask": {"paths": ["ack_deadline_seconds"]},
        }
    )
    jobs = {f"job-{i:02d}" for i in range(50)}
    for job_id in sorted(jobs):
        dlq.put(job_id)

    # When `stemctl dlq replay` (10 per second: windows of 10, 5 s in all) is killed during
    # its 2nd window, half a second after the 1st window's copies were acked
    env = {**os.environ, "GOOGLE_CLOUD_PROJECT": str(provisioned.project)}
    replay = child(env, "dlq", "replay", "--rate", "10")
    deadline = time.monotonic() + 30
    while not any(line.startswith("replayed ") for line in replay.lines):
        assert replay.process.poll() is None, replay.lines
        assert time.monotonic() < deadline, replay.lines
        time.sleep(0.02)
    time.sleep(0.5)
    replay.kill()
    assert replay.process.returncode == -signal.SIGKILL, replay.lines
    acked_before_kill = sum(line.startswith("replayed ") for line in replay.lines)

    # Then every job is on stem-separate or (once the leases lapse) back in the DLQ
    replayed, in_dlq = _where_jobs_end(dlq, jobs, time.monotonic() + 30)
    assert 10 <= acked_before_kill < 50
    assert len(replayed) >= acked_before_kill
    assert in_dlq, "the kill came too late to test anything"


@pytest.mark.parametrize(
    "stalled",
    [pytest.param(PUBLISH, id="publish-stalled"), pytest.param(ACKNOWLEDGE, id="ack-stalled")],
)
def test_a_replay_killed_between_publish_and_ack_duplicates_at_worst_never_loses(
    provisioned: Settings, dlq: Dlq, child: Callable[..., Child], stalled: str
) -> None:
    # Given 10 dead letters (DLQ ack deadline 10 s), and a network that stalls the replay's
    # publishes — or its acks of the DLQ copies — on their way to Pub/Sub
    dlq.subscriber.update_subscription(
        request={
            "subscription": {"name": dlq.subscription, "ack_deadline_seconds": 10},
            "update_mask": {"paths": ["ack_deadline_seconds"]},
        }
    )
    jobs = {f"job-{i:02d}" for i in range(10)}
    for job_id in sorted(jobs):
        dlq.put(job_id)
    assert provisioned.pubsub_emulator_host is not None
    with PubSubRelay(provisioned.pubsub_emulator_host) as relay:
        relay.held.add(stalled)
        env = {
            **os.environ,
            "GOOGLE_CLOUD_PROJECT": str(provisioned.project),
            "PUBSUB_EMULATOR_HOST": relay.host,
        }

        # When `stemctl dlq replay` is SIGKILLed while those calls hang
        replay = child(env, "dlq", "replay")
        deadline = time.monotonic() + 30
        while relay.held_calls == 0:
            assert replay.process.poll() is None, replay.lines
            assert time.monotonic() < deadline, replay.lines
            time.sleep(0.02)
        time.sleep(0.5)
        replay.kill()

    # Then no job is lost: each is on stem-separate or, once its lease lapses, in the DLQ
    replayed, _ = _where_jobs_end(
        dlq,
        jobs,
        time.monotonic() + 30,
        done=lambda replayed, in_dlq: stalled != ACKNOWLEDGE or replayed <= in_dlq,
    )
    if stalled == PUBLISH:
        # nothing was published, so every copy had to stay: acked first, they would be lost
        assert replayed == set()
    else:
        # the publishes were confirmed before the acks were sent: duplicates, observably
        assert replayed == jobs


def test_sigterm_mid_replay_releases_every_held_message_at_once_and_loses_none(
    provisioned: Settings, dlq: Dlq, child: Callable[..., Child]
) -> None:
    # Given 40 dead letters, and the provisioned DLQ ack deadline (60 s): a message that
    # is back within a few seconds was released, not left to lapse
    jobs = {f"job-{i:02d}" for i in range(40)}
    for job_id in sorted(jobs):
        dlq.put(job_id)

    # When `stemctl dlq replay` (10 per second) gets SIGTERM after its first window
    env = {**os.environ, "GOOGLE_CLOUD_PROJECT": str(provisioned.project)}
    replay = child(env, "dlq", "replay", "--rate", "10")
    deadline = time.monotonic() + 30
    while not any(line.startswith("replayed ") for line in replay.lines):
        assert replay.process.poll() is None, replay.lines
        assert time.monotonic() < deadline, replay.lines
        time.sleep(0.02)
    replay.process.send_signal(signal.SIGTERM)
    assert replay.process.wait(15) == 130, replay.lines
    stopped = time.monotonic()
    assert any("interrupted: replayed" in line for line in replay.lines), replay.lines

    # Then every job is on stem-separate or back in the DLQ, well before the ack deadline
    replayed, in_dlq = _where_jobs_end(dlq, jobs, stopped + 15)
    assert replayed, "the signal came too early to test anything"
    assert in_dlq, "the signal came too late to test anything"


# --- setup problems: one line, exit 1 ---------------------------------------------------------

COMMANDS = [
    pytest.param(["ls"], id="ls"),
    pytest.param(["show", "x"], id="show"),
    pytest.param(["replay"], id="replay"),
    pytest.param(["purge", "--yes"], id="purge"),
]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_says_in_one_line_what_is_missing(
    settings: Settings, command: list[str]
) -> None:
    runner = CliRunner()
    args = ["dlq", *command]

    no_project = runner.invoke(app, args, env={"GOOGLE_CLOUD_PROJECT": None})
    not_provisioned = runner.invoke(app, args, env={"GOOGLE_CLOUD_PROJECT": settings.project})
    no_credentials = runner.invoke(
        app,
        args,
        env={
            "GOOGLE_CLOUD_PROJECT": settings.project,
            "PUBSUB_EMULATOR_HOST": None,
            "GOOGLE_APPLICATION_CREDENTIALS": "/nonexistent/credentials.json",
        },
    )

    for result, says in (
        (no_project, "GOOGLE_CLOUD_PROJECT is not set"),
        (not_provisioned, "run `stemctl infra apply` first"),
        (no_credentials, "no Google credentials"),
    ):
        assert result.exit_code == 1, result.output
        assert result.stdout == ""
        [line] = result.stderr.splitlines()
        assert line.startswith("stemctl: ")
        assert says in line


def test_an_unreachable_emulator_is_one_line_and_exit_1(settings: Settings) -> None:
    host = f"127.0.0.1:{free_port()}"

    result = CliRunner().invoke(
        app,
        ["dlq", "ls"],
        env={"GOOGLE_CLOUD_PROJECT": settings.project, "PUBSUB_EMULATOR_HOST": host},
    )

    assert result.exit_code == 1
    [line] = result.stderr.splitlines()
    assert line.startswith(f"stemctl: Pub/Sub unreachable at {host}")
