"""``vltk export``: slim standalone checkpoint + torch.export program that reproduce the trained model."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_runs import TINY_API
from torch import Tensor, nn

import vltk
from vltk.engine.export import unused_prefixes
from vltk.testing import invoke

TINY = TINY_API


def _vltk(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vltk", *args], capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict]:
    root = tmp_path_factory.mktemp("export")
    results = vltk.train(overrides=TINY, output=root / "run")
    done = _vltk("export", str(root / "run"), "--output", str(root / "exported"), "--size", "64")
    assert done.returncode == 0, done.stderr
    return root / "run", root / "exported", results


def test_slim_checkpoint_drops_training_state_and_the_unused_text_tower(exported: tuple[Path, Path, dict]) -> None:
    run, out, _ = exported
    slim = torch.load(out / "model.pt", weights_only=True)
    assert "optimizer" not in slim and "rng" not in slim and slim["backbone_included"] is True
    assert "backbone.text." in slim["omitted"]
    assert not any(key.startswith("backbone.text.") for key in slim["model"])
    assert (out / "model.pt").stat().st_size < 0.5 * (run / "best.pt").stat().st_size
    record = json.loads((out / "export.json").read_text())
    assert record["rebuilt_max_abs_diff"] <= 1e-4 and record["program_max_abs_diff"] <= 1e-4
    assert record["input"]["dynamic_batch"] is True


def test_exported_program_reproduces_the_eager_logits(exported: tuple[Path, Path, dict]) -> None:
    run, out, _ = exported
    program = torch.export.load(str(out / "model.pt2")).module()
    eager = vltk.load(run / "best.pt").model
    images = torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(3))  # not the example batch of 2
    with torch.no_grad():
        torch.testing.assert_close(program(images), eager.predict(images), atol=1e-4, rtol=0)


def test_slim_checkpoint_evaluates_and_predicts_like_the_original(exported: tuple[Path, Path, dict]) -> None:
    run, out, results = exported
    done = _vltk("eval", "--checkpoint", str(out / "model.pt"), "--json", "--output", str(out / "eval"))
    assert done.returncode == 0, done.stderr
    assert "random weights" not in done.stderr
    assert json.loads(done.stdout)["domains"]["night"]["miou"] == pytest.approx(results["domains"]["night"]["miou"])
    image = np.random.default_rng(1).integers(0, 256, size=(40, 56, 3), dtype=np.uint8)
    np.testing.assert_array_equal(vltk.load(out / "model.pt").predict(image), vltk.load(run / "best.pt").predict(image))


def test_bad_export_targets_are_one_line_errors(tmp_path: Path) -> None:
    missing = invoke(["export", str(tmp_path / "nothing"), "--output", str(tmp_path / "out")])
    assert missing.exit_code == 2 and "does not exist" in missing.output
    (tmp_path / "empty").mkdir()
    empty = invoke(["export", str(tmp_path / "empty"), "--output", str(tmp_path / "out")])
    assert empty.exit_code == 2 and "no best.pt or last.pt" in empty.output
    bad_size = invoke(["export", str(tmp_path / "empty"), "--output", str(tmp_path / "out"), "--size", "a,b"])
    assert bad_size.exit_code == 2
    assert not (tmp_path / "out").exists()


class _Toy(nn.Module):
    """A used conv, a query table read as ``.weight`` (never called), an unused head, a part outside the tree."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)
        self.query = nn.Embedding(2, 4)
        self.unused_head = nn.Linear(4, 4)
        self._hidden = nn.Linear(4, 4)  # kept out of the module tree, but in the state dict
        object.__setattr__(self, "hidden", self._modules.pop("_hidden"))
        self._register_state_dict_hook(self._add_hidden)

    @staticmethod
    def _add_hidden(module: nn.Module, state: dict, prefix: str, _meta: object) -> None:
        for name, value in module.hidden.state_dict().items():
            state[f"{prefix}hidden.{name}"] = value

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        features = self.conv(images)
        return {"logits": features * self.query.weight.sum(0).view(1, 4, 1, 1)}

    def predict(self, images: Tensor) -> Tensor:
        return self(images)["logits"]


def test_unused_parts_are_found_by_probing_not_by_name() -> None:
    model = _Toy()
    omitted = unused_prefixes(model, torch.rand(1, 3, 4, 4))
    assert omitted == ["hidden.", "unused_head."]
    assert all(parameter.grad is None for parameter in model.parameters())  # the probe leaves no gradients
