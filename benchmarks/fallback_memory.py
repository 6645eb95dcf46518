"""Peak extra memory of the ops' PyTorch paths: the reference (``<op>/reference.py``) against the lean path the
``torch`` backend runs (``<op>/lean.py``), next to the theoretical minimum, forward and forward+backward.

Sizes are the issue's: pixel-text similarity at Cityscapes-512 (B 2, C 512, 128², K 19), Rein's token attention
at ViT-L/16 512² (B 4, N 1024, C 1024, M 100; and with M = 1024 tokens, beyond the Triton kernel's 512-token
limit, where [B, N, M] is as large as the output), deformable attention at Mask2Former 512² (B 2, 64² + 32² +
16² queries, 8 heads of 32, 4 points). The minimum is the bench case's ``min_extra_bytes``: the output for the
forward, plus every input's gradient for the forward+backward. For Rein, ``checkpoint`` is the other lean design
the issue names (``torch.utils.checkpoint`` of the reference per chunk of rows), measured to choose between them.

Memory is the peak of the tensor storages created during the call (``PeakTracker``, inputs excluded); the
forward runs under ``no_grad``, the forward+backward with every floating input requiring grad. Times are medians
of interleaved runs in the same process (ratios against the reference), on however many threads ``--threads``
says (OMP_NUM_THREADS is recorded too).

    OMP_NUM_THREADS=1 python benchmarks/fallback_memory.py     # -> benchmarks/results/fallback_memory_cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.utils.checkpoint import checkpoint

from vltk_kernels.benchmarking import environment
from vltk_kernels.benchmarking.measure import fresh_inputs, max_abs_error, measure_memory
from vltk_kernels.ms_deform_attn import ms_deform_attn_lean, ms_deform_attn_reference
from vltk_kernels.ms_deform_attn.bench import bench_case as msda_case
from vltk_kernels.pixel_text_similarity import pixel_text_similarity_lean, pixel_text_similarity_reference
from vltk_kernels.pixel_text_similarity.bench import bench_case as pts_case
from vltk_kernels.rein_attention import rein_attention_lean, rein_attention_reference
from vltk_kernels.rein_attention.bench import bench_case as rein_case
from vltk_kernels.rein_attention.lean import rows_per_chunk

#: The issue's goal: peak extra memory of the fallback <= this multiple of the theoretical minimum.
GOAL_RATIO = 2.0
#: Ops the goal applies to (deformable attention is reported, with no goal set).
GOAL_OPS = ("pixel_text_similarity", "rein_attention")


def rein_checkpointed(feats: torch.Tensor, tokens: torch.Tensor, values: torch.Tensor, scale: float) -> torch.Tensor:
    """The alternative design: the reference per chunk of rows under ``torch.utils.checkpoint``, concatenated."""
    step = rows_per_chunk(*feats.shape, tokens.shape[0], feats.element_size())  # the lean path's chunks
    parts = [
        checkpoint(rein_attention_reference, feats[:, start : start + step], tokens, values, scale, use_reentrant=False)
        for start in range(0, feats.shape[1], step)
    ]
    return torch.cat(parts, dim=1)


def problems() -> list[dict[str, Any]]:
    """(op, shape label, dims, case, implementations) for every measured problem."""
    pts, rein, msda = pts_case(), rein_case(), msda_case()
    many_tokens = {**rein.shape("vit-l-512").dims, "B": 2, "M": 1024}
    rein_impls = {"reference": rein_attention_reference, "lean": rein_attention_lean, "checkpoint": rein_checkpointed}
    return [
        {
            "op": "pixel_text_similarity",
            "shape": "cityscapes-512",
            "dims": dict(pts.shape("cityscapes-512").dims),
            "case": pts,
            "impls": {"reference": pixel_text_similarity_reference, "lean": pixel_text_similarity_lean},
        },
        {
            "op": "rein_attention",
            "shape": "vit-l-512",
            "dims": dict(rein.shape("vit-l-512").dims),
            "case": rein,
            "impls": rein_impls,
        },
        {
            "op": "rein_attention",
            "shape": "vit-l-512, 1024 tokens",
            "dims": many_tokens,
            "case": rein,
            "impls": rein_impls,
        },
        {
            "op": "ms_deform_attn",
            "shape": "m2f-512",
            "dims": dict(msda.shape("m2f-512").dims),
            "case": msda,
            "impls": {"reference": ms_deform_attn_reference, "lean": ms_deform_attn_lean},
        },
    ]


def interleaved_times(calls: dict[str, Callable[[], None]], repeats: int) -> dict[str, float]:
    """Median ms of each call, run in turn (one warm-up each) so a busy machine slows them alike."""
    for call in calls.values():
        call()
    samples: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(repeats):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            samples[name].append(1000 * (time.perf_counter() - start))
    return {name: statistics.median(values) for name, values in samples.items()}


def timed_call(fn: Callable[..., torch.Tensor], args: tuple, backward: bool) -> Callable[[], None]:
    inputs = fresh_inputs(args, backward)
    if not backward:

        def forward() -> None:
            with torch.no_grad():
                fn(*inputs)

        return forward
    leaves = [x for x in inputs if isinstance(x, torch.Tensor) and x.requires_grad]

    def forward_backward() -> None:
        for leaf in leaves:
            leaf.grad = None
        out = fn(*inputs)
        out.backward(torch.ones_like(out))

    return forward_backward


def measure_problem(problem: dict[str, Any], repeats: int, log: Callable[[str], None]) -> list[dict[str, Any]]:
    device = torch.device("cpu")
    case, dims = problem["case"], problem["dims"]
    args = case.make_inputs(dims, device, torch.float32)
    rows = []
    for backward in (False, True):
        pass_name = "fwd+bwd" if backward else "fwd"
        minimum = case.min_extra_bytes(dims, 4, backward)
        log(f"{problem['op']} {problem['shape']} {pass_name}")
        times = interleaved_times({n: timed_call(f, args, backward) for n, f in problem["impls"].items()}, repeats)
        for name, fn in problem["impls"].items():
            peak, method = measure_memory(fn, args, backward, device)
            row: dict[str, Any] = {
                "op": problem["op"],
                "shape": problem["shape"],
                "dims": dims,
                "pass": pass_name,
                "impl": name,
                "peak_extra_mb": peak / 2**20,
                "min_extra_mb": minimum / 2**20,
                "ratio_to_min": peak / minimum,
                "median_ms": times[name],
                "time_vs_reference": times[name] / times["reference"],
                "memory_method": method,
            }
            if name != "reference":
                row["max_abs_err_vs_reference"] = max_abs_error(fn, problem["impls"]["reference"], args, backward)
            if problem["op"] in GOAL_OPS and name == "lean":
                row["goal_met"] = row["ratio_to_min"] <= GOAL_RATIO
            rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", default=str(Path(__file__).parent / "results" / "fallback_memory_cpu.json"))
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: stable on a shared machine)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per implementation (interleaved)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    results: list[dict[str, Any]] = []
    for problem in problems():
        results.extend(measure_problem(problem, args.repeats, lambda message: print(f"  running {message}")))
    lean_rows = [r for r in results if r["impl"] == "lean" and r["op"] in GOAL_OPS]
    payload = {
        "benchmark": "fallback_memory",
        **environment(torch.device("cpu")),
        "machine": {"cpu_count": os.cpu_count(), "processor": platform.processor() or platform.machine()},
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "torch_threads": torch.get_num_threads(),
        "goal": f"lean peak extra memory <= {GOAL_RATIO:g}x the theoretical minimum for {', '.join(GOAL_OPS)}",
        "goal_met": all(r["goal_met"] for r in lean_rows),
        "results": results,
    }
    print(f"fallback memory, {payload['device']}, OMP_NUM_THREADS={payload['omp_num_threads']}")
    print(f"{'op':22s} {'shape':24s} {'pass':8s} {'impl':10s} {'peak MB':>9s} {'min MB':>8s} {'x min':>7s} "
          f"{'ms':>9s} {'vs ref':>7s}")  # fmt: skip
    for r in results:
        print(f"{r['op']:22s} {r['shape']:24s} {r['pass']:8s} {r['impl']:10s} {r['peak_extra_mb']:9.1f} "
              f"{r['min_extra_mb']:8.1f} {r['ratio_to_min']:6.2f}x {r['median_ms']:9.1f} "
              f"{r['time_vs_reference']:6.2f}x" + ("" if "goal_met" not in r else "  goal met" if r["goal_met"]
                                                   else "  GOAL MISSED"))  # fmt: skip
    path = Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
