"""In-memory stand-ins for the handler's three protocols, for unit tests only.

``InMemoryBlobStore`` (``BlobStore``), ``RecordingEventPublisher`` (``EventPublisher``) and
``CountingSeparator`` (``Separator``) keep the contracts of the real adapters — the same
errors for the same situations — so a handler test exercises the handler's logic, not the
fake's. Integration tests use the real emulators instead (STYLE.md §2).
"""

from __future__ import annotations

import threading
from collections import defaultdict, deque
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt

from consumer.errors import AudioTooLarge, PublishFailed, SourceMissing
from consumer.events import ResultEvent
from consumer.separation import CancelledFn, ProgressFn, SeparationCancelled
from consumer.storage import BlobInfo
from stem_contracts import (
    HTDEMUCS_6S_STEMS,
    StemsProgress,
    crc32c_b64,
    encode,
    model_version,
    split_gcs_uri,
)

__all__ = [
    "CountingSeparator",
    "DeadLetter",
    "InMemoryBlobStore",
    "RecordingEventPublisher",
    "StoredObject",
]

Audio = npt.NDArray[np.float32]


@dataclass(frozen=True)
class StoredObject:
    data: bytes
    content_type: str
    metadata: Mapping[str, str] = field(default_factory=dict)


class _Failures:
    """Queued exceptions per method name: the next N calls of that method raise."""

    def __init__(self) -> None:
        self._queued: dict[str, deque[BaseException]] = defaultdict(deque)

    def add(self, method: str, error: BaseException, times: int) -> None:
        self._queued[method].extend([error] * times)

    def raise_if_queued(self, method: str) -> None:
        if self._queued[method]:
            raise self._queued[method].popleft()


