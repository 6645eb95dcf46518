"""LSeg's fusion follows DPT exactly: which residual conv units exist at which level, and the outputs.

The reference (isl-org/lang-seg ``lseg_net.py`` / ``lseg_blocks.py``, DPT's ``FeatureFusionBlock_custom``) runs
``refinenet4(layer4)``, then ``refinenetN(path, layerN)`` for N = 3, 2, 1, where one block computes

    out_conv(up2(RCU2(path + RCU1(lateral))))      (with a path)
    out_conv(up2(RCU2(lateral)))                   (refinenet4: one input, so RCU1 never runs)

with ``RCU(x) = x + bn2(conv2(relu(bn1(conv1(relu(x))))))``, 3x3 convs without bias, ``up2`` a bilinear x2
resize with ``align_corners=True`` and ``out_conv`` a 1x1 conv with bias; then ``head1`` (1x1 conv) gives the
pixel embeddings. The function below is written from that description with plain ``torch.nn.functional`` calls
on the decoder's tensors, so it shares no code with the module under test.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from vltk.context import BuildContext
from vltk_plugins.lseg.decoder import LSegDecoder, build_lseg
from vltk_plugins.lseg.options import LSegOptions

IN_CHANNELS = [16, 24, 32, 40]
TEXT_DIM = 12
WIDTH = 16


def build(seed: int = 0) -> LSegDecoder:
    """A small decoder in eval mode whose BatchNorms hold non-trivial statistics and affine parameters."""
    torch.manual_seed(seed)
    decoder = build_lseg(
        LSegOptions(width=WIDTH), BuildContext(in_channels=IN_CHANNELS, text_dim=TEXT_DIM, num_classes=3)
    )
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for module in decoder.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.copy_(0.1 * torch.randn(WIDTH, generator=generator))
                module.running_var.copy_(0.5 + torch.rand(WIDTH, generator=generator))
                module.weight.copy_(1 + 0.2 * torch.randn(WIDTH, generator=generator))
                module.bias.copy_(0.1 * torch.randn(WIDTH, generator=generator))
    return decoder.eval()


def dpt_pixel_embeddings(state: dict[str, torch.Tensor], features: list[torch.Tensor]) -> torch.Tensor:
    """DPT/LSeg's decoder on vltk's tensors, keyed by DPT's names (``layerN_rn``, ``refinenetN.resConfUnitK``)."""

    def batch_norm(x: torch.Tensor, name: str) -> torch.Tensor:
        return F.batch_norm(
            x, state[f"{name}.running_mean"], state[f"{name}.running_var"], state[f"{name}.weight"],
            state[f"{name}.bias"], training=False, eps=1e-5,
        )  # fmt: skip

    def rcu(x: torch.Tensor, name: str) -> torch.Tensor:
        out = batch_norm(F.conv2d(F.relu(x), state[f"{name}.conv1.weight"], padding=1), f"{name}.bn1")
        out = batch_norm(F.conv2d(F.relu(out), state[f"{name}.conv2.weight"], padding=1), f"{name}.bn2")
        return out + x

    def refinenet(n: int, *inputs: torch.Tensor) -> torch.Tensor:
        output = inputs[0]
        if len(inputs) == 2:
            output = output + rcu(inputs[1], f"refinenet{n}.resConfUnit1")
        output = rcu(output, f"refinenet{n}.resConfUnit2")
        output = F.interpolate(output, scale_factor=2, mode="bilinear", align_corners=True)
        return F.conv2d(output, state[f"refinenet{n}.out_conv.weight"], state[f"refinenet{n}.out_conv.bias"])

    layer = [F.conv2d(x, state[f"layer{n}_rn.weight"], padding=1) for n, x in enumerate(features, start=1)]
    path = refinenet(4, layer[3])
    path = refinenet(3, path, layer[2])
    path = refinenet(2, path, layer[1])
    path = refinenet(1, path, layer[0])
    return F.conv2d(path, state["head1.weight"], state["head1.bias"])


def to_dpt_names(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """vltk's keys -> DPT/LSeg's (the one-to-one map of the decoder's docstring)."""
    renamed = {}
    for key, value in state.items():
        parts = key.split(".")
        if parts[0] == "scratch":
            name = f"layer{int(parts[1]) + 1}_rn." + ".".join(parts[2:])
        elif parts[0] == "fusion":
            unit = {"lateral_unit": "resConfUnit1", "output_unit": "resConfUnit2", "out_conv": "out_conv"}[parts[2]]
            rest = ".".join(parts[3:]).replace("norm1", "bn1").replace("norm2", "bn2")
            name = f"refinenet{int(parts[1]) + 1}.{unit}.{rest}"
        elif parts[0] == "head":
            name = "head1." + ".".join(parts[1:])
        else:
            raise AssertionError(f"unexpected key {key}")
        renamed[name] = value
    return renamed


def pyramid(height: int, width: int, seed: int = 0) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [
        torch.randn(2, c, height // s, width // s, generator=generator)
        for c, s in zip(IN_CHANNELS, (4, 8, 16, 32), strict=True)
    ]


def test_pixel_embeddings_equal_dpts_fusion_order() -> None:
    decoder = build()
    features = pyramid(64, 96)
    state = to_dpt_names(decoder.state_dict())
    with torch.no_grad():
        expected = dpt_pixel_embeddings(state, features)
        got = decoder.pixel_embeddings(features)
    assert got.shape == expected.shape == (2, TEXT_DIM, 32, 48)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_the_coarsest_level_runs_one_unit_only() -> None:
    """The coarsest block maps its level ``x`` to ``out_conv(up(RCU(x)))`` and has no lateral unit."""
    block = build().fusion[-1]
    assert block.lateral_unit is None
    x = torch.randn(1, WIDTH, 2, 3)
    with torch.no_grad():
        expected = block.out_conv(F.interpolate(block.output_unit(x), size=(4, 6), mode="bilinear", align_corners=True))
        torch.testing.assert_close(block(x, None, (4, 6)), expected)


def test_parameter_keys_are_dpts_less_the_unit_dpt_never_runs() -> None:
    decoder = build()
    keys = set(to_dpt_names(decoder.state_dict()))
    units = {
        f"refinenet{n}.resConfUnit{k}.{part}"
        for n in (1, 2, 3, 4)
        for k in (1, 2)
        for part in ("conv1.weight", "conv2.weight")
        + tuple(f"bn{b}.{s}" for b in (1, 2) for s in ("weight", "bias", "running_mean", "running_var"))
        + ("bn1.num_batches_tracked", "bn2.num_batches_tracked")
    }
    dpt = (
        {f"layer{n}_rn.weight" for n in (1, 2, 3, 4)}
        | units
        | {f"refinenet{n}.out_conv.{s}" for n in (1, 2, 3, 4) for s in ("weight", "bias")}
        | {"head1.weight", "head1.bias"}
    )
    never_run = {key for key in dpt if key.startswith("refinenet4.resConfUnit1.")}
    assert len(never_run) == 12
    assert keys == dpt - never_run
    assert not any(key.startswith("fusion.3.lateral_unit") for key in decoder.state_dict())
