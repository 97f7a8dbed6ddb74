"""The one typed settings object of the fleet.

Built once at start-up (``Settings()`` reads the environment) and passed down; nothing
else in ``consumer`` or ``infra`` reads ``os.environ``. Every field is documented with its
default. Names are promises to operators: extend, never rename.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import AliasChoices, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from stem_contracts import topics

__all__ = ["Settings"]


class Settings(BaseSettings):
    """Worker, CLI and provisioning settings (environment, prefix ``STEM_``)."""

    model_config = SettingsConfigDict(
        env_prefix="STEM_", frozen=True, extra="ignore", validate_by_name=True
    )

    # --- standard Google variables (no prefix) -------------------------------------------
    project: str | None = Field(
        default=None,
        validation_alias=AliasChoices("GOOGLE_CLOUD_PROJECT", "STEM_PROJECT"),
        description="GOOGLE_CLOUD_PROJECT: the project holding topics and subscriptions. "
        "Default: unset (commands that need it fail with a clear error).",
    )
    pubsub_emulator_host: str | None = Field(
        default=None,
        validation_alias="PUBSUB_EMULATOR_HOST",
        description="PUBSUB_EMULATOR_HOST: host:port of the Pub/Sub emulator. Default: unset "
        "(real Pub/Sub). The client library reads it too.",
    )
    storage_emulator_host: str | None = Field(
        default=None,
        validation_alias="STORAGE_EMULATOR_HOST",
        description="STORAGE_EMULATOR_HOST: URL of fake-gcs-server. Default: unset (real GCS).",
    )

    # --- OpenTelemetry (standard variables; the SDK reads the rest, e.g. headers) ----------
    otel_traces_exporter: Literal["otlp", "console", "none"] | None = Field(
        default=None,
        validation_alias="OTEL_TRACES_EXPORTER",
        description="OTEL_TRACES_EXPORTER: otlp, console or none. Default: otlp when an OTLP "
        "endpoint is set, else none.",
    )
    otel_exporter_otlp_endpoint: str | None = Field(
        default=None,
        validation_alias=AliasChoices(
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"
        ),
        description="OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT: where spans go. Default: unset.",
    )
    otel_service_name: str = Field(
        "stem-fleet-worker",
        validation_alias="OTEL_SERVICE_NAME",
        description="OTEL_SERVICE_NAME: the service name on spans (stem-fleet-worker).",
    )

    # --- topics and subscriptions ---------------------------------------------------------
    jobs_topic: str = Field(topics.JOBS_TOPIC, description="STEM_JOBS_TOPIC (stem-separate).")
    jobs_subscription: str = Field(
        topics.JOBS_SUBSCRIPTION, description="STEM_JOBS_SUBSCRIPTION (stem-separate)."
    )
    results_topic: str = Field(
        topics.RESULTS_TOPIC, description="STEM_RESULTS_TOPIC (stem-results)."
    )
    dlq_topic: str = Field(topics.DLQ_TOPIC, description="STEM_DLQ_TOPIC (stem-dlq).")
    dlq_subscription: str = Field(
        topics.DLQ_SUBSCRIPTION, description="STEM_DLQ_SUBSCRIPTION (stem-dlq)."
    )

    # --- round 2, uploads as a job source (DESIGN.md "Uploads as a job source") -----------
    uploads_topic: str = Field(
        topics.UPLOADS_TOPIC,
        description="STEM_UPLOADS_TOPIC: where GCS notifies finalised uploads (stem-uploads).",
    )
    uploads_subscription: str = Field(
        topics.UPLOADS_SUBSCRIPTION,
        description="STEM_UPLOADS_SUBSCRIPTION: `stemctl intake`'s subscription (stem-uploads).",
    )
    uploads_prefix: str = Field(
        "incoming/",
        description="STEM_UPLOADS_PREFIX: objects of STEM_STAGING_BUCKET under this prefix "
        "become jobs (incoming/).",
    )

    # --- buckets --------------------------------------------------------------------------
    staging_bucket: str = Field(
        "stem-staging", description="STEM_STAGING_BUCKET: where `submit FILE` stages audio."
    )
    output_bucket: str = Field(
        "stem-output", description="STEM_OUTPUT_BUCKET: default home of the stems."
    )
    # --- retention (issue 18) ---------------------------------------------------------------
    staging_retention_days: int = Field(
        8,
        ge=8,
        description="STEM_STAGING_RETENTION_DAYS: staged sources are deleted after this many "
        "days (a lifecycle rule). Default 8: more than the 7 days a dead letter is kept, "
        "since `stemctl dlq replay` re-runs a job from its staged source.",
    )
    output_retention_days: int | None = Field(
        None,
        ge=1,
        description="STEM_OUTPUT_RETENTION_DAYS: stems are deleted after this many days. "
        "Default: unset = kept (the catalog owns them). Cancel markers (_cancel/) are "
        "always deleted after a day.",
    )
    allowed_buckets: Annotated[frozenset[str], NoDecode] = Field(
        default=frozenset(),
        description="STEM_ALLOWED_BUCKETS: comma list of buckets jobs may read or write. "
        "Default: empty = any bucket.",
    )

    # --- model ----------------------------------------------------------------------------
    model: str = Field("htdemucs_6s", description="STEM_MODEL: Demucs model name.")
    model_repo: Path | None = Field(
        None,
        description="STEM_MODEL_REPO: a local Demucs model folder. Default: unset = hub/cache.",
    )
    device: Literal["auto", "cuda", "cpu"] = Field(
        "auto", description="STEM_DEVICE: auto picks cuda when available."
    )
    segment_overlap: float = Field(
        0.25, ge=0.0, lt=1.0, description="STEM_SEGMENT_OVERLAP: overlap between segments."
    )
    segment_seconds: float | None = Field(
        None,
        gt=0,
        description="STEM_SEGMENT_SECONDS: length of one segment (Demucs' --segment). Default: "
        "unset = the model's own (7.8 s for htdemucs_6s, its maximum). Shorter segments cost "
        "as much each (HTDemucs pads them) but make a cancel take effect sooner.",
    )
    shifts: int = Field(
        0,
        ge=0,
        le=10,
        description="STEM_SHIFTS: random-shift averaging passes (0 = deterministic, "
        "each extra pass costs one more separation).",
    )

    # --- limits ---------------------------------------------------------------------------
    max_audio_seconds: float = Field(
        1200.0, gt=0, description="STEM_MAX_AUDIO_SECONDS: longest accepted track (20 min)."
    )
    max_audio_bytes: int = Field(
        500 * 1024 * 1024, gt=0, description="STEM_MAX_AUDIO_BYTES: largest source (500 MiB)."
    )
    job_timeout_s: float = Field(
        900.0,
        gt=0,
        description="STEM_JOB_TIMEOUT_S: a job running longer is stopped "
        "and retried (transient). Default 900 s.",
    )
    shutdown_grace_s: float = Field(
        60.0, ge=0, description="STEM_SHUTDOWN_GRACE_S: time in-flight jobs get on SIGTERM."
    )
    max_delivery_attempts: int = Field(
        5,
        ge=5,
        le=100,
        description="STEM_MAX_DELIVERY_ATTEMPTS: deliveries before Pub/Sub dead-letters (5-100).",
    )

    # --- subscription shape (extensions, used by `infra apply`) ---------------------------
    ack_deadline_s: int = Field(
        60,
        ge=10,
        le=600,
        description="STEM_ACK_DEADLINE_S: the subscription's ack deadline. The worker's lease "
        "manager extends it while a job runs, so a dead worker's message is redelivered "
        "after at most this long. Default 60 s.",
    )
    min_retry_backoff_s: int = Field(
        10, ge=0, le=600, description="STEM_MIN_RETRY_BACKOFF_S: retry_policy minimum (10 s)."
    )
    max_retry_backoff_s: int = Field(
        300, ge=0, le=600, description="STEM_MAX_RETRY_BACKOFF_S: retry_policy maximum (300 s)."
    )

    # --- worker ---------------------------------------------------------------------------
    max_in_flight: int = Field(
        2,
        ge=1,
        le=64,
        description="STEM_MAX_IN_FLIGHT: messages leased at once. 2 = one separating while the "
        "next downloads and decodes.",
    )
    encode_workers: int = Field(
        0,
        ge=0,
        le=256,
        description="STEM_ENCODE_WORKERS: stems encoded in parallel (0 = one per CPU core).",
    )
    mp3_quality: int = Field(
        3,
        ge=0,
        le=9,
        description="STEM_MP3_QUALITY: LAME's -q for MP3 stems (0 best/slowest, 9 fastest). "
        "Default 3: half the encoding CPU of Demucs' own writer (-q 2) with no SNR or "
        "spectral loss measured (`python -m bench costs`); it drops -q 2's substep noise "
        "shaping. The bitrate (CBR) is the job's; this only trades encoder effort for CPU.",
    )
    segment_batch: int = Field(
        0,
        ge=0,
        le=256,
        description="STEM_SEGMENT_BATCH: 7.8 s segments per forward pass (0 = chosen for the "
        "device: measured against free memory on CUDA, 1 on CPU).",
    )
    precision: Literal["fp32", "bf16", "fp16"] = Field(
        "fp32",
        description="STEM_PRECISION: fp32 (default: stems equal Demucs' own), or bf16 "
        "(autocast on CUDA or a CPU, or OpenVINO's bf16 with STEM_CPU_RUNTIME=openvino) or "
        "fp16 (autocast, CUDA only): faster where the device has the instructions, stems "
        "close to fp32 but not equal (`python -m bench cpu-path`, bench/gpu_check.sh).",
    )
    cpu_runtime: Literal["torch", "openvino"] = Field(
        "torch",
        description="STEM_CPU_RUNTIME: what runs the model's network on a CPU: torch "
        "(default) or openvino (compiled at start-up; needs the `openvino` extra; the "
        "STFT/iSTFT stay in torch; bf16 with STEM_PRECISION=bf16). Ignored on CUDA.",
    )
    metrics_port: int = Field(
        9090,
        ge=0,
        le=65535,
        description="STEM_METRICS_PORT: /metrics, /healthz, /readyz (0 = off).",
    )
    progress_interval_s: float = Field(
        5.0, ge=0, description="STEM_PROGRESS_INTERVAL_S: stems.progress cadence (0 = off)."
    )

    # --- what the catalog and finance get with each job -----------------------------------
    silence_lufs: float = Field(
        -50.0,
        ge=-70,
        le=0,
        description="STEM_SILENCE_LUFS: a stem quieter than this (integrated loudness) is "
        "reported silent: true (-50; the BS.1770 absolute gate is -70).",
    )
    waveform_points: int = Field(
        2000,
        ge=10,
        le=100_000,
        description="STEM_WAVEFORM_POINTS: about this many min/max pairs per track in each "
        "stem's peaks.json (2000).",
    )
    cost_per_hour: float | None = Field(
        None,
        ge=0,
        description="STEM_COST_PER_HOUR: the node's price in USD per hour; usage.costUsd = "
        "workerSeconds x this / 3600 (unset: costUsd is null).",
    )

    @field_validator("allowed_buckets", mode="before")
    @classmethod
    def _split_comma_list(cls, value: object) -> object:
        if isinstance(value, str):
            return frozenset(part.strip() for part in value.split(",") if part.strip())
        return value

    @model_validator(mode="after")
    def _check_backoff(self) -> Settings:
        if self.min_retry_backoff_s > self.max_retry_backoff_s:
            raise ValueError("STEM_MIN_RETRY_BACKOFF_S must not exceed STEM_MAX_RETRY_BACKOFF_S")
        return self

    @model_validator(mode="after")
    def _check_inference(self) -> Settings:
        # What the separator would refuse at start-up, said in the operator's words.
        if self.precision == "fp16" and self.device == "cpu":
            raise ValueError("STEM_PRECISION=fp16 needs CUDA; on a CPU use fp32 or bf16")
        if self.cpu_runtime == "openvino":
            if self.precision == "fp16":
                raise ValueError("STEM_CPU_RUNTIME=openvino runs STEM_PRECISION fp32 or bf16")
            if self.shifts:
                raise ValueError("STEM_CPU_RUNTIME=openvino needs STEM_SHIFTS=0")
        return self

    @property
    def max_lease_s(self) -> float:
        """How long the worker keeps a message leased: the job timeout plus slack to report."""
        return self.job_timeout_s + 120.0

    @property
    def using_emulators(self) -> bool:
        return self.pubsub_emulator_host is not None

    def require_project(self) -> str:
        """The project id, or a clear error when it is not configured."""
        if not self.project:
            raise RuntimeError(
                "GOOGLE_CLOUD_PROJECT is not set (for the emulator any id will do, "
                "e.g. GOOGLE_CLOUD_PROJECT=stem-local)"
            )
        return self.project

    def bucket_allowed(self, bucket: str) -> bool:
        return not self.allowed_buckets or bucket in self.allowed_buckets
