"""Loading local weights into the backbones: the files researchers have, in whatever layout they come.

Every backbone takes ``pretrained=<local file>`` or ``pretrained=null`` (nothing is ever downloaded). The file may
be an open_clip or timm state dict, an official release (BAAI's EVA02 and EVA02-CLIP, OpenAI's CLIP TorchScript
archives, Meta's DINOv2), a converted file from a paper's repository (Rein's ``eva02_L_converted.pth`` and
``dinov2_converted.pth``) or an mmseg checkpoint with the backbone under ``backbone.``; run at another patch size
or grid, its patch kernel and position grid are converted. The steps, one module each:

* :mod:`~vltk_plugins.common.weights.read`: the file -> a flat state dict (containers, wrappers, prefixes);
* :mod:`~vltk_plugins.common.weights.formats`: which layout it is, and its keys renamed onto open_clip's/timm's;
* :mod:`~vltk_plugins.common.weights.resample`: patch kernel and position grid, ``rein`` or ``flexi``;
* :mod:`~vltk_plugins.common.weights.load`: the backbone's :class:`WeightSpec`, the checks (every problem one
  :class:`~vltk.api.UserError` naming the file and what to change), the load and the random-weights warning.
"""

from __future__ import annotations

from vltk_plugins.common.weights.formats import FORMATS, WeightFormat, detect_format, formats_for
from vltk_plugins.common.weights.load import (
    TEXT_TOWER,
    OptionalPart,
    PreparedWeights,
    WeightSpec,
    check_fit,
    load_pretrained,
    load_pretrained_or_warn,
    prepare_checkpoint,
    prepare_weights,
    warn_random,
)
from vltk_plugins.common.weights.read import Checkpoint, read_checkpoint, read_state_dict
from vltk_plugins.common.weights.resample import ResampleMode, rein_resize_grid, rein_resize_kernel, resample_spatial

__all__ = [
    "FORMATS",
    "TEXT_TOWER",
    "Checkpoint",
    "OptionalPart",
    "PreparedWeights",
    "ResampleMode",
    "WeightFormat",
    "WeightSpec",
    "check_fit",
    "detect_format",
    "formats_for",
    "load_pretrained",
    "load_pretrained_or_warn",
    "prepare_checkpoint",
    "prepare_weights",
    "read_checkpoint",
    "read_state_dict",
    "rein_resize_grid",
    "rein_resize_kernel",
    "resample_spatial",
    "warn_random",
]
