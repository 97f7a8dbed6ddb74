"""Each way the storage service fails is retried in place by the GCS adapter.

One fault of each kind (``tests/support/faults.py``: a 503, a connection dropped before or after
the server acted, a response cut off half-way) on each kind of call the worker makes;
the call must still succeed, with the bytes intact, without the job ever seeing it. (A
response cut off mid-body used to escape the retries as an unclassified
``ChunkedEncodingError``: the job failed as ``internal_error`` and cost a delivery.)
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest

from consumer import gcp
from consumer.settings import Settings
from consumer.storage import GcsBlobStore
from tests.support.faults import FAULTS, Fault, FaultyProxy, Rule

pytestmark = pytest.mark.integration

OPERATIONS = ("stat", "download", "upload", "write")
"""Reading the manifest is a media download like the source's: the same path."""


def _once(fault: Fault, operation: str) -> Rule:
    """``fault`` on the first request of ``operation``, then nothing."""
    fired: list[bool] = []

    def rule(method: str, path: str) -> Fault | None:
        media = "alt=media" in path
        wanted = {
            "stat": method == "GET" and not media and "/o/" in path,
            "download": method == "GET" and media,
            "upload": method == "POST",
            "write": method == "POST",
        }[operation]
        if wanted and not fired:
            fired.append(True)
            return fault
        return None

    return rule


@pytest.fixture
def bucket(settings: Settings, gcs: Any) -> str:
    name = f"faults-{settings.output_bucket}"
    gcs.create_bucket(name)
    gcs.bucket(name).blob("in/a.wav").upload_from_string(bytes(range(256)) * 1200)
    return name


@pytest.mark.timeout(60)
@pytest.mark.parametrize("operation", OPERATIONS)
@pytest.mark.parametrize("fault", FAULTS)
def test_one_storage_fault_of_any_kind_is_retried_in_place(
    settings: Settings,
    emulators: Any,
    gcs: Any,
    bucket: str,
    tmp_path: Path,
    fault: Fault,
    operation: str,
) -> None:
    source = f"gs://{bucket}/in/a.wav"
    expected = bytes(range(256)) * 1200
    with FaultyProxy(emulators.storage_url, _once(fault, operation)) as proxy:
        store = GcsBlobStore(
            gcp.storage_client(settings.model_copy(update={"storage_emulator_host": proxy.url}))
        )
        if operation == "stat":
            info = store.stat(source)
            assert info is not None
            assert info.size_bytes == len(expected)
        elif operation == "download":
            store.download(source, tmp_path / "a.wav", max_bytes=10_000_000)
            assert (tmp_path / "a.wav").read_bytes() == expected
        elif operation == "upload":
            (tmp_path / "up.wav").write_bytes(expected)
            store.upload(tmp_path / "up.wav", f"gs://{bucket}/out/up.wav", content_type="audio/wav")
        else:
            store.write_bytes(f"gs://{bucket}/out/m.json", b"{}", content_type="application/json")

    assert [f for _, _, f in proxy.faults] == [fault]
    if operation == "upload":
        stored = gcs.bucket(bucket).blob("out/up.wav").download_as_bytes()
        assert hashlib.sha256(stored).digest() == hashlib.sha256(expected).digest()
