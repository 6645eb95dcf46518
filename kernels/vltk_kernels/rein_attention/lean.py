"""Memory-lean PyTorch path of Rein's token attention: what the public op runs on a CPU and wherever the Triton
kernel cannot (the ``torch`` backend).

The reference materialises the ``[B, N, M]`` scores and probabilities at once (and its backward four more
tensors of that size). Since the softmax runs over the M tokens, rows of the N patches are independent: this path
walks chunks of rows per image, each a plain ``[n, C] x [C, M]`` product, and writes every chunk's result
straight into the output (and, in the backward, into the feature gradient). Token 0 is Rein's null token: it takes
part in the softmax but has no value, so the products read ``P[:, 1:]`` in place (a strided view, no copy).

What the backward needs of the forward is the probabilities ``P``. When they are small next to the output
(``M <= C / 4``, Rein's case: 100 tokens against 768 or 1024 channels) they are kept, one ``[B, N, M]`` buffer;
otherwise each chunk is recomputed from the saved inputs in the backward (flash-attention style; the whole row of
M scores is in the chunk, so the recomputed softmax is the forward's). With ``dP = [0, dO Vᵀ]`` (token 0's
column is zero): ``dS = P ∘ (dP - rowsum(P ∘ dP)) · scale``, ``df = dS T``, ``dT = Σ dSᵀ f``,
``dV = Σ P[:, 1:]ᵀ dO``; the token and value gradients sum over every chunk in place, in fp32 for half inputs.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import FunctionCtx, once_differentiable

from vltk_kernels._dispatch import autocast_inputs, autocast_off
from vltk_kernels.rein_attention.reference import check_rein_attention_shapes, rein_attention_reference

#: Largest ``[n, M]`` score block of one chunk; a block is also kept within an eighth of the output, and never
#: below MIN_CHUNK_BYTES (tiny chunks only add per-call overhead).
CHUNK_BYTES = 4 * 2**20
MIN_CHUNK_BYTES = 2**18


def rows_per_chunk(
    batch: int, rows: int, channels: int, tokens: int, itemsize: int, chunk_size: int | None = None
) -> int:
    """Rows of N per chunk: ``chunk_size`` when given, else as many as keep one ``[n, M]`` score block within
    ``min(CHUNK_BYTES, output / 8)`` (at least MIN_CHUNK_BYTES), so a few such blocks stay small next to the output.
    """
    if chunk_size is not None:
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be a positive number of rows, got {chunk_size}")
        return min(rows, chunk_size)
    budget = max(MIN_CHUNK_BYTES, min(CHUNK_BYTES, batch * rows * channels * itemsize // 8))
    return max(1, min(rows, budget // max(1, tokens * itemsize)))


def _chunks(batch: int, rows: int, step: int) -> list[tuple[int, slice]]:
    return [(b, slice(start, min(rows, start + step))) for b in range(batch) for start in range(0, rows, step)]


def _probabilities(feats: Tensor, tokens: Tensor, scale: float, out: Tensor | None = None) -> Tensor:
    """``softmax(f Tᵀ · scale)`` of one ``[n, C]`` chunk, over all M tokens (into ``out`` when given)."""
    scores = torch.mm(feats, tokens.t()).mul_(scale)
    return torch.softmax(scores, dim=-1) if out is None else torch.softmax(scores, dim=-1, out=out)


def _add_product(total: Tensor, left: Tensor, right: Tensor) -> None:
    """``total += left @ right`` in place (through a temporary only for half inputs into an fp32 accumulator)."""
    if total.dtype == left.dtype:
        total.addmm_(left, right)
    else:
        total += torch.mm(left, right)


class _ReinAttention(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: FunctionCtx, feats: Tensor, tokens: Tensor, values: Tensor, scale: float, step: int, keep: bool
    ) -> Tensor:
        batch, rows, channels = feats.shape
        out = feats.new_empty(batch, rows, channels)
        keep = keep and any(ctx.needs_input_grad[:3])
        probs = feats.new_empty(batch, rows, tokens.shape[0]) if keep else None
        for b, part in _chunks(batch, rows, step):
            chunk = _probabilities(feats[b, part], tokens, scale, None if probs is None else probs[b, part])
            torch.mm(chunk[:, 1:], values, out=out[b, part])  # token 0 (null) has no value
            del chunk  # before the next chunk's scores exist
        ctx.save_for_backward(feats, tokens, values, probs)
        ctx.scale, ctx.step = scale, step
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, grad_out: Tensor) -> tuple[Tensor | None, ...]:
        with autocast_off(grad_out.device):
            return _ReinAttention._backward(ctx, grad_out)

    @staticmethod
    def _backward(ctx: FunctionCtx, grad_out: Tensor) -> tuple[Tensor | None, ...]:
        feats, tokens, values, probs = ctx.saved_tensors
        need_feats, need_tokens, need_values = ctx.needs_input_grad[:3]
        batch, rows, _ = feats.shape
        grad_feats = torch.empty_like(feats, memory_format=torch.contiguous_format) if need_feats else None
        accumulate = torch.promote_types(feats.dtype, torch.float32)
        grad_tokens = torch.zeros(tokens.shape, dtype=accumulate, device=tokens.device) if need_tokens else None
        grad_values = torch.zeros(values.shape, dtype=accumulate, device=values.device) if need_values else None
        for b, part in _chunks(batch, rows, ctx.step):
            chunk_grad = grad_out[b, part]
            p = probs[b, part] if probs is not None else _probabilities(feats[b, part], tokens, ctx.scale)
            if grad_values is not None:
                _add_product(grad_values, p[:, 1:].t(), chunk_grad)
            if grad_feats is not None or grad_tokens is not None:
                d_scores = torch.empty_like(p)  # dP (no value for token 0, so no gradient), then dS in place
                d_scores[:, 0] = 0
                torch.mm(chunk_grad, values.t(), out=d_scores[:, 1:])
                d_scores.sub_((p * d_scores).sum(-1, keepdim=True)).mul_(p).mul_(ctx.scale)
                if grad_feats is not None:
                    torch.mm(d_scores, tokens, out=grad_feats[b, part])
                if grad_tokens is not None:
                    _add_product(grad_tokens, d_scores.t(), feats[b, part])
                del d_scores
            del p  # a recomputed chunk goes before the next one is built
        grad_tokens = grad_tokens.to(tokens.dtype) if grad_tokens is not None else None
        grad_values = grad_values.to(values.dtype) if grad_values is not None else None
        return grad_feats, grad_tokens, grad_values, None, None, None


def rein_attention_lean(
    feats: Tensor,
    tokens: Tensor,
    values: Tensor,
    scale: float,
    chunk_size: int | None = None,
    recompute: bool | None = None,
) -> Tensor:
    """Same result and gradients as :func:`rein_attention_reference`, without its ``[B, N, M]`` temporaries.

    ``chunk_size`` is the number of rows of N per chunk (default: :func:`rows_per_chunk`); ``recompute``
    chooses between keeping the probabilities for the backward and recomputing them per chunk (default:
    recompute unless ``M <= C / 4``). Under autocast the inputs are cast as the product would cast them. Empty
    inputs and mixed dtypes or devices go to the reference.
    """
    check_rein_attention_shapes(feats, tokens, values)
    feats, tokens, values = autocast_inputs(feats, tokens, values)
    if (
        feats.numel() == 0
        or len({feats.dtype, tokens.dtype, values.dtype}) > 1
        or len({feats.device, tokens.device, values.device}) > 1
        or not feats.is_floating_point()
    ):
        return rein_attention_reference(feats, tokens, values, scale)
    num_tokens, channels = tokens.shape
    step = rows_per_chunk(*feats.shape, num_tokens, feats.element_size(), chunk_size)
    keep = 4 * num_tokens <= channels if recompute is None else not recompute
    with autocast_off(feats.device):
        return _ReinAttention.apply(feats, tokens, values, float(scale), step, keep)


__all__ = ["CHUNK_BYTES", "MIN_CHUNK_BYTES", "rein_attention_lean", "rows_per_chunk"]
