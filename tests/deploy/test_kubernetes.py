"""infra/k8s: every core manifest validates strictly (kubernetes-validate, offline schemas
bundled in its wheel) against a pinned Kubernetes version; the KEDA objects and managed
Prometheus' PodMonitoring, which are CRDs it has no schema for, are checked here against
the fields their projects document; and the manifests agree with the settings, the image
and the Terraform."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest

from tests.deploy.support import (
    K8S_DIR,
    Terraform,
    load_yaml_documents,
    read_env_file,
    settings_from,
)
from tests.support.settings_env import settings_env_names

# The oldest minor the manifests must work on (GKE's regular channel is at or above it).
# kubernetes-validate's wheel carries the schemas; nothing is downloaded.
KUBERNETES_VERSION = "1.33.0"

KUSTOMIZE_API = "kustomize.config.k8s.io/v1beta1"
KEDA_API = "keda.sh/v1alpha1"
GMP_API = "monitoring.googleapis.com/v1"  # Google Cloud Managed Service for Prometheus
WORKER = "stem-worker"


def _documents() -> list[tuple[Path, dict[str, Any]]]:
    return [
        (path, doc) for path in sorted(K8S_DIR.rglob("*.yaml")) for doc in load_yaml_documents(path)
    ]


def _objects(kind: str) -> list[dict[str, Any]]:
    return [doc for _, doc in _documents() if doc.get("kind") == kind]


INTAKE = "stem-intake"


def _one(kind: str, name: str | None = None) -> dict[str, Any]:
    """The one object of ``kind`` — the worker's, where the intake has one of its own."""
    objects = _objects(kind)
    if name is not None or len(objects) > 1:
        objects = [o for o in objects if o["metadata"]["name"] == (name or WORKER)]
    (obj,) = objects
    return obj


def _worker_env() -> dict[str, str]:
    return read_env_file(K8S_DIR / "base" / "worker.env")


def _worker_container() -> dict[str, Any]:
    (container,) = _one("Deployment")["spec"]["template"]["spec"]["containers"]
    return dict(container)


