"""The judges are judged: the chaos run's verdict comes from these pure pieces, so each
must catch the failure it exists to catch (a lost job, a wrong reason, a leaked secret, a
request to the wrong bucket, a leak in RSS) and not cry wolf on the right outcome."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace

import pytest

from stem_contracts import Job, SourceInfo, StemFile, StemsProcessed
from tests.chaos.catalogue import Submission
from tests.chaos.ledger import Ledger, check_requests, find_leaks
from tests.reliability.report import update_document
from tests.reliability.soak import rss_slope
from tests.support.faults import Request


def _good(key: str) -> Submission:
    job = Job(job_id=key, track_id="t", source_uri="gs://staging/in/a.wav")
    return Submission(key, "wav_to_mp3", b"{}", {"chaosId": key}, None, job, f"gs://out/{key}")


def _poison(key: str, code: str) -> Submission:
    return Submission(key, "random_bytes", b"\x00", {"chaosId": key}, code)


def _processed(job_id: str, attempt: int = 1) -> StemsProcessed:
    return StemsProcessed(
        job_id=job_id,
        track_id="t",
        attempt=attempt,
        model_version="demucs-htdemucs-6s-tiny",
        stems=(
            StemFile(
                name="vocals",
                uri=f"gs://out/{job_id}/vocals.mp3",
                format="mp3",
                content_type="audio/mpeg",
                size_bytes=1,
                duration_seconds=1.0,
                sample_rate=44100,
                channels=2,
                sha256="a" * 64,
            ),
        ),
        source=SourceInfo(
            uri="gs://staging/in/a.wav", duration_seconds=1.0, sample_rate=44100, channels=2
        ),
        processing_time_ms=10,
        completed_at=datetime(2026, 11, 22, tzinfo=UTC),
    )


def _dead_letter(key: str, code: str | None) -> SimpleNamespace:
    attributes = {"chaosId": key} | ({"errorCode": code} if code else {})
    return SimpleNamespace(attributes=attributes)


def test_the_ledger_tells_done_from_lost_and_from_wrongly_ended() -> None:
    good, lost, poison, misfiled, unreasoned, swallowed, misjudged = (
        _good("g1"),
        _good("g2"),
        _poison("p1", "corrupt_audio"),
        _poison("p2", "corrupt_audio"),
        _poison("p3", "audio_too_long"),
        _poison("p4", "invalid_message"),
        _good("g3"),
    )
    poison_with_a_job = replace(
        swallowed, job=Job(job_id="p4", track_id="t", source_uri="gs://staging/x")
    )
    ledger = Ledger([good, lost, poison, misfiled, unreasoned, poison_with_a_job, misjudged])

    ledger.add(
        [_processed("g1"), _processed("g1", attempt=3), _processed("p4")],
        [
            _dead_letter("p1", "corrupt_audio"),
            _dead_letter("p2", "audio_too_long"),
            _dead_letter("p3", None),
            _dead_letter("g3", "source_missing"),
            _dead_letter("stranger", "corrupt_audio"),
        ],
    )

    assert [s.key for s in ledger.open()] == ["g2"]
    assert ledger.wrong() == {
        "p2": "dead-lettered as ['audio_too_long'] (expected corrupt_audio)",
        "p3": "dead-lettered without a reason (Pub/Sub's delivery limit?)",
        "p4": "poison processed (expected invalid_message)",
        "g3": "good job dead-lettered (source_missing)",
    }
    assert ledger.duplicate_processed() == (1, 1)
    assert ledger.distinct_processed_bodies() == 1  # attempt differs: the bodies differ
    assert ledger.unknown_dead_letters == 1
    assert ledger.max_attempt == 3


def test_requests_outside_the_allowed_buckets_are_named() -> None:
    requests = [
        Request("GET", "/download/storage/v1/b/staging/o/in%2Fa.wav?alt=media", None),
        Request("POST", "/upload/storage/v1/b/out/o?uploadType=multipart&name=s%2Fv.mp3", None),
        Request("POST", "/upload/storage/v1/b/staging/o?uploadType=media&name=evil", None),
        Request("GET", "/storage/v1/b/secret/o/x", None),
        Request("GET", "/storage/v1/b/secret/o/x", None),
    ]
    assert check_requests(requests, readable={"staging", "out"}, writable={"out"}) == [
        "write to staging: POST evil (x1)",
        "read from secret: GET x (x2)",
    ]


def test_a_secret_in_a_log_line_is_found_and_masked() -> None:
    lines = ['{"msg": "job done", "jobId": "j1"}', '{"msg": "auth", "h": "Bearer CANARY42"}']
    assert find_leaks(lines, ["CANARY42"]) == ['{"msg": "auth", "h": "Bearer <SECRET>"}']
    assert find_leaks(lines[:1], ["CANARY42"]) == []


def test_the_rss_slope_follows_the_floor_not_the_spikes_of_a_forward_pass() -> None:
    flat_with_spikes = [(n, 300_000_000 + (400_000_000 if n % 3 else 0)) for n in range(200)]
    leaking = [(n, 300_000_000 + 50_000 * n + (400_000_000 if n % 3 else 0)) for n in range(200)]
    assert rss_slope(flat_with_spikes) == pytest.approx(0.0, abs=1.0)
    assert rss_slope(leaking) == pytest.approx(50_000, rel=0.05)


def test_the_report_replaces_its_own_section_and_keeps_the_prose(tmp_path: Path) -> None:
    doc = tmp_path / "reliability.md"
    doc.write_text(
        "intro\n<!-- reliability:ci:begin -->\nold ci\n<!-- reliability:ci:end -->\n"
        "<!-- reliability:long:begin -->\nold long\n<!-- reliability:long:end -->\nhow\n"
    )
    update_document(doc, "ci", "new ci\n")
    assert doc.read_text() == (
        "intro\n<!-- reliability:ci:begin -->\nnew ci\n<!-- reliability:ci:end -->\n"
        "<!-- reliability:long:begin -->\nold long\n<!-- reliability:long:end -->\nhow\n"
    )
