"""Peak memory of one real training step (forward + backward + AdamW step), shared by the memory benchmarks.

The step is the trainer's: the run's parameter groups and optimizer (``vltk.engine.optimization.build_optimizer``),
``train.precision``'s autocast and scaler (``vltk.engine.precision.MixedPrecision``), the model's own loss. A
warm-up step creates AdamW's two moments, then the second step is measured: its peak (activations kept for
backward, gradients, temporaries) plus the weights and the moments, which a real run holds all the time, is the
total (``peak_total_bytes``).

How memory is measured, by device:

* **CPU**: ``vltk_kernels.benchmarking.measure.PeakTracker``, a ``TorchDispatchMode`` that adds up the bytes of
  every tensor storage created while the step runs and subtracts them when the storage is freed (the CPU
  backward runs on the calling thread, so backward and recomputation are seen too). PyTorch's CPU allocator has
  no peak statistic and ``tracemalloc`` does not see its allocations; process RSS is too coarse to compare runs.
* **CUDA**: the caching allocator's ``max_memory_allocated`` minus what was allocated before the step.

``weights_bytes`` (parameters and buffers) is added to get the total a GPU would need, which is what Rein's
10.0 vs 14.7 GB compares.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

from vltk.config import RunConfig, build_config, resolve
from vltk.engine.optimization import build_optimizer
from vltk.engine.precision import MixedPrecision
from vltk.interfaces import count_trainable
from vltk.pipeline import build_model
from vltk.plugins import get_plugin_manager
from vltk_kernels.benchmarking.measure import PeakTracker

#: Speed and memory do not depend on the weights' values, and the default and synthetic recipes load a shipped
#: foundation that exists only for eva02-tiny (any other ``backbone.variant`` would stop the build): every
#: benchmark that times or measures a model builds its backbone at random init, put first so that an explicit
#: ``backbone.pretrained=...`` override still wins.
RANDOM_BACKBONE = "backbone.pretrained=null"


def benchmark_config(
    components: dict[str, str] | None = None, overrides: list[str] | None = None, recipe: str | None = None
) -> RunConfig:
    """The config a timing or memory benchmark builds: ``recipe`` (None: the default) under ``components`` and
    ``overrides``, with the backbone at random init (:data:`RANDOM_BACKBONE`)."""
    return build_config(
        recipe,
        components=components,
        overrides=[RANDOM_BACKBONE, *(overrides or [])],
        recipe_dirs=get_plugin_manager().recipe_dirs(),
    )


def build_run(components: dict[str, str], overrides: list[str]) -> tuple[torch.nn.Module, Any]:
    """The model and resolved run of a configuration (the default recipe under ``components`` + ``overrides``)."""
    run = resolve(benchmark_config(components, overrides), get_plugin_manager().get_registry())
    torch.manual_seed(0)
    return build_model(run), run


def weights_bytes(model: torch.nn.Module) -> int:
    tensors = [*model.parameters(), *model.buffers()]
    return sum(t.numel() * t.element_size() for t in tensors)


def prepare_step(
    model: torch.nn.Module, run: Any, batch: int, size: int, precision: str, device: torch.device
) -> Callable[[], float]:
    """A closure running one training step of ``model`` on fixed random images ``[batch, 3, size, size]``."""
    model.to(device).train()
    optimizer = build_optimizer(model, run.config)
    amp = MixedPrecision(precision, device)
    trainable = [p for group in optimizer.param_groups for p in group["params"]]
    generator = torch.Generator().manual_seed(1)
    images = torch.rand(batch, 3, size, size, generator=generator).to(device)
    labels = torch.randint(0, len(model.class_names), (batch, size, size), generator=generator).to(device)

    def step() -> float:
        optimizer.zero_grad(set_to_none=True)
        with amp.autocast():
            loss = model.loss(images, labels)["loss"].float()
        amp.backward(loss)
        amp.step(optimizer, trainable, None)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return float(loss.detach())

    step.optimizer = optimizer  # type: ignore[attr-defined]
    return step


def peak_memory(step: Callable[[], float], device: torch.device) -> tuple[int, str]:
    """Peak bytes allocated above what existed before, while ``step`` runs (see the module docstring)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        step()
        return torch.cuda.max_memory_allocated(device) - before, "torch.cuda.max_memory_allocated"
    tracker = PeakTracker()
    with tracker:
        step()
    return tracker.peak, "PeakTracker (TorchDispatchMode storage accounting)"


def interleaved_seconds(steps: dict[str, Callable[[], float]], rounds: int) -> dict[str, float | None]:
    """Median seconds per step of each closure, timed round-robin so that a load change hits all of them."""
    samples: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            began = time.perf_counter()
            step()
            samples[name].append(time.perf_counter() - began)
    return {name: statistics.median(values) if values else None for name, values in samples.items()}


def optimizer_state_bytes(optimizer: torch.optim.Optimizer) -> int:
    return sum(
        value.numel() * value.element_size()
        for state in optimizer.state.values()
        for value in state.values()
        if isinstance(value, torch.Tensor)
    )


def train_step_memory(
    model: torch.nn.Module, run: Any, batch: int, size: int, precision: str, device: torch.device
) -> dict[str, Any]:
    """Peak memory of a steady-state training step: one warm-up step creates AdamW's moments (which then stay
    alive through every later forward and backward, as in a real run), the second step is measured."""
    step = prepare_step(model, run, batch, size, precision, device)
    step()
    optimizer = step.optimizer  # type: ignore[attr-defined]
    peak, method = peak_memory(step, device)
    weights, state = weights_bytes(model), optimizer_state_bytes(optimizer)
    return {
        "trainable_params": count_trainable(model),
        "weights_bytes": weights,
        "optimizer_state_bytes": state,
        "peak_extra_bytes": int(peak),
        "peak_total_bytes": int(peak + weights + state),
        "memory_method": method,
    }


__all__ = [
    "RANDOM_BACKBONE",
    "benchmark_config",
    "build_run",
    "interleaved_seconds",
    "peak_memory",
    "prepare_step",
    "train_step_memory",
    "weights_bytes",
]
