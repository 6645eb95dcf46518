"""The ms_deform_attn reference against a hand-written bilinear sampling loop (explicit corner weights).

The loop is the specification in its most literal form: a location ``(x, y)`` in [0, 1] maps to the continuous
pixel coordinate ``(x * W - 0.5, y * H - 0.5)`` (``align_corners=False``: 0 and 1 are the outer edges of the
border pixels); its four integer neighbours get the usual bilinear weights, and a neighbour outside the map
contributes zero (``padding_mode="zeros"``).
"""

from __future__ import annotations

import math

import pytest
import torch

from vltk_kernels.ms_deform_attn import ms_deform_attn_reference


def brute_force(
    value: torch.Tensor, shapes: list[tuple[int, int]], locations: torch.Tensor, weights: torch.Tensor
) -> torch.Tensor:
    batch, _, heads, dim = value.shape
    _, queries, _, levels, points, _ = locations.shape
    starts = [0]
    for height, width in shapes[:-1]:
        starts.append(starts[-1] + height * width)
    out = torch.zeros(batch, queries, heads * dim, dtype=value.dtype)
    for b in range(batch):
        for q in range(queries):
            for h in range(heads):
                acc = torch.zeros(dim, dtype=value.dtype)
                for level, (height, width) in enumerate(shapes):
                    for p in range(points):
                        x = locations[b, q, h, level, p, 0].item() * width - 0.5
                        y = locations[b, q, h, level, p, 1].item() * height - 0.5
                        x0, y0 = math.floor(x), math.floor(y)
                        fx, fy = x - x0, y - y0
                        corners = [
                            (y0, x0, (1 - fy) * (1 - fx)),
                            (y0, x0 + 1, (1 - fy) * fx),
                            (y0 + 1, x0, fy * (1 - fx)),
                            (y0 + 1, x0 + 1, fy * fx),
                        ]
                        sample = torch.zeros(dim, dtype=value.dtype)
                        for row, col, corner_weight in corners:
                            if 0 <= row < height and 0 <= col < width:
                                sample += corner_weight * value[b, starts[level] + row * width + col, h]
                        acc += weights[b, q, h, level, p] * sample
                out[b, q, h * dim : (h + 1) * dim] = acc
    return out


def make_inputs(
    shapes: list[tuple[int, int]], batch: int, queries: int, heads: int, dim: int, points: int, dtype: torch.dtype
) -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(0)
    total = sum(h * w for h, w in shapes)
    levels = len(shapes)
    value = torch.randn(batch, total, heads, dim, generator=generator, dtype=dtype)
    # Locations a bit outside [0, 1] too, so the zero padding is exercised.
    locations = torch.rand(batch, queries, heads, levels, points, 2, generator=generator, dtype=dtype) * 1.3 - 0.15
    weights = torch.rand(batch, queries, heads, levels, points, generator=generator, dtype=dtype)
    weights = weights / weights.flatten(-2).sum(-1)[..., None, None]
    spatial_shapes = torch.tensor(shapes, dtype=torch.long)
    sizes = spatial_shapes.prod(1)
    level_start_index = torch.cat((sizes.new_zeros(1), sizes.cumsum(0)[:-1]))
    return value, spatial_shapes, level_start_index, locations, weights


@pytest.mark.parametrize(
    "shapes",
    [[(7, 9), (3, 5), (2, 3)], [(5, 5)], [(6, 11), (1, 1), (3, 2), (4, 7)]],
    ids=["3-levels", "1-level", "4-levels"],
)
def test_reference_matches_hand_written_bilinear_loop(shapes: list[tuple[int, int]]) -> None:
    value, spatial_shapes, level_start_index, locations, weights = make_inputs(
        shapes, batch=2, queries=5, heads=3, dim=5, points=3, dtype=torch.float64
    )
    expected = brute_force(value, shapes, locations, weights)
    actual = ms_deform_attn_reference(value, spatial_shapes, level_start_index, locations, weights)
    assert actual.shape == (2, 5, 15)
    torch.testing.assert_close(actual, expected)


def test_pixel_centres_read_exact_values_and_outside_reads_zero() -> None:
    shapes = [(3, 4)]
    value = torch.arange(12, dtype=torch.float64).view(1, 12, 1, 1)
    spatial_shapes = torch.tensor(shapes)
    start = torch.zeros(1, dtype=torch.long)
    # Centre of pixel (row 2, col 1) and a point fully outside the map.
    locations = torch.tensor([[(1.5 / 4, 2.5 / 3)], [(1.2, 0.5)]], dtype=torch.float64).view(1, 2, 1, 1, 1, 2)
    weights = torch.ones(1, 2, 1, 1, 1, dtype=torch.float64)
    out = ms_deform_attn_reference(value, spatial_shapes, start, locations, weights)
    assert out[0, 0, 0].item() == 2 * 4 + 1
    assert out[0, 1, 0].item() == 0.0


def test_reference_is_differentiable_in_every_input() -> None:
    shapes = [(3, 4), (2, 3)]
    value, spatial_shapes, level_start_index, locations, weights = make_inputs(
        shapes, batch=1, queries=2, heads=2, dim=2, points=2, dtype=torch.float64
    )
    # Keep locations away from pixel-centre kinks so finite differences are valid.
    inputs = (value.requires_grad_(), locations.clamp(0.05, 0.95).requires_grad_(), weights.requires_grad_())
    assert torch.autograd.gradcheck(
        lambda v, loc, w: ms_deform_attn_reference(v, spatial_shapes, level_start_index, loc, w), inputs
    )


def test_spatial_shapes_must_cover_value() -> None:
    value, spatial_shapes, level_start_index, locations, weights = make_inputs(
        [(3, 4)], batch=1, queries=1, heads=1, dim=1, points=1, dtype=torch.float32
    )
    with pytest.raises(ValueError, match="cover"):
        ms_deform_attn_reference(value[:, :-1], spatial_shapes, level_start_index, locations, weights)
