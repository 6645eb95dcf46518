"""What ``vltk list`` and config validation import must stay free of torch: every dataset's options module, the
entry point that registers them, and the numpy-only renderer front door."""

from __future__ import annotations

import subprocess
import sys

import pytest

LIGHT = {
    "synthetic options": ("from vltk_plugins.datasets.synthetic.options import SyntheticOptions; SyntheticOptions()"),
    "synthetic-det options": (
        "from vltk_plugins.datasets.synthetic_det.options import SyntheticDetectionOptions; SyntheticDetectionOptions()"
    ),
    "dwd options": "from vltk_plugins.datasets.dwd.options import DWDOptions; DWDOptions(root='.')",
    "urban options": (
        "from vltk_plugins.datasets.urban.options import UrbanOptions; "
        "UrbanOptions(train=[{'name': 'gtav', 'kind': 'gtav', 'root': '.'}])"
    ),
    "ade20k options": "from vltk_plugins.datasets.ade20k.options import ADE20KOptions; ADE20KOptions(root='.')",
    "ade20k classes": "from vltk_plugins.datasets.ade20k.classes import ADE20K_CLASSES, ADE20K_PALETTE",
    "datasets entry point": "import vltk_plugins.datasets.hooks",
    "synthetic render": (
        "from vltk_plugins.datasets.synthetic.render import render_scene; render_scene(0, 0, 32, 'night')"
    ),
}


@pytest.mark.parametrize("code", LIGHT.values(), ids=LIGHT.keys())
def test_module_does_not_import_torch(code: str) -> None:
    check = f"import sys; {code}; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", check], check=True)
