"""Rein adapter forward+backward against the upstream Rein module's arithmetic, same weights, one process.

The baseline, :class:`UpstreamRein`, is written here from the paper's equations in the form the upstream
``LoRAReins`` module evaluates them (sequence-first layout: the batch-first features are permuted to ``[T, B, C]``,
the cls row is split off, per-layer tokens ``A[i] @ B[i]``, softmax attention ``f Tᵀ · c^-½`` over all tokens,
values ``mlp_token2feat(T[1:])`` read by columns 1.., then ``mlp_delta_f`` over ``ΔF + f``, the gate, the cls row
concatenated back and the result permuted to batch-first). It carries the same parameter names, so it loads the
vltk adapter's state dict as is.

What is timed: ``layers`` Rein layers chained on batch-first ViT features ``[B, 1 + N, C]`` (``x = rein(x, i)``,
no backbone blocks in between: the adapter alone), then a backward from a fixed random gradient into the input
features (a frozen backbone still needs them, for the earlier layers' Rein) and every adapter parameter. The
decoder-query link (``transform``/``merge``, once per forward) is left out: it is identical in both.

Before timing, the outputs and every gradient are compared (the issue asks for outputs equal to 1e-5); the gate is
set to ``--gate`` (default 0.1) in both, so the update is not hidden behind the 1e-3 init value. The two are then
timed back to back, the order alternating per repeat, and the median of the per-repeat ratios is reported (with
the ratios of the medians and of the minimums); one more step of each runs under ``torch.profiler`` for the top
operators by self CPU time, and one under the dispatch-level ``PeakTracker`` for the peak memory of the tensors
the step creates (the saved activations of all layers included). Results go under ``--label`` in the JSON,
keeping the other labels already in the file (``before``: the code before the speed work, ``after``: after it).

    OMP_NUM_THREADS=1 python benchmarks/rein_adapter_speed.py --label after      # the issue's shape (ViT-B/16 512²)
    python benchmarks/rein_adapter_speed.py --batch 1 --patches 16 --channels 32 --token-length 6 --lora-dim 4 \\
        --layers 2 --repeats 1 --json /tmp/rein.json                                   # a tiny smoke run
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
from torch import Tensor, nn
from torch.nn import functional as F

from vltk.context import BuildContext
from vltk_kernels.benchmarking import PeakTracker, environment
from vltk_plugins.rein.adapter import Rein, build_rein
from vltk_plugins.rein.options import ReinOptions

#: The issue's goal: the vltk adapter's forward+backward time at most this multiple of the upstream module's.
GOAL_RATIO = 0.90
#: The issue's equality bound on the outputs.
OUTPUT_TOLERANCE = 1e-5


class UpstreamRein(nn.Module):
    """Rein's per-layer refinement as upstream's ``LoRAReins.forward`` computes it (no query link)."""

    def __init__(self, num_layers: int, embed_dim: int, token_length: int, lora_dim: int) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.learnable_tokens_a = nn.Parameter(torch.empty(num_layers, token_length, lora_dim))
        self.learnable_tokens_b = nn.Parameter(torch.empty(num_layers, lora_dim, embed_dim))
        self.scale = nn.Parameter(torch.tensor(1.0))
        self.mlp_token2feat = nn.Linear(embed_dim, embed_dim)
        self.mlp_delta_f = nn.Linear(embed_dim, embed_dim)

    def forward(self, x: Tensor, layer: int) -> Tensor:
        """``x``: batch-first ``[B, 1 + N, C]`` with the cls token first; same shape out."""
        seq = x.permute(1, 0, 2)  # sequence-first [1 + N, B, C]
        cls, feats = torch.tensor_split(seq, [1], dim=0)
        tokens = self.learnable_tokens_a[layer] @ self.learnable_tokens_b[layer]  # [M, C]
        scores = torch.einsum("nbc,mc->nbm", feats, tokens) * self.embed_dim**-0.5
        attention = F.softmax(scores, dim=-1)
        delta = torch.einsum("nbm,mc->nbc", attention[:, :, 1:], self.mlp_token2feat(tokens[1:, :]))
        delta = self.mlp_delta_f(delta + feats)
        feats = feats + delta * self.scale
        return torch.cat([cls, feats], dim=0).permute(1, 0, 2)


def build_pair(args: argparse.Namespace) -> tuple[Rein, UpstreamRein]:
    """The vltk adapter (default init) and the upstream-form module loaded with its weights; gate ``args.gate``."""
    torch.manual_seed(0)
    options = ReinOptions(token_length=args.token_length, lora_dim=args.lora_dim, link_token_to_query=False)
    vltk_rein = build_rein(options, BuildContext(embed_dim=args.channels, num_layers=args.layers, patch_size=16))
    with torch.no_grad():
        vltk_rein.scale.fill_(args.gate)
    upstream = UpstreamRein(args.layers, args.channels, args.token_length, args.lora_dim)
    upstream.load_state_dict(vltk_rein.state_dict())
    return vltk_rein, upstream


def step(model: nn.Module, x: Tensor, grad: Tensor, layers: int) -> tuple[Tensor, list[Tensor]]:
    """``layers`` chained Rein layers, then the backward of ``grad``; the output and [dx, *parameter grads]."""
    model.zero_grad(set_to_none=True)
    leaf = x.detach().requires_grad_()
    out = leaf
    for layer in range(layers):
        out = model(out, layer)
    out.backward(grad)
    return out.detach(), [leaf.grad, *(p.grad for _, p in sorted(model.named_parameters()))]


def compare(vltk_rein: Rein, upstream: UpstreamRein, x: Tensor, grad: Tensor, layers: int) -> dict[str, Any]:
    """Largest absolute and relative differences of the outputs and of every gradient."""
    out_v, grads_v = step(vltk_rein, x, grad, layers)
    out_u, grads_u = step(upstream, x, grad, layers)
    names = ["input", *(name for name, _ in sorted(upstream.named_parameters()))]
    report: dict[str, Any] = {
        "output_max_abs": (out_v - out_u).abs().max().item(),
        "output_max_ref": out_u.abs().max().item(),
        "grad_max_rel": {},
    }
    for name, mine, theirs in zip(names, grads_v, grads_u, strict=True):
        report["grad_max_rel"][name] = ((mine - theirs).abs().max() / theirs.abs().max().clamp_min(1e-30)).item()
    report["outputs_equal"] = report["output_max_abs"] <= OUTPUT_TOLERANCE
    report["grads_equal"] = max(report["grad_max_rel"].values()) <= 1e-4
    return report


def profile_top(run: Callable[[], Any], top: int) -> list[dict[str, Any]]:
    """The ``top`` operators of one ``run()`` by self CPU time (torch.profiler)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        run()
    rows = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)[:top]
    total = sum(e.self_cpu_time_total for e in prof.key_averages())
    return [
        {
            "op": e.key,
            "calls": e.count,
            "self_cpu_ms": e.self_cpu_time_total / 1000,
            "self_cpu_share": e.self_cpu_time_total / total if total else 0.0,
        }
        for e in rows
    ]


