"""backbones/dinov2"""
