"""LSeg's released checkpoints (PyTorch Lightning, ``net.`` prefix) convert into vltk and give LSeg's outputs.

The fabricated release has the key names and shapes of LSeg's ``clip_vitl16_384`` at a small size: a timm ViT
(``net.pretrained.model``, 4 blocks, 32 wide, patch 16) hooked after every block, DPT's reassemble
(``act_postprocess1..4`` with the ``project`` readout, reassemble widths 8/16/32/32), CLIP with a tiny text tower
(``net.clip_pretrained``) and the decoder (``net.scratch``). Its logits are compared with :func:`lseg_logits`, LSeg's
forward written below from ``lseg_vit.py``/``lseg_blocks.py``/``lseg_net.py`` with plain ``torch.nn.functional``
calls on the released tensors (and open_clip's CLIP, loaded from the same tensors, for the label embeddings).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from vltk.errors import UserError

LABELS = ["road", "car", "sky", "tree", "other"]
MODEL = [
    "backbone=lseg-vit",
    "backbone.image_model=tiny",
    "backbone.text_model=tiny",
    "backbone.pyramid=dpt",
    "decoder.width=16",
    "decoder.reassemble=dpt",
    "decoder.reassemble_widths=[8,16,32,32]",
    "prompter.templates=['{}']",
    "dataset.size=64",
]
RUN = ["dataset=synthetic", "dataset.size=64", "dataset.num_train=2", "dataset.num_val=2"]

_S, _P = "net.scratch.", "net.pretrained."
#: vltk name -> LSeg name, written independently of the plugin's map.
INVERSE = [
    (r"backbone\.trunk\.(.*)", _P + r"model.\1"),
    *[
        (rf"decoder\.reassemble\.levels\.{i}\.{ours}\.(weight|bias)", rf"{_P}act_postprocess{i + 1}.{theirs}.\1")
        for i in range(4)
        for ours, theirs in (("readout", "0.project.0"), ("project", "3"), ("resample", "4"))
    ],
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
    (r"backbone\.text\.(.*)", r"net.clip_pretrained.\1"),
    (r"backbone\.logit_scale", "net.clip_pretrained.logit_scale"),
]
HYPER = {"labels": LABELS, "backbone": "clip_vitl16_384", "arch_option": 1, "block_depth": 2, "activation": "lrelu"}


def _fabricate(release_tools, folder: Path) -> tuple[torch.nn.Module, Path, dict[str, torch.Tensor]]:
    model = release_tools.model("lseg/synthetic", MODEL, LABELS)
    upstream = release_tools.rename(model.state_dict(), INVERSE)
    generator = torch.Generator().manual_seed(7)
    # what LSeg's file has beyond the model: DPT's unused coarsest lateral unit, timm's ImageNet head, CLIP's image
    # tower (OpenAI names)
    for name in ("conv1.weight", "conv2.weight"):
        upstream[f"{_S}refinenet4.resConfUnit1.{name}"] = torch.randn(16, 16, 3, 3, generator=generator)
    upstream[_P + "model.head.weight"] = torch.randn(1000, 32, generator=generator)
    upstream[_P + "model.head.bias"] = torch.randn(1000, generator=generator)
    upstream["net.clip_pretrained.visual.conv1.weight"] = torch.randn(48, 3, 32, 32, generator=generator)
    upstream["net.clip_pretrained.visual.proj"] = torch.randn(48, 64, generator=generator)
    release = folder / "lseg_demo.ckpt"
    torch.save({"state_dict": upstream, "hyper_parameters": HYPER, "epoch": 3, "global_step": 120}, release)
    return model, release, upstream


def _text_features(state: dict[str, torch.Tensor]) -> torch.Tensor:
    """LSeg's ``clip_pretrained.encode_text(clip.tokenize(labels))``: open_clip's CLIP loaded from the tensors."""
    import open_clip

    text_cfg = {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2}
    vision_cfg = {"image_size": 32, "layers": 1, "width": 48, "patch_size": 32, "head_width": 24}
    clip = open_clip.CLIP(embed_dim=64, vision_cfg=vision_cfg, text_cfg=text_cfg)
    text = {k.removeprefix("net.clip_pretrained."): v for k, v in state.items() if k.startswith("net.clip_pretrained.")}
    text = {k: v for k, v in text.items() if not k.startswith("visual.")}
    missing, unexpected = clip.load_state_dict(text, strict=False)
    assert not unexpected and all(key.startswith("visual.") for key in missing), (missing, unexpected)
    with torch.no_grad():
        return clip.eval().encode_text(open_clip.tokenize(LABELS))


def lseg_logits(state: dict[str, torch.Tensor], images: torch.Tensor) -> torch.Tensor:
    """LSeg's ``LSeg.forward`` before ``output_conv`` (the x2 upsampling), from the released tensors."""
    m = {k.removeprefix(_P + "model."): v for k, v in state.items() if k.startswith(_P + "model.")}
    s = {k.removeprefix(_S): v for k, v in state.items() if k.startswith(_S)}
    x = (images - 0.5) / 0.5  # norm_mean = norm_std = 0.5
    batch, _, height, width = x.shape
    gh, gw = height // 16, width // 16
    # forward_flex: patch conv, cls, bilinearly resized position grid, blocks; hooks after blocks 0..3
    tokens = F.conv2d(x, m["patch_embed.proj.weight"], m["patch_embed.proj.bias"], stride=16).flatten(2).mT
    tokens = torch.cat([m["cls_token"].expand(batch, -1, -1), tokens], dim=1)
    pos = m["pos_embed"]
    old = int((pos.shape[1] - 1) ** 0.5)
    grid = F.interpolate(pos[0, 1:].reshape(1, old, old, -1).permute(0, 3, 1, 2), size=(gh, gw), mode="bilinear")
    tokens = tokens + torch.cat([pos[:, :1], grid.permute(0, 2, 3, 1).reshape(1, gh * gw, -1)], dim=1)
    dim, heads = tokens.shape[-1], 2
    hooked = []
    for i in range(4):
        b = f"blocks.{i}."
        y = F.layer_norm(tokens, (dim,), m[b + "norm1.weight"], m[b + "norm1.bias"], eps=1e-6)
        qkv = F.linear(y, m[b + "attn.qkv.weight"], m[b + "attn.qkv.bias"]).reshape(batch, -1, 3, heads, dim // heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        attention = ((q @ k.transpose(-2, -1)) * (dim // heads) ** -0.5).softmax(dim=-1)
        y = (attention @ v).transpose(1, 2).reshape(batch, -1, dim)
        tokens = tokens + F.linear(y, m[b + "attn.proj.weight"], m[b + "attn.proj.bias"])
        y = F.layer_norm(tokens, (dim,), m[b + "norm2.weight"], m[b + "norm2.bias"], eps=1e-6)
        y = F.linear(F.gelu(F.linear(y, m[b + "mlp.fc1.weight"], m[b + "mlp.fc1.bias"])), m[b + "mlp.fc2.weight"])
        tokens = tokens + y + m[b + "mlp.fc2.bias"]
        hooked.append(tokens)
    # act_postprocess1..4: ProjectReadout, unflatten, 1x1 conv, ConvTranspose x4 / x2 / nothing / 3x3 stride-2 conv
    layers = []
    for n, t in enumerate(hooked, start=1):
        a = f"act_postprocess{n}."
        readout = t[:, :1].expand_as(t[:, 1:])
        p = F.gelu(F.linear(torch.cat([t[:, 1:], readout], -1), state[_P + a + "0.project.0.weight"],
                            state[_P + a + "0.project.0.bias"]))  # fmt: skip
        p = p.transpose(1, 2).reshape(batch, dim, gh, gw)
        p = F.conv2d(p, state[_P + a + "3.weight"], state[_P + a + "3.bias"])
        if n in (1, 2):
            p = F.conv_transpose2d(p, state[_P + a + "4.weight"], state[_P + a + "4.bias"], stride=4 if n == 1 else 2)
        elif n == 4:
            p = F.conv2d(p, state[_P + a + "4.weight"], state[_P + a + "4.bias"], stride=2, padding=1)
        layers.append(F.conv2d(p, s[f"layer{n}_rn.weight"], padding=1))

    def bn(y: torch.Tensor, name: str) -> torch.Tensor:
        return F.batch_norm(y, s[name + ".running_mean"], s[name + ".running_var"], s[name + ".weight"],
                            s[name + ".bias"], training=False, eps=1e-5)  # fmt: skip

    def rcu(y: torch.Tensor, name: str) -> torch.Tensor:
        out = bn(F.conv2d(F.relu(y), s[name + ".conv1.weight"], padding=1), name + ".bn1")
        return bn(F.conv2d(F.relu(out), s[name + ".conv2.weight"], padding=1), name + ".bn2") + y

    def refinenet(n: int, *inputs: torch.Tensor) -> torch.Tensor:
        out = inputs[0] + rcu(inputs[1], f"refinenet{n}.resConfUnit1") if len(inputs) == 2 else inputs[0]
        out = F.interpolate(rcu(out, f"refinenet{n}.resConfUnit2"), scale_factor=2, mode="bilinear", align_corners=True)
        return F.conv2d(out, s[f"refinenet{n}.out_conv.weight"], s[f"refinenet{n}.out_conv.bias"])

    path = refinenet(4, layers[3])
    for n in (3, 2, 1):
        path = refinenet(n, path, layers[n - 1])
    image = F.conv2d(path, s["head1.weight"], s["head1.bias"])
    image = image / image.norm(dim=1, keepdim=True)
    text = _text_features(state)
    text = text / text.norm(dim=-1, keepdim=True)
    out = torch.einsum("bchw,kc->bkhw", image, text) / 0.07
    weight, bias = s["head_block.depthwise.depthwise.weight"], s["head_block.depthwise.depthwise.bias"]
    for depth in range(2):  # arch_option 1 (bottleneck_block), block_depth 2: activation on all but the last
        shared = F.conv2d(out.reshape(-1, 1, *out.shape[-2:]), weight, bias, padding=1).reshape(out.shape)
        out = shared + out.max(dim=1, keepdim=True).values
        out = F.leaky_relu(out) if depth == 0 else out
    return out


def test_lseg_release_converts_and_gives_lsegs_logits(release_tools, tmp_path: Path) -> None:
    from vltk_plugins.common.releases.convert import convert_release

    model, release, upstream = _fabricate(release_tools, tmp_path)
    images = torch.rand(2, 3, 96, 96)  # a 6x6 grid: the stored 4x4 position grid is resized
    expected = lseg_logits(upstream, images)
    torch.testing.assert_close(release_tools.logits(model, images), expected, rtol=1e-4, atol=1e-4)
    in_memory = release_tools.load_converted(release, RUN)  # vltk eval --checkpoint demo_e200.ckpt, no convert
    torch.testing.assert_close(release_tools.logits(in_memory, images), expected, rtol=1e-4, atol=1e-4)
    lines = convert_release(str(release), str(tmp_path / "lseg.pt"), tuple(RUN))
    assert any("left out 6" in line for line in lines), lines
    saved = torch.load(tmp_path / "lseg.pt", weights_only=True)
    assert saved["class_names"] == LABELS
    assert "decoder.fusion.3.lateral_unit.conv1.weight" not in saved["model"]
    assert saved["model"]["decoder.reassemble.levels.0.resample.weight"].shape == (8, 8, 4, 4)
    config = saved["config"]
    backbone = config["backbone"]
    assert (backbone["name"], backbone["image_model"], backbone["text_model"]) == ("lseg-vit", "tiny", "tiny")
    assert backbone["pyramid"] == "dpt"
    assert (config["decoder"]["reassemble"], config["decoder"]["readout"]) == ("dpt", "project")
    assert config["decoder"]["reassemble_widths"] == [8, 16, 32, 32]
    converted = release_tools.load_converted(tmp_path / "lseg.pt")
    torch.testing.assert_close(release_tools.logits(converted, images), expected, rtol=1e-4, atol=1e-4)
    # LSeg's full forward ends with output_conv: x2 bilinear, align_corners=True
    full = F.interpolate(expected, scale_factor=2, mode="bilinear", align_corners=True)
    torch.testing.assert_close(converted.predict(images), full, rtol=1e-4, atol=1e-4)


def test_a_wrong_or_incomplete_file_is_refused_naming_the_format(release_tools, tmp_path: Path) -> None:
    from vltk_plugins.common.releases.convert import convert_release

    _, release, upstream = _fabricate(release_tools, tmp_path)
    without_encoder = {key: value for key, value in upstream.items() if not key.startswith(_P)}
    torch.save({"state_dict": without_encoder, "hyper_parameters": HYPER}, tmp_path / "clip_only.ckpt")
    with pytest.raises(UserError, match=r"has no net\.pretrained\.model\.patch_embed\.proj\.weight"):
        convert_release(str(tmp_path / "clip_only.ckpt"), str(tmp_path / "x.pt"), tuple(RUN))
    stripped = {key.removeprefix("net."): value for key, value in upstream.items()}
    torch.save({"state_dict": stripped}, tmp_path / "n.ckpt")
    with pytest.raises(UserError, match=r"not a LSeg release .*net\.pretrained\.model"):
        convert_release(str(tmp_path / "n.ckpt"), str(tmp_path / "x.pt"), tuple(RUN), from_format="lseg")
    upstream["net.scratch.layer1_rn.weight"] = torch.randn(16, 9, 3, 3)  # not the reassembled level-1 width
    torch.save({"state_dict": upstream, "hyper_parameters": HYPER}, tmp_path / "bad.ckpt")
    with pytest.raises(UserError, match=r"net\.scratch\.layer1_rn\.weight is \[16, 9, 3, 3\] in the file but"):
        convert_release(str(tmp_path / "bad.ckpt"), str(tmp_path / "x.pt"), tuple(RUN))
    assert not (tmp_path / "x.pt").exists()


def test_lightning_metadata_classes_are_read_without_their_framework(
    release_tools, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Lightning pickles ``hyper_parameters`` as its ``AttributeDict`` (with ``argparse``/``pathlib`` values from
    the training script): ``weights_only`` reads them through plain stand-ins, Lightning need not be installed."""
    import argparse
    import pathlib
    import sys
    import types

    from vltk_plugins.common.releases import read_release

    parsing = types.ModuleType("pytorch_lightning.utilities.parsing")
    attribute_dict = type("AttributeDict", (dict,), {"__module__": parsing.__name__})
    parsing.AttributeDict = attribute_dict
    for name in ("pytorch_lightning", "pytorch_lightning.utilities"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, parsing.__name__, parsing)
    _, release, upstream = _fabricate(release_tools, tmp_path)
    hyper = attribute_dict(HYPER, args=argparse.Namespace(base_lr=0.004), data_path=pathlib.PosixPath("/data/ade"))
    torch.save({"state_dict": upstream, "hyper_parameters": hyper, "epoch": 199}, tmp_path / "lightning.ckpt")
    torch.save({"state_dict": upstream, "trainer": attribute_dict(fn=print)}, tmp_path / "code.ckpt")
    monkeypatch.delitem(sys.modules, parsing.__name__)  # reading needs no Lightning
    read = read_release(str(tmp_path / "lightning.ckpt"))
    assert read is not None and read.meta["hyper_parameters"]["labels"] == LABELS
    assert read.meta["hyper_parameters"]["data_path"] == "/data/ade"
    assert read.meta["hyper_parameters"]["args"].base_lr == 0.004
    assert read_release(str(tmp_path / "code.ckpt")) is None  # any other global is still refused
