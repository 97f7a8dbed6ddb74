"""``LocalBlobStore``: the ``BlobStore`` protocol on a directory, for ``stemctl separate``.

What it keeps of GCS: a missing object is ``SourceMissing``, the size cap, and every write
verified by crc32c and atomic (the manifest is the completion marker: half of one must
never be seen). No test here claims anything about GCS itself."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest

from consumer import storage
from consumer.errors import AudioTooLarge, ChecksumMismatch, SourceMissing, StorageUnavailable
from consumer.storage import LocalBlobStore
from stem_contracts import crc32c_b64


@pytest.fixture
def store(tmp_path: Path) -> LocalBlobStore:
    return LocalBlobStore(tmp_path / "root", bucket="local")


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if p.name.startswith("."))


def test_an_uploaded_file_is_the_file_its_uri_names_and_reads_back_whole(
    store: LocalBlobStore, tmp_path: Path
) -> None:
    src = tmp_path / "vocals.mp3"
    src.write_bytes(b"ID3" + bytes(range(256)) * 40)

    info = store.upload(src, "gs://local/song/vocals.mp3", content_type="audio/mpeg")

    target = store.root / "song" / "vocals.mp3"
    assert store.path("gs://local/song/vocals.mp3") == target
    assert store.uri(target) == "gs://local/song/vocals.mp3"
    assert target.read_bytes() == src.read_bytes()
    assert (info.size_bytes, info.crc32c) == (src.stat().st_size, crc32c_b64(src))
    stat = store.stat("gs://local/song/vocals.mp3")
    assert stat is not None
    assert stat.size_bytes == src.stat().st_size
    assert store.read_bytes("gs://local/song/vocals.mp3") == src.read_bytes()
    copy = tmp_path / "copy.mp3"
    assert store.download("gs://local/song/vocals.mp3", copy, max_bytes=1 << 20).crc32c == (
        crc32c_b64(src)
    )
    assert copy.read_bytes() == src.read_bytes()
    assert _leftovers(store.root) == []


def test_a_missing_object_is_source_missing_naming_the_file(
    store: LocalBlobStore, tmp_path: Path
) -> None:
    assert store.stat("gs://local/nope.wav") is None
    assert store.read_bytes("gs://local/nope.wav") is None
    with pytest.raises(SourceMissing, match=re.escape(str(store.root / "nope.wav"))):
        store.download("gs://local/nope.wav", tmp_path / "x", max_bytes=100)
    (store.root / "folder.wav").mkdir(parents=True)
    with pytest.raises(SourceMissing, match="is not a file"):
        store.download("gs://local/folder.wav", tmp_path / "x", max_bytes=100)


def test_a_copy_is_the_same_bytes_under_the_new_name_and_a_missing_source_is_source_missing(
    store: LocalBlobStore, tmp_path: Path
) -> None:
    src = tmp_path / "drums.wav"
    src.write_bytes(b"RIFF" + bytes(range(256)) * 8)
    store.upload(src, "gs://local/a/drums.wav", content_type="audio/wav")

    info = store.copy("gs://local/a/drums.wav", "gs://local/b/drums.wav")

    assert (store.root / "b" / "drums.wav").read_bytes() == src.read_bytes()
    assert (info.uri, info.size_bytes, info.crc32c) == (
        "gs://local/b/drums.wav",
        src.stat().st_size,
        crc32c_b64(src),
    )
    with pytest.raises(SourceMissing):
        store.copy("gs://local/a/gone.wav", "gs://local/b/gone.wav")
    assert not (store.root / "b" / "gone.wav").exists()
    assert _leftovers(store.root) == []


def test_another_bucket_does_not_exist_here(store: LocalBlobStore, tmp_path: Path) -> None:
    assert store.stat("gs://elsewhere/a.wav") is None
    with pytest.raises(SourceMissing, match=re.escape("gs://elsewhere/a.wav")):
        store.download("gs://elsewhere/a.wav", tmp_path / "x", max_bytes=100)
    with pytest.raises(ValueError, match="only gs://local/"):
        store.write_bytes("gs://elsewhere/m.json", b"{}", content_type="application/json")


@pytest.mark.parametrize("name", ["a/../b.wav", "./a.wav", "a//b.wav", ""])
def test_a_path_that_could_leave_the_root_is_refused(store: LocalBlobStore, name: str) -> None:
    with pytest.raises(ValueError, match="not a plain object path"):
        store.path(f"gs://local/{name}")


def test_a_source_over_the_size_cap_is_refused_before_copying(
    store: LocalBlobStore, tmp_path: Path
) -> None:
    (store.root).mkdir()
    (store.root / "big.wav").write_bytes(b"\0" * 1001)

    with pytest.raises(AudioTooLarge, match="1001 bytes, over STEM_MAX_AUDIO_BYTES=1000"):
        store.download("gs://local/big.wav", tmp_path / "copy.wav", max_bytes=1000)


def test_a_write_that_does_not_verify_leaves_the_previous_object_and_no_partial_file(
    store: LocalBlobStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.write_bytes("gs://local/song/manifest.json", b'{"old": 1}', content_type="x")
    src = tmp_path / "new.json"
    src.write_bytes(b'{"new": 2}')

    def corrupting_copy(source: Path, file: io.BufferedWriter) -> None:
        file.write(source.read_bytes()[:-1] + b"!")  # one byte flipped on the way to disk

    monkeypatch.setattr(storage, "_copy_into", corrupting_copy)
    with pytest.raises(ChecksumMismatch, match="crc32c"):
        store.upload(src, "gs://local/song/manifest.json", content_type="application/json")

    assert (store.root / "song" / "manifest.json").read_bytes() == b'{"old": 1}'
    assert _leftovers(store.root) == []


def test_a_file_system_failure_is_storage_unavailable_with_its_reason(
    store: LocalBlobStore,
) -> None:
    store.root.mkdir()
    (store.root / "song").write_text("a file where a folder should be")

    with pytest.raises(StorageUnavailable, match=r"write .*song/vocals\.wav"):
        store.write_bytes("gs://local/song/vocals.wav", b"RIFF", content_type="audio/wav")
