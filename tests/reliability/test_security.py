"""Nobody reads or writes where they should not, and nothing secret reaches a log.

- Every kind in the catalogue (``tests/chaos/catalogue.py``), one of each, through a
  worker whose storage traffic passes a recording proxy: each ends as it must; every
  request addressed an allowed bucket (writes: only the output bucket); the buckets
  hold nothing they should not; the object over the byte cap was never downloaded; and
  no canary — a bearer token in an attribute, a signed URL's signature, free text in
  bodies — appears in the worker's INFO logs, formatted as in production.
- Source and output URIs that would leave their bucket or prefix are refused before any
  storage call.
- The size cap is checked from object metadata before any byte is downloaded, and again
  while streaming when the metadata understates the size.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from consumer import gcp
from consumer.errors import AudioTooLarge
from consumer.handler import Delivery, JobHandler, Outcome
from consumer.logs import JsonFormatter
from consumer.runner import Worker
from consumer.settings import Settings
from consumer.storage import GcsBlobStore
from stem_contracts import split_gcs_uri
from tests.chaos.catalogue import GOOD_KINDS, LIMITS, POISON_KINDS, Context, make_submissions
from tests.chaos.catalogue import stage_sources as stage_catalogue
from tests.chaos.ledger import Ledger, check_buckets, check_requests, check_stems, find_leaks
from tests.reliability.conftest import Tally
from tests.support.fakes import CountingSeparator, InMemoryBlobStore, RecordingEventPublisher
from tests.support.faults import FaultyProxy
from tests.support.worker_fixtures import Results


@pytest.fixture
def info_log_lines() -> Iterator[list[str]]:
    """Every log record at INFO and above, formatted by the production JSON formatter."""
    lines: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(self.format(record))

    handler = Collect(logging.INFO)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield lines
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


@pytest.mark.integration
@pytest.mark.timeout(180)
def test_every_bad_input_kind_ends_as_it_must_touching_only_allowed_buckets_and_logging_no_secret(
    worker_settings: Settings,
    start_worker: Callable[[Settings], Worker],
    results: Results,
    publish: Callable[..., str],
    emulators: Any,
    info_log_lines: list[str],
    tally: Tally,
    tmp_path: Path,
) -> None:
    # Given: the catalogue's sources staged, a forbidden bucket holding a valid clip, and a
    # worker limited to the staging and output buckets, its storage traffic recorded.
    gcs = gcp.storage_client(worker_settings)
    forbidden = f"forbidden-{worker_settings.output_bucket}"
    gcs.create_bucket(forbidden)
    staging, output = worker_settings.staging_bucket, worker_settings.output_bucket
    ctx = Context(staging, output, forbidden, stage_catalogue(gcs, staging, forbidden, tmp_path))
    total = len(GOOD_KINDS) + len(POISON_KINDS)
    submissions = make_submissions(ctx, total, poison_fraction=len(POISON_KINDS) / total)
    untouched = {b: {blob.name for blob in gcs.list_blobs(b)} for b in (staging, forbidden)}
    settings = worker_settings.model_copy(
        update={
            "allowed_buckets": frozenset({staging, output}),
            "max_audio_seconds": LIMITS.max_audio_seconds,
            "max_audio_bytes": LIMITS.max_audio_bytes,
        }
    )
    with FaultyProxy(emulators.storage_url) as proxy:
        start_worker(settings.model_copy(update={"storage_emulator_host": proxy.url}))

        # When: one message of every kind arrives.
        for submission in submissions:
            publish(submission.data, **submission.attributes)
        ledger = Ledger(submissions)
        for _ in range(600):
            results.settle(0.2)
            ledger = Ledger(submissions)
            ledger.add(results.events, results.dead_letters)
            if not ledger.open():
                break
        requests = proxy.requests_seen()

    # Then: each ended as the catalogue says, and nothing else happened.
    assert [s.kind for s in ledger.open()] == []
    assert ledger.wrong() == {}
    assert check_stems(ledger, gcs) == []
    assert check_requests(requests, readable={staging, output}, writable={output}) == []
    assert check_buckets(gcs, submissions, output_bucket=output, untouched=untouched) == []
    too_large = split_gcs_uri(ctx.sources["too_large"])[1]
    assert [r for r in requests if r.object_name == too_large and r.downloads_media] == []
    assert find_leaks(info_log_lines, [ctx.canary]) == []
    logged = "\n".join(info_log_lines)
    assert all(s.key in logged for s in submissions)  # the ids are there: the logs were read
    tally.name = "security"
    tally.bad_inputs = len(POISON_KINDS)
    tally.rows = [
        (
            "Security: every bad-input kind, one of each",
            f"{len(submissions)} kinds ({len(POISON_KINDS)} poison): each processed or "
            "dead-lettered with the catalogued reason",
        ),
        (
            "Security: storage requests outside allowed buckets",
            f"0 of {len(requests)} (writes only to the output bucket; forbidden bucket untouched)",
        ),
        ("Security: object over the byte cap downloaded", "no (refused from its metadata)"),
        (
            "Security: secrets in INFO logs",
            f"0 in {len(info_log_lines)} lines (bearer token, signed-URL signature, body text)",
        ),
    ]


# --- URIs that try to leave their bucket or prefix -------------------------------------

_ESCAPES = [
    ("sourceUri", "gs://stem-staging/in/../../other/x.wav", "invalid_message"),
    ("sourceUri", "gs://stem-staging/in/%2e%2e/%2e%2e/other/x.wav", "invalid_message"),
    ("sourceUri", "gs://stem-staging/in%2F..%2Fother.wav", "invalid_message"),
    ("sourceUri", "gs://stem-staging//etc/passwd", "invalid_message"),
    ("sourceUri", "gs://stem-staging/in\\..\\x.wav", "invalid_message"),
    ("sourceUri", "gs://stem-staging/in/x\x00.wav", "invalid_message"),
    ("sourceUri", "gs://other-bucket/in/x.wav", "bucket_not_allowed"),
    (
        "sourceUri",
        "https://storage.googleapis.com/stem-staging/in/x.wav?X-Goog-Signature=s",
        "invalid_message",
    ),
    ("sourceUri", "file:///etc/passwd", "invalid_message"),
    ("outputUri", "gs://stem-output/stems/../../other", "invalid_message"),
    ("outputUri", "gs://stem-output/stems/%2E%2E/x", "invalid_message"),
    ("outputUri", "gs://stem-output/stems%2f..%2f..", "invalid_message"),
    ("outputUri", "gs://stem-output/stems%5c..", "invalid_message"),
    ("outputUri", "gs://stem-output/./x", "invalid_message"),
    ("outputUri", "gs://stem-output/", "invalid_message"),
    ("outputUri", "gs://other-bucket/stems/x", "bucket_not_allowed"),
]


@pytest.mark.timeout(30)
@pytest.mark.parametrize(("field", "uri", "code"), _ESCAPES)
def test_a_uri_that_would_leave_its_bucket_or_prefix_is_refused_before_any_storage_call(
    tmp_path: Path, field: str, uri: str, code: str
) -> None:
    store = InMemoryBlobStore()
    events = RecordingEventPublisher()
    handler = JobHandler(
        Settings(
            output_bucket="stem-output",
            allowed_buckets=frozenset({"stem-staging", "stem-output"}),
        ),
        store=store,
        events=events,
        separator=CountingSeparator(),
        workdir=tmp_path,
    )
    body = {"jobId": "j", "trackId": "t", "sourceUri": "gs://stem-staging/in/a.wav", field: uri}

    outcome = handler.handle(Delivery(json.dumps(body).encode(), {"jobId": "j"}, "m-1"))

    assert outcome is Outcome.ACK
    assert [d.attributes["errorCode"] for d in events.dead_letters] == [code]
    assert store.calls == []


# --- size caps -------------------------------------------------------------------------


@pytest.fixture
def big_object(settings: Settings, gcs: Any) -> str:
    """A 2 MB object in a bucket of its own; its gs:// URI."""
    bucket = f"caps-{settings.output_bucket}"
    gcs.create_bucket(bucket)
    gcs.bucket(bucket).blob("in/big.wav").upload_from_string(b"\x01" * 2_000_000)
    return f"gs://{bucket}/in/big.wav"


