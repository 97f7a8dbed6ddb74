"""Accounting for submitted jobs: what became of each, and the checks the promise implies.

The promise: every job ends as ``stems.processed`` or in ``stem-dlq`` with a reason —
nothing lost — and nobody reads or writes where they should not. :class:`Ledger` follows
the result events and dead letters of a set of :class:`~tests.chaos.catalogue.Submission`
and says, per submission, whether it is *done* (its expected end reached), *wrong* (it
ended, but not as it must: a good job dead-lettered, poison processed, a wrong or
missing reason) or still *open* (lost, once the run is over). The other checks here look
at the storage side: the objects behind every ``stems.processed``, every request the
proxy saw, every object left in the buckets, and every line the workers logged.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from consumer.reuse import REUSE_PREFIX, Pointer
from stem_contracts import ResultEvent, StemsFailed, StemsProcessed, split_gcs_uri
from tests.chaos.catalogue import Submission
from tests.support.faults import Request

__all__ = ["Ledger", "check_buckets", "check_requests", "check_stems", "find_leaks"]


@dataclass
class Ledger:
    """Per-submission outcomes, from events and dead letters seen so far."""

    submissions: Sequence[Submission]
    processed: dict[str, list[StemsProcessed]] = field(default_factory=lambda: defaultdict(list))
    failed: list[StemsFailed] = field(default_factory=list)
    dead_letters: dict[str, list[Mapping[str, str]]] = field(
        default_factory=lambda: defaultdict(list)
    )
    unknown_dead_letters: int = 0
    max_attempt: int = 0

    def __post_init__(self) -> None:
        self._by_job = {s.job.job_id: s for s in self.submissions if s.job is not None}
        self._by_key = {s.key: s for s in self.submissions}

    def add(self, events: Iterable[ResultEvent], dead_letters: Iterable[Any]) -> None:
        """Take in new events and dead-lettered messages (each exactly once)."""
        for event in events:
            self.max_attempt = max(self.max_attempt, event.attempt)
            if isinstance(event, StemsProcessed):
                self.processed[event.job_id].append(event)
            elif isinstance(event, StemsFailed):
                self.failed.append(event)
        for message in dead_letters:
            key = message.attributes.get("chaosId")
            if key in self._by_key:
                self.dead_letters[key].append(dict(message.attributes))
            else:
                self.unknown_dead_letters += 1

    # --- per submission ------------------------------------------------------------------

    def _processed(self, submission: Submission) -> list[StemsProcessed]:
        if submission.job is None:
            return []
        return self.processed.get(submission.job.job_id, [])

    def problem(self, submission: Submission) -> str | None:
        """Why ``submission`` ended wrongly, or None (done, or not ended yet)."""
        processed = self._processed(submission)
        dead = self.dead_letters.get(submission.key, [])
        if submission.good:
            if dead:
                reasons = sorted({d.get("errorCode", "no errorCode") for d in dead})
                return f"good job dead-lettered ({', '.join(reasons)})"
            return None
        if processed:
            return f"poison processed (expected {submission.expected_code})"
        codes = {d.get("errorCode") for d in dead}
        if None in codes:
            return "dead-lettered without a reason (Pub/Sub's delivery limit?)"
        if dead and codes != {submission.expected_code}:
            return (
                f"dead-lettered as {sorted(map(str, codes))} (expected {submission.expected_code})"
            )
        return None

    def ended(self, submission: Submission) -> bool:
        return bool(self._processed(submission) or self.dead_letters.get(submission.key))

    def open(self) -> list[Submission]:
        """Submissions with no outcome yet (lost, when the run is over)."""
        return [s for s in self.submissions if not self.ended(s)]

    def wrong(self) -> dict[str, str]:
        """key → problem, for every submission that ended wrongly."""
        found = {s.key: self.problem(s) for s in self.submissions}
        return {key: problem for key, problem in found.items() if problem is not None}

    # --- figures ---------------------------------------------------------------------------

    def duplicate_processed(self) -> tuple[int, int]:
        """(extra ``stems.processed`` events, jobs that got more than one)."""
        extra = [len(events) - 1 for events in self.processed.values() if len(events) > 1]
        return sum(extra), len(extra)

    def duplicate_dead_letters(self) -> tuple[int, int]:
        """(extra dead letters, submissions dead-lettered more than once)."""
        extra = [len(copies) - 1 for copies in self.dead_letters.values() if len(copies) > 1]
        return sum(extra), len(extra)

    def retried(self) -> Counter[str]:
        """Attempts that failed and were retried (``stems.failed``, not final), by code."""
        return Counter(e.error.code for e in self.failed if not e.final)

    def distinct_processed_bodies(self) -> int:
        """Jobs whose duplicate ``stems.processed`` differ (recomputed, not republished)."""
        return sum(
            len({e.model_dump_json() for e in events}) > 1 for events in self.processed.values()
        )

    def reused(self) -> int:
        """Good jobs answered by copies of an earlier job's stems (``reusedFrom`` set)."""
        return sum(
            any(e.reused_from is not None for e in events) for events in self.processed.values()
        )


