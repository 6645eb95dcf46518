"""Rein adapter: parameter counts from the paper, init, near-identity start, cls handling, query link order."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import pytest
import torch
from pydantic import ValidationError
from torch import nn

from vltk.context import BuildContext
from vltk.errors import UserError
from vltk.interfaces import count_trainable
from vltk_plugins.rein.adapter import Rein, build_rein, rein_token_update
from vltk_plugins.rein.options import ReinOptions

LARGE = {"embed_dim": 1024, "num_layers": 24, "patch_size": 16}


def small(**overrides: object) -> Rein:
    """A Rein small enough for fast tests: L=3, c=32, m=6, r=4, c'=16."""
    options = {"token_length": 6, "lora_dim": 4, "query_dims": 16}
    context = {"embed_dim": 32, "num_layers": 3, "patch_size": 4}
    for key, value in overrides.items():
        (context if key in context or key == "has_cls_token" else options)[key] = value
    return build_rein(ReinOptions(**options), BuildContext(**context))


def expected_count(layers: int, c: int, m: int, r: int | None, cq: int, link: bool = True, zero: bool = False) -> int:
    """rein.md §2: P = L·m·r + L·r·c + 2(c²+c) + (c·c'+c') + (3c'·c'+c') + 1 (L = layers, c' = cq)."""
    tokens = layers * m * c if r is None else layers * m * r + layers * r * c
    total = tokens + 2 * (c * c + c) + (0 if zero else 1)
    if link:
        total += (c * cq + cq) + (3 * cq * cq + cq)
    return total


# -- parameter counts ---------------------------------------------------------------------------------------------


def test_paper_count_dinov2_large() -> None:
    torch.manual_seed(0)
    assert count_trainable(build_rein(ReinOptions(), BuildContext(**LARGE))) == 2_990_081


def test_paper_count_without_query_link() -> None:
    torch.manual_seed(0)
    rein = build_rein(ReinOptions(link_token_to_query=False), BuildContext(**LARGE))
    assert count_trainable(rein) == 2_530_817
    assert rein.queries() is None
    assert rein.query_dims is None


@pytest.mark.parametrize(
    ("layers", "c", "m", "r", "cq", "link"),
    [
        (12, 768, 100, 16, 256, True),
        (4, 1280, 100, 16, 256, True),
        (24, 64, 50, 8, 32, True),
        (3, 48, 7, 2, 24, False),
        (5, 40, 10, None, 16, True),
        (2, 24, 3, None, 8, False),
    ],
)
def test_count_formula(layers: int, c: int, m: int, r: int | None, cq: int, link: bool) -> None:
    options = ReinOptions(token_length=m, lora_dim=r, query_dims=cq, link_token_to_query=link)
    rein = build_rein(options, BuildContext(embed_dim=c, num_layers=layers, patch_size=16))
    assert count_trainable(rein) == expected_count(layers, c, m, r, cq, link)


def test_zero_mlp_delta_f_drops_scale_parameter() -> None:
    rein = small(zero_mlp_delta_f=True)
    names = dict(rein.named_parameters())
    assert "scale" not in names
    assert rein.scale == 1.0
    assert count_trainable(rein) == expected_count(3, 32, 6, 4, 16, zero=True)
    assert "scale" not in rein.no_weight_decay_names()


def test_parameter_names_match_upstream() -> None:
    shapes = {name: tuple(p.shape) for name, p in small().named_parameters()}
    assert shapes == {
        "learnable_tokens_a": (3, 6, 4),
        "learnable_tokens_b": (3, 4, 32),
        "scale": (),
        "mlp_token2feat.weight": (32, 32),
        "mlp_token2feat.bias": (32,),
        "mlp_delta_f.weight": (32, 32),
        "mlp_delta_f.bias": (32,),
        "transform.weight": (16, 32),
        "transform.bias": (16,),
        "merge.weight": (16, 48),
        "merge.bias": (16,),
    }
    plain = {name for name, _ in small(lora_dim=None, link_token_to_query=False).named_parameters()}
    assert plain == {
        "learnable_tokens",
        "scale",
        "mlp_token2feat.weight",
        "mlp_token2feat.bias",
        "mlp_delta_f.weight",
        "mlp_delta_f.bias",
    }


def test_no_weight_decay_names_are_real_parameters() -> None:
    for rein in (small(), small(lora_dim=None)):
        names = rein.no_weight_decay_names()
        assert names <= dict(rein.named_parameters()).keys()
        assert "scale" in names
        assert not any(name.startswith(("mlp_", "transform", "merge")) for name in names)


