"""The ``clip-resnet`` backbone: pyramid, DenseCLIP's dense attention pool, the CLIP-the-Gap split, BN/trainable
policy, text side and weight loading. Tiny random models, plus RN50 at 512 once (B=1) for the paper's shapes."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError

import vltk
from vltk.errors import UserError
from vltk_plugins.adapters.finetune.model import FrozenAdapter, FullAdapter
from vltk_plugins.backbones.clip_resnet.model import (
    ClipResNetBackbone,
    build_clip_resnet,
    dense_attention_pool,
    interpolate_position_embedding,
)
from vltk_plugins.backbones.clip_resnet.options import ClipResNetOptions


def _build(**options: object) -> ClipResNetBackbone:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return build_clip_resnet({"variant": "tiny", **options})


@pytest.fixture(scope="module")
def tiny() -> ClipResNetBackbone:
    torch.manual_seed(0)
    return _build().eval()


def test_facts(tiny: ClipResNetBackbone) -> None:
    assert tiny.out_channels == (32, 64, 128, 256)
    assert (tiny.embed_dim, tiny.num_layers, tiny.patch_size, tiny.text_dim) == (256, 4, 32, 64)
    assert not tiny.has_cls_token and not tiny.is_vit
    assert (tiny.stride_a, tiny.channels_a, tiny.channels_b) == (16, 128, 256)
    assert tiny.strides == (4, 8, 16, 32)
    assert tiny.mean == (0.48145466, 0.4578275, 0.40821073)


@pytest.mark.parametrize("size", [(224, 224), (96, 160)])
def test_pyramid_shapes(tiny: ClipResNetBackbone, size: tuple[int, int]) -> None:
    height, width = size
    levels = tiny.forward_features(torch.randn(2, 3, height, width))
    expected = [(2, c, height // s, width // s) for c, s in zip(tiny.out_channels, (4, 8, 16, 32), strict=True)]
    assert [tuple(level.shape) for level in levels] == expected


def test_rn50_embeddings_at_512() -> None:
    """DenseCLIP's shapes: x4 B x 2048 x 16 x 16, z̄ B x 1024, z B x 1024 x 16 x 16 (random weights)."""
    torch.manual_seed(0)
    with warnings.catch_warnings(), torch.device("meta"):
        warnings.simplefilter("ignore")
        backbone = build_clip_resnet({"variant": "RN50"})
    # Materialise and initialise the image tower only: the 63M-parameter text tower is not needed here.
    backbone.to_empty(device="cpu").eval()
    for module in backbone.visual.modules():
        if isinstance(module, (torch.nn.Conv2d, torch.nn.BatchNorm2d, torch.nn.Linear)):
            module.reset_parameters()
    torch.nn.init.normal_(backbone.visual.attnpool.positional_embedding, std=2048**-0.5)
    assert backbone.out_channels == (256, 512, 1024, 2048) and backbone.text_dim == 1024
    with torch.no_grad():
        levels, global_embedding, dense = backbone.forward_with_embeddings(torch.randn(1, 3, 512, 512))
    assert tuple(levels[3].shape) == (1, 2048, 16, 16)
    assert tuple(global_embedding.shape) == (1, 1024)
    assert tuple(dense.shape) == (1, 1024, 16, 16)


def test_rn101_facts_on_meta() -> None:
    with warnings.catch_warnings(), torch.device("meta"):
        warnings.simplefilter("ignore")
        backbone = build_clip_resnet({"variant": "RN101"})
    assert backbone.out_channels == (256, 512, 1024, 2048)
    assert (backbone.text_dim, backbone.channels_a, backbone.channels_b) == (512, 1024, 2048)
    assert len(backbone.visual.layer3) == 23


def test_dense_pool_at_7x7_is_stock_attnpool(tiny: ClipResNetBackbone) -> None:
    """A 224 input gives a 7x7 layer4 grid: the position embedding is untouched and token 0 is CLIP's output."""
    positional = tiny.visual.attnpool.positional_embedding
    assert interpolate_position_embedding(positional, (7, 7)) is positional
    with torch.no_grad():
        x4 = tiny.forward_features(torch.randn(2, 3, 224, 224))[3]
        global_embedding, dense = dense_attention_pool(tiny.visual.attnpool, x4)
        stock = tiny.visual.attnpool(x4)
    torch.testing.assert_close(global_embedding, stock, rtol=0, atol=0)
    assert tuple(dense.shape) == (2, 64, 7, 7)
    with torch.no_grad():  # the RoI path (CLIP the Gap) queries with token 0 alone: stock CLIP, no dense map
        roi_features = torch.randn(3, x4.shape[1], 7, 7)
        torch.testing.assert_close(tiny.pool(roi_features), tiny.visual.attnpool(roi_features), rtol=1e-5, atol=1e-6)
        assert dense_attention_pool(tiny.visual.attnpool, roi_features, global_only=True)[1] is None


