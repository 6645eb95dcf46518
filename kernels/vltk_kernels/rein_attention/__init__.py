"""Rein token attention op. Only the PyTorch reference exists so far; a Triton backend plugs in here later."""

from __future__ import annotations

from torch import Tensor

from vltk_kernels.rein_attention.reference import rein_attention_reference


def rein_attention(feats: Tensor, tokens: Tensor, values: Tensor, scale: float) -> Tensor:
    """``softmax(feats @ tokens.T * scale, -1)[..., 1:] @ values`` — see :func:`rein_attention_reference`."""
    return rein_attention_reference(feats, tokens, values, scale)


__all__ = ["rein_attention", "rein_attention_reference"]
