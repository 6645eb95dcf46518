"""The memory-lean SwiGLU forward: timm's numbers, half the saved activations, timm's own forward wherever the
lean one would not be exact."""

from __future__ import annotations

import copy

import pytest
import torch
from timm.layers.mlp import GluMlp, SwiGLU
from torch import Tensor, nn

from vltk_plugins.common.lean_mlp import install_lean_swiglu

#: name -> (timm module, distinct activations it keeps for a frozen backward, the lean forward's)
KINDS = {
    "swiglu-norm": (lambda: SwiGLU(24, 64, norm_layer=nn.LayerNorm), 4, 2),  # EVA02-B/L
    "swiglu": (lambda: SwiGLU(24, 64), 3, 2),
    "glu-gate-last": (lambda: GluMlp(24, 128, act_layer=nn.SiLU), 2, 1),  # EVA02-Ti/S (gate and value: fc1's halves)
    "glu-gate-first": (lambda: GluMlp(24, 128, act_layer=nn.SiLU, gate_last=False), 2, 1),
}


def _pair(kind: str, *, dtype: torch.dtype = torch.float32, frozen: bool = False) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    timm_mlp = KINDS[kind][0]().to(dtype)
    with torch.no_grad():  # away from timm's init (gate weights ~1e-6), so every term matters
        for parameter in timm_mlp.parameters():
            parameter.normal_(0.0, 0.5)
    timm_mlp.requires_grad_(not frozen)
    lean = copy.deepcopy(timm_mlp)
    assert install_lean_swiglu(lean) == 1
    return timm_mlp, lean


def _gradients(module: nn.Module, x: Tensor, grad: Tensor) -> list[Tensor]:
    out = module(x)
    inputs = [x, *(p for p in module.parameters() if p.requires_grad)]
    return [out, *torch.autograd.grad(out, inputs, grad)]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("frozen", [False, True], ids=["trained", "frozen"])
def test_outputs_and_gradients_equal_timm(kind: str, frozen: bool) -> None:
    for dtype, tolerance in ((torch.float64, 1e-12), (torch.float32, 1e-5)):
        timm_mlp, lean = _pair(kind, dtype=dtype, frozen=frozen)
        x = torch.randn(2, 9, 24, dtype=dtype, requires_grad=True)
        grad = torch.randn(2, 9, 24, dtype=dtype)
        expected, got = _gradients(timm_mlp, x, grad), _gradients(lean, x, grad)
        assert torch.equal(got[0], expected[0])  # the forward runs the same ops in the same order
        assert len(got) == len(expected)
        for a, b in zip(got[1:], expected[1:], strict=True):
            torch.testing.assert_close(a, b, rtol=tolerance, atol=tolerance * b.abs().max().item())


def _saved_activations(module: nn.Module, x: Tensor) -> int:
    """How many distinct activation storages autograd keeps for ``module(x)`` (not ``x``, not the norm's
    per-token statistics)."""
    storages: set[int] = set()

    def pack(tensor: Tensor) -> Tensor:
        storage = tensor.untyped_storage().data_ptr()
        if tensor.dim() == x.dim() and tensor.shape[-1] > 1 and storage != x.untyped_storage().data_ptr():
            storages.add(storage)
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        out = module(x)
    out.sum().backward()
    return len(storages)


@pytest.mark.parametrize("kind", KINDS)
def test_a_frozen_block_keeps_fewer_activations(kind: str) -> None:
    timm_mlp, lean = _pair(kind, frozen=True)
    x = torch.randn(2, 9, 24, requires_grad=True)
    _, timm_keeps, lean_keeps = KINDS[kind]
    assert _saved_activations(timm_mlp, x) == timm_keeps
    assert _saved_activations(lean, x) == lean_keeps  # the fc1 output(s)


def test_timms_forward_runs_where_the_lean_one_would_not_be_exact() -> None:
    timm_mlp, lean = _pair("swiglu-norm")
    x = torch.randn(2, 9, 24, requires_grad=True)
    with torch.no_grad():
        assert torch.equal(lean(x), timm_mlp(x))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        lean_out, timm_out = lean(x), timm_mlp(x)
    assert lean_out.dtype == timm_out.dtype and torch.equal(lean_out, timm_out)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert _saved_activations(lean, x) == _saved_activations(timm_mlp, x)  # timm's own path
    lean.drop1.p = 0.5  # an active dropout between the product and the norm: timm's forward, timm's RNG use
    timm_mlp.drop1.p = 0.5
    torch.manual_seed(3)
    dropped = lean(x)
    torch.manual_seed(3)
    assert torch.equal(dropped, timm_mlp(x))


def test_eva02_blocks_get_the_lean_forward_and_keep_their_keys() -> None:
    import open_clip

    from vltk_plugins.backbones.open_clip_vit.model import build_eva02, eva02_config
    from vltk_plugins.backbones.open_clip_vit.options import Eva02Options

    with pytest.warns(UserWarning):  # random weights
        backbone = build_eva02({"variant": "tiny", "pretrained": None})
    swiglus = [m for m in backbone.modules() if isinstance(m, GluMlp | SwiGLU)]  # tiny: GluMlp
    assert swiglus and all("_vltk_original_forward" in m.__dict__ for m in swiglus)
    assert install_lean_swiglu(backbone) == len(swiglus)  # installing again replaces, never stacks
    assert all(m.forward.original is m._vltk_original_forward for m in swiglus)
    with torch.device("meta"):
        plain = open_clip.CustomTextCLIP(**eva02_config(Eva02Options(variant="tiny", pretrained=None)))
    assert set(backbone.visual.state_dict()) == set(plain.visual.state_dict())


def test_a_deep_copy_runs_on_its_own_weights() -> None:
    """The EMA (timm's ModelEmaV3) deep-copies the model: the copy's forward must read the copy's weights."""
    _, lean = _pair("glu-gate-last")
    twin = copy.deepcopy(lean)
    assert twin.forward.mlp is twin and twin._vltk_original_forward.__self__ is twin
    x = torch.randn(2, 9, 24, requires_grad=True)
    with torch.no_grad():
        twin.fc1.weight.zero_()
    assert not torch.equal(lean(x), twin(x))
