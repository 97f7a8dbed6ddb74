"""The error taxonomy of a job. The class decides the disposition, nothing else does.

::

    StemError
    ├── PermanentError          retrying cannot help → stems.failed(final) + stem-dlq + ack
    │   ├── InvalidMessage          invalid_message     body is not a valid v1 Job
    │   ├── BucketNotAllowed        bucket_not_allowed  source/output outside STEM_ALLOWED_BUCKETS
    │   ├── SourceMissing           source_missing      the source object does not exist
    │   ├── AudioTooLarge           audio_too_large     object over STEM_MAX_AUDIO_BYTES
    │   ├── AudioTooLong            audio_too_long      duration over STEM_MAX_AUDIO_SECONDS
    │   ├── UnsupportedAudio        unsupported_audio   not wav/mp3/flac
    │   ├── CorruptAudio            corrupt_audio       the decoder cannot read it
    │   └── StemNotInModel          stem_not_in_model   a requested stem the model lacks
    ├── JobCancelled            cancelled    its cancel marker exists → stems.failed(final) + ack
    ├── TransientError          may pass on redelivery → stems.failed(final on last attempt) + nack
    │   ├── StorageUnavailable      storage_unavailable GCS errors left after in-job retries
    │   ├── ChecksumMismatch        checksum_mismatch   downloaded bytes differ from crc32c
    │   ├── JobTimeout              job_timeout         over STEM_JOB_TIMEOUT_S
    │   ├── DeviceOutOfMemory       device_oom          GPU out of memory
    │   ├── PublishFailed           publish_failed      a result event was not confirmed
    │   └── WorkerShutdown          worker_shutdown     SIGTERM's grace ran out mid-job
    └── FatalWorkerError        the worker itself is broken → nack and exit non-zero
        └── ModelLoadError          model_load_failed

Any other exception escaping a job is treated as transient (``internal_error``): Pub/Sub's
delivery-attempt limit bounds the retries and then dead-letters the message.
"""

from __future__ import annotations

from typing import ClassVar

__all__ = [
    "AudioTooLarge",
    "AudioTooLong",
    "BucketNotAllowed",
    "ChecksumMismatch",
    "CorruptAudio",
    "DeviceOutOfMemory",
    "FatalWorkerError",
    "InvalidMessage",
    "JobCancelled",
    "JobTimeout",
    "ModelLoadError",
    "PermanentError",
    "PublishFailed",
    "SourceMissing",
    "StemError",
    "StemNotInModel",
    "StorageUnavailable",
    "TransientError",
    "UnsupportedAudio",
    "WorkerShutdown",
]


class StemError(Exception):
    """Base of every error a job can end with; ``code`` is what goes on the wire."""

    code: ClassVar[str] = "internal_error"
    retryable: ClassVar[bool] = True

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class PermanentError(StemError):
    retryable = False


class InvalidMessage(PermanentError):
    code = "invalid_message"


class BucketNotAllowed(PermanentError):
    code = "bucket_not_allowed"


class SourceMissing(PermanentError):
    code = "source_missing"


class AudioTooLarge(PermanentError):
    code = "audio_too_large"


class AudioTooLong(PermanentError):
    code = "audio_too_long"


class UnsupportedAudio(PermanentError):
    code = "unsupported_audio"


class CorruptAudio(PermanentError):
    code = "corrupt_audio"


class StemNotInModel(PermanentError):
    code = "stem_not_in_model"


class JobCancelled(StemError):
    """Somebody cancelled the job (``stemctl jobs cancel``, ``JobPublisher.cancel``): it
    ends as asked — no stems, no retry, and nothing to dead-letter."""

    code = "cancelled"
    retryable = False


class TransientError(StemError):
    retryable = True


class StorageUnavailable(TransientError):
    code = "storage_unavailable"


class ChecksumMismatch(TransientError):
    code = "checksum_mismatch"


class JobTimeout(TransientError):
    code = "job_timeout"


class DeviceOutOfMemory(TransientError):
    code = "device_oom"


class PublishFailed(TransientError):
    code = "publish_failed"


class WorkerShutdown(TransientError):
    """The worker is shutting down and the grace period ran out before the job finished."""

    code = "worker_shutdown"


class FatalWorkerError(StemError):
    """The worker cannot go on (its model, its device); the job itself may be fine."""

    code = "worker_fatal"
    retryable = True


class ModelLoadError(FatalWorkerError):
    code = "model_load_failed"
