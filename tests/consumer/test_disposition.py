"""The disposition of a failed job: one pure function of (error, delivery attempt), as a table.

DESIGN.md "Delivery semantics": permanent errors are dead-lettered by the worker and acked
whatever the attempt; transient and unknown errors are nacked, ``final`` on the attempt
that reaches the delivery-attempt limit; a fatal worker error retries the message and tells
the worker to exit. A cancelled job (issue 18) is acked, final, never retried or dead-lettered.
"""

from __future__ import annotations

import re

import pytest

from consumer import errors
from consumer.disposition import Action, decide
from consumer.errors import StemError, StemNotInModel, WorkerShutdown
from consumer.manifest import check_stems

D, R, A = Action.DEAD_LETTER, Action.RETRY, Action.ACK

# (error class, action, code, retryable, worker_must_exit): written out, not derived from
# the classes, so that a changed class attribute shows up as a failing row.
TABLE: list[tuple[type[Exception], Action, str, bool, bool]] = [
    (errors.InvalidMessage, D, "invalid_message", False, False),
    (errors.BucketNotAllowed, D, "bucket_not_allowed", False, False),
    (errors.SourceMissing, D, "source_missing", False, False),
    (errors.AudioTooLarge, D, "audio_too_large", False, False),
    (errors.AudioTooLong, D, "audio_too_long", False, False),
    (errors.UnsupportedAudio, D, "unsupported_audio", False, False),
    (errors.CorruptAudio, D, "corrupt_audio", False, False),
    (errors.StemNotInModel, D, "stem_not_in_model", False, False),
    (errors.JobCancelled, A, "cancelled", False, False),
    (errors.StorageUnavailable, R, "storage_unavailable", True, False),
    (errors.ChecksumMismatch, R, "checksum_mismatch", True, False),
    (errors.JobTimeout, R, "job_timeout", True, False),
    (errors.DeviceOutOfMemory, R, "device_oom", True, False),
    (errors.PublishFailed, R, "publish_failed", True, False),
    (WorkerShutdown, R, "worker_shutdown", True, False),
    (errors.FatalWorkerError, R, "worker_fatal", True, True),
    (errors.ModelLoadError, R, "model_load_failed", True, True),
    # Bases raised directly, and exceptions from outside the taxonomy.
    (StemError, R, "internal_error", True, False),
    (errors.PermanentError, D, "internal_error", False, False),
    (errors.TransientError, R, "internal_error", True, False),
    (ValueError, R, "internal_error", True, False),
    (RuntimeError, R, "internal_error", True, False),
]

# (delivery attempt, max delivery attempts): first, middle and last of the default 5, and
# both ends of Pub/Sub's largest allowed limit.
ATTEMPTS = [(1, 5), (4, 5), (5, 5), (1, 100), (100, 100)]


@pytest.mark.parametrize(("attempt", "max_attempts"), ATTEMPTS)
@pytest.mark.parametrize(
    ("error_class", "action", "code", "retryable", "must_exit"),
    TABLE,
    ids=[row[0].__name__ for row in TABLE],
)
def test_disposition_table(
    error_class: type[Exception],
    action: Action,
    code: str,
    retryable: bool,
    must_exit: bool,
    attempt: int,
    max_attempts: int,
) -> None:
    disposition = decide(error_class("boom"), attempt, max_attempts)

    assert disposition.action is action
    assert disposition.code == code
    assert disposition.retryable is retryable
    # Permanent: no attempt follows ours. Otherwise: only the attempt at the limit is final.
    expected_final = action in (D, A) or attempt >= max_attempts
    assert disposition.final is expected_final
    assert disposition.worker_must_exit is must_exit


@pytest.mark.parametrize("error_class", [errors.CorruptAudio, errors.JobTimeout])
def test_message_of_a_stem_error_is_its_own_message(error_class: type[StemError]) -> None:
    assert decide(error_class("the reason"), 1, 5).message == "the reason"


def test_message_of_an_unknown_error_names_its_type() -> None:
    assert decide(KeyError("track"), 1, 5).message == "KeyError: 'track'"


def test_table_covers_every_error_class_in_the_taxonomy() -> None:
    exported = {getattr(errors, name) for name in errors.__all__}
    assert exported <= {row[0] for row in TABLE}


def _all_subclasses(cls: type[StemError]) -> list[type[StemError]]:
    found: list[type[StemError]] = []
    for sub in cls.__subclasses__():
        found += [sub, *_all_subclasses(sub)]
    return found


def test_every_concrete_error_has_its_own_unique_snake_case_code() -> None:
    # Given every class of the tree (the handler's WorkerShutdown included, imported above)
    classes: list[type[StemError]] = [StemError, *_all_subclasses(StemError)]
    # Then the two grouping classes are the only ones without a code of their own
    abstract = {cls for cls in classes if "code" not in vars(cls)}
    assert abstract == {errors.PermanentError, errors.TransientError}
    # And every code is snake_case (ErrorInfo.code's pattern) and names one class only
    codes = [cls.code for cls in classes if cls not in abstract]
    assert all(re.fullmatch(r"[a-z][a-z0-9_]{0,63}", code) for code in codes), codes
    assert len(codes) == len(set(codes)), sorted(codes)


def test_a_stem_errors_text_is_its_message() -> None:
    error = WorkerShutdown("grace ran out")
    assert (str(error), error.message) == ("grace ran out", "grace ran out")


def test_stems_a_model_lacks_are_named_beside_the_ones_it_has() -> None:
    check_stems(["bass", "drums"], "duo", ["drums", "bass"])  # a subset: fine
    with pytest.raises(StemNotInModel) as caught:
        check_stems(["kazoo", "bass", "flute"], "duo", ["drums", "bass"])
    assert caught.value.message == (
        "stem kazoo, flute not in model duo (has drums, bass, and no_<source> for each)"
    )


def test_complement_stems_of_the_models_sources_are_known_and_others_are_not() -> None:
    """Issue 18: ``no_<source>`` for each source, in any mix with sources."""
    check_stems(["no_bass", "drums", "no_drums"], "duo", ["drums", "bass"])
    with pytest.raises(StemNotInModel) as caught:
        check_stems(["no_kazoo", "no_no_bass", "no_", "bass"], "duo", ["drums", "bass"])
    assert caught.value.message.startswith("stem no_kazoo, no_no_bass, no_ not in model duo")
