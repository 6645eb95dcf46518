"""backbones/open_clip_vit"""
