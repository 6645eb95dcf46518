"""Rein token attention op: ``softmax(feats @ tokens.T * scale)[..., 1:] @ values``, fused in Triton.

The Triton kernels (``triton.py``) keep the ``[B, N, M]`` scores on chip in the forward and recompute them in the
backward. The ``torch`` backend (every CPU run and every fallback, e.g. more tokens than the kernel takes) is
:func:`rein_attention_lean` (``lean.py``), which walks chunks of rows so the scores never exist at full size;
:func:`rein_attention_reference` is the readable specification both are tested against. The backend follows
:mod:`vltk_kernels._dispatch` (``VLTK_KERNEL_BACKEND`` / :func:`vltk_kernels.use_backend`).
"""

from __future__ import annotations

from torch import Tensor

from vltk_kernels._dispatch import autocast_inputs, compiling, dtype_problem, select_backend
from vltk_kernels.rein_attention.lean import rein_attention_lean
from vltk_kernels.rein_attention.reference import check_rein_attention_shapes, rein_attention_reference

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


__all__ = ["rein_attention", "rein_attention_lean", "rein_attention_reference"]
