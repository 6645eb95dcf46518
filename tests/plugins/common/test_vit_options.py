"""The option pieces the ViT backbones share (``vltk_plugins.common.vit_options``), and that they stay torch-free."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import get_args

import pytest

from vltk_plugins.backbones.dinov2.options import Dinov2Options
from vltk_plugins.backbones.open_clip_vit.options import ClipViTOptions, Eva02Options
from vltk_plugins.common.vit_options import ATTENTION_HELP, AttentionChoice, check_out_indices


def test_check_out_indices() -> None:
    assert check_out_indices(None) is None
    assert check_out_indices([0, 1, 2, -1]) == [0, 1, 2, -1]
    with pytest.raises(ValueError, match=r"needs exactly 4 block indices \(one per pyramid level\), got 3"):
        check_out_indices([0, 1, 2])


def test_every_vit_backbone_offers_the_same_attention_choice() -> None:
    from vltk_plugins.common.attention import ATTENTION_BACKENDS

    assert get_args(AttentionChoice) == ATTENTION_BACKENDS == ("auto", "xformers", "sdpa", "math")
    for options in (Eva02Options, ClipViTOptions, Dinov2Options):
        field = options.model_fields["attention"]
        assert field.annotation == AttentionChoice and field.default == "auto"
        assert field.description == ATTENTION_HELP


def test_options_modules_do_not_import_torch() -> None:
    modules = [
        "vltk_plugins.common.vit_options",
        "vltk_plugins.backbones.open_clip_vit.options",
        "vltk_plugins.backbones.dinov2.options",
        "vltk_plugins.backbones.clip_resnet.options",
        "vltk_plugins.backbones.hooks",
    ]
    code = f"import sys; import {', '.join(modules)}; assert 'torch' not in sys.modules, 'torch imported'"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    result = subprocess.run([sys.executable, "-c", code], check=False, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
