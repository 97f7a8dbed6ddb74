"""Dockerfile.gpu: hadolint (from its PyPI wheel) finds nothing, and the image is what the
settings, the constraints and the CLI say it is. No Docker engine is needed."""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.deploy.support import (
    DOCKERFILE,
    DOCKERIGNORE,
    check_stemctl_invocation,
    constraint_pin,
    default_settings,
    venv_tool,
)


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str
    stage: str


def parse_dockerfile(text: str) -> list[Instruction]:
    """Instructions with their stage name; continuation lines joined, comments dropped."""
    instructions: list[Instruction] = []
    stage = ""
    logical = ""
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("#") or (not line and not logical):
            continue
        if line.endswith("\\"):
            logical += line[:-1] + " "
            continue
        logical += line
        keyword, _, args = logical.strip().partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            match = re.search(r"\bAS\s+(\S+)$", args, re.IGNORECASE)
            stage = match.group(1) if match else args
        instructions.append(Instruction(keyword, args.strip(), stage))
        logical = ""
    return instructions


@pytest.fixture(scope="module")
def instructions() -> list[Instruction]:
    return parse_dockerfile(DOCKERFILE.read_text())


def _args(instructions: list[Instruction]) -> dict[str, str]:
    """ARG defaults (the last one wins, as in a build of the final stage)."""
    values = {}
    for ins in instructions:
        if ins.keyword == "ARG" and "=" in ins.args:
            name, value = ins.args.split("=", 1)
            values[name] = value.strip('"')
    return values


def _in_stage(instructions: list[Instruction], stage: str, keyword: str) -> list[str]:
    return [ins.args for ins in instructions if ins.stage == stage and ins.keyword == keyword]


def _env(instructions: list[Instruction], stage: str) -> dict[str, str]:
    env = {}
    for args in _in_stage(instructions, stage, "ENV"):
        for pair in shlex.split(args):
            name, _, value = pair.partition("=")
            env[name] = value
    return env


def _final_stage(instructions: list[Instruction]) -> str:
    return [ins.stage for ins in instructions if ins.keyword == "FROM"][-1]


