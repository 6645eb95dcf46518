"""Test-wide setup: Triton in interpreter mode (must precede any kernel import), references for model tests,
and the ``gpu`` marker."""

from __future__ import annotations

import os

os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Model-level tests run the pure-PyTorch references: under the interpreter every fused op costs seconds, and the
# kernels are compared with the references in tests/kernels (which force the triton backend explicitly).
os.environ.setdefault("VLTK_KERNEL_BACKEND", "torch")

import pytest  # noqa: E402


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:  # pragma: no cover - torch is a hard dependency
        has_cuda = False
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords and not has_cuda:
            item.add_marker(skip_gpu)
