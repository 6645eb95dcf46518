"""Engine pieces: metrics, lr schedule, parameter groups, atomic checkpoints, and short real training."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from vltk.config import build_config
from vltk.engine.checkpoint import load_checkpoint, save_atomic
from vltk.engine.metrics import ConfusionMatrix, summarise_domains
from vltk.engine.optimization import build_param_groups, lr_factor
from vltk.errors import UserError
from vltk.pipeline import build_model
from vltk.plugins import get_plugin_manager

SMALL = ["dataset.size=64", "dataset.num_train=8", "dataset.num_val=2"]


def _config(*overrides: str, **components: str):
    return build_config(
        components=components, overrides=[*SMALL, *overrides], recipe_dirs=get_plugin_manager().recipe_dirs()
    )


def test_confusion_matrix_iou_by_hand() -> None:
    matrix = ConfusionMatrix(num_classes=3, ignore_index=255)
    target = torch.tensor([[0, 0, 1, 1], [2, 2, 255, 255]])
    prediction = torch.tensor([[0, 1, 1, 1], [2, 0, 2, 2]])
    matrix.update(prediction, target)
    # class 0: tp 1, fp 1 (pixel of class 2), fn 1 -> 1/3; class 1: tp 2, fp 1 -> 2/3; class 2: tp 1, fn 1 -> 1/2
    assert matrix.iou() == pytest.approx([1 / 3, 2 / 3, 1 / 2])
    assert matrix.miou() == pytest.approx((1 / 3 + 2 / 3 + 1 / 2) / 3)
    assert matrix.accuracy() == pytest.approx(4 / 6)


def test_absent_classes_are_left_out_of_the_mean() -> None:
    matrix = ConfusionMatrix(num_classes=4)
    matrix.update(torch.tensor([0, 0, 1]), torch.tensor([0, 0, 1]))
    assert math.isnan(matrix.iou()[3]) and matrix.miou() == 1.0


def test_domain_summary() -> None:
    summary = summarise_domains({"src": 0.6, "a": 0.3, "b": 0.5}, ["src"])
    assert summary == pytest.approx({"source": 0.6, "target_avg": 0.4, "gap": 0.2})


def test_lr_schedule_warmup_then_poly() -> None:
    config = _config("train.iters=100", "train.warmup_iters=10", "train.warmup_ratio=0.1", "train.poly_power=1.0")
    assert lr_factor(0, config) == pytest.approx(0.1)
    assert lr_factor(5, config) == pytest.approx((1 - 0.05) * 0.55)
    assert lr_factor(50, config) == pytest.approx(0.5)
    assert lr_factor(100, config) == pytest.approx(0.0)


def test_param_groups_follow_the_adapter_and_skip_decay_on_norms_and_tokens() -> None:
    config = _config("adapter.token_length=8", adapter="rein")
    model = build_model(config)
    groups = build_param_groups(model, config)
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    grouped = {id(p) for group in groups for p in group["params"]}
    assert grouped == trainable
    assert not any(p.requires_grad for p in model.backbone.parameters())
    no_decay = {id(p) for group in groups if group["weight_decay"] == 0 for p in group["params"]}
    assert id(model.adapter.learnable_tokens_a) in no_decay and id(model.adapter.scale) in no_decay
    assert id(model.adapter.mlp_delta_f.weight) not in no_decay
    norms = [m for m in model.decoder.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert norms and id(norms[0].weight) in no_decay


def test_layer_decay_reaches_the_optimizer() -> None:
    config = _config("adapter.layer_decay=0.5", adapter="full")
    groups = build_param_groups(build_model(config), config)
    multipliers = sorted({group["lr_mult"] for group in groups})
    assert multipliers[0] == pytest.approx(0.5 ** (12 + 1)) and multipliers[-1] == 1.0


def test_frozen_backbone_gets_no_gradient_and_stays_in_eval_mode() -> None:
    model = build_model(_config(adapter="frozen")).train()
    assert not model.backbone.training and model.decoder.training
    images = torch.rand(2, 3, 64, 64)
    labels = torch.randint(0, 19, (2, 64, 64))
    model.loss(images, labels)["loss"].backward()
    assert all(p.grad is None for p in model.backbone.parameters())
    assert any(p.grad is not None for p in model.decoder.parameters())


@pytest.mark.parametrize("adapter", ["full", "rein"])
def test_a_few_training_steps_lower_the_loss(adapter: str) -> None:
    torch.manual_seed(0)
    overrides = ["adapter.token_length=8"] if adapter == "rein" else []
    config = _config(*overrides, adapter=adapter)
    model = build_model(config).train()
    from vltk.pipeline import build_data_source
    from vltk.tasks.segmentation import collate_segmentation as collate

    source = build_data_source(config)
    batch = collate([source.split("train", "synthetic")[i] for i in range(4)])
    optimizer = torch.optim.AdamW(build_param_groups(model, config), lr=1e-3)
    losses = []
    for _ in range(8):
        loss = model.loss(batch["image"], batch["label"])["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0], losses


def test_predict_handles_sizes_that_are_not_a_multiple_of_the_patch() -> None:
    model = build_model(_config()).eval()
    scores = model.predict(torch.rand(1, 3, 50, 70))
    assert scores.shape == (1, 19, 50, 70)


def test_atomic_save_leaves_no_partial_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "last.pt"
    save_atomic({"model": {"w": torch.ones(2)}, "config": {}}, path)

    def explode(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(torch, "save", explode)
    with pytest.raises(RuntimeError):
        save_atomic({"model": {"w": torch.zeros(2)}, "config": {}}, path)
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # old file intact, no temp file left
    assert torch.equal(load_checkpoint(path)["model"]["w"], torch.ones(2))


def test_backbone_less_checkpoint_without_weights_is_a_clear_error(tmp_path: Path) -> None:
    from vltk.testing import invoke

    config = _config("backbone.pretrained=/nonexistent/eva02.bin", adapter="frozen").to_dict()
    path = tmp_path / "head_only.pt"
    save_atomic({"model": {}, "config": config, "backbone_included": False}, path)
    result = invoke(["eval", "--checkpoint", str(path)])
    assert result.exit_code == 2
    assert "holds no backbone weights" in result.output and "--backbone-weights" in result.output
    with pytest.raises(UserError):
        load_checkpoint(tmp_path / "missing.pt")


@pytest.mark.parametrize("adapter", ["frozen", "rein", "full"])
def test_every_adapter_runs_on_the_clip_vit_backbone(adapter: str) -> None:
    overrides = ["backbone.variant=tiny"]
    if adapter == "rein":
        overrides += ["adapter.token_length=8", "adapter.link_token_to_query=false"]  # FPN takes no queries
    model = build_model(_config(*overrides, backbone="clip-vit", adapter=adapter)).train()
    images, labels = torch.rand(2, 3, 64, 96), torch.randint(0, 19, (2, 64, 96))
    model.loss(images, labels)["loss"].backward()
    adapter_grads = [p.grad for p in model.adapter.parameters()]
    assert all(g is not None for g in adapter_grads)
    backbone_grads = [p.grad is not None for p in model.backbone.parameters()]
    assert any(backbone_grads) if adapter == "full" else not any(backbone_grads)


def test_diverging_loss_is_a_user_error(tmp_path: Path) -> None:
    from vltk.config import resolve
    from vltk.engine.trainer import Trainer

    manager = get_plugin_manager()
    config = resolve(_config("train.iters=3", "dataset.domains=[synthetic]"), manager.get_registry())
    trainer = Trainer(config, tmp_path / "run", quiet=True)
    trainer.model.loss = lambda images, labels: {"loss": torch.tensor(float("nan"), requires_grad=True)}
    with pytest.raises(UserError, match="diverged; lower train.lr") as error:
        trainer.fit()
    assert "no checkpoint of this run was saved yet" in str(error.value)  # never "last.pt holds ..." when none does
    assert not (tmp_path / "run" / "run.lock").exists()
