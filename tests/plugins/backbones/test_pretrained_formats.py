"""``backbone.pretrained=FILE`` for every layout researchers have: each fabricated file (a tiny backbone's tensors
under the official key names, ``conftest.py``) loads strictly and gives exactly the features of the backbone
whose tensors it holds; Rein's patch conversion equals Rein's formula bit for bit; wrong files are refused
naming what was detected and what the backbone reads.
"""

from __future__ import annotations

import importlib
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from vltk.errors import UserError
from vltk_plugins.backbones.clip_resnet.model import build_clip_resnet
from vltk_plugins.backbones.dinov2.model import build_dinov2
from vltk_plugins.backbones.open_clip_vit.model import build_clip_vit, build_eva02

IMAGE = torch.randn(2, 3, 64, 96, generator=torch.Generator().manual_seed(0))


def _quiet(build, options: dict):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return build(options).eval()


def _save(path: Path, value: object) -> str:
    torch.save(value, path)
    return str(path)


def _same_features(a, b, x: torch.Tensor = IMAGE) -> None:
    with torch.no_grad():
        for left, right in zip(a.forward_features(x), b.forward_features(x), strict=True):
            assert torch.equal(left, right)


def _same_text_space(a, b, x: torch.Tensor = IMAGE) -> None:
    with torch.no_grad():
        for left, right in zip(a.embed(x), b.embed(x), strict=True):
            assert torch.equal(left, right)
        assert torch.equal(a.encode_text(["a road", "a car"]), b.encode_text(["a road", "a car"]))


def _warnings_of(build, options: dict) -> tuple[object, list[str]]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        built = build(options).eval()
    return built, [str(w.message) for w in caught]


# ------------------------------------------------------------------------------------------------------ EVA02
def test_eva02_mim_release_fused_layout(tmp_path: Path, fabricate: SimpleNamespace) -> None:
    """BAAI's EVA02-Ti/S MIM layout (fused qkv + q_bias/v_bias, mlp.w12/w3, mask_token, lm_head, RoPE tables)
    under 'model': the pyramid is the source's; text tower and projection stay random, each with a warning."""
    torch.manual_seed(0)
    source = _quiet(build_eva02, {"variant": "tiny"})
    official = fabricate.baai_eva02_mim(source.visual.trunk.state_dict(), head_dim=64)
    assert {"blocks.0.attn.qkv.weight", "blocks.0.attn.q_bias", "blocks.0.mlp.w12.weight", "norm.weight"} <= set(
        official
    )
    path = _save(tmp_path / "eva02_Ti_pt_in21k_p14.pt", {"model": official})
    torch.manual_seed(1)
    loaded, messages = _warnings_of(build_eva02, {"variant": "tiny", "pretrained": path})
    assert [m.split(";")[0].split("' ")[-1] for m in messages] == ["has no text tower", "has no image-text projection"]
    _same_features(source, loaded)
    assert torch.equal(loaded.visual.trunk.fc_norm.weight, source.visual.trunk.fc_norm.weight)  # BAAI's final norm


@pytest.mark.parametrize("wrapper", ["plain", "module"])
def test_eva02_rein_converted_subln_layout(
    tmp_path: Path, fabricate: SimpleNamespace, subln_eva02, wrapper: str
) -> None:
    """Rein's eva02_L_converted.pth (BAAI's EVA02-L names: q/k/v_proj + q_bias/v_bias, inner_attn_ln, w1..w3,
    ffn_ln; mask_token; no wrapper) and the same under DeepSpeed's 'module' key: the source's exact pyramid."""
    torch.manual_seed(0)
    source = _quiet(build_eva02, {"variant": "tiny"})
    official = fabricate.baai_eva02_mim(source.visual.trunk.state_dict(), head_dim=32)
    assert {"blocks.0.attn.q_proj.weight", "blocks.0.attn.q_bias", "blocks.0.attn.inner_attn_ln.weight"} <= set(
        official
    )
    assert {"blocks.0.mlp.w1.weight", "blocks.0.mlp.w3.weight", "blocks.0.mlp.ffn_ln.weight"} <= set(official)
    path = _save(tmp_path / "eva02_L_converted.pth", official if wrapper == "plain" else {"module": official})
    torch.manual_seed(1)
    loaded = _quiet(build_eva02, {"variant": "tiny", "pretrained": path})
    _same_features(source, loaded)
    assert torch.equal(loaded.visual.trunk.norm.weight, source.visual.trunk.norm.weight)


