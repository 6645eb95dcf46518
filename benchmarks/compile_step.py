"""Eager vs ``torch.compile``d training step of the default recipe's model, in one process, same weights.

``train.compile`` compiles the model's forward (what the trainer does); this measures what it buys: the median
step time of both after warm-up, the one-off compilation time, and whether the loss curves agree (both models
start from the same weights and see the same batches). Writes JSON; the ratio is the figure to quote.

    OMP_NUM_THREADS=2 python benchmarks/compile_step.py                      # CPU, inductor (C++), 64x64, batch 4
    python benchmarks/compile_step.py --device cuda --precision bf16 --size 256 --json /tmp/compile_bf16.json
    python benchmarks/compile_step.py --backend aot_eager --steps 3          # quick check without code generation
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
import warnings
from typing import Any

import torch

from vltk.config import build_config
from vltk.engine.optimization import build_param_groups
from vltk.pipeline import build_model
from vltk.plugins import get_plugin_manager
from vltk_kernels.benchmarking.provenance import result_header, write_result


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def run(model: torch.nn.Module, config: Any, batches: list, args: argparse.Namespace, device: torch.device) -> dict:
    """Train ``model`` on ``batches`` (one step each), timing every step; the first steps include compilation."""
    optimizer = torch.optim.AdamW(build_param_groups(model, config), lr=1e-4)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.precision == "bf16")
    losses, times = [], []
    for images, labels in batches:
        _synchronize(device)
        start = time.perf_counter()
        with autocast:
            loss = model.loss(images, labels)["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        _synchronize(device)
        times.append(time.perf_counter() - start)
        losses.append(float(loss.detach()))
    timed = sorted(times[args.warmup :])
    return {
        "losses": losses,
        "first_step_s": times[0],
        "median_ms": 1000 * statistics.median(timed),
        "p20_ms": 1000 * timed[int(0.2 * (len(timed) - 1))],
        "p80_ms": 1000 * timed[int(0.8 * (len(timed) - 1))],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=64, help="square input size")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=12, help="training steps per model (the first --warmup untimed)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--backend", default="inductor", help="torch.compile backend")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    parser.add_argument("--json", default="benchmarks/results/compile_step_cpu.json", help="output file")
    args = parser.parse_args()
    if args.steps <= args.warmup:
        parser.error("--steps must exceed --warmup")
    device = torch.device(args.device)
    config = build_config(overrides=[f"dataset.size={args.size}"], recipe_dirs=get_plugin_manager().recipe_dirs())
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        eager = build_model(config).to(device).train()
    compiled = copy.deepcopy(eager)
    compiled.compile(backend=args.backend)
    generator = torch.Generator().manual_seed(1)
    classes = len(eager.class_names)
    batches = [
        (
            torch.rand(args.batch, 3, args.size, args.size, generator=generator).to(device),
            torch.randint(0, classes, (args.batch, args.size, args.size), generator=generator).to(device),
        )
        for _ in range(args.steps)
    ]
    results = {
        "eager": run(eager, config, batches, args, device),
        "compiled": run(compiled, config, batches, args, device),
    }
    differences = [abs(a - b) for a, b in zip(results["eager"]["losses"], results["compiled"]["losses"], strict=True)]
    payload = {
        **result_header("compile_step", device),
        "settings": {
            "model": "default recipe (eva02 tiny + fpn, frozen adapter)",
            "size": args.size,
            "batch": args.batch,
            "steps": args.steps,
            "warmup": args.warmup,
            "backend": args.backend,
            "precision": args.precision,
        },
        "results": results,
        "speedup": results["eager"]["median_ms"] / results["compiled"]["median_ms"],
        "max_loss_difference": max(differences),
    }
    print(f"train step, default recipe, {args.batch}x3x{args.size}x{args.size}, {args.precision}, {payload['device']}")
    for name, result in results.items():
        print(f"{name:9s} median {result['median_ms']:8.1f} ms  first step {result['first_step_s']:7.1f} s")
    print(f"compiled speed-up {payload['speedup']:.2f}x, largest loss difference {payload['max_loss_difference']:.2e}")
    write_result(args.json, payload)


if __name__ == "__main__":
    main()
