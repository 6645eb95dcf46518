"""Rein-style checkpoints: a frozen backbone loaded from a file is left out and re-injected at evaluation."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch

import vltk
from vltk.testing import invoke

TINY = [
    "dataset.size=64",
    "dataset.num_train=4",
    "dataset.num_val=2",
    "dataset.domains=[synthetic,night]",
    "train.iters=2",
    "train.batch_size=2",
    "train.checkpoint_interval=1",
    "eval.batch_size=2",
    "eval.overlays=0",
    "adapter.token_length=8",
    "adapter.link_token_to_query=false",
]


@pytest.fixture(scope="module")
def backbone_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A local open_clip-format checkpoint of the tiny EVA02 (what a user would pass as backbone.pretrained)."""
    torch.manual_seed(123)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        backbone = vltk.create("backbone", "eva02", variant="tiny")
    path = tmp_path_factory.mktemp("weights") / "eva02_tiny.pt"
    torch.save(backbone.state_dict(), path)
    return path


def _train_rein_with(backbone: Path | str, out: Path) -> float:
    result = invoke(
        [
            "train",
            "--recipe",
            "rein/synthetic",
            "--output",
            str(out),
            "--quiet",
            *TINY,
            f"backbone.pretrained={backbone}",
        ]
    )
    assert result.exit_code == 0, result.output
    return json.loads((out / "metrics.json").read_text())["final"]["domains"]["night"]["miou"]


