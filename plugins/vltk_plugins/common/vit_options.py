"""Option pieces every ViT backbone shares: the ``attention`` choice and the ``out_indices`` check. No torch.

``eva02``, ``clip-vit`` (``backbones/open_clip_vit/options.py``) and ``dinov2`` (``backbones/dinov2/options.py``)
offer the same ``attention`` knob, implemented once in :mod:`vltk_plugins.common.attention`, and the same
``out_indices`` rule (four blocks, one per pyramid level, checked again against the depth by
:func:`vltk_plugins.common.vit.resolve_out_indices` once the model is built). Options modules are imported by the
entry points when plugins load (``vltk --help``), so this module must stay free of torch; the attention module
itself imports torch and therefore takes its list of backends from here, not the other way round.
"""

from __future__ import annotations

from typing import Literal

#: The ``attention`` option of every ViT backbone (implemented in ``vltk_plugins.common.attention``).
AttentionChoice = Literal["auto", "xformers", "sdpa", "math"]

#: Its help text, shown by ``vltk list`` / ``vltk show`` for each backbone.
ATTENTION_HELP = (
    "Attention kernel of the ViT blocks: auto = xformers' memory_efficient_attention on CUDA when it imports and "
    "a test call works, else PyTorch SDPA; xformers (CUDA only; an error elsewhere); sdpa = "
    "F.scaled_dot_product_attention (fused flash/memory-efficient kernels, memory linear in tokens); math = "
    "PyTorch's unfused attention (materialises the N x N scores; the numerical reference). Logged once."
)


#: Help text of the ``grad_checkpointing`` option of every ViT backbone.
GRAD_CHECKPOINTING_HELP = (
    "Activation checkpointing: recompute each block together with the adapter's block hooks (Rein, LoRA, VPT) "
    "in the backward pass instead of keeping their activations (torch.utils.checkpoint, non-reentrant). Same "
    "gradients, less training memory, ~30% more backbone compute; on whenever gradients are recorded (also for "
    "a frozen backbone in eval mode whose hooks train)."
)


def check_out_indices(value: list[int] | None) -> list[int] | None:
    """The body of an ``out_indices`` field validator: ``None`` (the default rule) or exactly 4 block indices.

    The range is checked when the backbone is built and its depth is known.
    """
    if value is not None and len(value) != 4:
        raise ValueError(f"needs exactly 4 block indices (one per pyramid level), got {len(value)}")
    return value


__all__ = ["ATTENTION_HELP", "GRAD_CHECKPOINTING_HELP", "AttentionChoice", "check_out_indices"]