class InMemoryBlobStore:
    """A ``BlobStore`` over a dict of ``gs://`` URIs; records every call as (method, uri)."""

    def __init__(self) -> None:
        self.objects: dict[str, StoredObject] = {}
        self.calls: list[tuple[str, str]] = []
        self._failures = _Failures()

    def fail_next(self, method: str, error: BaseException, *, times: int = 1) -> None:
        """Make the next ``times`` calls of ``method`` (e.g. ``"download"``) raise ``error``."""
        self._failures.add(method, error, times)

    def put(self, uri: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        """Store an object directly (test set-up; not recorded as a call)."""
        split_gcs_uri(uri)
        self.objects[uri] = StoredObject(data, content_type)

    def calls_of(self, method: str) -> list[str]:
        """The URIs ``method`` was called with, in order."""
        return [uri for name, uri in self.calls if name == method]

    def _enter(self, method: str, uri: str) -> None:
        split_gcs_uri(uri)  # a malformed URI is a bug in the caller, as with GCS
        self.calls.append((method, uri))
        self._failures.raise_if_queued(method)

    def _info(self, uri: str) -> BlobInfo | None:
        stored = self.objects.get(uri)
        if stored is None:
            return None
        return BlobInfo(
            uri, len(stored.data), crc32c_b64(stored.data), stored.content_type, stored.metadata
        )

    def stat(self, uri: str) -> BlobInfo | None:
        self._enter("stat", uri)
        return self._info(uri)

    def download(self, uri: str, dest: Path, *, max_bytes: int) -> BlobInfo:
        self._enter("download", uri)
        info = self._info(uri)
        if info is None:
            raise SourceMissing(f"{uri} does not exist")
        if info.size_bytes > max_bytes:
            raise AudioTooLarge(
                f"{uri} is {info.size_bytes} bytes, over STEM_MAX_AUDIO_BYTES={max_bytes}"
            )
        dest.write_bytes(self.objects[uri].data)
        return info

    def upload(
        self,
        src: Path,
        uri: str,
        *,
        content_type: str,
        metadata: Mapping[str, str] | None = None,
    ) -> BlobInfo:
        self._enter("upload", uri)
        self.objects[uri] = StoredObject(src.read_bytes(), content_type, dict(metadata or {}))
        info = self._info(uri)
        assert info is not None
        return info

    def copy(self, src_uri: str, dest_uri: str) -> BlobInfo:
        self._enter("copy", src_uri)
        stored = self.objects.get(src_uri)
        if stored is None:
            raise SourceMissing(f"{src_uri} does not exist")
        split_gcs_uri(dest_uri)
        self.objects[dest_uri] = stored
        info = self._info(dest_uri)
        assert info is not None
        return info

    def read_bytes(self, uri: str) -> bytes | None:
        self._enter("read_bytes", uri)
        stored = self.objects.get(uri)
        return None if stored is None else stored.data

    def delete(self, uri: str) -> bool:
        self._enter("delete", uri)
        return self.objects.pop(uri, None) is not None

    def write_bytes(self, uri: str, data: bytes, *, content_type: str) -> None:
        self._enter("write_bytes", uri)
        self.objects[uri] = StoredObject(data, content_type)


# Pub/Sub's own limits on attributes (https://cloud.google.com/pubsub/quotas): the real
# publisher sees them as a rejected publish, i.e. PublishFailed.
_MAX_ATTRIBUTES = 100
_MAX_KEY_BYTES = 256
_MAX_VALUE_BYTES = 1024


def _check_attributes(attributes: Mapping[str, str]) -> None:
    if len(attributes) > _MAX_ATTRIBUTES:
        raise PublishFailed(f"{len(attributes)} attributes, more than {_MAX_ATTRIBUTES}")
    for key, value in attributes.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise PublishFailed(f"attribute {key!r}: keys and values must be strings")
        if key.startswith("goog") or len(key.encode()) > _MAX_KEY_BYTES:
            raise PublishFailed(f"attribute key {key!r} is reserved or too long")
        if len(value.encode()) > _MAX_VALUE_BYTES:
            raise PublishFailed(f"attribute {key}: value over {_MAX_VALUE_BYTES} bytes")


@dataclass(frozen=True)
class DeadLetter:
    data: bytes
    attributes: dict[str, str]


class RecordingEventPublisher:
    """An ``EventPublisher`` that keeps what was published, in order.

    Every result event is encoded as the real adapter would (so an event that cannot go on
    the wire fails here too); ``fail_next`` makes the next publishes raise ``PublishFailed``.
    """

    def __init__(self) -> None:
        self.results: list[ResultEvent] = []
        self.dead_letters: list[DeadLetter] = []
        self.progress: list[StemsProgress] = []
        self._failures = _Failures()

    def fail_next(self, method: str, *, times: int = 1, event_type: str | None = None) -> None:
        """Make the next ``times`` calls of ``publish_result`` or ``dead_letter`` fail.

        With ``event_type`` (e.g. ``"stems.processed"``), only publishes of that type fail.
        """
        key = method if event_type is None else f"{method}:{event_type}"
        self._failures.add(key, PublishFailed(f"{key}: not confirmed (test)"), times)

    def publish_result(self, event: ResultEvent) -> None:
        self._failures.raise_if_queued("publish_result")
        self._failures.raise_if_queued(f"publish_result:{event.event_type}")
        _, attributes = encode(event)
        _check_attributes(attributes)
        self.results.append(event)

    def dead_letter(self, data: bytes, attributes: Mapping[str, str]) -> None:
        self._failures.raise_if_queued("dead_letter")
        _check_attributes(attributes)
        self.dead_letters.append(DeadLetter(data, dict(attributes)))

    def publish_progress(self, event: StemsProgress) -> None:
        encode(event)
        self.progress.append(event)

    @property
    def event_types(self) -> list[str]:
        return [event.event_type for event in self.results]


class CountingSeparator:
    """A ``Separator`` with ``htdemucs_6s``'s sources that returns ``mix / 6`` per source
    (or ``mix * shares[source]``, e.g. ``{"vocals": 1.0}``: the identity on vocals and
    digital silence on the others).

    ``calls`` counts ``separate`` calls. ``raises`` is raised from inside ``separate``.
    With ``block_until_cancelled``, ``separate`` waits (polling ``cancelled()``, as the real
    one does between chunks) and raises ``SeparationCancelled`` once it turns true;
    ``release`` lets a test end the wait instead.
    """

    def __init__(
        self,
        *,
        sources: tuple[str, ...] = HTDEMUCS_6S_STEMS,
        model: str = "htdemucs_6s",
        raises: BaseException | None = None,
        block_until_cancelled: bool = False,
        max_block_s: float = 10.0,
        shares: Mapping[str, float] | None = None,
    ) -> None:
        self._sources = sources
        self._shares = (
            {s: shares.get(s, 0.0) for s in sources}
            if shares is not None
            else dict.fromkeys(sources, 1 / len(sources))
        )
        self._model_version = model_version(model)
        self.raises = raises
        self.block_until_cancelled = block_until_cancelled
        self.max_block_s = max_block_s
        self.release = threading.Event()
        self.started = threading.Event()
        self.calls = 0
        self.was_cancelled = False

    @property
    def sources(self) -> tuple[str, ...]:
        return self._sources

    @property
    def sample_rate(self) -> int:
        return 44100

    @property
    def audio_channels(self) -> int:
        return 2

    @property
    def model_version(self) -> str:
        return self._model_version

    @property
    def device_name(self) -> str:
        return "cpu"

    def separate(
        self,
        mix: Audio,
        *,
        progress: ProgressFn | None = None,
        cancelled: CancelledFn | None = None,
    ) -> dict[str, Audio]:
        self.calls += 1
        self.started.set()
        if self.raises is not None:
            raise self.raises
        if self.block_until_cancelled:
            self._wait(cancelled)
        if progress is not None:
            progress(1.0)
        return {s: (mix * share).astype(np.float32) for s, share in self._shares.items()}

    def separate_blocks(
        self,
        mix: Audio,
        *,
        progress: ProgressFn | None = None,
        cancelled: CancelledFn | None = None,
    ) -> Iterator[tuple[int, npt.NDArray[np.float32]]]:
        """The whole separation as one block (the handler must not care how many)."""
        stems = self.separate(mix, progress=progress, cancelled=cancelled)
        yield 0, np.stack([stems[source] for source in self._sources])

    def _wait(self, cancelled: CancelledFn | None) -> None:
        waited = 0.0
        while not self.release.wait(0.005):
            waited += 0.005
            if cancelled is not None and cancelled():
                self.was_cancelled = True
                raise SeparationCancelled("separation cancelled")
            if waited > self.max_block_s:
                raise AssertionError("CountingSeparator was never cancelled nor released")
