"""Data-parallel scaling on the CPU: 1 process against 2 gloo processes (torchrun), images per second and ratio.

The same global batch (``--batch`` images of ``--size`` pixels, tiny EVA02 + FPN, AdamW) is trained for
``--steps`` timed steps after ``--warmup`` untimed ones:

* ``single``: one process, one intra-op thread, the whole batch (the baseline of the ratios);
* ``single_2threads``: one process, two intra-op threads (what the second core gives without DDP);
* ``ddp``: two torchrun ranks of one thread each, half the batch each, through
  :func:`vltk.engine.distributed.wrap_for_training` exactly as the trainer does (``find_unused_parameters=True``);
* ``ddp_static_graph``: the same with DDP's ``static_graph=True`` instead of ``find_unused_parameters``, which
  prices the per-step search for unused parameters. (DDP with neither fails on every vltk model: the backbone's
  image-text projection and final norm never take part in a segmentation loss.)

Each mode runs in its own subprocess, ``--rounds`` times with the modes interleaved; ratios are against
``single`` of the same invocation, so they mean something on a machine other jobs share. Writes JSON (device,
versions, commit, per-mode timings, ratios).

    python benchmarks/ddp_scaling.py                      # -> benchmarks/results/ddp_scaling_cpu.json
    python benchmarks/ddp_scaling.py --size 64 --steps 5 --json /tmp/ddp.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from vltk_kernels.benchmarking.provenance import result_header, write_result

ROOT = Path(__file__).resolve().parents[1]
MODES: dict[str, dict[str, Any]] = {
    "single": {"ranks": 1, "threads": 1},
    "single_2threads": {"ranks": 1, "threads": 2},
    "ddp": {"ranks": 2, "threads": 1},
    "ddp_static_graph": {"ranks": 2, "threads": 1},
}


def worker(args: argparse.Namespace) -> None:
    """One rank of one mode: train ``args.steps`` timed steps; rank 0 writes the step times to ``args.part``."""
    from train_memory import benchmark_config

    from vltk.config import resolve
    from vltk.engine import distributed
    from vltk.engine.optimization import build_param_groups
    from vltk.pipeline import build_model
    from vltk.plugins import get_plugin_manager

    torch.set_num_threads(MODES[args.mode]["threads"])
    context, device = distributed.setup(torch.device("cpu"))
    manager = get_plugin_manager()
    overrides = [f"backbone.variant={args.variant}", f"dataset.size={args.size}", "device=cpu"]
    run = resolve(benchmark_config(overrides=overrides), manager.get_registry())
    torch.manual_seed(0)
    model = build_model(run, class_names=[f"c{i}" for i in range(19)], ignore_index=255).train()
    optimizer = torch.optim.AdamW(build_param_groups(model, run.config), lr=1e-4)
    trained = distributed.wrap_for_training(model, context, device, static_graph=args.mode == "ddp_static_graph")
    local = distributed.local_batch_size(context, args.batch)
    generator = torch.Generator().manual_seed(1)
    images = torch.rand(args.batch, 3, args.size, args.size, generator=generator)
    labels = torch.randint(0, 19, (args.batch, args.size, args.size), generator=generator)
    start = context.rank * local
    images, labels = images[start : start + local], labels[start : start + local]
    times = []
    for index in range(args.warmup + args.steps):
        distributed.barrier(context)
        began = time.perf_counter()
        loss = trained.loss(images, labels)["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        distributed.barrier(context)
        if index >= args.warmup:
            times.append(time.perf_counter() - began)
    if context.is_main:
        Path(args.part).write_text(json.dumps({"step_s": times, "ranks": context.world_size}))
    distributed.shutdown()


def run_mode(mode: str, args: argparse.Namespace, folder: Path) -> list[float]:
    """One subprocess (or torchrun) of ``mode``: its timed step durations in seconds."""
    part = folder / f"{mode}.json"
    ranks = MODES[mode]["ranks"]
    launcher = (
        [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}"]
        if ranks > 1
        else [sys.executable]
    )
    options = ["--mode", mode, "--part", str(part), "--size", str(args.size), "--batch", str(args.batch)]
    options += ["--steps", str(args.steps), "--warmup", str(args.warmup), "--variant", args.variant]
    paths = [str(ROOT), str(ROOT / "kernels"), str(ROOT / "plugins"), os.environ.get("PYTHONPATH", "")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p), "OMP_NUM_THREADS": "1"}
    subprocess.run([*launcher, __file__, "--worker", *options], env=env, check=True)
    return json.loads(part.read_text())["step_s"]


def summarise(mode: str, timings: list[float], args: argparse.Namespace) -> dict[str, Any]:
    ranks = MODES[mode]["ranks"]
    median = statistics.median(timings)
    return {
        "mode": mode,
        "ranks": ranks,
        "threads_per_rank": MODES[mode]["threads"],
        "images_per_rank": args.batch // ranks,
        "median_step_ms": 1000 * median,
        "p20_step_ms": 1000 * statistics.quantiles(timings, n=5)[0],
        "p80_step_ms": 1000 * statistics.quantiles(timings, n=5)[-1],
        "images_per_s": args.batch / median,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch", type=int, default=8, help="global batch (split over the ranks)")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--variant", default="tiny")
    parser.add_argument("--rounds", type=int, default=2, help="times every mode runs, interleaved")
    parser.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "ddp_scaling_cpu.json"))
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--mode", choices=sorted(MODES), help=argparse.SUPPRESS)
    parser.add_argument("--part", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return

    timings: dict[str, list[float]] = {mode: [] for mode in MODES}
    with tempfile.TemporaryDirectory() as folder:
        for _ in range(args.rounds):  # modes interleaved, so that a change of the machine's load hits them all
            for mode in MODES:
                timings[mode] += run_mode(mode, args, Path(folder))
    results = [summarise(mode, times, args) for mode, times in timings.items()]
    baseline = results[0]["images_per_s"]
    for entry in results:
        entry["ratio_vs_single"] = entry["images_per_s"] / baseline
    by_mode = {entry["mode"]: entry for entry in results}
    report = {
        **result_header("ddp_scaling", torch.device("cpu")),
        "settings": {
            "backbone": f"eva02-{args.variant}",
            "decoder": "fpn",
            "adapter": "full",
            "size": args.size,
            "global_batch": args.batch,
            "steps": args.steps,
            "warmup": args.warmup,
            "rounds": args.rounds,
            "backend": "gloo",
        },
        "results": results,
        "speedup_2_ranks": by_mode["ddp"]["ratio_vs_single"],
        "find_unused_vs_static_graph": by_mode["ddp"]["median_step_ms"] / by_mode["ddp_static_graph"]["median_step_ms"],
    }
    write_result(args.json, report)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
