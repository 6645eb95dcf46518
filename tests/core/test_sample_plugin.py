"""A real third-party plugin package (tests/sample_plugin) installed with pip and discovered by entry point.

It is the worked example of ``docs/architecture.md`` (a ``linear`` decoder, a ``bitfit`` adapter, the
``sample/linear`` recipe, a ``vltk hello`` command); ``tests/core/test_architecture_doc.py`` keeps the two in step.
"""

from __future__ import annotations

import importlib
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SAMPLE = Path(__file__).resolve().parents[1] / "sample_plugin"


@pytest.fixture(scope="module")
def installed_sample(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """pip-install the sample distribution into a private folder; return an environment that sees it."""
    target = tmp_path_factory.mktemp("site")
    build = tmp_path_factory.mktemp("build")
    # build from a clean copy: pip builds in the source tree, whose left-over build/ would leak stale modules
    source = build / "vltk-sample"
    shutil.copytree(SAMPLE, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--quiet",
            "--target",
            str(target),
            str(source),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=build,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert list(target.glob("vltk_sample-*.dist-info"))
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(target), os.environ.get("PYTHONPATH", "")])}


def _vltk(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vltk", *args], capture_output=True, text=True, env=env, timeout=300)


def test_installed_plugin_shows_in_plugins_and_list(installed_sample: dict[str, str]) -> None:
    plugins = json.loads(_vltk(installed_sample, "plugins", "--json").stdout)
    sample = next(plugin for plugin in plugins if plugin["name"] == "sample")
    assert sample["distribution"] == "vltk-sample" and sample["version"] == "0.1.0"
    assert "vltk_register_adapters" in sample["hooks"]
    listed = _vltk(installed_sample, "list", "adapters")
    assert "bitfit" in listed.stdout and "rein" in listed.stdout
    assert "train_norms" in _vltk(installed_sample, "show", "adapter", "bitfit").stdout
    assert _vltk(installed_sample, "hello").stdout.strip() == "hello from vltk-sample"


def test_installed_plugin_ships_its_decoder_and_recipe(installed_sample: dict[str, str]) -> None:
    decoders = json.loads(_vltk(installed_sample, "list", "decoders", "--json").stdout)["decoder"]
    linear = next(entry for entry in decoders if entry["name"] == "linear")
    assert linear["plugin"] == "sample" and "1x1 conv" in linear["summary"]
    assert "fpn" in {entry["name"] for entry in decoders}  # the built-ins are still there
    shown = json.loads(_vltk(installed_sample, "show", "decoder", "linear", "--json").stdout)
    assert {option["name"]: option["default"] for option in shown["options"]} == {"stride": 16, "batch_norm": True}
    recipes = json.loads(_vltk(installed_sample, "list", "recipes", "--json").stdout)
    # the recipe comes from the installed copy (package data), not from the source tree
    assert Path(recipes["sample/linear"]["file"]).parent.parent.name == "vltk_sample"
    assert not Path(recipes["sample/linear"]["file"]).is_relative_to(SAMPLE)
    assert recipes["sample/linear"]["description"].startswith("Linear probe of a frozen tiny EVA02")


@pytest.mark.slow
def test_installed_linear_decoder_trains(installed_sample: dict[str, str], tmp_path: Path) -> None:
    """The worked example's command, shortened: a real subprocess run of the plugin's recipe."""
    output = tmp_path / "linear"
    done = _vltk(
        installed_sample,
        "train",
        "--recipe",
        "sample/linear",
        "train.iters=3",
        "dataset.num_train=8",
        "dataset.num_val=4",
        "--output",
        str(output),
        "--quiet",
    )
    assert done.returncode == 0, done.stdout + done.stderr
    metrics = json.loads((output / "metrics.json").read_text())
    assert metrics["recipe"] == "sample/linear"
    assert len(metrics["history"]["train"]) == 3
    assert "linear" in (output / "config.resolved.yaml").read_text()


def test_blocking_the_installed_plugin(installed_sample: dict[str, str]) -> None:
    env = {**installed_sample, "VLTK_BLOCK_PLUGINS": "sample"}
    assert "bitfit" not in _vltk(env, "list", "adapters").stdout
    assert "linear" not in _vltk(env, "list", "decoders").stdout


def test_sample_adapter_builds_into_a_model(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(SAMPLE))
    import vltk_sample.hooks

    import vltk_plugins.backbones.hooks
    import vltk_plugins.datasets.hooks
    import vltk_plugins.decoders.hooks
    from vltk.config import build_config
    from vltk.pipeline import build_model
    from vltk.plugins import get_plugin_manager
    from vltk.testing import isolated_plugin_manager

    # no autoload: with tests/sample_plugin on sys.path its in-tree egg-info would be found as an entry point too
    plugins = {
        "backbones": vltk_plugins.backbones.hooks,
        "decoders": vltk_plugins.decoders.hooks,
        "datasets": vltk_plugins.datasets.hooks,
        "sample": vltk_sample.hooks,
    }
    with isolated_plugin_manager(autoload=False, extra=plugins):
        config = build_config(components={"adapter": "bitfit"}, recipe_dirs=get_plugin_manager().recipe_dirs())
        model = build_model(config)
    trainable = [name for name, p in model.backbone.named_parameters() if p.requires_grad]
    assert trainable and all(name.endswith(".bias") for name in trainable)


def _sample_module(monkeypatch: pytest.MonkeyPatch, name: str) -> object:
    """Import a module of the sample plugin from its source tree (no install needed for unit tests)."""
    monkeypatch.syspath_prepend(str(SAMPLE))
    return importlib.import_module(name)


def test_linear_head_shapes_and_loss_decrease(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from vltk.api import BuildContext

    model = _sample_module(monkeypatch, "vltk_sample.linear.model")
    options = _sample_module(monkeypatch, "vltk_sample.linear.options")
    context = BuildContext(class_names=("road", "car", "sky"), embed_dim=16, num_layers=2, patch_size=16)
    head = model.build_linear_head(options.LinearHeadOptions(), context)
    assert isinstance(head.norm, torch.nn.BatchNorm2d) and head.classifier.in_channels == 16
    torch.manual_seed(0)
    # a 64x64 input's pyramid: strides 4, 8, 16, 32
    features = [torch.randn(2, 16, 64 // stride, 64 // stride) for stride in context.strides]
    outputs = head(features)
    assert set(outputs) == {"seg_logits"} and outputs["seg_logits"].shape == (2, 3, 4, 4)  # the stride-16 level
    # labels that a linear map of the stride-16 features explains, at full resolution, with an unlabelled border
    teacher = torch.randn(3, 16)
    labels = torch.einsum("kc,bchw->bkhw", teacher, features[2]).argmax(1)
    targets = labels.repeat_interleave(16, dim=1).repeat_interleave(16, dim=2)
    targets[:, :4] = context.ignore_index
    first = head.loss(outputs, targets)
    assert set(first) == {"loss", "loss_ce"} and math.isclose(first["loss"].item(), math.log(3), rel_tol=0.05)
    optimizer = torch.optim.SGD(head.parameters(), lr=0.5)
    for _ in range(20):
        loss = head.loss(head(features), targets)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert head.loss(head(features), targets)["loss"].item() < 0.5 * first["loss"].item()
    unlabelled = torch.full_like(targets, context.ignore_index)
    assert head.loss(head(features), unlabelled)["loss"].item() == 0.0


def test_linear_head_reads_the_build_context(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from vltk.api import BuildContext, UserError

    model = _sample_module(monkeypatch, "vltk_sample.linear.model")
    options = _sample_module(monkeypatch, "vltk_sample.linear.options")
    # a prompter's score map widened level 2 (stride 16) by 3 channels; another ignore index
    context = BuildContext(num_classes=3, in_channels=(8, 8, 11, 8), ignore_index=0)
    head = model.build_linear_head(options.LinearHeadOptions(stride=16, batch_norm=False), context)
    assert head.classifier.in_channels == 11 and head.level == 2 and head.ignore_index == 0
    assert isinstance(head.norm, torch.nn.Identity)
    with pytest.raises(UserError, match=r"no pyramid level at stride 64 .*set decoder.stride"):
        model.build_linear_head(options.LinearHeadOptions(stride=64), context)
    with pytest.raises(UserError, match="decoder 'linear' needs num_classes"):
        model.build_linear_head(options.LinearHeadOptions(), BuildContext(embed_dim=8))