@pytest.mark.integration
@pytest.mark.timeout(60)
def test_the_size_cap_is_checked_from_metadata_before_any_byte_is_downloaded(
    settings: Settings, emulators: Any, big_object: str, tmp_path: Path
) -> None:
    dest = tmp_path / "source"
    with FaultyProxy(emulators.storage_url) as proxy:
        store = GcsBlobStore(
            gcp.storage_client(settings.model_copy(update={"storage_emulator_host": proxy.url}))
        )
        with pytest.raises(AudioTooLarge, match="2000000 bytes, over STEM_MAX_AUDIO_BYTES"):
            store.download(big_object, dest, max_bytes=1_000_000)

    requests = proxy.requests_seen()
    assert [r for r in requests if r.downloads_media] == []  # metadata only
    assert [r.object_name for r in requests if r.object_name] == ["in/big.wav"]
    assert not dest.exists() or dest.stat().st_size == 0


@pytest.mark.integration
@pytest.mark.timeout(60)
def test_the_size_cap_holds_while_streaming_when_the_metadata_understates_the_size(
    settings: Settings, emulators: Any, big_object: str, tmp_path: Path
) -> None:
    def understate(method: str, path: str, status: int, body: bytes) -> bytes:
        """Object metadata that claims 1000 bytes (a race with an overwrite, or a liar)."""
        if method == "GET" and "alt=media" not in path and b'"size"' in body:
            resource = json.loads(body)
            resource["size"] = "1000"
            return json.dumps(resource).encode()
        return body

    dest = tmp_path / "source"
    with FaultyProxy(emulators.storage_url, rewrite=understate) as proxy:
        store = GcsBlobStore(
            gcp.storage_client(settings.model_copy(update={"storage_emulator_host": proxy.url}))
        )
        with pytest.raises(AudioTooLarge, match="streamed more than STEM_MAX_AUDIO_BYTES"):
            store.download(big_object, dest, max_bytes=1_000_000)

    assert sum(r.downloads_media for r in proxy.requests_seen()) == 1  # refused, not retried
    assert dest.stat().st_size <= 1_000_000