# -- init ---------------------------------------------------------------------------------------------------------


def test_lora_token_init_bound_and_uniformity() -> None:
    torch.manual_seed(0)
    rein = build_rein(ReinOptions(link_token_to_query=False), BuildContext(**LARGE))
    v = math.sqrt(6.0 / (3 * 16**2 + math.sqrt(1024 * 16)))
    assert v == pytest.approx(0.0818, abs=5e-5)  # the value quoted in rein.md §1.1
    assert rein.init_bound == pytest.approx(v)
    for tokens in (rein.learnable_tokens_a.detach(), rein.learnable_tokens_b.detach()):
        assert tokens.abs().max() <= v
        assert tokens.max() > 0.99 * v and tokens.min() < -0.99 * v
        assert tokens.mean().abs() < 0.02 * v
        assert tokens.std().item() == pytest.approx(v / math.sqrt(3), rel=0.02)  # std of U(-v, v)
        hist = torch.histc(tokens, bins=10, min=-v, max=v)
        assert (hist / hist.mean() - 1).abs().max() < 0.1


def test_plain_token_init_bound() -> None:
    torch.manual_seed(0)
    rein = build_rein(ReinOptions(lora_dim=None, token_length=20, link_token_to_query=False), BuildContext(**LARGE))
    v0 = math.sqrt(6.0 / (3 * 16**2 + 1024))
    assert v0 == pytest.approx(0.0579, abs=5e-5)
    tokens = rein.learnable_tokens.detach()
    assert tokens.shape == (24, 20, 1024)
    assert tokens.abs().max() <= v0 and tokens.max() > 0.99 * v0
    assert tokens.std().item() == pytest.approx(v0 / math.sqrt(3), rel=0.02)


def test_scale_init_and_default_linear_init() -> None:
    rein = small(scale_init=0.05)
    assert isinstance(rein.scale, nn.Parameter)
    assert rein.scale.item() == pytest.approx(0.05)
    assert rein.mlp_delta_f.weight.abs().sum() > 0  # PyTorch default, not zeros, unless zero_mlp_delta_f


# -- forward ------------------------------------------------------------------------------------------------------


def test_shape_and_cls_token_untouched() -> None:
    torch.manual_seed(0)
    rein = small(scale_init=1.0)
    x = torch.randn(2, 1 + 9, 32)
    for layer in range(3):
        out = rein(x, layer)
        assert out.shape == x.shape
        assert torch.equal(out[:, 0], x[:, 0])
        assert not torch.allclose(out[:, 1:], x[:, 1:])


def test_without_cls_token_every_row_is_refined() -> None:
    torch.manual_seed(0)
    rein = small(has_cls_token=False, scale_init=1.0)
    x = torch.randn(2, 9, 32)
    out = rein(x, 0)
    assert out.shape == x.shape
    assert ((out - x).abs().amax(dim=-1) > 0).all()
    # Same rows as the cls variant's patch rows: the cls token never takes part in the update.
    with_cls = small(scale_init=1.0)
    with_cls.load_state_dict(rein.state_dict())
    cls = torch.randn(2, 1, 32)
    assert torch.allclose(with_cls(torch.cat([cls, x], 1), 0)[:, 1:], out, atol=1e-6)


def test_zero_mlp_delta_f_is_exact_identity_at_init() -> None:
    torch.manual_seed(0)
    rein = small(zero_mlp_delta_f=True)
    x = torch.randn(2, 10, 32)
    for layer in range(3):
        assert torch.equal(rein(x, layer), x)


def test_default_scale_is_near_identity() -> None:
    torch.manual_seed(0)
    rein = small()
    x = torch.randn(2, 10, 32)
    out = rein(x, 1)
    delta = (out - x).abs().max().item()
    assert 0 < delta < 5e-3  # gate 1e-3 times an O(1) update
    assert torch.allclose(out, x, atol=5e-3)


def test_forward_matches_explicit_reference() -> None:
    """The whole per-layer update written out (sequence-first, like upstream) against the module."""
    torch.manual_seed(0)
    rein = small(scale_init=0.3)
    x = torch.randn(2, 10, 32)
    layer = 2
    with torch.no_grad():
        seq = x.permute(1, 0, 2)
        cls, f = seq[:1], seq[1:]
        tokens = rein.learnable_tokens_a[layer] @ rein.learnable_tokens_b[layer]
        attn = torch.einsum("nbc,mc->nbm", f, tokens) * 32**-0.5
        attn = attn.softmax(dim=-1)
        delta = torch.einsum("nbm,mc->nbc", attn[:, :, 1:], rein.mlp_token2feat(tokens[1:]))
        delta = rein.mlp_delta_f(delta + f)
        expected = torch.cat([cls, f + rein.scale * delta]).permute(1, 0, 2)
        assert torch.allclose(rein(x, layer), expected, atol=1e-6)


