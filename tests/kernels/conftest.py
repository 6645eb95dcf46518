"""Shared check for the kernel tests: run an op on the Triton and the torch backend, forward and backward, and
compare both against the reference evaluated in fp32 on the same (rounded) inputs."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pytest
import torch

from vltk_kernels import use_backend

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
    backward: bool = True,
    scale_tolerance: float = 1.0,
    seed: int = 0,
) -> None:
    """``fn(*inputs)`` with backend triton vs the fp32 reference (forward output and every float input's grad)."""
    dtype = next(x.dtype for x in inputs if x.is_floating_point())
    upcast = [x.float() if x.is_floating_point() else x for x in inputs]
    with use_backend("torch"):
        expected_out = fn(*upcast)
    grad = torch.randn(expected_out.shape, generator=torch.Generator().manual_seed(seed)) if backward else None
    if grad is not None:
        grad = grad.to(expected_out.device)
    with use_backend("torch"):
        expected, expected_grads = _forward_backward(fn, upcast, grad)
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
