"""Wire contract v1: the job and the result events, as frozen pydantic models.

Python names are snake_case; the wire is camelCase (``job.job_id`` ↔ ``"jobId"``). Readers
ignore unknown fields so producers can add fields in a rolling upgrade; required fields and
value ranges are strict.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any, Final, Literal
from urllib.parse import unquote

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    SerializationInfo,
    SerializerFunctionWrapHandler,
    StringConstraints,
    model_serializer,
    model_validator,
)
from pydantic.alias_generators import to_camel

__all__ = [
    "CLIP_MODES",
    "COMPLEMENT_PREFIX",
    "CONTENT_TYPES",
    "DEFAULT_MODEL",
    "FORMATS",
    "HTDEMUCS_6S_STEMS",
    "ID_PATTERN",
    "KNOWN_MODEL_STEMS",
    "SAMPLE_FORMATS",
    "SCHEMA_VERSION",
    "ErrorInfo",
    "GcsUri",
    "Job",
    "ResultEvent",
    "SourceInfo",
    "StemFile",
    "StemsFailed",
    "StemsProcessed",
    "StemsProcessing",
    "StemsProgress",
    "Usage",
    "complement_of",
    "model_version",
    "split_gcs_uri",
]

SCHEMA_VERSION: Final = 1
DEFAULT_MODEL: Final = "htdemucs_6s"
ID_PATTERN: Final = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
FORMATS: Final = ("mp3", "wav", "flac")
CONTENT_TYPES: Final[dict[str, str]] = {
    "mp3": "audio/mpeg",
    "wav": "audio/wav",
    "flac": "audio/flac",
}
"""Content type of each audio format, for staged sources and written stems."""
HTDEMUCS_6S_STEMS: Final = ("drums", "bass", "other", "vocals", "guitar", "piano")
"""The sources of ``htdemucs_6s``, in the model's own order."""
KNOWN_MODEL_STEMS: Final[dict[str, tuple[str, ...]]] = {
    "htdemucs_6s": HTDEMUCS_6S_STEMS,
    "htdemucs": ("drums", "bass", "other", "vocals"),
    "htdemucs_ft": ("drums", "bass", "other", "vocals"),
}
"""Sources of the models the contract knows; other models are checked by the worker."""

# --- output options (issue 18) -----------------------------------------------------------
COMPLEMENT_PREFIX: Final = "no_"
"""``no_<source>`` names the sum of the model's other sources (Demucs' ``add`` method)."""
SAMPLE_FORMATS: Final[dict[str, tuple[str, ...]]] = {
    "pcm16": ("mp3", "wav", "flac"),
    "pcm24": ("wav", "flac"),
    "float32": ("wav",),
}
"""Each ``sampleFormat`` and the formats that can hold it (mp3 is always fed 16-bit PCM)."""
CLIP_MODES: Final = ("rescale", "clamp", "none")
"""``clipMode``: Demucs' ``--clip-mode`` (``none`` only for float32, which can hold it)."""
_MIN_OUTPUT_RATE: Final = 8_000
_MAX_OUTPUT_RATE: Final = 192_000
_MP3_RATES: Final = (32_000, 44_100, 48_000)


def complement_of(stem: str) -> str | None:
    """The source a complement stem leaves out (``no_vocals`` → ``vocals``), else ``None``."""
    return stem[len(COMPLEMENT_PREFIX) :] if stem.startswith(COMPLEMENT_PREFIX) else None


_BUCKET = re.compile(r"^[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]$")


def split_gcs_uri(uri: str) -> tuple[str, str]:
    """Split ``gs://bucket/path`` into ``(bucket, path)``; ``path`` may be empty."""
    if not uri.startswith("gs://"):
        raise ValueError("must start with gs://")
    bucket, _, path = uri[len("gs://") :].partition("/")
    return bucket, path


def _check_gcs_uri(uri: str) -> str:
    bucket, path = split_gcs_uri(uri)
    if not _BUCKET.match(bucket) or ".." in bucket:
        raise ValueError(f"bucket name {bucket!r} is not a valid GCS bucket name")
    if not path.strip("/"):
        raise ValueError("must name an object or prefix after the bucket (gs://bucket/path)")
    # Object paths are joined under prefixes by the worker: refuse anything that could
    # climb out of one, including percent-encoded forms and control characters.
    decoded = unquote(path)
    if decoded.startswith("/") or "\\" in decoded:
        raise ValueError("object path must be relative (no leading '/', no backslashes)")
    if any(segment in (".", "..") for segment in decoded.split("/")):
        raise ValueError("object path must not contain '.' or '..' segments")
    if "%2f" in path.lower() or "%5c" in path.lower():
        raise ValueError("object path must not contain encoded slashes")
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in decoded):
        raise ValueError("object path must not contain control characters")
    if len(path.encode()) > 1024:
        raise ValueError("object path is longer than GCS allows (1024 bytes)")
    return uri


GcsUri = Annotated[str, AfterValidator(_check_gcs_uri)]
"""``gs://bucket/object`` with a valid bucket name and a path that cannot escape its prefix."""

