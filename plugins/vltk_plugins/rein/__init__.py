"""Rein (Wei et al., CVPR 2024): learnable tokens that refine every block of a frozen ViT, linked to decoder queries."""
