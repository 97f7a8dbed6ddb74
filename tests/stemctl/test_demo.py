"""``stemctl demo FILE --out DIR``: the whole fleet path — its own Pub/Sub emulator and
fake-gcs-server, provisioning, a worker, ``JobPublisher``, the results — on the user's
file, as a process of its own; the stems are left in DIR and nothing else is left at all."""

from __future__ import annotations

import hashlib
import itertools
import os
import re
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import soundfile as sf

from stem_contracts import HTDEMUCS_6S_STEMS, StemsProcessed, decode_event
from stemctl.support import track_ids
from tests.support.worker_fixtures import MODEL

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

STEMCTL = Path(sys.executable).with_name("stemctl")


def _processes_started_on(port: int) -> list[str]:
    """Command lines of the processes given ``port`` as their port argument (the
    emulator's ``--port=N``, fake-gcs-server's ``-port N``)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            args = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:  # gone meanwhile, or not ours to read
            continue
        wanted = str(port).encode()
        pairs = itertools.pairwise(args)
        if b"--port=" + wanted in args or any(a == b"-port" and b == wanted for a, b in pairs):
            found.append(b" ".join(args).decode(errors="replace"))
    return found


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_demo_on_a_file_leaves_its_stems_in_out_and_nothing_running(
    model_repo: Path, clip: Callable[..., Path], tmp_path: Path
) -> None:
    source = clip("flac", 2.0)
    out, scratch = tmp_path / "out", tmp_path / "tmp"
    scratch.mkdir()
    env = {
        name: value
        for name, value in os.environ.items()
        # The demo starts emulators of its own; it must not lean on the session's.
        if name not in ("PUBSUB_EMULATOR_HOST", "STORAGE_EMULATOR_HOST")
    }
    env |= {"STEM_MODEL": MODEL, "STEM_MODEL_REPO": str(model_repo), "TMPDIR": str(scratch)}

    done = subprocess.run(
        [str(STEMCTL), "demo", str(source), "--out", str(out), "--format", "wav"],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=200,
    )

    assert done.returncode == 0, done.stdout + done.stderr
    # Then: the stems are in OUT/{track}/, decodable, as long as the file, as reported.
    folder = out / track_ids([source])[0]
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        [
            *(f"{stem}.wav" for stem in HTDEMUCS_6S_STEMS),
            *(f"{stem}.peaks.json" for stem in HTDEMUCS_6S_STEMS),
            "manifest.json",
        ]
    )
    event = decode_event((folder / "manifest.json").read_bytes())
    assert isinstance(event, StemsProcessed)
    assert event.job_id in done.stdout
    for stem in event.stems:
        path = folder / f"{stem.name}.wav"
        assert hashlib.sha256(path.read_bytes()).hexdigest() == stem.sha256
        info = sf.info(str(path))
        assert (info.samplerate, info.channels) == (44100, 2)
        assert info.frames / info.samplerate == pytest.approx(2.0, abs=1e-3)
    # The job's progress was shown (plain lines off a terminal) up to its end.
    assert f"job {event.job_id}: processed" in done.stderr

    # Then: nothing of the demo is left — no emulator or server on its ports, no process
    # started for them, no temporary file or folder.
    ports = re.search(
        r"Pub/Sub emulator 127\.0\.0\.1:(\d+), fake-gcs-server http://127\.0\.0\.1:(\d+)",
        done.stdout,
    )
    assert ports is not None, done.stdout
    for port in map(int, ports.groups()):
        assert not _listening(port)
        assert _processes_started_on(port) == []
    assert list(scratch.iterdir()) == []


def test_demo_upload_makes_the_job_from_an_upload_and_reuses_it_for_a_second_copy(
    model_repo: Path, clip: Callable[..., Path], tmp_path: Path
) -> None:
    source = clip("wav", 1.5)
    out = tmp_path / "out"
    env = {
        name: value
        for name, value in os.environ.items()
        if name not in ("PUBSUB_EMULATOR_HOST", "STORAGE_EMULATOR_HOST")
    }
    env |= {"STEM_MODEL": MODEL, "STEM_MODEL_REPO": str(model_repo)}

    done = subprocess.run(
        [str(STEMCTL), "demo", str(source), "--upload", "--out", str(out)],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=200,
    )

    assert done.returncode == 0, done.stdout + done.stderr
    track = track_ids([source])[0]
    event = decode_event((out / track / "manifest.json").read_bytes())
    assert isinstance(event, StemsProcessed)
    # The job was the upload's: its id is the intake's, its source the uploaded object.
    assert event.job_id.startswith("upload-")
    assert event.source.uri == f"gs://stem-staging/incoming/{track}.wav"
    assert f"→ job {event.job_id}" in done.stdout
    assert f"{event.job_id}: separated" in done.stdout
    # And the second copy of the same bytes was answered from the first one's stems.
    assert f"stems copied from {event.job_id}" in done.stdout
