"""Exponential moving average of the weights (``train.ema``), the way timm's ``ModelEmaV3`` and mmdet do it.

Why: an EMA of the trained weights is a cheap ensemble over the end of training that often evaluates better
than the last iterate (timm's ImageNet recipes, mmdet's YOLOX/RTMDet). What is averaged: every trainable
parameter and every buffer of the state dict (BatchNorm statistics); frozen parameters never change, so their
average is themselves and costs no memory. After optimizer step ``t`` (1-based) each tracked tensor moves
``shadow <- decay_t * shadow + (1 - decay_t) * weight``; ``decay_1 = 0`` (a copy), then ``decay`` or, with
timm's warm-up, ``min(decay, 1 - (1 + t - 1) ** -warmup_power)``, so that a few-hundred-step run is not
averaged towards its random initialisation. Integer buffers (``num_batches_tracked``) are copied.

How it is used (mmengine's ``EMAHook``): every evaluation runs with the EMA weights swapped into the model
(:meth:`WeightEma.swapped_in`), ``best.pt`` follows the EMA's score, and every checkpoint's ``model`` entry holds
the EMA weights, so ``vltk eval``/``predict`` of any checkpoint use them; the trained weights and the update
count sit under the checkpoint's ``ema`` entry, and a resume restores both exactly (:func:`resume_ema`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from vltk.config import EmaConfig


class WeightEma:
    """The averaged copy of a model's trainable weights and buffers, updated after every optimizer step."""

    def __init__(self, model: nn.Module, config: EmaConfig) -> None:
        self.config = config
        self.updates = 0
        state = model.state_dict()
        trainable = [name for name, parameter in model.named_parameters() if parameter.requires_grad]
        buffers = [name for name, _ in model.named_buffers() if name in state]
        self.names = [name for name in dict.fromkeys([*trainable, *buffers]) if name in state]
        self.shadow = {name: state[name].detach().clone() for name in self.names}

    def decay(self, update: int) -> float:
        """The decay of the ``update``-th update (1-based): timm's ``ModelEmaV3.get_decay``."""
        step = max(0, update - 1)
        if step == 0:
            return 0.0
        if not self.config.warmup:
            return self.config.decay
        return min(self.config.decay, 1.0 - (1.0 + step) ** -self.config.warmup_power)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Move the average towards the model's current weights (call after each optimizer step)."""
        self.updates += 1
        weight = 1.0 - self.decay(self.updates)
        live = model.state_dict()
        for name in self.names:
            shadow, value = self.shadow[name], live[name].detach()
            if shadow.is_floating_point():
                shadow.lerp_(value.to(shadow.dtype), weight)
            else:
                shadow.copy_(value)

    @contextlib.contextmanager
    def swapped_in(self, model: nn.Module) -> Iterator[None]:
        """Run the body with the EMA weights in ``model`` (evaluation), then put the trained weights back."""
        live = model.state_dict()
        trained = {name: live[name].detach().clone() for name in self.names}
        with torch.no_grad():
            for name in self.names:
                live[name].copy_(self.shadow[name])
        try:
            yield
        finally:
            with torch.no_grad():
                for name in self.names:
                    live[name].copy_(trained[name])

    def checkpoint_model_state(self, model_state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict]:
        """``(model entry, ema entry)`` of a checkpoint from the model's own state (as mmengine's EMAHook swaps).

        The model entry gets the EMA weights; the ema entry keeps the trained ones and the update count.
        """
        averaged = dict(model_state)
        trained = {}
        for name in self.names:
            if name in averaged:
                trained[name] = averaged[name]
                averaged[name] = self.shadow[name]
        return averaged, {"updates": self.updates, "trained": trained}

    def reset(self, model: nn.Module) -> None:
        """Start the average afresh from the model's current weights (EMA switched on at a resume)."""
        live = model.state_dict()
        with torch.no_grad():
            for name in self.names:
                self.shadow[name].copy_(live[name])
        self.updates = 0


def trained_weights_back(model: nn.Module, ema_state: dict[str, Any]) -> None:
    """Put a checkpoint's trained weights (its ``ema`` entry) into ``model``, whose model entry was the EMA."""
    live = model.state_dict()
    with torch.no_grad():
        for name, value in ema_state["trained"].items():
            live[name].copy_(value)


def resume_ema(ema: WeightEma | None, model: nn.Module, ema_state: dict[str, Any] | None) -> None:
    """After a checkpoint's model entry was loaded into ``model``: leave the trained weights in the model and the
    average in ``ema``, whether the checkpoint and the resumed run have an EMA or not (exact when both do)."""
    if ema is None:
        if ema_state is not None:
            trained_weights_back(model, ema_state)
        return
    if ema_state is None:
        ema.reset(model)
        return
    ema.reset(model)  # the loaded model entry is the average
    trained_weights_back(model, ema_state)
    ema.updates = int(ema_state["updates"])


def ema_for_run(model: nn.Module, config: EmaConfig | None) -> WeightEma | None:
    """The run's EMA, or None when ``train.ema`` is off."""
    return None if config is None else WeightEma(model, config)


def evaluating_with(ema: WeightEma | None, model: nn.Module) -> contextlib.AbstractContextManager[Any]:
    """The context evaluations run in: the EMA weights swapped in, or nothing when there is no EMA."""
    return contextlib.nullcontext() if ema is None else ema.swapped_in(model)


__all__ = ["WeightEma", "ema_for_run", "evaluating_with", "resume_ema", "trained_weights_back"]