def test_the_intake_is_one_small_always_on_cpu_replica_of_the_same_image() -> None:
    intake = _one("Deployment", INTAKE)
    pod = intake["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert intake["spec"]["replicas"] == 1
    assert [*container["command"], *container["args"]] == ["stemctl", "intake"]
    assert container["image"] == _worker_container()["image"]
    assert container["envFrom"] == _worker_container()["envFrom"]
    # No GPU, no GPU node pool: it must run while the workers are scaled to zero.
    assert "nvidia.com/gpu" not in container["resources"].get("limits", {})
    assert "nodeSelector" not in pod
    assert "tolerations" not in pod
    # Nothing scales it: the autoscalers target the worker only.
    targets = [o["spec"]["scaleTargetRef"]["name"] for o in _objects("ScaledObject")]
    targets += [o["spec"]["scaleTargetRef"]["name"] for o in _objects("HorizontalPodAutoscaler")]
    assert targets
    assert set(targets) == {WORKER}
    # Identity: its own, bound to the Terraform's intake account.
    terraform = Terraform.load()
    assert pod["serviceAccountName"] == terraform.variable("k8s_intake_service_account")
    ksa = _one("ServiceAccount", INTAKE)
    account_id = terraform.resource("google_service_account", "intake")["account_id"]
    assert ksa["metadata"]["annotations"]["iam.gke.io/gcp-service-account"] == (
        f"{account_id}@PROJECT_ID.iam.gserviceaccount.com"
    )
    monitoring = _one("PodMonitoring", INTAKE)
    assert (
        monitoring["spec"]["selector"]["matchLabels"] == intake["spec"]["selector"]["matchLabels"]
    )
    assert monitoring["spec"]["endpoints"][0]["port"] == container["ports"][0]["name"]
    env = {e["name"]: e["value"] for e in container["env"]}
    settings_from({**_worker_env(), **env})  # valid settings, names the settings object reads
    assert set(env) <= settings_env_names()
    assert container["ports"][0]["containerPort"] == int(_worker_env()["STEM_METRICS_PORT"])


# --- schema validation --------------------------------------------------------------------


def _core_documents() -> list[tuple[Path, dict[str, Any]]]:
    return [
        (path, doc)
        for path, doc in _documents()
        if doc["apiVersion"] not in (KUSTOMIZE_API, KEDA_API, GMP_API)
    ]


# The newest schemas in the wheel too: an API version removed since would fail there.
VERSIONS = (KUBERNETES_VERSION, kubernetes_validate.utils.latest_version())


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize(
    "document",
    [doc for _, doc in _core_documents()],
    ids=[f"{path.relative_to(K8S_DIR)}:{doc['kind']}" for path, doc in _core_documents()],
)
def test_manifest_validates_strictly_against_kubernetes(
    document: dict[str, Any], version: str
) -> None:
    validated = kubernetes_validate.validate(document, version, strict=True)
    assert validated == version.rsplit(".", 1)[0]


def test_every_manifest_is_core_kustomize_keda_or_managed_prometheus() -> None:
    kinds = {(doc["apiVersion"], doc["kind"]) for _, doc in _documents()}
    assert {kind for kind in kinds if kind[0] == KEDA_API} == {
        (KEDA_API, "ScaledObject"),
        (KEDA_API, "TriggerAuthentication"),
    }
    assert {kind for kind in kinds if kind[0] == GMP_API} == {(GMP_API, "PodMonitoring")}
    assert {doc["kind"] for _, doc in _core_documents()} == {
        "Namespace",
        "ServiceAccount",
        "Deployment",
        "PodDisruptionBudget",
        "HorizontalPodAutoscaler",
    }


def test_strict_validation_rejects_a_misspelled_field() -> None:
    """A canary: the offline schemas are there and strict mode bites."""
    deployment = _one("Deployment")
    broken = {**deployment, "spec": {**deployment["spec"], "replica": 2}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


# KEDA's CRDs are not in kubernetes-validate: the fields KEDA 2.x documents for the two
# kinds used here, closed (additionalProperties: false) so that a misspelling fails.
_NAME_REF = {
    "type": "object",
    "required": ["name"],
    "properties": {"name": {"type": "string"}, "kind": {"type": "string"}},
    "additionalProperties": False,
}
_METADATA = {
    "type": "object",
    "required": ["name", "namespace"],
    "properties": {
        "name": {"type": "string"},
        "namespace": {"type": "string"},
        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
        "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
    },
    "additionalProperties": False,
}
SCALED_OBJECT_SCHEMA = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": KEDA_API},
        "kind": {"const": "ScaledObject"},
        "metadata": _METADATA,
        "spec": {
            "type": "object",
            "required": ["scaleTargetRef", "triggers"],
            "properties": {
                "scaleTargetRef": {
                    "type": "object",
                    "required": ["name"],
                    "properties": {
                        "apiVersion": {"type": "string"},
                        "kind": {"type": "string"},
                        "name": {"type": "string"},
                        "envSourceContainerName": {"type": "string"},
                    },
                    "additionalProperties": False,
                },
                "pollingInterval": {"type": "integer", "minimum": 1},
                "cooldownPeriod": {"type": "integer", "minimum": 0},
                "initialCooldownPeriod": {"type": "integer", "minimum": 0},
                "idleReplicaCount": {"type": "integer", "minimum": 0},
                "minReplicaCount": {"type": "integer", "minimum": 0},
                "maxReplicaCount": {"type": "integer", "minimum": 1},
                "fallback": {"type": "object"},
                "advanced": {
                    "type": "object",
                    "properties": {
                        "restoreToOriginalReplicaCount": {"type": "boolean"},
                        "horizontalPodAutoscalerConfig": {
                            "type": "object",
                            "properties": {"name": {"type": "string"}, "behavior": {}},
                            "additionalProperties": False,
                        },
                        "scalingModifiers": {"type": "object"},
                    },
                    "additionalProperties": False,
                },
                "triggers": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "required": ["type", "metadata"],
                        "properties": {
                            "type": {"type": "string"},
                            "name": {"type": "string"},
                            "metricType": {"enum": ["AverageValue", "Value", "Utilization"]},
                            "useCachedMetrics": {"type": "boolean"},
                            "authenticationRef": _NAME_REF,
                            # KEDA reads trigger metadata as strings only.
                            "metadata": {
                                "type": "object",
                                "additionalProperties": {"type": "string"},
                            },
                        },
                        "additionalProperties": False,
                    },
                },
            },
            "additionalProperties": False,
        },
    },
    "additionalProperties": False,
}
TRIGGER_AUTHENTICATION_SCHEMA = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": KEDA_API},
        "kind": {"const": "TriggerAuthentication"},
        "metadata": _METADATA,
        "spec": {
            "type": "object",
            "properties": {
                "podIdentity": {
                    "type": "object",
                    "required": ["provider"],
                    "properties": {
                        "provider": {"enum": ["none", "azure-workload", "aws", "gcp"]},
                        "identityId": {"type": "string"},
                        "identityOwner": {"type": "string"},
                        "roleArn": {"type": "string"},
                    },
                    "additionalProperties": False,
                },
                "secretTargetRef": {"type": "array"},
                "env": {"type": "array"},
            },
            "additionalProperties": False,
        },
    },
    "additionalProperties": False,
}


