"""Activation checkpointing (``backbone.grad_checkpointing``, ``decoder.grad_checkpointing``) changes memory, not maths.

Whole models are built through the pipeline from run configurations, so the options are what is tested; the
ViT checkpoints a block together with the adapter's hooks, so Rein, LoRA and VPT (whose ``before_block`` and
after-block call share state) are each run with it. Everything runs in float64 and the gradients must be equal
to round-off (recomputation runs the same kernels in the same order; float64 makes any real difference, such as
a hook left out of the recomputation or a dropout mask drawn twice, stand out).
"""

from __future__ import annotations

import pytest
import torch

from vltk.config import build_config, resolve
from vltk.pipeline import build_model
from vltk.plugins import get_plugin_manager
from vltk_kernels import use_backend

SMALL = ["dataset.size=32", "dataset.num_train=2", "dataset.num_val=1", "backbone.variant=tiny"]
MASK2FORMER = [
    "decoder.hidden_dim=64",
    "decoder.num_heads=4",
    "decoder.enc_layers=2",
    "decoder.enc_ffn=64",
    "decoder.dec_layers=3",
    "decoder.dec_ffn=64",
    "decoder.num_points=256",
]


@pytest.fixture(autouse=True)
def torch_kernels() -> object:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with use_backend("torch"):
        yield
    torch.set_num_threads(threads)


def _model(*overrides: str, **components: str) -> torch.nn.Module:
    manager = get_plugin_manager()
    config = build_config(components=components, overrides=[*SMALL, *overrides], recipe_dirs=manager.recipe_dirs())
    torch.manual_seed(0)
    return build_model(resolve(config, manager.get_registry())).double().train()


def _gradients(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    images = torch.rand(2, 3, 32, 32, generator=generator, dtype=torch.float64)
    labels = torch.randint(0, 19, (2, 32, 32), generator=generator)
    model.zero_grad(set_to_none=True)
    torch.manual_seed(2)  # dropout, drop-path and Mask2Former's point sampling draw the same numbers each time
    model.loss(images, labels)["loss"].backward()
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def _assert_same_gradients(plain: torch.nn.Module, checkpointed: torch.nn.Module) -> None:
    expected, actual = _gradients(plain), _gradients(checkpointed)
    assert expected and set(expected) == set(actual)
    for name, gradient in expected.items():
        torch.testing.assert_close(actual[name], gradient, rtol=1e-12, atol=1e-14, msg=name)


@pytest.mark.parametrize(
    ("adapter", "extra"),
    [
        pytest.param("rein", ["adapter.token_length=8"], id="rein"),
        pytest.param("lora", ["adapter.rank=4"], id="lora"),
        pytest.param("vpt", ["adapter.num_tokens=4", "adapter.dropout=0.2"], id="vpt-with-dropout"),
        pytest.param("full", ["backbone.drop_path_rate=0.3"], id="full-with-drop-path"),
    ],
)
def test_vit_checkpointing_with_adapter_hooks_gives_identical_gradients(adapter: str, extra: list[str]) -> None:
    plain = _model(*extra, adapter=adapter)
    checkpointed = _model(*extra, "backbone.grad_checkpointing=true", adapter=adapter)
    assert checkpointed.backbone.grad_checkpointing and not plain.backbone.grad_checkpointing
    _assert_same_gradients(plain, checkpointed)


def test_checkpointing_recomputes_the_hooks_in_backward() -> None:
    """The hooks run inside the checkpointed unit: called once per block in forward and once more in backward."""
    model = _model("backbone.grad_checkpointing=true", "adapter.token_length=8", adapter="rein")
    calls: list[int] = []
    original = type(model.adapter).forward

    def counting(self: torch.nn.Module, x: torch.Tensor, layer_idx: int) -> torch.Tensor:
        calls.append(layer_idx)
        return original(self, x, layer_idx)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(type(model.adapter), "forward", counting)
        _gradients(model)
    assert len(calls) == 2 * model.backbone.num_layers


def test_mask2former_checkpointing_gives_identical_gradients() -> None:
    base = [*MASK2FORMER, "adapter.token_length=8", "adapter.query_dims=64"]
    plain = _model(*base, adapter="rein", decoder="mask2former")
    checkpointed = _model(*base, "decoder.grad_checkpointing=true", adapter="rein", decoder="mask2former")
    assert checkpointed.decoder.pixel_decoder.grad_checkpointing
    _assert_same_gradients(plain, checkpointed)
    everywhere = ["decoder.grad_checkpointing=true", "backbone.grad_checkpointing=true"]
    both = _model(*base, *everywhere, adapter="rein", decoder="mask2former")
    _assert_same_gradients(plain, both)


def test_checkpointing_is_off_outside_training() -> None:
    model = _model("backbone.grad_checkpointing=true", adapter="full").eval()
    images = torch.rand(1, 3, 32, 32, dtype=torch.float64)
    with torch.no_grad():
        eval_out = model.backbone.forward_features(images)
    model.backbone.set_grad_checkpointing(False)
    with torch.no_grad():
        plain_out = model.backbone.forward_features(images)
    for a, b in zip(eval_out, plain_out, strict=True):
        assert torch.equal(a, b)
