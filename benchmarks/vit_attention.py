"""ViT attention on CPU: fused SDPA (PyTorch's flash kernel for CPU) vs the math backend, time and memory.

The attention of one ViT-B/16 block (12 heads of 64, cls token + (S/16)² patches) at input sizes S = 512, 768
and 1024. The math backend materialises the ``[B, heads, N, N]`` scores and probabilities, so its extra memory
grows with N² (16x from 512² to 1024²); the fused kernel keeps tiles on chip and grows with N (4x). This is the
choice behind the backbones' ``attention`` option (``auto`` = xformers on CUDA when it works, else SDPA).

    python benchmarks/vit_attention.py               # -> benchmarks/results/vit_attention_cpu.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from vltk_kernels.benchmarking import PeakTracker, environment

BACKENDS = {"sdpa": None, "math": SDPBackend.MATH}


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, backend: str) -> torch.Tensor:
    if BACKENDS[backend] is None:
        return F.scaled_dot_product_attention(q, k, v)
    with sdpa_kernel(BACKENDS[backend]):
        return F.scaled_dot_product_attention(q, k, v)


def measure(size: int, backend: str, args: argparse.Namespace) -> dict:
    tokens = (size // args.patch) ** 2 + 1
    generator = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(args.batch, args.heads, tokens, args.head_dim, generator=generator) for _ in range(3))
    with torch.no_grad():
        tracker = PeakTracker()
        with tracker:
            out = attention(q, k, v, backend)
        del out
        attention(q, k, v, backend)  # warm-up
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            attention(q, k, v, backend)
            times.append(1000 * (time.perf_counter() - start))
    times.sort()
    output_bytes = q.numel() * q.element_size()
    return {
        "input_size": size,
        "tokens": tokens,
        "backend": backend,
        "median_ms": times[len(times) // 2],
        "min_ms": times[0],
        "max_ms": times[-1],
        "peak_extra_mb": tracker.peak / 2**20,
        "output_mb": output_bytes / 2**20,
        "scores_mb": args.batch * args.heads * tokens * tokens * 4 / 2**20,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 768, 1024])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--patch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", default=str(Path(__file__).parent / "results" / "vit_attention_cpu.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    results = [measure(size, backend, args) for size in args.sizes for backend in BACKENDS]
    smallest = {r["backend"]: r for r in results if r["input_size"] == min(args.sizes)}
    for row in results:
        base = smallest[row["backend"]]
        row["tokens_ratio"] = row["tokens"] / base["tokens"]
        row["memory_ratio"] = row["peak_extra_mb"] / base["peak_extra_mb"]
        row["time_ratio"] = row["median_ms"] / base["median_ms"]
    payload = {
        "benchmark": "vit_attention",
        **environment(torch.device("cpu")),
        "settings": {
            "batch": args.batch,
            "heads": args.heads,
            "head_dim": args.head_dim,
            "patch": args.patch,
            "dtype": "fp32",
            "pass": "forward (no grad)",
            "repeats": args.repeats,
            "cpu_threads": torch.get_num_threads(),
            "memory": "peak bytes of tensor storages created by the call (dispatch-level tracker)",
        },
        "results": results,
    }
    print(f"ViT-B/16 attention, batch {args.batch}, fp32, {payload['device']}")
    print(
        f"{'size':>5s} {'tokens':>6s} {'backend':>7s} {'median ms':>10s} {'peak MB':>9s} {'mem x':>6s} {'time x':>6s}"
    )
    for r in results:
        print(
            f"{r['input_size']:>5d} {r['tokens']:>6d} {r['backend']:>7s} {r['median_ms']:>10.1f} "
            f"{r['peak_extra_mb']:>9.1f} {r['memory_ratio']:>6.1f} {r['time_ratio']:>6.1f}"
        )
    path = Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
