"""Mixed precision and gradient accumulation for the training step (``train.precision``, ``train.accumulate_steps``).

Why a module of its own: the trainer's step must stay readable, and the rules here are easy to get subtly wrong.

* **Autocast, weights in fp32.** ``bf16`` and ``fp16`` run the forward pass *and the loss* under
  :func:`torch.autocast` for the run's device type (as detectron2's ``AMPTrainer`` and mmengine's
  ``AmpOptimWrapper`` do); parameters, gradients and optimizer state stay fp32. The segmentation loss then runs
  with autocast off on fp32 copies of the decoder's outputs (:func:`fp32_loss_region`, :func:`as_fp32`, used by
  ``DensePredictor.loss``), so every loss term (Mask2Former's point-sampled dice too) is computed in fp32;
  losses computed inside a model's forward (the detection heads) follow autocast's policy, which runs the loss
  functions themselves in fp32. The total is cast to fp32 before backward in any case.
* **fp16 needs a GradScaler** (:class:`torch.amp.GradScaler`): the loss is scaled up before backward so small
  gradients do not flush to zero, gradients are unscaled before clipping, and a step with inf/NaN gradients is
  skipped while the scale backs off (the step still counts, for the schedule too, as in detectron2 and
  mmengine; the scale is logged as ``grad_scale``). bf16 has fp32's exponent range and needs none. PyTorch 2.x
  has CPU kernels for both (``torch.autocast("cpu", dtype=torch.float16)`` and ``GradScaler("cpu")``), so every
  precision runs on CPU; CUDA devices without bf16 support are refused with one clear line.
* **Accumulation (Hugging Face's convention).** ``train.batch_size`` is the micro-batch of one forward pass;
  one optimizer step sums the gradients of ``accumulate_steps`` micro-batches, each loss divided by
  ``accumulate_steps``, so the effective batch is ``batch_size x accumulate_steps`` (x ranks under DDP) and a
  step equals one step on the concatenated batch for losses that are means over equally sized samples.
  ``train.iters``, the lr schedule, ``eval_interval`` and ``checkpoint_interval`` count optimizer steps.

The scaler's state is part of every checkpoint (:meth:`MixedPrecision.state_dict`), so a resumed fp16 run
continues with the same loss scale and growth counter.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager as ContextManager
from typing import Any

import torch
from torch import nn

from vltk.errors import UserError

#: ``train.precision`` -> autocast dtype (None: plain fp32, autocast off).
AUTOCAST_DTYPES: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def check_precision_supported(precision: str, device: torch.device) -> None:
    """Refuse, with one clear line, a precision this PyTorch build cannot run on ``device``."""
    if precision not in AUTOCAST_DTYPES:
        raise UserError(f"unknown train.precision '{precision}'; use one of {', '.join(AUTOCAST_DTYPES)}")
    if precision == "fp32":
        return
    if not torch.amp.is_autocast_available(device.type):
        raise UserError(
            f"train.precision={precision} needs autocast, which this PyTorch build lacks for device type "
            f"'{device.type}'; use train.precision=fp32"
        )
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise UserError(
            f"train.precision=bf16: the GPU '{torch.cuda.get_device_name(device)}' has no bf16 support; use "
            "train.precision=fp16 (with its GradScaler) or fp32"
        )


class MixedPrecision:
    """Autocast context, loss scaling and the optimizer step of one run's ``train.precision``.

    fp32 makes every method a plain pass-through (no autocast, a disabled scaler), so the trainer has one code
    path and an fp32 run is bit-identical to a loop without this class.
    """

    def __init__(self, precision: str, device: torch.device) -> None:
        check_precision_supported(precision, device)
        self.precision = precision
        self.device_type = device.type
        self.dtype = AUTOCAST_DTYPES[precision]
        self.scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")

    def autocast(self) -> ContextManager[Any]:
        """The forward-and-loss context: autocast to bf16/fp16, or nothing for fp32."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device_type, dtype=self.dtype)

    def backward(self, loss: torch.Tensor) -> None:
        """Back-propagate ``loss`` (already divided by the accumulation steps), scaled when fp16 asks for it."""
        self.scaler.scale(loss).backward()

    def step(self, optimizer: torch.optim.Optimizer, parameters: list[nn.Parameter], grad_clip: float | None) -> bool:
        """Unscale, clip (on true gradients), step and update the scale; False when fp16 skipped the step."""
        if grad_clip:
            self.scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(parameters, grad_clip)
        if not self.scaler.is_enabled():
            optimizer.step()
            return True
        scale = self.scaler.get_scale()
        self.scaler.step(optimizer)
        self.scaler.update()
        return self.scaler.get_scale() >= scale  # the scale backs off exactly when the step was skipped

    def grad_scale(self) -> float | None:
        """The current fp16 loss scale (logged per step as ``grad_scale``), None when no scaler runs."""
        return float(self.scaler.get_scale()) if self.scaler.is_enabled() else None

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint keeps: the precision and the scaler's scale, growth tracker and factors."""
        return {"precision": self.precision, "scaler": self.scaler.state_dict()}

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        """Restore the scaler from a checkpoint. Only an fp16 checkpoint resumed in fp16 has a scale to continue
        from; another precision (a resume with ``--allow-changes``) or an older checkpoint starts a fresh scaler."""
        if state is not None and state.get("precision") == self.precision and self.scaler.is_enabled():
            self.scaler.load_state_dict(state["scaler"])


