"""CLI through click's CliRunner (help, listing, errors with exit code 2) and through real subprocesses."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from vltk import hookimpl
from vltk.testing import invoke, isolated_plugin_manager

TINY = [
    "dataset.size=64",
    "dataset.num_train=8",
    "dataset.num_val=2",
    "dataset.domains=[synthetic,fog]",
    "train.iters=2",
    "train.batch_size=2",
    "train.eval_interval=0",
    "train.checkpoint_interval=1",
    "eval.batch_size=2",
    "eval.overlays=1",
]


@pytest.mark.parametrize("command", [[], ["train"], ["eval"], ["list"], ["show"], ["plugins"]])
def test_help_of_every_command(command: list[str]) -> None:
    result = invoke([*command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output


def test_list_adapters_and_show_rein() -> None:
    result = invoke(["list", "adapters"])
    assert result.exit_code == 0
    for name in ("frozen", "full", "rein"):
        assert name in result.output
    shown = invoke(["show", "adapter", "rein", "--json"])
    payload = json.loads(shown.output)
    options = {option["name"]: option["default"] for option in payload["options"]}
    assert options["lora_dim"] == 16 and options["token_length"] == 100 and options["scale_init"] == 1e-3
    assert payload["plugin"] == "rein" and "CVPR 2024" in payload["paper"]
    assert "lora_dim" in invoke(["show", "adapter", "rein"]).output


def test_show_dataset_urban_prints_required_options_and_the_domain_fields() -> None:
    shown = invoke(["show", "dataset", "urban"])
    assert shown.exit_code == 0, shown.output
    assert "PydanticUndefined" not in shown.output and "vltk_plugins." not in shown.output
    assert "list[UrbanDomain]" in shown.output and "required" in shown.output
    assert "UrbanDomain: the fields of each item of train, test" in shown.output
    payload = json.loads(invoke(["show", "dataset", "urban", "--json"]).output)
    train = next(option for option in payload["options"] if option["name"] == "train")
    assert train["required"] and train["default"] is None and train["type"] == "list[UrbanDomain]"
    domain = {field["name"]: field for field in payload["nested"]["UrbanDomain"]}
    assert {"name", "kind", "root"} <= set(domain) and domain["root"]["required"]


def test_list_recipes_describes_them_and_show_recipe_prints_one() -> None:
    listed = json.loads(invoke(["list", "recipes", "--json"]).output)
    assert listed["rein/synthetic"]["description"].startswith("Rein on the embedded synthetic scenes")
    assert invoke(["list", "recipes"]).output.count("Rein on the embedded") == 1
    shown = invoke(["show", "recipe", "rein/synthetic"])
    assert shown.exit_code == 0 and "vltk train --recipe rein/synthetic" in shown.output
    assert "name: rein" in shown.output  # the YAML itself
    assert json.loads(invoke(["show", "recipe", "clip_gap/synthetic", "--json"]).output)["name"] == "clip-gap/synthetic"
    unknown = invoke(["show", "recipe", "rein/synthtic"])
    assert unknown.exit_code == 2 and "did you mean 'rein/synthetic'?" in unknown.output


def test_list_recipes_and_plugins_json() -> None:
    assert "rein/synthetic" in invoke(["list", "recipes"]).output
    plugins = json.loads(invoke(["plugins", "--json"]).output)
    names = {plugin["name"]: plugin for plugin in plugins}
    assert names["rein"]["distribution"] == "vltk-dg"
    assert "vltk_register_adapters" in names["rein"]["hooks"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["train", "--adapter", "reins", "--dry-run"], "did you mean 'rein'?"),
        (["train", "--adapter", "rein", "adapter.lora_dm=8", "--dry-run"], "adapter.lora_dm"),
        (["train", "--recipe", "nope.yaml"], "does not exist"),
        (["train", "train.iters"], "KEY=VALUE"),
        (["show", "adapter", "lora2"], "unknown adapter 'lora2'"),
        (["list", "adaptr"], "did you mean 'adapter'?"),
        (["eval", "--checkpoint", "missing.pt"], "does not exist"),
        (["trian"], "did you mean 'train'?"),
    ],
)
def test_user_errors_exit_2_with_one_clear_line(args: list[str], message: str) -> None:
    result = invoke(args)
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output


def test_dry_run_prints_the_resolved_config() -> None:
    result = invoke(["train", "--adapter", "rein", "--dry-run", "adapter.lora_dim=8"])
    assert result.exit_code == 0, result.output
    assert "lora_dim: 8" in result.output and "token_length: 100" in result.output
    assert "output: runs/default" in result.output


def test_eval_rejects_foreign_and_corrupt_checkpoints(tmp_path: Path) -> None:
    import torch

    foreign = tmp_path / "foreign.pt"
    torch.save({"weight": torch.zeros(2)}, foreign)
    result = invoke(["eval", "--checkpoint", str(foreign)])
    assert result.exit_code == 2 and "not a vltk checkpoint" in result.output
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a zip file")
    result = invoke(["eval", "--checkpoint", str(corrupt)])
    assert result.exit_code == 2 and "cannot be read" in result.output


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONUNBUFFERED": "1"}


@pytest.mark.slow
def test_subprocess_train_writes_checkpoint_metrics_plot_then_eval_and_resume(tmp_path: Path) -> None:
    out = tmp_path / "run"
    command = [sys.executable, "-m", "vltk", "train", "--output", str(out), *TINY]
    done = subprocess.run(command, capture_output=True, text=True, env=_env(), timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    for name in ("last.pt", "best.pt", "metrics.json", "curves.png", "config.resolved.yaml", "environment.json"):
        assert (out / name).is_file(), name
    assert list((out / "overlays").glob("fog_*.png"))
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["final"]["domains"]) == {"synthetic", "fog"}
    assert "target average" in done.stdout

    evaluated = subprocess.run(
        [sys.executable, "-m", "vltk", "eval", "--checkpoint", str(out / "last.pt"), "--json"],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=600,
    )
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    results = json.loads(evaluated.stdout)
    assert results["domains"]["fog"]["miou"] == pytest.approx(metrics["final"]["domains"]["fog"]["miou"])

    # resume: two more iterations continue from step 2, not from scratch (train.iters 2 -> 4 must be allowed)
    resumed = subprocess.run(
        [*command, "train.iters=4", "--resume", "--allow-changes"],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=600,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stderr
    history = json.loads((out / "metrics.json").read_text())["history"]["train"]
    assert [entry["iter"] for entry in history] == [1, 2, 3, 4]


def test_subprocess_user_error_has_no_traceback() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "vltk", "train", "--adapter", "reins"],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=120,
    )
    assert done.returncode == 2
    assert "did you mean 'rein'?" in done.stderr and "Traceback" not in done.stderr


class DeclaredError(Exception):
    """An error type of a library that cannot subclass UserError (like vltk_kernels' backend error)."""


class DeclaresErrorType:
    @hookimpl
    def vltk_user_error_types(self) -> list[type[BaseException]]:
        return [DeclaredError]


def test_error_types_declared_by_plugins_print_one_line() -> None:
    """``vltk_user_error_types``: a declared type is shown like a UserError; any other exception stays a bug."""
    import click
    from click.testing import CliRunner

    from vltk.cli import LazyGroup

    @click.group(cls=LazyGroup)
    def group() -> None:
        """A group with the vltk CLI's error handling."""

    @group.command("declared")
    def declared() -> None:
        raise DeclaredError("bad backend 'x'; use 'y'")

    @group.command("bug")
    def bug() -> None:
        raise DeclaredError.__base__("a bug")  # a plain Exception: not declared

    with isolated_plugin_manager(autoload=False, extra={"declares": DeclaresErrorType()}):
        shown = CliRunner().invoke(group, ["declared"])
        crashed = CliRunner().invoke(group, ["bug"])
    assert shown.exit_code == 2 and shown.output == "Error: bad backend 'x'; use 'y'\n"
    assert crashed.exit_code == 1 and type(crashed.exception) is Exception
    with isolated_plugin_manager(autoload=False):
        undeclared = CliRunner().invoke(group, ["declared"])
    assert undeclared.exit_code == 1 and isinstance(undeclared.exception, DeclaredError)


def test_cli_import_does_not_import_torch() -> None:
    code = "import sys, vltk.cli, vltk.config, vltk.plugins; vltk.plugins.get_registry(); print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_env(), timeout=120)
    assert done.stdout.strip() == "False", done.stderr


@pytest.mark.slow
def test_ctrl_c_saves_last_checkpoint_and_says_how_to_resume(tmp_path: Path) -> None:
    import signal
    import time

    out = tmp_path / "run"
    command = [
        sys.executable,
        "-m",
        "vltk",
        "train",
        "--output",
        str(out),
        *TINY,
        "train.iters=100000",
        "train.checkpoint_interval=100000",
        "train.log_interval=1",
    ]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
    deadline = time.monotonic() + 300
    assert process.stderr is not None
    for line in process.stderr:  # wait until training has made progress
        if line.startswith("iter 3/") or time.monotonic() > deadline:
            break
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr[-2000:]
    assert "--resume" in stderr and "Traceback" not in stderr
    state = torch_load(out / "last.pt")
    assert state["step"] >= 3


def torch_load(path: Path) -> dict:
    import torch

    return torch.load(path, weights_only=True)
