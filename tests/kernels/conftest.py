"""Shared check for the kernel tests: run an op on the Triton backend, forward and backward, and compare it with
the op's reference evaluated in fp32 on the same (rounded) inputs. The lean PyTorch paths (the ``torch`` backend)
are compared with the references in ``test_lean.py``."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pytest
import torch

from vltk_kernels import use_backend
from vltk_kernels.benchmarking import PeakTracker

#: Tolerances against the fp32 reference: fp16 kernels keep fp16 operands for tl.dot on GPUs (fp32 accumulate).
TOLERANCES = {torch.float32: (2e-5, 2e-4), torch.float16: (2e-2, 2e-2), torch.bfloat16: (8e-2, 5e-2)}


def _forward_backward(
    fn: Callable[..., torch.Tensor], inputs: Sequence[torch.Tensor], grad: torch.Tensor | None
) -> tuple[torch.Tensor, list[torch.Tensor | None]]:
    leaves = [x.detach().clone().requires_grad_(x.is_floating_point()) for x in inputs]
    out = fn(*leaves)
    if grad is None:
        return out.detach(), []
    differentiable = [x for x in leaves if x.requires_grad]
    grads = torch.autograd.grad(out, differentiable, grad.to(out.dtype))
    return out.detach(), list(grads)


def compare_backends(
    fn: Callable[..., torch.Tensor],
    inputs: Sequence[torch.Tensor],
    *,
    reference: Callable[..., torch.Tensor],
    backward: bool = True,
    scale_tolerance: float = 1.0,
    seed: int = 0,
) -> None:
    """``fn(*inputs)`` with backend triton vs ``reference`` (the op's ``reference.py``, not the ``torch`` backend,
    which is the lean path) in fp32: the forward output and every float input's grad."""
    dtype = next(x.dtype for x in inputs if x.is_floating_point())
    upcast = [x.float() if x.is_floating_point() else x for x in inputs]
    expected_out = reference(*upcast)
    grad = torch.randn(expected_out.shape, generator=torch.Generator().manual_seed(seed)) if backward else None
    if grad is not None:
        grad = grad.to(expected_out.device)
    expected, expected_grads = _forward_backward(reference, upcast, grad)
    with use_backend("triton"):
        actual, actual_grads = _forward_backward(fn, inputs, grad)
    atol, rtol = (t * scale_tolerance for t in TOLERANCES[dtype])
    assert actual.dtype == dtype
    torch.testing.assert_close(actual.float(), expected, atol=atol, rtol=rtol, msg=lambda m: f"forward: {m}")
    for index, (got, want) in enumerate(zip(actual_grads, expected_grads, strict=True)):
        assert got.dtype == dtype and got.shape == want.shape
        torch.testing.assert_close(got.float(), want, atol=atol, rtol=rtol, msg=lambda m, i=index: f"grad {i}: {m}")


@pytest.fixture
def check_backends() -> Callable[..., None]:
    return compare_backends


LEAN_TOLERANCES = {torch.float64: (1e-10, 1e-10), torch.float32: (2e-5, 2e-5), torch.float16: (2e-2, 2e-2)}


def compare_lean(
    lean: Callable[..., torch.Tensor],
    reference: Callable[..., torch.Tensor],
    inputs: Sequence[torch.Tensor],
    *,
    reference_dtype: torch.dtype | None = None,
    grad_mask: Sequence[bool] | None = None,
) -> None:
    """Output and every input gradient of ``lean`` equal ``reference``'s (run in ``reference_dtype``, default the
    inputs' own dtype); ``grad_mask`` leaves some floating inputs without ``requires_grad``."""
    floating = [x for x in inputs if x.is_floating_point()]
    mask = list(grad_mask) if grad_mask is not None else [True] * len(floating)
    dtype = floating[0].dtype
    target = reference_dtype or dtype

    def leaves(cast: torch.dtype | None) -> list[torch.Tensor]:
        flags = iter(mask)
        return [
            x.detach().to(cast or x.dtype).clone().requires_grad_(next(flags)) if x.is_floating_point() else x
            for x in inputs
        ]

    mine, theirs = leaves(None), leaves(target)
    out, expected = lean(*mine), reference(*theirs)
    assert out.dtype == dtype and out.shape == expected.shape
    atol, rtol = LEAN_TOLERANCES[dtype]
    torch.testing.assert_close(out.to(target), expected, atol=atol, rtol=rtol, msg=lambda m: f"forward: {m}")
    grad = torch.randn(expected.shape, generator=torch.Generator().manual_seed(1), dtype=target).to(expected.device)
    wanted = [x for x in mine if isinstance(x, torch.Tensor) and x.requires_grad]
    got = torch.autograd.grad(out, wanted, grad.to(dtype))
    want = torch.autograd.grad(expected, [x for x in theirs if isinstance(x, torch.Tensor) and x.requires_grad], grad)
    for index, (g, w) in enumerate(zip(got, want, strict=True)):
        assert g.dtype == dtype and g.shape == w.shape
        torch.testing.assert_close(g.to(target), w, atol=atol, rtol=rtol, msg=lambda m, i=index: f"grad {i}: {m}")


def no_grad_peak_bytes(fn: Callable[[], torch.Tensor]) -> int:
    """Peak bytes of the tensors created by a no-grad call (inputs excluded)."""
    tracker = PeakTracker()
    with tracker, torch.no_grad():
        out = fn()
    del out
    return tracker.peak


@pytest.fixture
def check_lean() -> Callable[..., None]:
    return compare_lean


@pytest.fixture
def peak_bytes() -> Callable[[Callable[[], torch.Tensor]], int]:
    return no_grad_peak_bytes
