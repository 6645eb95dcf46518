"""Memory-lean PyTorch path of multi-scale deformable attention: what the public op runs on a CPU and wherever
the Triton kernel cannot (the ``torch`` backend).

The reference samples every level with one ``grid_sample`` over all heads, which needs a head-major copy of the
value per level, keeps each level's ``[B·nH, D, Q, P]`` samples, stacks them (a second copy of all of them),
multiplies by the weights (a third) and sums; autograd then keeps the stacked samples for the weights' gradient.
That is ``3 · L · P`` times the output's size in the forward alone.

Here the heads of a level are sampled in chunks of ``n = nH / P`` heads (:func:`heads_per_chunk`, at least one):
one ``grid_sample`` per level and chunk on a head-major copy of that chunk's value (``n / nH`` of the level), its
samples accumulated point by point into a head-major output, so at most one output's worth of samples exists at a
time and every accumulation is contiguous. The output is returned as a transposed view of that buffer (no copy).
The autograd function saves only the inputs; the backward recomputes one chunk at a time, the value and location
gradients from ``grid_sampler_2d_backward`` and the weights' gradient from the recomputed samples, and adds them
into the gradient tensors in place. (One head at a time, reading the value in place, needed half the memory but
its strided reads and writes made it slower than the reference on a CPU.)

Sampling is the reference's: ``grid_sample(mode="bilinear", padding_mode="zeros", align_corners=False)`` on
``2 · location - 1``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import FunctionCtx, once_differentiable

from vltk_kernels.ms_deform_attn.reference import ms_deform_attn_reference

Levels = tuple[tuple[int, int, int], ...]  # (height, width, first position in value) per level


def heads_per_chunk(heads: int, points: int) -> int:
    """Heads sampled together: as many as keep one chunk's samples ``[B·n, D, P, Q]`` within the output's size
    (``n·P <= nH``), at least one. Batching heads turns the per-head strided reads and writes into contiguous ones
    (about 1.3x faster on a CPU than one head at a time) without giving up the bound."""
    return max(1, heads // max(points, 1))


def _chunks(levels: Levels, heads: int, step: int):  # -> (level index, level, first head, end head)
    for index, level in enumerate(levels):
        for first in range(0, heads, step):
            yield index, level, first, min(heads, first + step)


def _level_value(value: Tensor, level: tuple[int, int, int], first: int, end: int) -> Tensor:
    """``[B·n, D, H_l, W_l]``: heads ``first:end`` of one level, head-major (a copy of ``n / nH`` of the level)."""
    height, width, start = level
    batch, _, _, head_dim = value.shape
    chunk = value[:, start : start + height * width, first:end]  # [B, HW, n, D]
    # contiguous even where the reshape is a view (B = n = 1): CPU grid_sample misreads strided half inputs
    return chunk.permute(0, 2, 3, 1).reshape(batch * (end - first), head_dim, height, width).contiguous()


def _level_grid(locations: Tensor, level: int, first: int, end: int) -> Tensor:
    """``[B·n, P, Q, 2]`` grid_sample coordinates in [-1, 1] (points as rows: the kernel runs along the queries)."""
    batch, queries, _, _, points, _ = locations.shape
    grid = locations[:, :, first:end, level].permute(0, 2, 3, 1, 4).reshape(batch * (end - first), points, queries, 2)
    return grid.mul(2).contiguous().sub_(1)  # a new tensor before the in-place step: never the caller's


def _level_weights(weights: Tensor, level: int, first: int, end: int) -> Tensor:
    """``[B·n, P, Q]``: the attention weights of those heads on that level, laid out like the samples."""
    batch, queries, _, _, points = weights.shape
    return weights[:, :, first:end, level].permute(0, 2, 3, 1).reshape(batch * (end - first), points, queries)


def _sample(value: Tensor, grid: Tensor) -> Tensor:
    """``[B·n, D, P, Q]`` bilinear samples, exactly as the reference takes them."""
    return F.grid_sample(value, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


class _MSDeformAttn(torch.autograd.Function):
    @staticmethod
    def forward(ctx: FunctionCtx, value: Tensor, locations: Tensor, weights: Tensor, levels: Levels) -> Tensor:
        batch, _, heads, head_dim = value.shape
        queries, points = locations.shape[1], locations.shape[4]
        step = heads_per_chunk(heads, points)
        out = value.new_zeros(batch, heads, head_dim, queries)  # head-major: every accumulation is contiguous
        for index, level, first, end in _chunks(levels, heads, step):
            samples = _sample(_level_value(value, level, first, end), _level_grid(locations, index, first, end))
            count = end - first
            samples = samples.view(batch, count, head_dim, points, queries)
            point_weights = _level_weights(weights, index, first, end).view(batch, count, 1, points, queries)
            target = out[:, first:end]  # [B, n, D, Q], each [D, Q] block contiguous
            for point in range(points):
                target.addcmul_(samples[:, :, :, point], point_weights[:, :, :, point])
            del samples
        ctx.save_for_backward(value, locations, weights)
        ctx.levels = levels
        # [B, Q, nH·D] as a transposed view (no copy): the output projection reads it as it is
        return out.view(batch, heads * head_dim, queries).transpose(1, 2)

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, grad_out: Tensor) -> tuple[Tensor | None, ...]:
        value, locations, weights = ctx.saved_tensors
        need_value, need_locations, need_weights, _ = ctx.needs_input_grad
        batch, _, heads, head_dim = value.shape
        queries, points = locations.shape[1], locations.shape[4]
        grad = grad_out.reshape(batch, queries, heads, head_dim)
        grad_value = torch.zeros_like(value, memory_format=torch.contiguous_format) if need_value else None
        grad_locations = torch.zeros_like(locations) if need_locations else None
        grad_weights = torch.zeros_like(weights) if need_weights else None
        for index, level, first, end in _chunks(ctx.levels, heads, heads_per_chunk(heads, points)):
            height, width, start = level
            count = end - first
            level_value = _level_value(value, level, first, end)
            grid = _level_grid(locations, index, first, end)
            chunk_grad = grad[:, :, first:end].permute(0, 2, 3, 1).reshape(batch * count, head_dim, 1, queries)
            if grad_weights is not None:
                recomputed = _sample(level_value, grid)  # [B·n, D, P, Q]
                summed = (recomputed * chunk_grad).sum(1).view(batch, count, points, queries)
                grad_weights[:, :, first:end, index] = summed.permute(0, 3, 1, 2)
                del recomputed, summed
            if grad_value is None and grad_locations is None:
                continue
            grad_samples = chunk_grad * _level_weights(weights, index, first, end).unsqueeze(1)  # [B·n, D, P, Q]
            grad_level, grad_grid = torch.ops.aten.grid_sampler_2d_backward(
                grad_samples, level_value, grid, 0, 0, False, [need_value, need_locations]
            )  # bilinear, zeros padding, align_corners=False: the forward's settings
            del grad_samples
            if grad_value is not None:
                grad_level = grad_level.view(batch, count, head_dim, height * width).permute(0, 3, 1, 2)
                grad_value[:, start : start + height * width, first:end] += grad_level
            if grad_locations is not None:
                grad_grid = grad_grid.view(batch, count, points, queries, 2).permute(0, 3, 1, 2, 4)
                grad_locations[:, :, first:end, index] = grad_grid * 2
        return grad_value, grad_locations, grad_weights, None


def ms_deform_attn_lean(
    value: Tensor,
    spatial_shapes: Tensor,
    level_start_index: Tensor,
    sampling_locations: Tensor,
    attention_weights: Tensor,
) -> Tensor:
    """Same result and gradients as :func:`ms_deform_attn_reference` with a fraction of its temporaries.

    Shapes as in the reference. Under autocast (which runs ``grid_sample`` in fp32 and mixes dtypes op by op),
    with mixed dtypes or devices, or with empty inputs the reference runs, so those cases stay the
    specification's.
    """
    del level_start_index  # as in the reference, the level offsets follow spatial_shapes
    floating = (value, sampling_locations, attention_weights)
    device_type = value.device.type
    if (
        value.numel() == 0
        or sampling_locations.numel() == 0
        or len({x.dtype for x in floating}) > 1
        or len({x.device for x in floating}) > 1
        or not value.is_floating_point()
        or (device_type in ("cpu", "cuda") and torch.is_autocast_enabled(device_type))
    ):
        return ms_deform_attn_reference(value, spatial_shapes, spatial_shapes, sampling_locations, attention_weights)
    levels: list[tuple[int, int, int]] = []
    start = 0
    for height, width in spatial_shapes.tolist():
        levels.append((int(height), int(width), start))
        start += int(height) * int(width)
    if start != value.shape[1]:
        raise ValueError(f"spatial_shapes cover {start} positions but value has {value.shape[1]}")
    return _MSDeformAttn.apply(value, sampling_locations, attention_weights, tuple(levels))


__all__ = ["ms_deform_attn_lean"]
