"""Paper-agnostic model glue (imports torch; not imported by ``import vltk``)."""

from vltk.models.segmentor import DensePredictor

__all__ = ["DensePredictor"]
