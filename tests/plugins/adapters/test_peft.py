"""The ``lora`` and ``vpt`` adapters on every ViT backbone: Table 3 counts, identity at init, who trains.

Tiny random backbones (dinov2 4 blocks, eva02 12 blocks at 192 wide, clip-vit 4 blocks at 64 wide); the
real-size parameter counts come from adapters built with ViT-L facts and, for LoRA, from the actual EVA02-L and
DINOv2-L built on the meta device.
"""

from __future__ import annotations

import copy
import math
import warnings

import pytest
import torch
from pydantic import ValidationError
from torch.nn.utils import parametrize

import vltk
from vltk.context import BuildContext
from vltk.errors import UserError
from vltk.interfaces import count_trainable
from vltk_plugins.adapters.peft.model import attention_weights, build_lora, build_vpt
from vltk_plugins.adapters.peft.options import LoRAOptions, VPTOptions
from vltk_plugins.backbones.dinov2.model import Dinov2Backbone, build_dinov2, build_trunk
from vltk_plugins.backbones.dinov2.options import Dinov2Options
from vltk_plugins.backbones.open_clip_vit.model import build_clip_vit, build_eva02, identity_rope_for_extra

LARGE = {"embed_dim": 1024, "num_layers": 24, "patch_size": 16, "num_classes": 19}
BUILDERS = {
    "dinov2": lambda: build_dinov2({"variant": "tiny"}),
    "eva02": lambda: build_eva02({"variant": "tiny"}),
    "clip-vit": lambda: build_clip_vit({"variant": "tiny"}),
}


_PRISTINE: dict[str, torch.nn.Module] = {}