def test_eva02_clip_release(tmp_path: Path, fabricate: SimpleNamespace, subln_eva02) -> None:
    """BAAI's EVA02-CLIP layout (visual.blocks.N..., visual.head, OpenAI text layout): the whole model, strictly,
    without a warning: pyramid, image and dense embeddings and text embeddings are the source's."""
    torch.manual_seed(0)
    source = _quiet(build_eva02, {"variant": "tiny"})
    release = fabricate.eva02_clip_release(source.open_clip_model().state_dict(), head_dim=32)
    assert {"visual.blocks.0.attn.q_proj.weight", "visual.head.weight", "transformer.resblocks.0.ln_1.weight"} <= set(
        release
    )
    path = _save(tmp_path / "EVA02_CLIP_tiny_psz16.pt", release)
    torch.manual_seed(1)
    loaded, messages = _warnings_of(build_eva02, {"variant": "tiny", "pretrained": path})
    assert messages == []
    _same_features(source, loaded)
    _same_text_space(source, loaded)


def test_eva02_timm_and_open_clip_layouts(tmp_path: Path) -> None:
    """timm's bare ``Eva`` state dict and open_clip's image tower (``trunk.*``, ``head.*``) load too."""
    torch.manual_seed(0)
    source = _quiet(build_eva02, {"variant": "tiny"})
    timm_file = _save(tmp_path / "timm.pt", source.visual.trunk.state_dict())
    tower_file = _save(tmp_path / "tower.pt", source.visual.state_dict())
    for path in (timm_file, tower_file):
        torch.manual_seed(1)
        loaded = _quiet(build_eva02, {"variant": "tiny", "pretrained": path})
        _same_features(source, loaded)
    assert torch.equal(loaded.visual.head.proj.weight, source.visual.head.proj.weight)  # the tower has its projection


def _rein_eva02_formula(state: dict[str, torch.Tensor], grid: int, kernel: int) -> dict[str, torch.Tensor]:
    """Rein's ``convert_eva2_512x512.py`` (paper notes §6), the independent reference: one extra token kept, the
    grid resized with plain bicubic ``F.interpolate``; the kernel likewise."""
    converted = dict(state)
    positions = state["pos_embed"]
    side, channels = int((positions.shape[-2] - 1) ** 0.5), positions.shape[-1]
    cells = positions[:, 1:].reshape(-1, side, side, channels).permute(0, 3, 1, 2)
    cells = F.interpolate(cells.float(), size=(grid, grid), mode="bicubic", align_corners=False)
    cells = cells.permute(0, 2, 3, 1).flatten(1, 2)
    converted["pos_embed"] = torch.cat((positions[:, :1], cells), dim=1)
    converted["patch_embed.proj.weight"] = F.interpolate(
        state["patch_embed.proj.weight"].float(), size=(kernel, kernel), mode="bicubic", align_corners=False
    )
    return converted


def test_eva02_patch14_release_converted_like_rein(tmp_path: Path, fabricate: SimpleNamespace) -> None:
    """An EVA02 release at patch 14 (16x16 grid) into the patch-16 model: kernel and grid are exactly Rein's
    conversion; with image_size=512 the grid is Rein's 32x32 and a file already converted loads as it is."""
    torch.manual_seed(0)
    source = _quiet(build_eva02, {"variant": "tiny", "patch_size": 14})
    official = fabricate.baai_eva02_mim(source.visual.trunk.state_dict(), head_dim=64)
    path = _save(tmp_path / "eva02_Ti_p14.pt", {"model": official})
    target = _quiet(build_eva02, {"variant": "tiny", "patch_size": 16, "image_size": 512, "pretrained": path})
    rein = _rein_eva02_formula(official, grid=32, kernel=16)
    trunk = target.visual.trunk
    assert torch.equal(trunk.patch_embed.proj.weight, rein["patch_embed.proj.weight"])
    assert torch.equal(trunk.pos_embed, rein["pos_embed"]) and trunk.pos_embed.shape == (1, 1 + 32 * 32, 192)
    converted = _save(tmp_path / "eva02_converted.pth", rein)  # what Rein's script writes
    again = _quiet(build_eva02, {"variant": "tiny", "patch_size": 16, "image_size": 512, "pretrained": converted})
    _same_features(target, again, torch.randn(1, 3, 512, 512))
    flexi = _quiet(build_eva02, {"variant": "tiny", "patch_resample": "flexi", "pretrained": path})
    assert not torch.equal(flexi.visual.trunk.patch_embed.proj.weight, trunk.patch_embed.proj.weight)


def test_eva02_image_size_must_fit_the_patch() -> None:
    with pytest.raises(UserError, match="image_size 500 is not a multiple of the patch size 16; e.g. image_size=496"):
        build_eva02({"variant": "tiny", "image_size": 500})


