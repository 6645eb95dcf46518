"""Train-step time and peak memory against input size, for the default recipe and Rein + Mask2Former.

How cost grows with the number of tokens is what decides whether a recipe fits a GPU at 1024²: attention runs
through PyTorch SDPA (or xformers), whose memory is linear in the tokens, so the activations — and the step
memory — should grow roughly with the pixel count, not with its square, while the time of the attention products
grows faster. This measures one steady-state training step (forward + backward + AdamW, :mod:`train_memory`) per
size and model in one process and reports each against the smallest size, next to the pixel ratio.

    OMP_NUM_THREADS=2 python benchmarks/scaling.py --sizes 128 256 512                # a 2-core CPU
    python benchmarks/scaling.py --device cuda --sizes 128 256 512 768 1024          # gpu_suite.sh
"""

from __future__ import annotations

import argparse
import gc
import time
from typing import Any

import torch
from train_memory import prepare_step, train_step_memory

from vltk.config import build_config, resolve
from vltk.pipeline import build_model
from vltk.plugins import get_plugin_manager
from vltk_kernels.benchmarking.provenance import result_header, write_result

#: name -> (recipe, overrides): the default recipe, and Rein + Mask2Former at ``rein/synthetic``'s CPU widths.
MODELS: dict[str, tuple[str | None, list[str]]] = {
    "default (eva02-tiny + fpn)": (None, []),
    "rein + mask2former (eva02-tiny)": ("rein/synthetic", []),
}


def build_recipe(recipe: str | None, overrides: list[str]) -> tuple[torch.nn.Module, Any]:
    """The model and resolved run of ``recipe`` (None: the default) with ``overrides``."""
    manager = get_plugin_manager()
    run = resolve(build_config(recipe, overrides=overrides, recipe_dirs=manager.recipe_dirs()), manager.get_registry())
    torch.manual_seed(0)
    return build_model(run), run


def measure(name: str, size: int, args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    recipe, overrides = MODELS[name]
    model, run = build_recipe(recipe, overrides)
    memory = train_step_memory(model, run, args.batch, size, args.precision, device)
    step = prepare_step(model, run, args.batch, size, args.precision, device)
    step()  # warm-up (AdamW moments, caches)
    times = []
    for _ in range(args.repeats):
        began = time.perf_counter()
        step()
        times.append(time.perf_counter() - began)
    times.sort()
    del model, step
    gc.collect()
    return {
        "model": name,
        "size": size,
        "tokens": (size // 16) ** 2,
        "median_step_s": times[len(times) // 2],
        "peak_total_mb": memory["peak_total_bytes"] / 2**20,
        "peak_extra_mb": memory["peak_extra_bytes"] / 2**20,
        "memory_method": memory["memory_method"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 256, 512])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", default="benchmarks/results/scaling_cpu.json")
    args = parser.parse_args()
    device = torch.device(args.device)
    sizes = sorted(args.sizes)
    results = [measure(name, size, args, device) for name in MODELS for size in sizes]
    for name in MODELS:
        rows = [row for row in results if row["model"] == name]
        base = rows[0]
        for row in rows:
            row["pixels_vs_smallest"] = (row["size"] / base["size"]) ** 2
            row["time_vs_smallest"] = row["median_step_s"] / base["median_step_s"]
            row["extra_memory_vs_smallest"] = row["peak_extra_mb"] / base["peak_extra_mb"]
    payload = {
        **result_header("scaling", device),
        "settings": {"batch": args.batch, "precision": args.precision, "repeats": args.repeats, "sizes": sizes},
        "results": results,
    }
    print(f"train step vs input size, batch {args.batch}, {args.precision}, {payload['device']}")
    print(f"{'model':34s} {'size':>5s} {'s/step':>8s} {'x time':>7s} {'peak MB':>9s} {'x act.':>7s} {'x pixels':>8s}")
    for row in results:
        print(
            f"{row['model']:34s} {row['size']:>5d} {row['median_step_s']:>8.2f} {row['time_vs_smallest']:>6.2f}x "
            f"{row['peak_total_mb']:>9.0f} {row['extra_memory_vs_smallest']:>6.2f}x {row['pixels_vs_smallest']:>7.0f}x"
        )
    write_result(args.json, payload)


if __name__ == "__main__":
    main()
