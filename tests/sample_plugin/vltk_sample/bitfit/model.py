"""BitFit: only bias terms of the backbone train (Ben Zaken et al., 2022)."""

from __future__ import annotations

from torch import nn

from vltk.api import Adapter, Backbone, BuildContext
from vltk_sample.bitfit.options import BitFitOptions


class BitFitAdapter(Adapter):
    """Freezes every backbone weight except biases (and optionally norm weights)."""

    freezes_backbone = False

    def __init__(self, train_norms: bool = False) -> None:
        super().__init__()
        self.train_norms = train_norms

    def setup(self, backbone: Backbone) -> None:
        norm_ids = {
            id(p)
            for module in backbone.modules()
            if isinstance(module, (nn.LayerNorm, nn.GroupNorm))
            for p in module.parameters(recurse=False)
        }
        for name, parameter in backbone.named_parameters():
            trainable = name.endswith(".bias") or (self.train_norms and id(parameter) in norm_ids)
            parameter.requires_grad_(trainable)


def build_bitfit(options: BitFitOptions, context: BuildContext) -> BitFitAdapter:
    """Factory registered as adapter ``bitfit``; BitFit needs no backbone facts, so ``context`` goes unused."""
    return BitFitAdapter(train_norms=options.train_norms)
