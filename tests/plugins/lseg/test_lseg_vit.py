"""The ``lseg-vit`` backbone and the ``lseg`` decoder's ``reassemble`` option: pyramids, readouts, clear errors."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch

from vltk.api import BuildContext, UserError
from vltk_plugins.lseg.backbone import build_lseg_vit, dpt_hooks
from vltk_plugins.lseg.decoder import build_lseg
from vltk_plugins.lseg.options import LSegOptions, LSegViTOptions
from vltk_plugins.lseg.reassemble import ReassembleLevel

TINY = {"image_model": "tiny", "text_model": "tiny", "attention": "math", "pyramid": "dpt"}


def _backbone(**options: object):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.manual_seed(0)
        return build_lseg_vit(LSegViTOptions(**{**TINY, **options})).eval()


def test_dpt_hooks_are_the_last_block_of_each_quarter() -> None:
    assert dpt_hooks(24) == (5, 11, 17, 23) and dpt_hooks(12) == (2, 5, 8, 11) and dpt_hooks(4) == (0, 1, 2, 3)


def test_dpt_pyramid_is_patch_tokens_then_their_blocks_cls_token() -> None:
    backbone = _backbone()
    images = torch.randn(1, 3, 64, 96)
    captured = {}

    def hook(tokens: torch.Tensor, index: int) -> torch.Tensor:
        captured[index] = tokens
        return tokens

    with torch.no_grad():
        levels = backbone.forward_features(images, block_hooks=(hook,))
    assert backbone.strides == (16, 16, 16, 16) and backbone.pyramid_channels() == (64,) * 4
    for level, index in zip(levels, (0, 1, 2, 3), strict=True):
        tokens = captured[index]
        assert level.shape == (1, 64, 4, 6)
        torch.testing.assert_close(level[:, :32].flatten(2).mT, tokens[:, 1:])
        torch.testing.assert_close(level[:, 32:, 2, 3], tokens[:, 0])
    resized = _backbone(pyramid="resize")
    assert resized.strides == (4, 8, 16, 32)
    with torch.no_grad():
        assert [tuple(x.shape[-2:]) for x in resized.forward_features(images)] == [(16, 24), (8, 12), (4, 6), (2, 3)]


@pytest.mark.parametrize("readout", ["add", "ignore"])
def test_parameter_free_readouts(readout: str) -> None:
    torch.manual_seed(0)
    level = ReassembleLevel(8, 4, 1, readout)
    x = torch.randn(2, 16, 3, 3)
    patches = x[:, :8] + (x[:, 8:] if readout == "add" else 0)
    expected = torch.nn.functional.conv2d(patches, level.project.weight, level.project.bias)
    torch.testing.assert_close(level(x), expected)
    assert level.readout is None


def test_pyramid_and_reassemble_mismatches_are_one_clear_error() -> None:
    dpt = BuildContext(num_classes=3).with_backbone(_backbone())
    with pytest.raises(UserError, match="decoder.reassemble=dpt, or backbone.pyramid=resize"):
        build_lseg(LSegOptions(width=16), dpt)
    plain = BuildContext(num_classes=3).with_backbone(_backbone(pyramid="resize"))
    with pytest.raises(UserError, match="use --backbone lseg-vit"):
        build_lseg(LSegOptions(width=16, reassemble="dpt", reassemble_widths=[8, 16, 32, 32]), plain)
    decoder = build_lseg(LSegOptions(width=16), plain)
    assert decoder.reassemble is None


def test_pretrained_reads_the_backbones_own_state_and_refuses_another(tmp_path: Path) -> None:
    source = _backbone()
    torch.save({"model": {f"backbone.{k}": v for k, v in source.state_dict().items()}}, tmp_path / "b.pt")
    torch.manual_seed(1)
    loaded = build_lseg_vit(LSegViTOptions(**TINY, pretrained=str(tmp_path / "b.pt"))).eval()
    images = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded.forward_features(images)[2], source.forward_features(images)[2])
    torch.testing.assert_close(loaded.encode_text(["road"]), source.encode_text(["road"]))
    torch.save({"weight": torch.zeros(3)}, tmp_path / "other.pt")
    with pytest.raises(UserError, match="is not this backbone's state dict"):
        build_lseg_vit(LSegViTOptions(**TINY, pretrained=str(tmp_path / "other.pt")))
    with pytest.raises(UserError, match="no image-text space"):
        source.embed(images)


def test_image_and_text_weights_come_from_timm_and_clip_files(tmp_path: Path) -> None:
    import open_clip
    import timm

    torch.manual_seed(3)
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, embed_dim=32, depth=4, num_heads=2, img_size=64)
    torch.save(vit.state_dict(), tmp_path / "vit.pth")  # with timm's ImageNet head, which LSeg never runs
    text_cfg = {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2}
    vision_cfg = {"image_size": 32, "layers": 1, "width": 48, "patch_size": 32, "head_width": 24}
    clip = open_clip.CLIP(embed_dim=64, vision_cfg=vision_cfg, text_cfg=text_cfg).eval()
    torch.save({"state_dict": clip.state_dict()}, tmp_path / "clip.pt")  # OpenAI's names, image tower included
    backbone = build_lseg_vit(
        LSegViTOptions(**TINY, image_pretrained=str(tmp_path / "vit.pth"), text_pretrained=str(tmp_path / "clip.pt"))
    ).eval()
    for key, value in vit.state_dict().items():
        if not key.startswith("head."):
            torch.testing.assert_close(backbone.trunk.state_dict()[key], value, msg=key)
    with torch.no_grad():
        expected = clip.encode_text(open_clip.tokenize(["road", "a car"]))
    torch.testing.assert_close(backbone.encode_text(["road", "a car"]), expected)
    with pytest.raises(UserError, match=r"is not a timm ViT state dict of this architecture \(missing: cls_token"):
        build_lseg_vit(LSegViTOptions(**TINY, image_pretrained=str(tmp_path / "clip.pt")))
    other = timm.create_model("vit_tiny_patch16_224", pretrained=False, embed_dim=32, depth=4, num_heads=2, img_size=96)
    torch.save(other.state_dict(), tmp_path / "vit96.pth")
    with pytest.raises(UserError, match=r"does not fit \(pos_embed \[1, 37, 32\] vs \[1, 17, 32\]"):
        build_lseg_vit(LSegViTOptions(**TINY, image_pretrained=str(tmp_path / "vit96.pth")))


def test_the_ade20k_recipe_is_lsegs_own_path() -> None:
    from vltk.config import build_config, resolve
    from vltk.plugins import get_plugin_manager

    manager = get_plugin_manager()
    run = resolve(build_config("lseg/ade20k", recipe_dirs=manager.recipe_dirs()), manager.get_registry())
    config = run.config.to_dict()
    backbone, decoder, train = config["backbone"], config["decoder"], config["train"]
    assert (backbone["name"], backbone["image_model"], backbone["pyramid"]) == (
        "lseg-vit",
        "vit_large_patch16_384",
        "dpt",
    )
    assert (decoder["reassemble"], decoder["reassemble_widths"], decoder["readout"]) == (
        "dpt",
        [256, 512, 1024, 1024],
        "project",
    )
    assert config["prompter"]["templates"] == ["{}"] and config["prompter"]["score_concat_index"] is None
    assert train["lr"] == pytest.approx(0.004 * train["batch_size"] / 16) and train["optimizer"] == "sgd"
    assert (config["dataset"]["crop_size"], config["eval"]["crop_size"], config["eval"]["flip"]) == (480, 480, True)
