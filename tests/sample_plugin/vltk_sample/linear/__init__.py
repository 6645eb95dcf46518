"""Decoder ``linear``: one 1x1 conv on one pyramid level, the head of linear-probe evaluations."""
