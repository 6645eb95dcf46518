"""The ``dinov2`` backbone: timm's blocks behind the hook/pyramid contract, registers, patch-14 -> 16 weights.

Tiny random models (4 blocks, 192 wide) for everything that runs; the real sizes are built on the meta device.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from pydantic import ValidationError

import vltk
from vltk.api import BuildContext
from vltk.errors import UserError
from vltk_plugins.backbones.dinov2.model import IMAGENET_MEAN, IMAGENET_STD, Dinov2Backbone, build_dinov2, build_trunk
from vltk_plugins.backbones.dinov2.options import Dinov2Options
from vltk_plugins.common.vit import InputSizeError


def _build(**options) -> Dinov2Backbone:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return build_dinov2(Dinov2Options(**options)).eval()


@pytest.fixture(scope="module")
def plain() -> Dinov2Backbone:
    torch.manual_seed(0)
    return _build()


@pytest.fixture(scope="module")
def registers() -> Dinov2Backbone:
    torch.manual_seed(0)
    return _build(registers=4)


@pytest.fixture(params=["plain", "registers"])
def backbone(request: pytest.FixtureRequest) -> Dinov2Backbone:
    return request.getfixturevalue(request.param)


def _meta_layout(backbone: Dinov2Backbone) -> dict[str, torch.Tensor]:
    """The backbone's weights as Meta's DINOv2 release stores them (what Rein's converter reads)."""
    state = {key: value.clone() for key, value in backbone.trunk.state_dict().items()}
    state["mask_token"] = torch.zeros(1, backbone.embed_dim)
    if "reg_token" in state:
        # Meta keeps a cls position in pos_embed and adds it inside the model; timm folds it into cls_token
        cls_position = torch.randn(1, 1, backbone.embed_dim)
        state["register_tokens"] = state.pop("reg_token")
        state["pos_embed"] = torch.cat([cls_position, state["pos_embed"]], dim=1)
        state["cls_token"] = state["cls_token"] - cls_position
    return state


def test_facts(plain: Dinov2Backbone, registers: Dinov2Backbone) -> None:
    assert (plain.embed_dim, plain.num_layers, plain.patch_size, plain.text_dim) == (192, 4, 16, None)
    assert plain.has_cls_token and plain.strides == (4, 8, 16, 32) and plain.out_indices == (0, 1, 1, 3)
    assert (plain.mean, plain.std) == (IMAGENET_MEAN, IMAGENET_STD)
    assert (plain.num_hidden_tokens, registers.num_hidden_tokens) == (0, 4)
    # DINOv2's LayerScale (init 1e-5) is kept
    assert torch.all(plain.trunk.blocks[0].ls1.gamma == 1e-5)
    assert plain.trunk.pos_embed.shape == (1, 1 + 32 * 32, 192)  # Rein's 32x32 grid at patch 16
    with pytest.raises(TypeError, match="vision-only"):
        plain.embed(torch.randn(1, 3, 32, 32))


@pytest.mark.parametrize("size", [(64, 96), (96, 64), (48, 80)])
def test_pyramid_shapes_any_multiple_of_patch(backbone: Dinov2Backbone, size: tuple[int, int]) -> None:
    height, width = size
    with torch.no_grad():
        features = backbone.forward_features(torch.randn(2, 3, height, width))
    assert [tuple(f.shape) for f in features] == [
        (2, 192, max(1, height // s), max(1, width // s)) for s in (4, 8, 16, 32)
    ]


def test_blocks_are_timms_own(backbone: Dinov2Backbone) -> None:
    """Our loop (registers taken out and put back every block) gives exactly timm's forward_features."""
    x = torch.randn(2, 3, 48, 64)
    with torch.no_grad():
        tokens, _ = backbone.forward_tokens(x)
        reference = backbone.trunk.forward_features(x)
    hidden = backbone.num_hidden_tokens
    expected = torch.cat([reference[:, :1], reference[:, 1 + hidden :]], dim=1)
    torch.testing.assert_close(backbone.trunk.norm(tokens), expected, rtol=0, atol=0)


def test_hooks_see_cls_and_patches_after_every_block(backbone: Dinov2Backbone) -> None:
    calls: list[tuple[int, tuple[int, ...]]] = []

    def record(x: torch.Tensor, layer_idx: int) -> torch.Tensor:
        calls.append((layer_idx, tuple(x.shape)))
        return x

    with torch.no_grad():
        backbone.forward_features(torch.randn(2, 3, 64, 96), block_hooks=[record])
    assert calls == [(index, (2, 1 + 4 * 6, 192)) for index in range(4)]


def test_hook_changes_pyramid(plain: Dinov2Backbone) -> None:
    x = torch.randn(1, 3, 64, 64)
    offset = torch.linspace(-1.0, 1.0, 192)

    def shift(tokens: torch.Tensor, layer_idx: int) -> torch.Tensor:
        return tokens + offset if layer_idx == 3 else tokens

    with torch.no_grad():
        base = plain.forward_features(x)
        hooked = plain.forward_features(x, block_hooks=[shift])
    # the stride-32 level is the last block's (pre-norm) patch map, max-pooled: a per-channel shift passes through
    torch.testing.assert_close(hooked[-1], base[-1] + offset.view(1, -1, 1, 1))


def test_input_size_and_patch14() -> None:
    backbone = _build()
    with pytest.raises(InputSizeError, match="multiple of the patch size 16"):
        backbone.forward_features(torch.randn(1, 3, 64, 70))
    native = _build(patch_size=14)
    assert native.patch_size == 14 and native.trunk.pos_embed.shape[1] == 1 + 37 * 37
    with torch.no_grad():
        features = native.forward_features(torch.randn(1, 3, 56, 70))
    assert [tuple(f.shape[-2:]) for f in features] == [(14, 17), (7, 8), (3, 4), (1, 2)]


def test_random_weights_warn_once() -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        build_dinov2({"variant": "tiny"})
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1 and "random weights" in messages[0] and "DINOv2" in messages[0]


def test_own_state_dict_round_trip(tmp_path, plain: Dinov2Backbone) -> None:
    path = tmp_path / "own.pt"
    torch.save({"model": plain.state_dict()}, path)  # trunk.* keys, under a wrapper
    torch.manual_seed(3)
    loaded = _build(pretrained=str(path))
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        for a, b in zip(plain.forward_features(x), loaded.forward_features(x), strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=0)


def _rein_convert_dinov2(state: dict[str, torch.Tensor], grid: int, kernel: int) -> dict[str, torch.Tensor]:
    """Rein's ``convert_dinov2`` formula (tools/convert_models, see the Rein paper notes §6), written out here as
    the independent reference: cls position kept, the square grid and the patch kernel resized with plain
    bicubic ``F.interpolate`` (align_corners=False, no antialias)."""
    import torch.nn.functional as F

    converted = dict(state)
    positions = state["pos_embed"]
    side, channels = int((positions.shape[1] - 1) ** 0.5), positions.shape[2]
    cells = positions[:, 1:, :].reshape(1, side, side, channels).permute(0, 3, 1, 2)
    cells = F.interpolate(cells, size=(grid, grid), mode="bicubic", align_corners=False)
    cells = cells.permute(0, 2, 3, 1).reshape(1, grid * grid, channels)
    converted["pos_embed"] = torch.cat((positions[:, :1, :], cells), dim=1)
    converted["patch_embed.proj.weight"] = F.interpolate(
        state["patch_embed.proj.weight"].float(), size=(kernel, kernel), mode="bicubic", align_corners=False
    )
    return converted


def test_meta_patch14_checkpoint_converted_like_rein_by_default(tmp_path) -> None:
    """Rein's conversion, bit for bit: 14x14 kernel -> 16x16 and 37x37 grid -> 32x32 by plain bicubic resizing,
    mask_token dropped; the features equal a model holding Rein's converted tensors."""
    torch.manual_seed(0)
    source = _build(patch_size=14)
    meta = _meta_layout(source)
    path = tmp_path / "dinov2_vits14_pretrain.pth"
    torch.save(meta, path)
    target = _build(pretrained=str(path))
    assert target.patch_size == 16
    rein = _rein_convert_dinov2(meta, grid=32, kernel=16)
    assert torch.equal(target.trunk.patch_embed.proj.weight, rein["patch_embed.proj.weight"])
    assert torch.equal(target.trunk.pos_embed, rein["pos_embed"])
    # Rein's own converted file (dinov2_converted.pth: Meta's layout at patch 16) loads as it is, to the same model
    converted = tmp_path / "dinov2_converted.pth"
    torch.save(rein, converted)
    again = _build(pretrained=str(converted))
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        for a, b in zip(target.forward_features(x), again.forward_features(x), strict=True):
            assert torch.equal(a, b)
    # the old default differs by a lot (kernel relative difference ~0.5): the mode matters
    flexi = _build(pretrained=str(path), patch_resample="flexi")
    kernel_rein, kernel_flexi = target.trunk.patch_embed.proj.weight, flexi.trunk.patch_embed.proj.weight
    assert (kernel_rein - kernel_flexi).norm() / kernel_flexi.norm() > 0.1


def test_meta_patch14_checkpoint_converted_with_flexi(tmp_path) -> None:
    """patch_resample=flexi: FlexiViT's pseudo-inverse kernel resize and the antialiased bicubic grid (timm)."""
    from timm.layers import resample_abs_pos_embed, resample_patch_embed

    torch.manual_seed(0)
    source = _build(patch_size=14)
    path = tmp_path / "dinov2_vits14_pretrain.pth"
    torch.save(_meta_layout(source), path)
    target = _build(pretrained=str(path), patch_resample="flexi")
    assert target.patch_size == 16
    kernel = resample_patch_embed(source.trunk.patch_embed.proj.weight, [16, 16])
    torch.testing.assert_close(target.trunk.patch_embed.proj.weight, kernel)
    grid = resample_abs_pos_embed(source.trunk.pos_embed, new_size=[32, 32], old_size=[37, 37], num_prefix_tokens=1)
    torch.testing.assert_close(target.trunk.pos_embed, grid)
    torch.testing.assert_close(target.trunk.blocks[2].attn.qkv.weight, source.trunk.blocks[2].attn.qkv.weight)


def test_meta_register_checkpoint_gives_same_model(tmp_path, registers: Dinov2Backbone) -> None:
    path = tmp_path / "dinov2_vits14_reg4_pretrain.pth"
    torch.save(_meta_layout(registers), path)
    loaded = _build(registers=4, pretrained=str(path))
    x = torch.randn(1, 3, 48, 48)
    with torch.no_grad():
        torch.testing.assert_close(loaded.forward_features(x)[0], registers.forward_features(x)[0])
    with pytest.raises(UserError, match="with register tokens; set registers=4"):
        _build(pretrained=str(path))


def test_bad_weights_are_user_errors(tmp_path, plain: Dinov2Backbone) -> None:
    state = dict(plain.trunk.state_dict())
    with pytest.raises(UserError, match="does not exist"):
        _build(pretrained=str(tmp_path / "missing.pth"))
    wrong = tmp_path / "wrong.pth"
    torch.save(dict(state, **{"norm.weight": torch.ones(7)}), wrong)
    with pytest.raises(UserError, match=r"'norm\.weight' has shape \(7,\) in the file but \(192,\)"):
        _build(pretrained=str(wrong))
    incomplete = tmp_path / "incomplete.pth"
    torch.save({k: v for k, v in state.items() if not k.startswith("blocks.3.")}, incomplete)
    with pytest.raises(UserError, match="lacks .* keys"):
        _build(pretrained=str(incomplete))
    foreign = tmp_path / "foreign.pth"
    torch.save(dict(state, **{"decode_head.conv_seg.weight": torch.ones(1)}), foreign)
    with pytest.raises(UserError, match="keys this model lacks"):
        _build(pretrained=str(foreign))


def test_options() -> None:
    with pytest.raises(ValidationError, match="multiple of patch_size"):
        Dinov2Options(image_size=500)
    options = Dinov2Options(patch_size=14, image_size=224, out_indices=[0, 1, 2, 3])
    assert Dinov2Options.model_validate(options.model_dump()) == options  # resolved configs re-validate
    assert options.grid_side() == 16 and Dinov2Options().grid_side() == 32
    with pytest.raises(ValidationError):
        Dinov2Options(patch_size=15)
    with pytest.raises(ValidationError, match="exactly 4"):
        Dinov2Options(out_indices=[1])


def test_registered_and_drop_path() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        backbone = vltk.create("backbone", "dinov2", variant="tiny", drop_path_rate=0.2, num_classes=19)
        # the factory takes the pipeline's build context and needs nothing from it
        with_context = build_dinov2(Dinov2Options(drop_path_rate=0.2), BuildContext(num_classes=19))
    for built in (backbone, with_context):
        assert isinstance(built, Dinov2Backbone)
        assert built.trunk.blocks[-1].drop_path1.drop_prob == pytest.approx(0.2)


def test_grad_checkpointing_same_gradients() -> None:
    torch.manual_seed(0)
    backbone = _build(registers=4).train()
    x = torch.randn(1, 3, 32, 48)

    def grads() -> list[torch.Tensor]:
        backbone.zero_grad()
        sum(f.square().mean() for f in backbone.forward_features(x)).backward()
        return [p.grad.clone() for p in backbone.parameters() if p.grad is not None]

    plain = grads()
    backbone.set_grad_checkpointing(True)
    checkpointed = grads()
    assert len(plain) == len(checkpointed) > 0
    for a, b in zip(plain, checkpointed, strict=True):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize(
    ("options", "facts"),
    [
        ({"variant": "large"}, (1024, 24, 16, (7, 11, 15, 23), 1 + 32 * 32)),
        ({"variant": "large", "patch_size": 14, "registers": 4}, (1024, 24, 14, (7, 11, 15, 23), 37 * 37)),
        ({"variant": "base"}, (768, 12, 16, (3, 5, 7, 11), 1 + 32 * 32)),
        ({"variant": "giant"}, (1536, 40, 16, (12, 19, 25, 39), 1 + 32 * 32)),
    ],
)
def test_big_variants_on_meta_device(options: dict, facts: tuple) -> None:
    size = (448, 448)
    with torch.device("meta"):  # weights are meaningless here: skip timm's init (seconds for ViT-g)
        backbone = Dinov2Backbone(build_trunk(Dinov2Options(**options), initialise=False), out_indices=None, label="x")
        features = backbone.forward_features(torch.empty(1, 3, *size))
    embed_dim, num_layers, patch, out_indices, positions = facts
    assert (backbone.embed_dim, backbone.num_layers, backbone.patch_size) == (embed_dim, num_layers, patch)
    assert backbone.out_indices == out_indices and backbone.trunk.pos_embed.shape[1] == positions
    assert [tuple(f.shape) for f in features] == [(1, embed_dim, size[0] // s, size[1] // s) for s in (4, 8, 16, 32)]
