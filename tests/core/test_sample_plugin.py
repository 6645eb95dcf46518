"""A real third-party plugin package (tests/sample_plugin) installed with pip and discovered by entry point."""

from __future__ import annotations

import json
import os
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
            str(SAMPLE),
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


def test_blocking_the_installed_plugin(installed_sample: dict[str, str]) -> None:
    env = {**installed_sample, "VLTK_BLOCK_PLUGINS": "sample"}
    assert "bitfit" not in _vltk(env, "list", "adapters").stdout


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
