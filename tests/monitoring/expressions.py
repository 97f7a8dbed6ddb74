"""What the monitoring tests read from infra/monitoring: the rule files, their promtool
tests, the dashboard, and every PromQL expression in them."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
MONITORING_DIR = ROOT / "infra" / "monitoring"
RULE_FILES = sorted((MONITORING_DIR / "rules").glob("*.yml"))
RULE_TESTS = sorted((MONITORING_DIR / "tests").glob("*.yml"))
DASHBOARD = MONITORING_DIR / "dashboard.json"
PROMETHEUS_CONFIG = MONITORING_DIR / "prometheus.yml"

WORKER_JOB = "stem-worker"
"""The scrape job of the workers: compose's job_name, GKE's PodMonitoring name."""

GPU_ONLY = frozenset({"stem_gpu_memory_bytes"})
"""Worker series exported only while a CUDA device is in use."""
GKE_PREFIX = "pubsub_googleapis_com:"
"""Cloud Monitoring's Pub/Sub metrics, as managed Prometheus names them: GCP only."""

# Series names: a worker metric (stem_…), `up`, or a Cloud Monitoring metric as managed
# Prometheus maps it (pubsub_googleapis_com:…). Recording rules (stem:…) are not names
# the worker exports.
_NAME = re.compile(r"(?<![\w:.])(stem_\w+|up|[a-z]+_googleapis_com:\w+)(?![\w:(])")


@dataclass(frozen=True)
class Expression:
    """One PromQL expression and where it comes from (``alert StemDeadLetters``,
    ``record stem:jobs:increase10m``, ``panel Jobs in flight/A``)."""

    key: str
    expr: str

    def names(self) -> set[str]:
        """The series names it selects (recording rules' names excluded)."""
        return set(_NAME.findall(self.expr))


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def rules() -> Iterator[dict[str, Any]]:
    """Every rule of every rule file, in file order."""
    for path in RULE_FILES:
        for group in load_yaml(path)["groups"]:
            yield from group["rules"]


def alerts() -> list[dict[str, Any]]:
    return [rule for rule in rules() if "alert" in rule]


def rule_expressions() -> list[Expression]:
    """Each recording rule's expression and its recorded series, each alert's expression."""
    found = []
    for rule in rules():
        if "record" in rule:
            found.append(Expression(f"record {rule['record']}", rule["expr"]))
            found.append(Expression(f"recorded {rule['record']}", rule["record"]))
        else:
            found.append(Expression(f"alert {rule['alert']}", rule["expr"]))
    return found


def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def panels() -> list[dict[str, Any]]:
    """Every panel with queries, rows flattened (a collapsed row holds its panels)."""
    flat = []
    for panel in dashboard()["panels"]:
        flat += [panel, *panel.get("panels", [])]
    return [panel for panel in flat if panel["type"] != "row"]


def dashboard_expressions(rate_interval: str = "5m") -> list[Expression]:
    """Each panel query, with Grafana's ``$__rate_interval`` replaced by ``rate_interval``."""
    return [
        Expression(
            f"panel {panel['title']}/{target['refId']}",
            target["expr"].replace("$__rate_interval", rate_interval),
        )
        for panel in panels()
        for target in panel["targets"]
    ]