# --------------------------------------------------------------------------------------------- OpenAI CLIP
@pytest.mark.parametrize("container", ["torchscript", "state_dict"])
def test_openai_clip_vit(tmp_path: Path, fabricate: SimpleNamespace, container: str) -> None:
    """OpenAI's ViT-*.pt (a TorchScript archive) and a state dict saved from one (with input_resolution,
    context_length, vocab_size, which open_clip drops): the whole model, strictly."""
    torch.manual_seed(0)
    source = _quiet(build_clip_vit, {"variant": "tiny"})
    release = fabricate.openai_release(source.open_clip_model().state_dict(), image_size=224)
    assert {"transformer.resblocks.0.attn.in_proj_weight", "visual.proj", "input_resolution"} <= set(release)
    if container == "torchscript":
        path = fabricate.save_torchscript(release, tmp_path / "ViT-tiny.pt")
    else:
        path = _save(tmp_path / "ViT-tiny.pth", {**release, "vocab_size": int(release["vocab_size"])})
    torch.manual_seed(1)
    loaded, messages = _warnings_of(build_clip_vit, {"variant": "tiny", "pretrained": path})
    assert messages == []
    _same_features(source, loaded)
    _same_text_space(source, loaded)


def test_openai_clip_resnet_torchscript(tmp_path: Path, fabricate: SimpleNamespace) -> None:
    torch.manual_seed(0)
    source = _quiet(build_clip_resnet, {"variant": "tiny"})
    release = fabricate.openai_release(source.open_clip_model().state_dict(), image_size=224)
    path = fabricate.save_torchscript(release, tmp_path / "RN-tiny.pt")
    torch.manual_seed(1)
    loaded = _quiet(build_clip_resnet, {"variant": "tiny", "pretrained": path})
    _same_features(source, loaded, IMAGE[:, :, :64, :64])
    _same_text_space(source, loaded, IMAGE[:, :, :64, :64])


# ----------------------------------------------------------------------------------------------------- DINOv2
@pytest.mark.parametrize("layout", ["meta_chunked", "timm", "mmseg", "deepspeed"])
def test_dinov2_layouts(tmp_path: Path, fabricate: SimpleNamespace, layout: str) -> None:
    """Meta's release saved with block_chunks (blocks.<chunk>.<index>), timm's state dict, an mmseg segmentor
    checkpoint (backbone.* beside decode_head.*) and DeepSpeed's 'module' wrapper: the source's pyramid."""
    torch.manual_seed(0)
    source = _quiet(build_dinov2, {"variant": "tiny"})
    trunk = source.trunk.state_dict()
    meta = fabricate.meta_dinov2_release(trunk, block_chunks=2)
    assert "blocks.1.3.ls1.gamma" in meta and "blocks.3.ls1.gamma" not in meta
    stored = {
        "meta_chunked": meta,
        "timm": trunk,
        "mmseg": {
            "meta": {"mmseg_version": "1.2.2"},
            "state_dict": {
                **{"backbone." + k: v for k, v in meta.items()},
                "decode_head.conv_seg.weight": torch.ones(3),
            },
        },
        "deepspeed": {"module": fabricate.meta_dinov2_release(trunk)},
    }[layout]
    path = _save(tmp_path / f"{layout}.pth", stored)
    torch.manual_seed(1)
    loaded = _quiet(build_dinov2, {"variant": "tiny", "pretrained": path})
    _same_features(source, loaded)


# ------------------------------------------------------------------------------------------------ wrong files
def test_files_of_another_backbone_are_refused_naming_both(tmp_path: Path, fabricate: SimpleNamespace) -> None:
    torch.manual_seed(0)
    dinov2 = _save(tmp_path / "dinov2.pth", fabricate.meta_dinov2_release(_quiet(build_dinov2, {}).trunk.state_dict()))
    with pytest.raises(
        UserError, match=r"holds DINOv2 \(Meta release.*\) weights, which backbone dinov2 reads, not eva02"
    ) as error:
        build_eva02({"variant": "tiny", "pretrained": dinov2})
    assert "EVA02-CLIP (BAAI release" in str(error.value) and "timm Eva" in str(error.value)  # what eva02 reads
    eva = _quiet(build_eva02, {"variant": "tiny"})
    official = _save(tmp_path / "eva02.pt", fabricate.baai_eva02_mim(eva.visual.trunk.state_dict(), head_dim=64))
    with pytest.raises(UserError, match=r"holds EVA02 \(BAAI MIM release.*which backbone eva02 reads, not dinov2"):
        build_dinov2({"variant": "tiny", "pretrained": official})
    resnet = _quiet(build_clip_resnet, {"variant": "tiny"}).open_clip_model().state_dict()
    archive = fabricate.save_torchscript(fabricate.openai_release(resnet, image_size=224), tmp_path / "RN50.pt")
    with pytest.raises(UserError, match=r"holds OpenAI CLIP ResNet .* which backbone clip-resnet reads, not clip-vit"):
        build_clip_vit({"variant": "tiny", "pretrained": archive})


