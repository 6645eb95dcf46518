"""When a memory-lean autograd function (one that recomputes in its backward what autograd would keep) may
replace the plain modules: the shared rule of ``common/lean_mlp.py`` and ``decoders/mask2former/lean.py``."""

from __future__ import annotations

import torch
from torch import Tensor


def lean_applies(x: Tensor) -> bool:
    """True when a backward can follow (grad enabled), no autocast re-types the ops one by one (the lean function
    could not match it exactly) and ``torch.compile`` is not tracing (the compiler decides what to keep)."""
    if not torch.is_grad_enabled() or torch.compiler.is_compiling():
        return False
    device_type = x.device.type
    return not (device_type in ("cpu", "cuda") and torch.is_autocast_enabled(device_type))


__all__ = ["lean_applies"]
