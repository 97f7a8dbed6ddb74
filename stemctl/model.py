"""``stemctl model``: fetch, export and inspect the Demucs model weights.

Every command loads the model the way a worker does — ``DemucsSeparator.load``, i.e.
``demucs.pretrained.get_model(name, repo=...)`` — so a model that passes here loads in a
worker. ``repo`` unset means the hub: Demucs looks in the HuggingFace hub first (cached in
``HF_HOME``) and falls back to its legacy repository (cached by torch hub in
``TORCH_HOME``); a folder means a local model folder, with no network fallback.

``fetch --into DIR`` also writes the loaded model into ``DIR`` in the format Demucs' local
repository reads (``{sig}-{sha256[:8]}.th`` packages, plus ``{name}.yaml`` for a bag of
models), reloads it from there and checks that the weights are identical. A worker started
with ``STEM_MODEL_REPO=DIR`` then loads it with no network and no cache: that is how
``Dockerfile.gpu`` bakes ``htdemucs_6s`` into the image. Demucs verifies the checksum in
each file name on every load, so a damaged file fails the worker's start, not a job.

torch and demucs are imported inside the commands: other ``stemctl`` commands stay fast.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from stemctl.display import human_size
from stemctl.support import CommandFailed, load_settings, operator_errors

if TYPE_CHECKING:
    import torch

    from consumer.separation import DemucsSeparator

__all__ = ["ModelInfo", "ModelName", "ModelRepo", "model_app", "weights_cached"]

model_app = typer.Typer(
    help="Fetch, export and inspect the Demucs model weights.", no_args_is_help=True
)

# Demucs' local repository splits a file name at its last "-" into signature and checksum,
# so an exported name must not contain one (nor anything unsafe in a file name).
_EXPORT_NAME = re.compile(r"[A-Za-z0-9_]+")

ModelName = Annotated[
    str | None,
    typer.Option(
        "--model",
        "-n",
        help="Demucs model name. Default: STEM_MODEL (htdemucs_6s).",
        show_default=False,
    ),
]
ModelRepo = Annotated[
    Path | None,
    typer.Option(
        "--repo",
        help="Load from this local model folder (no network). "
        "Default: STEM_MODEL_REPO, else the hub and its cache.",
        show_default=False,
    ),
]


# The hub checkpoint of htdemucs_6s (Demucs' remote files list), as cached by torch.hub.
_HTDEMUCS_6S_CHECKPOINT = "5c90dfd2-34c22ccb.th"


def weights_cached(model: str) -> bool | None:
    """Whether the hub weights of ``model`` are in the local caches (HuggingFace's or torch
    hub's), so loading it needs no network; ``None`` for a model this does not know."""
    import torch

    if model != "htdemucs_6s":
        return None
    checkpoint = Path(torch.hub.get_dir()) / "checkpoints" / _HTDEMUCS_6S_CHECKPOINT
    try:
        from huggingface_hub import constants

        hf_cached = (Path(constants.HF_HUB_CACHE) / "models--adefossez--HTDemucs-6s").is_dir()
    except ImportError:  # pragma: no cover - a dependency of demucs
        hf_cached = False
    return checkpoint.is_file() or hf_cached


@dataclass(frozen=True)
class ModelInfo:
    """What ``stemctl model info`` reports about a loaded model."""

    name: str
    model_version: str
    loaded_from: str
    architecture: str
    sources: tuple[str, ...]
    sample_rate: int
    audio_channels: int
    segment_seconds: float
    parameters: int

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "modelVersion": self.model_version,
            "loadedFrom": self.loaded_from,
            "architecture": self.architecture,
            "sources": list(self.sources),
            "sampleRate": self.sample_rate,
            "audioChannels": self.audio_channels,
            "segmentSeconds": self.segment_seconds,
            "parameters": self.parameters,
        }

    def lines(self) -> list[str]:
        rows = [
            ("model", self.name),
            ("modelVersion", self.model_version),
            ("loaded from", self.loaded_from),
            ("architecture", self.architecture),
            ("sources", ", ".join(self.sources)),
            ("sample rate", f"{self.sample_rate} Hz"),
            ("channels", str(self.audio_channels)),
            ("segment", f"{self.segment_seconds:g} s"),
            ("parameters", f"{self.parameters:,}"),
        ]
        return [f"{key + ':':<14}{value}" for key, value in rows]


