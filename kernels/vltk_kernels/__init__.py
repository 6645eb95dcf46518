"""Fused ops used by vltk components (Triton kernels with pure-PyTorch references).

Each op lives in its own folder with ``reference.py`` (the specification) and, once written, ``triton.py``.
The Rein token attention reference is here from the start so the Rein adapter already calls the op it will
dispatch through; the Triton kernels arrive with the Kernels issue.
"""

from vltk_kernels.rein_attention import rein_attention

__all__ = ["rein_attention"]
