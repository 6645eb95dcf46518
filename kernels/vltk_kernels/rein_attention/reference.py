"""Reference (pure PyTorch, differentiable) for Rein's token attention: the specification a kernel must match."""

from __future__ import annotations

import torch
from torch import Tensor


def check_rein_attention_shapes(feats: Tensor, tokens: Tensor, values: Tensor) -> None:
    """Raise ``ValueError`` naming the shapes when they do not fit ``[B,N,C]``, ``[M,C]``, ``[M-1,C]``."""
    if feats.dim() != 3 or tokens.dim() != 2 or values.dim() != 2:
        raise ValueError(
            f"expected feats [B,N,C], tokens [M,C], values [M-1,C]; got {tuple(feats.shape)}, "
            f"{tuple(tokens.shape)}, {tuple(values.shape)}"
        )
    if tokens.shape[0] != values.shape[0] + 1 or tokens.shape[1] != feats.shape[2] or values.shape[1] != feats.shape[2]:
        raise ValueError(
            f"shape mismatch: feats {tuple(feats.shape)}, tokens {tuple(tokens.shape)}, "
            f"values {tuple(values.shape)} (need tokens [M,C] and values [M-1,C])"
        )


def rein_attention_reference(feats: Tensor, tokens: Tensor, values: Tensor, scale: float) -> Tensor:
    """``softmax(feats @ tokens.T * scale, -1)[..., 1:] @ values``.

    feats ``[B, N, C]``, tokens ``[M, C]``, values ``[M - 1, C]`` -> ``[B, N, C]``. The softmax runs over all
    ``M`` tokens but token 0's column is dropped from the update (Rein's "null" token), so a patch that matches
    no token receives an almost-zero update.
    """
    check_rein_attention_shapes(feats, tokens, values)
    attention = torch.softmax(torch.matmul(feats, tokens.transpose(0, 1)) * scale, dim=-1)
    return torch.matmul(attention[..., 1:], values)
