"""Shared helpers for the ``triton.py`` modules (imports Triton: never import this from a public module).

Interpreter facts these helpers encode (see ARCHITECTURE §6): the mode is fixed when ``@triton.jit`` runs;
autotuning with several configs needs a GPU benchmarker; bf16 arithmetic is wrong in the interpreter (loads,
stores and casts are right), so kernels upcast to fp32 right after loading when ``INTERPRET`` is set.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import triton

from vltk_kernels._dispatch import note_kernels_imported

#: Interpreter mode of every kernel defined after this import.
INTERPRET: bool = note_kernels_imported()


def next_pow2(value: int, minimum: int = 16) -> int:
    """Smallest power of two >= value (and >= ``minimum``: ``tl.dot`` needs 16 on GPUs)."""
    return max(minimum, triton.next_power_of_2(max(1, int(value))))


def dot_precision(dtype: torch.dtype) -> str:
    """``tl.dot`` input precision that matches what ``torch.matmul`` does for ``dtype`` right now.

    fp32 matmuls in torch use TF32 only when the user allowed it (``torch.set_float32_matmul_precision``), so the
    kernels follow the same switch instead of silently being less precise than the reference.
    """
    if INTERPRET or dtype != torch.float32:
        return "ieee"
    return "ieee" if torch.get_float32_matmul_precision() == "highest" else "tf32"


def tuned(kernel: triton.JITFunction, gpu_configs: Sequence[triton.Config], key: list[str], **kwargs: Any) -> Any:
    """The kernel autotuned over ``gpu_configs`` on a GPU; the bare kernel when interpreting.

    The interpreter has no benchmarker, and its cost is per program instance and per operation (not per
    element), so there the launcher passes tiles sized to the problem instead (see :func:`interpreter_tile`).
    """
    if INTERPRET:
        return kernel
    return triton.autotune(configs=list(gpu_configs), key=key, **kwargs)(kernel)


def interpreter_tile(extent: int, cap: int) -> int:
    """A tile covering ``extent`` in one program where possible (up to ``cap``): few, large programs."""
    return min(cap, next_pow2(extent))


def check_launchable(*tensors: torch.Tensor) -> None:
    """Fail early (not inside the driver) when tensors sit where these kernels cannot run."""
    for tensor in tensors:
        if INTERPRET and tensor.device.type != "cpu":
            raise RuntimeError("vltk_kernels' Triton kernels were loaded in interpreter mode and need CPU tensors")
        if not INTERPRET and tensor.device.type != "cuda":
            raise RuntimeError("vltk_kernels' Triton kernels need CUDA tensors (or TRITON_INTERPRET=1 for CPU)")