@pytest.mark.parametrize("has_cls_token", [True, False], ids=["cls", "no-cls"])
def test_layers_and_gradients_match_upstream_order(has_cls_token: bool) -> None:
    """Three chained layers against upstream's ``LoRAReins`` arithmetic (sequence-first, cls split and cat,
    ``mlp_delta_f`` over the sum): outputs and the gradients of the input and of every parameter. The adapter's
    eager path regroups these products (``vltk_kernels.rein_attention.update``), so this is what keeps it honest."""
    torch.manual_seed(0)
    rein = small(scale_init=0.3, link_token_to_query=False, has_cls_token=has_cls_token)
    params = dict(rein.named_parameters())
    x = torch.randn(2, 10, 32)
    grad = torch.randn(2, 10, 32)

    def upstream(h: torch.Tensor, layer: int) -> torch.Tensor:
        seq = h.permute(1, 0, 2)
        cls, f = torch.tensor_split(seq, [1], dim=0) if has_cls_token else (None, seq)
        tokens = params["learnable_tokens_a"][layer] @ params["learnable_tokens_b"][layer]
        attn = torch.einsum("nbc,mc->nbm", f, tokens).mul(32**-0.5).softmax(dim=-1)
        delta = torch.einsum("nbm,mc->nbc", attn[:, :, 1:], rein.mlp_token2feat(tokens[1:]))
        f = f + rein.mlp_delta_f(delta + f) * rein.scale
        return (f if cls is None else torch.cat([cls, f])).permute(1, 0, 2)

    results = []
    for layer_fn in (rein, upstream):
        leaf = x.clone().requires_grad_()
        h = leaf
        for layer in range(3):
            h = layer_fn(h, layer)
        results.append((h, torch.autograd.grad(h, [leaf, *params.values()], grad)))
    (mine, my_grads), (theirs, their_grads) = results
    torch.testing.assert_close(mine, theirs, atol=1e-5, rtol=1e-5)
    for name, got, want in zip(["input", *params], my_grads, their_grads, strict=True):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4, msg=lambda m, n=name: f"{n}: {m}")


def test_eager_torch_path_is_the_fused_update() -> None:
    """On the ``torch`` backend a LoRA layer is one autograd node, the lean ``rein_update``
    (what benchmarks/rein_adapter_speed.py times); plain tokens keep the attention-op composition."""
    from vltk_kernels import use_backend

    x = torch.randn(2, 10, 32)
    with use_backend("torch"):
        assert type(small()(x, 0).grad_fn).__name__ == "_ReinUpdateBackward"
        assert type(small(lora_dim=None)(x, 0).grad_fn).__name__ == "CatBackward0"


def test_without_softmax_uses_raw_scores() -> None:
    torch.manual_seed(0)
    rein = small(use_softmax=False, scale_init=1.0)
    x = torch.randn(1, 5, 32)
    with torch.no_grad():
        f = x[:, 1:]
        tokens = rein.layer_tokens(0)
        delta = (f @ tokens.T)[..., 1:] @ rein.mlp_token2feat(tokens[1:])
        expected = f + rein.mlp_delta_f(delta + f)
        assert torch.allclose(rein(x, 0)[:, 1:], expected, atol=1e-5)


def test_low_precision_input_keeps_its_dtype() -> None:
    rein = small(scale_init=1.0)
    x = torch.randn(2, 10, 32).to(torch.bfloat16)
    out = rein(x, 0)
    assert out.dtype == torch.bfloat16
    assert torch.equal(out[:, 0], x[:, 0])


def test_layer_index_out_of_range() -> None:
    rein = small()
    with pytest.raises(IndexError, match="3 layers"):
        rein(torch.randn(1, 5, 32), 3)
    with pytest.raises(IndexError):
        rein(torch.randn(1, 5, 32), -1)
    with pytest.raises(ValueError, match="width 32"):
        rein(torch.randn(1, 5, 16), 0)


# -- rein_token_update --------------------------------------------------------------------------------------------


