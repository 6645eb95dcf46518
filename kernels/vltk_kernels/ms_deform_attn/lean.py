"""Memory-lean PyTorch path of multi-scale deformable attention: what the public op runs on a CPU and wherever
the Triton kernel cannot (the ``torch`` backend).

The reference samples every level with one ``grid_sample`` over all heads, which needs a head-major copy of the
value per level, keeps each level's ``[B·nH, D, Q, P]`` samples, stacks them (a second copy of all of them),
multiplies by the weights (a third) and sums; autograd then keeps the stacked samples for the weights' gradient.
That is ``3 · L · P`` times the output's size in the forward alone.

Here the op is a sparse product read straight from ``value``: every output row (one *bag* per batch, query and
head) is the weighted sum of ``4 · L · P`` rows of ``value`` viewed ``[B·S·nH, D]``, the four bilinear corners of
each sample, weighted by corner weight x attention weight. The forward is one ``embedding_bag`` per chunk of bags;
the corner rows and weights are computed on transposed ``[L, P, bags]`` copies so each elementwise op is one long
loop. The backward, from the inputs alone (nothing else is saved):

- every corner's dot product with the output gradient, ``g · value[row]`` (``embedding_bag``'s per-sample-weight
  backward), gives the attention weights' gradient (the corner dots weighted bilinearly) and the locations'
  (the same dots weighted by the bilinear weights' derivatives);
- the value's gradient is the transposed product: the corners sorted by row, then one ``embedding_bag`` over the
  output gradient with a bag per row of ``value``, a gather instead of a scatter.

Each chunk's gather data stays within the output's size or 16 MiB (:func:`bags_per_chunk`). Sampling is the
reference's, ``grid_sample(mode="bilinear", padding_mode="zeros", align_corners=False)`` on ``2·u - 1``, the same
unnormalisation op for op; corners outside the level read zero. (Earlier versions of this path called
``grid_sample`` per level and head chunk and ``grid_sampler_2d_backward``; at Mask2Former's 256² encoder shapes, B
2, 1344 queries, 8 heads, 3 levels, 4 points, one CPU thread, this one takes 14-16 ms forward against 30-35 and
95-105 ms forward + backward against 155-180.)
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import FunctionCtx, once_differentiable

from vltk_kernels.ms_deform_attn.reference import ms_deform_attn_reference

Levels = tuple[tuple[int, int, int], ...]  # (height, width, first position in value) per level
CORNERS = 4


#: Gather data a chunk may hold whatever the output's size: below this the per-chunk op overhead (a few dozen
#: small ops, ~1-2 ms on a CPU) outweighs the memory saved (measured at Mask2Former's 256² shapes: 2 to 8 chunks
#: cost the same, 20 chunks 1.3x as much).
MIN_CHUNK_BYTES = 16 * 2**20


def bags_per_chunk(bags: int, head_dim: int, samples: int, element_size: int, bytes_per_corner: int) -> int:
    """Bags (one per batch, query and head) handled together: as many as keep a chunk's ``bytes_per_corner`` of
    gather data for each of its ``4 · samples`` corners within the output's size (``head_dim`` elements per bag)
    or :data:`MIN_CHUNK_BYTES`, whichever is larger; at least one."""
    per_bag = CORNERS * samples * bytes_per_corner
    budget = max(bags * head_dim * element_size, MIN_CHUNK_BYTES)
    return max(1, min(bags, budget // per_bag))


#: Gather data per corner: the forward's row (4 bytes) and weight, and as much again in per-axis temporaries.
FORWARD_BYTES_PER_CORNER = 2 * (4 + 4) + 4
#: The backward's: row, weight, dot product and its transposed copy, sort order and bag (8 each), sorted weight,
#: and the per-axis weights, derivatives and cells.
BACKWARD_BYTES_PER_CORNER = 4 * 4 + 2 * 8 + 4 + 2 * 4 + 8


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Coordinates, weights and the backward's products in float32 at least: a half-precision ``x·W`` misplaces
    samples on wide levels, and half dot products lose the gradient."""
    return torch.promote_types(dtype, torch.float32)


def _transposed(matrix: Tensor, dtype: torch.dtype) -> Tensor:
    """A contiguous ``dtype`` copy of ``matrix.t()`` in one pass."""
    return torch.empty(matrix.shape[1], matrix.shape[0], dtype=dtype, device=matrix.device).copy_(matrix.t())


