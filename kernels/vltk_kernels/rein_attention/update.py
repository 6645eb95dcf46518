"""One Rein layer (LoRA tokens) as a single autograd function: what the ``torch`` backend of
:func:`vltk_kernels.rein_attention.rein_update` runs (every CPU run in eager mode).

The specification (:func:`~vltk_kernels.rein_attention.reference.rein_update_reference`) is upstream's order:
tokens ``T = A B``, values ``V = T[1:] W_Tᵀ + b_T``, ``Δ = W (softmax(f Tᵀ s)[:, 1:] V + f) + b`` and
``out = f + g Δ`` on the patch rows, the cls row passed through. Its products are regrouped here (same numbers to
float rounding, a fifth fewer FLOPs, far fewer passes over the ``[R, C]`` features, ``R = B·T`` rows):

- **Low-rank tokens stay low-rank**: the scores are ``(f Bᵀ)(s A)ᵀ`` (``R·C·r + R·r·M`` instead of ``R·C·M``), and
  the values enter through ``A`` too: ``P[:, 1:] V Wᵀ = (P[:, 1:] Ã) K̃`` with ``Ã = [A[1:] | 1]`` and
  ``K̃ = [B W_Tᵀ Wᵀ; (W b_T)ᵀ]`` (``r + 1`` rows), so the value side costs ``R·M·r + R·r·C`` instead of two
  ``R·M·C`` products, and ``mlp_delta_f`` runs over ``r + 1`` rows, not over the N features (the projection is
  folded into the values).
- **One product for the whole update**: with ``E = [1 | P[:, 1:] Ã]`` and ``F = [b; K̃]``,
  ``out = f + g (f Wᵀ + E F)``: the residual enters as the first product's input (``addmm``), the bias through
  E's column of ones; no ``ΔF + f`` sum, no separate gate multiply, no cls split and concatenation (the rows are
  ``x.reshape(B·T, C)`` as stored; the cls rows take part, ``1/T`` more work, and are copied back at the end).
- The backward mirrors it: ``dx = dOut + g dOut W + (dS s A) B`` (two products into one buffer), ``dW`` from one
  ``dOutᵀ f`` over all rows minus the cls rows' rank-B term, and the gate's gradient from the small products
  (``⟨dOutᵀ f, W⟩ + ⟨Eᵀ dOut, F⟩``), so ``Δ`` is never stored.

Saved for the backward: the input (alive anyway), ``f Bᵀ`` ``[R, r]``, the probabilities ``[R, M]`` and ``E``
``[R, r + 2]``; upstream's autograd keeps two ``[R, C]`` tensors besides the probabilities.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import FunctionCtx, once_differentiable


def _first_rows(rows: Tensor, batch: int) -> Tensor:
    """Row 0 of every image of a ``[B·T, K]`` matrix, as a ``[B, K]`` view (the cls rows)."""
    return rows.view(batch, -1, rows.shape[-1])[:, 0]


def _value_factors(
    tokens_a: Tensor, tokens_b: Tensor, value_weight: Tensor, value_bias: Tensor, weight: Tensor, bias: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """``Ã = [A[1:] | 1]``, ``B W_Tᵀ`` and ``F = [b; B W_Tᵀ Wᵀ; (W b_T)ᵀ]`` (all small, ``r``-sized)."""
    tilde_a = torch.cat([tokens_a[1:], tokens_a.new_ones(tokens_a.shape[0] - 1, 1)], dim=1)  # [M - 1, r + 1]
    value_rows = torch.mm(tokens_b, value_weight.t())  # B W_Tᵀ: [r, C]
    factors = torch.cat([bias[None], torch.mm(value_rows, weight.t()), torch.mv(weight, value_bias)[None]])
    return tilde_a, value_rows, factors  # factors: [r + 2, C]


class _ReinUpdate(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: FunctionCtx,
        x: Tensor,
        tokens_a: Tensor,
        tokens_b: Tensor,
        value_weight: Tensor,
        value_bias: Tensor,
        weight: Tensor,
        bias: Tensor,
        gate: Tensor | float,
        scale: float,
        skip_first: bool,
    ) -> Tensor:
        batch, length, channels = x.shape
        rows = x.reshape(batch * length, channels)
        tilde_a, value_rows, factors = _value_factors(tokens_a, tokens_b, value_weight, value_bias, weight, bias)
        projected = torch.mm(rows, tokens_b.t())  # f Bᵀ: [R, r]
        probs = torch.softmax(torch.mm(projected, tokens_a.t() * scale), dim=-1)  # [R, M], token 0 included
        mixed = torch.empty(rows.shape[0], factors.shape[0], dtype=rows.dtype, device=rows.device)  # E
        mixed[:, 0] = 1
        torch.mm(probs[:, 1:], tilde_a, out=mixed[:, 1:])  # token 0 (null) has no value
        out = torch.addmm(rows, rows, (weight * gate).t())
        out.addmm_(mixed, factors * gate)
        if skip_first:
            _first_rows(out, batch).copy_(_first_rows(rows, batch))  # the cls rows get no update
        gate_tensor = gate if isinstance(gate, Tensor) else None
        ctx.save_for_backward(
            rows, projected, probs, mixed, tokens_a, tokens_b, value_weight, value_bias, weight, tilde_a,
            value_rows, factors, gate_tensor,
        )  # fmt: skip
        ctx.gate = None if isinstance(gate, Tensor) else float(gate)
        ctx.scale, ctx.skip_first, ctx.shape = scale, skip_first, (batch, length, channels)
        return out.view(batch, length, channels)

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, grad_out: Tensor) -> tuple[Tensor | None, ...]:
        (rows, projected, probs, mixed, tokens_a, tokens_b, value_weight, value_bias, weight, tilde_a, value_rows,
         factors, gate_tensor) = ctx.saved_tensors  # fmt: skip
        needs = ctx.needs_input_grad
        batch, length, channels = ctx.shape
        grad_rows = grad_out.reshape(batch * length, channels)
        gate = gate_tensor if gate_tensor is not None else ctx.gate
        skip_first, scale, rank = ctx.skip_first, ctx.scale, tokens_a.shape[1]

        # E F: dE = g dOut Fᵀ (zero on the cls rows, which got no update) -> dP -> dS (softmax backward).
        grad_mixed = torch.mm(grad_rows, (factors * gate).t())  # [R, r + 2]
        if skip_first:
            _first_rows(grad_mixed, batch).zero_()
        grad_probs = torch.zeros_like(probs)  # column 0: token 0 has no value
        torch.mm(grad_mixed[:, 1:], tilde_a.t(), out=grad_probs[:, 1:])
        grad_scores = grad_probs.sub_((probs * grad_probs).sum(-1, keepdim=True)).mul_(probs)
        grad_projected = torch.mm(grad_scores, tokens_a * scale)  # d(f Bᵀ): [R, r]

        grad_x = None
        if needs[0]:
            grad_rows_x = torch.addmm(grad_rows, grad_rows, weight * gate)
            grad_rows_x.addmm_(grad_projected, tokens_b)
            if skip_first:
                _first_rows(grad_rows_x, batch).copy_(_first_rows(grad_rows, batch))
            grad_x = grad_rows_x.view(batch, length, channels)
        if not any(needs[1:8]):
            return grad_x, None, None, None, None, None, None, None, None, None

        # Small products over all rows, minus the cls rows' rank-B terms.
        outer = torch.mm(grad_rows.t(), rows)  # Σ_patch dOut_r ⊗ f_r: [C, C]
        grad_factors = torch.mm(mixed.t(), grad_rows)  # Eᵀ dOut: [r + 2, C]
        if skip_first:
            cls_grad = _first_rows(grad_rows, batch)
            outer.addmm_(cls_grad.t(), _first_rows(rows, batch), alpha=-1)
            grad_factors.addmm_(_first_rows(mixed, batch).t(), cls_grad, alpha=-1)
        grad_gate = None
        if needs[7]:
            grad_gate = ((outer * weight).sum() + (grad_factors * factors).sum()).reshape(gate_tensor.shape)
            grad_gate = grad_gate.to(gate_tensor.dtype)
        grad_factors.mul_(gate)
        grad_bias, grad_k_rows, grad_k = grad_factors[0], grad_factors[1 : rank + 1], grad_factors[rank + 1]

        # Tokens: dA from the scores and from Ã; dB from f Bᵀ and from B W_Tᵀ.
        grad_a = torch.mm(grad_scores.t(), projected).mul_(scale)
        grad_a[1:] += torch.mm(probs[:, 1:].t(), grad_mixed[:, 1 : rank + 1])
        grad_value_rows = torch.mm(grad_k_rows, weight)  # d(B W_Tᵀ): [r, C]
        grad_b = torch.mm(grad_projected.t(), rows).addmm_(grad_value_rows, value_weight)
        grad_value_weight = torch.mm(grad_value_rows.t(), tokens_b)
        grad_value_bias = torch.mv(weight.t(), grad_k)
        grad_weight = outer.mul_(gate).addmm_(grad_k_rows.t(), value_rows)
        grad_weight.addr_(grad_k, value_bias)
        grads = (grad_a, grad_b, grad_value_weight, grad_value_bias, grad_weight, grad_bias)
        grads = tuple(g if need else None for g, need in zip(grads, needs[1:7], strict=True))
        return (grad_x, *grads, grad_gate, None, None)


def rein_update_lean(
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
    """Same result and gradients as :func:`~vltk_kernels.rein_attention.reference.rein_update_reference`,
    from regrouped products (see the module docstring). Every tensor must share ``x``'s dtype and device; the
    caller (:func:`~vltk_kernels.rein_attention.rein_update`) sends other inputs to the reference."""
    args = (x, tokens_a, tokens_b, value_weight, value_bias, weight, bias, gate, float(scale), bool(skip_first))
    return _ReinUpdate.apply(*args)


__all__ = ["rein_update_lean"]
