"""Loggers in a run: the ``loggers:`` section (default from the default recipe, validated once, ``--logger``),
``metrics.jsonl`` written by a real ``vltk train`` and rewound by a resume, and the progress display (loss terms,
lr, an ETA that ignores evaluation time, parameter counts)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path

import pytest
from tiny_runs import tiny_cli

from vltk.config import build_config, resolve
from vltk.engine.progress import TrainProgress, describe_step, parameter_summary
from vltk.errors import UserError
from vltk.testing import invoke, isolated_plugin_manager

TINY = tiny_cli("train.eval_interval=2", "eval.overlays=0", "--quiet")


@pytest.fixture
def manager() -> Iterator:
    """The installed plugins, plus the loggers plugin when its entry point is not installed (yet)."""
    from vltk_plugins.loggers import hooks

    installed = {entry_point.name for entry_point in metadata.entry_points(group="vltk")}
    extra = {} if "loggers" in installed else {"loggers": hooks}
    with isolated_plugin_manager(autoload=True, extra=extra) as plugins:
        yield plugins


def _resolve(manager, *overrides: str, recipe: str | None = None, **components) -> object:
    config = build_config(recipe, components=components, overrides=list(overrides), recipe_dirs=manager.recipe_dirs())
    return resolve(config, manager.get_registry())


def test_the_default_recipe_logs_jsonl_and_loggers_can_be_chosen_or_switched_off(manager) -> None:
    assert [item.name for item in _resolve(manager).loggers] == ["jsonl"]
    assert [item.name for item in _resolve(manager, recipe="rein/synthetic").loggers] == ["jsonl"]
    assert _resolve(manager, "loggers=[]").loggers == ()
    chosen = _resolve(manager, "loggers=[jsonl, tensorboard]", "loggers.1.folder=tb")
    assert [item.name for item in chosen.loggers] == ["jsonl", "tensorboard"]
    assert chosen.config.loggers[1].options() == {"folder": "tb", "flush_secs": 30}  # defaults written back
    flagged = _resolve(manager, loggers=["tensorboard"])
    assert [item.name for item in flagged.loggers] == ["tensorboard"]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("loggers=[tensorbord]", "unknown logger 'tensorbord'; did you mean 'tensorboard'?"),
        ("loggers=[jsonl, jsonl]", "lists 'jsonl' twice"),
        ("loggers.0.fle=x.jsonl", "loggers.0.fle: unknown option; did you mean 'file'?"),
    ],
)
def test_bad_logger_configuration_is_one_clear_error(manager, override: str, message: str) -> None:
    with pytest.raises(UserError, match=message.replace("?", r"\?").replace("[", r"\[")):
        _resolve(manager, override)


def _jsonl(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


def _train(*args: str) -> None:
    result = invoke(["train", *TINY, *args])
    assert result.exit_code == 0, result.output[-3000:]


def test_metrics_jsonl_follows_a_run_and_a_resume_rewinds_it_to_the_checkpoint(manager, tmp_path: Path) -> None:
    run = tmp_path / "run"
    _train("--output", str(run), "train.iters=2")
    records = _jsonl(run)
    history = json.loads((run / "metrics.json").read_text())["history"]
    assert [(r["step"], r["train/loss"]) for r in records if "train/loss" in r] == [
        (entry["iter"], entry["loss"]) for entry in history["train"]
    ]
    assert {"eval/fog/miou", "eval/target_avg"} <= set(records[-2]) and records[-1]["step"] == 2
    assert "final" in records[-1]
    at_two = tmp_path / "last-at-2.pt"
    shutil.copy(run / "last.pt", at_two)
    _train("--resume", str(run), "train.iters=4", "--allow-changes")
    longer = _jsonl(run)
    # the run dies after logging step 4 with its checkpoint at step 2: resume from there
    shutil.copy(at_two, run / "last.pt")
    (run / "last.prev.pt").unlink()
    _train("--resume", str(run))
    again = _jsonl(run)
    steps = [(r["step"], r["train/loss"]) for r in again if "train/loss" in r]
    assert [step for step, _ in steps] == [1, 2, 3, 4]  # no step twice
    assert steps == [(r["step"], r["train/loss"]) for r in longer if "train/loss" in r]  # and exactly the same
    evaluations = [r["step"] for r in again if "eval/target_avg" in r]
    assert evaluations == [2, 4] and [r["step"] for r in again if "final" in r] == [2, 4]


def test_a_missing_tensorboard_is_one_error_before_anything_is_written(
    manager, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    result = invoke(["train", *TINY, "train.iters=1", "--logger", "tensorboard", "--output", str(tmp_path / "r")])
    assert result.exit_code == 2
    assert 'pip install "vltk-dg[tensorboard]"' in result.output
    assert not (tmp_path / "r").exists()


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_the_eta_does_not_count_evaluation_time() -> None:
    clock = _Clock()
    progress = TrainProgress(None, total=100, start=0, enabled=False, log_interval=10, clock=clock)
    with progress:
        for step in range(1, 11):
            clock.now += 1.0  # one second per step
            progress.advance(step, {"loss": 1.0})
        before = progress.eta_seconds
        with progress.paused():
            clock.now += 500.0  # a long evaluation
        clock.now += 1.0
        progress.advance(11, {"loss": 1.0})
    assert before == pytest.approx(90.0)
    assert progress.eta_seconds == pytest.approx(89.0)  # 89 steps at 1 s, the evaluation left out
    assert progress.speed == pytest.approx(1.0)


def test_the_step_line_shows_the_loss_terms_and_the_learning_rate() -> None:
    text = describe_step({"iter": 3, "lr": 3e-4, "loss": 0.8125, "loss_ce": 0.7, "loss_dice": 0.1125})
    assert text == "loss 0.8125 (ce 0.7 dice 0.113)  lr 3.00e-04"
    assert describe_step({"iter": 3, "lr": 1e-3, "loss": 0.5, "loss_ce": 0.5}) == "loss 0.5  lr 1.00e-03"


def test_parameter_summary_counts_trainable_and_total() -> None:
    from torch import nn

    model = nn.Sequential(nn.Linear(1000, 1000), nn.Linear(1000, 10))
    model[0].requires_grad_(False)
    assert parameter_summary(model) == "parameters: 1.01M total, 10.01K trainable (1.0%)"
