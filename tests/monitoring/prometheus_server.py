"""A real Prometheus server for tests: the binary of Debian's ``prometheus`` package
(``make monitoring-tools``) with a temporary config and TSDB on a free loopback port, started
and stopped like the emulators (its log is shown when it fails to come up), and its HTTP
API."""

from __future__ import annotations

import json
import shutil
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import yaml

# The emulators' child-process machinery: process group, log file, bounded start.
from devkit.emulators import EmulatorError, _Server


class PrometheusError(RuntimeError):
    """The API answered with an error (a query that does not parse, say)."""


class PrometheusServer(_Server):
    """``prometheus`` with ``config`` (a prometheus.yml as a mapping)."""

    name = "prometheus"

    def __init__(
        self, config: dict[str, Any], *, port: int | None = None, start_timeout_s: float = 30.0
    ) -> None:
        super().__init__(port, start_timeout_s)
        self._config = config
        self._dir: tempfile.TemporaryDirectory[str] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _command(self) -> list[str]:
        binary = shutil.which("prometheus")
        if binary is None:
            raise EmulatorError(
                "the prometheus server is not installed: `make monitoring-tools` installs "
                "Debian's prometheus package (the server and promtool)"
            )
        self._dir = tempfile.TemporaryDirectory(prefix="prometheus-")
        config = Path(self._dir.name) / "prometheus.yml"
        config.write_text(yaml.safe_dump(self._config))
        return [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={Path(self._dir.name) / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
        ]

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1.0) as response:
                return int(response.status) == 200
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            return False

    def stop(self) -> None:
        super().stop()
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None

    def api(self, path: str, **params: str) -> Any:
        """GET /api/v1/``path``; its ``data``, or PrometheusError with the server's reason."""
        url = f"{self.url}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(url, timeout=10.0) as response:
                body = json.load(response)
        except urllib.error.HTTPError as exc:
            body = json.load(exc)
        if body.get("status") != "success":
            raise PrometheusError(f"{body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query's series (a scalar result counts as one)."""
        data = self.api("query", query=expr)
        if data["resultType"] in ("scalar", "string"):
            return [{"metric": {}, "value": data["result"]}]
        result: list[dict[str, Any]] = data["result"]
        return result
