"""The timing and memory benchmarks build any backbone size: they start from random weights.

The default and synthetic recipes load the shipped eva02-tiny foundation, so a benchmark that only set
``backbone.variant=base`` (``rein_memory.py``, ``activation_checkpointing.py --variant large`` in the GPU suite)
stopped at build time. Every such script builds through ``benchmarks/train_memory.py``'s ``benchmark_config``.
"""

from __future__ import annotations

import importlib
import sys
import warnings
from pathlib import Path
from types import ModuleType

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture(scope="module")
def train_memory() -> ModuleType:
    sys.path.insert(0, str(BENCHMARKS))
    try:
        yield importlib.import_module("train_memory")
    finally:
        sys.path.remove(str(BENCHMARKS))


@pytest.mark.parametrize("variant", ["small", "base", "large"])
@pytest.mark.parametrize("components", [{}, {"adapter": "rein", "decoder": "mask2former"}])
def test_benchmark_config_starts_every_variant_from_random_weights(
    train_memory: ModuleType, variant: str, components: dict[str, str]
) -> None:
    config = train_memory.benchmark_config(components, [f"backbone.variant={variant}"])
    assert config.backbone.options()["pretrained"] is None


def test_an_explicit_pretrained_override_still_wins(train_memory: ModuleType) -> None:
    config = train_memory.benchmark_config({}, ["backbone.pretrained=builtin:vltk-tiny-clip"])
    assert config.backbone.options()["pretrained"] == "builtin:vltk-tiny-clip"


def test_build_run_builds_a_variant_without_shipped_weights(train_memory: ModuleType) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the random-weights warning is the point here
        model, run = train_memory.build_run(
            {"backbone": "eva02", "adapter": "rein", "decoder": "mask2former"},
            ["backbone.variant=small", "dataset.size=64"],
        )
    assert run.backbone.options.variant == "small"
    assert sum(p.numel() for p in model.parameters()) > 20_000_000  # a ViT-S, not the tiny default


@pytest.mark.parametrize(
    "script", ["train_step", "decoder_step", "ddp_scaling", "rein_memory", "activation_checkpointing"]
)
def test_every_variant_taking_benchmark_builds_through_benchmark_config(script: str) -> None:
    """A source check on purpose: running these scripts at a large variant takes minutes, and the failure this
    guards against (a config built without the random-weights override) is visible in the source."""
    source = (BENCHMARKS / f"{script}.py").read_text()
    assert "benchmark_config(" in source or "build_run(" in source
    assert "build_config(" not in source