def _backbone(name: str):
    """A fresh copy of the tiny backbone ``name`` (built once per session: adapters modify what they get)."""
    if name not in _PRISTINE:
        torch.manual_seed(0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _PRISTINE[name] = BUILDERS[name]().eval()
    return copy.deepcopy(_PRISTINE[name])


def _facts(backbone) -> dict:
    return {"embed_dim": backbone.embed_dim, "num_layers": backbone.num_layers, "patch_size": backbone.patch_size}


def _forward(backbone, x, hooks=()) -> list[torch.Tensor]:
    return backbone.forward_features(x, block_hooks=hooks)


@pytest.fixture(params=sorted(BUILDERS))
def name(request: pytest.FixtureRequest) -> str:
    return request.param


# ------------------------------------------------------------------------------------------------------- LoRA
def test_lora_counts_reproduce_table3() -> None:
    # DINOv2-L 0.79M: rank 8 on q and v (the default)
    assert count_trainable(build_lora(None, BuildContext(**LARGE))) == 24 * 2 * 8 * (1024 + 1024) == 786_432
    # EVA02-L 1.18M: rank 8 on q, k and v
    assert count_trainable(build_lora({"targets": ["q", "k", "v"]}, BuildContext(**LARGE))) == 1_179_648
    assert count_trainable(build_lora({"rank": 4, "targets": ["proj"]}, BuildContext(**LARGE))) == 24 * 4 * 2048


@pytest.mark.parametrize(
    ("variant", "targets", "installed"), [("dinov2", ["q", "v"], 24), ("eva02", ["q", "k", "v"], 72)]
)
def test_lora_on_real_size_models(variant: str, targets: list[str], installed: int) -> None:
    """On the actual ViT-L graphs (meta device): fused qkv (DINOv2) and separate q/k/v projections (EVA02-L)."""
    with torch.device("meta"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        backbone = (
            Dinov2Backbone(build_trunk(Dinov2Options(variant="large"), initialise=False), out_indices=None, label="L")
            if variant == "dinov2"
            else build_eva02({"variant": "large", "patch_size": 16})
        )
        adapter = build_lora({"targets": targets}, BuildContext(**_facts(backbone)))
        adapter.setup(backbone)
        features = _forward(backbone, torch.empty(1, 3, 64, 64), (adapter,))
    assert count_trainable(adapter) == {"dinov2": 786_432, "eva02": 1_179_648}[variant]
    assert count_trainable(backbone) == 0 and len(adapter._installed) == installed
    assert features[0].shape == (1, 1024, 16, 16)


def test_lora_exact_counts_on_tiny_models(name: str) -> None:
    backbone = _backbone(name)
    adapter = build_lora({"rank": 4, "targets": ["q", "k", "v", "proj"]}, BuildContext(**_facts(backbone)))
    adapter.setup(backbone)
    width, depth = backbone.embed_dim, backbone.num_layers
    assert count_trainable(adapter) == depth * 4 * 4 * 2 * width
    assert count_trainable(backbone) == 0
    # one parametrisation per weight: the tiny models all have a fused input projection, plus proj
    assert len(adapter._installed) == depth * 2


def test_lora_is_identity_at_init_and_trains_only_its_factors(name: str) -> None:
    backbone = _backbone(name)
    x = torch.randn(2, 3, 32, 48)
    with torch.no_grad():
        before = _forward(backbone, x)
    frozen = {key: value.clone() for key, value in backbone.state_dict().items()}
    adapter = build_lora({"targets": ["q", "k", "v", "proj"]}, BuildContext(**_facts(backbone)))
    adapter.setup(backbone)
    with torch.no_grad():
        for a, b in zip(before, _forward(backbone, x, (adapter,)), strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    trainable = [n for n, p in adapter.named_parameters() if p.requires_grad]
    assert sorted(trainable) == sorted(f"lora_{ab}.{t}" for ab in "ab" for t in ("q", "k", "v", "proj"))

    optimizer = torch.optim.AdamW(adapter.parameters(), lr=1e-2)
    loss = sum(level.square().mean() for level in _forward(backbone, x, (adapter,)))
    loss.backward()
    assert all(p.grad is None for p in backbone.parameters())
    assert all(adapter.lora_b[t].grad.abs().sum() > 0 for t in adapter.targets)  # B gets gradient first
    optimizer.step()
    # the frozen weights did not move (state_dict reports the original tensors under their usual names) ...
    after = backbone.state_dict()
    assert after.keys() == frozen.keys()
    assert all(torch.equal(after[key], frozen[key]) for key in frozen)
    # ... but the effective weights and outputs did (DINOv2's LayerScale 1e-5 keeps the output change small)
    with torch.no_grad():
        for module, weight, _ in adapter._installed:
            assert not torch.equal(getattr(module, weight), module.parametrizations[weight].original)
        assert (_forward(backbone, x, (adapter,))[-1] - before[-1]).abs().max() > 0


def test_lora_fused_rows_follow_targets() -> None:
    backbone = _backbone("dinov2")
    original = backbone.trunk.blocks[1].attn.qkv.weight.detach().clone()
    adapter = build_lora({"targets": ["v"]}, BuildContext(**_facts(backbone)))
    adapter.setup(backbone)
    with torch.no_grad():
        adapter.lora_b["v"].normal_()
        delta = backbone.trunk.blocks[1].attn.qkv.weight - original
    width = backbone.embed_dim
    assert torch.count_nonzero(delta[: 2 * width]) == 0 and torch.count_nonzero(delta[2 * width :]) > 0
    expected = adapter.lora_b["v"][1] @ adapter.lora_a["v"][1] * adapter.scaling
    torch.testing.assert_close(delta[2 * width :], expected)


def test_lora_state_dict_merge_and_reload() -> None:
    backbone = _backbone("clip-vit")
    plain = {key: value.clone() for key, value in backbone.state_dict().items()}
    adapter = build_lora({"targets": ["q", "proj"], "alpha": 16}, BuildContext(**_facts(backbone)))
    adapter.setup(backbone)
    assert adapter.scaling == 2.0
    backbone.load_state_dict(plain, strict=True)  # the usual layout still loads into the adapted backbone
    with torch.no_grad():
        for parameter in adapter.lora_b.values():
            parameter.normal_(std=0.1)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        adapted = _forward(backbone, x)
        adapter.merge()
        assert not parametrize.is_parametrized(backbone.visual.transformer.resblocks[0].attn)
        torch.testing.assert_close(_forward(backbone, x), adapted)
    key = "visual.transformer.resblocks.0.attn.out_proj.weight"
    assert not torch.equal(backbone.state_dict()[key], plain[key])  # merged: the update is in the weight now


def test_lora_dropout_only_in_training() -> None:
    backbone = _backbone("dinov2")
    adapter = build_lora({"dropout": 0.5}, BuildContext(**_facts(backbone)))
    adapter.setup(backbone)
    with torch.no_grad():
        for parameter in adapter.lora_b.values():
            parameter.normal_()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        adapter.train()
        torch.manual_seed(1)
        first = _forward(backbone, x)[-1]
        second = _forward(backbone, x)[-1]
        adapter.eval()
        torch.testing.assert_close(_forward(backbone, x)[-1], _forward(backbone, x)[-1])
    assert not torch.allclose(first, second)


def test_lora_errors() -> None:
    backbone = _backbone("dinov2")
    with pytest.raises(UserError, match="built for 12 blocks"):
        build_lora(None, BuildContext(embed_dim=192, num_layers=12)).setup(backbone)
    with pytest.raises(UserError, match=r"shape \(576, 192\), expected \(192, 64\)"):
        build_lora(None, BuildContext(embed_dim=64, num_layers=4)).setup(_backbone("dinov2"))
    with pytest.raises(ValidationError):
        LoRAOptions(targets=[])
    with pytest.raises(ValidationError):
        LoRAOptions(targets=["qkv"])
    assert LoRAOptions(targets=["v", "q", "v"]).targets == ["q", "v"]
    with pytest.raises(UserError, match="no attention"):
        attention_weights(torch.nn.Linear(2, 2))
    with pytest.raises(UserError, match="refines the token blocks of a ViT"):  # the pipeline's one fit check
        vltk.build_model({"backbone": {"name": "clip-resnet", "variant": "tiny"}, "adapter": "lora", "decoder": "fpn"})


# -------------------------------------------------------------------------------------------------------- VPT
def test_vpt_count_and_init_reproduce_table3() -> None:
    adapter = build_vpt(None, BuildContext(**LARGE))
    assert count_trainable(adapter) == 24 * 150 * 1024 == 3_686_400
    bound = math.sqrt(6.0 / (3 * 16**2 + 1024))
    assert adapter.init_bound == pytest.approx(bound)
    assert adapter.prompts.abs().max() <= bound and adapter.prompts.abs().max() > 0.99 * bound
    assert adapter.no_weight_decay_names() == {"prompts"}


def test_vpt_shapes_gradients_and_frozen_backbone(name: str) -> None:
    backbone = _backbone(name)
    x = torch.randn(2, 3, 32, 48)
    with torch.no_grad():
        frozen = _forward(backbone, x)
    adapter = build_vpt({"num_tokens": 5}, BuildContext(**_facts(backbone)))
    adapter.setup(backbone)
    seen: list[tuple[int, ...]] = []

    def after(tokens: torch.Tensor, layer_idx: int) -> torch.Tensor:
        seen.append(tuple(tokens.shape))
        return tokens

    features = _forward(backbone, x, (adapter, after))
    assert [f.shape for f in features] == [f.shape for f in frozen]
    assert seen == [(2, 1 + 2 * 3, backbone.embed_dim)] * backbone.num_layers  # prompts gone for later hooks
    assert not torch.allclose(features[-1], frozen[-1])  # the prompts are attended to
    sum(level.square().mean() for level in features).backward()
    assert adapter.prompts.grad is not None and bool(torch.all(adapter.prompts.grad.abs().sum(dim=(1, 2)) > 0))
    assert count_trainable(backbone) == 0 and all(p.grad is None for p in backbone.parameters())


def test_vpt_needs_before_block_and_backbone_checks_removal() -> None:
    adapter = build_vpt({"num_tokens": 3}, BuildContext(embed_dim=8, num_layers=2, patch_size=4))
    with pytest.raises(RuntimeError, match="before_block"):
        adapter(torch.zeros(1, 5, 8), 0)
    backbone = _backbone("clip-vit")

    class Leaky:
        def before_block(self, x: torch.Tensor, layer_idx: int) -> torch.Tensor:
            return torch.cat([x, x[:, :2]], dim=1)

        def __call__(self, x: torch.Tensor, layer_idx: int) -> torch.Tensor:
            return x

    with pytest.raises(ValueError, match="were not removed"):
        _forward(backbone, torch.randn(1, 3, 32, 32), (Leaky(),))

    class Shrinking(Leaky):
        def before_block(self, x: torch.Tensor, layer_idx: int) -> torch.Tensor:
            return x[:, 1:]

    with pytest.raises(ValueError, match=r"before block 0, expected \[1, 5.., 64\]"):
        _forward(backbone, torch.randn(1, 3, 32, 32), (Shrinking(),))


def test_eva_rope_gives_extra_tokens_identity_rotation() -> None:
    from timm.layers.pos_embed_sincos import apply_rot_embed_cat

    rope = torch.randn(6, 16)
    padded = identity_rope_for_extra(rope, 9)
    assert padded.shape == (9, 16) and torch.equal(padded[:6], rope)
    x = torch.randn(2, 3, 9, 8)
    torch.testing.assert_close(apply_rot_embed_cat(x, padded)[:, :, 6:], x[:, :, 6:])
    assert identity_rope_for_extra(rope, 6) is rope


def test_vpt_options() -> None:
    assert VPTOptions().num_tokens == 150
    with pytest.raises(ValidationError):
        VPTOptions(num_tokens=0)


# ---------------------------------------------------------------------------------------------------- pipeline
@pytest.mark.parametrize("adapter", ["lora", "vpt"])
def test_pipeline_trains_only_adapter_and_decoder(adapter: str) -> None:
    config = {
        "backbone": {"name": "dinov2", "variant": "tiny"},
        "adapter": {"name": adapter, **({"num_tokens": 4} if adapter == "vpt" else {})},
        "decoder": {"name": "fpn"},
        "dataset": {"name": "synthetic"},
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = vltk.build_model(config)
    names = [name for name, _ in model.trainable_named_parameters()]
    assert names and all(name.startswith(("adapter.", "decoder.")) for name in names)
    assert any(name.startswith("adapter.") for name in names)
    model.train()
    assert not model.backbone.training and model.adapter.training
    torch.manual_seed(0)
    images, labels = torch.rand(2, 3, 32, 32), torch.randint(0, len(model.class_names), (2, 32, 32))
    optimizer = torch.optim.AdamW([p for _, p in model.trainable_named_parameters()], lr=3e-3)
    losses = []
    for _ in range(3):
        optimizer.zero_grad()
        loss = model.loss(images, labels)["loss"]
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
