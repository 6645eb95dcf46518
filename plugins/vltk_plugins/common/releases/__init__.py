"""Released paper checkpoints (Rein, DenseCLIP, LSeg, CLIP the Gap, Hugging Face Mask2Former) read through
explicit key maps.

The building blocks every paper's release map uses: :mod:`~vltk_plugins.common.releases.read` (the file, names
untouched), :mod:`~vltk_plugins.common.releases.keymap` (rename/concat/drop rules as data, applied strictly) and
:mod:`~vltk_plugins.common.releases.format` (recognise the file, plan its conversion, produce a vltk checkpoint).
The maps themselves live in each paper's plugin (``vltk_plugins/rein/release.py``, ...) and are declared through
the ``vltk_release_formats`` hook; ``vltk convert`` and ``vltk eval --checkpoint`` find them there.
"""

from __future__ import annotations

from vltk_plugins.common.releases.format import ReleaseFormat, ReleasePlan, layer_count, prefixed, recipe_file
from vltk_plugins.common.releases.keymap import Concat, Drop, MappedState, Rename, Rule, apply_keymap
from vltk_plugins.common.releases.read import ReleaseFile, read_release

__all__ = [
    "Concat",
    "Drop",
    "MappedState",
    "ReleaseFile",
    "ReleaseFormat",
    "ReleasePlan",
    "Rename",
    "Rule",
    "apply_keymap",
    "layer_count",
    "prefixed",
    "read_release",
    "recipe_file",
]
