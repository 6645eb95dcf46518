"""Memory-lean training path of timm's gated SiLU MLPs (EVA02's feed-forward): the same numbers, fewer saved
activations.

timm's ``SwiGLU`` (EVA02-B/L: ``fc1_g``, ``fc1_x`` and a sub-LayerNorm) computes
``fc2(norm(silu(fc1_g(x)) * fc1_x(x)))``. Autograd then keeps, per block, the gate (for the SiLU's backward), the
SiLU's output and the value (for the product's) and the product (for the sub-LayerNorm's): four ``[B, N, hidden]``
tensors, whether or not any weight trains. ``GluMlp`` (EVA02-Ti/S: one ``fc1`` whose output halves are value and
gate, no norm) keeps the ``fc1`` output and the SiLU's output. Here the SiLU, the product and the norm are one
autograd function that keeps only the gate and the value (the ``fc1`` outputs) plus the norm's per-token mean and
inverse deviation, and recomputes ``silu(gate) * value`` in the backward: two elementwise passes buy half of a
``SwiGLU``'s MLP activations (a third of a ``GluMlp``'s). That matters most where the backbone is frozen (Rein,
LoRA, VPT): its weights need no input saved, so those tensors were most of what a block kept
(``benchmarks/rein_memory.py``).

Forward values are the module's own to the bit (the same ATen ops in the same order); gradients use the same
formulas as autograd's (``tests/plugins/common/test_lean_mlp.py``). The original forward still runs where the
saving does not apply or cannot be exact: without grad, under autocast (which re-types the ops one by one), while
``torch.compile`` traces (the compiler plans what to keep itself), and with an active dropout between the
product and the norm.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import FunctionCtx, once_differentiable

from vltk_plugins.common.lean_autograd import lean_applies


class _SwiGLUNorm(torch.autograd.Function):
    """``layer_norm(silu(gate) * value)`` (``normalized`` False: no norm) saving only ``gate`` and ``value``."""

    @staticmethod
    def forward(
        ctx: FunctionCtx,
        gate: Tensor,
        value: Tensor,
        weight: Tensor | None,
        bias: Tensor | None,
        eps: float,
        normalized: bool,
    ) -> Tensor:
        hidden = F.silu(gate) * value
        if not normalized:
            ctx.save_for_backward(gate, value)
            ctx.normalized = False
            return hidden
        out, mean, rstd = torch.native_layer_norm(hidden, (hidden.shape[-1],), weight, bias, eps)
        ctx.save_for_backward(gate, value, weight, bias, mean, rstd)
        ctx.normalized = True
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, grad_out: Tensor) -> tuple[Tensor | None, ...]:
        need_gate, need_value, need_weight, need_bias, _, _ = ctx.needs_input_grad
        if ctx.normalized:
            gate, value, weight, bias, mean, rstd = ctx.saved_tensors
        else:
            (gate, value), weight, bias = ctx.saved_tensors, None, None
        # Ordered so that at most three hidden-sized temporaries live at once (the backward of a recomputed,
        # checkpointed block runs while its activations are alive, so its temporaries count towards the peak).
        silu = F.silu(gate)  # the one recomputation, as the forward computed it
        grad_weight = grad_bias = None
        if ctx.normalized:
            hidden = silu * value
            grad_hidden, grad_weight, grad_bias = torch.ops.aten.native_layer_norm_backward(
                grad_out,
                hidden,
                [hidden.shape[-1]],
                mean,
                rstd,
                weight,
                bias,
                [need_gate or need_value, need_weight and weight is not None, need_bias and bias is not None],
            )
            del hidden
        else:
            grad_hidden = grad_out
        grad_value = grad_hidden * silu if need_value else None
        del silu
        # autograd's own fused SiLU backward on the product's gradient: the same formula, one pass
        grad_gate = torch.ops.aten.silu_backward(grad_hidden * value, gate) if need_gate else None
        return grad_gate, grad_value, grad_weight, grad_bias, None, None


def _lean_applies(mlp: nn.Module, x: Tensor) -> bool:
    if not isinstance(mlp.act, nn.SiLU) or not isinstance(mlp.norm, nn.LayerNorm | nn.Identity):
        return False
    if getattr(mlp, "chunk_dim", -1) not in (-1, x.dim() - 1):  # GluMlp split along the features only
        return False
    if mlp.training and mlp.drop1.p > 0:
        return False
    return lean_applies(x)


def _gate_and_value(mlp: nn.Module, x: Tensor) -> tuple[Tensor, Tensor]:
    """The SiLU's input and the tensor it multiplies, as timm's forward computes them."""
    if hasattr(mlp, "fc1_g"):  # SwiGLU
        return mlp.fc1_g(x), mlp.fc1_x(x)
    first, second = mlp.fc1(x).chunk(2, dim=-1)  # GluMlp: x1 * act(x2) when gate_last, else act(x1) * x2
    return (second, first) if mlp.gate_last else (first, second)


class _LeanSwiGLUForward:
    """The replacement ``forward`` of one timm gated MLP: the lean function where it applies, else timm's own."""

    def __init__(self, mlp: nn.Module, original: Any) -> None:
        self.mlp = mlp
        self.original = original

    def __call__(self, x: Tensor) -> Tensor:
        mlp = self.mlp
        if not _lean_applies(mlp, x):
            return self.original(x)
        gate, value = _gate_and_value(mlp, x)  # (the product is commutative to the bit: gate_last needs no care)
        norm = mlp.norm
        if isinstance(norm, nn.LayerNorm):
            hidden = _SwiGLUNorm.apply(gate, value, norm.weight, norm.bias, norm.eps, True)
        else:
            hidden = _SwiGLUNorm.apply(gate, value, None, None, 0.0, False)
        return mlp.drop2(mlp.fc2(hidden))


def install_lean_swiglu(model: nn.Module) -> int:
    """Give every timm ``SwiGLU`` and SiLU ``GluMlp`` in ``model`` the memory-lean training forward; returns how
    many.

    Parameters, buffers and state-dict keys are untouched (the forward is replaced on the instance, as
    :func:`~vltk_plugins.common.attention.install_attention` does), and installing twice changes nothing.
    """
    from timm.layers.mlp import GluMlp, SwiGLU

    installed = 0
    for module in model.modules():
        if isinstance(module, SwiGLU) or (isinstance(module, GluMlp) and isinstance(module.act, nn.SiLU)):
            original = module.__dict__.get("_vltk_original_forward", module.forward)
            module._vltk_original_forward = original
            module.forward = _LeanSwiGLUForward(module, original)
            installed += 1
    return installed


__all__ = ["install_lean_swiglu"]