def test_rein_token_update_matches_loop() -> None:
    torch.manual_seed(0)
    b_, n_, m_, c_ = 2, 7, 5, 12
    feats, tokens, values = torch.randn(b_, n_, c_), torch.randn(m_, c_), torch.randn(m_ - 1, c_)
    scale = c_**-0.5
    out = rein_token_update(feats, tokens, values, scale)
    expected = torch.zeros(b_, n_, c_)
    for b in range(b_):
        for n in range(n_):
            scores = [float(feats[b, n] @ tokens[j]) * scale for j in range(m_)]
            denominator = sum(math.exp(s) for s in scores)
            for j in range(1, m_):
                expected[b, n] += math.exp(scores[j]) / denominator * values[j - 1]
    assert out.shape == (b_, n_, c_)
    assert torch.allclose(out, expected, atol=1e-5)
    einsum = torch.einsum(
        "bnm,mc->bnc", torch.einsum("bnc,mc->bnm", feats, tokens).mul(scale).softmax(-1)[..., 1:], values
    )
    assert torch.allclose(out, einsum, atol=1e-6)


def test_rein_token_update_null_token_absorbs_mass() -> None:
    """A feature matching only token 0 gets (almost) no update: the point of dropping the first column."""
    width = 8
    tokens = torch.zeros(3, width)
    tokens[0, 0] = 50.0
    feats = torch.zeros(1, 1, width)
    feats[0, 0, 0] = 1.0
    out = rein_token_update(feats, tokens, torch.ones(2, width), 1.0)
    assert out.abs().max() < 1e-6


# -- gradients ----------------------------------------------------------------------------------------------------


def test_gradients_reach_only_the_used_layer() -> None:
    torch.manual_seed(0)
    rein = small(link_token_to_query=False, scale_init=1.0)
    rein(torch.randn(2, 10, 32), 1).square().sum().backward()
    grad_a = rein.learnable_tokens_a.grad
    assert grad_a[1].abs().sum() > 0
    assert grad_a[0].abs().sum() == 0 and grad_a[2].abs().sum() == 0
    assert rein.scale.grad is not None and rein.scale.grad != 0


def test_token_zero_has_no_value_path() -> None:
    """Token 0 never contributes a value; without softmax it takes no part in the update at all (zero grad).

    With softmax it still gets gradient, through the normaliser only (it is the null/sink token).
    """
    torch.manual_seed(0)
    rein = small(use_softmax=False, link_token_to_query=False, scale_init=1.0)
    rein(torch.randn(2, 10, 32), 0).square().sum().backward()
    assert torch.equal(rein.learnable_tokens_a.grad[0, 0], torch.zeros(4))
    assert rein.learnable_tokens_a.grad[0, 1:].abs().sum() > 0

    torch.manual_seed(0)
    rein = small(lora_dim=None, link_token_to_query=False, scale_init=1.0)
    tokens = rein.layer_tokens(0)
    values = rein.mlp_token2feat(tokens[1:])
    values.retain_grad()
    out = rein_token_update(torch.randn(2, 9, 32), tokens, values, 32**-0.5)
    out.sum().backward()
    assert values.shape[0] == 5 and values.grad.abs().sum() > 0
    # token 0's row of the token table is touched only through the softmax denominator
    grad_token0 = rein.learnable_tokens.grad[0, 0]
    assert grad_token0.abs().sum() > 0


def test_token_zero_gets_gradient_through_queries() -> None:
    torch.manual_seed(0)
    rein = small()
    rein.queries().square().sum().backward()
    assert rein.learnable_tokens_a.grad[:, 0].abs().sum() > 0
    assert rein.learnable_tokens_b.grad.abs().sum() > 0
    assert rein.mlp_token2feat.weight.grad is None  # queries do not use the feature MLPs


# -- query link ---------------------------------------------------------------------------------------------------


def test_queries_shape() -> None:
    rein = small()
    q = rein.queries()
    assert q is not None and q.shape == (6, 16)
    assert rein.query_dims == 16
    torch.manual_seed(0)
    assert build_rein(ReinOptions(), BuildContext(**LARGE)).queries().shape == (100, 256)


