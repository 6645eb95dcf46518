"""Memory-lean pieces of the pixel decoder's encoder layer: two linear layers whose input is kept by recomputing it.

A trainable ``nn.Linear`` keeps its input for the weight's gradient. Two of the deformable encoder layer's
inputs are cheap functions of tensors the backward keeps anyway, so storing them too is a second copy:

- the sampling offsets and attention weights read ``query + query_pos``, while the value projection keeps
  ``query`` and the positional encoding is shared by every layer: :func:`linear_on_sum` keeps the two terms and
  adds them again in the backward;
- the FFN's first linear reads the post-attention LayerNorm's output, while the norm keeps its input and
  per-token statistics: :func:`layer_norm_then_linear` runs both as one function and renormalises in the
  backward.

Each saves one ``[B, S, C]`` tensor per layer (at 512² with batch 1, 5.25 MB each, six layers: 63 MB) for one
elementwise pass in the backward. Forward values are those of the modules (the same ATen calls); gradients are
the same formulas as autograd's (``tests/plugins/decoders/test_mask2former_lean.py``). Under autocast (which
re-types op by op) and while ``torch.compile`` traces (the compiler decides what to keep) the modules run as they
are.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import FunctionCtx, once_differentiable

from vltk_plugins.common.lean_autograd import lean_applies


def _rows(x: Tensor) -> Tensor:
    return x.reshape(-1, x.shape[-1])


def _linear_grads(
    grad_out: Tensor, inputs: Tensor, need_weight: bool, need_bias: bool
) -> tuple[Tensor | None, Tensor | None]:
    """``nn.Linear``'s weight and bias gradients (``grad_outᵀ · inputs``, the column sums of ``grad_out``)."""
    rows = _rows(grad_out)
    grad_weight = rows.t().mm(_rows(inputs)) if need_weight else None
    grad_bias = rows.sum(0) if need_bias else None
    return grad_weight, grad_bias


class _LinearOnSum(torch.autograd.Function):
    @staticmethod
    def forward(ctx: FunctionCtx, x: Tensor, addend: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        ctx.save_for_backward(x, addend, weight)
        ctx.has_bias = bias is not None
        return F.linear(x + addend, weight, bias)

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, grad_out: Tensor) -> tuple[Tensor | None, ...]:
        x, addend, weight = ctx.saved_tensors
        need_x, need_addend, need_weight, need_bias = ctx.needs_input_grad
        grad_sum = grad_out.matmul(weight) if need_x or need_addend else None
        grad_x = grad_sum if need_x else None
        grad_addend = grad_sum.sum_to_size(addend.shape) if need_addend else None
        grad_weight, grad_bias = _linear_grads(
            grad_out, x + addend if need_weight else x, need_weight, need_bias and ctx.has_bias
        )
        return grad_x, grad_addend, grad_weight, grad_bias


def linear_on_sum(linear: nn.Linear, x: Tensor, addend: Tensor) -> Tensor:
    """``linear(x + addend)`` keeping ``x`` and ``addend`` (which the caller keeps anyway) instead of their sum.

    ``addend`` may broadcast against ``x`` (a positional encoding ``[1, S, C]`` for a batch).
    """
    if not lean_applies(x):
        return linear(x + addend)
    return _LinearOnSum.apply(x, addend, linear.weight, linear.bias)


class _LayerNormThenLinear(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: FunctionCtx,
        x: Tensor,
        norm_weight: Tensor | None,
        norm_bias: Tensor | None,
        eps: float,
        weight: Tensor,
        bias: Tensor | None,
    ) -> tuple[Tensor, Tensor]:
        normed, mean, rstd = torch.native_layer_norm(x, (x.shape[-1],), norm_weight, norm_bias, eps)
        ctx.save_for_backward(x, norm_weight, norm_bias, mean, rstd, weight)
        ctx.eps, ctx.has_bias = eps, bias is not None
        out = F.linear(_rows(normed), weight, bias)
        # a plain tensor, not a view of the 2-D product: the caller's in-place ReLU must be allowed on it
        return normed, torch.ops.aten._unsafe_view(out, (*x.shape[:-1], out.shape[-1]))

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, grad_normed: Tensor | None, grad_out: Tensor) -> tuple[Tensor | None, ...]:
        x, norm_weight, norm_bias, mean, rstd, weight = ctx.saved_tensors
        need_x, need_norm_weight, need_norm_bias, _, need_weight, need_bias = ctx.needs_input_grad
        grad_weight = grad_bias = None
        if need_weight or need_bias:
            normed = (
                torch.native_layer_norm(x, (x.shape[-1],), norm_weight, norm_bias, ctx.eps)[0] if need_weight else x
            )
            grad_weight, grad_bias = _linear_grads(grad_out, normed, need_weight, need_bias and ctx.has_bias)
            del normed
        total = grad_out.matmul(weight)
        if grad_normed is not None:
            total += grad_normed
        grad_x, grad_norm_weight, grad_norm_bias = torch.ops.aten.native_layer_norm_backward(
            total,
            x,
            [x.shape[-1]],
            mean,
            rstd,
            norm_weight,
            norm_bias,
            [need_x, need_norm_weight and norm_weight is not None, need_norm_bias and norm_bias is not None],
        )
        return grad_x, grad_norm_weight, grad_norm_bias, None, grad_weight, grad_bias


def layer_norm_then_linear(norm: nn.LayerNorm, linear: nn.Linear, x: Tensor) -> tuple[Tensor, Tensor]:
    """``(norm(x), linear(norm(x)))`` keeping ``x`` and the norm's statistics instead of the normalised copy."""
    if not lean_applies(x) or len(norm.normalized_shape) != 1:
        normed = norm(x)
        return normed, linear(normed)
    return _LayerNormThenLinear.apply(x, norm.weight, norm.bias, norm.eps, linear.weight, linear.bias)


__all__ = ["layer_norm_then_linear", "linear_on_sum"]