def _row_base(batch: int, queries: int, heads: int, positions: int, device: torch.device) -> Tensor:
    """``[B·Q·nH]``: the row of position 0 of each bag's batch and head in ``value`` viewed ``[B·S·nH, D]``."""
    row_dtype = torch.int32 if batch * positions * heads < 2**31 else torch.int64
    batch_rows = torch.arange(batch, dtype=row_dtype, device=device).mul_(positions * heads)
    head_rows = torch.arange(heads, dtype=row_dtype, device=device)
    return (batch_rows.view(batch, 1, 1) + head_rows.view(1, 1, heads)).expand(batch, queries, heads).reshape(-1)


def _level_column(levels: Levels, field: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """``[L, 1, 1]``: one field of every level (0 height, 1 width, 2 first position), broadcast along the bags."""
    return torch.tensor([level[field] for level in levels], dtype=dtype, device=device).view(-1, 1, 1)


class _Axis(NamedTuple):
    """One axis of every sample's corners, ``[L, P, n]`` each: the low and high corner's weight (0 outside the
    level), their derivatives with respect to the normalised location (or None), and their clamped cells."""

    weights: tuple[Tensor, Tensor]
    derivatives: tuple[Tensor, Tensor] | None
    cells: tuple[Tensor, Tensor]


def _axis(coordinate: Tensor, size: Tensor, size_int: Tensor, row_dtype: torch.dtype, derivatives: bool) -> _Axis:
    """Bilinear corners along one axis for grid coordinates ``2·u - 1`` ``[L, P, n]`` on levels of ``size``
    ``[L, 1, 1]`` (derivatives with respect to ``u``).

    The pixel coordinate is clamped to ``[-1, size]`` (beyond it both corners are outside, so the sample is 0
    either way) and its floor to ``size - 1``, so the cells are in range even for non-finite locations; the
    derivative is 0 where the clamp was active, as the sample is flat there.
    """
    pixel = coordinate.add(1.0).mul_(size).sub_(1.0).mul_(0.5)  # grid_sample's unnormalisation, op for op
    inside = (pixel > -1.0) & (pixel < size) if derivatives else None
    pixel.clamp_(min=-1.0)
    torch.minimum(pixel, size, out=pixel)
    low_cell = pixel.floor()
    torch.minimum(low_cell, size - 1, out=low_cell)  # in [-1, size - 1]
    fraction = pixel.sub_(low_cell)
    low_valid, high_valid = low_cell >= 0, low_cell <= size - 2
    weights = ((1.0 - fraction).mul_(low_valid), fraction.mul_(high_valid))
    slopes = None
    if inside is not None:
        # d pixel / d u = size
        slopes = ((low_valid & inside).to(pixel.dtype).mul_(-size), (high_valid & inside).to(pixel.dtype).mul_(size))
    low_int = low_cell.to(row_dtype)
    cells = (low_int.clamp(min=0), torch.minimum(low_int.add_(1), size_int - 1).clamp_(min=0))
    return _Axis(weights, slopes, cells)


class _Corners(NamedTuple):
    """The four corners of every sample of ``n`` bags: ``rows`` ``[n, L, P, 2, 2]`` (corner (a, b) is row a, column b
    of the bilinear square) and the two axes' ``[L, P, n]`` factors."""

    rows: Tensor
    y: _Axis
    x: _Axis


def _corners(locations: Tensor, levels: Levels, heads: int, row_base: Tensor, derivatives: bool) -> _Corners:
    """Corners of ``locations`` ``[n, L, P, 2]`` (normalised ``(x, y)``); ``row_base`` ``[n]`` is the row of position 0
    of each bag's batch and head.

    The arithmetic runs on a ``[L, P, 2, n]`` copy of the reference's grid ``2·u - 1`` with per-level constants
    ``[L, 1, 1]``: every elementwise op is one long contiguous loop (in the ``[n, L, P, 2]`` layout the constants
    would cut it into loops of two), and there are a few dozen ops however many levels there are.
    """
    count, num_levels, points, _ = locations.shape
    compute, device, row_dtype = _compute_dtype(locations.dtype), locations.device, row_base.dtype
    grid = _transposed(locations.reshape(count, -1), compute).mul_(2.0).sub_(1.0).view(num_levels, points, 2, count)
    height, width = (_level_column(levels, field, compute, device) for field in (0, 1))
    height_int, width_int, start = (_level_column(levels, field, row_dtype, device) for field in (0, 1, 2))
    y = _axis(grid[:, :, 1], height, height_int, row_dtype, derivatives)
    x = _axis(grid[:, :, 0], width, width_int, row_dtype, derivatives)
    line_rows = [cell.mul(width_int).add_(start).mul_(heads).add_(row_base) for cell in y.cells]
    column_rows = [cell.mul(heads) for cell in x.cells]
    rows = torch.empty(count, num_levels, points, 2, 2, dtype=row_dtype, device=device)
    by_corner = rows.permute(3, 4, 1, 2, 0)
    for a in range(2):
        for b in range(2):
            torch.add(line_rows[a], column_rows[b], out=by_corner[a, b])
    return _Corners(rows, y, x)


def _corner_weights(corners: _Corners, attention: Tensor, dtype: torch.dtype) -> Tensor:
    """``[n, L·P·4]`` in ``dtype``: attention weight (``[L, P, n]``) x bilinear weight of every corner."""
    count, num_levels, points = corners.rows.shape[:3]
    weights = torch.empty(count, num_levels, points, 2, 2, dtype=attention.dtype, device=attention.device)
    by_corner = weights.permute(3, 4, 1, 2, 0)
    for a in range(2):
        scaled = corners.y.weights[a] * attention
        for b in range(2):
            torch.mul(scaled, corners.x.weights[b], out=by_corner[a, b])
    return weights.view(count, -1).to(dtype)


class _Problem(NamedTuple):
    """The flattened problem: ``value`` as ``[B·S·nH, D]`` rows, locations and weights per bag, each bag's row base."""

    table: Tensor
    locations: Tensor  # [bags, L, P, 2]
    weights: Tensor  # [bags, L, P]
    row_base: Tensor  # [bags]


def _flatten(value: Tensor, locations: Tensor, weights: Tensor) -> _Problem:
    batch, positions, heads, head_dim = value.shape
    queries, num_levels, points = locations.shape[1], locations.shape[3], locations.shape[4]
    bags = batch * queries * heads
    return _Problem(
        value.reshape(-1, head_dim).contiguous(),  # a copy only if the value is strided: embedding_bag reads
        # a strided table row by row, element by element (10x slower)
        locations.reshape(bags, num_levels, points, 2),
        weights.reshape(bags, num_levels, points),
        _row_base(batch, queries, heads, positions, value.device),
    )


def _attention(weights: Tensor, compute: torch.dtype) -> Tensor:
    """A chunk's attention weights ``[n, L, P]`` as the ``[L, P, n]`` layout of :func:`_corners`' factors."""
    count, num_levels, points = weights.shape
    return _transposed(weights.reshape(count, -1), compute).view(num_levels, points, count)


def _forward(value: Tensor, locations: Tensor, weights: Tensor, levels: Levels) -> Tensor:
    batch, _, heads, head_dim = value.shape
    queries, num_levels, points = locations.shape[1], locations.shape[3], locations.shape[4]
    problem = _flatten(value, locations, weights)
    bags = problem.row_base.numel()
    step = bags_per_chunk(bags, head_dim, num_levels * points, value.element_size(), FORWARD_BYTES_PER_CORNER)
    compute = _compute_dtype(value.dtype)
    out = None if step == bags else value.new_empty(bags, head_dim)
    for first in range(0, bags, step):
        part = slice(first, first + step)
        corners = _corners(problem.locations[part], levels, heads, problem.row_base[part], derivatives=False)
        corner_weights = _corner_weights(corners, _attention(problem.weights[part], compute), value.dtype)
        rows = corners.rows.view(corner_weights.shape)
        sums = F.embedding_bag(rows, problem.table, per_sample_weights=corner_weights, mode="sum")
        del corners, corner_weights
        if out is None:
            out = sums
        else:
            out[part] = sums
    assert out is not None
    return out.view(batch, queries, heads * head_dim)


def _corner_dots(grad: Tensor, table: Tensor, rows: Tensor) -> Tensor:
    """``[n, L·P·4]``: ``grad[bag] · table[row]`` for every corner row of every bag (``grad`` ``[n, D]``)."""
    count, per_bag = rows.shape[0], rows[0].numel()
    flat = rows.reshape(-1)
    # indices, offsets and bags of one integer type: CUDA's embedding_bag kernels require it
    offsets = torch.arange(0, flat.numel(), per_bag, dtype=rows.dtype, device=rows.device)
    bag_of = torch.arange(count, dtype=rows.dtype, device=rows.device).repeat_interleave(per_bag)
    dots = torch.ops.aten._embedding_bag_per_sample_weights_backward(grad, table, flat, offsets, bag_of, 0, -1)
    return dots.view(count, per_bag)


def _transposed_gather(grad: Tensor, rows: Tensor, corner_weights: Tensor, num_rows: int) -> Tensor:
    """``[num_rows, D]``: for every row of ``value``, the sum of ``weight x grad[bag]`` over the corners that read it:
    the corners sorted by row, then one bag per row (a gather, where scattering into the rows would be a
    read-modify-write per corner)."""
    keys = rows.reshape(-1)
    order = torch.argsort(keys)
    bags = torch.div(order, rows[0].numel(), rounding_mode="trunc")
    weights = corner_weights.reshape(-1).index_select(0, order)
    counts = torch.bincount(keys, minlength=num_rows)
    offsets = counts.cumsum(0).sub_(counts)
    return F.embedding_bag(bags, grad, offsets, per_sample_weights=weights, mode="sum")


def _sample_gradients(
    dots: Tensor, corners: _Corners, attention: Tensor, grad_weights: Tensor | None, grad_locations: Tensor | None
) -> None:
    """Write the attention weights' (``[L, P, n]``) and locations' (``[2, L, P, n]``, x then y) gradients from the
    corner dot products ``dots`` ``[L, P, 2, 2, n]``.

    A sample is ``Σ_ab y_a x_b v_ab``: its weight's gradient is ``Σ_ab y_a x_b d_ab``, its x location's
    ``a · Σ_ab y_a x'_b d_ab`` and its y location's ``a · Σ_ab y'_a x_b d_ab`` (``'`` the slopes of the axis weights,
    ``a`` the attention weight).
    """
    (x_low, x_high), (y_low, y_high) = corners.x.weights, corners.y.weights
    along_x = [dots[:, :, a, 0] * x_low + dots[:, :, a, 1] * x_high for a in (0, 1)]
    if grad_weights is not None:
        grad_weights.copy_(y_low * along_x[0] + y_high * along_x[1])
    if grad_locations is not None:
        x_slopes, y_slopes = corners.x.derivatives, corners.y.derivatives
        assert x_slopes is not None and y_slopes is not None
        slope_x = [dots[:, :, a, 0] * x_slopes[0] + dots[:, :, a, 1] * x_slopes[1] for a in (0, 1)]
        grad_locations[0].copy_((y_low * slope_x[0] + y_high * slope_x[1]).mul_(attention))
        grad_locations[1].copy_((y_slopes[0] * along_x[0] + y_slopes[1] * along_x[1]).mul_(attention))


def _backward(
    grad_out: Tensor, value: Tensor, locations: Tensor, weights: Tensor, levels: Levels, needs: tuple[bool, ...]
) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    need_value, need_locations, need_weights = needs
    heads, head_dim = value.shape[2:]
    num_levels, points = locations.shape[3], locations.shape[4]
    compute = _compute_dtype(value.dtype)
    problem = _flatten(value, locations, weights)
    table = problem.table.to(compute)
    bags = problem.row_base.numel()
    grad = grad_out.reshape(bags, head_dim).to(compute)
    grad_table = torch.zeros_like(table) if need_value else None
    grad_locations = locations.new_zeros(bags, num_levels, points, 2) if need_locations else None
    grad_weights = weights.new_zeros(bags, num_levels, points) if need_weights else None
    step = bags_per_chunk(bags, head_dim, num_levels * points, value.element_size(), BACKWARD_BYTES_PER_CORNER)
    for first in range(0, bags, step):
        part = slice(first, first + step)
        corners = _corners(problem.locations[part], levels, heads, problem.row_base[part], derivatives=need_locations)
        attention = _attention(problem.weights[part], compute)
        if grad_locations is not None or grad_weights is not None:
            dots = _transposed(_corner_dots(grad[part], table, corners.rows), compute)
            _sample_gradients(
                dots.view(num_levels, points, 2, 2, -1),
                corners,
                attention,
                None if grad_weights is None else grad_weights[part].permute(1, 2, 0),
                None if grad_locations is None else grad_locations[part].permute(3, 1, 2, 0),
            )
            del dots
        if grad_table is not None:
            corner_weights = _corner_weights(corners, attention, compute)
            grad_table += _transposed_gather(grad[part], corners.rows, corner_weights, table.shape[0])
        del corners, attention
    grad_value = None if grad_table is None else grad_table.view(value.shape).to(value.dtype)
    return (
        grad_value,
        None if grad_locations is None else grad_locations.view(locations.shape),
        None if grad_weights is None else grad_weights.view(weights.shape),
    )


class _MSDeformAttn(torch.autograd.Function):
    @staticmethod
    def forward(ctx: FunctionCtx, value: Tensor, locations: Tensor, weights: Tensor, levels: Levels) -> Tensor:
        ctx.save_for_backward(value, locations, weights)
        ctx.levels = levels
        return _forward(value, locations, weights, levels)

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, grad_out: Tensor) -> tuple[Tensor | None, ...]:
        value, locations, weights = ctx.saved_tensors
        grads = _backward(grad_out, value, locations, weights, ctx.levels, tuple(ctx.needs_input_grad[:3]))
        return (*grads, None)


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