def test_keda_objects_have_the_fields_keda_reads() -> None:
    jsonschema.validate(_one("ScaledObject"), SCALED_OBJECT_SCHEMA)
    jsonschema.validate(_one("TriggerAuthentication"), TRIGGER_AUTHENTICATION_SCHEMA)


def test_keda_schema_rejects_a_misspelled_field() -> None:
    scaled = _one("ScaledObject")
    broken = {**scaled, "spec": {**scaled["spec"], "minReplicas": 0}}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, SCALED_OBJECT_SCHEMA)


# PodMonitoring (monitoring.googleapis.com/v1, GoogleCloudPlatform/prometheus-engine's
# doc/api.md): the fields of the spec this repository may use, closed likewise.
_LABEL_SELECTOR = {
    "type": "object",
    "properties": {
        "matchLabels": {"type": "object", "additionalProperties": {"type": "string"}},
        "matchExpressions": {"type": "array"},
    },
    "additionalProperties": False,
}
POD_MONITORING_SCHEMA = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": GMP_API},
        "kind": {"const": "PodMonitoring"},
        "metadata": _METADATA,
        "spec": {
            "type": "object",
            "required": ["selector", "endpoints"],
            "properties": {
                "selector": _LABEL_SELECTOR,
                "endpoints": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "required": ["port"],
                        "properties": {
                            "port": {"type": ["string", "integer"]},
                            "path": {"type": "string", "pattern": "^/"},
                            "scheme": {"enum": ["http", "https"]},
                            "interval": {"type": "string", "pattern": "^[0-9]+(ms|s|m|h)$"},
                            "timeout": {"type": "string", "pattern": "^[0-9]+(ms|s|m|h)$"},
                            "params": {"type": "object"},
                            "metricRelabeling": {"type": "array"},
                        },
                        "additionalProperties": False,
                    },
                },
                "targetLabels": {"type": "object"},
                "limits": {"type": "object"},
                "filterRunning": {"type": "boolean"},
            },
            "additionalProperties": False,
        },
    },
    "additionalProperties": False,
}


def test_pod_monitoring_has_the_fields_managed_prometheus_reads() -> None:
    pod_monitoring = _one("PodMonitoring")
    jsonschema.validate(pod_monitoring, POD_MONITORING_SCHEMA)
    broken = {**pod_monitoring, "spec": {**pod_monitoring["spec"], "endpoint": []}}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, POD_MONITORING_SCHEMA)


def test_pod_monitoring_scrapes_the_worker_pods_metrics_port_as_job_stem_worker() -> None:
    pod_monitoring = _one("PodMonitoring")
    # Managed Prometheus names the job after the PodMonitoring: the rules select it.
    assert pod_monitoring["metadata"]["name"] == "stem-worker"
    labels = _one("Deployment")["spec"]["template"]["metadata"]["labels"]
    assert pod_monitoring["spec"]["selector"]["matchLabels"].items() <= labels.items()
    (endpoint,) = pod_monitoring["spec"]["endpoints"]
    (port,) = _worker_container()["ports"]
    assert endpoint["port"] in (port["name"], port["containerPort"])
    assert endpoint.get("path", "/metrics") == "/metrics"


def test_scaled_object_scales_the_worker_to_zero_on_the_jobs_subscription_backlog() -> None:
    scaled = _one("ScaledObject")
    spec = scaled["spec"]
    target = spec["scaleTargetRef"]
    assert (target.get("kind", "Deployment"), target["name"]) == ("Deployment", WORKER)
    assert spec["minReplicaCount"] == 0
    assert spec["maxReplicaCount"] >= 1
    (trigger,) = spec["triggers"]
    assert trigger["type"] == "gcp-pubsub"
    metadata = trigger["metadata"]
    jobs_subscription = settings_from(_worker_env()).jobs_subscription
    assert metadata["subscriptionName"] == jobs_subscription
    assert metadata["mode"] == "SubscriptionSize"
    assert float(metadata["value"]) > 0
    assert float(metadata.get("activationValue", "0")) == 0, "one waiting job must wake it"
    # Authenticated as KEDA's own Workload Identity, no key.
    auth = _one("TriggerAuthentication")
    assert trigger["authenticationRef"]["name"] == auth["metadata"]["name"]
    assert auth["spec"]["podIdentity"]["provider"] == "gcp"