def test_hadolint_finds_nothing_in_dockerfile_gpu() -> None:
    result = subprocess.run(
        [venv_tool("hadolint"), "--no-color", "--failure-threshold", "info", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_hadolint_is_really_linting(tmp_path: Path) -> None:
    """A canary: the bundled binary runs here and flags what it should."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM ubuntu:latest\nRUN apt-get install curl\n")
    result = subprocess.run(
        [venv_tool("hadolint"), "--no-color", str(bad)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode != 0
    assert "DL3007" in result.stdout  # "latest" tag
    assert "DL3008" in result.stdout  # unpinned apt package


def test_every_base_image_is_pinned_to_an_exact_version(instructions: list[Instruction]) -> None:
    images = [ins.args.split()[0] for ins in instructions if ins.keyword == "FROM"]
    assert images, "no FROM"
    for image in images:
        tag = image.rsplit(":", 1)[-1] if ":" in image.rsplit("/", 1)[-1] else ""
        assert re.match(r"\d+\.\d+\.\d+", tag), f"{image} is not pinned to an x.y.z tag"
    cuda = {image for image in images if image.startswith("nvidia/cuda:")}
    assert len(cuda) == 1, f"build and runtime stages must share one CUDA base, got {cuda}"


def test_torch_is_the_constrained_version_with_the_cuda_build_it_is_checked_for(
    instructions: list[Instruction],
) -> None:
    args = _args(instructions)
    assert args["TORCH_VERSION"] == constraint_pin("torch")
    # torch 2.13.0 on PyPI is the CUDA 13.0 build; the base image is CUDA 13.0.x.
    (cuda_image,) = {
        ins.args.split()[0] for ins in instructions if ins.args.startswith("nvidia/cuda:")
    }
    assert cuda_image.split(":")[1].startswith(args["TORCH_CUDA"] + ".")
    run = " ".join(_in_stage(instructions, "build", "RUN"))
    assert "torch.version.cuda" in run, "the CUDA build is not checked"
    assert "${TORCH_CUDA}" in run
    assert '"torch==${TORCH_VERSION}"' in run
    assert "-c constraints.txt" in run


def test_python_in_the_image_is_the_python_the_suite_runs(instructions: list[Instruction]) -> None:
    version = _args(instructions)["PYTHON_VERSION"]
    assert re.fullmatch(r"\d+\.\d+\.\d+", version)
    assert version.rsplit(".", 1)[0] == f"{sys.version_info.major}.{sys.version_info.minor}"


def test_the_project_is_installed_from_its_constraints(instructions: list[Instruction]) -> None:
    installs = [run for run in _in_stage(instructions, "build", "RUN") if "pip install" in run]
    project = [run for run in installs if "./contracts ." in run]
    assert project, "the project is not pip-installed"
    assert "-c constraints.txt" in project[0]
    assert "-e " not in project[0], "an editable install would need /src at run time"


def test_weights_are_baked_in_by_stemctl_model_fetch_and_loaded_from_there(
    instructions: list[Instruction],
) -> None:
    fetches = [run for run in _in_stage(instructions, "build", "RUN") if "stemctl model" in run]
    assert fetches, "no `stemctl model fetch` at build time"
    argv = shlex.split(fetches[0].split("stemctl", 1)[1].split("&&")[0])
    check_stemctl_invocation(argv)
    into = argv[argv.index("--into") + 1]

    final = _final_stage(instructions)
    copies = _in_stage(instructions, final, "COPY")
    assert any(copy.startswith("--from=build") and copy.split()[1] == into for copy in copies)
    env = _env(instructions, final)
    assert env["STEM_MODEL_REPO"] == into
    assert _args(instructions)["STEM_MODEL"] == default_settings().model
    assert env.get("HF_HUB_OFFLINE") == "1"
    # The final image proves it can load its model.
    assert any("stemctl model info" in run for run in _in_stage(instructions, final, "RUN"))


def test_runtime_stage_runs_as_a_non_root_numeric_user(instructions: list[Instruction]) -> None:
    final = _final_stage(instructions)
    users = _in_stage(instructions, final, "USER")
    assert users, "the runtime stage runs as root"
    uid, _, gid = users[-1].partition(":")
    # Numeric, so Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
    assert uid.isdigit()
    assert int(uid) != 0
    assert not gid or (gid.isdigit() and int(gid) != 0)


def test_healthcheck_probes_healthz_on_the_metrics_port(instructions: list[Instruction]) -> None:
    final = _final_stage(instructions)
    (healthcheck,) = _in_stage(instructions, final, "HEALTHCHECK")
    port = default_settings().metrics_port
    assert "/healthz" in healthcheck
    assert "STEM_METRICS_PORT" in healthcheck
    assert f"'{port}'" in healthcheck
    assert _in_stage(instructions, final, "EXPOSE") == [str(port)]


def test_entrypoint_is_stemctl_worker(instructions: list[Instruction]) -> None:
    final = _final_stage(instructions)
    (entrypoint,) = _in_stage(instructions, final, "ENTRYPOINT")
    argv = json.loads(entrypoint)
    assert argv == ["stemctl", "worker"]
    check_stemctl_invocation(argv[1:])


def test_build_tools_stay_in_the_build_stage(instructions: list[Instruction]) -> None:
    stages = [ins.stage for ins in instructions if ins.keyword == "FROM"]
    assert len(stages) >= 3
    assert stages[-1] != "build"
    final = _final_stage(instructions)
    for run in _in_stage(instructions, final, "RUN"):
        assert not re.search(r"\b(pip|uv|apt-get|gcc|make)\b", run), f"runtime installs: {run}"
    sources = {copy.split()[1] for copy in _in_stage(instructions, final, "COPY")}
    assert sources == {"/opt/python", "/opt/venv", "/opt/stem-fleet/models"}


def _dockerignore_excludes(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last matching pattern wins; a directory match covers its files."""
    excluded = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/")
        parts = path.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if any(fnmatch.fnmatchcase(prefix, pattern) for prefix in prefixes):
            excluded = not negate
    return excluded


def test_dockerignore_sends_what_the_build_copies_and_nothing_private(
    instructions: list[Instruction],
) -> None:
    patterns = [
        line.strip()
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    copied = [
        source.rstrip("/")
        for ins in instructions
        if ins.keyword == "COPY" and not ins.args.startswith("--from")
        for source in ins.args.split()[:-1]
    ]
    assert copied
    for source in [*copied, "stemctl/cli.py", "infra/provision.py", "contracts/pyproject.toml"]:
        assert not _dockerignore_excludes(source, patterns), f".dockerignore drops {source}"
    for private in [".venv/bin/python", ".git/config", "tests/conftest.py", "infra/terraform/x.tf"]:
        assert _dockerignore_excludes(private, patterns), f".dockerignore sends {private}"
