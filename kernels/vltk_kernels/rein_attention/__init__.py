"""Rein token attention op: ``softmax(feats @ tokens.T * scale)[..., 1:] @ values``, fused in Triton; and
:func:`rein_update`, one Rein layer's whole update around it.

The Triton kernels (``triton.py``) keep the ``[B, N, M]`` scores on chip in the forward and recompute them in the
backward. The ``torch`` backend (every CPU run and every fallback, e.g. more tokens than the kernel takes) is
:func:`rein_attention_lean` (``lean.py``), which walks chunks of rows so the scores never exist at full size;
:func:`rein_attention_reference` is the readable specification both are tested against. The backend follows
:mod:`vltk_kernels._dispatch` (``VLTK_KERNEL_BACKEND`` / :func:`vltk_kernels.use_backend`).

:func:`rein_update` is what the Rein adapter calls per layer: the token attention plus ``mlp_delta_f``, the gate
and the cls row. With the Triton backend (and under ``torch.compile``) it is the reference composition around
the attention op; the eager ``torch`` backend runs :func:`rein_update_lean` (``update.py``), the same update from
regrouped products in one autograd function (the LoRA tokens kept low-rank, the projection folded into the
values, the residual, bias and gate inside the products, no cls split), which the adapter's forward+backward
benchmark (``benchmarks/rein_adapter_speed.py``) times against upstream's module.
"""

from __future__ import annotations

from torch import Tensor

from vltk_kernels._dispatch import autocast_inputs, autocast_off, compiling, dtype_problem, select_backend
from vltk_kernels.rein_attention.lean import rein_attention_lean
from vltk_kernels.rein_attention.reference import (
    check_rein_attention_shapes,
    check_rein_update_shapes,
    rein_attention_reference,
    rein_update_reference,
)
from vltk_kernels.rein_attention.update import rein_update_lean

#: Largest token count the Triton path takes: its ``BLOCK_N x M`` score tile lives in registers (Rein uses 100).
MAX_TOKENS = 512


def _triton_problem(feats: Tensor, tokens: Tensor, values: Tensor) -> str | None:
    if tokens.shape[0] > MAX_TOKENS:
        return f"{tokens.shape[0]} tokens exceed the kernel's limit of {MAX_TOKENS}"
    if feats.numel() == 0:
        return "the input is empty"
    return dtype_problem(feats, tokens, values)


def rein_attention(feats: Tensor, tokens: Tensor, values: Tensor, scale: float) -> Tensor:
    """``softmax(feats @ tokens.T * scale, -1)[..., 1:] @ values`` — see :func:`rein_attention_reference`.

    feats ``[B, N, C]`` (may be a strided view, e.g. ``x[:, 1:]``), tokens ``[M, C]``, values ``[M-1, C]`` ->
    ``[B, N, C]``; differentiable in feats, tokens and values on every backend.
    """
    check_rein_attention_shapes(feats, tokens, values)
    cast = autocast_inputs(feats, tokens, values)
    if select_backend("rein_attention", feats.device, _triton_problem(*cast)) == "torch":
        if compiling():  # under torch.compile the compiler plans memory; the lean path's chunk writes do not trace
            return rein_attention_reference(feats, tokens, values, scale)
        return rein_attention_lean(feats, tokens, values, scale)
    from vltk_kernels.rein_attention.triton import rein_attention_triton

    return rein_attention_triton(*cast, scale)


def rein_update(
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
) -> Tensor:
    """One Rein layer with LoRA tokens ``T = tokens_a @ tokens_b``: ``f + gate · (weight (rein_attention(f, T, V) +
    f) + bias)`` on the patch rows of ``x`` ``[B, T, C]`` (row 0, the cls token, passed through when
    ``skip_first``), ``V = T[1:] value_weightᵀ + value_bias`` — see :func:`rein_update_reference`.

    Differentiable in every tensor input. The eager ``torch`` backend runs :func:`rein_update_lean` when the
    inputs share one floating dtype and device (under autocast they are cast first, as the products would be);
    anything else, the Triton backend and ``torch.compile`` run the reference composition around
    :func:`rein_attention`.
    """
    tensors = (x, tokens_a, tokens_b, value_weight, value_bias, weight, bias)
    check_rein_update_shapes(*tensors)
    cast = autocast_inputs(*tensors)
    if tokens_a.shape[0] > MAX_TOKENS:
        problem: str | None = f"{tokens_a.shape[0]} tokens exceed the kernel's limit of {MAX_TOKENS}"
    else:
        problem = "the input is empty" if x.shape[1] <= int(skip_first) or x.numel() == 0 else dtype_problem(*cast)
    if select_backend("rein_attention", x.device, problem) == "torch" and not compiling():
        if (
            x.shape[1] > int(skip_first)
            and x.numel() > 0
            and cast[0].is_floating_point()
            and len({t.dtype for t in cast}) == 1
            and len({t.device for t in cast}) == 1
            and (not isinstance(gate, Tensor) or (gate.numel() == 1 and gate.device == x.device))
        ):
            with autocast_off(x.device):
                return rein_update_lean(*cast, gate, scale, skip_first)
    return rein_update_reference(*tensors, gate, scale, skip_first, attention=rein_attention)


__all__ = [
    "rein_attention",
    "rein_attention_lean",
    "rein_attention_reference",
    "rein_update",
    "rein_update_lean",
    "rein_update_reference",
]
