"""The ``denseclip`` prompter: context decoder structure and init, γ, gradients, and a DenseCLIP model that trains
(tiny clip-resnet + denseclip + Semantic FPN on CPU)."""

from __future__ import annotations

import warnings

import pytest
import torch
from pydantic import ValidationError

import vltk
from vltk.context import BuildContext
from vltk.errors import UserError
from vltk_kernels import use_backend
from vltk_plugins.backbones.clip_resnet.model import build_clip_resnet
from vltk_plugins.denseclip.options import DenseCLIPOptions
from vltk_plugins.denseclip.prompter import ContextDecoder, DenseCLIPPrompter, build_denseclip

NAMES = ["road", "car", "sky", "person"]


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return build_clip_resnet({"variant": "tiny"}).eval()


def _visual_context(backbone, batch: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        return backbone.embed(torch.randn(batch, 3, 96, 128))


def context_decoder_params(text_dim: int, visual_dim: int, width: int, layers: int) -> int:
    """Closed form: projections + ``layers`` x (2 attentions with bias-free q/k/v + 4x MLP + 3 LayerNorms)."""
    memory_proj = 2 * visual_dim + visual_dim * width + width + 2 * width
    text_proj = 2 * text_dim + text_dim * width + width
    attention = 3 * width * width + width * width + width
    mlp = width * 4 * width + 4 * width + 4 * width * width + width
    out_proj = 2 * width + width * text_dim + text_dim
    return memory_proj + text_proj + layers * (2 * attention + mlp + 3 * 2 * width) + out_proj


def test_context_decoder_size_and_init() -> None:
    torch.manual_seed(0)
    decoder = ContextDecoder(1024, 1024)  # RN50's text width, released config: 3 layers, 256 wide, 4 heads
    assert len(decoder.decoder) == 3
    assert sum(p.numel() for p in decoder.parameters()) == context_decoder_params(1024, 1024, 256, 3) == 3_948_800
    linears = [m for m in decoder.modules() if isinstance(m, torch.nn.Linear)]
    assert all(m.bias is None or torch.count_nonzero(m.bias) == 0 for m in linears)
    weights = torch.cat([m.weight.detach().flatten() for m in linears])
    assert 0.019 < float(weights.std()) < 0.021
    layer = decoder.decoder[0]
    assert layer.self_attn.heads == 4 and layer.self_attn.q_proj.bias is None
    assert layer.dropout.p == 0.1 and isinstance(layer.mlp[1], torch.nn.GELU)
    norms = [m for m in decoder.modules() if isinstance(m, torch.nn.LayerNorm)]
    assert all(torch.all(m.weight == 1) and torch.all(m.bias == 0) for m in norms)


def test_output_shape_and_gamma_init_keeps_text_embeddings(resnet) -> None:
    torch.manual_seed(0)
    prompter = build_denseclip(None, BuildContext.from_backbone(resnet, class_names=NAMES)).eval()
    assert isinstance(prompter, DenseCLIPPrompter) and prompter.needs_visual_context
    assert torch.all(prompter.gamma == 1e-4) and tuple(prompter.gamma.shape) == (64,)
    visual = _visual_context(resnet)
    out = prompter(visual)
    assert tuple(out.shape) == (2, 4, 64)
    plain = prompter.text_embeddings()
    assert (out - plain.unsqueeze(0)).abs().max() < 1e-3
    assert not torch.allclose(out[0], plain, rtol=0, atol=0)  # the image does move it, a little
    with pytest.raises(ValueError, match="visual_context"):
        prompter()


def test_context_init_is_denseclips_trunc_normal_by_default_and_the_option_is_respected(resnet) -> None:
    """DenseCLIP: ``nn.init.trunc_normal_(self.contexts)``, i.e. std 1 truncated at +-2 (a truncated standard
    normal has std 0.880); ``init_std=0.02`` gives CoOp's init instead."""
    context = BuildContext.from_backbone(resnet, class_names=NAMES)
    torch.manual_seed(0)
    contexts = build_denseclip(None, context).contexts.detach()
    assert tuple(contexts.shape) == (1, 8, 64)
    assert 0.83 < float(contexts.std()) < 0.93 and abs(float(contexts.mean())) < 0.1
    assert 1.8 < float(contexts.abs().max()) <= 2.0  # the bounds are reached and never exceeded
    torch.manual_seed(0)
    expected = torch.nn.init.trunc_normal_(torch.empty(1, 8, 64))  # the reference call, same seed
    torch.testing.assert_close(contexts, expected, rtol=0, atol=0)
    torch.manual_seed(0)
    coop_like = build_denseclip({"init_std": 0.02}, context).contexts.detach()
    assert 0.015 < float(coop_like.std()) < 0.025
    assert DenseCLIPOptions().init_std == 1.0


def test_gradients_reach_context_decoder_gamma_and_context_not_tower(resnet) -> None:
    torch.manual_seed(0)
    prompter = build_denseclip(None, BuildContext.from_backbone(resnet, class_names=NAMES))
    out = prompter(_visual_context(resnet))
    out.pow(2).sum().backward()
    trainable = dict(prompter.named_parameters())
    assert {"contexts", "gamma"} <= set(trainable) and any(k.startswith("context_decoder.") for k in trainable)
    assert all(p.grad is not None for p in trainable.values())
    assert all(p.grad is None and not p.requires_grad for p in resnet.text_tower().parameters())


def test_label_swap_keeps_learned_parts(resnet) -> None:
    prompter = build_denseclip(None, BuildContext.from_backbone(resnet, class_names=NAMES)).eval()
    state = {k: v.clone() for k, v in prompter.state_dict().items()}
    prompter.set_class_names(["tree", "bus"])
    assert tuple(prompter(_visual_context(resnet, batch=1)).shape) == (1, 2, 64)
    assert state.keys() == prompter.state_dict().keys()
    assert all(torch.equal(state[k], v) for k, v in prompter.state_dict().items())


def test_options_and_registration() -> None:
    options = DenseCLIPOptions()
    assert (options.n_ctx, options.context_length, options.init_std) == (8, 13, 1.0)
    assert (options.decoder_layers, options.decoder_width, options.decoder_heads, options.dropout) == (3, 256, 4, 0.1)
    assert (options.gamma_init, options.aux_loss_weight, options.temperature) == (1e-4, 0.4, 0.07)
    assert options.score_concat_index == "auto"
    with pytest.raises(ValidationError):
        DenseCLIPOptions(decoder_layerz=3)
    assert "denseclip" in vltk.list_components("prompter")


def test_width_not_divisible_by_heads(resnet) -> None:
    with pytest.raises(UserError, match="divisible"):
        build_denseclip(
            {"decoder_width": 30, "decoder_heads": 4}, BuildContext.from_backbone(resnet, class_names=NAMES)
        )


def test_denseclip_model_trains() -> None:
    """clip-resnet (tiny) + denseclip + fpn: score map on level 3, aux loss in the total, loss falls."""
    torch.manual_seed(0)
    config = {
        "backbone": {"name": "clip-resnet", "variant": "tiny"},
        "adapter": "full",
        "prompter": "denseclip",
        "decoder": {"name": "fpn", "channels": 32, "head_channels": 32},
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = vltk.build_model(config, class_names=NAMES)
    assert model.decoder.in_channels == [32, 64, 128, 256 + 4]
    model.train()
    # quadrant scenes: each class has its own colour, so a few steps suffice to fit them
    generator = torch.Generator().manual_seed(0)
    labels = torch.zeros(2, 64, 64, dtype=torch.long)
    labels[:, :32, 32:], labels[:, 32:, :32], labels[:, 32:, 32:] = 1, 2, 3
    labels[1] = labels[1].flip(-1)
    palette = torch.tensor([[0.2, 0.2, 0.2], [0.9, 0.1, 0.1], [0.1, 0.4, 0.9], [0.9, 0.9, 0.2]])
    images = (palette[labels].permute(0, 3, 1, 2) + 0.05 * torch.randn(2, 3, 64, 64, generator=generator)).clamp(0, 1)
    labels[:, :4] = 255
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-3)
    tower = {k: v.clone() for k, v in model.backbone.text_tower().state_dict().items()}
    history = []
    with use_backend("torch"):  # the fused score-map kernel has its own tests; interpreted it is slow
        for _ in range(10):
            losses = model.loss(images, labels)
            assert set(losses) >= {"loss", "loss_ce", "loss_aux_text"}
            torch.testing.assert_close(losses["loss"], losses["loss_ce"] + losses["loss_aux_text"])
            optimizer.zero_grad()
            losses["loss"].backward()
            optimizer.step()
            history.append(float(losses["loss"].detach()))
        model.eval()
        assert tuple(model.predict(images).shape) == (2, 4, 64, 64)
    assert history[-1] < 0.75 * history[0], history
    assert all(torch.equal(v, model.backbone.text_tower().state_dict()[k]) for k, v in tower.items())
