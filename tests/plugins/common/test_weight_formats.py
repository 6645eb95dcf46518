"""The layout table and its helpers (``vltk_plugins.common.weights.{read,formats,resample,load}``), on key names
and small tensors. End to end, per backbone and per released layout: ``tests/plugins/backbones``."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from vltk.errors import UserError
from vltk_plugins.common.weights import (
    Checkpoint,
    check_fit,
    detect_format,
    read_checkpoint,
    rein_resize_grid,
    rein_resize_kernel,
    resample_spatial,
)
from vltk_plugins.common.weights.formats import (
    FORMATS,
    convert_meta_dinov2,
    eva02_tower_names,
    formats_for,
    open_clip_text_layout,
)
from vltk_plugins.common.weights.read import is_torchscript

ONE = torch.ones(1)


def _checkpoint(*keys: str, container: str = "torch.save", extras: dict | None = None) -> Checkpoint:
    return Checkpoint(path="w.pt", state=dict.fromkeys(keys, ONE), container=container, extras=extras or {})


# -------------------------------------------------------------------------------------------------- reading
def test_read_checkpoint_peels_wrappers_and_prefixes(tmp_path: Path) -> None:
    """mmseg's {'meta', 'state_dict'} with backbone.* beside decode_head.*, DDP's module., vltk's trunk.*."""
    inner = {"module.backbone.trunk.cls_token": ONE, "module.backbone.trunk.w": ONE}
    stored = {"meta": {"epoch": 3}, "state_dict": {"model": {**inner, "module.decode_head.conv_seg.weight": ONE}}}
    path = tmp_path / "segmentor.pth"
    torch.save(stored, path)
    checkpoint = read_checkpoint(str(path), "test")
    assert set(checkpoint.state) == {"cls_token", "w"} and checkpoint.container == "torch.save"
    assert checkpoint.unwrapped == (
        "'state_dict'",
        "'model'",
        "prefix 'module.'",
        "prefix 'backbone.' (1 keys of decode_head left out)",
        "prefix 'trunk.'",
    )
    assert checkpoint.describe().startswith("torch.save file, under 'state_dict', 'model', prefix 'module.'")
    assert not is_torchscript(path)


def test_read_checkpoint_keeps_openai_scalars_apart(tmp_path: Path) -> None:
    path = tmp_path / "openai.pt"
    torch.save({"visual.proj": ONE, "input_resolution": 224, "vocab_size": torch.tensor(49408)}, path)
    checkpoint = read_checkpoint(str(path), "test")
    assert set(checkpoint.state) == {"visual.proj"} and set(checkpoint.extras) == {"input_resolution", "vocab_size"}
    torch.save({"input_resolution": 224}, path)  # nothing but scalars is not a state dict
    with pytest.raises(UserError, match="does not hold a state dict of tensors"):
        read_checkpoint(str(path), "test")


class _TrainingState:
    """Stands for what training scripts save beside the weights (optimizer state, message hubs, configs)."""


def test_read_checkpoint_explains_a_training_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "iter_40000.pth"
    torch.save({"meta": {"hub": _TrainingState()}, "state_dict": {"backbone.w": ONE}}, path)
    with pytest.raises(
        UserError,
        match=r"holds Python objects besides tensors: .*Unsupported global.*_TrainingState\); save the weights alone",
    ):
        read_checkpoint(str(path), "test")


