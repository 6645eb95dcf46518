"""Mask2Former (Cheng et al., CVPR 2022) for semantic segmentation, in plain PyTorch, with Rein's query link.

``pixel_decoder`` (deformable-attention encoder + FPN step), ``transformer_decoder`` (masked-attention layers),
``criterion`` (semantic targets, Hungarian matching, point-sampled losses) and ``head`` (the ``Decoder`` and its
factory ``build_mask2former``).
"""

from vltk_plugins.generic.mask2former.head import Mask2Former, Mask2FormerConfigError, build_mask2former

__all__ = ["Mask2Former", "Mask2FormerConfigError", "build_mask2former"]