def test_scaled_object_behavior_is_a_valid_hpa_behavior() -> None:
    """KEDA copies it into the HPA it creates: validate it where Kubernetes will."""
    behavior = _one("ScaledObject")["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
    hpa = {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": "keda-hpa-stem-worker"},
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": WORKER},
            "maxReplicas": 8,
            "behavior": behavior,
        },
    }
    kubernetes_validate.validate(hpa, KUBERNETES_VERSION, strict=True)
    assert behavior["scaleDown"]["stabilizationWindowSeconds"] >= 300


def test_hpa_alternative_scales_on_the_same_backlog_but_not_to_zero() -> None:
    hpa = _one("HorizontalPodAutoscaler")
    spec = hpa["spec"]
    assert spec["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": WORKER}
    assert spec["minReplicas"] >= 1  # an HPA cannot scale to zero on GKE
    (metric,) = spec["metrics"]
    assert metric["type"] == "External"
    external = metric["external"]
    assert external["metric"]["name"] == (
        "pubsub.googleapis.com|subscription|num_undelivered_messages"
    )
    jobs_subscription = settings_from(_worker_env()).jobs_subscription
    assert external["metric"]["selector"]["matchLabels"] == {
        "resource.labels.subscription_id": jobs_subscription
    }
    keda = _one("ScaledObject")
    assert external["target"]["averageValue"] == keda["spec"]["triggers"][0]["metadata"]["value"]
    assert spec["maxReplicas"] == keda["spec"]["maxReplicaCount"]


# --- the worker ---------------------------------------------------------------------------


def test_worker_config_uses_only_settings_variables_with_valid_values() -> None:
    env = _worker_env()
    unknown = set(env) - settings_env_names()
    assert not unknown, f"worker.env sets variables the worker never reads: {sorted(unknown)}"
    settings = settings_from(env)  # validates every value
    assert settings.device == "cuda"
    assert not settings.using_emulators


def test_worker_config_agrees_with_the_terraform_defaults() -> None:
    terraform = Terraform.load()
    settings = settings_from(_worker_env())
    for name in ("jobs_subscription", "results_topic", "dlq_topic", "max_delivery_attempts"):
        assert getattr(settings, name) == terraform.variable(name), name


def test_deployment_runs_one_gpu_per_pod_with_probes_on_the_metrics_port() -> None:
    deployment = _one("Deployment")
    assert "replicas" not in deployment["spec"], "the autoscaler owns the replica count"
    container = _worker_container()
    assert container["resources"]["limits"]["nvidia.com/gpu"] in ("1", 1)
    settings = settings_from(_worker_env())
    (port,) = container["ports"]
    assert port["containerPort"] == settings.metrics_port
    probes = {
        name: container[name]["httpGet"]
        for name in ("startupProbe", "livenessProbe", "readinessProbe")
    }
    assert probes["startupProbe"]["path"] == "/healthz"
    assert probes["livenessProbe"]["path"] == "/healthz"
    assert probes["readinessProbe"]["path"] == "/readyz"
    assert {probe["port"] for probe in probes.values()} <= {port["name"], port["containerPort"]}
    assert container["image"] == "stem-fleet-worker"  # set by the overlay, per README
    # Never `command`/`args`: the image's ENTRYPOINT is `stemctl worker`.
    assert "command" not in container
    assert "args" not in container


def test_termination_grace_is_above_the_worker_shutdown_grace() -> None:
    pod = _one("Deployment")["spec"]["template"]["spec"]
    grace_s = settings_from(_worker_env()).shutdown_grace_s
    # In-flight jobs get STEM_SHUTDOWN_GRACE_S, then nack and a publisher flush need time.
    assert pod["terminationGracePeriodSeconds"] >= grace_s + 15


