"""Mixed precision, gradient accumulation and weight EMA in real (tiny) training runs.

The runs are the tiny recipe of ``test_interrupts`` (6 steps over two epochs, decoder dropout drawing from the
torch RNG, checkpoints only when asked), so a scaler or EMA state missing from a checkpoint shows as a different
loss or weight after a resume. bf16 and fp16 both run on CPU (PyTorch has CPU autocast kernels for both and a
CPU GradScaler); the fp16 run on a GPU is marked ``gpu``.
"""

from __future__ import annotations

import math
import os
import signal
from pathlib import Path
from typing import Any

import pytest
import torch
from tiny_runs import tiny_overrides

from vltk.config import EmaConfig, build_config, resolve
from vltk.engine.checkpoint import load_checkpoint
from vltk.engine.ema import WeightEma, resume_ema
from vltk.engine.interrupts import Interrupted
from vltk.engine.precision import MixedPrecision, check_precision_supported
from vltk.engine.trainer import Trainer
from vltk.errors import UserError
from vltk.plugins import get_plugin_manager

TINY = tiny_overrides(
    "decoder.channels=32",
    "decoder.head_channels=32",
    "train.iters=4",
    "train.checkpoint_interval=1000",
    "eval.overlays=0",
)


def _run(*extra: str) -> Any:
    manager = get_plugin_manager()
    config = build_config(overrides=[*TINY, *extra], recipe_dirs=manager.recipe_dirs())
    return resolve(config, manager.get_registry())


def _losses(trainer: Trainer) -> list[float]:
    return [entry["loss"] for entry in trainer.history["train"]]


def _fit(out: Path, *extra: str) -> Trainer:
    trainer = Trainer(_run(*extra), out, quiet=True)
    trainer.fit()
    return trainer


def _interrupt_then_resume(out: Path, stop_at: int, *extra: str) -> Trainer:
    """Train ``out`` until SIGINT stops it after step ``stop_at`` (saved at that boundary), then resume it."""
    original = Trainer._train_step

    def signalling(self: Trainer, *args: Any) -> Any:
        record = original(self, *args)
        if self.step == stop_at:
            os.kill(os.getpid(), signal.SIGINT)
        return record

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Trainer, "_train_step", signalling)
        with pytest.raises(Interrupted):
            Trainer(_run(*extra), out, quiet=True).fit()
    resumed = Trainer(_run(*extra), out, resume=True, quiet=True)
    resumed.fit()
    return resumed


def _assert_same_run(a: Trainer, b: Trainer) -> None:
    assert _losses(a) == _losses(b)
    for key, value in a.model.state_dict().items():
        assert torch.equal(b.model.state_dict()[key], value), key


# -------------------------------------------------------------------------------------------------- precision


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_trains_on_cpu_and_resumes_exactly(precision: str, tmp_path: Path) -> None:
    reference = _fit(tmp_path / "reference", f"train.precision={precision}", "device=cpu")
    losses = _losses(reference)
    assert len(losses) == 4 and all(math.isfinite(loss) for loss in losses)
    assert all(p.dtype == torch.float32 for p in reference.model.parameters())  # weights stay fp32
    state = load_checkpoint(tmp_path / "reference" / "last.pt")
    assert state["precision"]["precision"] == precision
    assert state["config"]["train"]["precision"] == precision
    if precision == "fp16":
        assert state["precision"]["scaler"] == reference.precision.scaler.state_dict()
        assert state["precision"]["scaler"]["scale"] == reference.history["train"][-1]["grad_scale"] > 0
    else:
        assert state["precision"]["scaler"] == {}  # no scaler runs for bf16
    resumed = _interrupt_then_resume(tmp_path / "resumed", 2, f"train.precision={precision}", "device=cpu")
    _assert_same_run(reference, resumed)
    assert resumed.precision.scaler.state_dict() == reference.precision.scaler.state_dict()


def test_autocast_runs_the_forward_in_low_precision_and_the_loss_in_fp32() -> None:
    model = torch.nn.Linear(8, 4)
    precision = MixedPrecision("bf16", torch.device("cpu"))
    with precision.autocast():
        logits = model(torch.randn(2, 8))
        loss = torch.nn.functional.cross_entropy(logits, torch.tensor([0, 3]))
    assert logits.dtype == torch.bfloat16 and loss.dtype == torch.float32
    with MixedPrecision("fp32", torch.device("cpu")).autocast():
        assert model(torch.randn(2, 8)).dtype == torch.float32


