"""Reference (pure PyTorch, differentiable) for Rein's token attention and for one Rein layer's whole update: the
specifications the kernels and the lean paths must match."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor
from torch.nn import functional as F


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


def check_rein_update_shapes(
    x: Tensor,
    tokens_a: Tensor,
    tokens_b: Tensor,
    value_weight: Tensor,
    value_bias: Tensor,
    weight: Tensor,
    bias: Tensor,
) -> None:
    """Raise ``ValueError`` naming the shapes unless x ``[B,T,C]``, tokens_a ``[M,r]`` (M >= 2), tokens_b ``[r,C]``,
    the weights ``[C,C]`` and the biases ``[C]``."""
    shapes = [tuple(t.shape) for t in (x, tokens_a, tokens_b, value_weight, value_bias, weight, bias)]
    channels = x.shape[-1]
    ok = (
        x.dim() == 3
        and tokens_a.dim() == 2
        and tokens_a.shape[0] >= 2
        and tuple(tokens_b.shape) == (tokens_a.shape[1], channels)
        and all(s == (channels, channels) for s in shapes[3:6:2])
        and all(s == (channels,) for s in shapes[4:7:2])
    )
    if not ok:
        raise ValueError(
            f"expected x [B,T,C], tokens_a [M,r] (M >= 2), tokens_b [r,C], value_weight [C,C], value_bias [C], "
            f"weight [C,C], bias [C]; got {', '.join(str(s) for s in shapes)}"
        )


def rein_update_reference(
    x: Tensor,
    tokens_a: Tensor,
    tokens_b: Tensor,
    value_weight: Tensor,
    value_bias: Tensor,
    weight: Tensor,
    bias: Tensor,
    gate: Tensor | float,
    scale: float,
    skip_first: bool = True,
    attention: Callable[[Tensor, Tensor, Tensor, float], Tensor] = rein_attention_reference,
) -> Tensor:
    """One Rein layer with LoRA tokens, in upstream's order (``LoRAReins.forward``).

    Tokens ``T = tokens_a @ tokens_b`` (``[M, C]``), values ``V = T[1:] value_weightᵀ + value_bias`` (upstream's
    ``mlp_token2feat``), and on the patch rows ``f`` of x ``[B, T, C]`` (batch-first; with ``skip_first`` row 0
    is the cls token, passed through unchanged): ``f + gate · (weight (attention(f, T, V) + f) + bias)``
    (``weight``/``bias``: ``mlp_delta_f``; ``gate``: its learnable ``scale``). ``attention`` is the token
    attention (this file's reference; the dispatcher passes the public op, so a fused kernel runs inside).
    """
    check_rein_update_shapes(x, tokens_a, tokens_b, value_weight, value_bias, weight, bias)
    tokens = tokens_a @ tokens_b
    values = F.linear(tokens[1:], value_weight, value_bias)
    feats = x[:, 1:] if skip_first else x
    delta = F.linear(attention(feats, tokens, values, scale) + feats, weight, bias)
    out = feats + gate * delta
    return torch.cat([x[:, :1], out], dim=1) if skip_first else out
