"""Mask2Former (Cheng et al., CVPR 2022) for semantic segmentation, in plain PyTorch, with Rein's query link.

``options`` (the light options model), ``pixel_decoder`` (deformable-attention encoder + FPN step),
``transformer_decoder`` (masked-attention layers), ``criterion`` (semantic targets, Hungarian matching,
point-sampled losses) and ``head`` (the ``Decoder`` and its factory ``build_mask2former``). This file imports
nothing, so the entry point can import ``options`` without torch.
"""
