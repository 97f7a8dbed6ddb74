"""stem-contracts: the wire contract of the stem-fleet separation service.

Install it alone (no torch, no demucs) to submit jobs and receive results::

    from stem_contracts import Job, JobPublisher, ResultSubscriber, StemsProcessed
"""

from stem_contracts import topics
from stem_contracts.codec import ContractError, FieldProblem, decode_event, decode_job, encode
from stem_contracts.models import (
    CLIP_MODES,
    COMPLEMENT_PREFIX,
    CONTENT_TYPES,
    DEFAULT_MODEL,
    HTDEMUCS_6S_STEMS,
    ID_PATTERN,
    SAMPLE_FORMATS,
    SCHEMA_VERSION,
    ErrorInfo,
    Job,
    ResultEvent,
    SourceInfo,
    StemFile,
    StemsFailed,
    StemsProcessed,
    StemsProcessing,
    StemsProgress,
    Usage,
    complement_of,
    model_version,
    split_gcs_uri,
)
from stem_contracts.publisher import (
    CANCEL_PREFIX,
    JobPublisher,
    StagingError,
    SubmittedJob,
    cancel_marker_name,
    crc32c_b64,
)
from stem_contracts.subscriber import ResultSubscriber

__all__ = [
    "CANCEL_PREFIX",
    "CLIP_MODES",
    "COMPLEMENT_PREFIX",
    "CONTENT_TYPES",
    "DEFAULT_MODEL",
    "HTDEMUCS_6S_STEMS",
    "ID_PATTERN",
    "SAMPLE_FORMATS",
    "SCHEMA_VERSION",
    "ContractError",
    "ErrorInfo",
    "FieldProblem",
    "Job",
    "JobPublisher",
    "ResultEvent",
    "ResultSubscriber",
    "SourceInfo",
    "StagingError",
    "StemFile",
    "StemsFailed",
    "StemsProcessed",
    "StemsProcessing",
    "StemsProgress",
    "SubmittedJob",
    "Usage",
    "cancel_marker_name",
    "complement_of",
    "crc32c_b64",
    "decode_event",
    "decode_job",
    "encode",
    "model_version",
    "split_gcs_uri",
    "topics",
]
