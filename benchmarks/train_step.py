"""Time one training step (forward + backward + AdamW step) of the tiny EVA02 + FPN model per adapter.

All adapters run in one process on the same inputs, so the ratios against the ``frozen`` baseline are
meaningful even on a noisy machine. Writes JSON (device, versions, git commit, per-adapter timings, ratios).

    python benchmarks/train_step.py                       # tiny EVA02, 128x128, batch 4, CPU
    python benchmarks/train_step.py --size 256 --repeats 20 --json benchmarks/results/train_step_256.json
    python benchmarks/train_step.py --device cuda --precision bf16 --json /tmp/train_step_bf16.json
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import torch
from train_memory import benchmark_config

from vltk.engine.optimization import build_param_groups
from vltk.interfaces import count_trainable
from vltk.pipeline import build_model
from vltk_kernels.benchmarking.provenance import result_header, write_result

ADAPTERS = ("frozen", "rein", "full")


def time_adapter(adapter: str, args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    overrides = (
        [f"backbone.variant={args.variant}", "adapter.link_token_to_query=false"]
        if adapter == "rein"
        else [f"backbone.variant={args.variant}"]
    )
    config = benchmark_config({"adapter": adapter}, overrides)
    torch.manual_seed(0)
    model = build_model(config).to(device).train()
    optimizer = torch.optim.AdamW(build_param_groups(model, config), lr=1e-4)
    generator = torch.Generator().manual_seed(1)
    images = torch.rand(args.batch, 3, args.size, args.size, generator=generator).to(device)
    labels = torch.randint(0, len(model.class_names), (args.batch, args.size, args.size), generator=generator)
    labels = labels.to(device)

    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.precision == "bf16")

    def step() -> None:
        with autocast:
            loss = model.loss(images, labels)["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()

    for _ in range(args.warmup):
        step()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    times.sort()
    result = {
        "adapter": adapter,
        "trainable_params": count_trainable(model),
        "total_params": sum(p.numel() for p in model.parameters()),
        "median_ms": 1000 * statistics.median(times),
        "p20_ms": 1000 * times[int(0.2 * (len(times) - 1))],
        "p80_ms": 1000 * times[int(0.8 * (len(times) - 1))],
    }
    if device.type == "cuda":
        result["peak_memory_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", default="tiny", help="eva02 variant")
    parser.add_argument("--size", type=int, default=128, help="square input size")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--precision", choices=("fp32", "bf16"), default="fp32", help="bf16: forward and loss under bf16 autocast"
    )
    parser.add_argument("--json", default="benchmarks/results/train_step.json", help="output file")
    args = parser.parse_args()
    device = torch.device(args.device)
    results = [time_adapter(adapter, args, device) for adapter in ADAPTERS]
    baseline = results[0]["median_ms"]
    for result in results:
        result["ratio_vs_frozen"] = result["median_ms"] / baseline
    payload = {
        **result_header("train_step", device),
        "settings": {
            "backbone": f"eva02-{args.variant}",
            "decoder": "fpn",
            "size": args.size,
            "batch": args.batch,
            "repeats": args.repeats,
            "precision": args.precision,
        },
        "results": results,
    }
    print(
        f"train step, eva02-{args.variant} + fpn, {args.batch}x3x{args.size}x{args.size}, {args.precision}, "
        f"{payload['device']}"
    )
    print(f"{'adapter':8s} {'trainable':>12s} {'median ms':>10s} {'p20':>8s} {'p80':>8s} {'vs frozen':>9s}")
    for r in results:
        print(
            f"{r['adapter']:8s} {r['trainable_params']:>12,d} {r['median_ms']:>10.1f} {r['p20_ms']:>8.1f} "
            f"{r['p80_ms']:>8.1f} {r['ratio_vs_frozen']:>8.2f}x"
        )
    write_result(args.json, payload)


if __name__ == "__main__":
    main()