def as_fp32(tree: Any) -> Any:
    """``tree`` (tensors in dicts, lists and tuples) with every bf16/fp16 tensor cast to fp32, the rest as it is."""
    if isinstance(tree, torch.Tensor):
        return tree.float() if tree.dtype in (torch.float16, torch.bfloat16) else tree
    if isinstance(tree, dict):
        return {key: as_fp32(value) for key, value in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(as_fp32(value) for value in tree)
    return tree


def fp32_loss_region(device_type: str) -> ContextManager[Any]:
    """Autocast switched off: the loss of a low-precision forward runs entirely in fp32 inside it (with its
    inputs passed through :func:`as_fp32`). Outside autocast this changes nothing, so fp32 runs stay exact."""
    if not torch.is_autocast_enabled(device_type):
        return contextlib.nullcontext()
    return torch.autocast(device_type=device_type, enabled=False)


def accumulate_gradients(
    batches: Iterator[dict[str, Any]],
    steps: int,
    batch_losses: Callable[[dict[str, Any]], dict[str, torch.Tensor]],
    precision: MixedPrecision,
    check_loss: Callable[[torch.Tensor], None],
    no_sync: Callable[[], ContextManager[Any]] | None = None,
) -> dict[str, float]:
    """Forward and backward ``steps`` micro-batches from ``batches``; return the loss terms averaged over them.

    Each micro-batch's total loss is cast to fp32, checked by ``check_loss`` (a diverged run stops before its
    gradients are used) and back-propagated divided by ``steps``, so the summed gradients are those of the mean
    loss over the effective batch. ``no_sync`` (DDP's ``model.no_sync``) wraps every micro-batch but the last, so
    gradients are all-reduced once per optimizer step. The caller zeroes the gradients before and steps after.
    """
    totals: dict[str, float] = {}
    for index in range(steps):
        batch = next(batches)
        syncing = no_sync() if no_sync is not None and index < steps - 1 else contextlib.nullcontext()
        with syncing:
            with precision.autocast():
                losses = batch_losses(batch)
            loss = losses["loss"].float()
            check_loss(loss)
            precision.backward(loss / steps)  # x / 1 is exact: fp32 runs unchanged
        for name, value in losses.items():
            totals[name] = totals.get(name, 0.0) + float(value.detach().float())
    return {name: value / steps for name, value in totals.items()}


def micro_batches_done(step: int, accumulate_steps: int) -> int:
    """Micro-batches consumed after ``step`` optimizer steps: where the data order stands (for resuming)."""
    return step * accumulate_steps


__all__ = [
    "AUTOCAST_DTYPES",
    "MixedPrecision",
    "accumulate_gradients",
    "as_fp32",
    "check_precision_supported",
    "fp32_loss_region",
    "micro_batches_done",
]
