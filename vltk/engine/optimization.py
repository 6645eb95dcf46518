"""The optimizer side of a run: parameter groups (weight decay, lr multipliers), the lr schedule, compilation.

Kept apart from the loop in :mod:`vltk.engine.trainer` because benchmarks and tests build the exact optimizer of
a run without a trainer (``benchmarks/train_memory.py`` measures the trainer's own AdamW step).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from vltk.config import RunConfig
from vltk.errors import UserError

NORM_TYPES = (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm)
NO_DECAY_NAME_PARTS = (
    "pos_embed",
    "positional_embedding",
    "cls_token",
    "class_embedding",
    "query_embed",
    "level_embed",
    "rope",
    "mask_token",
    "reg_token",
)


def build_param_groups(model: nn.Module, config: RunConfig) -> list[dict[str, Any]]:
    """AdamW groups from the trainable parameters only.

    No weight decay on normalisation layers, embeddings/tokens (by name), the adapter's own no-decay names
    (Rein's tokens and scale) and 1-d biases of norms; lr multipliers come from the adapter for backbone
    parameters (layer-wise decay of ``full``) and from ``train.decoder_lr_mult`` for decoder and prompter.
    """
    train = config.train
    norm_params = {
        id(parameter)
        for module in model.modules()
        if isinstance(module, NORM_TYPES) or type(module).__name__.lower().endswith("norm")
        for parameter in module.parameters(recurse=False)
    }
    adapter_no_decay = {f"adapter.{name}" for name in model.adapter.no_weight_decay_names()}
    backbone_mults = {f"backbone.{k}": v for k, v in model.adapter.backbone_lr_multipliers(model.backbone).items()}
    groups: dict[tuple[float, float], list[nn.Parameter]] = {}
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        no_decay = (
            id(parameter) in norm_params
            or name in adapter_no_decay
            or any(part in name for part in NO_DECAY_NAME_PARTS)
        )
        if name.startswith(("decoder.", "prompter.")):
            lr_mult = train.decoder_lr_mult
        else:
            lr_mult = backbone_mults.get(name, 1.0)
        key = (lr_mult, 0.0 if no_decay else train.weight_decay)
        groups.setdefault(key, []).append(parameter)
    if not groups:
        raise UserError("nothing to train: the adapter froze every parameter and the decoder has none")
    return [
        {"params": params, "lr": train.lr * lr_mult, "lr_mult": lr_mult, "weight_decay": decay}
        for (lr_mult, decay), params in sorted(groups.items())
    ]


def lr_factor(step: int, config: RunConfig) -> float:
    """Linear warm-up from ``warmup_ratio`` then poly decay to ``min_lr`` or, with ``schedule: step``, a factor
    ``gamma`` at every iteration of ``steps`` already reached (detectron2's WarmupMultiStepLR)."""
    train = config.train
    if train.schedule == "step":
        factor = train.gamma ** sum(1 for milestone in train.steps if step >= milestone)
    else:
        progress = min(step, train.iters) / train.iters
        min_factor = train.min_lr / train.lr
        factor = (1.0 - min_factor) * (1.0 - progress) ** train.poly_power + min_factor
    if train.warmup_iters and step < train.warmup_iters:
        factor *= train.warmup_ratio + (1.0 - train.warmup_ratio) * step / train.warmup_iters
    return factor


def compile_model(model: nn.Module, backend: str) -> None:
    """``train.compile``: compile the model's forward in place (``nn.Module.compile``), so parameter names, the
    optimizer and checkpoints stay those of the eager model; losses and the optimizer step run eagerly.

    The backbone, the block hooks of every adapter and the decoder trace into one graph per input size
    (``tests/core/test_compile.py``); evaluation runs the same modules eagerly (``set_stance("force_eager")``).
    """
    import torch._dynamo

    if backend not in torch._dynamo.list_backends(exclude_tags=()):
        choices = ", ".join(sorted(torch._dynamo.list_backends(exclude_tags=())))
        raise UserError(f"train.compile_backend '{backend}' is not a torch.compile backend; choose one of {choices}")
    model.compile(backend=backend)


def build_optimizer(model: nn.Module, config: RunConfig) -> torch.optim.Optimizer:
    """``train.optimizer``: AdamW (betas, eps) or SGD with ``train.momentum``, over :func:`build_param_groups`."""
    train = config.train
    groups = build_param_groups(model, config)
    if train.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=train.lr, momentum=train.momentum)
    return torch.optim.AdamW(groups, lr=train.lr, betas=train.betas, eps=train.eps)
