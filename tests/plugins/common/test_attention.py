"""The backbones' ``attention`` option: sdpa and math agree on every backbone, auto falls back on CPU (logged
once), xformers is refused clearly where it cannot run, and open_clip's replaced attention matches the original."""

from __future__ import annotations

import logging
import warnings

import pytest
import torch
from pydantic import ValidationError
from torch import nn

from vltk.errors import UserError
from vltk_plugins.common.attention import attend, install_attention, logged_choices, resolve_attention


def build(name: str, attention: str = "auto") -> nn.Module:
    """The tiny variant of backbone ``name`` with the given attention option (random weights, eval mode)."""
    import vltk

    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        backbone = vltk.create("backbone", name, variant="tiny", attention=attention)
    return backbone.eval()


BACKBONES = ["eva02", "clip-vit", "dinov2"]


@pytest.fixture(scope="module", params=BACKBONES)
def backbone(request: pytest.FixtureRequest) -> nn.Module:
    """Each tiny backbone built once (EVA02's is the slow one); tests switch the backend in place."""
    return build(request.param, "sdpa")


def test_sdpa_and_math_agree(backbone: nn.Module) -> None:
    images = torch.randn(2, 3, 64, 48, generator=torch.Generator().manual_seed(1))
    outputs = {}
    for attention in ("sdpa", "math", "auto"):
        assert install_attention(backbone, attention) == backbone.num_layers  # every block switched
        with torch.no_grad():
            outputs[attention] = backbone.forward_features(images)
    for attention in ("math", "auto"):
        for got, want in zip(outputs[attention], outputs["sdpa"], strict=True):
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_math_gradients_match_sdpa(backbone: nn.Module) -> None:
    images = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    weight = backbone.blocks()[0].attn.in_proj_weight if hasattr(backbone.blocks()[0].attn, "in_proj_weight") else None
    weight = weight if weight is not None else backbone.blocks()[0].attn.qkv.weight
    grads = {}
    backbone.train()
    try:
        for attention in ("sdpa", "math"):
            install_attention(backbone, attention)
            backbone.zero_grad()
            backbone.forward_features(images)[-1].square().mean().backward()
            grads[attention] = weight.grad.clone()
    finally:
        backbone.eval().zero_grad()
    torch.testing.assert_close(grads["math"], grads["sdpa"], atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("name", ["clip-vit", "dinov2"])
def test_option_reaches_the_blocks(name: str) -> None:
    """``attention=math`` in the options installs the math backend (open_clip: the replaced attention method)."""
    block = build(name, "math").blocks()[0]
    switched = block.attention if name == "clip-vit" else block.attn.forward
    assert switched.resolver.requested == "math"


def test_open_clip_replacement_matches_multihead_attention() -> None:
    """The q/k/v projection done with nn.MultiheadAttention's own weights gives open_clip's original block output."""
    from open_clip.transformer import ResidualAttentionBlock

    torch.manual_seed(0)
    for batch_first in (True, False):
        block = ResidualAttentionBlock(48, 3, batch_first=batch_first).eval()
        x = torch.randn(2, 11, 48) if batch_first else torch.randn(11, 2, 48)
        mask = torch.triu(torch.full((11, 11), float("-inf")), diagonal=1)
        with torch.no_grad():
            expected = block(x), block(x, attn_mask=mask)
            assert install_attention(block, "math") == 1
            got = block(x), block(x, attn_mask=mask)
        for a, b in zip(got, expected, strict=True):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_auto_on_cpu_is_sdpa_and_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    with logged_choices(), caplog.at_level(logging.INFO, logger="vltk_plugins.common.attention"):
        assert resolve_attention("auto", torch.device("cpu")) == "sdpa"
        assert resolve_attention("auto", torch.device("cpu")) == "sdpa"
    messages = [record.getMessage() for record in caplog.records]
    assert len(messages) == 1 and "sdpa (requested auto on cpu)" in messages[0] and "CUDA-only" in messages[0]


def test_xformers_is_refused_on_cpu_with_a_way_out() -> None:
    with pytest.raises(UserError, match="attention=auto"):
        resolve_attention("xformers", torch.device("cpu"))
    with pytest.raises(UserError, match="unknown attention backend 'flash'"):
        resolve_attention("flash", torch.device("cpu"))


def test_unknown_option_value_fails_validation() -> None:
    from vltk_plugins.backbones.open_clip_vit.options import Eva02Options

    with pytest.raises(ValidationError, match="attention"):
        Eva02Options(attention="flash")


def test_attend_backends_agree_with_mask() -> None:
    generator = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(2, 3, 17, 8, generator=generator) for _ in range(3))
    mask = torch.randn(17, 17, generator=generator)
    torch.testing.assert_close(attend(q, k, v, "math", attn_mask=mask), attend(q, k, v, "sdpa", attn_mask=mask))


@pytest.mark.gpu
@pytest.mark.parametrize("name", BACKBONES)
def test_gpu_xformers_matches_sdpa(name: str) -> None:
    pytest.importorskip("xformers")
    images = torch.randn(2, 3, 64, 48, device="cuda")
    outputs = {}
    for attention in ("sdpa", "xformers"):
        backbone = build(name, attention).cuda()
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.float16):
            outputs[attention] = backbone.forward_features(images)
    for got, want in zip(outputs["xformers"], outputs["sdpa"], strict=True):
        torch.testing.assert_close(got.float(), want.float(), atol=2e-2, rtol=2e-2)
