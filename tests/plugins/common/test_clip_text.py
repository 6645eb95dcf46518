"""The CLIP text side (``vltk_plugins.common.clip_text``) on a minimal image-tower module, as a new backbone uses it.

The built-in backbones' text sides are tested with them (``tests/plugins/backbones``); here the mixin and its
state-dict hooks are checked on their own: what :meth:`ClipTextSide.attach_clip` promises any backbone.
"""

from __future__ import annotations

import open_clip
import pytest
import torch
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from torch import nn

from vltk_plugins.backbones.open_clip_vit.model import TINY_CLIP_CONFIG
from vltk_plugins.common.clip_text import OPENAI_MEAN, OPENAI_STD, ClipTextSide


class ImageTowerOnly(ClipTextSide, nn.Module):
    """The least a backbone does: register the image tower, attach the whole model for its text side."""

    def __init__(self, clip: nn.Module, **tokenizer_kwargs: str) -> None:
        super().__init__()
        self.visual = clip.visual
        self.attach_clip(clip, tokenizer_kwargs)


def _tower(seed: int, **tokenizer_kwargs: str) -> ImageTowerOnly:
    torch.manual_seed(seed)
    return ImageTowerOnly(open_clip.CustomTextCLIP(**TINY_CLIP_CONFIG), **tokenizer_kwargs)


def test_normalisation_is_open_clips() -> None:
    assert OPENAI_MEAN == tuple(OPENAI_DATASET_MEAN) and OPENAI_STD == tuple(OPENAI_DATASET_STD)


def test_text_half_is_frozen_and_not_a_parameter() -> None:
    tower = _tower(0)
    clip = tower.open_clip_model()
    assert tower.text_tower() is clip.text and not clip.text.training
    assert not any(p.requires_grad for p in clip.text.parameters()) and not clip.logit_scale.requires_grad
    assert all(name.startswith("visual.") for name, _ in tower.named_parameters())
    assert any(p.requires_grad for p in tower.parameters())  # the image tower is left as it was


def test_state_dict_is_the_open_clip_checkpoint() -> None:
    tower = _tower(0)
    assert tower.state_dict().keys() == tower.open_clip_model().state_dict().keys()


def test_load_restores_text_and_logit_scale_and_accepts_vision_only() -> None:
    source, target = _tower(0), _tower(1)
    with torch.no_grad():
        source.open_clip_model().logit_scale.fill_(3.0)
    assert not torch.equal(source.encode_text(["road"]), target.encode_text(["road"]))
    target.load_state_dict(source.state_dict(), strict=True)
    torch.testing.assert_close(target.encode_text(["road"]), source.encode_text(["road"]), rtol=0, atol=0)
    assert target.open_clip_model().logit_scale.item() == 3.0

    other = _tower(2)
    text_before = other.encode_text(["road"])
    vision = {key: value for key, value in source.state_dict().items() if key.startswith("visual.")}
    other.load_state_dict(vision, strict=True)
    torch.testing.assert_close(other.encode_text(["road"]), text_before, rtol=0, atol=0)
    torch.testing.assert_close(other.visual.conv1.weight, source.visual.conv1.weight, rtol=0, atol=0)


def test_wrong_text_shape_is_a_load_error() -> None:
    tower = _tower(0)
    state = dict(tower.state_dict(), **{"text.ln_final.weight": torch.ones(3)})
    with pytest.raises(RuntimeError, match="ln_final"):
        tower.load_state_dict(state)


def test_text_half_follows_moves_and_casts() -> None:
    tower = _tower(0).double()
    clip = tower.open_clip_model()
    assert next(clip.text.parameters()).dtype == torch.float64 and clip.logit_scale.dtype == torch.float64
    assert not clip.logit_scale.requires_grad
    assert tower.encode_text(["x"]).dtype == torch.float64


def test_tokenizer_is_built_once_with_the_given_settings() -> None:
    tower = _tower(0, clean="whitespace")
    tokenizer = tower.tokenizer()
    assert tower.tokenizer() is tokenizer and tokenizer.context_length == 77
    assert tokenizer.clean_fn("A  Road") != _tower(0).tokenizer().clean_fn("A  Road")
    assert tokenizer(["a road"]).shape == (1, 77)
