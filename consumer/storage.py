"""Object storage: the ``BlobStore`` protocol the handler uses, its GCS adapter, and a
local-directory adapter for running the pipeline on local files.

The GCS adapter retries transient failures in place (tenacity, bounded), verifies crc32c on
every transfer, enforces the size cap from metadata *and* while streaming, and maps what
is left onto the error taxonomy: a missing object is permanent, an unreachable service is
transient. The local adapter keeps what matters of that on a disk: the size cap while
copying, every write verified by crc32c, an object that appears whole or not at all.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import shutil
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, TypeVar

from google.api_core import exceptions as gexc
from google.cloud import storage
from tenacity import RetryError

from consumer.errors import AudioTooLarge, ChecksumMismatch, SourceMissing, StorageUnavailable
from stem_contracts import crc32c_b64, split_gcs_uri
from stem_contracts.retry import retrying

__all__ = ["BlobInfo", "BlobStore", "GcsBlobStore", "LocalBlobStore", "join_uri"]

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
    metadata: Mapping[str, str] = field(default_factory=dict)
    """The object's custom metadata (stems carry their ``sha256``; a disk keeps none)."""


class BlobStore(Protocol):
    """The storage the job handler needs; GCS in production, memory in unit tests."""

    def stat(self, uri: str) -> BlobInfo | None:
        """Metadata of ``uri``, or ``None`` when it does not exist."""
        ...

    def download(self, uri: str, dest: Path, *, max_bytes: int) -> BlobInfo:
        """Copy ``uri`` to ``dest``, verifying crc32c; refuse more than ``max_bytes``."""
        ...

    def upload(
        self,
        src: Path,
        uri: str,
        *,
        content_type: str,
        metadata: Mapping[str, str] | None = None,
    ) -> BlobInfo:
        """Write ``src`` to ``uri`` (overwriting), verified by crc32c, with custom
        ``metadata`` where the store keeps it."""
        ...

    def copy(self, src_uri: str, dest_uri: str) -> BlobInfo:
        """Copy ``src_uri`` to ``dest_uri`` inside the store (server-side on GCS: no
        download), metadata included, verified by crc32c; ``SourceMissing`` when
        ``src_uri`` does not exist."""
        ...

    def read_bytes(self, uri: str) -> bytes | None:
        """The whole (small) object, or ``None`` when it does not exist."""
        ...

    def delete(self, uri: str) -> bool:
        """Delete ``uri``; ``False`` when it did not exist."""
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
            return _info(uri, blob)

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

    def upload(
        self,
        src: Path,
        uri: str,
        *,
        content_type: str,
        metadata: Mapping[str, str] | None = None,
    ) -> BlobInfo:
        expected = crc32c_b64(src)
        blob = self._blob(uri)
        if metadata:
            blob.metadata = dict(metadata)

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
        return BlobInfo(uri, src.stat().st_size, expected, content_type, dict(metadata or {}))

    def copy(self, src_uri: str, dest_uri: str) -> BlobInfo:
        source = self._blob(src_uri)
        dest = self._blob(dest_uri)

        def call() -> BlobInfo:
            # rewrite, not copyTo: GCS may need several calls for a large object or one
            # that changes location or storage class; each returns a token to go on with.
            token, _, _ = dest.rewrite(source, timeout=self._timeout, retry=None)
            while token is not None:
                token, _, _ = dest.rewrite(source, token=token, timeout=self._timeout, retry=None)
            dest.reload(timeout=self._timeout, retry=None)
            return _info(dest_uri, dest)

        try:
            copied = self._retry("copy", src_uri, call)
        except gexc.NotFound as exc:  # not transient: tenacity lets it through as it is
            raise SourceMissing(f"{src_uri} does not exist") from exc
        original = self.stat(src_uri)
        if original is None or (original.crc32c, original.size_bytes) != (
            copied.crc32c,
            copied.size_bytes,
        ):
            raise ChecksumMismatch(f"copy {src_uri} → {dest_uri}: the copy differs from its source")
        return copied

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

    def delete(self, uri: str) -> bool:
        def call() -> bool:
            try:
                self._blob(uri).delete(timeout=self._timeout, retry=None)
            except gexc.NotFound:
                return False
            return True

        return self._retry("delete", uri, call)

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