@pytest.mark.parametrize(("pick", "reduce"), [(0, "max"), (1, "mean"), (2, "last")])
def test_queries_interleave_max_mean_last_per_channel(pick: int, reduce: str) -> None:
    """``merge`` sees ``[max_0, mean_0, last_0, max_1, ...]`` (upstream layout), not ``[max | mean | last]``."""
    torch.manual_seed(0)
    rein = small()
    cq = 16
    with torch.no_grad():
        q = rein.transform(rein.all_tokens())  # [L, m, c']
        reduced = {"max": q.amax(0), "mean": q.mean(0), "last": q[-1]}
        rein.merge.bias.zero_()
        rein.merge.weight.zero_()
        for j in range(cq):
            rein.merge.weight[j, 3 * j + pick] = 1.0  # interleaved index of (channel j, statistic pick)
        assert torch.allclose(rein.queries(), reduced[reduce], atol=1e-6)

        rein.merge.weight.zero_()
        for j in range(cq):
            rein.merge.weight[j, pick * cq + j] = 1.0  # what block concatenation would read
        assert not torch.allclose(rein.queries(), reduced[reduce], atol=1e-4)


def test_queries_with_plain_tokens() -> None:
    rein = small(lora_dim=None)
    assert rein.queries().shape == (6, 16)


# -- contract / factory -------------------------------------------------------------------------------------------


class _FakeBackbone(nn.Module):
    """Three blocks that call the hooks the way vltk backbones do."""

    embed_dim, num_layers, patch_size, has_cls_token = 32, 3, 4, True

    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(nn.Linear(32, 32) for _ in range(3))

    def forward(self, x: torch.Tensor, block_hooks: tuple = ()) -> torch.Tensor:
        for index, block in enumerate(self.blocks):
            x = block(x)
            for hook in block_hooks:
                x = hook(x, index)
        return x


def test_rein_freezes_backbone_and_trains_itself() -> None:
    torch.manual_seed(0)
    backbone = _FakeBackbone()
    rein = build_rein(
        ReinOptions(token_length=6, lora_dim=4, query_dims=16),
        BuildContext(embed_dim=32, num_layers=3, patch_size=4, num_classes=19, text_dim=None, in_channels=3),
    )
    assert rein.freezes_backbone
    rein.setup(backbone)
    assert count_trainable(backbone) == 0
    out = backbone(torch.randn(2, 10, 32), (rein,))
    (out.sum() + rein.queries().sum()).backward()
    assert all(p.grad is None for p in backbone.parameters())
    assert all(p.grad is not None for p in rein.parameters())


def test_build_rein_requires_backbone_facts() -> None:
    with pytest.raises(UserError, match="adapter 'rein' needs num_layers, patch_size"):
        build_rein(ReinOptions(), BuildContext(embed_dim=32))
    with pytest.raises(UserError, match="needs embed_dim"):
        build_rein(ReinOptions(), BuildContext(num_layers=2, patch_size=16))
    # the facts' types are checked once, when the context is made, not by every factory
    with pytest.raises(TypeError, match="embed_dim"):
        BuildContext(embed_dim=0, num_layers=2, patch_size=16)
    with pytest.raises(TypeError, match="has_cls_token"):
        BuildContext(embed_dim=8, num_layers=2, patch_size=16, has_cls_token="yes")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="ReinOptions"):
        build_rein(42, BuildContext(embed_dim=8, num_layers=2, patch_size=16))  # type: ignore[arg-type]
    rein = build_rein(None, BuildContext(embed_dim=8, num_layers=2, patch_size=16, has_cls_token=False))
    assert rein.has_cls_token is False


def test_build_rein_accepts_mapping_and_none() -> None:
    rein = build_rein({"token_length": 4, "lora_dim": None}, BuildContext(embed_dim=8, num_layers=2, patch_size=16))
    assert rein.learnable_tokens.shape == (2, 4, 8)
    assert build_rein(None, BuildContext(embed_dim=8, num_layers=1, patch_size=16)).token_length == 100


def test_options_defaults_and_validation() -> None:
    options = ReinOptions()
    assert options.model_dump() == {
        "token_length": 100,
        "lora_dim": 16,
        "query_dims": 256,
        "link_token_to_query": True,
        "scale_init": 1e-3,
        "zero_mlp_delta_f": False,
        "use_softmax": True,
    }
    assert all(field.description for field in ReinOptions.model_fields.values())
    with pytest.raises(ValidationError, match="lora_dm"):
        ReinOptions(lora_dm=8)  # type: ignore[call-arg]
    with pytest.raises(ValidationError):
        ReinOptions(token_length=1)
    with pytest.raises(ValidationError):
        ReinOptions(lora_dim=0)
    assert ReinOptions.model_validate({"scale_init": "1e-4"}).scale_init == pytest.approx(1e-4)


def test_options_module_does_not_import_torch() -> None:
    code = "import sys, vltk_plugins.rein.options; assert 'torch' not in sys.modules, 'torch imported'"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    result = subprocess.run([sys.executable, "-c", code], check=False, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
