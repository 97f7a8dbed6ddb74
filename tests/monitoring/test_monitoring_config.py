"""infra/monitoring, statically: every alert says how bad it is and what to do, and has
promtool tests that see it fire and stay silent; the compose stack's Prometheus, Grafana
and GKE's PodMonitoring agree on the job, files and ports; every series name the rules and
the dashboard select is one the worker exports. (`make monitoring-check` runs promtool;
test_prometheus_queries.py runs every expression on a real Prometheus.)"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

from consumer.telemetry import Metrics
from tests.deploy.support import COMPOSE_FILE, K8S_DIR, load_yaml_documents, settings_from
from tests.monitoring.expressions import (
    DASHBOARD,
    GKE_PREFIX,
    GPU_ONLY,
    MONITORING_DIR,
    PROMETHEUS_CONFIG,
    RULE_FILES,
    RULE_TESTS,
    WORKER_JOB,
    alerts,
    dashboard,
    dashboard_expressions,
    load_yaml,
    panels,
    rule_expressions,
)

SEVERITIES = {"critical", "warning"}


def test_every_alert_has_a_severity_a_summary_and_what_to_do() -> None:
    found = alerts()
    assert found
    for alert in found:
        name = alert["alert"]
        assert alert["labels"]["severity"] in SEVERITIES, name
        annotations = alert["annotations"]
        assert set(annotations) == {"summary", "description"}, name
        assert annotations["summary"].strip(), name
        # What to do: at least one command to run, in backticks.
        assert "`" in annotations["description"], f"{name}: no command in its description"


def test_alert_names_are_unique() -> None:
    names = [alert["alert"] for alert in alerts()]
    assert len(names) == len(set(names))


def _promtool_cases() -> dict[str, set[str]]:
    """alert name → {"fires", "silent"}: what its promtool test cases expect of it."""
    cases: dict[str, set[str]] = defaultdict(set)
    for path in RULE_TESTS:
        for test in load_yaml(path)["tests"]:
            for case in test.get("alert_rule_test", []):
                cases[case["alertname"]].add("fires" if case.get("exp_alerts") else "silent")
    return cases


def test_every_alert_has_promtool_tests_that_see_it_fire_and_stay_silent() -> None:
    cases = _promtool_cases()
    for alert in alerts():
        assert cases[alert["alert"]] == {"fires", "silent"}, alert["alert"]
    assert set(cases) <= {alert["alert"] for alert in alerts()}, "tests of unknown alerts"


def test_every_rule_file_is_loaded_by_a_promtool_test() -> None:
    tested = {
        (path.parent / rule_file).resolve()
        for path in RULE_TESTS
        for rule_file in load_yaml(path)["rule_files"]
    }
    assert {path.resolve() for path in RULE_FILES} <= tested


_SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}


def _exported_names() -> set[str]:
    """The series names a worker's registry exports (the families' types give the
    suffixes; label sets not yet used are families without samples, still listed)."""
    return {
        family.name + suffix
        for family in Metrics().registry.collect()
        for suffix in _SUFFIXES[family.type]
    }


def test_every_series_the_rules_and_the_dashboard_select_is_exported() -> None:
    exported = _exported_names() | GPU_ONLY | {"up"}
    for expression in rule_expressions() + dashboard_expressions():
        unknown = {
            name
            for name in expression.names()
            if name not in exported and not name.startswith(GKE_PREFIX)
        }
        assert not unknown, f"{expression.key}: {sorted(unknown)} not exported by the worker"


def test_the_dashboard_shows_every_metric_the_worker_exports() -> None:
    queries = " ".join(expression.expr for expression in dashboard_expressions())
    shown = set().union(
        *(expression.names() for expression in dashboard_expressions()),
        # through the recording rules it shows
        *(
            expression.names()
            for expression in rule_expressions()
            if expression.key.startswith("record ")
            and expression.key.removeprefix("record ") in queries
        ),
    )
    missing = {name for name in _exported_names() if not name.endswith(("_sum", "_count"))}
    missing -= shown
    assert not missing, f"not on the dashboard: {sorted(missing)}"


def test_every_up_selector_names_the_worker_job() -> None:
    for expression in rule_expressions() + dashboard_expressions():
        if "up" in expression.names():
            assert f'up{{job="{WORKER_JOB}"}}' in expression.expr, expression.key


# --- the dashboard -------------------------------------------------------------------------


def test_dashboard_panels_have_unique_ids_and_queries_on_the_chosen_data_source() -> None:
    board = dashboard()
    assert board["uid"] == "stem-fleet"
    (variable,) = board["templating"]["list"]
    assert (variable["type"], variable["query"]) == ("datasource", "prometheus")
    everything = [*board["panels"], *(p for row in board["panels"] for p in row.get("panels", []))]
    ids = [panel["id"] for panel in everything]
    assert len(ids) == len(set(ids))
    for panel in panels():
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        ref_ids = [target["refId"] for target in panel["targets"]]
        assert ref_ids, panel["title"]
        assert len(ref_ids) == len(set(ref_ids)), panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]
            assert target["expr"].strip(), panel["title"]


# --- the compose stack and GKE ---------------------------------------------------------------


def _compose_services() -> dict[str, Any]:
    (compose,) = load_yaml_documents(COMPOSE_FILE)
    return dict(compose["services"])


def _mounts(service: dict[str, Any]) -> dict[str, Path]:
    """Container path → file or folder of this repository, for each read-only bind mount."""
    mounts = {}
    for volume in service["volumes"]:
        source, target, mode = volume.split(":")
        assert mode == "ro", volume
        mounts[target] = (COMPOSE_FILE.parent / source).resolve()
    return mounts


def test_compose_prometheus_scrapes_the_worker_service_and_loads_the_worker_rules() -> None:
    services = _compose_services()
    prometheus = services["prometheus"]
    mounts = _mounts(prometheus)
    assert mounts["/etc/prometheus/prometheus.yml"] == PROMETHEUS_CONFIG
    assert "--config.file=/etc/prometheus/prometheus.yml" in prometheus["command"]
    config = load_yaml(PROMETHEUS_CONFIG)
    for rule_file in config["rule_files"]:
        folder, name = rule_file.rsplit("/", 1)
        assert (mounts[folder] / name).is_file(), rule_file
    (job,) = config["scrape_configs"]
    assert job["job_name"] == WORKER_JOB
    (static,) = job["static_configs"]
    worker = services["worker"]
    port = settings_from(worker["environment"]).metrics_port
    assert static["targets"] == [f"worker:{port}"]
    # Prometheus' own 9090 is published elsewhere: the host's 9090 is the worker's.
    assert all(not mapping.startswith(f"{port}:") for mapping in prometheus["ports"])


def test_compose_grafana_provisions_the_dashboard_on_the_compose_prometheus() -> None:
    services = _compose_services()
    mounts = _mounts(services["grafana"])
    provisioning = {target: path for target, path in mounts.items() if "provisioning" in target}
    (datasources,) = (load_yaml(p) for t, p in provisioning.items() if "/datasources/" in t)
    (providers,) = (load_yaml(p) for t, p in provisioning.items() if "/dashboards/" in t)
    (source,) = datasources["datasources"]
    assert (source["type"], source["url"]) == ("prometheus", "http://prometheus:9090")
    (provider,) = providers["providers"]
    folder = provider["options"]["path"]
    (mounted,) = (path for target, path in mounts.items() if target.startswith(folder + "/"))
    assert mounted == DASHBOARD
    assert services["grafana"]["depends_on"]["prometheus"] == {"condition": "service_healthy"}


def test_gke_pod_monitoring_gives_the_workers_the_job_the_rules_select() -> None:
    monitors = load_yaml_documents(K8S_DIR / "base" / "podmonitoring.yaml")
    (worker,) = (m for m in monitors if m["metadata"]["name"] == WORKER_JOB)
    assert worker["spec"]["selector"]["matchLabels"] == {"app.kubernetes.io/name": WORKER_JOB}
    # The only other one scrapes the intake's pods, as another job.
    assert {m["metadata"]["name"] for m in monitors} == {WORKER_JOB, "stem-intake"}


def test_the_monitoring_folder_holds_only_what_is_checked() -> None:
    files = {
        path.relative_to(MONITORING_DIR) for path in MONITORING_DIR.rglob("*") if path.is_file()
    }
    checked = {
        Path("prometheus.yml"),
        Path("dashboard.json"),
        Path("grafana/datasources.yml"),
        Path("grafana/dashboards.yml"),
        *(path.relative_to(MONITORING_DIR) for path in RULE_FILES + RULE_TESTS),
    }
    assert files == checked
