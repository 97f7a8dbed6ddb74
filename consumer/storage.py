"""Object storage: the ``BlobStore`` protocol the handler uses, and its GCS adapter.

The adapter retries transient failures in place (tenacity, bounded), verifies crc32c on
every transfer, enforces the size cap from metadata *and* while streaming, and maps what
is left onto the error taxonomy: a missing object is permanent, an unreachable service is
transient.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, TypeVar

from google.api_core import exceptions as gexc
from google.cloud import storage
from tenacity import RetryError

from consumer.errors import AudioTooLarge, ChecksumMismatch, SourceMissing, StorageUnavailable
from stem_contracts import crc32c_b64, split_gcs_uri
from stem_contracts.retry import retrying

__all__ = ["BlobInfo", "BlobStore", "GcsBlobStore", "join_uri"]

_log = logging.getLogger(__name__)
_T = TypeVar("_T")

try:  # where DataCorruption lives moved between google-cloud-storage 2 and 3
    from google.cloud.storage.exceptions import DataCorruption
except ImportError:  # pragma: no cover
    from google.resumable_media.common import DataCorruption


@dataclass(frozen=True)
class BlobInfo:
    """What the store says about an object before anyone reads it."""

    uri: str
    size_bytes: int
    crc32c: str | None
    content_type: str | None


class BlobStore(Protocol):
    """The storage the job handler needs; GCS in production, memory in unit tests."""

    def stat(self, uri: str) -> BlobInfo | None:
        """Metadata of ``uri``, or ``None`` when it does not exist."""
        ...

    def download(self, uri: str, dest: Path, *, max_bytes: int) -> BlobInfo:
        """Copy ``uri`` to ``dest``, verifying crc32c; refuse more than ``max_bytes``."""
        ...

    def upload(self, src: Path, uri: str, *, content_type: str) -> BlobInfo:
        """Write ``src`` to ``uri`` (overwriting), verified by crc32c."""
        ...

    def read_bytes(self, uri: str) -> bytes | None:
        """The whole (small) object, or ``None`` when it does not exist."""
        ...

    def write_bytes(self, uri: str, data: bytes, *, content_type: str) -> None:
        """Write a small object (the manifest)."""
        ...


def join_uri(prefix: str, name: str) -> str:
    """``gs://b/prefix`` + ``name`` → ``gs://b/prefix/name`` (``name`` must be a plain name)."""
    if not name or "/" in name or name in (".", ".."):
        raise ValueError(f"not a plain object name: {name!r}")
    return prefix.rstrip("/") + "/" + name


class _CappedWriter(io.RawIOBase):
    """A file wrapper that refuses to grow past ``cap`` bytes while streaming."""

    def __init__(self, file: io.BufferedWriter, cap: int, uri: str) -> None:
        super().__init__()
        self._file = file
        self._cap = cap
        self._uri = uri
        self.written = 0

    def writable(self) -> bool:
        return True

    def write(self, data: bytes | bytearray | memoryview) -> int:  # type: ignore[override]
        self.written += len(data)
        if self.written > self._cap:
            raise AudioTooLarge(
                f"{self._uri} streamed more than STEM_MAX_AUDIO_BYTES={self._cap} bytes"
            )
        return self._file.write(data)


class GcsBlobStore:
    """:class:`BlobStore` on Google Cloud Storage (or fake-gcs-server)."""

    def __init__(self, client: storage.Client, *, attempts: int = 4, timeout_s: float = 60.0):
        self._client = client
        self._attempts = attempts
        self._timeout = timeout_s

    def _blob(self, uri: str) -> storage.Blob:
        bucket, name = split_gcs_uri(uri)
        return self._client.bucket(bucket).blob(name)

    def _retry(self, what: str, uri: str, call: Callable[[], _T]) -> _T:
        policy = retrying(attempts=self._attempts, also=(DataCorruption,), logger=_log)
        try:
            return policy(call)
        except RetryError as exc:
            last = exc.last_attempt.exception()
            if isinstance(last, DataCorruption):
                raise ChecksumMismatch(f"{what} {uri}: crc32c mismatch on every attempt") from last
            raise StorageUnavailable(
                f"{what} {uri} failed after {self._attempts} attempts: {last}"
            ) from last
        except gexc.Forbidden as exc:
            raise StorageUnavailable(f"{what} {uri}: permission denied ({exc.message})") from exc

    def stat(self, uri: str) -> BlobInfo | None:
        bucket, name = split_gcs_uri(uri)

        def call() -> BlobInfo | None:
            blob = self._client.bucket(bucket).get_blob(name, timeout=self._timeout)
            if blob is None:
                return None
            return BlobInfo(uri, int(blob.size or 0), blob.crc32c, blob.content_type)

        try:
            return self._retry("stat", uri, call)
        except StorageUnavailable as exc:
            if isinstance(exc.__cause__, gexc.NotFound):  # bucket itself missing
                return None
            raise

    def download(self, uri: str, dest: Path, *, max_bytes: int) -> BlobInfo:
        info = self.stat(uri)
        if info is None:
            raise SourceMissing(f"{uri} does not exist")
        if info.size_bytes > max_bytes:
            raise AudioTooLarge(
                f"{uri} is {info.size_bytes} bytes, over STEM_MAX_AUDIO_BYTES={max_bytes}"
            )

        def call() -> None:
            with dest.open("wb") as raw:
                writer = _CappedWriter(raw, max_bytes, uri)
                # checksum="crc32c": the library hashes while streaming and raises
                # DataCorruption when the result differs from the server's x-goog-hash.
                self._blob(uri).download_to_file(
                    writer, checksum="crc32c", timeout=self._timeout, retry=None
                )

        try:
            self._retry("download", uri, call)
        except StorageUnavailable as exc:
            if isinstance(exc.__cause__, gexc.NotFound):
                raise SourceMissing(f"{uri} disappeared while downloading") from exc
            raise
        return info

    def upload(self, src: Path, uri: str, *, content_type: str) -> BlobInfo:
        expected = crc32c_b64(src)
        blob = self._blob(uri)

        def call() -> None:
            blob.upload_from_filename(
                str(src),
                content_type=content_type,
                checksum="crc32c",
                timeout=self._timeout,
                retry=None,
            )
            if blob.crc32c != expected:
                raise DataCorruption(None, f"stored crc32c {blob.crc32c} != {expected}")

        self._retry("upload", uri, call)
        return BlobInfo(uri, src.stat().st_size, expected, content_type)

    def read_bytes(self, uri: str) -> bytes | None:
        def call() -> bytes | None:
            try:
                data: bytes = self._blob(uri).download_as_bytes(
                    checksum="crc32c", timeout=self._timeout, retry=None
                )
            except gexc.NotFound:
                return None
            return data

        return self._retry("read", uri, call)

    def write_bytes(self, uri: str, data: bytes, *, content_type: str) -> None:
        blob = self._blob(uri)
        self._retry(
            "write",
            uri,
            lambda: blob.upload_from_string(
                data,
                content_type=content_type,
                checksum="crc32c",
                timeout=self._timeout,
                retry=None,
            ),
        )
