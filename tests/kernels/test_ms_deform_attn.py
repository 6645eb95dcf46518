"""ms_deform_attn: Triton (interpreter on CPU) and the lean PyTorch path vs the grid_sample reference, forward and
backward."""

from __future__ import annotations

import pytest
import torch

from vltk_kernels import ms_deform_attn, use_backend
from vltk_kernels.ms_deform_attn import lean, ms_deform_attn_lean, ms_deform_attn_reference

# (level shapes, B, nH, D, P, Q): non-square, odd, tiny (1x1, 1xW) levels; Q > 128 masks the last query tile.
CASES = [
    ([(7, 9), (4, 5), (2, 3)], 2, 3, 12, 4, 37),
    ([(1, 1), (1, 6), (5, 1)], 1, 2, 8, 3, 20),
    ([(11, 13), (6, 7)], 1, 1, 32, 2, 150),
]


def make_inputs(shapes: list[tuple[int, int]], b: int, heads: int, dim: int, points: int, queries: int, dtype, seed=0):
    generator = torch.Generator().manual_seed(seed)
    total = sum(h * w for h, w in shapes)
    value = torch.randn(b, total, heads, dim, generator=generator)
    # a bit outside [0, 1] too: zero padding and half-outside corners
    locations = torch.rand(b, queries, heads, len(shapes), points, 2, generator=generator) * 1.3 - 0.15
    weights = torch.rand(b, queries, heads, len(shapes), points, generator=generator)
    spatial_shapes = torch.tensor(shapes, dtype=torch.int64)
    return [value.to(dtype), spatial_shapes, locations.to(dtype), weights.to(dtype)]


def op(value: torch.Tensor, spatial_shapes: torch.Tensor, locations: torch.Tensor, weights: torch.Tensor):
    starts = torch.cat([spatial_shapes.new_zeros(1), (spatial_shapes[:, 0] * spatial_shapes[:, 1]).cumsum(0)[:-1]])
    return ms_deform_attn(value, spatial_shapes, starts, locations, weights)


def reference(value: torch.Tensor, spatial_shapes: torch.Tensor, locations: torch.Tensor, weights: torch.Tensor):
    return ms_deform_attn_reference(value, spatial_shapes, None, locations, weights)