def test_the_segmentation_loss_runs_in_fp32_after_a_bf16_forward() -> None:
    from vltk.pipeline import build_model

    model = build_model(_run()).train()
    seen: dict[str, Any] = {}
    original = type(model.decoder).loss

    def recording(self: torch.nn.Module, outputs: dict[str, Any], targets: torch.Tensor) -> dict[str, Any]:
        seen["dtype"] = outputs["seg_logits"].dtype
        seen["autocast"] = torch.is_autocast_enabled("cpu")
        return original(self, outputs, targets)

    images, labels = torch.rand(2, 3, 32, 32), torch.randint(0, 19, (2, 32, 32))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(type(model.decoder), "loss", recording)
        with MixedPrecision("bf16", torch.device("cpu")).autocast():
            losses = model.loss(images, labels)
            assert model(images)["seg_logits"].dtype == torch.bfloat16  # the forward did run in bf16
    assert seen == {"dtype": torch.float32, "autocast": False}
    assert all(value.dtype == torch.float32 for value in losses.values())


def test_fp16_scaler_skips_a_step_with_infinite_gradients_and_backs_off() -> None:
    model = torch.nn.Linear(2, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    precision = MixedPrecision("fp16", torch.device("cpu"))
    before = [p.detach().clone() for p in model.parameters()]
    precision.backward(model(torch.tensor([[float("inf"), 1.0]])).sum())
    assert not precision.step(optimizer, list(model.parameters()), grad_clip=None)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    assert precision.grad_scale() == 2.0**15  # 65536 halved
    optimizer.zero_grad()
    precision.backward(model(torch.ones(1, 2)).sum())
    assert precision.step(optimizer, list(model.parameters()), grad_clip=1.0)


def test_unsupported_precision_is_one_clear_error() -> None:
    with pytest.raises(UserError, match="unknown train.precision 'fp8'"):
        check_precision_supported("fp8", torch.device("cpu"))
    with pytest.raises(UserError, match="train.precision"):
        _run("train.precision=half")


@pytest.mark.gpu
def test_fp16_trains_on_the_gpu_with_its_scaler_in_the_checkpoint(tmp_path: Path) -> None:
    trainer = _fit(tmp_path / "run", "train.precision=fp16", "device=cuda")
    assert all(math.isfinite(loss) for loss in _losses(trainer))
    state = load_checkpoint(tmp_path / "run" / "last.pt")
    assert state["precision"]["precision"] == "fp16" and state["precision"]["scaler"]["scale"] > 0
    resumed = _interrupt_then_resume(tmp_path / "resumed", 2, "train.precision=fp16", "device=cuda")
    assert _losses(resumed) == _losses(trainer)


# ----------------------------------------------------------------------------------------------- accumulation

#: GroupNorm instead of BatchNorm and no dropout: then a step's gradient does not depend on how the batch is cut
#: (FPN's loss averages over all pixels, so equal micro-batches average to the batch mean); 64 px so that
#: the stride-32 level has more than one value per GroupNorm group.
#: SGD, not AdamW: Adam's update hardly changes when the gradient doubles, so it would hide a missing 1/steps.
BATCH_INDEPENDENT = [
    "dataset.size=64",
    "decoder.norm=gn",
    "decoder.dropout=0",
    "train.iters=3",
    "train.optimizer=sgd",
    "train.lr=0.05",
    "device=cpu",
]


def test_two_micro_batches_of_b_equal_one_batch_of_2b(tmp_path: Path) -> None:
    whole = _fit(tmp_path / "whole", *BATCH_INDEPENDENT, "train.batch_size=4")
    accumulated = _fit(tmp_path / "accumulated", *BATCH_INDEPENDENT, "train.batch_size=2", "train.accumulate_steps=2")
    assert len(accumulated.history["train"]) == 3 and accumulated.step == 3  # steps count optimizer steps
    assert [e["lr"] for e in accumulated.history["train"]] == [e["lr"] for e in whole.history["train"]]
    torch.testing.assert_close(torch.tensor(_losses(accumulated)), torch.tensor(_losses(whole)), rtol=1e-5, atol=1e-6)
    for key, value in whole.model.state_dict().items():
        torch.testing.assert_close(accumulated.model.state_dict()[key], value, rtol=1e-4, atol=1e-6, msg=key)
    # the data position counts micro-batches: 3 steps x 2 = 6 micro-batches of 2, with 4 per epoch of 8 images
    assert accumulated._batches is not None
    assert accumulated._batches.position() == {"epoch": 1, "batch": 2, "size": 8, "batch_size": 2}


def test_accumulated_run_resumes_exactly(tmp_path: Path) -> None:
    extra = ["train.accumulate_steps=2", "device=cpu"]
    reference = _fit(tmp_path / "reference", *extra)
    resumed = _interrupt_then_resume(tmp_path / "resumed", 3, *extra)
    _assert_same_run(reference, resumed)


# ------------------------------------------------------------------------------------------------------- EMA


def test_ema_follows_timms_model_ema_v3_formula() -> None:
    model = torch.nn.Linear(1, 1, bias=False)
    ema = WeightEma(model, EmaConfig(decay=0.9, warmup=False))
    values = [1.0, 2.0, 4.0]
    expected = None
    for update, value in enumerate(values, start=1):
        with torch.no_grad():
            model.weight.fill_(value)
        ema.update(model)
        decay = 0.0 if update == 1 else 0.9  # the first update copies
        expected = value if expected is None else decay * expected + (1 - decay) * value
        assert ema.shadow["weight"].item() == pytest.approx(expected)
    warm = WeightEma(model, EmaConfig(decay=0.9999, warmup=True, warmup_power=0.75))
    assert warm.decay(1) == 0.0 and warm.decay(11) == pytest.approx(1 - 11**-0.75)
    assert warm.decay(10**9) == 0.9999


def test_ema_is_evaluated_saved_and_resumed_exactly(tmp_path: Path) -> None:
    extra = ["train.ema.decay=0.5", "device=cpu"]
    reference = _fit(tmp_path / "reference", *extra)
    assert reference.ema is not None and reference.ema.updates == 4
    state = load_checkpoint(tmp_path / "reference" / "last.pt")
    trained = reference.model.state_dict()
    moved = [name for name in reference.ema.names if not torch.equal(reference.ema.shadow[name], trained[name])]
    assert moved  # the average differs from the trained weights...
    for name in moved:  # ...the checkpoint's model entry is the average (what eval/predict load), as mmengine saves
        assert torch.equal(state["model"][name], reference.ema.shadow[name])
        assert torch.equal(state["ema"]["trained"][name], trained[name])
    best = load_checkpoint(tmp_path / "reference" / "best.pt")
    assert all(torch.equal(best["model"][name], reference.ema.shadow[name]) for name in moved)
    with reference.ema.swapped_in(reference.model):
        assert torch.equal(reference.model.state_dict()[moved[0]], reference.ema.shadow[moved[0]])
    assert torch.equal(reference.model.state_dict()[moved[0]], trained[moved[0]])  # swapped back
    resumed = _interrupt_then_resume(tmp_path / "resumed", 2, *extra)
    _assert_same_run(reference, resumed)
    assert resumed.ema is not None and resumed.ema.updates == 4
    for name in reference.ema.names:
        assert torch.equal(resumed.ema.shadow[name], reference.ema.shadow[name]), name


def test_ema_switched_on_or_off_at_a_resume_keeps_the_trained_weights_in_the_model() -> None:
    """``--allow-changes`` may turn ``train.ema`` on or off: the model must continue from the trained weights."""
    model = torch.nn.Linear(2, 2)
    ema = WeightEma(model, EmaConfig(decay=0.5, warmup=False))
    for value in (1.0, 3.0):
        with torch.no_grad():
            model.weight.fill_(value)
        ema.update(model)
    averaged, ema_state = ema.checkpoint_model_state(
        {k: v.clone() for k, v in model.state_dict().items()}
    )  # what a checkpoint holds: model = EMA (2.0), ema.trained = 3.0
    fresh = torch.nn.Linear(2, 2)
    fresh.load_state_dict(averaged)
    resume_ema(None, fresh, ema_state)  # EMA now off: the trained weights go back into the model
    assert torch.equal(fresh.weight, torch.full((2, 2), 3.0))
    plain = torch.nn.Linear(2, 2)
    switched_on = WeightEma(plain, EmaConfig(decay=0.5))  # built on the random initial weights...
    plain.load_state_dict({k: v.clone() for k, v in model.state_dict().items()})  # ...then the checkpoint loads
    resume_ema(switched_on, plain, None)  # EMA now on, none in the checkpoint: the average starts at the weights
    assert torch.equal(switched_on.shadow["weight"], plain.weight) and switched_on.updates == 0