def test_unknown_layout_names_the_expected_ones(tmp_path: Path) -> None:
    path = _save(
        tmp_path / "sam_vit_h.pth", {"image_encoder.neck.0.weight": torch.ones(2), "prompt_encoder.x": torch.ones(1)}
    )
    with pytest.raises(
        UserError, match=r"is in no weight layout vltk knows \(first keys: 'image_encoder\.neck\.0\.weight'"
    ) as error:
        build_dinov2({"variant": "tiny", "pretrained": path})
    assert "pass a file dinov2 reads (DINOv2 (Meta release or Rein's dinov2_converted.pth); timm DINOv2" in str(
        error.value
    )


def test_shape_mismatches_list_the_first_keys_with_both_shapes(tmp_path: Path, fabricate: SimpleNamespace) -> None:
    """An EVA02-S file (384 wide) for EVA02-Ti (192): the first offending keys, both shapes, the file's names."""
    small = _quiet(build_eva02, {"variant": "small"})
    path = _save(tmp_path / "eva02_S.pt", fabricate.baai_eva02_mim(small.visual.trunk.state_dict(), head_dim=64))
    with pytest.raises(UserError) as error:
        build_eva02({"variant": "tiny", "pretrained": path})
    message = str(error.value)
    assert "does not fit this model (" in message and message.count("in the file but") == 5
    assert "'visual.trunk.cls_token' (file: 'cls_token') has shape (1, 1, 384) in the file but (1, 1, 192)" in message


# ------------------------------------------------------------------------------- released sizes, on meta
def _released(fabricate: SimpleNamespace, kind: str, target: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The released file of ``kind`` with the architecture's shapes (meta tensors: names and shapes only)."""
    trunk = {key[len("visual.trunk.") :]: value for key, value in target.items() if key.startswith("visual.trunk.")}
    return {
        "rein-eva02-L": lambda: fabricate.baai_eva02_mim(trunk, head_dim=64),
        "eva02-clip": lambda: fabricate.eva02_clip_release(target, head_dim=64),
        "openai": lambda: fabricate.openai_release(target, image_size=224),
        "meta-dinov2": lambda: fabricate.meta_dinov2_release(target, block_chunks=4),
    }[kind]()


@pytest.mark.parametrize(
    ("backbone", "options", "kind", "missing"),
    [
        (
            "eva02",
            {"variant": "large", "patch_size": 16, "image_size": 512},
            "rein-eva02-L",
            {"text tower", "image-text projection"},
        ),
        ("eva02", {"variant": "large"}, "eva02-clip", set()),  # EVA02_CLIP_L_psz14_s4B.pt
        ("eva02", {"variant": "base"}, "eva02-clip", set()),  # EVA02_CLIP_B_psz16_s8B.pt
        ("clip-vit", {"model": "ViT-B-16-quickgelu"}, "openai", set()),  # ViT-B-16.pt
        ("clip-vit", {"model": "ViT-L-14-quickgelu"}, "openai", set()),  # ViT-L-14.pt
        ("clip-resnet", {"variant": "RN50"}, "openai", set()),  # RN50.pt
        ("dinov2", {"variant": "large", "patch_size": 14}, "meta-dinov2", set()),  # dinov2_vitl14_pretrain.pth
        ("dinov2", {"variant": "giant", "patch_size": 14}, "meta-dinov2", set()),  # SwiGLU w12/w3, chunked blocks
    ],
)
def test_released_sizes_map_onto_the_architectures(
    fabricate: SimpleNamespace, backbone: str, options: dict, kind: str, missing: set[str]
) -> None:
    """Each release's key names at the real sizes map onto exactly the keys and shapes of the architecture
    vltk builds for it (nothing unknown, nothing missing but the optional parts the release lacks)."""
    from vltk_plugins.backbones.convert import CONVERTIBLE
    from vltk_plugins.common.weights import Checkpoint, prepare_checkpoint
    from vltk_plugins.common.weights.read import OPENAI_EXTRA_KEYS

    module, function = CONVERTIBLE[backbone][1].split(":")
    target, spec = getattr(importlib.import_module(module), function)(CONVERTIBLE[backbone][0](**options))
    released = _released(fabricate, kind, target)
    extras = {key: released.pop(key) for key in OPENAI_EXTRA_KEYS if key in released}  # as read_checkpoint does
    checkpoint = Checkpoint(path=f"{kind}.pt", state=released, container="torch.save", extras=extras)
    prepared = prepare_checkpoint(checkpoint, target, spec)
    assert {part.name for part in prepared.missing} == missing
    assert all(prepared.state[key].shape == target[key].shape for key in prepared.state)
