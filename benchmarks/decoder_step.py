"""Time and peak memory of one training step with the Mask2Former decoder versus Semantic FPN.

Tiny EVA02 + Rein, then each decoder, one training step (forward + loss + backward + AdamW step) on the same
inputs, all in one process so the ratios against the ``fpn`` baseline are meaningful on a noisy machine:

- ``fpn``: Semantic FPN (defaults), Rein without the query link (FPN takes no queries);
- ``mask2former``: the paper's head (256-d, 6 encoder + 9 decoder layers, 12,544 points), Rein's 100 tokens as
  its queries;
- ``mask2former-tiny``: the CPU recipe's shrunken head (64-d, 2 encoder + 3 decoder layers, 1,024 points).

Labels are blocky random maps (32x32-pixel cells of random classes), so each image holds a realistic handful of
classes (Mask2Former's matching and mask losses scale with the classes present, per-pixel noise would be a
worst case).

Peak memory. On CUDA: ``torch.cuda.max_memory_allocated`` over the timed steps, minus what was allocated before.
On CPU there is no allocator peak counter and RSS is blurred by malloc caching, so one extra step runs under
``torch.profiler`` with ``profile_memory=True``: every CPU tensor allocation and free is recorded with its size,
and the peak of their running sum is the step's peak *additional* tensor memory (activations, gradients,
optimizer temporaries) over what was live before it (weights, optimizer state). Python objects and allocator
slack are not counted; the profiled step is not timed.

    python benchmarks/decoder_step.py --threads 1          # sizes 128 and 256, batch 4, CPU, one thread
    python benchmarks/decoder_step.py --sizes 512 --device cuda --json benchmarks/results/decoder_step_cuda.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from train_memory import benchmark_config

from vltk.engine.optimization import build_param_groups
from vltk.interfaces import count_trainable
from vltk.pipeline import build_model
from vltk_kernels.benchmarking.provenance import result_header, write_result

TINY_MASK2FORMER = [
    "decoder.hidden_dim=64",
    "decoder.enc_layers=2",
    "decoder.dec_layers=3",
    "decoder.enc_ffn=256",
    "decoder.dec_ffn=256",
    "decoder.num_points=1024",
    "adapter.query_dims=64",
]
#: name -> (decoder, overrides). Rein keeps its default 100 tokens everywhere.
DECODERS: dict[str, tuple[str, list[str]]] = {
    "fpn": ("fpn", ["adapter.link_token_to_query=false"]),
    "mask2former": ("mask2former", []),
    "mask2former-tiny": ("mask2former", TINY_MASK2FORMER),
}


def blocky_labels(batch: int, size: int, num_classes: int, cell: int, generator: torch.Generator) -> torch.Tensor:
    cells = torch.randint(0, num_classes, (batch, -(-size // cell), -(-size // cell)), generator=generator)
    return cells.repeat_interleave(cell, 1).repeat_interleave(cell, 2)[:, :size, :size].contiguous()


def cpu_step_peak_bytes(step: Any) -> int:
    """Peak of the running sum of CPU tensor allocations during one ``step()`` (torch.profiler memory events)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "trace.json"
        prof.export_chrome_trace(str(path))
        trace = json.loads(path.read_text())
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    memory = sorted(
        (e for e in events if e.get("name") == "[memory]" and e.get("args", {}).get("Device Type", 0) == 0),
        key=lambda e: e["ts"],
    )
    live = peak = 0
    for event in memory:
        live += int(event["args"]["Bytes"])
        peak = max(peak, live)
    return peak


def run_case(name: str, size: int, args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    decoder, overrides = DECODERS[name]
    config = benchmark_config({"adapter": "rein", "decoder": decoder}, [f"backbone.variant={args.variant}", *overrides])
    torch.manual_seed(0)
    model = build_model(config).to(device).train()
    optimizer = torch.optim.AdamW(build_param_groups(model, config), lr=1e-4)
    generator = torch.Generator().manual_seed(1)
    images = torch.rand(args.batch, 3, size, size, generator=generator).to(device)
    labels = blocky_labels(args.batch, size, len(model.class_names), 32, generator).to(device)
    losses: list[float] = []

    def step() -> None:
        loss = model.loss(images, labels)["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())  # also synchronises CUDA

    for _ in range(args.warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated() - before
        method = "torch.cuda.max_memory_allocated - memory_allocated before the timed steps"
    else:
        peak = cpu_step_peak_bytes(step)
        method = "torch.profiler profile_memory: peak running sum of CPU tensor allocations in one step"
    times.sort()
    return {
        "decoder": name,
        "size": size,
        "trainable_params": count_trainable(model),
        "decoder_params": sum(p.numel() for p in model.decoder.parameters()),
        "median_ms": 1000 * statistics.median(times),
        "min_ms": 1000 * times[0],
        "max_ms": 1000 * times[-1],
        "peak_step_memory_mb": peak / 2**20,
        "memory_method": method,
        "first_loss": losses[0],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", default="tiny", help="eva02 variant")
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 256], help="square input sizes")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--decoders", nargs="+", default=list(DECODERS), choices=list(DECODERS))
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (default: torch's choice); 1 gives stable figures on a shared machine, where "
        "OpenMP threads spinning on busy cores can slow a step tenfold",
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", default="benchmarks/results/decoder_step.json", help="output file")
    args = parser.parse_args()
    if args.decoders[0] != "fpn":
        parser.error("the first decoder is the baseline of the ratios: list fpn first")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    results = []
    for size in args.sizes:
        rows = [run_case(name, size, args, device) for name in args.decoders]
        for row in rows:
            row["time_vs_fpn"] = row["median_ms"] / rows[0]["median_ms"]
            row["memory_vs_fpn"] = row["peak_step_memory_mb"] / rows[0]["peak_step_memory_mb"]
        results.extend(rows)
    payload = {
        **result_header("decoder_step", device),
        "kernel_backend": os.environ.get("VLTK_KERNEL_BACKEND", "auto"),
        "settings": {
            "backbone": f"eva02-{args.variant}",
            "adapter": "rein (100 tokens)",
            "batch": args.batch,
            "repeats": args.repeats,
            "warmup": args.warmup,
            "labels": "blocky random, 32 px cells",
        },
        "results": results,
    }
    print(f"train step, eva02-{args.variant} + rein, batch {args.batch}, {payload['device']}")
    print(
        f"{'decoder':17s} {'size':>4s} {'dec params':>11s} {'median ms':>10s} {'peak MB':>9s} "
        f"{'time/fpn':>8s} {'mem/fpn':>8s}"
    )
    for r in results:
        print(
            f"{r['decoder']:17s} {r['size']:>4d} {r['decoder_params']:>11,d} {r['median_ms']:>10.1f} "
            f"{r['peak_step_memory_mb']:>9.1f} {r['time_vs_fpn']:>7.2f}x {r['memory_vs_fpn']:>7.2f}x"
        )
    write_result(args.json, payload)


if __name__ == "__main__":
    main()
