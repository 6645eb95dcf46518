"""Fused ops used by vltk components (Triton kernels with pure-PyTorch references).

Each op lives in its own folder with ``reference.py`` (the specification) and ``triton.py`` (the kernels);
the public function in the folder's ``__init__`` is what components call.
"""

from vltk_kernels.ms_deform_attn import ms_deform_attn
from vltk_kernels.pixel_text_similarity import pixel_text_similarity
from vltk_kernels.rein_attention import rein_attention

__all__ = ["ms_deform_attn", "pixel_text_similarity", "rein_attention"]
