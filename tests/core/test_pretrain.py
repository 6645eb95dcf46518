"""``vltk pretrain``: a real subprocess run writes an open_clip.pt the tiny backbones load; bad input is one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from vltk.testing import invoke

SMALL = ["train.iters=2", "train.batch_size=4", "dataset.num_train=8", "dataset.num_val=4", "eval.batch_size=4",
         "dataset.size=64"]  # fmt: skip


def test_subprocess_pretrain_writes_an_open_clip_file_the_tiny_backbone_loads(tmp_path: Path) -> None:
    out = tmp_path / "run"
    command = [sys.executable, "-m", "vltk", "pretrain", *SMALL, "--output", str(out), "--quiet"]
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ}, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "open_clip.pt" in done.stdout
    metrics = json.loads((out / "metrics.json").read_text())
    domains = metrics["final"]["domains"]
    assert set(domains) == {"synthetic", "textured", "fog", "night", "rain", "snow"}
    for entry in domains.values():
        assert 0.0 <= entry["r1"] <= 1.0 and 0.0 <= entry["condition_acc"] <= 1.0 and "object_acc" in entry

    state = torch.load(out / "open_clip.pt", weights_only=True)
    assert any(key.startswith("text.") for key in state) and "logit_scale" in state
    from vltk_plugins.backbones.open_clip_vit.model import build_eva02

    random_backbone = build_eva02({"variant": "tiny"})
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # loads without the "random weights"/"missing text tower" warnings
        loaded = build_eva02({"variant": "tiny", "pretrained": str(out / "open_clip.pt")})
    loaded_state = loaded.state_dict()
    assert set(loaded_state) == set(state)
    for key, value in state.items():
        assert torch.equal(loaded_state[key], value), key
    # the file holds trained weights: the text tower differs from a fresh random init of the same seed
    key = "text.token_embedding.weight"
    assert not torch.equal(random_backbone.state_dict()[key], state[key])


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--task", "detection"], "vltk pretrain trains task 'pretrain'"),
        (["decoder=fpn"], "is no image-text head"),
        (["--backbone", "dinov2"], "task 'pretrain'"),
        (["dataset.appearance=wild"], "dataset.appearance"),
    ],
)
def test_bad_pretrain_input_is_one_error_line(args: list[str], expected: str, tmp_path: Path) -> None:
    result = invoke(["pretrain", *args, *SMALL, "--output", str(tmp_path / "bad")])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and expected in result.output, result.output
    assert not (tmp_path / "bad").exists()


def test_pretrain_dry_run_uses_the_pretrain_recipe() -> None:
    result = invoke(["pretrain", "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "task: pretrain" in result.output and "clip-contrastive" in result.output


def test_pretrain_clip_vit_tiny_loads_into_clip_vit_and_siglip_runs(tmp_path: Path) -> None:
    out = tmp_path / "clip"
    args = ["backbone.name=clip-vit", "backbone.variant=tiny", "decoder.loss=siglip", "decoder.mim_weight=1.0"]
    result = invoke(["pretrain", *args, *SMALL, "train.iters=1", "--output", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    history = json.loads((out / "metrics.json").read_text())["history"]["train"]
    assert {"loss_contrastive", "loss_align", "loss_mim"} <= set(history[0])
    state = torch.load(out / "open_clip.pt", weights_only=True)
    from vltk_plugins.backbones.open_clip_vit.model import build_clip_vit

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loaded = build_clip_vit({"variant": "tiny", "pretrained": str(out / "open_clip.pt")})
    assert torch.equal(loaded.state_dict()["visual.conv1.weight"], state["visual.conv1.weight"])
