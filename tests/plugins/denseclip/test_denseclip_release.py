"""DenseCLIP's released checkpoints (mmseg 0.x) convert into vltk and give the same outputs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from vltk.api import CITYSCAPES_CLASSES
from vltk.errors import UserError

#: The tiny DenseCLIP of the synthetic recipe (tiny CLIP ResNet, 64-wide FPN), context decoder with 2 heads.
MODEL = ["prompter.decoder_layers=2", "prompter.decoder_heads=2", "dataset.size=64"]
RUN = ["dataset=synthetic", "dataset.size=64", "dataset.num_train=2", "dataset.num_val=2", "prompter.decoder_heads=2"]

#: vltk name -> DenseCLIP name, from DenseCLIP's segmentor (backbone, text_encoder, context_decoder, contexts, gamma)
#: and mmseg 0.x's FPN (ConvModule .conv) and FPNHead (.conv/.bn), written independently of the plugin's map.
INVERSE = [
    (r"backbone\.visual\.(.*)", r"backbone.\1"),
    (r"backbone\.text\.(.*)", r"text_encoder.\1"),
    (r"prompter\.context_decoder\.(.*)", r"context_decoder.\1"),
    (r"prompter\.(contexts|gamma)", r"\1"),
    (r"decoder\.(lateral_convs|fpn_convs)\.(\d)\.(weight|bias)", r"neck.\1.\2.conv.\3"),
    (r"decoder\.scale_heads\.(\d)\.(\d)\.0\.weight", r"decode_head.scale_heads.\1.\2.conv.weight"),
    (r"decoder\.scale_heads\.(\d)\.(\d)\.1\.(.*)", r"decode_head.scale_heads.\1.\2.bn.\3"),
    (r"decoder\.conv_seg\.(.*)", r"decode_head.conv_seg.\1"),
]


def _fabricate(release_tools, folder: Path):
    model = release_tools.model("denseclip/synthetic", MODEL, CITYSCAPES_CLASSES)
    state = model.state_dict()
    state["backbone.logit_scale"].fill_(torch.log(torch.tensor(1 / 0.07)))  # CLIP's initial value (unused upstream)
    state = {key: value for key, value in state.items() if key != "backbone.logit_scale"}
    upstream = release_tools.rename(state, INVERSE)
    upstream["text_encoder.positional_embedding"] = upstream["text_encoder.positional_embedding"][:13].clone()
    release = folder / "denseclip_fpn_tiny.pth"
    torch.save(
        {"meta": {"CLASSES": tuple(CITYSCAPES_CLASSES), "mmseg_version": "0.20.2"}, "state_dict": upstream}, release
    )
    return model, release


def test_denseclip_release_gives_the_same_outputs(release_tools, tmp_path: Path) -> None:
    from vltk_plugins.common.releases.convert import convert_release

    model, release = _fabricate(release_tools, tmp_path)
    images = torch.randn(2, 3, 64, 64)
    expected = release_tools.logits(model, images)
    in_memory = release_tools.load_converted(release, RUN)  # the release holds its backbone: no backbone file
    torch.testing.assert_close(release_tools.logits(in_memory, images), expected)
    lines = convert_release(str(release), str(tmp_path / "denseclip.pt"), tuple(RUN))
    assert any("--from denseclip" in line for line in lines)
    saved = torch.load(tmp_path / "denseclip.pt", weights_only=True)
    assert saved["backbone_included"] is True and saved["class_names"] == list(CITYSCAPES_CLASSES)
    prompter = saved["config"]["prompter"]
    assert (prompter["n_ctx"], prompter["context_length"], prompter["score_concat_index"]) == (8, 13, 3)
    assert saved["model"]["backbone.text.positional_embedding"].shape[0] == 77
    converted = release_tools.load_converted(tmp_path / "denseclip.pt")
    torch.testing.assert_close(release_tools.logits(converted, images), expected)


def test_pool_grid_of_a_512px_release_is_resampled(tmp_path: Path) -> None:
    from vltk_plugins.common.releases import apply_keymap
    from vltk_plugins.denseclip.release import rules

    grid = torch.randn(1 + 16 * 16, 8)
    mapped = apply_keymap({"backbone.attnpool.positional_embedding": grid}, rules(), title="t")
    resampled = mapped.state["backbone.visual.attnpool.positional_embedding"]
    assert resampled.shape == (50, 8)
    torch.testing.assert_close(resampled[0], grid[0])  # the class position is kept as it is
    smooth = torch.ones(1 + 16 * 16, 8)
    flat = apply_keymap({"backbone.attnpool.positional_embedding": smooth}, rules(), title="t").state
    torch.testing.assert_close(flat["backbone.visual.attnpool.positional_embedding"], torch.ones(50, 8))


def test_wrong_files_are_refused(release_tools, tmp_path: Path) -> None:
    from vltk_plugins.common.releases.convert import convert_release

    _, release = _fabricate(release_tools, tmp_path)
    with pytest.raises(UserError, match=r"not a DenseCLIP release .*expected keys like backbone\.layer1"):
        broken = torch.load(release, weights_only=True)
        broken["state_dict"] = {k: v for k, v in broken["state_dict"].items() if not k.startswith("context_decoder.")}
        torch.save(broken, tmp_path / "no_context.pth")
        convert_release(str(tmp_path / "no_context.pth"), str(tmp_path / "x.pt"), tuple(RUN), from_format="denseclip")
    state = torch.load(release, weights_only=True)
    state["state_dict"]["decode_head.extra_conv.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "extra.pth")
    with pytest.raises(UserError, match=r"1 keys of the file are not in its key map: decode_head\.extra_conv\.weight"):
        convert_release(str(tmp_path / "extra.pth"), str(tmp_path / "x.pt"), tuple(RUN))
    assert not (tmp_path / "x.pt").exists()
