"""Backend dispatch shared by every op: env var, context manager, auto fallback, clear errors when forced."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from vltk_kernels import KernelBackendError, KernelError, pixel_text_similarity, rein_attention, use_backend
from vltk_kernels import _dispatch as dispatch


def rein_inputs(dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return (
        torch.randn(2, 5, 8, generator=generator, dtype=dtype),
        torch.randn(4, 8, generator=generator, dtype=dtype),
        torch.randn(3, 8, generator=generator, dtype=dtype),
    )


@pytest.fixture
def triton_forbidden(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make any Triton launch fail loudly, so a test can prove the reference ran."""
    from vltk_kernels.pixel_text_similarity import triton as pts_triton
    from vltk_kernels.rein_attention import triton as rein_triton

    def boom(*args: object, **kwargs: object) -> None:
        raise AssertionError("the Triton path ran")

    monkeypatch.setattr(rein_triton, "rein_attention_triton", boom)
    monkeypatch.setattr(pts_triton, "pixel_text_similarity_triton", boom)


@pytest.fixture
def no_interpreter(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pretend the kernels were loaded without TRITON_INTERPRET (as on a CPU machine outside the tests)."""
    monkeypatch.setattr(dispatch, "_KERNELS_INTERPRETED", False)


def test_default_is_auto_and_env_var_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(dispatch.ENV_VAR, raising=False)
    assert dispatch.requested_backend() == ("auto", "default")
    monkeypatch.setenv(dispatch.ENV_VAR, " Torch ")
    assert dispatch.requested_backend()[0] == "torch"


def test_context_manager_nests_and_beats_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(dispatch.ENV_VAR, "torch")
    with use_backend("triton"):
        with use_backend("auto"):
            assert dispatch.requested_backend() == ("auto", "use_backend()")
        assert dispatch.requested_backend()[0] == "triton"
    assert dispatch.requested_backend()[0] == "torch"


def test_unknown_backend_names_the_choices(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(KernelBackendError, match="choose one of auto, triton, torch"):
        with use_backend("cuda"):  # type: ignore[arg-type]
            pass
    monkeypatch.setenv(dispatch.ENV_VAR, "tritonn")
    with pytest.raises(KernelBackendError, match="VLTK_KERNEL_BACKEND=tritonn"):
        rein_attention(*rein_inputs(), 0.5)


def test_backend_error_is_the_kernels_own_type() -> None:
    """vltk_kernels owns its errors (it imports nothing from vltk): a KernelError and a ValueError, never a vltk
    UserError. The vltk CLI learns the type from the kernels plugin's ``vltk_user_error_types`` hook instead
    (tests/plugins/kernels/test_kernel_errors.py)."""
    assert issubclass(KernelBackendError, KernelError) and issubclass(KernelBackendError, ValueError)
    assert KernelBackendError.__module__ == "vltk_kernels.errors"
    assert all(base.__module__.split(".")[0] != "vltk" for base in KernelBackendError.__mro__)


def test_torch_backend_never_touches_triton(triton_forbidden: None) -> None:
    with use_backend("torch"):
        rein_attention(*rein_inputs(), 0.5)
        pixel_text_similarity(torch.randn(1, 8, 3, 3), torch.randn(2, 8))


def test_auto_on_cpu_without_interpreter_uses_reference(no_interpreter: None, triton_forbidden: None) -> None:
    with use_backend("auto"):
        out = rein_attention(*rein_inputs(), 0.5)
        pixel_text_similarity(torch.randn(1, 8, 3, 3), torch.randn(2, 8))
    assert out.shape == (2, 5, 8)


def test_forced_triton_on_cpu_without_interpreter_says_what_to_do(no_interpreter: None) -> None:
    with use_backend("triton"), pytest.raises(KernelBackendError) as info:
        rein_attention(*rein_inputs(), 0.5)
    message = str(info.value)
    assert "rein_attention" in message and "use_backend()" in message
    assert "TRITON_INTERPRET=1" in message and "VLTK_KERNEL_BACKEND=auto" in message


def test_triton_that_does_not_import_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dispatch, "_TRITON_IMPORT_ERROR", ["import triton failed (ImportError: nope)"])
    assert dispatch.select_backend("op", torch.device("cpu")) == "torch"
    with use_backend("triton"), pytest.raises(KernelBackendError, match="import triton failed"):
        dispatch.select_backend("op", torch.device("cpu"))


def test_cuda_needs_a_launchable_driver_not_just_an_import() -> None:
    if torch.cuda.is_available():
        pytest.skip("only meaningful without a GPU")
    assert dispatch.triton_import_error() is None  # triton imports on this machine...
    dispatch._KERNELS_INTERPRETED, saved = False, dispatch._KERNELS_INTERPRETED
    try:  # ...but nothing can launch on CUDA
        assert "no CUDA device" in (dispatch.triton_unavailable_reason(torch.device("cuda")) or "")
    finally:
        dispatch._KERNELS_INTERPRETED = saved


def test_unsupported_dtype_falls_back_under_auto_and_fails_when_forced(triton_forbidden: None) -> None:
    inputs = rein_inputs(torch.float64)
    rein_attention(*inputs, 0.5)  # auto: the reference (float64 is the gradcheck dtype)
    with use_backend("triton"), pytest.raises(KernelBackendError, match="float64 is not supported"):
        rein_attention(*inputs, 0.5)
    mixed = (inputs[0].float(), inputs[1], inputs[2])
    with use_backend("triton"), pytest.raises(KernelBackendError, match="different dtypes"):
        rein_attention(*mixed, 0.5)


def test_real_cpu_process_without_interpreter() -> None:
    """End to end in a fresh process (no TRITON_INTERPRET): auto gives the reference without importing the
    kernel modules; forcing Triton fails with the clear error, not a driver traceback."""
    script = textwrap.dedent(
        """
        import sys, torch
        from vltk_kernels import rein_attention, use_backend, KernelBackendError
        from vltk_kernels.rein_attention import rein_attention_reference
        f, t, v = torch.randn(2, 5, 8), torch.randn(4, 8), torch.randn(3, 8)
        assert torch.equal(rein_attention(f, t, v, 0.5), rein_attention_reference(f, t, v, 0.5))
        assert "vltk_kernels.rein_attention.triton" not in sys.modules
        try:
            with use_backend("triton"):
                rein_attention(f, t, v, 0.5)
        except KernelBackendError as error:
            print("ERROR:", error)
        """
    )
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "VLTK_KERNEL_BACKEND")}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "ERROR: rein_attention: the Triton backend was requested" in result.stdout
    assert "TRITON_INTERPRET=1" in result.stdout


def test_autocast_casts_inputs_for_the_kernel() -> None:
    """Custom ops are invisible to autocast; the public op casts like matmul would (here CPU bf16)."""
    feats, tokens, values = rein_inputs()
    with torch.autocast("cpu", dtype=torch.bfloat16), use_backend("triton"):
        fused = rein_attention(feats, tokens, values, 0.5)
    assert fused.dtype == torch.bfloat16
    expected = rein_attention(*(x.bfloat16().float() for x in (feats, tokens, values)), 0.5)
    torch.testing.assert_close(fused.float(), expected, atol=3e-2, rtol=3e-2)