# ------------------------------------------------------------------------------------------------ detection
EVA_BLOCK = "blocks.0.attn.q_proj.weight", "blocks.0.attn.q_bias", "blocks.0.mlp.w1.weight", "patch_embed.proj.weight"
LAYOUTS: list[tuple[str, Checkpoint]] = [
    ("openai-clip-vit", _checkpoint("visual.conv1.weight", "visual.proj", "text_projection", container="TorchScript")),
    ("openai-clip-resnet", _checkpoint("visual.attnpool.c_proj.weight", "visual.layer1.0.w", extras={"vocab_size": 1})),
    ("eva02-clip", _checkpoint(*("visual." + key for key in EVA_BLOCK), "text_projection")),
    ("eva02", _checkpoint(*EVA_BLOCK, "mask_token", "rope.freqs_cos")),
    ("eva02", _checkpoint("patch_embed.proj.weight", "blocks.0.attn.qkv.weight", "blocks.0.mlp.w12.weight")),  # Ti/S
    ("open_clip-eva02", _checkpoint("visual.trunk.blocks.0.attn.qkv.weight", "text.ln_final.weight")),
    ("timm-eva", _checkpoint("patch_embed.proj.weight", "blocks.0.attn.q_proj.weight", "blocks.0.mlp.fc1_g.weight")),
    ("open_clip-vit", _checkpoint("visual.conv1.weight", "visual.class_embedding", "text.ln_final.weight")),
    ("open_clip-resnet", _checkpoint("attnpool.c_proj.weight", "layer1.0.conv1.weight")),
    ("dinov2-meta", _checkpoint("cls_token", "patch_embed.proj.weight", "blocks.0.3.ls1.gamma")),
    (
        "dinov2-meta",
        _checkpoint("cls_token", "patch_embed.proj.weight", "blocks.0.ls1.gamma", "blocks.0.mlp.w12.weight"),
    ),
    ("timm-dinov2", _checkpoint("cls_token", "patch_embed.proj.weight", "blocks.0.ls1.gamma")),
]


@pytest.mark.parametrize(("name", "checkpoint"), LAYOUTS, ids=[f"{name}-{i}" for i, (name, _) in enumerate(LAYOUTS)])
def test_detect_format(name: str, checkpoint: Checkpoint) -> None:
    """DINOv2-g's SwiGLU is mlp.w12 like EVA02-Ti's: LayerScale tells them apart."""
    found = detect_format(checkpoint)
    assert found is not None and found.name == name


def test_every_format_is_tested_and_belongs_to_a_backbone() -> None:
    assert sorted(candidate.name for candidate in FORMATS) == sorted({name for name, _ in LAYOUTS})
    assert {candidate.backbone for candidate in FORMATS} == {"eva02", "clip-vit", "clip-resnet", "dinov2"}
    assert [candidate.name for candidate in formats_for("dinov2")] == ["dinov2-meta", "timm-dinov2"]
    assert detect_format(_checkpoint("image_encoder.neck.0.weight")) is None


# ------------------------------------------------------------------------------------------------ conversions
def test_eva02_tower_names_subln_and_fused() -> None:
    """BAAI -> timm (timm's checkpoint filter documents the names); timm names pass through."""
    subln = dict.fromkeys(
        [
            "blocks.0.attn.q_proj.weight",
            "blocks.0.attn.q_bias",
            "blocks.0.attn.v_bias",
            "blocks.0.attn.inner_attn_ln.weight",
        ]
        + ["blocks.0.mlp.w1.bias", "blocks.0.mlp.w2.bias", "blocks.0.mlp.w3.bias", "blocks.0.mlp.ffn_ln.weight"]
        + ["norm.weight", "mask_token", "lm_head.weight", "rope.freqs_cos", "blocks.0.attn.rope.freqs_sin"],
        ONE,
    )
    converted, origins = eva02_tower_names(subln, prefix="t.", target={"t.norm.weight": ONE})
    assert sorted(converted) == [
        "t.blocks.0.attn.norm.weight",
        "t.blocks.0.attn.q_proj.bias",
        "t.blocks.0.attn.q_proj.weight",
        "t.blocks.0.attn.v_proj.bias",
        "t.blocks.0.mlp.fc1_g.bias",
        "t.blocks.0.mlp.fc1_x.bias",
        "t.blocks.0.mlp.fc2.bias",
        "t.blocks.0.mlp.norm.weight",
        "t.norm.weight",
    ]
    assert origins["t.blocks.0.attn.q_proj.bias"] == "blocks.0.attn.q_bias"
    fused = dict.fromkeys(
        ["blocks.0.attn.qkv.weight", "blocks.0.attn.q_bias", "blocks.0.mlp.w12.weight", "norm.bias"], ONE
    )
    converted, _ = eva02_tower_names(fused, prefix="", target={"fc_norm.weight": ONE})
    assert sorted(converted) == [
        "blocks.0.attn.q_bias",
        "blocks.0.attn.qkv.weight",
        "blocks.0.mlp.fc1.weight",
        "fc_norm.bias",
    ]
    timm_names = dict.fromkeys(
        ["blocks.0.attn.q_proj.bias", "blocks.0.mlp.fc1_g.weight", "blocks.0.mlp.fc1.weight"], ONE
    )
    assert sorted(eva02_tower_names(timm_names, prefix="", target={})[0]) == sorted(timm_names)