def peak_mb(run: Callable[[], Any]) -> float:
    """Peak MB of the tensor storages one ``run()`` creates (the dispatch-level ``PeakTracker``; inputs excluded)."""
    tracker = PeakTracker()
    with tracker:
        run()
    return tracker.peak / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--patches", type=int, default=1024, help="patch tokens N (512² at patch 16: 1024)")
    parser.add_argument("--channels", type=int, default=768, help="embedding width C (ViT-B: 768)")
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--token-length", type=int, default=100)
    parser.add_argument("--lora-dim", type=int, default=16)
    parser.add_argument("--gate", type=float, default=0.1, help="value of the learnable gate `scale` in both")
    parser.add_argument("--repeats", type=int, default=15, help="timed steps of each (interleaved)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: stable on a shared machine)")
    parser.add_argument("--profile-top", type=int, default=10, help="profiler rows to keep (0: no profile)")
    parser.add_argument("--label", default="current", help="key of this run in the JSON (e.g. before, after)")
    parser.add_argument("--json", default=str(Path(__file__).parent / "results" / "rein_adapter_cpu.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    vltk_rein, upstream = build_pair(args)
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(args.batch, 1 + args.patches, args.channels, generator=generator)
    grad = torch.randn(x.shape, generator=generator)
    check = compare(vltk_rein, upstream, x, grad, args.layers)
    models = {"upstream": upstream, "vltk": vltk_rein}

    for _ in range(args.warmup):
        for model in models.values():
            step(model, x, grad, args.layers)
    times: dict[str, list[float]] = {name: [] for name in models}
    for repeat in range(args.repeats):
        order = list(models) if repeat % 2 == 0 else list(models)[::-1]
        for name in order:
            start = time.perf_counter()
            step(models[name], x, grad, args.layers)
            times[name].append(time.perf_counter() - start)
    medians = {name: statistics.median(values) for name, values in times.items()}
    # Each repeat times both back to back, so a pair shares the machine's load of that moment: the median of the
    # per-pair ratios is the headline (the load of a shared machine drifts by 2x within a minute).
    pair_ratios = [mine / theirs for mine, theirs in zip(times["vltk"], times["upstream"], strict=True)]
    ratio = statistics.median(pair_ratios)
    profiles = (
        {
            name: profile_top(lambda m=model: step(m, x, grad, args.layers), args.profile_top)
            for name, model in models.items()
        }
        if args.profile_top > 0
        else {}
    )

    memory = {name: peak_mb(lambda m=model: step(m, x, grad, args.layers)) for name, model in models.items()}

    run = {
        **environment(torch.device("cpu")),
        "machine": {"cpu_count": os.cpu_count(), "processor": platform.processor() or platform.machine()},
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "torch_threads": torch.get_num_threads(),
        "load_average": list(os.getloadavg()),
        "shape": {
            "batch": args.batch,
            "patches": args.patches,
            "channels": args.channels,
            "layers": args.layers,
            "token_length": args.token_length,
            "lora_dim": args.lora_dim,
            "gate": args.gate,
        },
        "repeats": args.repeats,
        "check": check,
        "median_ms": {name: 1000 * value for name, value in medians.items()},
        "times_ms": {name: [1000 * t for t in values] for name, values in times.items()},
        "ratio_vltk_to_upstream": ratio,
        "ratio_method": "median over repeats of vltk / upstream, the two timed back to back (order alternating)",
        "pair_ratios": pair_ratios,
        "ratio_of_medians": medians["vltk"] / medians["upstream"],
        "ratio_of_minimums": min(times["vltk"]) / min(times["upstream"]),
        "peak_step_memory_mb": memory,
        "memory_method": "PeakTracker: peak of tensor storages created during one forward+backward (not timed)",
        "goal": f"vltk <= {GOAL_RATIO:g}x upstream's forward+backward time, outputs equal to {OUTPUT_TOLERANCE:g}",
        "goal_met": ratio <= GOAL_RATIO and check["outputs_equal"] and check["grads_equal"],
        "profile_top_self_cpu": profiles,
    }
    path = Path(args.json)
    payload: dict[str, Any] = json.loads(path.read_text()) if path.is_file() else {}
    payload["benchmark"] = "rein_adapter_speed"
    payload.setdefault("runs", {})[args.label] = run
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2) + "\n")

    shape = run["shape"]
    print(f"rein adapter fwd+bwd, {shape['layers']} layers, B {shape['batch']}, N 1+{shape['patches']}, "
          f"C {shape['channels']}, M {shape['token_length']}, r {shape['lora_dim']}; {run['device']}, "
          f"OMP_NUM_THREADS={run['omp_num_threads']}, load {run['load_average'][0]:.1f}")  # fmt: skip
    print(f"outputs max |diff| {check['output_max_abs']:.2e} (max |out| {check['output_max_ref']:.1f}), "
          f"grads max rel diff {max(check['grad_max_rel'].values()):.2e}")  # fmt: skip
    for name in models:
        print(f"{name:9s} median {run['median_ms'][name]:9.1f} ms   peak {memory[name]:7.1f} MB")
    print(f"vltk / upstream = {ratio:.3f}x, median of paired runs (of medians {run['ratio_of_medians']:.3f}x, of "
          f"minimums {run['ratio_of_minimums']:.3f}x); goal <= {GOAL_RATIO:g}x: "
          f"{'met' if run['goal_met'] else 'NOT met'}")  # fmt: skip
    for name, rows in profiles.items():
        print(f"top self CPU, {name}: " + ", ".join(f"{r['op']} {r['self_cpu_ms']:.0f} ms" for r in rows[:6]))
    print(f"wrote {path} [{args.label}]")


if __name__ == "__main__":
    main()