Identifier = Annotated[str, StringConstraints(pattern=ID_PATTERN)]
StemName = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{0,31}$")]
ModelName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")]
Sha256 = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]


def model_version(model: str) -> str:
    """The ``modelVersion`` of a model: ``htdemucs_6s`` → ``demucs-htdemucs-6s``."""
    return "demucs-" + model.replace("_", "-")


def _is_none(value: object) -> bool:
    return value is None


def _unset(description: str | None = None) -> Any:
    """An optional field that is left out of the JSON when it is ``None`` ("not given").

    Every other ``None`` is written as ``null``: it says something (e.g. ``loudnessLufs``
    null = nothing to measure, ``costUsd`` null = no price known).
    """
    return Field(default=None, exclude_if=_is_none, description=description)


class _Wire(BaseModel):
    model_config = ConfigDict(
        frozen=True,
        extra="ignore",
        alias_generator=to_camel,
        validate_by_name=True,
        validate_by_alias=True,
        serialize_by_alias=True,
        str_strip_whitespace=False,
    )


class Job(_Wire):
    """A separation job, published to ``stem-separate``."""

    schema_version: Literal[1] = SCHEMA_VERSION
    job_id: Identifier
    track_id: Identifier
    source_uri: GcsUri = Field(description="gs://bucket/object of a wav, mp3 or flac file")
    output_uri: GcsUri | None = _unset(
        "gs://bucket/prefix for the stems; default gs://$STEM_OUTPUT_BUCKET/stems/{trackId}/{jobId}"
    )
    model: ModelName = DEFAULT_MODEL
    stems: tuple[StemName, ...] | None = _unset(
        "subset of the model's sources, and complements no_<source> (the sum of the other "
        "sources); default all sources"
    )
    format: Literal["mp3", "wav", "flac"] = "mp3"
    mp3_bitrate: Literal[96, 112, 128, 160, 192, 224, 256, 320] = Field(
        default=320,
        description="kbit/s, CBR; an MPEG-1 Layer III bitrate from 96 to 320 (LAME would "
        "silently round any other value)",
    )
    correlation_id: Annotated[str, StringConstraints(max_length=256)] | None = _unset()
    submitted_at: AwareDatetime | None = _unset()

    # --- round 2, reuse (DESIGN.md "Reuse") ---------------------------------------------
    reuse: bool = Field(
        default=True,
        description="may be answered by server-side copies of an earlier job's stems with "
        "the same reuse key (same source bytes, model, format, bitrate, stems and worker "
        "settings); false always separates",
    )

    # --- output options (issue 18) --------------------------------------------------------
    sample_format: Literal["pcm16", "pcm24", "float32"] = Field(
        default="pcm16",
        description="sample format of wav/flac stems: pcm16, pcm24 (wav, flac), float32 (wav)",
    )
    clip_mode: Literal["rescale", "clamp", "none"] = Field(
        default="rescale",
        description="what keeps a stem within full scale (Demucs' --clip-mode): rescale a stem "
        "that would clip by its peak (the default, as Demucs' writer), clamp its samples, or "
        "none (float32 only)",
    )
    sample_rate: (
        Literal["source"] | Annotated[int, Field(ge=_MIN_OUTPUT_RATE, le=_MAX_OUTPUT_RATE)] | None
    ) = _unset(
        "sample rate of the stems: absent = the model's, \"source\" = the source file's, or "
        "a rate in Hz (mp3: 32000, 44100 or 48000)"
    )

    @model_validator(mode="after")
    def _check_output_options(self) -> Job:
        if self.format not in SAMPLE_FORMATS[self.sample_format]:
            raise ValueError(
                f"sampleFormat: {self.sample_format} is not available for {self.format} "
                f"(only {', '.join(SAMPLE_FORMATS[self.sample_format])})"
            )
        if self.clip_mode == "none" and self.sample_format != "float32":
            raise ValueError(
                f"clipMode: none needs sampleFormat float32 ({self.sample_format} cannot "
                "hold samples beyond full scale)"
            )
        if (
            self.format == "mp3"
            and isinstance(self.sample_rate, int)
            and self.sample_rate not in _MP3_RATES
        ):
            raise ValueError(
                f"sampleRate: mp3 stems need 32000, 44100 or 48000 Hz, not {self.sample_rate}"
            )
        return self

    @model_validator(mode="after")
    def _check_stems(self) -> Job:
        if self.stems is None:
            return self
        if not self.stems:
            raise ValueError("stems: must name at least one stem when given")
        if len(set(self.stems)) != len(self.stems):
            raise ValueError("stems: names must be unique")
        known = KNOWN_MODEL_STEMS.get(self.model)
        if known is not None:
            unknown = [s for s in self.stems if (complement_of(s) or s) not in known]
            if unknown:
                raise ValueError(
                    f"stems: {', '.join(unknown)} not in model {self.model} "
                    f"(has {', '.join(known)}, and no_<source> for each)"
                )
        return self