class LocalBlobStore:
    """:class:`BlobStore` on a local directory: ``gs://{bucket}/{path}`` is ``{root}/{path}``.

    The wire contract knows only ``gs://`` URIs, so local files take part under one bucket
    name of their own (``stemctl separate`` uses ``gs://local/{absolute path}`` over
    ``/``); other buckets do not exist here. What matters of GCS is kept: the size cap
    while copying; a missing object is ``SourceMissing``; each write goes to a temporary
    file beside its target, is verified by crc32c against what was meant to be written,
    reaches the disk (fsync) and is then renamed into place, so an object — the manifest,
    the completion marker, included — is there whole or not at all. Any other failure of
    the file system is ``StorageUnavailable`` with the operating system's reason.
    """

    def __init__(self, root: Path, *, bucket: str) -> None:
        self.root = root
        self.bucket = bucket

    def uri(self, path: Path) -> str:
        """The ``gs://`` URI of ``path``, which must lie under the root (absolute, normalised)."""
        relative = path.relative_to(self.root).as_posix()
        return f"gs://{self.bucket}/{relative}"

    def path(self, uri: str) -> Path:
        """The file that ``uri`` names; ``ValueError`` for another bucket or a path that
        would leave the root (the contract refuses those too; this is the second lock)."""
        bucket, name = split_gcs_uri(uri)
        if bucket != self.bucket:
            raise ValueError(f"{uri}: this local store serves only gs://{self.bucket}/")
        parts = name.split("/")
        if not name or name.startswith("/") or any(p in ("", ".", "..") for p in parts):
            raise ValueError(f"{uri}: not a plain object path")
        return self.root.joinpath(*parts)

    def stat(self, uri: str) -> BlobInfo | None:
        bucket, _ = split_gcs_uri(uri)
        if bucket != self.bucket:
            return None  # as GCS answers for a bucket that does not exist
        path = self.path(uri)
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StorageUnavailable(f"stat {path}: {exc.strerror or exc}") from exc
        if not path.is_file():
            return None
        # A disk keeps no checksum or content type: crc32c is computed on reading instead.
        return BlobInfo(uri, size, None, None)

    def download(self, uri: str, dest: Path, *, max_bytes: int) -> BlobInfo:
        info = self.stat(uri)
        if info is None:
            where = self.path(uri) if split_gcs_uri(uri)[0] == self.bucket else uri
            raise SourceMissing(f"{where} does not exist or is not a file")
        path = self.path(uri)
        if info.size_bytes > max_bytes:
            raise AudioTooLarge(
                f"{path} is {info.size_bytes} bytes, over STEM_MAX_AUDIO_BYTES={max_bytes}"
            )
        try:
            with path.open("rb") as src, dest.open("wb") as raw:
                # The cap holds while copying too: the file may grow after the stat.
                shutil.copyfileobj(src, _CappedWriter(raw, max_bytes, str(path)))
        except FileNotFoundError as exc:
            raise SourceMissing(f"{path} disappeared while reading it") from exc
        except OSError as exc:
            raise StorageUnavailable(f"read {path}: {exc.strerror or exc}") from exc
        return BlobInfo(uri, dest.stat().st_size, crc32c_b64(dest), None)

    def upload(
        self,
        src: Path,
        uri: str,
        *,
        content_type: str,
        metadata: Mapping[str, str] | None = None,
    ) -> BlobInfo:
        del metadata  # a disk keeps no custom metadata
        expected = crc32c_b64(src)
        self._write(uri, expected, lambda file: _copy_into(src, file))
        return BlobInfo(uri, src.stat().st_size, expected, content_type)

    def copy(self, src_uri: str, dest_uri: str) -> BlobInfo:
        if self.stat(src_uri) is None:
            raise SourceMissing(f"{src_uri} does not exist or is not a file")
        source = self.path(src_uri)
        try:
            expected = crc32c_b64(source)
        except FileNotFoundError as exc:
            raise SourceMissing(f"{source} disappeared while reading it") from exc
        except OSError as exc:
            raise StorageUnavailable(f"read {source}: {exc.strerror or exc}") from exc
        self._write(dest_uri, expected, lambda file: _copy_into(source, file))
        return BlobInfo(dest_uri, self.path(dest_uri).stat().st_size, expected, None)

    def read_bytes(self, uri: str) -> bytes | None:
        if self.stat(uri) is None:
            return None
        path = self.path(uri)
        try:
            return path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StorageUnavailable(f"read {path}: {exc.strerror or exc}") from exc

    def delete(self, uri: str) -> bool:
        if self.stat(uri) is None:
            return False
        path = self.path(uri)
        try:
            path.unlink()
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise StorageUnavailable(f"delete {path}: {exc.strerror or exc}") from exc
        return True

    def write_bytes(self, uri: str, data: bytes, *, content_type: str) -> None:
        self._write(uri, crc32c_b64(data), lambda file: file.write(data))

    def _write(
        self, uri: str, expected_crc32c: str, fill: Callable[[io.BufferedWriter], object]
    ) -> None:
        """Write through a temporary file beside the target, verified, synced, renamed."""
        path = self.path(uri)
        part = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.part")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with part.open("wb") as file:
                fill(file)
                file.flush()
                os.fsync(file.fileno())
            stored = crc32c_b64(part)
            if stored != expected_crc32c:
                raise ChecksumMismatch(f"write {path}: stored crc32c {stored} != {expected_crc32c}")
            os.replace(part, path)
        except OSError as exc:
            raise StorageUnavailable(f"write {path}: {exc.strerror or exc}") from exc
        finally:
            with contextlib.suppress(OSError):
                part.unlink(missing_ok=True)


def _info(uri: str, blob: storage.Blob) -> BlobInfo:
    return BlobInfo(
        uri, int(blob.size or 0), blob.crc32c, blob.content_type, dict(blob.metadata or {})
    )


def _copy_into(src: Path, file: io.BufferedWriter) -> None:
    with src.open("rb") as source:
        shutil.copyfileobj(source, file)
