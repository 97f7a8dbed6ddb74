"""What the deployment checks share: the repository's files, the settings' variable names,
the stemctl command tree, and a way to run the bundled linters.

Everything here reads files and runs binaries from PyPI wheels: no Docker engine, no
cluster, no cloud, no network.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from unittest import mock

import typer.main
import yaml

from consumer.settings import Settings
from stemctl.cli import app

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile.gpu"
DOCKERIGNORE = ROOT / ".dockerignore"
COMPOSE_FILE = ROOT / "docker-compose.emulator.yml"
TERRAFORM_DIR = ROOT / "infra" / "terraform"
K8S_DIR = ROOT / "infra" / "k8s"

# Names the Google client libraries read themselves; the settings object mirrors them.
STANDARD_ENV = frozenset({"GOOGLE_CLOUD_PROJECT", "PUBSUB_EMULATOR_HOST", "STORAGE_EMULATOR_HOST"})


@contextmanager
def exactly_this_environment(env: Mapping[str, str]) -> Iterator[None]:
    with mock.patch.dict(os.environ, env, clear=True):
        yield


def settings_from(env: Mapping[str, str]) -> Settings:
    """``Settings()`` as a process with exactly ``env`` would build it (validation included)."""
    with exactly_this_environment(env):
        return Settings()


def default_settings() -> Settings:
    return settings_from({})


def stemctl_command(*words: str) -> Any:
    """The (click) command ``stemctl WORDS...`` runs; KeyError if there is none.

    Typed loosely: typer vendors its own click, so groups are recognised by ``commands``.
    """
    command: Any = typer.main.get_command(app)
    for word in words:
        subcommands = getattr(command, "commands", {})
        if word not in subcommands:
            raise KeyError(f"stemctl has no command {' '.join(words)!r} (at {word!r})")
        command = subcommands[word]
    return command


def stemctl_options(*words: str) -> frozenset[str]:
    return frozenset(
        opt for param in stemctl_command(*words).params for opt in getattr(param, "opts", [])
    )


def check_stemctl_invocation(argv: list[str]) -> None:
    """Assert that ``argv`` (without ``stemctl``) names a real command and real options."""
    path: list[str] = []
    for word in (arg for arg in argv if not arg.startswith("-")):
        if not hasattr(stemctl_command(*path), "commands"):
            break  # a leaf command: the remaining words are option values or arguments
        path.append(word)
        stemctl_command(*path)
    assert path, f"no stemctl command in {argv}"
    options = stemctl_options(*path) | {"--help"}
    for arg in argv:
        if arg.startswith("--"):
            name = arg.split("=", 1)[0]
            assert name in options, f"stemctl {' '.join(path)} has no option {name}"


def load_yaml_documents(path: Path) -> list[dict[str, Any]]:
    with path.open() as handle:
        return [doc for doc in yaml.safe_load_all(handle) if doc]


def read_env_file(path: Path) -> dict[str, str]:
    """A kustomize/docker env file: KEY=VALUE lines, # comments."""
    env = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        assert sep, f"{path}: not KEY=VALUE: {line!r}"
        env[key] = value
    return env


def constraint_pin(package: str) -> str:
    """The version constraints.txt pins ``package`` to."""
    pattern = re.compile(rf"^{re.escape(package)}==(\S+)$", re.IGNORECASE | re.MULTILINE)
    match = pattern.search((ROOT / "constraints.txt").read_text())
    assert match, f"constraints.txt does not pin {package}"
    return match.group(1)


def venv_tool(name: str) -> str:
    """A linter installed by a dev dependency's wheel, next to this interpreter."""
    candidate = Path(sys.executable).parent / name
    found = str(candidate) if candidate.is_file() else shutil.which(name)
    assert found, (
        f"{name} is not installed; it comes with the dev extras "
        "(pip install -c constraints.txt -e '.[dev]')"
    )
    return found


class Terraform:
    """infra/terraform parsed with python-hcl2, with ``var.``/``local.``/resource references
    resolved to what a plan with the variables' defaults would see (enough for names and
    numbers; Terraform functions are not evaluated)."""

    def __init__(self, documents: list[dict[str, Any]]) -> None:
        self.variables: dict[str, dict[str, Any]] = {}
        self.locals: dict[str, Any] = {}
        self.resources: dict[tuple[str, str], dict[str, Any]] = {}
        self.outputs: dict[str, dict[str, Any]] = {}
        for document in documents:
            for block in document.get("variable", []):
                self.variables.update(block)
            for block in document.get("locals", []):
                self.locals.update(block)
            for block in document.get("resource", []):
                for kind, named in block.items():
                    for name, body in named.items():
                        assert (kind, name) not in self.resources, f"{kind}.{name} twice"
                        self.resources[(kind, name)] = body
            for block in document.get("output", []):
                self.outputs.update(block)

    @classmethod
    def load(cls, directory: Path = TERRAFORM_DIR) -> Terraform:
        import hcl2

        options = hcl2.SerializationOptions(
            strip_string_quotes=True, explicit_blocks=False, with_comments=False
        )
        files = sorted(directory.glob("*.tf"))
        assert files, f"no .tf files in {directory}"
        documents = []
        for path in files:
            with path.open() as handle:
                documents.append(hcl2.load(handle, serialization_options=options))
        return cls(documents)

    def variable(self, name: str) -> Any:
        assert name in self.variables, f"no variable {name!r}"
        return self.variables[name].get("default")

    def resource(self, kind: str, name: str) -> dict[str, Any]:
        assert (kind, name) in self.resources, f"no resource {kind}.{name}"
        return self.resources[(kind, name)]

    def resources_of(self, kind: str) -> dict[str, dict[str, Any]]:
        return {name: body for (k, name), body in self.resources.items() if k == kind}

    def resolve(self, value: Any) -> Any:
        """``"${var.x}"`` → x's default; ``"${local.y}"`` → y resolved; ``"${T.N.id}"`` or
        ``.name`` → that resource's resolved name; ``"${var.x}s"`` → interpolated string."""
        if not isinstance(value, str) or "${" not in value:
            return value
        whole = re.fullmatch(r"\$\{([^{}]+)\}", value)
        if whole:
            return self._reference(whole.group(1).strip())
        return re.sub(r"\$\{([^{}]+)\}", lambda m: str(self._reference(m.group(1))), value)

    def _reference(self, expression: str) -> Any:
        parts = expression.split(".")
        if parts[0] == "var" and len(parts) == 2:
            return self.variable(parts[1])
        if parts[0] == "local" and len(parts) == 2:
            return self.resolve(self.locals[parts[1]])
        if (
            len(parts) == 3
            and (parts[0], parts[1]) in self.resources
            and parts[2] in ("id", "name")
        ):
            return self.resolve(self.resource(parts[0], parts[1])["name"])
        raise AssertionError(f"cannot resolve ${{{expression}}}")
