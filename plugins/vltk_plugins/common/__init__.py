"""Building blocks several components share, as public documented modules (no imports here: each is opt-in).

``vit`` (the ViT block-hook template and pyramid), ``vit_options`` (torch-free option pieces of the ViT
backbones), ``attention`` (the ``attention`` kernel switch), ``clip_text`` (the CLIP text side of the CLIP
backbones) and ``weights`` (loading and converting local checkpoints).
"""
