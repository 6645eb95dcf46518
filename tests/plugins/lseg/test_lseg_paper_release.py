"""A release at LSeg's paper configuration (``clip_vitl16_384``, ``demo_e200.ckpt``) maps onto vltk's model exactly.

Shapes only, on the meta device (no memory): the released key names and shapes come from the real libraries and
LSeg's code, independently of vltk's map: timm's ``vit_large_patch16_384`` (``net.pretrained.model``), DPT's
``act_postprocess1..4`` for ViT-L/16 (``_make_vit_b16_backbone``: ``features=[256, 512, 1024, 1024]``,
``ProjectReadout`` Linear 2048 -> 1024, ConvTranspose x4 / x2, nothing, a 3x3 stride-2 conv), OpenAI CLIP ViT-B/32
(open_clip's ``CLIP`` has OpenAI's names, ``net.clip_pretrained``) and ``_make_scratch`` + four
``FeatureFusionBlock_custom`` (``features=256``, BN) + ``head1`` (256 -> 512) + a bottleneck ``head_block``. The
plan's recipe must build a ``lseg-vit`` + ``lseg`` pair whose state dict is exactly the mapped release.
"""

from __future__ import annotations

import warnings

import torch

_S, _P = "net.scratch.", "net.pretrained."


def _paper_release() -> dict[str, torch.Tensor]:
    import open_clip
    import timm

    shapes: dict[str, tuple[int, ...]] = {}
    with torch.device("meta"):
        vit = timm.create_model("vit_large_patch16_384", pretrained=False)
        clip = open_clip.CLIP(**open_clip.get_model_config("ViT-B-32-quickgelu"))
    shapes.update({_P + "model." + key: tuple(value.shape) for key, value in vit.state_dict().items()})
    shapes.update({"net.clip_pretrained." + key: tuple(value.shape) for key, value in clip.state_dict().items()})
    assert shapes[_P + "model.pos_embed"] == (1, 577, 1024) and shapes[_P + "model.head.weight"] == (1000, 1024)
    widths = [256, 512, 1024, 1024]
    for n, width in enumerate(widths, start=1):
        a = f"{_P}act_postprocess{n}."
        shapes[a + "0.project.0.weight"], shapes[a + "0.project.0.bias"] = (1024, 2048), (1024,)
        shapes[a + "3.weight"], shapes[a + "3.bias"] = (width, 1024, 1, 1), (width,)
        kernel = {1: 4, 2: 2, 4: 3}.get(n)  # ConvTranspose x4, x2; level 3 none; level 4 a 3x3 stride-2 conv
        if kernel is not None:
            shapes[a + "4.weight"], shapes[a + "4.bias"] = (width, width, kernel, kernel), (width,)
        shapes[f"{_S}layer{n}_rn.weight"] = (256, width, 3, 3)
        r = f"{_S}refinenet{n}."
        shapes[r + "out_conv.weight"], shapes[r + "out_conv.bias"] = (256, 256, 1, 1), (256,)
        for unit in ("resConfUnit1", "resConfUnit2"):
            for i in (1, 2):
                shapes[f"{r}{unit}.conv{i}.weight"] = (256, 256, 3, 3)
                for stat in ("weight", "bias", "running_mean", "running_var"):
                    shapes[f"{r}{unit}.bn{i}.{stat}"] = (256,)
                shapes[f"{r}{unit}.bn{i}.num_batches_tracked"] = ()
    shapes[_S + "head1.weight"], shapes[_S + "head1.bias"] = (512, 256, 1, 1), (512,)
    shapes[_S + "head_block.depthwise.depthwise.weight"] = (1, 1, 3, 3)
    shapes[_S + "head_block.depthwise.depthwise.bias"] = (1,)
    return {key: torch.empty(shape, device="meta") for key, shape in shapes.items()}


def test_a_paper_shaped_lseg_release_fills_the_model_it_plans_exactly() -> None:
    from vltk.api import BuildContext
    from vltk_plugins.common.releases import ReleaseFile, apply_keymap
    from vltk_plugins.lseg.backbone import build_lseg_vit
    from vltk_plugins.lseg.decoder import build_lseg
    from vltk_plugins.lseg.options import LSegOptions, LSegViTOptions
    from vltk_plugins.lseg.release import LSEG_RELEASE

    state = _paper_release()
    hyper = {"backbone": "clip_vitl16_384", "arch_option": 1, "block_depth": 2, "activation": "lrelu"}
    release = ReleaseFile(path="demo_e200.ckpt", state=state, container="torch.save", meta={"hyper_parameters": hyper})
    assert LSEG_RELEASE.detect(release)
    plan = LSEG_RELEASE.plan(release, {})
    mapped = apply_keymap(state, plan.rules, title=LSEG_RELEASE.title)
    backbone_options = {k: v for k, v in plan.config["backbone"].items() if k != "name"}
    decoder_options = {k: v for k, v in plan.config["decoder"].items() if k != "name"}
    assert backbone_options == {
        "image_model": "vit_large_patch16_384",
        "text_model": "ViT-B-32-quickgelu",
        "pyramid": "dpt",
    }
    assert decoder_options["reassemble_widths"] == [256, 512, 1024, 1024] and decoder_options["width"] == 256
    assert (decoder_options["spatial_block"], decoder_options["num_spatial_blocks"]) == ("bottleneck", 2)
    with warnings.catch_warnings(), torch.device("meta"):
        warnings.simplefilter("ignore")
        backbone = build_lseg_vit(LSegViTOptions(**backbone_options, attention="sdpa"))
        decoder = build_lseg(LSegOptions(**decoder_options), BuildContext(num_classes=150).with_backbone(backbone))
    assert backbone.out_indices == (5, 11, 17, 23) and backbone.text_dim == 512
    ours = {f"backbone.{k}": tuple(v.shape) for k, v in backbone.state_dict().items()}
    ours |= {f"decoder.{k}": tuple(v.shape) for k, v in decoder.state_dict().items()}
    theirs = {key: tuple(value.shape) for key, value in mapped.state.items()}
    assert sorted(set(ours) ^ set(theirs)) == []
    assert {key for key in ours if ours[key] != theirs[key]} == set()
    assert set(mapped.dropped) == {
        *(key for key in state if key.startswith("net.clip_pretrained.visual.")),
        *(key for key in state if key.startswith(f"{_P}model.head.")),
        *(key for key in state if key.startswith(f"{_S}refinenet4.resConfUnit1.")),
    }