def check_stems(ledger: Ledger, gcs: Any) -> list[str]:
    """Every ``stems.processed`` of a good job: objects under its prefix, present, and equal
    to their sha256 and size; the manifest present and equal to one of the events."""
    problems = []
    cache: dict[str, bytes | None] = {}

    def fetch(uri: str) -> bytes | None:
        if uri not in cache:
            bucket, name = split_gcs_uri(uri)
            blob = gcs.bucket(bucket).get_blob(name)
            cache[uri] = None if blob is None else blob.download_as_bytes()
        return cache[uri]

    for submission in ledger.submissions:
        if not submission.good or submission.job is None:
            continue
        events = ledger.processed.get(submission.job.job_id, [])
        prefix = f"{submission.output_prefix}/"
        for event in events:
            for stem in event.stems:
                data = fetch(stem.uri)
                if not stem.uri.startswith(prefix):
                    problems.append(f"{submission.key}: {stem.uri} outside {prefix}")
                elif data is None:
                    problems.append(f"{submission.key}: {stem.uri} missing")
                elif (
                    hashlib.sha256(data).hexdigest() != stem.sha256 or len(data) != stem.size_bytes
                ):
                    problems.append(f"{submission.key}: {stem.uri} differs from its sha256/size")
        if events:
            manifest = fetch(f"{prefix}manifest.json")
            bodies = {e.model_dump_json(by_alias=True) for e in events}
            if manifest is None:
                problems.append(f"{submission.key}: no manifest.json")
            elif manifest.decode() not in bodies:
                problems.append(f"{submission.key}: manifest.json is none of its events")
    return problems


def check_requests(
    requests: Iterable[Request], *, readable: set[str], writable: set[str]
) -> list[str]:
    """Every storage request addressed a bucket it may: reads ``readable``, writes
    ``writable`` (project-level calls, which name no bucket, are not the worker's)."""
    problems: Counter[str] = Counter()
    for request in requests:
        bucket = request.bucket
        if bucket is None:
            problems[f"{request.method} without a bucket: {request.path.split('?')[0]}"] += 1
        elif request.writes and bucket not in writable:
            problems[f"write to {bucket}: {request.method} {request.object_name}"] += 1
        elif bucket not in readable:
            problems[f"read from {bucket}: {request.method} {request.object_name}"] += 1
    return [f"{what} (x{n})" for what, n in problems.items()]


def check_buckets(
    gcs: Any,
    submissions: Sequence[Submission],
    *,
    output_bucket: str,
    untouched: Mapping[str, set[str]],
) -> list[str]:
    """The output bucket holds only good jobs' stems, waveforms and manifests, each under its
    own prefix, and reuse pointers to the manifest of a good job; each ``untouched`` bucket
    holds exactly the objects it started with."""
    problems = []
    allowed: dict[str, frozenset[str]] = {}
    for submission in submissions:
        if submission.good and submission.output_prefix is not None:
            _, name = split_gcs_uri(submission.output_prefix)
            allowed[name.rstrip("/")] = submission.wanted_objects
    manifests = {f"gs://{output_bucket}/{folder}/manifest.json" for folder in allowed}
    for blob in gcs.list_blobs(output_bucket):
        folder, _, base = blob.name.rpartition("/")
        if folder == REUSE_PREFIX and re.fullmatch(r"[0-9a-f]{64}\.json", base):
            pointer = Pointer.model_validate_json(blob.download_as_bytes())
            if pointer.manifest_uri not in manifests:
                problems.append(f"reuse pointer {blob.name} to {pointer.manifest_uri}")
        elif base not in allowed.get(folder, frozenset()):
            problems.append(f"stray object gs://{output_bucket}/{blob.name}")
    for bucket, names in untouched.items():
        found = {blob.name for blob in gcs.list_blobs(bucket)}
        if found != names:
            problems.append(f"gs://{bucket} changed: {sorted(found ^ names)[:5]}")
    return problems


def find_leaks(lines: Iterable[str], secrets: Sequence[str]) -> list[str]:
    """Log lines holding any of ``secrets`` (shortened, with the secret masked)."""
    leaks = []
    for line in lines:
        for secret in secrets:
            if secret in line:
                leaks.append(line.replace(secret, "<SECRET>")[:300])
                break
    return leaks