def test_open_clip_text_layout() -> None:
    """OpenAI's layout moves under text.; EVA-CLIP's text.logit_scale becomes logit_scale, reshaped to the model's."""
    state = {
        "transformer.resblocks.0.ln_1.weight": ONE,
        "text_projection": ONE,
        "visual.proj": ONE,
        "text.logit_scale": torch.ones(1),
    }
    converted, origins = open_clip_text_layout(state, {"logit_scale": torch.ones(())})
    assert set(converted) == {
        "text.transformer.resblocks.0.ln_1.weight",
        "text.text_projection",
        "visual.proj",
        "logit_scale",
    }
    assert converted["logit_scale"].shape == () and origins["logit_scale"] == "text.logit_scale"


def test_meta_dinov2_registers_fold_the_cls_position() -> None:
    positions, cls = torch.randn(1, 1 + 4, 3), torch.randn(1, 1, 3)
    state = {"pos_embed": positions, "cls_token": cls, "register_tokens": torch.zeros(1, 4, 3), "mask_token": ONE}
    converted, _ = convert_meta_dinov2(state, no_embed_class=True)
    assert set(converted) == {"pos_embed", "cls_token", "reg_token"}
    assert torch.equal(converted["cls_token"], cls + positions[:, :1]) and torch.equal(
        converted["pos_embed"], positions[:, 1:]
    )


# ------------------------------------------------------------------------------------------------ resampling
def test_rein_resizes_equal_the_formula_exactly() -> None:
    """Rein's conversion scripts, written out: bicubic, align_corners=False, no antialias, prefix kept."""
    torch.manual_seed(0)
    kernel = torch.randn(8, 3, 14, 14)
    reference = F.interpolate(kernel, size=(16, 16), mode="bicubic", align_corners=False)
    assert torch.equal(rein_resize_kernel(kernel, (16, 16)), reference)
    positions = torch.randn(1, 1 + 37 * 37, 8)
    grid = positions[:, 1:].reshape(1, 37, 37, 8).permute(0, 3, 1, 2)
    grid = (
        F.interpolate(grid, size=(32, 32), mode="bicubic", align_corners=False).permute(0, 2, 3, 1).reshape(1, 1024, 8)
    )
    assert torch.equal(rein_resize_grid(positions, (32, 32), 1), torch.cat([positions[:, :1], grid], dim=1))
    assert torch.equal(rein_resize_grid(positions[0], (32, 32), 1), torch.cat([positions[:, :1], grid], dim=1)[0])
    assert torch.equal(rein_resize_grid(positions[:, 1:], (32, 32), 0), grid)  # registers: no cls position


def test_resample_spatial_modes_and_notes() -> None:
    torch.manual_seed(0)
    state = {"patch": torch.randn(4, 3, 14, 14), "pos": torch.randn(1, 1 + 16, 4)}
    target = {"patch": torch.empty(4, 3, 16, 16), "pos": torch.empty(1, 1 + 9, 4)}
    rein, flexi = dict(state), dict(state)
    notes = resample_spatial(rein, target, "patch", "pos", (3, 3), "test", mode="rein")
    assert notes == ["patch kernel (14, 14) -> (16, 16) (rein)", "position grid 4x4 -> 3x3 (rein)"]
    resample_spatial(flexi, target, "patch", "pos", (3, 3), "test")  # the helper's default: flexi
    assert torch.equal(rein["patch"], rein_resize_kernel(state["patch"], (16, 16)))
    assert not torch.equal(rein["patch"], flexi["patch"]) and not torch.equal(rein["pos"], flexi["pos"])


# ------------------------------------------------------------------------------------------------ check_fit
def test_check_fit_lists_the_first_offending_keys_with_the_file_names() -> None:
    target = {f"k{i}": torch.empty(2) for i in range(7)}
    state = {f"k{i}": torch.ones(3) for i in range(7)}
    with pytest.raises(UserError) as error:
        check_fit(state, target, path="w.pt", label="lbl", origins={"k0": "file.k0"})
    message = str(error.value)
    assert message.startswith(
        "lbl: 'w.pt' does not fit this model (7 keys differ): 'k0' (file: 'file.k0') has shape (3,)"
    )
    assert message.count("in the file but (2,) in the model") == 5 and "'k5'" not in message