def test_frozen_pretrained_backbone_is_left_out_and_reloaded(backbone_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    trained = _train_rein_with(backbone_file, out)
    state = torch.load(out / "last.pt", weights_only=True)
    assert state["backbone_included"] is False
    assert not any(key.startswith("backbone.") for key in state["model"])
    assert any(key.startswith("adapter.learnable_tokens_a") for key in state["model"])

    evaluated = invoke(["eval", "--checkpoint", str(out / "last.pt"), "--json"])
    assert evaluated.exit_code == 0, evaluated.output
    assert json.loads(evaluated.output)["domains"]["night"]["miou"] == pytest.approx(trained)

    moved = tmp_path / "elsewhere.pt"
    backbone_file.rename(moved)
    try:
        missing = invoke(["eval", "--checkpoint", str(out / "last.pt")])
        assert missing.exit_code == 2 and "--backbone-weights" in missing.output
        rescued = invoke(["eval", "--checkpoint", str(out / "last.pt"), "--backbone-weights", str(moved), "--json"])
        assert rescued.exit_code == 0, rescued.output
        assert json.loads(rescued.output)["domains"]["night"]["miou"] == pytest.approx(trained)
    finally:
        moved.rename(backbone_file)


@pytest.mark.parametrize(
    ("recipe", "overrides"),
    [
        ("rein/synthetic", [*TINY, "backbone.pretrained=null"]),  # random weights: nothing to reload them from
        ("default", [*TINY[:5], "eval.overlays=0"]),  # the shipped foundation, fine-tuned: the weights changed
    ],
    ids=["random", "fine-tuned"],
)
def test_random_or_finetuned_backbones_are_kept(recipe: str, overrides: list[str], tmp_path: Path) -> None:
    out = tmp_path / "run"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = invoke(["train", "--recipe", recipe, "--output", str(out), "--quiet", *overrides])
    assert result.exit_code == 0, result.output
    state = torch.load(out / "last.pt", weights_only=True)
    assert state["backbone_included"] is True
    assert any(key.startswith("backbone.") for key in state["model"])


def test_frozen_shipped_foundation_is_left_out_and_reloaded_by_name(tmp_path: Path) -> None:
    """rein/synthetic freezes builtin:vltk-tiny-clip: the checkpoint names it instead of carrying 24 MB of it."""
    out = tmp_path / "run"
    result = invoke(["train", "--recipe", "rein/synthetic", "--output", str(out), "--quiet", *TINY])
    assert result.exit_code == 0, result.output
    state = torch.load(out / "last.pt", weights_only=True)
    assert state["backbone_included"] is False
    assert state["backbone_record"]["source"] == "builtin:vltk-tiny-clip"
    trained = json.loads((out / "metrics.json").read_text())["final"]["domains"]["night"]["miou"]
    evaluated = invoke(["eval", "--checkpoint", str(out / "last.pt"), "--json"])
    assert evaluated.exit_code == 0, evaluated.output
    assert json.loads(evaluated.output)["domains"]["night"]["miou"] == pytest.approx(trained)


def test_wrong_shape_backbone_file_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pt"
    torch.save({"visual.trunk.cls_token": torch.zeros(1, 1, 7)}, bad)
    result = invoke(
        ["train", "--output", str(tmp_path / "run"), *TINY[:2], "train.iters=1", f"backbone.pretrained={bad}"]
    )
    assert result.exit_code == 2, result.output
    assert "cls_token" in result.output and "Traceback" not in result.output


def test_backbone_less_checkpoint_records_its_backbone_and_works_from_another_folder(
    backbone_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    workdir = tmp_path / "work"
    (workdir / "weights").mkdir(parents=True)
    (workdir / "weights" / "bb.pt").write_bytes(backbone_file.read_bytes())
    monkeypatch.chdir(workdir)
    trained = _train_rein_with("weights/bb.pt", workdir / "run")  # a relative path, as users type it
    state = torch.load(workdir / "run" / "last.pt", weights_only=True)
    record = state["backbone_record"]
    assert record["name"] == "eva02" and record["section"]["variant"] == "tiny"
    assert record["source"] == str((workdir / "weights" / "bb.pt").resolve())
    assert len(record["fingerprint"]) == 64

    monkeypatch.chdir(tmp_path)  # "weights/bb.pt" no longer resolves: the recorded absolute path is used
    evaluated = invoke(["eval", "--checkpoint", str(workdir / "run" / "last.pt"), "--json"])
    assert evaluated.exit_code == 0, evaluated.output
    assert json.loads(evaluated.output)["domains"]["night"]["miou"] == pytest.approx(trained)


def test_another_backbone_is_refused_by_its_fingerprint(backbone_file: Path, tmp_path: Path) -> None:
    _train_rein_with(backbone_file, tmp_path / "run")
    torch.manual_seed(7)  # same architecture and shapes, other weights: only the fingerprint can tell
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        other = vltk.create("backbone", "eva02", variant="tiny")
    other_file = tmp_path / "other.pt"
    torch.save(other.state_dict(), other_file)
    before = (tmp_path / "run" / "metrics.json").read_bytes()
    result = invoke(["eval", "--checkpoint", str(tmp_path / "run" / "last.pt"), "--backbone-weights", str(other_file)])
    assert result.exit_code == 2, result.output
    assert "fingerprint" in result.output and str(backbone_file.resolve()) in result.output
    assert "Traceback" not in result.output
    resumed = invoke(
        ["train", "--resume", str(tmp_path / "run"), "--allow-changes", f"backbone.pretrained={other_file}", "--quiet"]
    )
    assert resumed.exit_code == 2 and "fingerprint" in resumed.output, resumed.output
    assert (tmp_path / "run" / "metrics.json").read_bytes() == before


def test_checkpoint_with_its_backbone_evaluates_without_a_random_weights_warning(tmp_path: Path) -> None:
    import subprocess
    import sys

    out = tmp_path / "run"
    result = invoke(["train", "--output", str(out), "--quiet", *TINY[:5], "eval.overlays=0"])
    assert result.exit_code == 0, result.output
    evaluated = subprocess.run(
        [sys.executable, "-m", "vltk", "eval", "--checkpoint", str(out / "last.pt")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert evaluated.returncode == 0, evaluated.stderr
    assert "random weights" not in evaluated.stderr + evaluated.stdout