class _Event(_Wire):
    schema_version: Literal[1] = SCHEMA_VERSION
    job_id: Identifier
    track_id: Identifier
    correlation_id: str | None = _unset()
    attempt: int = Field(ge=1, description="the Pub/Sub delivery attempt this event is from")


class StemsProcessing(_Event):
    """A worker started attempt ``attempt`` of the job."""

    event_type: Literal["stems.processing"] = "stems.processing"


class StemFile(_Wire):
    """One stem object written to GCS."""

    name: StemName
    uri: GcsUri
    format: Literal["mp3", "wav", "flac"]
    content_type: str
    size_bytes: int = Field(ge=0)
    duration_seconds: float = Field(ge=0)
    sample_rate: int = Field(gt=0)
    channels: int = Field(gt=0)
    sha256: Sha256

    # --- output options (issue 18) --------------------------------------------------------
    sample_format: Literal["pcm16", "pcm24", "float32"] | None = _unset(
        "sample format of a wav/flac stem; absent for mp3 (and in manifests written before "
        "it existed, which are pcm16)"
    )

    # --- stem analysis (round 2; absent from stems written before it) -------------------
    loudness_lufs: float | None = Field(
        default=None,
        description="integrated loudness, ITU-R BS.1770-4 (LUFS); null when the gate "
        "leaves no 400 ms block (silence, or shorter than one block)",
    )
    peak_dbfs: float | None = Field(
        default=None, description="sample peak (dBFS); null for digital silence"
    )
    silent: bool | None = _unset(
        "loudness null or below the worker's STEM_SILENCE_LUFS: not worth showing; "
        "absent only on stems written before analysis existed"
    )
    peaks_uri: GcsUri | None = _unset(
        "{outputUri}/{name}.peaks.json: waveform min/max pairs in BBC audiowaveform JSON "
        "(version 2, 8 bits)"
    )

    @model_serializer(mode="wrap")
    def _leave_out_unmeasured(
        self, handler: SerializerFunctionWrapHandler, info: SerializationInfo
    ) -> Any:
        """A stem written before analysis existed has no measures to state: its
        ``loudnessLufs``/``peakDbfs`` are left out rather than written as null."""
        data = handler(self)
        if self.silent is None and isinstance(data, dict):
            for key in ("loudness_lufs", "loudnessLufs", "peak_dbfs", "peakDbfs"):
                data.pop(key, None)
        return data


class Usage(_Wire):
    """What an attempt used, and what it cost when the worker knows its node's price."""

    audio_seconds: float | None = Field(
        ge=0, description="duration of the source; null when it was never decoded"
    )
    device_seconds: float = Field(
        ge=0, description="separation wall time on the device (0 when no separation ran)"
    )
    worker_seconds: float = Field(ge=0, description="wall time of the whole attempt")
    device: str = Field(description="e.g. cpu, cuda:NVIDIA H100 80GB HBM3")
    cost_usd: float | None = Field(
        ge=0,
        description="worker_seconds x STEM_COST_PER_HOUR / 3600; null without a price",
    )


class SourceInfo(_Wire):
    """The source audio as decoded."""

    uri: GcsUri
    duration_seconds: float = Field(ge=0)
    sample_rate: int = Field(gt=0)
    channels: int = Field(gt=0)


class StemsProcessed(_Event):
    """The stems are in GCS; ``manifest.json`` beside them holds this same body."""

    event_type: Literal["stems.processed"] = "stems.processed"
    model_version: str = Field(pattern=r"^demucs-[A-Za-z0-9.-]+$")
    stems: tuple[StemFile, ...] = Field(min_length=1)
    source: SourceInfo
    processing_time_ms: int = Field(ge=0)
    completed_at: datetime
    usage: Usage | None = _unset("what the attempt used; absent from events before round 2")

    # --- round 2, reuse (DESIGN.md "Reuse") ---------------------------------------------
    reused_from: Identifier | None = _unset(
        "jobId of the earlier job whose stems were copied for this one; absent when the "
        "stems were separated for this job"
    )


class ErrorInfo(_Wire):
    """Why a job attempt failed."""

    code: Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{0,63}$")]
    message: str
    retryable: bool


class StemsFailed(_Event):
    """An attempt failed; ``final`` is true when no further attempt will follow."""

    event_type: Literal["stems.failed"] = "stems.failed"
    error: ErrorInfo
    final: bool
    failed_at: datetime
    usage: Usage | None = _unset("what the attempt used; absent from events before round 2")


class StemsProgress(_Event):
    """How far separation of attempt ``attempt`` has got (at most one per
    ``STEM_PROGRESS_INTERVAL_S``; informational, may be dropped or arrive out of order
    with other events — order by ``percent`` within an attempt)."""

    event_type: Literal["stems.progress"] = "stems.progress"
    percent: float = Field(ge=0, le=100)
    reported_at: datetime


ResultEvent = Annotated[
    StemsProcessing | StemsProgress | StemsProcessed | StemsFailed,
    Field(discriminator="event_type"),
]
"""Any event on ``stem-results``, discriminated by ``eventType``."""