def test_worker_pods_are_locked_down() -> None:
    pod = _one("Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001  # the image's USER
    container = _worker_container()
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    mounts = {mount["mountPath"] for mount in container["volumeMounts"]}
    assert "/tmp" in mounts, "jobs need a writable /tmp"


def test_disruption_budget_covers_exactly_the_worker_pods() -> None:
    pdb = _one("PodDisruptionBudget")
    labels = _one("Deployment")["spec"]["template"]["metadata"]["labels"]
    selector = pdb["spec"]["selector"]["matchLabels"]
    assert selector.items() <= labels.items()
    assert selector == _one("Deployment")["spec"]["selector"]["matchLabels"]
    # maxUnavailable works at any replica count, including 0 and 1.
    assert "maxUnavailable" in pdb["spec"]
    assert "minAvailable" not in pdb["spec"]


def test_everything_lives_in_the_terraform_namespace_and_service_account() -> None:
    terraform = Terraform.load()
    namespace = terraform.variable("k8s_namespace")
    service_account = terraform.variable("k8s_service_account")
    assert _one("Namespace")["metadata"]["name"] == namespace
    for _, doc in _documents():
        if doc["kind"] not in ("Namespace", "Kustomization"):
            assert doc["metadata"]["namespace"] == namespace, doc["kind"]
    pod = _one("Deployment")["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == service_account
    ksa = _one("ServiceAccount")
    assert ksa["metadata"]["name"] == service_account
    gsa = ksa["metadata"]["annotations"]["iam.gke.io/gcp-service-account"]
    account_id = terraform.resource("google_service_account", "worker")["account_id"]
    assert gsa == f"{account_id}@PROJECT_ID.iam.gserviceaccount.com"
    assert "keda/keda-operator" in terraform.variable("autoscaler_k8s_service_accounts")


# --- kustomize ------------------------------------------------------------------------------


def _kustomization(directory: str) -> dict[str, Any]:
    (doc,) = load_yaml_documents(K8S_DIR / directory / "kustomization.yaml")
    assert doc["apiVersion"] == KUSTOMIZE_API
    assert doc["kind"] == "Kustomization"
    return doc


def _rendered_files(directory: str) -> set[Path]:
    """The manifest files a kustomization pulls in, through its bases."""
    files: set[Path] = set()
    for resource in _kustomization(directory)["resources"]:
        path = (K8S_DIR / directory / resource).resolve()
        assert path.exists(), f"{directory}/kustomization.yaml: {resource} does not exist"
        if path.is_dir():
            files |= _rendered_files(str(path.relative_to(K8S_DIR)))
        else:
            files.add(path)
    return files


def test_keda_and_hpa_overlays_build_on_the_base_and_exclude_each_other() -> None:
    keda = {path.name for path in _rendered_files("keda")}
    hpa = {path.name for path in _rendered_files("hpa")}
    base = {path.name for path in _rendered_files("base")}
    assert base <= keda
    assert base <= hpa
    assert "scaledobject.yaml" in keda
    assert "horizontalpodautoscaler.yaml" not in keda
    assert "horizontalpodautoscaler.yaml" in hpa
    assert "scaledobject.yaml" not in hpa
    every = {path.name for path in K8S_DIR.rglob("*.yaml")} - {"kustomization.yaml"}
    assert keda | hpa == every, f"not in any kustomization: {every - keda - hpa}"


def test_the_generated_config_map_is_the_one_the_worker_reads() -> None:
    (generator,) = _kustomization("base")["configMapGenerator"]
    assert generator["envs"] == ["worker.env"]
    (source,) = _worker_container()["envFrom"]
    assert source["configMapRef"]["name"] == generator["name"]
    config_map = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": generator["name"], "namespace": "stem-fleet"},
        "data": _worker_env(),
    }
    kubernetes_validate.validate(config_map, KUBERNETES_VERSION, strict=True)


# --- sizing: the capacity model -------------------------------------------------------------

CAPACITY_DOC = K8S_DIR.parents[1] / "docs" / "capacity.md"
SHAPE_ANNOTATION = "stem-fleet/node-shape"


def _capacity_settings() -> dict[str, dict[str, str]]:
    """docs/capacity.md's "Settings per shape" table, by node shape."""
    section = CAPACITY_DOC.read_text().split("## Settings per shape", 1)[1].split("\n## ")[0]
    rows = [line for line in section.splitlines() if line.startswith("| ")]
    header = [cell.strip(" `") for cell in rows[0].strip("|").split("|")]
    table = {}
    for row in rows[1:]:
        cells = dict(zip(header, (c.strip() for c in row.strip("|").split("|")), strict=True))
        table[cells["node"]] = cells
    return table


def test_the_worker_is_sized_as_docs_capacity_says_for_its_node_shape() -> None:
    """The Deployment names the node shape it is sized for; its CPU request, in-flight
    count and encode pool are that shape's row of the capacity model (make capacity)."""
    deployment = _one("Deployment")
    shape = deployment["metadata"]["annotations"][SHAPE_ANNOTATION]
    row = _capacity_settings()[shape]
    resources = _worker_container()["resources"]
    settings = settings_from(_worker_env())
    assert str(resources["requests"]["cpu"]) == row["cpu request"]
    assert "cpu" not in resources["limits"], "a CPU limit throttles the encoders in bursts"
    assert str(settings.max_in_flight) == row["STEM_MAX_IN_FLIGHT"]
    assert str(settings.encode_workers) == row["STEM_ENCODE_WORKERS"]
    readme = (K8S_DIR.parents[1] / "README.md").read_text()
    assert f"--machine-type {shape}" in readme, "the README's GPU node pool is another shape"
