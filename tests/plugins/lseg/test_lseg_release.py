"""LSeg's released checkpoints (PyTorch Lightning, ``net.`` prefix) convert into vltk and give the same outputs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from vltk.api import CITYSCAPES_CLASSES
from vltk.errors import UserError

MODEL = ["backbone=clip-vit", "backbone.variant=tiny", "decoder.width=32", "dataset.size=64"]
RUN = ["backbone.variant=tiny", "dataset=synthetic", "dataset.size=64", "dataset.num_train=2", "dataset.num_val=2"]

_S = "net.scratch."
#: vltk name -> LSeg name (lang-seg's LSegNet: scratch.layerN_rn, refinenetN.resConfUnit1/2 with conv/bn, out_conv,
#: head1, head_block.depthwise.depthwise; CLIP under clip_pretrained), written independently of the plugin's map.
INVERSE = [
    *[(rf"decoder\.scratch\.{i}\.weight", f"{_S}layer{i + 1}_rn.weight") for i in range(4)],
    *[
        (rf"decoder\.fusion\.{i}\.{unit}\.{a}(\d)\.(.*)", rf"{_S}refinenet{i + 1}.{upstream}.{b}\1.\2")
        for i in range(4)
        for unit, upstream in (("lateral_unit", "resConfUnit1"), ("output_unit", "resConfUnit2"))
        for a, b in (("conv", "conv"), ("norm", "bn"))
    ],
    *[(rf"decoder\.fusion\.{i}\.out_conv\.(.*)", rf"{_S}refinenet{i + 1}.out_conv.\1") for i in range(4)],
    (r"decoder\.head\.(.*)", _S + r"head1.\1"),
    (r"decoder\.spatial\.conv\.(.*)", _S + r"head_block.depthwise.depthwise.\1"),
    (r"backbone\.visual\.(.*)", r"net.clip_pretrained.visual.\1"),
    (r"backbone\.text\.(.*)", r"net.clip_pretrained.\1"),
    (r"backbone\.logit_scale", "net.clip_pretrained.logit_scale"),
]


def _fabricate(release_tools, folder: Path):
    model = release_tools.model("lseg/synthetic", MODEL, CITYSCAPES_CLASSES)
    upstream = release_tools.rename(model.state_dict(), INVERSE)
    # what LSeg's file has beyond vltk's model: DPT's unused coarsest lateral unit and the DPT image encoder
    upstream[_S + "refinenet4.resConfUnit1.conv1.weight"] = torch.randn(32, 32, 3, 3)
    upstream["net.pretrained.model.blocks.0.attn.qkv.weight"] = torch.randn(96, 32)
    upstream["net.pretrained.act_postprocess1.3.weight"] = torch.randn(256, 32, 1, 1)
    release = folder / "lseg_demo.ckpt"
    hyper = {"labels": list(CITYSCAPES_CLASSES), "backbone": "clip_vitl16_384"}
    torch.save({"state_dict": upstream, "hyper_parameters": hyper, "epoch": 3, "global_step": 120}, release)
    return model, release


def test_lseg_release_gives_the_same_outputs(release_tools, tmp_path: Path) -> None:
    from vltk_plugins.common.releases.convert import convert_release

    model, release = _fabricate(release_tools, tmp_path)
    images = torch.randn(2, 3, 64, 64)
    expected = release_tools.logits(model, images)
    torch.testing.assert_close(release_tools.logits(release_tools.load_converted(release, RUN), images), expected)
    lines = convert_release(str(release), str(tmp_path / "lseg.pt"), tuple(RUN))
    assert any("left out 3" in line for line in lines), lines
    saved = torch.load(tmp_path / "lseg.pt", weights_only=True)
    assert "decoder.fusion.3.lateral_unit.conv1.weight" not in saved["model"]
    torch.testing.assert_close(
        release_tools.logits(release_tools.load_converted(tmp_path / "lseg.pt"), images), expected
    )


def test_dpt_widths_of_a_real_release_are_refused_with_both_shapes(release_tools, tmp_path: Path) -> None:
    from vltk_plugins.common.releases.convert import convert_release

    _, release = _fabricate(release_tools, tmp_path)
    state = torch.load(release, weights_only=True)
    state["state_dict"][_S + "layer1_rn.weight"] = torch.randn(32, 256, 3, 3)  # DPT's reassembled level-1 width
    torch.save(state, tmp_path / "dpt.ckpt")
    with pytest.raises(UserError, match=r"net\.scratch\.layer1_rn\.weight is \[32, 256, 3, 3\] in the file but"):
        convert_release(str(tmp_path / "dpt.ckpt"), str(tmp_path / "x.pt"), tuple(RUN))
    with pytest.raises(UserError, match=r"not a LSeg release .*net\.clip_pretrained"):
        del state["state_dict"]["net.scratch.layer1_rn.weight"]
        torch.save(
            {"state_dict": {k.removeprefix("net."): v for k, v in state["state_dict"].items()}}, tmp_path / "n.ckpt"
        )
        convert_release(str(tmp_path / "n.ckpt"), str(tmp_path / "x.pt"), tuple(RUN), from_format="lseg")
    assert not (tmp_path / "x.pt").exists()