def test_dense_tokens_are_c_proj_of_attention_outputs(tiny: ClipResNetBackbone) -> None:
    """Token (i, j) of z is the pooled output of query token 1 + i*w + j (hand-written multi-head attention)."""
    pool = tiny.visual.attnpool
    x = torch.randn(1, 256, 3, 5)
    with torch.no_grad():
        _, dense = dense_attention_pool(pool, x)
        tokens = x.flatten(2).transpose(1, 2)[0]  # [15, C]
        tokens = torch.cat([tokens.mean(0, keepdim=True), tokens]) + interpolate_position_embedding(
            pool.positional_embedding, (3, 5)
        )
        heads = pool.num_heads
        q, k, v = pool.q_proj(tokens), pool.k_proj(tokens), pool.v_proj(tokens)
        split = lambda t: t.reshape(16, heads, -1).transpose(0, 1)  # noqa: E731
        attention = torch.softmax(split(q) @ split(k).transpose(1, 2) / (256 // heads) ** 0.5, dim=-1)
        out = pool.c_proj((attention @ split(v)).transpose(0, 1).reshape(16, 256))
    torch.testing.assert_close(dense[0].flatten(1).T, out[1:], rtol=1e-4, atol=1e-5)


def test_position_interpolation_keeps_class_position() -> None:
    positional = torch.randn(1 + 7 * 7, 12)
    resized = interpolate_position_embedding(positional, (4, 10))
    assert tuple(resized.shape) == (1 + 40, 12)
    torch.testing.assert_close(resized[0], positional[0])
    grid = positional[1:].T.reshape(1, 12, 7, 7)
    expected = F.interpolate(grid, size=(4, 10), mode="bilinear", align_corners=False).reshape(12, 40).T
    torch.testing.assert_close(resized[1:], expected)
    with pytest.raises(ValueError, match="square"):
        interpolate_position_embedding(torch.randn(11, 4), (2, 2))


def test_forward_with_embeddings_is_one_pass_of_both(tiny: ClipResNetBackbone) -> None:
    x = torch.randn(1, 3, 128, 192)
    with torch.no_grad():
        levels, global_embedding, dense = tiny.forward_with_embeddings(x)
        expected_levels = tiny.forward_features(x)
        expected_global, expected_dense = tiny.embed(x)
    for got, want in zip(levels, expected_levels, strict=True):
        torch.testing.assert_close(got, want)
    torch.testing.assert_close(global_embedding, expected_global)
    torch.testing.assert_close(dense, expected_dense)
    assert tuple(dense.shape) == (1, 64, 4, 6)


def test_detection_split(tiny: ClipResNetBackbone) -> None:
    """V_a on a 600x1067 image -> stride 16 (37 x 66); 14x14 RoIs -> layer4 7x7 -> pool = CLIP's attnpool."""
    with torch.no_grad():
        assert tuple(tiny.stage_a(torch.randn(1, 3, 600, 1067)).shape) == (1, 128, 37, 66)
        rois = tiny.stage_b(torch.randn(3, tiny.channels_a, 14, 14))
        assert tuple(rois.shape) == (3, 256, 7, 7)
        pooled = tiny.pool(rois)
        torch.testing.assert_close(pooled, tiny.visual.attnpool(rois), rtol=1e-5, atol=1e-6)
        image = torch.randn(2, 3, 224, 224)
        torch.testing.assert_close(tiny.pool(tiny.stage_b(tiny.stage_a(image))), tiny.embed(image)[0])


def test_bn_frozen_keeps_running_stats_in_train_mode() -> None:
    torch.manual_seed(0)
    backbone = _build(bn="frozen").train()
    norms = [m for m in backbone.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    before = [(m.running_mean.clone(), m.running_var.clone()) for m in norms]
    backbone.forward_features(torch.randn(2, 3, 64, 64) * 3 + 1)
    assert all(not m.training for m in norms)
    assert all(not p.requires_grad for m in norms for p in m.parameters())
    for module, (mean, var) in zip(norms, before, strict=True):
        torch.testing.assert_close(module.running_mean, mean, rtol=0, atol=0)
        torch.testing.assert_close(module.running_var, var, rtol=0, atol=0)
    # an adapter that unfreezes everything does not undo it once the pipeline calls restrict_trainable()
    FullAdapter().setup(backbone)
    backbone.restrict_trainable()
    assert all(not p.requires_grad for m in norms for p in m.parameters())

    trained = _build(bn="train").train()
    mean = trained.visual.bn1.running_mean.clone()
    trained.forward_features(torch.randn(2, 3, 64, 64) * 3 + 1)
    assert not torch.equal(trained.visual.bn1.running_mean, mean)


def test_trainable_restriction_wins_over_full_adapter() -> None:
    backbone = _build(trainable=["layer3", "layer4", "attnpool"])
    FullAdapter().setup(backbone)  # sets requires_grad on every backbone parameter
    backbone.restrict_trainable()
    trainable = {name.split(".")[1] for name, p in backbone.named_parameters() if p.requires_grad}
    assert trainable == {"layer3", "layer4", "attnpool"}
    FrozenAdapter().setup(backbone)
    backbone.restrict_trainable()
    assert not any(p.requires_grad for p in backbone.parameters())


def test_pipeline_applies_trainable_and_refuses_vit_adapters() -> None:
    config = {
        "backbone": {"name": "clip-resnet", "variant": "tiny", "trainable": ["layer4", "attnpool"]},
        "adapter": "full",
        "decoder": "fpn",
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = vltk.build_model(config, class_names=["a", "b"])
        assert model.decoder.in_channels == [32, 64, 128, 256]  # per-level widths, no prompter
        trainable = {name.split(".")[1] for name, p in model.backbone.named_parameters() if p.requires_grad}
        assert trainable == {"layer4", "attnpool"}
        with pytest.raises(UserError, match="CNN"):
            vltk.build_model({**config, "adapter": "rein"}, class_names=["a", "b"])


def test_block_hooks_see_stage_tokens(tiny: ClipResNetBackbone) -> None:
    seen: list[tuple[int, tuple[int, ...]]] = []

    def record(tokens: torch.Tensor, index: int) -> torch.Tensor:
        seen.append((index, tuple(tokens.shape)))
        return tokens

    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        plain = tiny.forward_features(x)
        hooked = tiny.forward_features(x, block_hooks=(record,))
        zeroed = tiny.forward_features(x, block_hooks=(lambda t, i: t * 0 if i == 3 else t,))
    assert seen == [(0, (1, 256, 32)), (1, (1, 64, 64)), (2, (1, 16, 128)), (3, (1, 4, 256))]
    torch.testing.assert_close(hooked[3], plain[3])
    assert torch.count_nonzero(zeroed[3]) == 0
    with pytest.raises(ValueError, match="stage 0"):
        tiny.forward_features(x, block_hooks=(lambda t, i: t[:, :1],))


def test_out_indices_are_fixed(tiny: ClipResNetBackbone) -> None:
    x = torch.randn(1, 3, 64, 64)
    assert len(tiny.forward_features(x, out_indices=[0, 1, 2, 3])) == 4
    with pytest.raises(UserError, match="layer1..layer4"):
        tiny.forward_features(x, out_indices=[0, 0, 1, 3])


def test_text_side(tiny: ClipResNetBackbone) -> None:
    tower = tiny.text_tower()
    assert not any(p.requires_grad for p in tower.parameters()) and not tower.training
    assert not any(name.startswith("text.") for name, _ in tiny.named_parameters())
    embeddings = tiny.encode_text(["a photo of a cat.", "road"])
    assert tuple(embeddings.shape) == (2, 64)
    assert tiny.tokenizer()(["road"]).shape == (1, 77)
    keys = tiny.state_dict().keys()
    assert any(key.startswith("text.") for key in keys) and "visual.attnpool.c_proj.weight" in keys


def test_pretrained_round_trip_and_errors(tmp_path, tiny: ClipResNetBackbone) -> None:
    path = tmp_path / "tiny.pt"
    torch.save(tiny.state_dict(), path)
    loaded = build_clip_resnet({"variant": "tiny", "pretrained": str(path)}).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded.embed(x)[1], tiny.embed(x)[1])
        torch.testing.assert_close(loaded.encode_text(["car"]), tiny.encode_text(["car"]))
    with pytest.raises(UserError, match="does not exist"):
        build_clip_resnet({"variant": "tiny", "pretrained": str(tmp_path / "missing.pt")})
    state = {k: v for k, v in tiny.state_dict().items() if k != "visual.attnpool.c_proj.bias"}
    state["visual.layer1.0.conv1.weight"] = torch.zeros(3, 3, 1, 1)
    torch.save(state, tmp_path / "bad.pt")
    with pytest.raises(UserError, match="does not fit"):
        build_clip_resnet({"variant": "tiny", "pretrained": str(tmp_path / "bad.pt")})


def test_random_weights_warn() -> None:
    with pytest.warns(UserWarning, match="random weights"):
        build_clip_resnet({"variant": "tiny"})


def test_options() -> None:
    options = ClipResNetOptions()
    assert (options.variant, options.bn, options.trainable, options.quick_gelu) == ("RN50", "train", None, True)
    with pytest.raises(ValidationError, match="twice"):
        ClipResNetOptions(trainable=["layer3", "layer3"])
    with pytest.raises(ValidationError):
        ClipResNetOptions(trainable=["layer5"])
    with pytest.raises(ValidationError):
        ClipResNetOptions(variant="RN50x4")
    assert "clip-resnet" in vltk.list_components("backbone")
