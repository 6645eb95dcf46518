"""Detection through config, pipeline, engine and CLI: task defaults, SGD + step schedule, task/dataset checks,
and a real (tiny) `vltk train --task detection ...` run: fit phase, training, AP50 per domain, eval, resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from vltk.config import build_config
from vltk.engine.optimization import build_optimizer, lr_factor
from vltk.errors import UserError
from vltk.pipeline import build_data_source, build_model
from vltk.plugins import get_plugin_manager
from vltk.testing import invoke

DETECTION = {"task": "detection", "backbone": "clip-resnet", "decoder": "clip-faster-rcnn", "augmenters": ["clip-gap"]}
TINY = [
    "backbone.variant=tiny",
    "dataset.size=[64,96]",
    "dataset.num_train=8",
    "dataset.num_val=2",
    "dataset.domains=[synthetic,fog]",
    "decoder.rpn_post_nms_top_n_train=40",
    "decoder.rpn_post_nms_top_n_test=20",
    "decoder.box_batch_size_per_image=16",
    "decoder.roi_size=8",
    "augmenters.0.fit_steps=2",
    "augmenters.0.crops_per_image=2",
    "augmenters.0.crop_size=48",
    "augmenters.0.offset_size=4",
    "train.iters=2",
    "train.batch_size=2",
    "train.eval_interval=0",
    "train.optimizer=sgd",
    "train.lr=0.001",
    "eval.batch_size=2",
    "device=cpu",
]


def _config(*overrides: str, recipe: str | None = None, **components: object):
    return build_config(
        recipe, components=components, overrides=list(overrides), recipe_dirs=get_plugin_manager().recipe_dirs()
    )


def test_task_detection_picks_the_boxed_dataset_and_a_prompter() -> None:
    config = _config(**DETECTION)
    assert config.task == "detection"
    assert config.dataset.name == "synthetic-det" and config.prompter.name == "clip-template"
    chosen = _config(dataset="dwd", **DETECTION)
    assert chosen.dataset.name == "dwd"  # a dataset given on the command line is kept
    assert _config().dataset.name == "synthetic" and _config().prompter is None  # segmentation untouched
    with pytest.raises(UserError, match="task"):
        _config("task=boxes")


def test_recipes_by_paper_name_keep_augmenter_options() -> None:
    config = _config(recipe="clip-gap/synthetic", augmenters=["clip-gap"])
    assert config.recipe == "clip-gap/synthetic" and config.task == "detection"
    assert config.augmenters[0].options()["fit_steps"] == 20  # --augmenter clip-gap keeps the recipe's options
    dwd = _config(recipe="clip-gap/dwd")
    train = dwd.train
    assert (train.optimizer, train.lr, train.momentum, train.weight_decay, train.batch_size) == (
        "sgd",
        1e-3,
        0.9,
        1e-4,
        4,
    )
    assert (train.schedule, train.steps, train.gamma) == ("step", [40000], 0.1)


def test_step_schedule_and_sgd() -> None:
    config = _config("train.schedule=step", "train.steps=[10,20]", "train.iters=30", "train.warmup_iters=0")
    assert [lr_factor(step, config) for step in (0, 9, 10, 19, 20, 29)] == pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.01])
    model = torch.nn.Module()
    model.adapter = torch.nn.Module()  # build_param_groups reads the adapter's hints
    model.adapter.no_weight_decay_names = lambda: set()
    model.adapter.backbone_lr_multipliers = lambda backbone: {}
    model.backbone = torch.nn.Linear(2, 2)
    sgd = build_optimizer(model, _config("train.optimizer=sgd", "train.momentum=0.8"))
    assert isinstance(sgd, torch.optim.SGD) and sgd.param_groups[0]["momentum"] == 0.8
    assert isinstance(build_optimizer(model, _config()), torch.optim.AdamW)


def test_task_and_component_mismatches_are_user_errors() -> None:
    with pytest.raises(UserError, match="provides boxes"):
        build_data_source(_config(dataset="synthetic-det"))
    with pytest.raises(UserError, match="provides label maps"):
        build_data_source(_config(*TINY[:1], "dataset=synthetic", **DETECTION))
    with pytest.raises(UserError, match="stage_a"):
        build_model(_config(*TINY[1:5], task="detection", decoder="clip-faster-rcnn"))  # eva02 of the default
    with pytest.raises(UserError, match="detection decoder"):
        build_model(_config(*TINY[:5], task="detection", backbone="clip-resnet"))  # fpn of the default recipe


def test_cli_trains_fits_evaluates_and_resumes(tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = ["train", "--task", "detection", "--backbone", "clip-resnet", "--augmenter", "clip-gap"]
    args += ["--decoder", "clip-faster-rcnn", "--output", str(out), *TINY]
    result = invoke(args)
    assert result.exit_code == 0, result.output
    assert "fit phase of ClipGapAugmenter" in result.output and "AP50" in result.output
    assert "clip-gap fit 1/2: L_opt" in result.output and "ETA" in result.output  # the phase's progress
    assert "total," in result.output and "trainable (" in result.output  # parameter counts at the start
    assert "eval fog: 2 images in" in result.output  # the evaluation's own progress (log lines off a terminal)
    assert "iter 2/2  loss " in result.output and "  lr " in result.output
    metrics = json.loads((out / "metrics.json").read_text())
    final = metrics["final"]
    assert set(final["domains"]) == {"synthetic", "fog"}
    assert set(final["domains"]["fog"]["ap"]) == {"car", "person", "traffic sign"}
    assert final["domains"]["fog"]["interpolation"] == "11point"
    assert set(final["summary"]) >= {"source", "target_avg", "gap"}
    assert metrics["history"]["augmenter_fit"][0]["steps"] == 2
    assert (out / "best.pt").is_file() and (out / "curves.png").is_file()
    assert sorted(path.name for path in (out / "overlays").iterdir()) == [
        "fog_0.png",
        "fog_1.png",
        "synthetic_0.png",
        "synthetic_1.png",
    ]
    assert "overlays/" in result.output  # what the last line promises is there
    state = torch.load(out / "last.pt", weights_only=True, map_location="cpu")
    assert bool(state["model"]["augmenters.0.fitted"]) and state["step"] == 2
    evaluated = invoke(["eval", "--checkpoint", str(out / "last.pt"), "--json"])
    assert evaluated.exit_code == 0, evaluated.output
    assert "ap50" in json.loads(evaluated.output[evaluated.output.index("{") :])["domains"]["synthetic"]
    resumed = invoke([*args, "train.iters=3", "--resume", "--allow-changes"])  # iters 2 -> 3 is a change
    assert resumed.exit_code == 0, resumed.output
    assert "fit phase" not in resumed.output  # fitted offsets came back with the checkpoint


def test_ctrl_c_in_the_fit_phase_stops_cleanly_and_the_resume_fits_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os
    import signal

    from vltk.config import resolve
    from vltk.engine.interrupts import Interrupted
    from vltk.engine.trainer import Trainer
    from vltk_plugins.clip_gap.augmenter import ClipGapAugmenter

    targets = ClipGapAugmenter._targets
    calls: list[int] = []

    def interrupted_targets(self, *args, **kwargs):  # the first fit step is where Ctrl-C arrives
        calls.append(1)
        if len(calls) == 1:
            os.kill(os.getpid(), signal.SIGINT)
        return targets(self, *args, **kwargs)

    monkeypatch.setattr(ClipGapAugmenter, "_targets", interrupted_targets)
    run = resolve(
        _config(*TINY, "augmenters.0.fit_steps=null", "train.iters=3", **DETECTION),
        get_plugin_manager().get_registry(),
    )
    trainer = Trainer(run, tmp_path / "run", quiet=True)
    with pytest.raises(Interrupted) as stopped:
        trainer.fit()
    assert not stopped.value.saved and trainer.step == 0 and not (tmp_path / "run" / "last.pt").exists()
    (summary,) = trainer.history["augmenter_fit"]
    assert summary["stopped"] and summary["steps"] == 1  # stopped at the next step, not after the whole phase
    assert not trainer.model.augmenters[0].is_fitted
    resumed = Trainer(run, tmp_path / "run", resume=True, quiet=True)
    resumed.fit()
    (summary,) = resumed.history["augmenter_fit"]
    assert not summary["stopped"] and summary["steps"] == 3  # fit_steps unset: capped at train.iters
