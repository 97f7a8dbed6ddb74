"""Each wire rule says what is wrong in words an operator can act on, at its exact bound.

Written to kill the mutants `make mutation` found surviving: a rule whose message or bound
could change without any test noticing.
"""

from __future__ import annotations

import json

import pytest

from stem_contracts import ContractError, Job, decode_job, encode, split_gcs_uri
from stem_contracts.codec import MAX_MESSAGE_BYTES

BASE = {"schemaVersion": 1, "jobId": "j", "trackId": "t"}
RELATIVE = "object path must be relative (no leading '/', no backslashes)"


def _refusal(source_uri: str) -> str:
    with pytest.raises(ContractError) as caught:
        decode_job(json.dumps({**BASE, "sourceUri": source_uri}).encode())
    [problem] = caught.value.problems
    assert problem.field == "sourceUri"
    return problem.reason


@pytest.mark.parametrize(
    ("uri", "reason"),
    [
        ("s3://bucket/a.wav", "must start with gs://"),
        ("gs://Bad_Bucket/a.wav", "bucket name 'Bad_Bucket' is not a valid GCS bucket name"),
        ("gs://my..bucket/a.wav", "bucket name 'my..bucket' is not a valid GCS bucket name"),
        ("gs://bucket/", "must name an object or prefix after the bucket (gs://bucket/path)"),
        ("gs://bucket///", "must name an object or prefix after the bucket (gs://bucket/path)"),
        ("gs://bucket/a\\b.wav", RELATIVE),
        (
            "gs://bucket/%2Fetc/a.wav",
            "object path must be relative (no leading '/', no backslashes)",
        ),
        ("gs://bucket/a/./b.wav", "object path must not contain '.' or '..' segments"),
        ("gs://bucket/a/../b.wav", "object path must not contain '.' or '..' segments"),
        ("gs://bucket/a%2Fb.wav", "object path must not contain encoded slashes"),
        ("gs://bucket/a\x01b.wav", "object path must not contain control characters"),
        ("gs://bucket/a\x7fb.wav", "object path must not contain control characters"),
        ("gs://bucket/" + "a" * 1025, "object path is longer than GCS allows (1024 bytes)"),
    ],
)
def test_a_bad_gcs_uri_is_refused_with_the_rule_it_breaks(uri: str, reason: str) -> None:
    assert _refusal(uri) == f"Value error, {reason}"


@pytest.mark.parametrize(
    "uri",
    [
        "gs://bucket/" + "a" * 1024,  # exactly GCS's limit
        "gs://bucket/My Song (live).wav",  # spaces are not control characters
        "gs://bucket/X",  # a one-letter object name
        "gs://bucket/\u00e9t\u00e9/\u97f3\u697d.flac",  # neither is non-ASCII text
    ],
)
def test_a_valid_gcs_uri_at_the_edge_of_a_rule_is_accepted(uri: str) -> None:
    job = decode_job(json.dumps({**BASE, "sourceUri": uri}).encode())
    assert job.source_uri == uri


def test_split_gcs_uri_names_the_scheme_it_wants() -> None:
    assert split_gcs_uri("gs://bkt/x/y.wav") == ("bkt", "x/y.wav")
    with pytest.raises(ValueError, match=r"^must start with gs://$"):
        split_gcs_uri("https://b/x")


def test_encoded_jobs_are_camel_case_and_leave_out_what_is_unset() -> None:
    data, _ = encode(Job(job_id="j", track_id="t", source_uri="gs://bkt/a.wav"))
    body = json.loads(data)
    assert "jobId" in body
    assert "job_id" not in body
    assert None not in body.values()
    assert "outputUri" not in body


def test_a_message_of_exactly_the_size_limit_is_read_and_one_byte_more_is_not() -> None:
    def body(padding: int) -> bytes:
        fields = {**BASE, "sourceUri": "gs://bkt/a.wav", "padding": "x" * padding}
        return json.dumps(fields).encode()

    at_limit = body(MAX_MESSAGE_BYTES - len(body(0)))
    assert len(at_limit) == MAX_MESSAGE_BYTES
    assert decode_job(at_limit).job_id == "j"
    with pytest.raises(ContractError, match="more than the 1000000 accepted"):
        decode_job(body(MAX_MESSAGE_BYTES - len(body(0)) + 1))


def test_a_body_that_is_not_an_object_names_what_it_is() -> None:
    with pytest.raises(ContractError, match="must be a JSON object, got list"):
        decode_job(b"[1, 2]")


def test_every_problem_is_named_in_one_message() -> None:
    with pytest.raises(ContractError) as caught:
        decode_job(json.dumps({"schemaVersion": 1, "jobId": "", "trackId": ""}).encode())
    assert str(caught.value) == "; ".join(f"{p.field}: {p.reason}" for p in caught.value.problems)
    assert [p.field for p in caught.value.problems] == ["jobId", "trackId", "sourceUri"]


def test_a_rule_across_fields_is_reported_against_the_body() -> None:
    body = {**BASE, "sourceUri": "gs://bkt/a.wav", "stems": ["vocals", "vocals"]}
    with pytest.raises(ContractError) as caught:
        decode_job(json.dumps(body).encode())
    assert [(p.field, p.reason) for p in caught.value.problems] == [
        ("body", "Value error, stems: names must be unique")
    ]
