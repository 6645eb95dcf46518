"""``train.compile``: the backbone with every kind of block hook traces into one graph, and a compiled run trains
the same losses as an eager one.

Graph breaks and per-layer recompilation are what make ``torch.compile`` slow or useless, so they are checked
with ``torch._dynamo.explain`` (no code generation: fast). The run comparison uses the ``aot_eager`` backend
(the same graphs, autograd through AOTAutograd, no C++ compilation), so it stays quick on a CPU.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch

from vltk.config import build_config
from vltk.pipeline import build_model
from vltk.plugins import get_plugin_manager
from vltk.testing import invoke

CASES = [
    pytest.param({"adapter": "rein"}, [], id="eva02-rein"),
    pytest.param({"adapter": "vpt"}, [], id="eva02-vpt"),
    pytest.param({"adapter": "lora"}, [], id="eva02-lora"),
    pytest.param({"adapter": "frozen"}, [], id="eva02-frozen"),
    pytest.param({"backbone": "dinov2", "adapter": "rein"}, ["backbone.variant=tiny"], id="dinov2-rein"),
    pytest.param({"backbone": "clip-vit", "adapter": "vpt"}, ["backbone.variant=tiny"], id="clip-vit-vpt"),
]


@pytest.mark.parametrize(("components", "overrides"), CASES)
def test_backbone_and_adapter_trace_into_one_graph(components: dict, overrides: list[str]) -> None:
    config = build_config(
        components=components, overrides=["dataset.size=32", *overrides], recipe_dirs=get_plugin_manager().recipe_dirs()
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = build_model(config).train()
    torch._dynamo.reset()
    explained = torch._dynamo.explain(model.backbone.forward_features)(
        torch.rand(2, 3, 32, 32), block_hooks=(model.adapter,)
    )
    reasons = [str(item.reason).splitlines()[0] for item in explained.break_reasons]
    assert explained.graph_break_count == 0, reasons
    assert explained.graph_count == 1  # every block and layer index inside one graph: no per-layer recompiles


TINY = [
    "dataset.size=32",
    "dataset.num_train=4",
    "dataset.num_val=2",
    "dataset.domains=[synthetic,fog]",
    "train.iters=3",
    "train.batch_size=2",
    "eval.batch_size=2",
    "eval.overlays=0",
    "train.checkpoint_interval=100",
]


def test_compiled_run_trains_the_eager_losses(tmp_path: Path) -> None:
    losses = {}
    for name, extra in (("eager", []), ("compiled", ["train.compile=true", "train.compile_backend=aot_eager"])):
        result = invoke(["train", "--output", str(tmp_path / name), "--quiet", *TINY, *extra])
        assert result.exit_code == 0, result.output
        history = json.loads((tmp_path / name / "metrics.json").read_text())["history"]["train"]
        losses[name] = [entry["loss"] for entry in history]
    assert losses["compiled"] == pytest.approx(losses["eager"], rel=1e-4, abs=1e-5)
    state = torch.load(tmp_path / "compiled" / "last.pt", weights_only=True)
    assert not any("_orig_mod" in key for key in state["model"])  # checkpoints keep the eager names


def test_unknown_compile_backend_is_one_line(tmp_path: Path) -> None:
    result = invoke(
        ["train", "--output", str(tmp_path / "run"), *TINY, "train.compile=true", "train.compile_backend=nope"]
    )
    assert result.exit_code == 2 and "compile_backend" in result.output and "inductor" in result.output
    assert not (tmp_path / "run").exists()
