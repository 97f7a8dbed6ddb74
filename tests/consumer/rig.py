"""The handler on in-memory fakes, for the tests of ``consumer.handler`` and what it runs.

Real audio decoding and encoding run on a one-second generated clip; storage, Pub/Sub and
the model are the fakes in ``tests/support/fakes.py``. ``make_rig`` and ``rig`` are
fixtures (tests/consumer/conftest.py).
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf

from consumer.handler import Delivery, JobHandler, Outcome
from consumer.settings import Settings
from consumer.telemetry import Metrics
from devkit.synth import multi_instrument_mix
from stem_contracts import Job, StemsFailed, StemsProcessed, encode
from tests.support.fakes import CountingSeparator, InMemoryBlobStore, RecordingEventPublisher

OUTPUT_BUCKET = "stem-output"
STAGING = "gs://stem-staging/uploads"
SOURCE = f"{STAGING}/track-1.wav"
CORRUPT = f"{STAGING}/corrupt.wav"
OGG = f"{STAGING}/track.ogg"
MISSING = f"{STAGING}/missing.wav"
DEFAULT_PREFIX = f"gs://{OUTPUT_BUCKET}/stems/track-1/job-1"


@pytest.fixture(scope="module")
def wav_bytes() -> bytes:
    """One second of the generated multi-instrument mix, 16-bit stereo wav at 44.1 kHz."""
    buffer = io.BytesIO()
    sf.write(buffer, multi_instrument_mix(1.0).T, 44100, subtype="PCM_16", format="WAV")
    return buffer.getvalue()


@dataclass
class Rig:
    """A handler wired to fakes, and what a test needs to look at afterwards."""

    handler: JobHandler
    store: InMemoryBlobStore
    events: RecordingEventPublisher
    separator: CountingSeparator
    workdir: Path

    def handle(
        self,
        job: Job | bytes,
        *,
        attempt: int = 1,
        stop_requested: Callable[[], bool] = lambda: False,
        **attributes: str,
    ) -> Outcome:
        return self.handler.handle(
            delivery(job, attempt=attempt, **attributes), stop_requested=stop_requested
        )

    def failed(self) -> StemsFailed:
        """The one stems.failed event published."""
        failed = [e for e in self.events.results if isinstance(e, StemsFailed)]
        assert len(failed) == 1, self.events.event_types
        return failed[0]

    def processed(self) -> StemsProcessed:
        """The last stems.processed event published."""
        processed = [e for e in self.events.results if isinstance(e, StemsProcessed)]
        assert processed, self.events.event_types
        return processed[-1]

    def workdir_entries(self) -> list[Path]:
        return list(self.workdir.iterdir())


MakeRig = Callable[..., Rig]


@pytest.fixture
def make_rig(tmp_path: Path, wav_bytes: bytes) -> MakeRig:
    """Build a rig; keyword arguments override ``Settings`` fields."""

    def make(
        separator: CountingSeparator | None = None,
        *,
        metrics: Metrics | None = None,
        **config: Any,
    ) -> Rig:
        workdir = tmp_path / "work"
        workdir.mkdir(exist_ok=True)
        store = InMemoryBlobStore()
        store.put(SOURCE, wav_bytes, "audio/wav")
        store.put(CORRUPT, np.random.default_rng(7).bytes(4096), "audio/wav")
        store.put(OGG, b"OggS" + bytes(4092), "audio/ogg")
        events = RecordingEventPublisher()
        separator = separator or CountingSeparator()
        handler = JobHandler(
            Settings(output_bucket=OUTPUT_BUCKET, **config),
            store=store,
            events=events,
            separator=separator,
            metrics=metrics,
            workdir=workdir,
        )
        return Rig(handler, store, events, separator, workdir)

    return make


@pytest.fixture
def rig(make_rig: MakeRig) -> Rig:
    return make_rig()


def make_job(**fields: Any) -> Job:
    defaults: dict[str, Any] = {
        "job_id": "job-1",
        "track_id": "track-1",
        "source_uri": SOURCE,
        "format": "wav",
        "correlation_id": "corr-1",
    }
    return Job(**{**defaults, **fields})


def delivery(job: Job | bytes, *, attempt: int = 1, **attributes: str) -> Delivery:
    """A delivery of ``job`` (encoded as a publisher would) or of raw body bytes."""
    if isinstance(job, Job):
        data, job_attributes = encode(job)
        attributes = {**job_attributes, **attributes}
    else:
        data = job
    return Delivery(data=data, attributes=attributes, message_id="m-1", delivery_attempt=attempt)
