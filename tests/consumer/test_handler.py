"""The job handler on in-memory fakes: what it publishes, uploads, acks and nacks.

Real audio decoding and encoding run on a one-second generated clip; storage, Pub/Sub and
the model are the fakes in ``tests/support/fakes.py`` (the rig: tests/consumer/rig.py).
Nothing here needs a server.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from consumer.errors import ModelLoadError, StorageUnavailable
from consumer.handler import Delivery, JobHandler, Outcome
from consumer.manifest import remove_stems
from consumer.settings import Settings
from stem_contracts import (
    HTDEMUCS_6S_STEMS,
    StemsProcessed,
    StemsProcessing,
    decode_event,
    encode,
)
from tests.consumer.rig import (
    CORRUPT,
    DEFAULT_PREFIX,
    MISSING,
    OGG,
    OUTPUT_BUCKET,
    SOURCE,
    STAGING,
    MakeRig,
    Rig,
    delivery,
    make_job,
)
from tests.support.fakes import CountingSeparator

# --- success -----------------------------------------------------------------------------


def test_processed_job_publishes_processing_then_processed_and_acks(rig: Rig) -> None:
    outcome = rig.handle(make_job(), attempt=2)

    assert outcome is Outcome.ACK
    processing, processed = rig.events.results
    assert isinstance(processing, StemsProcessing)
    assert isinstance(processed, StemsProcessed)
    for event in (processing, processed):
        assert (event.job_id, event.track_id, event.correlation_id) == (
            "job-1",
            "track-1",
            "corr-1",
        )
        assert event.attempt == 2
    assert rig.events.dead_letters == []
    assert rig.separator.calls == 1
    assert rig.handler.fatal_error is None


def test_every_stem_is_uploaded_listed_in_model_order_and_the_manifest_comes_last(
    rig: Rig,
) -> None:
    rig.handle(make_job(format="mp3"))

    # Stems are encoded and uploaded in parallel: any upload order, but the event lists
    # them in the model's order and the manifest is written after all of them.
    expected = [f"{DEFAULT_PREFIX}/{stem}.mp3" for stem in HTDEMUCS_6S_STEMS]
    assert sorted(rig.store.calls_of("upload")) == sorted(expected)
    # The job's last object is its manifest; only the reuse pointer to it follows.
    job_writes = [c for c in rig.store.calls if "/_reuse/" not in c[1]]
    assert job_writes[-1] == ("write_bytes", f"{DEFAULT_PREFIX}/manifest.json")
    assert rig.store.calls[-1][1].startswith("gs://stem-output/_reuse/")
    assert [stem.uri for stem in rig.processed().stems] == expected


def test_manifest_holds_the_processed_event_body(rig: Rig) -> None:
    rig.handle(make_job())

    manifest = rig.store.objects[f"{DEFAULT_PREFIX}/manifest.json"]
    assert manifest.content_type == "application/json"
    assert manifest.data == encode(rig.processed())[0]
    assert decode_event(manifest.data) == rig.processed()


@pytest.mark.parametrize("fmt", ["wav", "mp3", "flac"])
def test_sha256_and_size_in_the_event_are_those_of_the_uploaded_bytes(rig: Rig, fmt: str) -> None:
    rig.handle(make_job(format=fmt))

    for stem in rig.processed().stems:
        stored = rig.store.objects[stem.uri]
        assert stem.sha256 == hashlib.sha256(stored.data).hexdigest()
        assert stem.size_bytes == len(stored.data)
        assert stem.content_type == stored.content_type
        assert (stem.format, stem.sample_rate, stem.channels) == (fmt, 44100, 2)


def test_event_describes_the_decoded_source(rig: Rig) -> None:
    rig.handle(make_job())

    source = rig.processed().source
    assert (source.uri, source.sample_rate, source.channels) == (SOURCE, 44100, 2)
    assert source.duration_seconds == pytest.approx(1.0)


def test_default_output_prefix_is_output_bucket_stems_track_job(rig: Rig) -> None:
    rig.handle(make_job(job_id="j-42", track_id="t-7"))

    prefix = f"gs://{OUTPUT_BUCKET}/stems/t-7/j-42"
    assert all(uri.startswith(prefix + "/") for uri in rig.store.calls_of("upload"))
    assert f"{prefix}/manifest.json" in rig.store.objects


def test_output_uri_of_the_job_replaces_the_default_prefix(rig: Rig) -> None:
    rig.handle(make_job(output_uri="gs://elsewhere/mine/"))

    assert "gs://elsewhere/mine/drums.wav" in rig.store.calls_of("upload")
    assert "gs://elsewhere/mine/manifest.json" in rig.store.objects


def test_stem_subset_uploads_only_those_stems_listed_in_model_order(rig: Rig) -> None:
    rig.handle(make_job(stems=("vocals", "drums")))

    assert sorted(rig.store.calls_of("upload")) == [
        f"{DEFAULT_PREFIX}/drums.wav",
        f"{DEFAULT_PREFIX}/vocals.wav",
    ]
    assert [stem.name for stem in rig.processed().stems] == ["drums", "vocals"]


def test_model_version_comes_from_the_separator(make_rig: MakeRig) -> None:
    rig = make_rig(CountingSeparator(model="htdemucs_6s_v2"), model="htdemucs_6s")

    rig.handle(make_job())

    assert rig.processed().model_version == "demucs-htdemucs-6s-v2"


# --- redelivery of a finished job ----------------------------------------------------------


def test_redelivered_job_with_manifest_republishes_same_result_without_separating(
    rig: Rig,
) -> None:
    # Given a job that was processed, but whose ack was lost
    rig.handle(make_job())
    first = rig.processed()
    downloads, uploads = len(rig.store.calls_of("download")), len(rig.store.calls_of("upload"))

    # When it is delivered again
    outcome = rig.handle(make_job(), attempt=2)

    # Then the same stems.processed body goes out again, and nothing is recomputed
    assert outcome is Outcome.ACK
    assert rig.events.event_types == [
        "stems.processing",
        "stems.processed",
        "stems.processing",
        "stems.processed",
    ]
    assert encode(rig.processed())[0] == encode(first)[0]
    assert rig.separator.calls == 1
    assert len(rig.store.calls_of("download")) == downloads
    assert len(rig.store.calls_of("upload")) == uploads


@pytest.mark.parametrize(
    "change",
    [
        {"source_uri": "gs://stem-staging/in/another-song.wav"},
        {"format": "flac"},
        {"stems": ("vocals",)},
        {"stems": ("drums", "bass", "other", "vocals", "guitar", "piano", "no_vocals")},
        {"sample_format": "pcm24"},
        {"sample_rate": 48000},
    ],
    ids=[
        "other-source",
        "other-format",
        "other-stems",
        "a-complement-more",
        "other-sample-format",
        "other-sample-rate",
    ],
)
def test_a_manifest_of_another_job_under_the_same_id_is_not_reused(
    rig: Rig, change: dict[str, Any]
) -> None:
    # Given a finished job, and then a different job reusing its jobId (and so its prefix)
    rig.handle(make_job())
    if "source_uri" in change:
        rig.store.put(change["source_uri"], rig.store.objects[SOURCE].data)

    # When the other job arrives (reuse off: the same bytes may be answered by copying,
    # tests/consumer/test_reuse*.py; this is about the manifest under a shared prefix)
    assert rig.handle(make_job(**change, reuse=False)) is Outcome.ACK

    # Then it is computed for what it asks, not answered with the first job's stems
    assert rig.separator.calls == 2
    processed = rig.processed()
    assert processed.source.uri == make_job(**change).source_uri
    assert {s.format for s in processed.stems} == {make_job(**change).format}


def test_a_manifest_written_before_sample_formats_existed_answers_a_pcm16_job(rig: Rig) -> None:
    """Manifests from before issue 18 have no ``sampleFormat``: their wav stems are pcm16.
    (Reuse off: a reuse copy would also spare the separation and hide a wrong answer.)"""
    rig.handle(make_job(reuse=False))
    manifest = f"{DEFAULT_PREFIX}/manifest.json"
    body = json.loads(rig.store.objects[manifest].data)
    for stem in body["stems"]:
        assert stem.pop("sampleFormat") == "pcm16"
    rig.store.put(manifest, json.dumps(body).encode(), "application/json")

    assert rig.handle(make_job(reuse=False), attempt=2) is Outcome.ACK
    assert rig.separator.calls == 1  # answered from the old manifest
    assert rig.handle(make_job(sample_format="pcm24", reuse=False), attempt=3) is Outcome.ACK
    assert rig.separator.calls == 2  # not a pcm24 job's result


def test_a_shared_output_uri_does_not_hand_one_job_another_jobs_result(rig: Rig) -> None:
    # Given a finished job whose outputUri a second job (same source, format, stems) shares
    shared = "gs://stem-output/shared/prefix"
    rig.handle(make_job(job_id="job-a", output_uri=shared))

    # When the second job arrives (reuse off, as above)
    assert rig.handle(make_job(job_id="job-b", output_uri=shared, reuse=False)) is Outcome.ACK

    # Then it is separated and answered as itself, not with job-a's event
    assert rig.separator.calls == 2
    assert rig.processed().job_id == "job-b"


def test_a_manifest_from_another_model_version_is_recomputed_not_served(rig: Rig) -> None:
    # Given a job finished by a worker on one model version
    rig.handle(make_job())
    assert rig.processed().model_version == "demucs-htdemucs-6s"

    # When it is redelivered to a worker running an upgraded model of the same name
    upgraded = CountingSeparator(model="htdemucs_6s_v2")
    handler = JobHandler(
        Settings(output_bucket=OUTPUT_BUCKET),
        store=rig.store,
        events=rig.events,
        separator=upgraded,
        workdir=rig.workdir,
    )
    assert handler.handle(delivery(make_job(), attempt=2)) is Outcome.ACK

    # Then the stems are separated again by the new model, not served stale
    assert upgraded.calls == 1
    assert rig.processed().model_version == "demucs-htdemucs-6s-v2"


def test_each_manifest_decision_is_logged_with_the_job_id(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="consumer.manifest")

    def said() -> list[tuple[str, object]]:
        lines = [(r.getMessage(), getattr(r, "jobId", None)) for r in caplog.records]
        caplog.clear()
        return [line for line in lines if line[1] is not None]

    rig.store.put(f"{DEFAULT_PREFIX}/manifest.json", b"{half a manif")
    rig.handle(make_job())
    assert said() == [("unreadable manifest; recomputing", "job-1")]
    rig.handle(make_job(), attempt=2)
    assert said() == [("job already processed; republishing its result", "job-1")]
    rig.handle(make_job(format="flac"))
    assert said() == [("manifest from another job or model at this prefix; recomputing", "job-1")]


def test_the_manifest_leaves_out_what_is_unset(rig: Rig) -> None:
    rig.handle(make_job(correlation_id=None))

    manifest = json.loads(rig.store.objects[f"{DEFAULT_PREFIX}/manifest.json"].data)
    assert "correlationId" not in manifest
    assert "jobId" in manifest


def test_unreadable_manifest_is_ignored_and_the_job_recomputed(rig: Rig) -> None:
    rig.store.put(f"{DEFAULT_PREFIX}/manifest.json", b"{half a manif")

    assert rig.handle(make_job()) is Outcome.ACK
    assert rig.separator.calls == 1
    assert decode_event(rig.store.objects[f"{DEFAULT_PREFIX}/manifest.json"].data) == (
        rig.processed()
    )


# --- permanent errors: stems.failed(final) + dead letter + ack ---------------------------


def assert_dead_lettered(rig: Rig, sent: Delivery, code: str) -> None:
    """One dead letter: the original data and attributes plus the reason."""
    assert len(rig.events.dead_letters) == 1
    letter = rig.events.dead_letters[0]
    assert letter.data == sent.data
    assert letter.attributes == {
        **sent.attributes,
        "errorCode": code,
        "errorMessage": letter.attributes["errorMessage"],
        "deliveryAttempt": str(sent.delivery_attempt),
    }
    assert letter.attributes["errorMessage"]


@pytest.mark.parametrize(
    ("config", "job_fields", "code"),
    [
        pytest.param(
            {"allowed_buckets": frozenset({OUTPUT_BUCKET})},
            {},
            "bucket_not_allowed",
            id="source-bucket-not-allowed",
        ),
        pytest.param(
            {"allowed_buckets": frozenset({OUTPUT_BUCKET, "stem-staging"})},
            {"output_uri": "gs://not-ours/stems"},
            "bucket_not_allowed",
            id="output-bucket-not-allowed",
        ),
        pytest.param({}, {"model": "htdemucs"}, "invalid_message", id="model-not-served"),
        pytest.param({}, {"source_uri": MISSING}, "source_missing", id="source-missing"),
        pytest.param({"max_audio_bytes": 1000}, {}, "audio_too_large", id="too-large"),
        pytest.param({"max_audio_seconds": 0.5}, {}, "audio_too_long", id="too-long"),
        pytest.param({}, {"source_uri": CORRUPT}, "corrupt_audio", id="corrupt-audio"),
        pytest.param({}, {"source_uri": OGG}, "unsupported_audio", id="unsupported-audio"),
    ],
)
def test_refused_job_fails_finally_is_dead_lettered_with_reason_and_acked(
    make_rig: MakeRig, config: dict[str, Any], job_fields: dict[str, Any], code: str
) -> None:
    rig = make_rig(**config)
    sent = delivery(make_job(**job_fields), attempt=2, origin="test")

    outcome = rig.handler.handle(sent)

    assert outcome is Outcome.ACK
    failed = rig.failed()
    assert (failed.error.code, failed.error.retryable, failed.final) == (code, False, True)
    assert failed.attempt == 2
    assert rig.events.event_types[-1] == "stems.failed"
    assert_dead_lettered(rig, sent, code)
    assert rig.separator.calls == 0
    assert rig.store.calls_of("upload") == []


def test_body_that_is_not_json_is_only_dead_lettered(rig: Rig) -> None:
    sent = delivery(b"{not json", jobId="job-1", origin="test")

    assert rig.handler.handle(sent) is Outcome.ACK

    # No job ids can be read from the body (attributes are not trusted), so there is no
    # stems.failed to publish: the dead letter is the only record.
    assert rig.events.results == []
    assert_dead_lettered(rig, sent, "invalid_message")
    assert rig.store.calls == []


def test_schema_violation_with_readable_ids_fails_finally_and_is_dead_lettered(
    rig: Rig,
) -> None:
    body = {"jobId": "job-1", "trackId": "track-1", "correlationId": "c-9", "mp3Bitrate": 1000}
    sent = delivery(json.dumps(body).encode(), jobId="job-1")

    assert rig.handler.handle(sent) is Outcome.ACK

    failed = rig.failed()
    assert rig.events.event_types == ["stems.failed"]
    assert (failed.job_id, failed.track_id, failed.correlation_id) == ("job-1", "track-1", "c-9")
    assert (failed.error.code, failed.error.retryable, failed.final) == (
        "invalid_message",
        False,
        True,
    )
    assert_dead_lettered(rig, sent, "invalid_message")
    message = rig.events.dead_letters[0].attributes["errorMessage"]
    assert "sourceUri" in message
    assert "mp3Bitrate" in message


@pytest.mark.parametrize(
    "body",
    [
        pytest.param({"trackId": "track-1", "sourceUri": SOURCE}, id="no-job-id"),
        pytest.param({"jobId": "../up", "trackId": "t", "sourceUri": SOURCE}, id="bad-job-id"),
        pytest.param([{"jobId": "job-1", "trackId": "track-1"}], id="not-an-object"),
    ],
)
def test_schema_violation_without_readable_ids_is_only_dead_lettered(
    rig: Rig, body: object
) -> None:
    sent = delivery(json.dumps(body).encode())

    assert rig.handler.handle(sent) is Outcome.ACK

    assert rig.events.results == []
    assert_dead_lettered(rig, sent, "invalid_message")


def test_unknown_stem_of_a_model_the_contract_knows_is_an_invalid_message(rig: Rig) -> None:
    # The contract lists htdemucs_6s's stems, so the body itself is invalid (code
    # invalid_message, not stem_not_in_model); its ids are readable, so it still gets a
    # final stems.failed beside the dead letter.
    body = json.loads(encode(make_job())[0])
    sent = delivery(json.dumps({**body, "stems": ["flute"]}).encode())

    assert rig.handler.handle(sent) is Outcome.ACK

    failed = rig.failed()
    assert rig.events.event_types == ["stems.failed"]
    assert (failed.error.code, failed.final) == ("invalid_message", True)
    assert "flute" in failed.error.message
    assert_dead_lettered(rig, sent, "invalid_message")
    assert rig.separator.calls == 0


def test_unknown_stem_of_a_model_only_the_worker_knows_is_stem_not_in_model(
    make_rig: MakeRig,
) -> None:
    # A model the contract does not list: the worker checks the stems against its
    # separator, and the job (valid on the wire) gets its stems.failed.
    rig = make_rig(CountingSeparator(model="my_6s"), model="my_6s")
    sent = delivery(make_job(model="my_6s", stems=("vocals", "flute")))

    assert rig.handler.handle(sent) is Outcome.ACK

    failed = rig.failed()
    assert (failed.error.code, failed.final) == ("stem_not_in_model", True)
    assert "flute" in failed.error.message
    assert_dead_lettered(rig, sent, "stem_not_in_model")
    assert rig.separator.calls == 0


def test_dead_letter_error_message_fits_the_pubsub_attribute_limit_in_bytes(rig: Rig) -> None:
    # A missing source whose (legal) name is ~1000 bytes of two-byte characters: the
    # error message is over 1024 bytes but under 1024 characters.
    source = f"{STAGING}/{'é' * 495}.wav"
    sent = delivery(make_job(source_uri=source))

    assert rig.handler.handle(sent) is Outcome.ACK

    message = rig.events.dead_letters[0].attributes["errorMessage"]
    assert len(message.encode()) <= 1024
    assert rig.failed().error.message.startswith(message)


def test_a_message_with_the_maximum_of_attributes_is_still_dead_lettered_with_its_reason(
    rig: Rig,
) -> None:
    # Given a poison job that already carries Pub/Sub's maximum of 100 attributes
    extra = {f"x{i:02d}": "v" for i in range(97)}  # + jobId, trackId, schemaVersion = 100
    job = delivery(make_job(source_uri=f"{STAGING}/missing.wav"))
    sent = replace(job, attributes={**job.attributes, **extra})

    # Then the dead letter keeps the identifying attributes and the reason, within the limit
    assert rig.handler.handle(sent) is Outcome.ACK
    attributes = rig.events.dead_letters[0].attributes
    assert len(attributes) <= 100
    assert attributes["errorCode"] == "source_missing"
    assert attributes["deliveryAttempt"] == "1"
    assert {"jobId", "trackId", "schemaVersion"} <= set(attributes)


# --- transient errors: stems.failed + nack ------------------------------------------------


@pytest.mark.parametrize(("attempt", "final"), [(1, False), (4, False), (5, True)])
def test_storage_unavailable_is_reported_and_nacked_without_dead_letter(
    rig: Rig, attempt: int, final: bool
) -> None:
    rig.store.fail_next("download", StorageUnavailable("gcs unreachable"))

    outcome = rig.handle(make_job(), attempt=attempt)

    # On the last attempt the failure is final, yet still nacked: Pub/Sub dead-letters it.
    assert outcome is Outcome.NACK
    failed = rig.failed()
    assert (failed.error.code, failed.error.retryable, failed.final) == (
        "storage_unavailable",
        True,
        final,
    )
    assert failed.attempt == attempt
    assert rig.events.dead_letters == []


def test_upload_that_failed_once_succeeds_on_redelivery(rig: Rig) -> None:
    rig.store.fail_next("upload", StorageUnavailable("503"))

    assert rig.handle(make_job(), attempt=1) is Outcome.NACK
    assert rig.handle(make_job(), attempt=2) is Outcome.ACK

    assert rig.events.event_types == [
        "stems.processing",
        "stems.failed",
        "stems.processing",
        "stems.processed",
    ]
    assert len(rig.processed().stems) == len(HTDEMUCS_6S_STEMS)


# --- results that cannot be published: nack, nothing lost ------------------------------


def test_failed_dead_letter_publish_nacks_so_nothing_is_lost(rig: Rig) -> None:
    rig.events.fail_next("dead_letter")

    assert rig.handle(make_job(source_uri=MISSING)) is Outcome.NACK
    assert rig.events.dead_letters == []


def test_failed_stems_failed_publish_nacks_before_dead_lettering(rig: Rig) -> None:
    rig.events.fail_next("publish_result", event_type="stems.failed")

    assert rig.handle(make_job(source_uri=MISSING)) is Outcome.NACK
    assert rig.events.dead_letters == []


def test_failed_processed_publish_nacks_and_redelivery_republishes_from_manifest(
    rig: Rig,
) -> None:
    rig.events.fail_next("publish_result", event_type="stems.processed")

    assert rig.handle(make_job(), attempt=1) is Outcome.NACK
    assert rig.failed().error.code == "publish_failed"
    assert rig.failed().final is False

    assert rig.handle(make_job(), attempt=2) is Outcome.ACK
    assert rig.processed().job_id == "job-1"
    assert rig.separator.calls == 1


# --- timeout, shutdown, crashes ----------------------------------------------------------


def test_job_over_its_timeout_is_cancelled_and_nacked_as_job_timeout(make_rig: MakeRig) -> None:
    rig = make_rig(CountingSeparator(block_until_cancelled=True), job_timeout_s=0.5)

    assert rig.handle(make_job()) is Outcome.NACK

    assert rig.separator.was_cancelled
    failed = rig.failed()
    assert (failed.error.code, failed.error.retryable, failed.final) == (
        "job_timeout",
        True,
        False,
    )
    assert rig.store.calls_of("upload") == []
    assert rig.events.dead_letters == []


def test_stop_requested_during_separation_nacks_as_worker_shutdown(make_rig: MakeRig) -> None:
    rig = make_rig(CountingSeparator(block_until_cancelled=True))

    outcome = rig.handle(make_job(), stop_requested=rig.separator.started.is_set)

    assert outcome is Outcome.NACK
    assert rig.separator.was_cancelled
    assert rig.failed().error.code == "worker_shutdown"
    assert rig.store.calls_of("upload") == []


def test_unexpected_separator_exception_is_internal_error_and_nacked(make_rig: MakeRig) -> None:
    rig = make_rig(CountingSeparator(raises=RuntimeError("kaput")))

    outcome = rig.handle(make_job())  # does not raise

    assert outcome is Outcome.NACK
    failed = rig.failed()
    assert (failed.error.code, failed.error.message) == ("internal_error", "RuntimeError: kaput")
    assert (failed.error.retryable, failed.final) == (True, False)
    assert rig.events.dead_letters == []
    assert rig.handler.fatal_error is None


def test_fatal_worker_error_sets_fatal_error_and_nacks(make_rig: MakeRig) -> None:
    error = ModelLoadError("weights gone")
    rig = make_rig(CountingSeparator(raises=error))

    assert rig.handle(make_job()) is Outcome.NACK

    assert rig.handler.fatal_error is error
    failed = rig.failed()
    assert (failed.error.code, failed.error.retryable) == ("model_load_failed", True)
    assert rig.events.dead_letters == []


# --- temporary files ---------------------------------------------------------------------


def test_workdir_is_empty_after_success(rig: Rig) -> None:
    assert rig.handle(make_job()) is Outcome.ACK
    assert rig.workdir_entries() == []


@pytest.mark.parametrize(
    ("separator", "job_fields", "failing_upload"),
    [
        pytest.param(None, {"source_uri": CORRUPT}, False, id="decode-fails"),
        pytest.param(CountingSeparator(raises=RuntimeError("x")), {}, False, id="separate-fails"),
        pytest.param(None, {}, True, id="upload-fails"),
    ],
)
def test_workdir_is_empty_after_failure(
    make_rig: MakeRig,
    separator: CountingSeparator | None,
    job_fields: dict[str, Any],
    failing_upload: bool,
) -> None:
    rig = make_rig(separator)
    if failing_upload:
        rig.store.fail_next("upload", StorageUnavailable("503"))

    rig.handle(make_job(**job_fields))

    assert rig.events.event_types[-1] == "stems.failed"
    assert rig.workdir_entries() == []


# --- cancel (issue 18) -----------------------------------------------------------------------

CANCEL_MARKER = f"gs://{OUTPUT_BUCKET}/_cancel/job-1"


def test_remove_stems_deletes_the_jobs_stems_and_peaks_files_only(rig: Rig) -> None:
    job = make_job(stems=("vocals", "no_vocals"))
    for name in ("vocals.wav", "vocals.peaks.json", "no_vocals.peaks.json", "drums.wav", "x.txt"):
        rig.store.put(f"{DEFAULT_PREFIX}/{name}", b"x")

    removed = remove_stems(rig.store, job, DEFAULT_PREFIX, rig.separator.sources)

    assert removed == [
        f"{DEFAULT_PREFIX}/vocals.wav",
        f"{DEFAULT_PREFIX}/vocals.peaks.json",
        f"{DEFAULT_PREFIX}/no_vocals.peaks.json",
    ]
    left = sorted(uri for uri in rig.store.objects if uri.startswith(DEFAULT_PREFIX))
    assert left == [f"{DEFAULT_PREFIX}/drums.wav", f"{DEFAULT_PREFIX}/x.txt"]


@pytest.mark.parametrize(
    ("fields", "sample_format"),
    [({"format": "mp3"}, None), ({"sample_rate": "source"}, "pcm16")],
    ids=["mp3", "source-rate"],
)
def test_stems_report_their_rate_and_format_and_redelivery_is_answered_from_the_manifest(
    rig: Rig, fields: dict[str, Any], sample_format: str | None
) -> None:
    assert rig.handle(make_job(**fields)) is Outcome.ACK
    first = rig.processed()
    assert {(s.sample_rate, s.sample_format) for s in first.stems} == {(44100, sample_format)}

    assert rig.handle(make_job(**fields), attempt=2) is Outcome.ACK

    assert rig.separator.calls == 1
    assert rig.processed() == first


def test_a_job_cancelled_while_its_stems_upload_leaves_none_and_is_acked(
    make_rig: MakeRig,
) -> None:
    """Given a cancel that lands once the first stem is uploaded, when the job runs, then
    the stems already written are deleted, no manifest is written, stems.failed says
    ``cancelled`` (final, not retryable) and the message is acked without a dead letter."""
    rig = make_rig(encode_workers=1)
    upload = rig.store.upload

    def upload_then_cancel(
        src: Path, uri: str, *, content_type: str, metadata: Mapping[str, str] | None = None
    ) -> Any:
        info = upload(src, uri, content_type=content_type, metadata=metadata)
        rig.store.put(CANCEL_MARKER, b"{}")
        return info

    rig.store.upload = upload_then_cancel  # type: ignore[method-assign]

    outcome = rig.handle(make_job(stems=("vocals", "no_vocals")))

    assert outcome is Outcome.ACK
    failed = rig.failed()
    assert (failed.error.code, failed.final, failed.error.retryable) == ("cancelled", True, False)
    assert rig.events.dead_letters == []
    assert rig.store.calls_of("upload") == [f"{DEFAULT_PREFIX}/vocals.wav"]
    assert [uri for uri in rig.store.objects if uri.startswith(DEFAULT_PREFIX)] == []
    assert f"{DEFAULT_PREFIX}/manifest.json" not in rig.store.calls_of("write_bytes")


def test_a_finished_job_stays_finished_when_cancelled_afterwards(rig: Rig) -> None:
    assert rig.handle(make_job()) is Outcome.ACK
    rig.store.put(CANCEL_MARKER, b"{}")

    assert rig.handle(make_job(), attempt=2) is Outcome.ACK

    assert [e.event_type for e in rig.events.results][-2:] == [
        "stems.processing",
        "stems.processed",
    ]
    assert rig.separator.calls == 1


def test_a_failed_cancel_check_does_not_fail_the_job(make_rig: MakeRig) -> None:
    rig = make_rig()
    stat = rig.store.stat

    def flaky_stat(uri: str) -> Any:
        if uri == CANCEL_MARKER:
            raise StorageUnavailable("stat: unreachable (test)")
        return stat(uri)

    rig.store.stat = flaky_stat  # type: ignore[method-assign]

    assert rig.handle(make_job()) is Outcome.ACK
    assert isinstance(rig.processed(), StemsProcessed)


@pytest.mark.parametrize("reserved", ["_reuse", "_cancel"])
def test_an_output_uri_under_the_fleets_own_prefixes_is_refused(rig: Rig, reserved: str) -> None:
    """Stems written there could overwrite reuse pointers or cancel markers."""
    outcome = rig.handle(make_job(output_uri=f"gs://{OUTPUT_BUCKET}/{reserved}/x"))

    assert outcome is Outcome.ACK
    assert rig.failed().error.code == "invalid_message"
    assert "reserved" in rig.failed().error.message
    assert len(rig.events.dead_letters) == 1
    assert rig.store.calls_of("upload") == []
