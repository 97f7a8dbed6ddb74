"""The DLQ's pure core: reading a dead letter, filters, selection, replayed attributes,
durations and pacing. No servers (the commands themselves: ``test_dlq.py``)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from stemctl.dlq.letters import (
    DeadLetter,
    Filters,
    Pacer,
    Selection,
    chunks,
    format_age,
    parse_duration,
    replay_attributes,
    window_size,
)

NOW = datetime(2026, 1, 2, 12, 0, tzinfo=UTC)

PUBSUB_ATTRS: dict[str, Any] = {
    "CloudPubSubDeadLetterSourceDeliveryCount": "5",
    "CloudPubSubDeadLetterSourceSubscription": "stem-separate",
    "CloudPubSubDeadLetterSourceSubscriptionProject": "proj",
    "CloudPubSubDeadLetterSourceTopicPublishTime": "2026-01-02T11:00:00.000Z",
}


def letter(
    message_id: str = "m1",
    *,
    job_id: str | None = "job-1",
    age: timedelta = timedelta(minutes=5),
    data: bytes | None = None,
    **attributes: str,
) -> DeadLetter:
    attrs = {"trackId": "track-1", "schemaVersion": "1", **attributes}
    if job_id is not None:
        attrs["jobId"] = job_id
    body = data if data is not None else json.dumps({"jobId": job_id, "trackId": "t"}).encode()
    return DeadLetter(message_id, body, attrs, NOW - age)


def ours(message_id: str = "m1", code: str = "source_missing", **kwargs: Any) -> DeadLetter:
    return letter(
        message_id,
        errorCode=code,
        errorMessage=f"{code} happened",
        deliveryAttempt="1",
        **kwargs,
    )


# --- reading a dead letter ----------------------------------------------------------------


def test_our_dead_letter_reports_the_workers_reason_and_attempt() -> None:
    reason = ours(code="corrupt_audio").reason

    assert (reason.code, reason.message, reason.delivery_attempts, reason.source) == (
        "corrupt_audio",
        "corrupt_audio happened",
        1,
        "worker",
    )


def test_a_message_pubsub_dead_lettered_reports_delivery_limit_with_its_count_and_source() -> None:
    reason = letter(**PUBSUB_ATTRS).reason

    assert reason.code == "delivery_limit"
    assert reason.message == "Pub/Sub gave up after 5 deliveries"
    assert (reason.delivery_attempts, reason.source) == (5, "stem-separate")


def test_a_message_with_no_recorded_reason_says_so() -> None:
    reason = letter().reason

    assert (reason.code, reason.delivery_attempts, reason.source) == ("unknown", None, "-")


def test_job_id_comes_from_the_attribute_else_from_the_body_else_none() -> None:
    from_body = letter(job_id=None, data=b'{"jobId": "in-body", "trackId": "tb"}')
    not_json = letter(job_id=None, data=b"\xff\xfe")

    assert letter(job_id="attr").job_id == "attr"
    assert (from_body.job_id, from_body.track_id) == ("in-body", "track-1")
    assert not_json.job_id is None


@pytest.mark.parametrize(("value", "count"), [(None, 0), ("2", 2), ("junk", 0), ("-4", 0)])
def test_replay_count_is_read_tolerantly(value: str | None, count: int) -> None:
    attrs: dict[str, Any] = {} if value is None else {"replayCount": value}

    assert letter(**attrs).replay_count == count


def test_summary_is_one_flat_json_object_per_message() -> None:
    row = ours(replayCount="1", replayedFrom="m0").summary(NOW)

    assert json.loads(json.dumps(row)) == {
        "messageId": "m1",
        "jobId": "job-1",
        "trackId": "track-1",
        "errorCode": "source_missing",
        "errorMessage": "source_missing happened",
        "deliveryAttempts": 1,
        "source": "worker",
        "publishTime": "2026-01-02T11:55:00.000+00:00",
        "ageSeconds": 300,
        "replayCount": 1,
        "replayedFrom": "m0",
    }


@pytest.mark.parametrize(
    ("data", "encoding", "shown"),
    [
        (b'{"jobId": "j"}', "json", {"jobId": "j"}),
        (b"{not json", "text", "{not json"),
        (b"\xff\x00", "base64", "/wA="),
    ],
)
def test_detail_shows_the_data_as_json_text_or_base64(
    data: bytes, encoding: str, shown: object
) -> None:
    detail = letter(data=data, zeta="z", alpha="a").detail(NOW)

    assert (detail["dataEncoding"], detail["data"], detail["dataBytes"]) == (
        encoding,
        shown,
        len(data),
    )
    assert list(detail["attributes"]) == sorted(detail["attributes"])


# --- the replayed copy ------------------------------------------------------------------


def test_replayed_attributes_keep_the_job_drop_the_reasons_and_count_the_replay() -> None:
    dead = letter("dlq-7", traceparent="00-abc-def-01", origin="ingest", **PUBSUB_ATTRS)
    worker_dead = ours("dlq-8", replayCount="2", replayedFrom="dlq-3")

    assert replay_attributes(dead) == {
        "jobId": "job-1",
        "trackId": "track-1",
        "schemaVersion": "1",
        "traceparent": "00-abc-def-01",
        "origin": "ingest",
        "replayCount": "1",
        "replayedFrom": "dlq-7",
    }
    assert replay_attributes(worker_dead) == {
        "jobId": "job-1",
        "trackId": "track-1",
        "schemaVersion": "1",
        "replayCount": "3",
        "replayedFrom": "dlq-8",
    }


# --- filters and selection ----------------------------------------------------------------


def test_filters_or_within_a_kind_and_across_kinds() -> None:
    filters = Filters(job_ids=frozenset({"a", "b"}), error_codes=frozenset({"source_missing"}))

    assert filters.matches(ours(job_id="a"), NOW)
    assert filters.matches(ours(job_id="b"), NOW)
    assert not filters.matches(ours(job_id="c"), NOW)
    assert not filters.matches(ours(job_id="a", code="corrupt_audio"), NOW)
    assert Filters().matches(letter(job_id=None), NOW)


def test_older_than_selects_by_time_in_the_dlq() -> None:
    filters = Filters(older_than=timedelta(hours=2))

    assert filters.matches(letter(age=timedelta(hours=3)), NOW)
    assert filters.matches(letter(age=timedelta(hours=2)), NOW)
    assert not filters.matches(letter(age=timedelta(hours=1)), NOW)


def test_error_code_filter_matches_pubsubs_delivery_limit_and_message_ids() -> None:
    assert Filters(error_codes=frozenset({"delivery_limit"})).matches(letter(**PUBSUB_ATTRS), NOW)
    assert Filters(message_ids=frozenset({"m9"})).matches(letter("m9"), NOW)
    assert not Filters(message_ids=frozenset({"m9"})).matches(letter("m1"), NOW)


def test_filters_describe_themselves() -> None:
    filters = Filters(job_ids=frozenset({"j"}), older_than=timedelta(minutes=90))

    assert filters.describe() == "jobId=j, older than 1h30m"
    assert Filters().describe() == "all messages"


def test_selection_refuses_messages_past_max_replays_unless_forced() -> None:
    tired, fresh = letter("m1", replayCount="3"), letter("m2", replayCount="2")
    strict = Selection(Filters(), NOW, max_replays=3)
    forced = Selection(Filters(), NOW, max_replays=3, force=True)

    assert [strict.offer(tired), strict.offer(fresh)] == ["refused", "selected"]
    assert [forced.offer(tired), forced.offer(fresh)] == ["selected", "selected"]


def test_selection_limit_counts_only_what_is_selected_and_leaves_the_rest_alone() -> None:
    selection = Selection(Filters(job_ids=frozenset({"a"})), NOW, limit=2, max_replays=1)
    offered = [
        letter("m1", job_id="b"),
        letter("m2", job_id="a", replayCount="1"),
        letter("m3", job_id="a"),
        letter("m4", job_id="a"),
        letter("m5", job_id="a"),
    ]

    verdicts = [selection.offer(x) for x in offered]

    assert verdicts == ["untouched", "refused", "selected", "selected", "untouched"]
    assert selection.full
    assert [x.message_id for x in selection.untouched] == ["m1", "m5"]


# --- durations, ages, pacing ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("45s", 45),
        ("30m", 1800),
        ("2h", 7200),
        ("1d", 86400),
        ("1w", 604800),
        ("1h30m", 5400),
        ("1.5h", 5400),
        (" 2H ", 7200),
        ("0s", 0),
    ],
)
def test_parse_duration_accepts_units_and_sums(text: str, seconds: int) -> None:
    assert parse_duration(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["", "30", "m", "1x", "1h junk", "-1h", "h1", "1hm"])
def test_parse_duration_refuses_anything_else_with_an_example(text: str) -> None:
    with pytest.raises(ValueError, match=r"e\.g\. 30m, 2h, 1d"):
        parse_duration(text)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0s"), (59, "59s"), (60, "1m"), (3599, "59m"), (3600, "1h"), (3900, "1h05m"),
     (86400, "1d"), (90000, "1d01h")],
)  # fmt: skip
def test_format_age_is_short(seconds: int, text: str) -> None:
    assert format_age(timedelta(seconds=seconds)) == text


def test_pacer_spaces_calls_to_the_rate() -> None:
    clock = [100.0]
    sleeps: list[float] = []

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        clock[0] += seconds

    pacer = Pacer(4.0, clock=lambda: clock[0], sleep=sleep)
    for _ in range(5):
        pacer.wait()

    assert sleeps == pytest.approx([0.25] * 4)
    assert clock[0] == pytest.approx(101.0)


def test_pacer_without_a_rate_never_sleeps_and_refuses_nonsense() -> None:
    pacer = Pacer(None, sleep=lambda s: pytest.fail("slept"))
    for _ in range(3):
        pacer.wait()
    with pytest.raises(ValueError, match="positive"):
        Pacer(0)


@pytest.mark.parametrize(("rate", "size"), [(None, 50), (0.5, 1), (5.0, 5), (1000.0, 50)])
def test_a_replay_window_holds_about_a_seconds_worth(rate: float | None, size: int) -> None:
    assert window_size(rate) == size


# --- what `make mutation` found unguarded ---------------------------------------------------


def test_a_pulled_message_becomes_a_dead_letter_field_by_field() -> None:
    # The real Pub/Sub message type, as a pull returns it (no server needed to build one).
    from google.protobuf.timestamp_pb2 import Timestamp
    from google.pubsub_v1.types import PubsubMessage

    published = Timestamp()
    published.FromDatetime(NOW.replace(tzinfo=None))
    message = PubsubMessage(
        data=b'{"jobId": "job-9"}',
        attributes={"errorCode": "corrupt_audio"},
        message_id="42",
        publish_time=published,
    )

    dead = DeadLetter.from_message(message)

    assert dead.message_id == "42"
    assert dead.data == b'{"jobId": "job-9"}'
    assert dead.attributes == {"errorCode": "corrupt_audio"}
    assert dead.publish_time == NOW
    assert dead.job_id == "job-9"


@pytest.mark.parametrize("body", [b'["jobId", "job-1"]', b'{"jobId": 7}', b'{"jobId": null}'])
def test_a_body_without_a_string_job_id_gives_none(body: bytes) -> None:
    assert letter(job_id=None, data=body).job_id is None


def test_parse_duration_ignores_spaces_between_parts() -> None:
    assert parse_duration(" 1h 30m ") == timedelta(minutes=90)


def test_selection_keeps_the_letters_themselves_and_judges_age_from_its_clock() -> None:
    old, young = letter("old", age=timedelta(hours=3)), letter("young")
    replayed = ours("r", replayCount="3", age=timedelta(hours=5))
    selection = Selection(Filters(older_than=timedelta(hours=1)), NOW, max_replays=3)

    verdicts = [selection.offer(x) for x in (old, young, replayed)]

    assert verdicts == ["selected", "untouched", "refused"]
    assert selection.selected == [old]
    assert selection.refused == [replayed]


def test_pacer_allows_any_positive_rate_and_says_what_is_wrong_otherwise() -> None:
    Pacer(0.5)
    with pytest.raises(ValueError, match=r"^rate must be positive$"):
        Pacer(0)


@pytest.mark.parametrize(
    ("size", "expected"),
    [(2, [[1, 2], [3, 4], [5]]), (5, [[1, 2, 3, 4, 5]]), (9, [[1, 2, 3, 4, 5]])],
)
def test_chunks_cover_every_item_once_in_order(size: int, expected: list[list[int]]) -> None:
    assert [list(c) for c in chunks([1, 2, 3, 4, 5], size)] == expected