@model_app.command("fetch")
@operator_errors
def fetch(
    model: ModelName = None,
    repo: ModelRepo = None,
    into: Annotated[
        Path | None,
        typer.Option(
            "--into",
            help="Also write the model into this folder and verify it reloads identically; "
            "then STEM_MODEL_REPO=DIR loads it with no network. Replaces an earlier export "
            "of the same model there.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Download (or find) the model through Demucs' own loader and prove that it loads."""
    name, source = _model_and_repo(model, repo)
    if into is not None:
        # Checked before the download: a bad name or folder should not cost one.
        _check_export_target(name, source, into)
    separator = _load(name, source)
    described = _describe(separator, name, source)
    typer.echo(
        f"model {name} ({described.model_version}) loaded from {described.loaded_from} in "
        f"{separator.load_seconds:.2f} s: {described.architecture}, "
        f"{len(described.sources)} sources, {described.parameters:,} parameters"
    )
    if into is None:
        return
    files = _export(separator.model, name, into)
    size = human_size(sum(path.stat().st_size for path in files))
    typer.echo(f"exported to {into}: {', '.join(p.name for p in files)} ({size})")
    _verify_export(separator, name, into)
    typer.echo(
        f"verified: {into} holds the same weights; workers load them with no network "
        f"when STEM_MODEL={name} STEM_MODEL_REPO={into}"
    )


@model_app.command("info")
@operator_errors
def info(
    model: ModelName = None,
    repo: ModelRepo = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object.")] = False,
) -> None:
    """Load the model and print its name, modelVersion, sources, sample rate and size."""
    name, source = _model_and_repo(model, repo)
    described = _describe(_load(name, source), name, source)
    if as_json:
        typer.echo(json.dumps(described.as_json()))
        return
    for line in described.lines():
        typer.echo(line)


# --- loading and describing ---------------------------------------------------------------


def _model_and_repo(model: str | None, repo: Path | None) -> tuple[str, Path | None]:
    """The options, else what a worker would load: STEM_MODEL and STEM_MODEL_REPO."""
    settings = load_settings()
    return model or settings.model, repo if repo is not None else settings.model_repo


def _load(name: str, repo: Path | None) -> DemucsSeparator:
    """The worker's own loading path, on the CPU (build machines have no GPU).

    Failures are ``ModelLoadError``: ``operator_errors`` prints them as one line, exit 1.
    """
    from consumer.separation import DemucsSeparator

    return DemucsSeparator.load(name, repo=repo, device="cpu")


def _members(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The single models inside ``model``: itself, or the members of a bag."""
    from demucs.apply import BagOfModels

    return list(model.models) if isinstance(model, BagOfModels) else [model]


def _describe(separator: DemucsSeparator, name: str, repo: Path | None) -> ModelInfo:
    from demucs.apply import BagOfModels

    model = separator.model
    members = _members(model)
    architecture = type(model).__name__
    if isinstance(model, BagOfModels):
        kinds = "/".join(sorted({type(member).__name__ for member in members}))
        architecture += f" of {len(members)} × {kinds}"
    segments = [float(getattr(member, "segment", 0.0)) for member in members]
    return ModelInfo(
        name=name,
        model_version=separator.model_version,
        loaded_from="the hub or its cache" if repo is None else str(repo),
        architecture=architecture,
        sources=separator.sources,
        sample_rate=separator.sample_rate,
        audio_channels=separator.audio_channels,
        segment_seconds=min(segments),
        parameters=sum(parameter.numel() for parameter in model.parameters()),
    )


# --- exporting into a local model folder ----------------------------------------------------


def _check_export_target(name: str, repo: Path | None, into: Path) -> None:
    if not _EXPORT_NAME.fullmatch(name):
        raise CommandFailed(
            f"cannot export model {name!r} into a folder: its name must match [A-Za-z0-9_]+ "
            "(Demucs reads '-' in a model file name as a checksum separator)"
        )
    if into.exists() and not into.is_dir():
        raise CommandFailed(f"--into {into} exists and is not a folder")
    if repo is not None and into.resolve() == repo.resolve():
        raise CommandFailed(f"--into {into} is the folder the model is loaded from")


def _export(model: torch.nn.Module, name: str, into: Path) -> list[Path]:
    """Write ``model`` into ``into`` so that ``get_model(name, repo=into)`` rebuilds it.

    A single model becomes ``{name}-{checksum}.th``; a bag becomes one such package per
    member (``{name}_m{i}``) plus ``{name}.yaml`` naming them, with the bag's weights and
    segment. The yaml is written last: it is what makes the bag visible to a reader.
    """
    from demucs.apply import BagOfModels

    into.mkdir(parents=True, exist_ok=True)
    _remove_previous_export(into, name)
    if not isinstance(model, BagOfModels):
        return [_write_package(model, into, name)]
    members = _members(model)
    packages = [_write_package(member, into, f"{name}_m{i}") for i, member in enumerate(members)]
    bag: dict[str, Any] = {
        "models": [path.stem.rsplit("-", 1)[0] for path in packages],
        "weights": [[float(weight) for weight in row] for row in model.weights],
    }
    segment = _bag_segment(members)
    if segment is not None:
        bag["segment"] = segment
    manifest = into / f"{name}.yaml"
    # JSON is YAML: Demucs reads this file with yaml.safe_load.
    _write_atomically(manifest, (json.dumps(bag, indent=2) + "\n").encode())
    return [manifest, *packages]


def _remove_previous_export(into: Path, name: str) -> None:
    """Drop an earlier export of ``name``: two files for one signature break Demucs' repo."""
    ours = re.compile(
        rf"{re.escape(name)}(?:_m\d+)?(?:-[0-9a-f]{{8}})?\.th|{re.escape(name)}\.yaml"
    )
    for path in into.iterdir():
        if path.is_file() and ours.fullmatch(path.name):
            path.unlink()


def _write_package(model: torch.nn.Module, folder: Path, signature: str) -> Path:
    """One model as the package ``demucs.states.load_model`` reads, named with its checksum."""
    import torch
    from demucs.states import get_state

    init: tuple[tuple[Any, ...], dict[str, Any]] | None = getattr(model, "_init_args_kwargs", None)
    if init is None:
        raise CommandFailed(
            f"cannot export {type(model).__name__}: it does not record the arguments it was "
            "built with (Demucs models do, through demucs.states.capture_init)"
        )
    args, kwargs = init
    package = {
        "klass": type(model),
        "args": args,
        "kwargs": kwargs,
        # Half precision only when it loses nothing: the hub's weights are stored in half.
        "state": get_state(model, None, half=_half_is_lossless(model)),
    }
    buffer = io.BytesIO()
    torch.save(package, buffer)
    data = buffer.getvalue()
    # Demucs' own naming (demucs.states.save_with_checksum): LocalRepo checks it on load.
    path = folder / f"{signature}-{hashlib.sha256(data).hexdigest()[:8]}.th"
    _write_atomically(path, data)
    return path


def _half_is_lossless(model: torch.nn.Module) -> bool:
    import torch

    return all(
        torch.equal(tensor, tensor.half().to(tensor.dtype))
        for tensor in model.state_dict().values()
        if tensor.is_floating_point()
    )


def _bag_segment(members: list[torch.nn.Module]) -> float | None:
    """The segment a bag imposed on its members (``BagOfModels`` sets it in place)."""
    for member in members:
        kwargs: dict[str, Any] = getattr(member, "_init_args_kwargs", ((), {}))[1]
        init = kwargs.get("segment")
        current = getattr(member, "segment", None)
        if init is not None and current is not None and current != init:
            return float(current)
    return None


def _write_atomically(path: Path, data: bytes) -> None:
    # Not "*.th"/"*.yaml" while being written: Demucs must not pick up half a file.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _verify_export(original: DemucsSeparator, name: str, into: Path) -> None:
    """Reload from ``into`` through the worker's loader; the weights must be identical."""
    import torch

    started = time.perf_counter()
    exported = _load(name, into)
    problems = []
    for field in ("sources", "sample_rate", "audio_channels"):
        if getattr(original, field) != getattr(exported, field):
            problems.append(field)
    want, have = original.model.state_dict(), exported.model.state_dict()
    if want.keys() != have.keys():
        problems.append("parameter names")
    else:
        problems += [key for key in want if not torch.equal(want[key], have[key])][:5]
    want_members, have_members = _members(original.model), _members(exported.model)
    if [float(getattr(m, "segment", 0)) for m in want_members] != [
        float(getattr(m, "segment", 0)) for m in have_members
    ]:
        problems.append("segment")
    if getattr(original.model, "weights", None) != getattr(exported.model, "weights", None):
        problems.append("bag weights")
    if problems:
        raise CommandFailed(
            f"the export in {into} does not reload as the model it was written from "
            f"(differs in: {', '.join(problems)})"
        )
    typer.echo(f"reloaded from {into} in {time.perf_counter() - started:.2f} s")