@pytest.mark.parametrize("case", CASES, ids=["3-levels", "degenerate-levels", "one-head-d32"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
def test_triton_matches_reference(case: tuple, dtype: torch.dtype, check_backends) -> None:
    # fp16 locations are rounded before both backends see them; the location gradient scales with W, H
    check_backends(
        op,
        make_inputs(*case, dtype=dtype),
        reference=reference,
        scale_tolerance=1.0 if dtype == torch.float32 else 3.0,
    )


def test_strided_value_view() -> None:
    """The decoder's value is a view of a projection; a head-sliced (non-contiguous) value is read in place."""
    value, shapes, locations, weights = make_inputs(*CASES[0], dtype=torch.float32)
    wide = torch.cat([value, value], dim=-1)[..., :12]
    with use_backend("triton"):
        fused = op(wide, shapes, locations, weights)
    torch.testing.assert_close(fused, op(value, shapes, locations, weights), atol=1e-5, rtol=1e-5)


def test_inconsistent_spatial_shapes_fail_clearly() -> None:
    value, shapes, locations, weights = make_inputs(*CASES[0], dtype=torch.float32)
    with use_backend("triton"), pytest.raises(ValueError, match="spatial_shapes cover"):
        op(value[:, :-1], shapes, locations, weights)
    with pytest.raises(ValueError, match="shape mismatch"):
        op(value, shapes, locations[:, :, :2], weights)


def test_reference_gradcheck_float64() -> None:
    value, shapes, locations, weights = make_inputs([(3, 4), (2, 2)], 1, 2, 3, 2, 5, dtype=torch.float64, seed=2)
    inputs = (value.requires_grad_(), locations.requires_grad_(), weights.requires_grad_())
    assert torch.autograd.gradcheck(lambda v, loc, w: ms_deform_attn_reference(v, shapes, None, loc, w), inputs)


def msda_lean(value: torch.Tensor, shapes: torch.Tensor, locations: torch.Tensor, weights: torch.Tensor):
    return ms_deform_attn_lean(value, shapes, None, locations, weights)


@pytest.mark.parametrize("case", CASES, ids=["3-levels", "degenerate-levels", "one-head-d32"])
def test_msda_lean_matches_reference(case: tuple, check_lean) -> None:
    check_lean(msda_lean, reference, make_inputs(*case, dtype=torch.float32))


def test_msda_lean_gradcheck_float64_and_half(check_lean) -> None:
    value, shapes, locations, weights = make_inputs([(3, 4), (2, 1)], 1, 2, 3, 2, 5, dtype=torch.float64, seed=2)
    inputs = (value.requires_grad_(), locations.requires_grad_(), weights.requires_grad_())
    assert torch.autograd.gradcheck(lambda v, loc, w: msda_lean(v, shapes, loc, w), inputs)
    # fp16 against the reference in fp16: the same rounded grid, so even the location gradient agrees
    # Half inputs: coordinates and products run in float32, so the specification is the float32 reference on the
    # same rounded inputs (the half reference rounds its grid, moving samples across pixel edges, where the
    # location gradient jumps).
    check_lean(msda_lean, reference, make_inputs(*CASES[0], dtype=torch.float16), reference_dtype=torch.float32)
    # Levels wide enough for grid_sample's vectorised CPU path, which misreads strided half inputs (the
    # reference itself returns NaN here in both half types). Against fp32 on the same rounded inputs, the
    # tolerance covers the grid's own rounding (2·loc - 1 in the input dtype: 1/8 pixel in bf16 on 64 columns).
    wide = make_inputs([(32, 64), (16, 32)], 1, 2, 16, 2, 300, dtype=torch.float32)
    for dtype, tolerance in ((torch.float16, 5e-2), (torch.bfloat16, 0.5)):
        half = [x.to(dtype) if x.is_floating_point() else x for x in wide]
        with torch.no_grad():
            out = msda_lean(*half)
            expected = reference(*[x.float() if x.is_floating_point() else x for x in half])
        torch.testing.assert_close(out.float(), expected, atol=tolerance, rtol=tolerance)


def test_msda_lean_strided_value_and_partial_gradients(check_lean) -> None:
    value, shapes, locations, weights = make_inputs(*CASES[0], dtype=torch.float32)
    wide = torch.cat([value, value], dim=-1)[..., :12]  # a head-sliced projection: not contiguous
    check_lean(msda_lean, reference, [wide, shapes, locations, weights], grad_mask=[True, False, True])
    check_lean(msda_lean, reference, [value, shapes, locations, weights], grad_mask=[False, True, False])


def test_msda_lean_chunks_of_bags_match_reference(check_lean, monkeypatch) -> None:
    """Bags (batch, query, head) are gathered in chunks bounded by the output's size; with chunks forced small
    (a last partial one included), the result and every gradient are those of the reference."""
    assert lean.bags_per_chunk(10**6, 32, 12, 4, 8) == 10**6 * 32 * 4 // (4 * 12 * 8)  # the output's size
    assert lean.bags_per_chunk(1000, 32, 12, 4, 8) == 1000  # a small problem: one chunk of at most 16 MiB
    assert lean.bags_per_chunk(10**6, 32, 12, 4, 8 * 2**20) == 1  # at least one
    inputs = make_inputs([(7, 9), (4, 5), (2, 3)], 2, 8, 4, 2, 23, dtype=torch.float32)
    monkeypatch.setattr(lean, "bags_per_chunk", lambda bags, *_: 37)
    check_lean(msda_lean, reference, inputs)
    half = make_inputs([(6, 5), (3, 3)], 2, 6, 8, 2, 17, dtype=torch.float16)
    check_lean(msda_lean, reference, half, reference_dtype=torch.float32)


def test_msda_lean_nonfinite_locations_stay_in_bounds() -> None:
    """A NaN or infinite location never makes an out-of-range row. NaN gives NaN, as in the reference; an infinite
    one reads zeros (the limit of a sample far outside; the reference's grid_sample gives NaN); every other query
    is the reference's."""
    value, shapes, locations, weights = make_inputs(*CASES[0], dtype=torch.float32)
    locations[0, 0, 0, 0, 0, 0] = float("nan")
    locations[0, 1, 0, 0, 0] = float("inf")
    locations[0, 2, 0, 1, 0, 1] = -float("inf")
    out, expected = msda_lean(value, shapes, locations, weights), reference(value, shapes, locations, weights)
    assert out[0, 0, :12].isnan().all() and expected[0, 0, :12].isnan().all()
    assert out[0, 1:3].isfinite().all()
    finite = torch.ones(out.shape[:2], dtype=torch.bool)
    finite[0, :3] = False
    torch.testing.assert_close(out[finite], expected[finite], atol=1e-5, rtol=1e-5)
    weights[0, 1, 0, 0, 0] = 0.0  # the infinite sample weighted 0: that query is exactly the reference's
    weights[0, 2, 0, 1, 0] = 0.0
    locations[0, 1:3] = locations[0, 1:3].nan_to_num(posinf=0.5, neginf=0.5)
    torch.testing.assert_close(msda_lean(value, shapes, locations, weights)[0, 1:3], out[0, 1:3], atol=1e-6, rtol=0)


def test_msda_lean_keeps_no_stack_of_samples(peak_bytes, monkeypatch) -> None:
    """The reference holds every level's [B·nH, D, Q, P] samples at once (three times); the lean path the output
    and one chunk of corners within the output's size (the 16 MiB floor lifted to see the bound at this size)."""
    monkeypatch.setattr(lean, "MIN_CHUNK_BYTES", 0)
    value, shapes, locations, weights = make_inputs([(16, 16), (8, 8)], 1, 4, 16, 4, 320, dtype=torch.float32)
    output_bytes = 320 * 4 * 16 * 4
    assert peak_bytes(lambda: msda_lean(value, shapes, locations, weights)) < 2.5 * output_bytes  # out + a chunk
    assert peak_bytes(lambda: reference(value, shapes, locations, weights)) > 8 * output_bytes


def test_msda_public_op_under_autocast_runs_the_reference() -> None:
    """Autocast decides grid_sample's dtype op by op; the lean path leaves those cases to the reference."""
    value, shapes, locations, weights = make_inputs(*CASES[0], dtype=torch.float32)
    with use_backend("torch"), torch.autocast("cpu", dtype=torch.bfloat16):
        out = ms_deform_attn(value, shapes, None, locations, weights)
        expected = reference(value, shapes, locations, weights)
    assert out.dtype == expected.dtype
    torch.testing.assert_close(out, expected)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_gpu_matches_reference(dtype: torch.dtype, check_backends) -> None:
    shapes = [(64, 128), (32, 64), (16, 32)]
    inputs = [x.cuda() for x in make_inputs(shapes, 2, 8, 32, 4, 64 * 128 + 32 * 64 + 16 * 32, dtype=dtype)]
    check_backends(op, inputs, reference=reference, scale_tolerance=4.0)


@pytest.mark.gpu
def test_gpu_opcheck() -> None:
    from vltk_kernels.ms_deform_attn.triton import ms_deform_attn_fwd

    value, shapes, locations, weights = (x.cuda() for x in make_inputs(*CASES[0], dtype=torch.float32))
    args = (value.requires_grad_(), shapes, locations.requires_grad_(), weights.requires_grad_())
    torch.library.opcheck(ms_deform_attn_fwd, args)


@pytest.mark.gpu
def test_gpu_compile_fullgraph() -> None:
    value, shapes, locations, weights = (x.cuda() for x in make_inputs(*CASES[0], dtype=torch.float32))
    value.requires_grad_()
    compiled = torch.compile(op, fullgraph=True)
    with use_backend("triton"):
        out = compiled(value, shapes, locations, weights)
        out.sum().backward()
    with use_backend("torch"):
        expected = op(value.detach(), shapes, locations, weights)
    torch.testing.assert_close(out, expected, atol=1e-4, rtol=1e-4)
    assert value.grad is not None


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_gpu_lean_matches_reference(dtype: torch.dtype, check_lean) -> None:
    """The lean path is what a GPU falls back to (e.g. with VLTK_KERNEL_BACKEND=torch)."""
    inputs = [x.cuda() for x in make_inputs([(32, 64), (16, 32)], 2, 8, 32, 4, 2560, dtype=torch.float32)]
    rounded = [x.to(dtype) if x.is_floating_point() else x for x in inputs]
    # against the reference in the same dtype: both round the grid (2·loc - 1) alike, 1/8 pixel in bf16
    tolerance = {torch.float32: 1e-4, torch.float16: 2e-2, torch.bfloat16: 1e-1}[dtype]
    with torch.no_grad():
        out, expected = msda_lean(*rounded), reference(*rounded)
    torch.testing.assert_close(out.float(), expected.float(), atol=tolerance, rtol=tolerance)
    check_lean(msda_lean, reference, inputs)
