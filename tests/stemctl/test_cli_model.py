"""``stemctl model fetch`` and ``stemctl model info``, offline: on local model folders
written by ``devkit.models`` and loaded through Demucs' own ``get_model``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from demucs.apply import BagOfModels
from demucs.pretrained import get_model
from typer.testing import CliRunner, Result

from devkit.models import HTDEMUCS_6S_SOURCES, build_model, write_local_model
from stem_contracts import model_version
from stemctl.cli import app

MODEL = "htdemucs_6s"


def stemctl(*args: str | Path) -> Result:
    return CliRunner().invoke(app, [str(arg) for arg in args])


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    want, have = a.state_dict(), b.state_dict()
    return want.keys() == have.keys() and all(torch.equal(want[k], have[k]) for k in want)


@pytest.fixture
def bag_repo(tmp_path: Path) -> Path:
    """A bag of two tiny HTDemucs, in the layout of Demucs' remote repository: a yaml
    naming the members (like htdemucs_6s.yaml on the hub) and one package per member."""
    folder = tmp_path / "bag-source"
    write_local_model(folder, "member_a", seed=1)
    write_local_model(folder, "member_b", seed=2)
    weights = [[1.0, 0.5, 1.0, 1.0, 0.25, 1.0], [0.0, 0.5, 1.0, 1.0, 0.75, 1.0]]
    (folder / "bag6s.yaml").write_text(
        "models: ['member_a', 'member_b']\n"
        f"weights: {weights}\n"
        "segment: 7.0\n"  # shorter than the 7.8 s the members were built with
    )
    return folder


def test_fetch_loads_the_model_through_demucs_and_reports_it(model_repo: Path) -> None:
    result = stemctl("model", "fetch", "--repo", model_repo)

    assert result.exit_code == 0, result.output
    assert f"model {MODEL} ({model_version(MODEL)}) loaded from {model_repo}" in result.stdout
    assert "6 sources" in result.stdout


def test_fetch_into_a_folder_writes_what_get_model_loads_with_identical_weights(
    model_repo: Path, tmp_path: Path
) -> None:
    into = tmp_path / "baked"

    result = stemctl("model", "fetch", "--repo", model_repo, "--into", into)

    assert result.exit_code == 0, result.output
    (package,) = into.iterdir()
    # Demucs' checksummed name: its LocalRepo verifies the sha256 prefix on every load.
    assert package.name.startswith(f"{MODEL}-")
    assert package.suffix == ".th"
    assert _same_weights(get_model(MODEL, repo=into), get_model(MODEL, repo=model_repo))
    assert f"verified: {into} holds the same weights" in result.stdout


def test_fetch_into_exports_a_bag_with_its_members_weights_and_segment(
    bag_repo: Path, tmp_path: Path
) -> None:
    into = tmp_path / "baked"

    result = stemctl("model", "fetch", "--model", "bag6s", "--repo", bag_repo, "--into", into)

    assert result.exit_code == 0, result.output
    names = sorted(path.name for path in into.iterdir())
    assert names[0] == "bag6s.yaml"
    assert [name.split("-")[0] for name in names[1:]] == ["bag6s_m0", "bag6s_m1"]
    original, exported = get_model("bag6s", repo=bag_repo), get_model("bag6s", repo=into)
    assert isinstance(exported, BagOfModels)
    assert exported.weights == original.weights
    assert [m.segment for m in exported.models] == [m.segment for m in original.models] == [7, 7]
    assert _same_weights(exported, original)


def test_fetching_into_the_same_folder_again_replaces_only_the_earlier_export(
    tmp_path: Path,
) -> None:
    """A second export of other weights must not leave two files for one signature (Demucs
    refuses that), and must not touch another model in the folder."""
    into = tmp_path / "baked"
    write_local_model(into, "other_model")
    first, second = tmp_path / "first", tmp_path / "second"
    write_local_model(first, MODEL, seed=1)
    write_local_model(second, MODEL, seed=2)

    assert stemctl("model", "fetch", "--repo", first, "--into", into).exit_code == 0
    result = stemctl("model", "fetch", "--repo", second, "--into", into)

    assert result.exit_code == 0, result.output
    assert len(list(into.glob(f"{MODEL}-*.th"))) == 1
    assert _same_weights(get_model(MODEL, repo=into), get_model(MODEL, repo=second))
    assert (into / "other_model.th").is_file()


def test_fetch_from_an_empty_folder_fails_with_one_clear_line(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()

    result = stemctl("model", "fetch", "--repo", empty)

    assert result.exit_code == 1
    assert result.stdout == ""
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"stemctl: model {MODEL} not found or unreadable in {empty}")
    assert "no network fallback" in line


def test_fetch_from_a_missing_folder_fails_with_one_clear_line(tmp_path: Path) -> None:
    result = stemctl("model", "fetch", "--repo", tmp_path / "nowhere")

    assert result.exit_code == 1
    assert result.stderr.splitlines() == [
        f"stemctl: model {MODEL}: model folder {tmp_path / 'nowhere'} does not exist"
    ]


def test_fetch_refuses_a_name_demucs_cannot_use_as_a_file_before_loading_anything(
    tmp_path: Path,
) -> None:
    # With no --repo this would go to the hub: the check must come first.
    result = stemctl("model", "fetch", "--model", "hdemucs-mmi", "--into", tmp_path / "out")

    assert result.exit_code == 1
    assert "must match [A-Za-z0-9_]+" in result.stderr
    assert not (tmp_path / "out").exists()


def test_fetch_refuses_to_export_over_its_own_source(model_repo: Path) -> None:
    result = stemctl("model", "fetch", "--repo", model_repo, "--into", model_repo)

    assert result.exit_code == 1
    assert "is the folder the model is loaded from" in result.stderr


def test_info_prints_name_sources_sample_rate_parameters_and_model_version(
    model_repo: Path,
) -> None:
    result = stemctl("model", "info", "--repo", model_repo)

    assert result.exit_code == 0, result.output
    fields = dict(line.split(":", 1) for line in result.stdout.splitlines())
    fields = {key.strip(): value.strip() for key, value in fields.items()}
    parameters = sum(p.numel() for p in build_model(size="tiny").parameters())
    assert fields == {
        "model": MODEL,
        "modelVersion": "demucs-htdemucs-6s",
        "loaded from": str(model_repo),
        "architecture": "HTDemucs",
        "sources": ", ".join(HTDEMUCS_6S_SOURCES),
        "sample rate": "44100 Hz",
        "channels": "2",
        "segment": "7.8 s",
        "parameters": f"{parameters:,}",
    }


def test_info_json_is_one_object_with_the_same_facts(bag_repo: Path) -> None:
    result = stemctl("model", "info", "--model", "bag6s", "--repo", bag_repo, "--json")

    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    assert info["name"] == "bag6s"
    assert info["modelVersion"] == "demucs-bag6s"
    assert info["architecture"] == "BagOfModels of 2 × HTDemucs"
    assert info["sources"] == list(HTDEMUCS_6S_SOURCES)
    assert info["sampleRate"] == 44100
    assert info["segmentSeconds"] == 7.0
    assert info["parameters"] == 2 * sum(p.numel() for p in build_model().parameters())


def test_model_commands_default_to_stem_model_and_stem_model_repo(
    model_repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STEM_MODEL", MODEL)
    monkeypatch.setenv("STEM_MODEL_REPO", str(model_repo))

    result = stemctl("model", "info", "--json")

    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["loadedFrom"] == str(model_repo)
