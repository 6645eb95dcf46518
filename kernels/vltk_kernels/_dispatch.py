"""Backend choice for every vltk_kernels op: ``auto | triton | torch``.

One place decides, so all ops behave alike:

- the requested backend comes from :func:`use_backend` (innermost wins), else ``VLTK_KERNEL_BACKEND``, else
  ``auto``;
- ``auto`` runs Triton when it can actually launch on the inputs' device — CUDA with a working Triton driver,
  or CPU tensors while Triton runs in interpreter mode (``TRITON_INTERPRET=1``) — and the op supports the
  inputs (dtype, sizes); otherwise the op's PyTorch path;
- ``triton`` forced where it cannot run raises :class:`KernelBackendError` saying why and what to do, instead of
  a driver error from deep inside Triton;
- ``torch`` always runs the PyTorch path: each op's memory-lean implementation (``<op>/lean.py``), tested
  against the readable reference (``<op>/reference.py``), which stays the specification.

Why availability is more than ``import triton``: Triton imports fine on a machine without a GPU and only fails
at the first launch ("0 active drivers"); and interpreter mode is fixed when a ``@triton.jit`` function is
defined, so what counts is the mode our kernel modules were imported under, not the environment variable now.
Nothing here imports Triton at module import time (``import vltk_kernels`` stays cheap).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Literal

import torch

from vltk_kernels.errors import KernelBackendError

ENV_VAR = "VLTK_KERNEL_BACKEND"
BACKENDS = ("auto", "triton", "torch")
#: dtypes the Triton kernels are written for (fp32 accumulation inside); anything else goes to the PyTorch path.
TRITON_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

Backend = Literal["auto", "triton", "torch"]

# A plain module-level stack (not a ContextVar) so torch.compile can trace the public ops without a graph break.
_OVERRIDES: list[str] = []
# Interpreter mode our Triton modules were compiled under; None until the first of them is imported.
_KERNELS_INTERPRETED: bool | None = None
_TRITON_IMPORT_ERROR: list[str | None] = []
_CUDA_LAUNCH_ERROR: list[str | None] = []


def compiling() -> bool:
    """Whether ``torch.compile`` is tracing the caller: the ``torch`` backend then runs each op's reference, which
    the compiler fuses and plans memory for itself (the lean paths write chunks in place, which does not trace)."""
    return bool(torch.compiler.is_compiling())


def _check_name(name: str, source: str) -> str:
    value = name.strip().lower()
    if value not in BACKENDS:
        raise KernelBackendError(f"unknown kernel backend {name!r} from {source}; choose one of {', '.join(BACKENDS)}")
    return value


@contextmanager
def use_backend(name: Backend) -> Iterator[None]:
    """Run the ops inside the block with backend ``name`` (overrides ``VLTK_KERNEL_BACKEND``).

    >>> with use_backend("torch"):          # e.g. compare against the PyTorch path
    ...     y = rein_attention(f, t, v, s)
    """
    _OVERRIDES.append(_check_name(name, "use_backend()"))
    try:
        yield
    finally:
        _OVERRIDES.pop()


def requested_backend() -> tuple[str, str]:
    """``(backend, where it came from)``: the innermost :func:`use_backend`, else the environment, else auto."""
    if _OVERRIDES:
        return _OVERRIDES[-1], "use_backend()"
    value = os.environ.get(ENV_VAR, "").strip()
    if value:
        return _check_name(value, f"{ENV_VAR}={value}"), f"{ENV_VAR}={value}"
    return "auto", "default"


def _env_interpret() -> bool:
    return os.environ.get("TRITON_INTERPRET", "").strip().lower() in {"1", "true", "yes", "on"}


def interpret_mode() -> bool:
    """Whether our Triton kernels run (or, once imported, will run) in the CPU interpreter."""
    return _KERNELS_INTERPRETED if _KERNELS_INTERPRETED is not None else _env_interpret()


def note_kernels_imported() -> bool:
    """Called by each ``triton.py`` at import: records (and returns) the interpreter mode its kernels got."""
    global _KERNELS_INTERPRETED
    if _KERNELS_INTERPRETED is None:
        import triton

        knob = getattr(getattr(getattr(triton, "knobs", None), "runtime", None), "interpret", None)
        _KERNELS_INTERPRETED = bool(knob) if knob is not None else _env_interpret()
    return _KERNELS_INTERPRETED


def triton_import_error() -> str | None:
    """Why ``import triton`` fails here, or None (cached: it does not change within a process)."""
    if not _TRITON_IMPORT_ERROR:
        try:
            import triton  # noqa: F401
            import triton.language  # noqa: F401

            _TRITON_IMPORT_ERROR.append(None)
        except Exception as error:  # ImportError, or a broken install raising anything
            _TRITON_IMPORT_ERROR.append(f"import triton failed ({type(error).__name__}: {error})")
    return _TRITON_IMPORT_ERROR[0]


def cuda_launch_error() -> str | None:
    """Why a compiled (non-interpreted) Triton kernel cannot launch on CUDA here, or None."""
    if not _CUDA_LAUNCH_ERROR:
        reason: str | None
        if not torch.cuda.is_available():
            reason = "no CUDA device is available"
        elif (reason := triton_import_error()) is None:
            try:
                from triton.runtime import driver

                driver.active.get_current_device()  # raises "0 active drivers" where no backend can launch
            except Exception as error:
                reason = f"Triton has no working GPU driver ({type(error).__name__}: {error})"
        _CUDA_LAUNCH_ERROR.append(reason)
    return _CUDA_LAUNCH_ERROR[0]


def triton_unavailable_reason(device: torch.device) -> str | None:
    """Why Triton kernels cannot run on tensors of ``device``, or None when they can."""
    reason = triton_import_error()
    if reason is not None:
        return reason
    if device.type == "cuda":
        if interpret_mode():
            return (
                "the Triton kernels were loaded in interpreter mode (TRITON_INTERPRET=1), which runs CPU tensors only"
            )
        return cuda_launch_error()
    if device.type == "cpu":
        if interpret_mode():
            return None
        return (
            "the tensors are on the CPU and Triton compiles for GPUs only; set TRITON_INTERPRET=1 before vltk_kernels "
            "runs its first Triton op to use the (slow, testing-only) interpreter, or move the tensors to CUDA"
        )
    return f"tensors on device type '{device.type}' are not supported by the Triton kernels"


def dtype_problem(*tensors: torch.Tensor) -> str | None:
    """A reason the shared dtype rules rule Triton out for these tensors, or None."""
    dtypes = {tensor.dtype for tensor in tensors}
    if len(dtypes) > 1:
        return f"the inputs have different dtypes ({', '.join(sorted(str(d) for d in dtypes))})"
    dtype = next(iter(dtypes))
    if dtype not in TRITON_DTYPES:
        return f"dtype {dtype} is not supported (use float32, float16 or bfloat16)"
    devices = {tensor.device for tensor in tensors}
    if len(devices) > 1:
        return f"the inputs are on different devices ({', '.join(sorted(str(d) for d in devices))})"
    return None


def select_backend(op: str, device: torch.device, problem: str | None = None) -> Literal["triton", "torch"]:
    """The backend ``op`` runs with for inputs on ``device``.

    ``problem`` is the op's own reason it cannot take these inputs (dtype, sizes), or None. ``auto`` quietly
    falls back to the PyTorch path; a forced ``triton`` raises :class:`KernelBackendError` with the reason.
    """
    backend, source = requested_backend()
    if backend == "torch":
        return "torch"
    reason = problem or triton_unavailable_reason(device)
    if reason is None:
        return "triton"
    if backend == "triton":
        raise KernelBackendError(
            f"{op}: the Triton backend was requested ({source}) but cannot run: {reason}. "
            f"Use {ENV_VAR}=auto (falls back to the PyTorch path) or {ENV_VAR}=torch"
        )
    return "torch"


def autocast_inputs(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Cast to the autocast dtype when autocast is on for the inputs' device, as matmul would be.

    Custom ops are invisible to autocast, so without this a half-precision run would hand the Triton path fp32
    tokens next to fp16 features.
    """
    device_type = tensors[0].device.type
    if device_type in ("cuda", "cpu") and torch.is_autocast_enabled(device_type):
        dtype = torch.get_autocast_dtype(device_type)
        return tuple(tensor.to(dtype) for tensor in tensors)
    return tensors


def autocast_off(device: torch.device) -> AbstractContextManager:
    """Autocast disabled on ``device`` for the body of a lean path whose inputs :func:`autocast_inputs` already
    cast: inside a custom autograd function autocast would otherwise recast single ops and mix dtypes."""
    if device.type in ("cuda", "cpu"):
        return torch.autocast(device.type, enabled=False)
    return nullcontext()


__all__ = [
    "BACKENDS",
    "ENV_VAR",
    "KernelBackendError",
    "autocast_inputs",
    "autocast_off",
    "dtype_problem",
    "interpret_mode",
    "requested_backend",
    "select_backend",
    "triton_unavailable_reason",
    "use_backend",
]
