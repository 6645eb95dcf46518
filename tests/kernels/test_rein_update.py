"""rein_update: one Rein layer. The lean path (regrouped low-rank products in one autograd function) and the Triton
composition against the reference (upstream's order), outputs and every gradient; the dispatch's fallbacks."""

from __future__ import annotations

import pytest
import torch

from vltk_kernels import rein_update, use_backend
from vltk_kernels.rein_attention import rein_update_lean, rein_update_reference

# (B, T, C, M, r): T counts the cls row; M = 100 is Rein's token count; M = 2 the smallest legal one.
SHAPES = [(2, 38, 48, 11, 4), (1, 65, 40, 100, 16), (3, 6, 20, 2, 3)]


def make_inputs(
    batch: int, length: int, channels: int, tokens: int, rank: int, dtype: torch.dtype, seed: int = 0
) -> list[torch.Tensor]:
    """x, tokens_a, tokens_b, value weight and bias, delta weight and bias, gate; sizes as Rein's init gives."""
    generator = torch.Generator().manual_seed(seed)

    def rand(*shape: int, std: float = 1.0) -> torch.Tensor:
        return torch.randn(*shape, generator=generator) * std

    width = channels**-0.5
    tensors = [
        rand(batch, length, channels),
        rand(tokens, rank, std=0.5),
        rand(rank, channels, std=0.5),
        rand(channels, channels, std=width),
        rand(channels, std=width),
        rand(channels, channels, std=width),
        rand(channels, std=width),
        torch.tensor(0.4),
    ]
    return [t.to(dtype) for t in tensors]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("skip_first", [True, False], ids=["cls", "no-cls"])
def test_lean_matches_reference(shape: tuple, skip_first: bool, check_lean) -> None:
    scale = shape[2] ** -0.5
    check_lean(
        lambda *t: rein_update_lean(*t, scale, skip_first),
        lambda *t: rein_update_reference(*t, scale, skip_first),
        make_inputs(*shape, torch.float32),
    )


@pytest.mark.parametrize("skip_first", [True, False], ids=["cls", "no-cls"])
def test_lean_gradcheck_float64(skip_first: bool) -> None:
    inputs = tuple(t.requires_grad_() for t in make_inputs(2, 5, 6, 4, 3, torch.float64, seed=1))
    assert torch.autograd.gradcheck(lambda *t: rein_update_lean(*t, 0.6, skip_first), inputs)
    # a constant gate (zero_mlp_delta_f: the float 1.0) has no gradient of its own
    assert torch.autograd.gradcheck(lambda *t: rein_update_lean(*t, 1.0, 0.6, skip_first), inputs[:7])


def test_lean_partial_gradients(check_lean) -> None:
    """The first layer's input needs no gradient; a frozen gate or frozen tokens neither."""
    inputs = make_inputs(2, 20, 24, 7, 4, torch.float32, seed=2)
    for mask in ([False, *[True] * 7], [True, True, True, False, False, True, True, False], [True] + [False] * 7):
        check_lean(
            lambda *t: rein_update_lean(*t, 0.3),
            lambda *t: rein_update_reference(*t, 0.3),
            inputs,
            grad_mask=mask,
        )


def test_cls_row_passes_through_and_gets_the_incoming_gradient() -> None:
    inputs = [t.requires_grad_() for t in make_inputs(2, 9, 16, 5, 4, torch.float32)]
    out = rein_update_lean(*inputs, 0.25)
    assert torch.equal(out[:, 0], inputs[0][:, 0])
    grad = torch.randn(out.shape)
    (grad_x,) = torch.autograd.grad(out, inputs[0], grad)
    assert torch.equal(grad_x[:, 0], grad[:, 0])


def test_dispatch_runs_the_lean_path_and_falls_back() -> None:
    inputs = make_inputs(2, 9, 16, 5, 4, torch.float32)
    expected = rein_update_reference(*inputs, 0.25)
    with use_backend("torch"):
        torch.testing.assert_close(rein_update(*inputs, 0.25), expected, atol=2e-6, rtol=2e-6)
        gate_off = (*inputs[:7], 1.0, 0.25)  # zero_mlp_delta_f: a constant gate
        torch.testing.assert_close(rein_update(*gate_off), rein_update_reference(*gate_off), atol=2e-6, rtol=2e-6)
        # bf16 autocast: inputs cast like the products would be, result in bf16, fp32 gradients for fp32 leaves
        leaves = [t.clone().requires_grad_() for t in inputs]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            half = rein_update(*leaves, 0.25)
        half.float().square().sum().backward()
    assert half.dtype == torch.bfloat16
    torch.testing.assert_close(half.float(), expected, atol=0.1, rtol=0.05)
    assert all(t.grad is not None and t.grad.dtype == torch.float32 and t.grad.isfinite().all() for t in leaves)


def test_triton_composition_matches_reference(check_backends) -> None:
    """With the Triton backend the update is the reference composition around the (interpreted) attention kernel."""
    scale = 40**-0.5
    check_backends(
        lambda *t: rein_update(*t, scale),
        make_inputs(1, 65, 40, 100, 16, torch.float32),
        reference=lambda *t: rein_update_reference(*t, scale),
    )


def test_shape_errors_name_the_shapes() -> None:
    inputs = make_inputs(1, 5, 8, 4, 2, torch.float32)
    with pytest.raises(ValueError, match=r"tokens_b \[r,C\]"):
        rein_update(inputs[0], inputs[1], inputs[2][:, :4], *inputs[3:], 0.5)
    with pytest.raises(ValueError, match="M >= 2"):
        rein_update(inputs[0], inputs[1][:1], *inputs[2:], 0.5)
