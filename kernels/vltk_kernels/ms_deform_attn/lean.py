"""Memory-lean PyTorch path of multi-scale deformable attention: what the public op runs on a CPU and wherever
the Triton kernel cannot (the ``torch`` backend).

The reference samples every level with one ``grid_sample`` over all heads, which needs a head-major copy of the
value per level, keeps each level's ``[B·nH, D, Q, P]`` samples, stacks them (a second copy of all of them),
multiplies by the weights (a third) and sums; autograd then keeps the stacked samples for the weights' gradient.
That is ``3 · L · P`` times the output's size in the forward alone.

Here one ``grid_sample`` per level and head reads the value in place (``[B, D, H_l, W_l]`` is a strided view of
``value``; a copy of that head's level for half inputs) and its samples are accumulated point by point into the
output, so at most one head's samples of one level (``P / nH`` of the output) exist at a time. The autograd
function saves only the inputs; the backward recomputes one level and head at a time, the value and location
gradients from ``grid_sampler_2d_backward`` and the weights' gradient from the recomputed samples, and adds them
into the gradient tensors in place.

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


def _level_value(value: Tensor, level: tuple[int, int, int], head: int) -> Tensor:
    """``[B, D, H_l, W_l]``: one head's value on one level, a view of ``value`` (no copy) in fp32 and fp64.

    Half-precision inputs get a contiguous copy (``1 / nH`` of the level): the CPU ``grid_sample`` kernel of
    torch 2.14 reads strided fp16/bf16 inputs wrongly (NaN in bf16, wrong values in fp16).
    """
    height, width, start = level
    view = value[:, start : start + height * width, head].transpose(1, 2).unflatten(2, (height, width))
    return view if value.dtype in (torch.float32, torch.float64) else view.contiguous()


def _level_grid(locations: Tensor, level: int, head: int) -> Tensor:
    """``[B, P, Q, 2]`` grid_sample coordinates in [-1, 1] (points as rows: the kernel runs along the queries)."""
    return locations[:, :, head, level].transpose(1, 2) * 2 - 1


def _sample(value: Tensor, grid: Tensor) -> Tensor:
    """``[B, D, P, Q]`` bilinear samples, exactly as the reference takes them."""
    return F.grid_sample(value, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


class _MSDeformAttn(torch.autograd.Function):
    @staticmethod
    def forward(ctx: FunctionCtx, value: Tensor, locations: Tensor, weights: Tensor, levels: Levels) -> Tensor:
        batch, _, heads, head_dim = value.shape
        queries, points = locations.shape[1], locations.shape[4]
        out = value.new_zeros(batch, queries, heads, head_dim)
        for index, level in enumerate(levels):
            for head in range(heads):
                samples = _sample(_level_value(value, level, head), _level_grid(locations, index, head))
                target = out[:, :, head].transpose(1, 2)  # [B, D, Q] view of the output
                point_weights = weights[:, :, head, index]  # [B, Q, P]
                for point in range(points):
                    target.addcmul_(samples[:, :, point], point_weights[:, None, :, point])
                del samples
        ctx.save_for_backward(value, locations, weights)
        ctx.levels = levels
        return out.view(batch, queries, heads * head_dim)

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, grad_out: Tensor) -> tuple[Tensor | None, ...]:
        value, locations, weights = ctx.saved_tensors
        need_value, need_locations, need_weights, _ = ctx.needs_input_grad
        batch, _, heads, head_dim = value.shape
        grad = grad_out.reshape(batch, -1, heads, head_dim)
        grad_value = torch.zeros_like(value, memory_format=torch.contiguous_format) if need_value else None
        grad_locations = torch.zeros_like(locations) if need_locations else None
        grad_weights = torch.zeros_like(weights) if need_weights else None
        for index, level in enumerate(ctx.levels):
            height, width, start = level
            for head in range(heads):
                level_value = _level_value(value, level, head)
                grid = _level_grid(locations, index, head)
                head_grad = grad[:, :, head].transpose(1, 2).unsqueeze(2)  # [B, D, 1, Q]
                if grad_weights is not None:
                    recomputed = _sample(level_value, grid)  # [B, D, P, Q]
                    grad_weights[:, :, head, index] = (recomputed * head_grad).sum(1).transpose(1, 2)
                    del recomputed
                if grad_value is None and grad_locations is None:
                    continue
                grad_samples = head_grad * weights[:, :, head, index].transpose(1, 2).unsqueeze(1)  # [B, D, P, Q]
                grad_level, grad_grid = torch.ops.aten.grid_sampler_2d_backward(
                    grad_samples, level_value, grid, 0, 0, False, [need_value, need_locations]
                )  # bilinear, zeros padding, align_corners=False: the forward's settings
                if grad_value is not None:
                    grad_value[:, start : start + height * width, head] += grad_level.flatten(2).transpose(1, 2)
                if grad_locations is not None:
                    grad_locations[:, :, head, index] = grad_grid.transpose(1, 2) * 2
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
