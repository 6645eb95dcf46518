"""Fused ops used by vltk components (Triton kernels with pure-PyTorch references).

Each op lives in its own folder with ``reference.py`` (the readable specification), ``lean.py`` (the PyTorch path
the ``torch`` backend runs: same results and gradients, without the reference's full-size temporaries) and
``triton.py`` (the kernels, imported only when they run); the public function in the folder's ``__init__`` is what
components call. It picks the backend per call: ``VLTK_KERNEL_BACKEND=auto|triton|torch`` or
``with use_backend("torch"): ...`` (see :mod:`vltk_kernels._dispatch`). Deliberate errors are
:mod:`vltk_kernels.errors` types; the package imports nothing from vltk, so it works installed alone.
Benchmark cases sit beside each op (``<op>/bench.py``) and run through :mod:`vltk_kernels.benchmarking`.
"""

from vltk_kernels._dispatch import BACKENDS, use_backend
from vltk_kernels.errors import KernelBackendError, KernelError
from vltk_kernels.ms_deform_attn import ms_deform_attn
from vltk_kernels.pixel_text_similarity import pixel_text_similarity
from vltk_kernels.rein_attention import rein_attention, rein_update

__all__ = [
    "BACKENDS",
    "KernelBackendError",
    "KernelError",
    "ms_deform_attn",
    "pixel_text_similarity",
    "rein_attention",
    "rein_update",
    "use_backend",
]
